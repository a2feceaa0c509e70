"""Thresholds of a Grad-CAM map, and the region they are computed in.

The study's three modes (REFERENCE.md, Grad-CAM), chosen by ``gradcam.mode`` or
``earlyad gradcam --mode``:

* ``percentile``: keep the top ``p`` % of the region's voxels: the threshold is the value of
  the ``k = round(p n / 100)``-th highest of its ``n`` voxels (at least 1), and voxels at or
  above it are kept (ties included), so exactly ``k`` voxels when the values differ;
* ``otsu``: Otsu's threshold of the region's values (scikit-image), which splits a bimodal
  histogram where the between-class variance is largest;
* ``mean_std``: mean + ``k`` standard deviations of the region's values.

Region: the hippocampus (AAL, :mod:`.atlas`) when restricting to it, else the centred crop the
network saw. When the hippocampus mask does not overlap the crop (a scan or atlas in another
space), the centred crop is used instead and the fallback is recorded, never silently.
Kept voxels are above 0 and above the threshold (at or above it for ``percentile``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from skimage.filters import threshold_otsu

__all__ = ["MODES", "Mode", "Thresholded", "restriction_region", "threshold_map", "threshold_value"]

Mode = Literal["percentile", "otsu", "mean_std"]
MODES: tuple[str, ...] = ("percentile", "otsu", "mean_std")


def threshold_value(
    values: np.ndarray, mode: Mode, percentile: float = 10.0, k: float = 1.0
) -> float:
    """The threshold of ``values`` (1D) for ``mode``; see the module docstring.

    Args:
        percentile: share (%) of voxels kept by ``percentile`` (0 < p <= 100).
        k: number of standard deviations above the mean for ``mean_std``.

    Raises:
        ValueError: unknown mode, empty ``values`` or ``percentile`` outside (0, 100].
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size == 0:
        raise ValueError("cannot threshold an empty region")
    if mode == "percentile":
        if not 0.0 < percentile <= 100.0:
            raise ValueError(f"gradcam percentile must be in (0, 100], got {percentile}")
        k = max(1, round(percentile * values.size / 100.0))
        return float(np.partition(values, values.size - k)[values.size - k])
    if mode == "otsu":
        if float(values.max()) == float(values.min()):
            return float(values.max())
        return float(threshold_otsu(values))
    if mode == "mean_std":
        return float(values.mean() + k * values.std())
    raise ValueError(f"unknown threshold mode {mode!r}; choose one of {MODES}")


def restriction_region(crop: np.ndarray, hippocampus: np.ndarray | None) -> tuple[np.ndarray, bool]:
    """(region, fell_back): the hippocampus inside the crop, or the crop when the mask misses it
    (or no mask is given: then ``fell_back`` is False, nothing was asked)."""
    if hippocampus is None:
        return crop, False
    inside = hippocampus & crop
    if not inside.any():
        return crop, True
    return inside, False


@dataclass(frozen=True)
class Thresholded:
    """A thresholded map and how it was obtained."""

    mask: np.ndarray  # bool, voxels kept
    value: float  # the threshold
    region_voxels: int  # voxels the threshold was computed over
    fell_back: bool  # the hippocampus mask missed the crop; the crop was used


def threshold_map(
    cam: np.ndarray,
    crop: np.ndarray,
    hippocampus: np.ndarray | None,
    mode: Mode,
    percentile: float = 10.0,
    k: float = 1.0,
) -> Thresholded:
    """Threshold ``cam`` within the region of :func:`restriction_region`."""
    region, fell_back = restriction_region(crop, hippocampus)
    value = threshold_value(cam[region], mode, percentile, k)
    above = cam >= value if mode == "percentile" else cam > value
    mask = region & above & (cam > 0)
    return Thresholded(mask, value, int(region.sum()), fell_back)
