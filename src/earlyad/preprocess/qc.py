"""Quality control of normalized scans: thresholds, the QC table, exclusions, the cache index.

Why: a scan whose registration failed (brain shifted, scaled or cut by the crop box) teaches the
CNN nothing but noise, and silently dropping it would bias the cohort. Every scan therefore gets
a row with its metrics and verdict, every excluded scan a row saying at which stage and why, and
only scans that passed enter the tensor-cache index the training and evaluation stages read.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from earlyad.tables import EXCLUSION_COLUMNS

__all__ = [
    "CACHE_INDEX_COLUMNS",
    "QC_COLUMNS",
    "QCThresholds",
    "assemble_qc",
    "cache_index",
    "plot_qc",
]

#: Identifying columns first, then the metrics, then the verdict.
QC_COLUMNS: list[str] = [
    "participant_id",
    "session_id",
    "split",
    "diagnosis",
    "label",
    "status",
    "ncc",
    "mask_dice",
    "brain_fraction_in_box",
    "brain_volume_ml",
    "nan_voxels",
    "shape",
    "voxel_size",
    "passed",
    "fail_reason",
]
CACHE_INDEX_COLUMNS: list[str] = [
    "participant_id",
    "session_id",
    "split",
    "diagnosis",
    "label",
    "path",
    "shape",
]
_IDS = ["participant_id", "session_id", "split", "diagnosis", "label"]


@dataclass(frozen=True)
class QCThresholds:
    """Minimum metrics a normalized scan needs to be used.

    Measured on 1.5 mm outputs (NCC after the 2 mm Gaussian of ``normalize.NCC_SMOOTHING_MM``):

    * good scans. Registered to a study template of the same anatomy, including synthetic
      AD-level atrophy (hippocampi -35 %, ventricles +60 %): ncc 0.89-0.99, Dice 0.92-0.95.
      A different brain (the MNI152 average against a Colin27-based template, or Colin27-based
      scans against MNI152 without registration, skull on vs off): ncc 0.80-0.82, Dice
      0.93-0.98. Colin27 scans left 3 deg / 4 % / 3 mm off by an imprecise t1-linear: ncc
      0.72-0.74, Dice 0.87-0.90. Brain fraction in box: 1.0 for all.
    * bad scans (register=False, so nothing repairs them). Shifted 20 mm: ncc 0.12-0.21, Dice
      0.70-0.73, fraction 0.97-0.99; shifted 10 mm (z): ncc 0.34, Dice 0.82; shifted 50 mm
      (z, top of the brain cut off): ncc 0.21, Dice 0.47, fraction 0.90. Rotated 10 / 15 deg:
      ncc 0.65 / 0.58, Dice 0.89 / 0.87 (these pass: QC targets gross failures).

    Hence ``min_ncc = 0.5`` (every shift of 10 mm or more fails; every good scan clears it by
    >= 0.2, a margin kept on purpose: atrophied AD brains correlate less with a template, and a
    tight threshold would exclude the sickest subjects first, biasing the cohort),
    ``min_mask_dice = 0.8`` (good >= 0.87, 20 mm shifts <= 0.73) and
    ``min_brain_fraction_in_box = 0.95`` (good 1.0; 0.90 when 3 cm of brain leave the box).

    All of these are from synthetic scans; the QC plot (:func:`plot_qc`) shows where real scans
    fall: revise from it.
    """

    min_ncc: float = 0.5
    min_mask_dice: float = 0.8
    min_brain_fraction_in_box: float = 0.95

    def failures(self, metrics: Mapping[str, Any]) -> list[str]:
        """Human-readable reasons ``metrics`` fail, e.g. ``'ncc 0.312 < 0.5'``; [] if none."""
        reasons = []
        for name, limit in asdict(self).items():
            metric = name.removeprefix("min_")
            value = metrics.get(metric)
            if value is None or pd.isna(value):
                reasons.append(f"{metric} missing")
            elif float(value) < limit:
                reasons.append(f"{metric} {float(value):.3f} < {limit:g}")
        return reasons


def _qc_row(record: Mapping[str, Any], thresholds: QCThresholds) -> dict[str, Any]:
    """One QC-table row: the record's identifiers and metrics, ``passed`` and ``fail_reason``."""
    row = {col: record.get(col) for col in QC_COLUMNS}
    status = str(record.get("status", "ok"))
    row["status"] = status
    if isinstance(row["shape"], list | tuple):
        row["shape"] = "x".join(str(int(n)) for n in row["shape"])
    if status != "ok":
        row["passed"] = False
        row["fail_reason"] = f"preprocessing failed: {record.get('error') or 'unknown error'}"
        return row
    reasons = thresholds.failures(record)
    row["passed"] = not reasons
    row["fail_reason"] = "; ".join(reasons)
    return row


