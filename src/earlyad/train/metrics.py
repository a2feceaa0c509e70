"""Classification metrics of the training loop: accuracy, balanced accuracy and macro-AUC.

The AUC is always computed on softmax PROBABILITIES, one class against the rest, with
scikit-learn. Liu et al.'s public code fed raw logits to the AUC (REFERENCE.md, defect 4);
:func:`macro_auc` refuses anything that is not a probability matrix, so that mistake cannot
come back through this module.

Small validation splits can lack a class entirely. A one-vs-rest AUC is undefined for a class
absent from ``y_true`` (no positives) or for a class that is the only one present (no
negatives); such a class gets NaN in :func:`per_class_auc` and the macro average is taken over
the classes that have an AUC. The macro-AUC is NaN only when no class has one (fewer than two
classes present).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

#: The keys of :func:`classification_metrics`, without prefix.
METRIC_NAMES: Sequence[str] = ("accuracy", "balanced_accuracy", "macro_auc")
#: How far a row of probabilities may sum from 1 (float16/bfloat16 softmax outputs included).
PROBABILITY_TOLERANCE = 1e-3


def softmax(logits: ArrayLike) -> NDArray[np.float64]:
    """Row-wise softmax in float64 (numerically stable), for callers that hold logits."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def accuracy(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Fraction of correct predictions (NaN for an empty split)."""
    t, p = np.asarray(y_true), np.asarray(y_pred)
    if t.shape != p.shape:
        raise ValueError(f"y_true {t.shape} and y_pred {p.shape} differ in shape")
    return float(np.mean(t == p)) if t.size else float("nan")


def balanced_accuracy(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Mean recall over the classes present in ``y_true`` (scikit-learn's definition).

    A class absent from ``y_true`` has no recall and is left out of the mean; scikit-learn
    warns when ``y_pred`` holds such a class, which is expected here and silenced.
    """
    t, p = np.asarray(y_true), np.asarray(y_pred)
    if not t.size:
        return float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return float(balanced_accuracy_score(t, p))


def _check_probabilities(probs: NDArray[np.float64], n: int) -> None:
    if probs.ndim != 2 or probs.shape[0] != n:
        raise ValueError(f"probabilities must have shape ({n}, n_classes), got {probs.shape}")
    if not np.isfinite(probs).all():
        raise ValueError("probabilities hold NaN or inf")
    low, high = probs.min(initial=0.0), probs.max(initial=0.0)
    sums = probs.sum(axis=1)
    if low < 0.0 or high > 1.0 or np.abs(sums - 1.0).max(initial=0.0) > PROBABILITY_TOLERANCE:
        raise ValueError(
            "macro-AUC needs softmax probabilities (rows in [0, 1] summing to 1), not logits "
            f"(min {low:.3g}, max {high:.3g}, row sums {sums.min():.4g}..{sums.max():.4g})"
        )


def per_class_auc(y_true: ArrayLike, probs: ArrayLike) -> NDArray[np.float64]:
    """One-vs-rest ROC AUC of each class (column of ``probs``); NaN where undefined.

    Args:
        y_true: integer labels in ``0 .. n_classes - 1``.
        probs: softmax probabilities, shape ``(n, n_classes)``; logits are refused.
    """
    t = np.asarray(y_true).astype(int)
    p = np.asarray(probs, dtype=np.float64)
    _check_probabilities(p, t.size)
    out = np.full(p.shape[1], np.nan)
    for k in range(p.shape[1]):
        positives = t == k
        if positives.any() and not positives.all():
            out[k] = roc_auc_score(positives, p[:, k])
    return out


def macro_auc(y_true: ArrayLike, probs: ArrayLike) -> float:
    """Mean one-vs-rest AUC over the classes that have one (see the module docstring)."""
    aucs = per_class_auc(y_true, probs)
    defined = aucs[~np.isnan(aucs)]
    return float(defined.mean()) if defined.size else float("nan")


def classification_metrics(
    y_true: ArrayLike, probs: ArrayLike, prefix: str = ""
) -> dict[str, float]:
    """Accuracy, balanced accuracy and macro-AUC from probabilities (argmax is the prediction).

    Args:
        y_true: integer labels.
        probs: softmax probabilities, shape ``(n, n_classes)``.
        prefix: prepended to each key (``"val_"`` gives ``val_accuracy`` ...), for log rows.
    """
    p = np.asarray(probs, dtype=np.float64)
    t = np.asarray(y_true).astype(int)
    if not t.size:
        nan = float("nan")
        return {f"{prefix}{k}": nan for k in METRIC_NAMES}
    pred = p.argmax(axis=1)
    return {
        f"{prefix}accuracy": accuracy(t, pred),
        f"{prefix}balanced_accuracy": balanced_accuracy(t, pred),
        f"{prefix}macro_auc": macro_auc(t, p),
    }
