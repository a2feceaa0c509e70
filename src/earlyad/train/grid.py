"""The grid-search summary: one row per run, the choice made on VALIDATION metrics only.

The study picked hyper-parameters on its test set (REFERENCE.md, defect 2); here the test set
plays no part in the choice, and its metrics are reported separately by the evaluation stage.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import pandas as pd
import torch

#: Hyper-parameters shown beside each run (the study's Tables 2-3 columns and a few more).
HP_COLUMNS: tuple[str, ...] = (
    "norm_type",
    "batch_size",
    "eval_batch_size",
    "lr",
    "width",
    "variant",
    "epochs",
    "seed",
)


def summarise_grid(models: Mapping[str, Path], select_on: str = "auc") -> pd.DataFrame:
    """One row per run from its saved checkpoint; ``selected`` marks the best on validation.

    Args:
        models: run name -> ``model.pt`` written by :func:`earlyad.train.trainer.train`.
        select_on: ``auc`` (highest validation macro-AUC) or ``loss`` (lowest validation loss).
    """
    rows = []
    for run, path in models.items():
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        row: dict[str, object] = {"run": run}
        row.update({k: ckpt["config"].get(k) for k in HP_COLUMNS})
        row["selected_epoch"] = ckpt["epoch"]
        row.update(ckpt["val_metrics"])
        rows.append(row)
    table = pd.DataFrame(rows)
    key = "val_macro_auc" if select_on == "auc" else "val_loss"
    scores = table[key].astype(float)
    if select_on == "loss":
        scores = -scores
    best = scores.fillna(-math.inf).idxmax()
    table["selected"] = False
    table.loc[best, "selected"] = True
    return table
