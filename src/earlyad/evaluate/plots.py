"""Figures of the evaluation: confusion matrices, radar chart, ROC curves, comparison plot.

Matplotlib's object API (``Figure`` with the Agg canvas), never ``pyplot``: no global backend or
figure state in a Snakemake job or a test. Every figure shows what the study's figures show
(REFERENCE.md, Evaluation) and adds what they lacked: counts beside rates, the number of scans,
the chance line and the intervals.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from numpy.typing import NDArray
from sklearn.metrics import roc_curve

from earlyad import CLASSES

#: Class colours of every figure (the study's Grad-CAM overlay colours: CN green, MCI yellow,
#: AD red; a darker yellow reads on white).
CLASS_COLOURS: dict[str, str] = {"CN": "tab:green", "MCI": "goldenrod", "AD": "tab:red"}
DPI = 120


def _save(fig: Figure, path: Path | str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=DPI)
    return path


def plot_confusion(cm: NDArray[np.int64], path: Path | str, title: str = "") -> Path:
    """Counts (left) and row-normalized rates (right: each true class sums to 1, the diagonal is
    the per-class recall); rows are true classes, columns predicted."""
    cm = np.asarray(cm)
    totals = cm.sum(axis=1, keepdims=True)
    rates = np.divide(cm, totals, out=np.zeros(cm.shape), where=totals > 0)
    fig = Figure(figsize=(10, 4.4), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, values, name, fmt in (
        (axes[0], cm, "counts", "{:d}"),
        (axes[1], rates, "row-normalized (recall on the diagonal)", "{:.2f}"),
    ):
        image = ax.imshow(values, cmap="Blues", vmin=0, vmax=max(values.max(), 1e-9))
        for (i, j), v in np.ndenumerate(values):
            dark = v > 0.6 * values.max()
            text = fmt.format(int(v)) if fmt == "{:d}" else fmt.format(v)
            ax.text(j, i, text, ha="center", va="center", color="white" if dark else "black")
        ax.set_xticks(range(len(CLASSES)), CLASSES)
        rows = [f"{c} (n={n})" for c, n in zip(CLASSES, totals[:, 0], strict=True)]
        ax.set_yticks(range(len(CLASSES)), rows)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(name)
        fig.colorbar(image, ax=ax, shrink=0.8)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_radar(rates: Mapping[str, Mapping[str, float]], path: Path | str, title: str = "") -> Path:
    """Radar chart of per-class precision, recall and F1 (the study's figure), one polygon per
    class. An undefined value (precision of a class never predicted) is drawn at 0 and marked
    ``n/a`` in the legend.

    Args:
        rates: class -> {"precision": x, "recall": y, "f1": z}.
    """
    axes_names = ("precision", "recall", "f1")
    angles = np.linspace(0, 2 * np.pi, len(axes_names), endpoint=False)
    closed = np.append(angles, angles[0])
    fig = Figure(figsize=(5.5, 5.5), layout="constrained")
    ax = fig.add_subplot(projection="polar")
    for c in CLASSES:
        values = [rates[c][m] for m in axes_names]
        undefined = [m for m, v in zip(axes_names, values, strict=True) if math.isnan(v)]
        drawn = np.nan_to_num(np.array(values, dtype=float), nan=0.0)
        label = c + (f" ({', '.join(undefined)} n/a)" if undefined else "")
        ax.plot(closed, np.append(drawn, drawn[0]), color=CLASS_COLOURS[c], marker="o", label=label)
        ax.fill(closed, np.append(drawn, drawn[0]), color=CLASS_COLOURS[c], alpha=0.12)
    ax.set_xticks(angles, ["precision", "recall", "F1"])
    ax.set_ylim(0, 1)
    ax.set_yticks([0.25, 0.5, 0.75, 1.0])
    ax.legend(loc="upper right", bbox_to_anchor=(1.15, 1.12), fontsize=8)
    if title:
        ax.set_title(title, pad=24)
    return _save(fig, path)


def roc_curves(
    y_true: NDArray[np.int64], probs: NDArray[np.float64]
) -> dict[str, tuple[NDArray[np.float64], NDArray[np.float64]]]:
    """(FPR, TPR) of each class (one-vs-rest), of the micro average (all scan-class pairs
    pooled) and of the macro average (mean TPR of the classes on a common FPR grid, as in
    scikit-learn's ROC example). Classes without positives or negatives are left out."""
    onehot = np.eye(probs.shape[1], dtype=bool)[y_true]
    curves: dict[str, tuple[NDArray[np.float64], NDArray[np.float64]]] = {}
    for k, c in enumerate(CLASSES):
        if onehot[:, k].any() and not onehot[:, k].all():
            fpr, tpr, _ = roc_curve(onehot[:, k], probs[:, k])
            curves[c] = (fpr, tpr)
    if curves:
        fpr, tpr, _ = roc_curve(onehot.ravel(), probs.ravel())
        curves["micro"] = (fpr, tpr)
        grid = np.unique(np.concatenate([curves[c][0] for c in CLASSES if c in curves]))
        mean_tpr = np.mean([np.interp(grid, *curves[c]) for c in CLASSES if c in curves], axis=0)
        curves["macro"] = (grid, mean_tpr)
    return curves


def plot_roc(
    y_true: NDArray[np.int64],
    probs: NDArray[np.float64],
    aucs: Mapping[str, float],
    path: Path | str,
    title: str = "",
) -> Path:
    """Per-class ROC curves with the micro and macro averages and the chance diagonal.

    Args:
        aucs: the AUC shown in the legend for each of CLASSES, ``micro`` and ``macro`` (the
            metrics table's values, so that figure and table agree).
    """
    curves = roc_curves(y_true, probs)
    fig = Figure(figsize=(5.8, 5.4), layout="constrained")
    ax = fig.subplots()
    styles = {c: {"color": CLASS_COLOURS[c], "lw": 1.8} for c in CLASSES}
    styles["micro"] = {"color": "black", "ls": ":", "lw": 2}
    styles["macro"] = {"color": "navy", "ls": "--", "lw": 2}
    for name, (fpr, tpr) in curves.items():
        label = name if name in CLASSES else f"{name}-average"
        ax.plot(fpr, tpr, label=f"{label} (AUC {aucs.get(name, math.nan):.3f})", **styles[name])
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, label="chance")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_aspect("equal")
    ax.set_xlabel("false positive rate (1 - specificity)")
    ax.set_ylabel("true positive rate (sensitivity)")
    ax.legend(loc="lower right", fontsize=8)
    if not curves:
        ax.text(0.5, 0.5, "one class only: no ROC curve", ha="center")
    ax.set_title(title or f"ROC, one class vs rest ({len(y_true)} scans)")
    return _save(fig, path)


def plot_comparison(table: pd.DataFrame, path: Path | str) -> Path:
    """Our test estimates with their intervals beside the study's published points.

    Args:
        table: :func:`earlyad.evaluate.compare.comparison_table` (columns ``metric``,
            ``earlyad``, ``earlyad_lower``, ``earlyad_upper`` and one column per source).
    """
    names = {"study": "study (Python)", "study_cpp": "study (C++)", "liu_2022": "Liu et al. 2022"}
    sources = [c for c in names if c in table.columns]
    markers = dict(zip(sources, ("s", "D", "^"), strict=False))
    y = np.arange(len(table))[::-1]
    fig = Figure(figsize=(9, 0.45 * len(table) + 1.6), layout="constrained")
    ax = fig.subplots()
    est = table["earlyad"].to_numpy(dtype=float)
    err = np.vstack(
        [
            est - table["earlyad_lower"].to_numpy(dtype=float),
            table["earlyad_upper"].to_numpy(dtype=float) - est,
        ]
    )
    ax.errorbar(
        est, y, xerr=np.nan_to_num(err), fmt="o", color="black", capsize=3, label="earlyad (CI)"
    )
    for source in sources:
        ax.scatter(
            table[source].astype(float), y, marker=markers[source], label=names[source], zorder=3
        )
    ax.set_yticks(y, table["metric"])
    ax.set_xlim(0, 1.02)
    ax.axvline(0.5, color="grey", lw=0.6, ls=":", label="AUC by chance")
    ax.set_xlabel("value on the test set (study: test set shared subjects with training)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _save(fig, path)
