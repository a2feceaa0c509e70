"""The evaluation's grid summary and training-cost table.

The training stage's grid summary (:func:`earlyad.train.grid.summarise_grid`) chooses a run on
validation only. Here the chosen run's TEST metrics are added, with their intervals, and only
for that run: showing every run's test score next to each other invites choosing on test, the
study's defect 2 (REFERENCE.md). Every run's test metrics stay in its own metrics JSON.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

#: Test metrics shown for the chosen run in the grid summary.
HEADLINE: tuple[str, ...] = (
    "accuracy",
    "balanced_accuracy",
    "macro_auc",
    "auc_CN_vs_MCI_AD",
    "auc_CN",
    "auc_MCI",
    "auc_AD",
)


def selected_run(grid: pd.DataFrame) -> str:
    """Name of the run the grid summary marks ``selected`` (exactly one must be)."""
    chosen = grid.loc[grid["selected"].astype(str) == "True", "run"].tolist()
    if len(chosen) != 1:
        raise ValueError(f"the grid summary must mark exactly one run selected, found {chosen}")
    return str(chosen[0])


def grid_with_test(grid: pd.DataFrame, documents: Mapping[str, Mapping]) -> pd.DataFrame:
    """The grid summary with ``test_<metric>``, ``_lower`` and ``_upper`` for the chosen run.

    Args:
        grid: the training stage's grid summary (one row per run, ``selected`` marks one).
        documents: run -> its metrics JSON (:func:`earlyad.evaluate.metrics.metrics_document`).
    """
    chosen = selected_run(grid)
    out = grid.copy()
    test = documents[chosen]["splits"]["test"]
    is_chosen = out["run"] == chosen
    out["test_scans"] = np.where(is_chosen, test["scans"], np.nan)
    out["test_subjects"] = np.where(is_chosen, test["subjects"], np.nan)
    for name in HEADLINE:
        values = test["metrics"][name]
        for suffix, key in (("", "estimate"), ("_lower", "lower"), ("_upper", "upper")):
            value = np.nan if values[key] is None else values[key]
            out[f"test_{name}{suffix}"] = np.where(is_chosen, value, np.nan)
    return out


def training_cost(logs: Mapping[str, pd.DataFrame], grid: pd.DataFrame) -> pd.DataFrame:
    """One row per run: epochs run, the selected epoch, wall seconds of training and the median
    throughput, from the per-epoch training logs (the study's scalability tables report time)."""
    selected = dict(zip(grid["run"], grid["selected_epoch"], strict=True))
    rows = []
    for run, log in logs.items():
        seconds = log["seconds"].astype(float)
        rows.append(
            {
                "run": run,
                "epochs_run": len(log),
                "selected_epoch": selected.get(run),
                "train_seconds": float(seconds.sum()),
                "seconds_per_epoch": float(seconds.mean()) if len(log) else np.nan,
                "median_samples_per_second": float(log["samples_per_second"].median()),
            }
        )
    return pd.DataFrame(rows)
