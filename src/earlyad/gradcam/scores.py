"""Numbers that say whether Grad-CAM maps point at anatomy: region shares and localization.

Region share (per scan): the share of the map's mass (sum of its values) inside each atlas
region; its chance level is the region's share of the voxels the map is defined on (what a
flat map would give). Averaged per true and per predicted class.

Localization against a known truth (the synthetic cohort: each scan's atrophy mask, carried
onto the normalized grid through the scan's own transforms):

* top-decile share: of the 10 % highest-valued voxels of the map, the share inside the
  ground-truth mask dilated by ``dilation_mm`` (the map comes from a 6^3 feature grid, about
  24 mm per cell at 1.5 mm voxels, so an undilated mask would punish any blur);
* pointing game (Zhang et al., ECCV 2016): a hit when the map's maximum lies inside the dilated
  mask.

Both are computed within the ``domain`` (the brain inside the centred crop); for both the value
expected by chance (a map unrelated to the truth) is the dilated mask's share of the domain,
reported beside them. Scans without ground-truth change (CN) have nothing to point at and are
left out; empty maps (all zero) count as misses and are counted.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
from scipy import ndimage as ndi

__all__ = ["TOP_FRACTION", "ball", "localization", "region_shares"]

#: Share of the domain's voxels in the "top decile".
TOP_FRACTION = 0.10


def ball(radius_mm: float, voxel_size: float) -> np.ndarray:
    """Spherical structuring element of ``radius_mm`` on a ``voxel_size`` grid."""
    r = max(0, math.floor(radius_mm / voxel_size + 1e-9))
    g = np.arange(-r, r + 1) * voxel_size
    return (g[:, None, None] ** 2 + g[None, :, None] ** 2 + g[None, None, :] ** 2) <= (
        radius_mm**2 + 1e-6
    )


def region_shares(
    cam: np.ndarray, regions: Mapping[str, np.ndarray], domain: np.ndarray
) -> dict[str, float]:
    """``mass_{region}`` (share of the map's mass in the region) and ``volume_{region}`` (the
    region's share of ``domain``: the chance level) for each region; NaN mass for an empty map."""
    inside = np.where(domain, cam, 0.0)
    total = float(inside.sum(dtype=np.float64))
    n = int(domain.sum())
    out: dict[str, float] = {}
    for name, mask in regions.items():
        m = mask & domain
        out[f"mass_{name}"] = (
            float(inside[m].sum(dtype=np.float64)) / total if total > 0 else math.nan
        )
        out[f"volume_{name}"] = int(m.sum()) / n if n else math.nan
    return out


def localization(
    cam: np.ndarray, truth: np.ndarray, domain: np.ndarray, dilation_mm: float, voxel_size: float
) -> dict[str, float]:
    """Top-decile share, pointing-game hit and their chance level for one scan (see above).

    Returns NaN values when the truth is empty inside the domain (nothing to localize).
    """
    target = (
        truth if dilation_mm <= 0 else ndi.binary_dilation(truth, ball(dilation_mm, voxel_size))
    )
    target = target & domain
    n = int(domain.sum())
    values = cam[domain]
    result = {
        "truth_voxels": int(target.sum()),
        "chance": int(target.sum()) / n if n else math.nan,
        "top_decile_share": math.nan,
        "pointing_hit": math.nan,
        "empty_map": float(not (values.size and values.max() > 0)),
    }
    if not target.any() or n == 0:
        return result
    hits = target[domain]
    if result["empty_map"]:
        result["top_decile_share"], result["pointing_hit"] = 0.0, 0.0
        return result
    k = max(1, int(round(TOP_FRACTION * n)))
    top = np.argpartition(-values, k - 1)[:k]
    result["top_decile_share"] = float(hits[top].mean())
    result["pointing_hit"] = float(hits[int(np.argmax(values))])
    return result
