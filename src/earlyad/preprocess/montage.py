"""Three-plane montages (axial, coronal, sagittal) of a volume, for QC and Grad-CAM figures.

Why: a misregistered scan is obvious at a glance when the template's brain-mask contour is drawn
on its mid-slices, and the same figure with a heatmap overlay shows where a CNN looked.

Conventions: the volume is first reoriented to the closest canonical (RAS+) orientation using
its affine, so any input orientation is shown upright. Slices are displayed the radiological way
(the subject's right on the viewer's left, labelled R/L), anterior up in axial slices, superior
up in coronal and sagittal ones, anterior to the right in sagittal ones; pixels are square in mm.
Matplotlib's object API with the Agg canvas is used (no pyplot, no global backend change), so it
runs headless and in worker threads.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = ["canonical", "three_plane_montage"]

_TEXT = {"color": "yellow", "fontsize": 11, "fontweight": "bold"}


def canonical(volume: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``volume`` flipped/permuted to RAS+ axis order and the matching affine."""
    affine = np.asarray(affine, dtype=float)
    transform = nib.orientations.ornt_transform(
        nib.orientations.io_orientation(affine), nib.orientations.axcodes2ornt("RAS")
    )
    data = nib.orientations.apply_orientation(np.asarray(volume), transform)
    new_affine = affine @ nib.orientations.inv_ornt_aff(transform, np.asarray(volume).shape)
    return data, new_affine


def _centre(shape: Sequence[int], affine: np.ndarray, cut_mm: Sequence[float] | None) -> list:
    """Voxel indices of the slices: the volume centre, or the world point ``cut_mm``."""
    if cut_mm is None:
        return [n // 2 for n in shape]
    ijk = np.linalg.inv(affine) @ np.append(np.asarray(cut_mm, dtype=float), 1.0)
    return [int(np.clip(round(v), 0, n - 1)) for v, n in zip(ijk[:3], shape, strict=True)]


def _planes(data: np.ndarray, ijk: Sequence[int]) -> list[np.ndarray]:
    """Axial, coronal, sagittal slices as display images (row 0 at the bottom).

    Axial and coronal are flipped left-right for radiological display.
    """
    i, j, k = ijk
    axial = data[:, :, k].T[:, ::-1]  # rows: posterior->anterior, cols: right->left
    coronal = data[:, j, :].T[:, ::-1]  # rows: inferior->superior, cols: right->left
    sagittal = data[i, :, :].T  # rows: inferior->superior, cols: posterior->anterior
    return [axial, coronal, sagittal]


def _extents(shape: Sequence[int], zooms: np.ndarray) -> list[tuple[float, float, float, float]]:
    """Display extents in mm for each plane, so that pixels are square in the world."""
    w = np.asarray(shape) * zooms
    return [(0, w[0], 0, w[1]), (0, w[0], 0, w[2]), (0, w[1], 0, w[2])]


def _labels(ax: Axes, left: str, right: str) -> None:
    ax.text(0.02, 0.5, left, transform=ax.transAxes, ha="left", va="center", **_TEXT)
    ax.text(0.98, 0.5, right, transform=ax.transAxes, ha="right", va="center", **_TEXT)


def _window(volume: np.ndarray) -> tuple[float, float]:
    """Grey-level window: robust to a few hot voxels, and from 0 for non-negative images."""
    finite = volume[np.isfinite(volume)]
    if finite.size == 0:
        return 0.0, 1.0
    hi = float(np.percentile(finite, 99.5))
    lo = 0.0 if finite.min() >= 0 else float(np.percentile(finite, 0.5))
    return lo, hi if hi > lo else lo + 1.0


def three_plane_montage(
    volume: np.ndarray,
    affine: np.ndarray,
    out_png: Path,
    title: str,
    overlay: np.ndarray | None = None,
    overlay_cmap: str = "jet",
    mask_contour: np.ndarray | None = None,
    *,
    overlay_alpha: float = 0.45,
    overlay_range: tuple[float, float] | None = None,
    contour_color: str = "red",
    cut_mm: Sequence[float] | None = None,
    dpi: int = 100,
) -> Path:
    """Write a 1x3 PNG of the axial, coronal and sagittal slices through the volume centre
    (or through the world point ``cut_mm``).

    ``overlay`` (same grid, e.g. a Grad-CAM map) is drawn with ``overlay_cmap`` where it is
    > 0; ``mask_contour`` (same grid, e.g. the template brain mask) as a 0.5 iso-line.
    """
    data, canon_affine = canonical(np.asarray(volume, dtype=np.float32), affine)
    zooms = np.linalg.norm(canon_affine[:3, :3], axis=0)
    ijk = _centre(data.shape, canon_affine, cut_mm)
    extents = _extents(data.shape, zooms)
    world = canon_affine[:3, :3] @ np.asarray(ijk, dtype=float) + canon_affine[:3, 3]
    lo, hi = _window(data)
    extra = {}
    if overlay is not None:
        over = canonical(np.asarray(overlay, np.float32), affine)[0]
        extra["overlay"] = _planes(over, ijk)
        top = float(np.nanmax(over)) if np.isfinite(over).any() else 1.0
        overlay_range = overlay_range or (0.0, top if top > 0 else 1.0)
    if mask_contour is not None:
        mask = canonical(np.asarray(mask_contour, dtype=np.float32), affine)[0]
        extra["mask"] = _planes(mask, ijk)

    fig = Figure(figsize=(13, 4.8), facecolor="black")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3)
    names = ("axial", "coronal", "sagittal")
    sides = (("R", "L"), ("R", "L"), ("P", "A"))
    for p, (ax, plane) in enumerate(zip(axes, _planes(data, ijk), strict=True)):
        ext = extents[p]
        ax.imshow(plane, cmap="gray", vmin=lo, vmax=hi, origin="lower", extent=ext)
        if "overlay" in extra:
            ov = np.ma.masked_where(~(extra["overlay"][p] > 0), extra["overlay"][p])
            ax.imshow(
                ov, cmap=overlay_cmap, alpha=overlay_alpha, vmin=overlay_range[0],
                vmax=overlay_range[1], origin="lower", extent=ext,
            )  # fmt: skip
        if "mask" in extra and extra["mask"][p].max() > 0.5 > extra["mask"][p].min():
            ax.contour(
                extra["mask"][p], levels=[0.5], colors=contour_color, linewidths=0.9,
                origin="lower", extent=ext,
            )  # fmt: skip
        _labels(ax, *sides[p])
        ax.set_title(f"{names[p]} {'zyx'[p]} = {world[2 - p]:.0f} mm", color="white")
        ax.set_axis_off()
    fig.suptitle(title, color="white", fontsize=12)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.02, top=0.86, wspace=0.03)
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=dpi, facecolor=fig.get_facecolor())
    return out_png