def assemble_qc(
    records: list[dict[str, Any]], thresholds: QCThresholds | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(qc_table, exclusions)`` from one record per scan.

    A record holds participant_id, session_id, split, diagnosis, label, ``status`` ("ok", or
    "failed" with an ``error`` from an upstream stage) and, when ok, the QC metrics of
    :func:`earlyad.preprocess.normalize.normalize_scan`. Exclusions: stage "preprocessing"
    (the upstream error) or "qc" (the thresholds failed, with the values).
    """
    thresholds = thresholds or QCThresholds()
    rows = [_qc_row(r, thresholds) for r in records]
    table = pd.DataFrame(rows, columns=QC_COLUMNS)
    table["passed"] = table["passed"].astype(bool)
    table = table.sort_values(["participant_id", "session_id"], kind="stable")
    table = table.reset_index(drop=True)
    exclusions = [
        {
            "participant_id": row["participant_id"],
            "session_id": row["session_id"],
            "stage": "preprocessing" if row["status"] != "ok" else "qc",
            "reason": row["fail_reason"].removeprefix("preprocessing failed: "),
        }
        for row in table.to_dict("records")
        if not row["passed"]
    ]
    return table, pd.DataFrame(exclusions, columns=EXCLUSION_COLUMNS)


def cache_index(
    qc_table: pd.DataFrame, cache_paths: Mapping[tuple[str, str], Path | str]
) -> pd.DataFrame:
    """The tensor-cache index: one row per scan that PASSED QC, with its ``.npy`` path and
    shape (``'113x139x119'``, read from the file's header, not trusted from the table).

    ``cache_paths`` maps ``(participant_id, session_id)`` to the scan's ``.npy``; a passed scan
    without one is an error (the cache and the QC table disagree).
    """
    rows = []
    for row in qc_table[qc_table["passed"]].to_dict("records"):
        key = (row["participant_id"], row["session_id"])
        if key not in cache_paths:
            raise KeyError(f"no tensor cache file for passed scan {key}")
        path = Path(cache_paths[key])
        shape = np.load(path, mmap_mode="r").shape
        rows.append(
            {**{c: row[c] for c in _IDS}, "path": str(path), "shape": "x".join(map(str, shape))}
        )
    return pd.DataFrame(rows, columns=CACHE_INDEX_COLUMNS)


def plot_qc(qc_table: pd.DataFrame, out_png: Path, thresholds: QCThresholds | None = None) -> Path:
    """Scatter of ncc against mask Dice, passed and failed scans in different colours, the
    thresholds as dashed lines; scans that failed upstream are counted in the title."""
    thresholds = thresholds or QCThresholds()
    ok = qc_table[qc_table["status"] == "ok"]
    fig = Figure(figsize=(6.5, 5.5))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for passed, colour, name in ((True, "tab:green", "passed"), (False, "tab:red", "failed")):
        part = ok[ok["passed"] == passed]
        ax.scatter(
            part["mask_dice"].astype(float),
            part["ncc"].astype(float),
            s=18,
            c=colour,
            alpha=0.75,
            label=f"{name} ({len(part)})",
        )
    ax.axhline(thresholds.min_ncc, color="grey", ls="--", lw=1, label="thresholds")
    ax.axvline(thresholds.min_mask_dice, color="grey", ls="--", lw=1)
    ax.set_xlabel("brain-mask Dice with the template mask")
    ax.set_ylabel("NCC with the template (inside its brain mask)")
    upstream = int((qc_table["status"] != "ok").sum())
    ax.set_title(f"QC of {len(qc_table)} scans ({upstream} failed before QC)")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=120)
    return out_png
