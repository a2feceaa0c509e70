"""Metrics of one run on one split, with bootstrap confidence intervals resampled BY SUBJECT.

The study reported single test figures without intervals (REFERENCE.md, defect 2). A test set of
131 scans (9 in the demo) gives wide intervals, and the scans of one subject are not independent:
follow-up visits of the same brain look alike. The bootstrap therefore draws SUBJECTS with
replacement and takes every scan of a drawn subject (a subject drawn twice counts twice), the
cluster bootstrap of Field & Welsh (2007), with percentile intervals (Efron & Tibshirani 1993,
ch. 13).

Metrics (keys of :func:`point_metrics`):

- ``accuracy``, ``balanced_accuracy``, ``macro_auc`` (one-vs-rest on softmax probabilities, the
  study's headline numbers), with the definitions of :mod:`earlyad.train.metrics` (tests hold
  the two modules to the same values), so that training and evaluation agree;
- ``micro_auc``: the AUC of all (scan, class) pairs pooled, the micro-average ROC;
- ``auc_<class>``: one-vs-all AUC per class (the study's Table 6);
- ``auc_CN_vs_MCI_AD``: CN against impaired (MCI or AD) scored by ``prob_MCI + prob_AD``, the
  abstract's 0.961. With probabilities summing to 1 it equals ``auc_CN`` (the ranking by
  ``1 - prob_CN`` is reversed ranking by ``prob_CN``), and is kept under its own name because the
  study quotes it separately;
- ``precision_<c>``, ``recall_<c>``, ``f1_<c>``, ``sensitivity_<c>`` (= recall),
  ``specificity_<c>`` per class, one class against the rest.

A metric with a zero denominator (precision of a class never predicted, recall of a class absent
from the split, an AUC with one group empty) is NaN rather than scikit-learn's silent 0: NaN is
"undefined", 0 would be a measured failure. Bootstrap resamples where a metric is undefined are
left out of its interval, and the number of resamples used is reported beside it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray
from scipy.stats import rankdata

from earlyad import CLASSES
from earlyad.tables import read_tsv
from earlyad.train.metrics import per_class_auc

#: Probability columns of a predictions TSV, in label order.
PROB_COLUMNS: tuple[str, ...] = tuple(f"prob_{c}" for c in CLASSES)
#: Columns a predictions TSV must have (written by :func:`earlyad.train.trainer.write_predictions`).
PREDICTION_COLUMNS: tuple[str, ...] = (
    "participant_id",
    "session_id",
    "true_label",
    "predicted_label",
    *PROB_COLUMNS,
)
#: Whole-split metrics, in the order of tables.
SUMMARY_METRICS: tuple[str, ...] = (
    "accuracy",
    "balanced_accuracy",
    "macro_auc",
    "micro_auc",
    "auc_CN_vs_MCI_AD",
)
#: Per-class metrics; each appears as ``<name>_<class>``.
CLASS_METRICS: tuple[str, ...] = ("auc", "precision", "recall", "f1", "sensitivity", "specificity")


def metric_names() -> list[str]:
    """Every key of :func:`point_metrics`, summary metrics first, then per class."""
    return [*SUMMARY_METRICS] + [f"{m}_{c}" for m in CLASS_METRICS for c in CLASSES]


@dataclass(frozen=True)
class BootstrapConfig:
    """Settings of the subject-level bootstrap (config keys ``evaluation.*``).

    Args:
        resamples: number of bootstrap resamples (``evaluation.bootstrap``); the percentile
            interval's end points settle at about 1000 for a 95% interval.
        seed: seed of the resampling, so that a rerun gives the same intervals.
        ci: coverage of the interval, e.g. 0.95 for the 2.5th-97.5th percentiles.
    """

    resamples: int = 1000
    seed: int = 0
    ci: float = 0.95

    def __post_init__(self) -> None:
        if self.resamples < 1:
            raise ValueError(f"evaluation.bootstrap must be at least 1, got {self.resamples}")
        if not 0.0 < self.ci < 1.0:
            raise ValueError(f"evaluation.ci must be in (0, 1), got {self.ci}")


def _ratio(num: NDArray[np.float64], den: NDArray[np.float64]) -> NDArray[np.float64]:
    """Element-wise num / den with NaN where den is 0 (undefined, not 0)."""
    out = np.full(num.shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def confusion_matrix(
    y_true: ArrayLike, y_pred: ArrayLike, n_classes: int = len(CLASSES)
) -> NDArray[np.int64]:
    """Counts with true classes in rows and predicted classes in columns (scikit-learn's
    orientation), always ``n_classes`` square even when a class is missing."""
    t = np.asarray(y_true, dtype=np.int64)
    p = np.asarray(y_pred, dtype=np.int64)
    if t.shape != p.shape:
        raise ValueError(f"y_true {t.shape} and y_pred {p.shape} differ in shape")
    if t.size and (min(t.min(), p.min()) < 0 or max(t.max(), p.max()) >= n_classes):
        raise ValueError(f"labels must lie in 0..{n_classes - 1}")
    counts = np.bincount(t * n_classes + p, minlength=n_classes * n_classes)
    return counts.reshape(n_classes, n_classes)


def class_rates(cm: NDArray[np.int64]) -> dict[str, NDArray[np.float64]]:
    """Per-class precision, recall (= sensitivity), F1 and specificity from a confusion matrix.

    F1 is ``2 TP / (2 TP + FP + FN)``, which is defined (0) for a class that is never predicted
    but present, where precision is not.
    """
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    fp = cm.sum(axis=0) - tp
    fn = cm.sum(axis=1) - tp
    tn = cm.sum() - tp - fp - fn
    recall = _ratio(tp, tp + fn)
    return {
        "precision": _ratio(tp, tp + fp),
        "recall": recall,
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "sensitivity": recall,
        "specificity": _ratio(tn, tn + fp),
    }


def rank_auc(positive: NDArray[np.bool_], score: NDArray[np.float64]) -> float:
    """ROC AUC as the Mann-Whitney statistic ``U / (n_pos n_neg)`` with mid-ranks for ties; NaN
    when either group is empty.

    The same number as scikit-learn's ``roc_auc_score`` (tested), without its input validation,
    which took over 90% of the bootstrap's time (thousands of AUCs on inputs checked once).
    """
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    if not n_pos or not n_neg:
        return math.nan
    ranks = rankdata(score)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _metrics(t: NDArray[np.int64], p: NDArray[np.float64]) -> dict[str, float]:
    """:func:`point_metrics` on inputs already checked (the bootstrap's inner loop)."""
    if not t.size:
        return dict.fromkeys(metric_names(), math.nan)
    n_classes = p.shape[1]
    onehot = np.eye(n_classes, dtype=bool)[t]
    cm = confusion_matrix(t, p.argmax(axis=1), n_classes)
    rates = class_rates(cm)
    aucs = np.array([rank_auc(onehot[:, k], p[:, k]) for k in range(n_classes)])
    cn = CLASSES.index("CN")
    out: dict[str, float] = {
        "accuracy": float(np.trace(cm) / t.size),
        # scikit-learn's balanced accuracy: mean recall over the classes present
        "balanced_accuracy": float(np.nanmean(rates["recall"])),
        "macro_auc": float(np.nanmean(aucs)) if not np.isnan(aucs).all() else math.nan,
        "micro_auc": rank_auc(onehot.ravel(), p.ravel()),
        "auc_CN_vs_MCI_AD": rank_auc(~onehot[:, cn], 1.0 - p[:, cn]),
    }
    rates = {"auc": aucs, **rates}
    for name in CLASS_METRICS:
        for k, c in enumerate(CLASSES):
            out[f"{name}_{c}"] = float(rates[name][k])
    return out


def point_metrics(y_true: ArrayLike, probs: ArrayLike) -> dict[str, float]:
    """Every metric of the module docstring; the prediction is the argmax of ``probs``.

    Args:
        y_true: integer labels in ``0 .. len(CLASSES) - 1`` (CN, MCI, AD).
        probs: softmax probabilities, shape ``(n, len(CLASSES))``; logits are refused (checked
            by :func:`earlyad.train.metrics.per_class_auc`, whose AUCs these must equal).
    """
    t = np.asarray(y_true).astype(np.int64)
    p = np.asarray(probs, dtype=np.float64)
    if t.size:
        per_class_auc(t, p)  # shape and probability checks, with their error messages
    return _metrics(t, p)


def read_predictions(path: Path | str) -> pd.DataFrame:
    """A predictions TSV, checked: columns present, labels valid, ``predicted_label`` the argmax.

    Raises:
        ValueError: naming the file and what is wrong with it.
    """
    df = read_tsv(path)
    missing = [c for c in PREDICTION_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(
            f"{path}: missing column(s) {missing}; a predictions TSV has "
            f"{list(PREDICTION_COLUMNS)} (as the train rule writes it)"
        )
    labels = df[["true_label", "predicted_label"]].to_numpy()
    if len(df) and (labels.min() < 0 or labels.max() >= len(CLASSES)):
        raise ValueError(f"{path}: labels must be 0..{len(CLASSES) - 1} ({', '.join(CLASSES)})")
    probs = df[list(PROB_COLUMNS)].to_numpy(dtype=np.float64)
    if len(df):
        chosen = probs[np.arange(len(df)), df["predicted_label"].to_numpy()]
        wrong = np.flatnonzero(chosen < probs.max(axis=1) - 1e-6)
        if wrong.size:
            raise ValueError(
                f"{path}: line {wrong[0] + 2} has a predicted_label that is not its most "
                "probable class; predictions must be the argmax of the probabilities"
            )
    return df


def split_arrays(df: pd.DataFrame) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    """True labels and probability matrix of a predictions table."""
    return (
        df["true_label"].to_numpy(dtype=np.int64),
        df[list(PROB_COLUMNS)].to_numpy(dtype=np.float64),
    )


def subject_groups(participants: Sequence[str]) -> list[NDArray[np.int64]]:
    """Row indices of each subject's scans, subjects in sorted order (a stable resampling unit)."""
    codes, _ = pd.factorize(pd.Series(list(participants)), sort=True)
    order = np.argsort(codes, kind="stable")
    bounds = np.flatnonzero(np.diff(codes[order])) + 1
    return np.split(order, bounds) if len(order) else []


def bootstrap_indices(
    groups: Sequence[NDArray[np.int64]], config: BootstrapConfig
) -> list[NDArray[np.int64]]:
    """Row indices of each bootstrap resample: subjects drawn with replacement, all their scans
    taken together. Deterministic for a given ``config.seed``."""
    rng = np.random.default_rng(config.seed)
    n = len(groups)
    if not n:
        return []
    return [
        np.concatenate([groups[i] for i in rng.integers(0, n, size=n)])
        for _ in range(config.resamples)
    ]


def bootstrap_by_subject(predictions: pd.DataFrame, config: BootstrapConfig) -> pd.DataFrame:
    """Point estimate and percentile interval of every metric, resampling subjects.

    Args:
        predictions: a predictions table (:func:`read_predictions`).
        config: number of resamples, seed and coverage.

    Returns:
        One row per metric: ``metric``, ``estimate`` (on the whole split), ``lower``, ``upper``
        (the interval) and ``resamples`` (how many resamples had the metric defined).
    """
    y, probs = split_arrays(predictions)
    estimate = point_metrics(y, probs)
    draws = [
        _metrics(y[idx], probs[idx])
        for idx in bootstrap_indices(subject_groups(predictions["participant_id"]), config)
    ]
    tail = (1.0 - config.ci) / 2.0
    rows = []
    for name in metric_names():
        values = np.array([d[name] for d in draws], dtype=np.float64)
        values = values[~np.isnan(values)]
        lower, upper = (
            np.quantile(values, [tail, 1.0 - tail]) if values.size else (math.nan, math.nan)
        )
        rows.append(
            {
                "metric": name,
                "estimate": estimate[name],
                "lower": float(lower),
                "upper": float(upper),
                "resamples": int(values.size),
            }
        )
    return pd.DataFrame(rows)


def split_summary(predictions: pd.DataFrame) -> dict[str, object]:
    """Counts of a split for the metrics JSON: scans, subjects, scans per class, confusion
    matrix (rows true, columns predicted)."""
    y, probs = split_arrays(predictions)
    counts = np.bincount(y, minlength=len(CLASSES)) if y.size else np.zeros(len(CLASSES), int)
    return {
        "scans": len(predictions),
        "subjects": int(predictions["participant_id"].nunique()),
        "scans_per_class": {c: int(n) for c, n in zip(CLASSES, counts, strict=True)},
        "confusion_matrix": confusion_matrix(y, probs.argmax(axis=1) if y.size else y).tolist(),
    }


def _finite_or_none(value: float) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


def metrics_document(
    run: str,
    predictions: Mapping[str, pd.DataFrame],
    intervals: Mapping[str, pd.DataFrame],
    config: BootstrapConfig,
) -> dict[str, object]:
    """The metrics JSON of one run: bootstrap settings, then per split its counts and every
    metric as ``{estimate, lower, upper, resamples}`` (NaN written as null, which JSON has)."""
    splits: dict[str, object] = {}
    for split, table in intervals.items():
        metrics = {
            row.metric: {
                "estimate": _finite_or_none(row.estimate),
                "lower": _finite_or_none(row.lower),
                "upper": _finite_or_none(row.upper),
                "resamples": int(row.resamples),
            }
            for row in table.itertuples()
        }
        splits[split] = {**split_summary(predictions[split]), "metrics": metrics}
    return {
        "run": run,
        "classes": list(CLASSES),
        "bootstrap": {
            "unit": "subject",
            "resamples": config.resamples,
            "seed": config.seed,
            "ci": config.ci,
            "interval": "percentile",
        },
        "splits": splits,
    }


def metrics_long_table(intervals: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """The metrics TSV of one run: one row per split and metric."""
    return pd.concat(
        [table.assign(split=split) for split, table in intervals.items()], ignore_index=True
    )[["split", "metric", "estimate", "lower", "upper", "resamples"]]
