"""Per-scan normalization: study-template registration, isotropic resampling, intensity
standardization, the tensor cache and QC.

Why each step:

* (a) ``register=True`` aligns the t1-linear output (already affine to MNI) to the study template
  built from the training scans, as the reference study does; ``register=False`` (template
  "mni") keeps the t1-linear alignment. The affine is estimated on 2 mm copies (seeded, masked by
  the dilated template brain mask) and applied once to the full-resolution scan.
* (b) the scan is resampled (in the same interpolation as (a)) to isotropic ``voxel_size`` over
  the template's field of view: same centre, and an extent within half a voxel of the original
  (169x208x179 mm at 1.5 mm -> 113x139x119 voxels), so the world coordinates are unchanged and
  the affine written is exact.
* (c) NaN/inf would poison min-max scaling and the CNN; they are set to 0 and counted.
* (d) intensities are standardized: ``minmax`` to [0, 1] over the volume (the study's choice);
  ``zscore`` with the mean and SD inside the template brain mask (so the background does not set
  the scale); ``percentile`` clipping to the given percentiles of the brain-mask voxels, then
  [0, 1] (robust to a few hot voxels).
* (e) outputs, per scan in ``out_dir``: ``{pid}_{ses}_desc-norm_T1w.nii.gz`` (float32),
  ``{pid}_{ses}.npy`` (the tensor cache), ``{pid}_{ses}_qc.json``,
  ``{pid}_{ses}_montage.png`` and ``{pid}_{ses}_to-template_affine.mat``: the affine of (a) in
  ANTs' convention (it maps a point of the normalized grid's world to the t1-linear image's
  world; the identity with ``register=False``). With t1-linear's ``*_affine.mat`` it carries
  anything drawn on the BIDS scan (e.g. the synthetic cohort's atrophy masks) onto the
  normalized grid exactly (see :mod:`earlyad.gradcam.transforms`).

Tensor cache layout (``{pid}_{ses}.npy``): ``np.save`` of a float16, C-order array of shape
``(X, Y, Z)`` that is exactly the NIfTI array of ``*_desc-norm_T1w.nii.gz``: element
``[i, j, k]`` is voxel ``(i, j, k)``, at world position ``affine @ (i, j, k, 1)`` (the affine is
in the NIfTI and in the QC json). C order means ``k`` varies fastest in the file, i.e. the flat
offset is ``(i * Y + j) * Z + k`` (NIfTI files store ``i`` fastest: do not read one as the
other). ``np.load(path, mmap_mode="r")`` maps it without reading it; a C++ reader must parse the
.npy header (``descr '<f2'``, ``fortran_order False``, ``shape (X, Y, Z)``) and keep this order.

QC (``*_qc.json``): ``ncc`` (Pearson correlation with the template inside its brain mask, both
smoothed with a 2 mm Gaussian: see :data:`NCC_SMOOTHING_MM`),
``mask_dice`` (Dice of a brain mask estimated from the scan with the template's),
``brain_fraction_in_box`` (share of the estimated brain outline that lies inside the box rather
than on its faces: low when the crop box cut through the brain), ``brain_volume_ml``,
``nan_voxels``, ``shape``, ``voxel_size``, ``affine``. Thresholds live in :mod:`.qc`.

A scan without a brain (constant, all zeros, or nothing brain-sized above an Otsu threshold)
raises :class:`BadScanError`, naming the file and the reason, before any registration.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi
from skimage.filters import threshold_otsu

from earlyad.preprocess import TRANSFORM_SUFFIX
from earlyad.preprocess.montage import three_plane_montage
from earlyad.preprocess.study_template import (
    downsample,
    import_ants,
    nifti_to_ants,
    read_volume,
    register_affine,
    registration_mask,
    save_float32,
)

__all__ = [
    "BRAIN_OPENING_MM",
    "MIN_BRAIN_ML",
    "NCC_SMOOTHING_MM",
    "BadScanError",
    "Intensity",
    "NormalizeResult",
    "TRANSFORM_SUFFIX",
    "brain_fraction_in_box",
    "dice",
    "estimate_brain_mask",
    "isotropic_grid",
    "masked_ncc",
    "normalize_scan",
    "output_paths",
    "standardize",
]

Intensity = Literal["minmax", "zscore", "percentile"]

#: Radius (mm) of the morphological opening that detaches the brain from the scalp in the Otsu
#: mask. Measured on Colin27 (skull on, cropped grid, 1.5 mm): Dice with the MNI brain mask
#: 0.70 (no opening), 0.71 (3 mm), 0.91 (6 mm), 0.82 (9 mm): 6 mm is about the skull's
#: thickness, enough to cut the thin bridges between scalp and brain and no more.
BRAIN_OPENING_MM = 6.0
#: Both volumes are smoothed with a Gaussian of this sigma (mm) before the NCC: at 1.5 mm the raw
#: correlation is dominated by cortical folding and noise, which differ between subjects without
#: any misregistration (two well-aligned different brains: raw 0.64-0.67, smoothed 0.80-0.82),
#: while a 10-20 mm shift still drops it to 0.12-0.34.
NCC_SMOOTHING_MM = 2.0
#: Fewer millilitres than this above Otsu, in one piece, is not a brain (a normal one is
#: 1000-1600 mL; the cropped MNI brain mask is 1900 mL): the scan is rejected.
MIN_BRAIN_ML = 300.0


class BadScanError(ValueError):
    """The scan cannot be normalized (no brain in it); the message names the file and why."""


@dataclass(frozen=True)
class NormalizeResult:
    """Paths written by :func:`normalize_scan` and its QC metrics."""

    image: Path  # {pid}_{ses}_desc-norm_T1w.nii.gz
    tensor: Path  # {pid}_{ses}.npy (float16, C order, axes X, Y, Z)
    qc_json: Path  # {pid}_{ses}_qc.json
    montage: Path  # {pid}_{ses}_montage.png
    transform: Path  # {pid}_{ses}_to-template_affine.mat (normalized world -> t1-linear world)
    qc: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- geometry


def isotropic_grid(
    shape: tuple[int, ...], affine: np.ndarray, voxel_size: float
) -> tuple[tuple[int, int, int], np.ndarray]:
    """Shape and affine of a ``voxel_size`` grid over the field of view of ``(shape, affine)``.

    Same axis directions and centre; each axis gets ``round(extent / voxel_size)`` voxels, so
    the new box differs from the old by less than half a voxel at each face.
    """
    affine = np.asarray(affine, dtype=float)
    zooms = np.linalg.norm(affine[:3, :3], axis=0)
    extent = np.asarray(shape[:3], dtype=float) * zooms
    new_shape = tuple(max(1, int(np.floor(e / voxel_size + 0.5))) for e in extent)
    lin = affine[:3, :3] / zooms * voxel_size
    centre = affine[:3, :3] @ ((np.asarray(shape[:3]) - 1) / 2.0) + affine[:3, 3]
    new_affine = np.eye(4)
    new_affine[:3, :3] = lin
    new_affine[:3, 3] = centre - lin @ ((np.asarray(new_shape) - 1) / 2.0)
    return (new_shape[0], new_shape[1], new_shape[2]), new_affine


def output_paths(out_dir: Path, participant_id: str, session_id: str) -> dict[str, Path]:
    """The five files :func:`normalize_scan` writes for one scan."""
    stem = Path(out_dir) / f"{participant_id}_{session_id}"
    return {
        "image": stem.with_name(f"{stem.name}_desc-norm_T1w.nii.gz"),
        "tensor": stem.with_name(f"{stem.name}.npy"),
        "qc_json": stem.with_name(f"{stem.name}_qc.json"),
        "montage": stem.with_name(f"{stem.name}_montage.png"),
        "transform": stem.with_name(f"{stem.name}{TRANSFORM_SUFFIX}"),
    }


# --------------------------------------------------------------------------- intensities


def standardize(
    volume: np.ndarray,
    mask: np.ndarray,
    method: Intensity = "minmax",
    percentiles: tuple[float, float] = (1.0, 99.0),
) -> np.ndarray:
    """Standardize intensities (see the module docstring); returns float32."""
    x = np.asarray(volume, dtype=np.float64)
    if method == "minmax":
        lo, hi = float(x.min()), float(x.max())
    elif method == "percentile":
        p_lo, p_hi = percentiles
        if not 0.0 <= p_lo < p_hi <= 100.0:
            raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100, got {percentiles}")
        lo, hi = (float(v) for v in np.percentile(x[mask], [p_lo, p_hi]))
        x = np.clip(x, lo, hi)
    elif method == "zscore":
        inside = x[mask]
        mean, sd = float(inside.mean()), float(inside.std())
        if sd <= 0:
            raise ValueError("zscore: the volume is constant inside the brain mask")
        return ((x - mean) / sd).astype(np.float32)
    else:
        raise ValueError(f"unknown intensity method {method!r}")
    if hi <= lo:
        raise ValueError(f"{method}: no intensity range to scale ({lo} .. {hi})")
    return ((x - lo) / (hi - lo)).astype(np.float32)


# --------------------------------------------------------------------------- brain masks, QC


def _ball(radius_mm: float, voxel_size: float) -> np.ndarray:
    r = max(1, round(radius_mm / voxel_size))
    g = np.arange(-r, r + 1) * voxel_size
    return (g[:, None, None] ** 2 + g[None, :, None] ** 2 + g[None, None, :] ** 2) <= (
        radius_mm**2 + 1e-6
    )


def _largest_component(mask: np.ndarray) -> np.ndarray:
    labels, n = ndi.label(mask)
    if n == 0:
        return mask
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(sizes.argmax())


def estimate_brain_mask(volume: np.ndarray, voxel_size: float) -> np.ndarray:
    """A rough brain mask: Otsu threshold, opening by :data:`BRAIN_OPENING_MM` (to detach scalp
    and neck), largest connected component, holes (ventricles) filled.

    Independent of the template on purpose: its overlap with the template mask is the QC.
    """
    x = np.asarray(volume, dtype=np.float32)
    if float(x.max()) <= float(x.min()):
        return np.zeros(x.shape, dtype=bool)
    above = x > threshold_otsu(x)
    ball = _ball(BRAIN_OPENING_MM, voxel_size)
    core = _largest_component(ndi.binary_erosion(above, structure=ball))
    brain = ndi.binary_dilation(core, structure=ball) & above
    return ndi.binary_fill_holes(_largest_component(brain))


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap of two boolean masks (0 when both are empty)."""
    total = int(a.sum()) + int(b.sum())
    return 2.0 * int(np.logical_and(a, b).sum()) / total if total else 0.0


def masked_ncc(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    """Normalized cross-correlation (Pearson) of ``a`` and ``b`` over ``mask``."""
    x = np.asarray(a, dtype=np.float64)[mask]
    y = np.asarray(b, dtype=np.float64)[mask]
    x = x - x.mean()
    y = y - y.mean()
    denom = float(np.sqrt((x * x).sum() * (y * y).sum()))
    return float((x * y).sum() / denom) if denom > 0 else 0.0


def brain_fraction_in_box(mask: np.ndarray) -> float:
    """Share of the mask's outline (its boundary voxels) that is NOT on a face of the volume.

    1.0 when the brain lies wholly inside the crop box; it drops as the box cuts through the
    brain (a failed t1-linear, a head outside the field of view); 0 for an empty mask.
    """
    outline = mask & ~ndi.binary_erosion(mask)
    n = int(outline.sum())
    if n == 0:
        return 0.0
    face = np.zeros(mask.shape, dtype=bool)
    face[[0, -1], :, :] = face[:, [0, -1], :] = face[:, :, [0, -1]] = True
    return 1.0 - int((outline & face).sum()) / n


# --------------------------------------------------------------------------- the scan


def _check_has_brain(data: np.ndarray, affine: np.ndarray, path: Path) -> None:
    """Raise :class:`BadScanError` unless a brain-sized object is in the scan (checked on the
    2 mm copy: cheap, and before any registration)."""
    lo, hi = float(data.min()), float(data.max())
    if hi <= lo:
        raise BadScanError(f"{path}: constant image (every voxel = {lo:g}), no brain")
    small, small_affine = downsample(data, affine)
    spacing = float(np.cbrt(abs(np.linalg.det(small_affine[:3, :3]))))
    brain_ml = float(estimate_brain_mask(small, spacing).sum()) * spacing**3 / 1000.0
    if brain_ml < MIN_BRAIN_ML:
        raise BadScanError(
            f"{path}: no brain found (largest object above the Otsu threshold is "
            f"{brain_ml:.0f} mL < {MIN_BRAIN_ML:.0f} mL)"
        )


def _to_grid(
    scan: tuple[np.ndarray, np.ndarray],
    template: tuple[np.ndarray, np.ndarray],
    template_mask: tuple[np.ndarray, np.ndarray],
    grid: tuple[tuple[int, int, int], np.ndarray],
    register: bool,
    seed: int,
) -> tuple[np.ndarray, bytes]:
    """The scan resampled onto ``grid``, through the affine to the template if ``register``,
    and that affine as the bytes of an ANTs ``.mat`` file (the identity without ``register``).

    Images are ``(data, affine)`` pairs; the mask restricts the registration metric.
    """
    ants = import_ants()
    target = nifti_to_ants(np.zeros(grid[0], np.float32), grid[1])
    moving = nifti_to_ants(*scan)
    with tempfile.TemporaryDirectory(prefix="earlyad_norm_") as tmp:
        if not register:
            out = ants.resample_image_to_target(moving, target, interp_type="linear")
            identity = ants.create_ants_transform(transform_type="AffineTransform", dimension=3)
            ants.write_transform(identity, str(Path(tmp) / "identity.mat"))
            return out.numpy().astype(np.float32), (Path(tmp) / "identity.mat").read_bytes()
        fixed = nifti_to_ants(*downsample(*template))
        mask = registration_mask(nifti_to_ants(*template_mask), fixed)
        small = nifti_to_ants(*downsample(*scan))
        transforms = register_affine(fixed, small, seed, Path(tmp), mask)
        out = ants.apply_transforms(
            fixed=target, moving=moving, transformlist=transforms, interpolator="linear"
        )
        return out.numpy().astype(np.float32), Path(transforms[0]).read_bytes()


def _on_grid(
    data: np.ndarray, affine: np.ndarray, grid: tuple[tuple[int, int, int], np.ndarray]
) -> np.ndarray:
    """``data`` (template or mask) linearly resampled onto ``grid``."""
    ants = import_ants()
    target = nifti_to_ants(np.zeros(grid[0], np.float32), grid[1])
    out = ants.resample_image_to_target(nifti_to_ants(data, affine), target, interp_type="linear")
    return out.numpy().astype(np.float32)


def _qc_metrics(
    volume: np.ndarray, template: np.ndarray, mask: np.ndarray, voxel_size: float
) -> tuple[dict[str, Any], np.ndarray]:
    """QC metrics of the resampled (not yet standardized) scan, and its estimated brain mask.

    Computed before standardization so that they do not depend on the intensity option.
    """
    brain = estimate_brain_mask(volume, voxel_size)
    sigma = NCC_SMOOTHING_MM / voxel_size
    smooth_scan = ndi.gaussian_filter(volume, sigma)
    smooth_template = ndi.gaussian_filter(template, sigma)
    metrics = {
        "ncc": round(masked_ncc(smooth_scan, smooth_template, mask), 4),
        "ncc_smoothing_sigma_mm": NCC_SMOOTHING_MM,
        "mask_dice": round(dice(brain, mask), 4),
        "brain_fraction_in_box": round(brain_fraction_in_box(brain), 4),
        "brain_volume_ml": round(float(brain.sum()) * voxel_size**3 / 1000.0, 1),
    }
    return metrics, brain


def _check_options(intensity: str, percentiles: tuple[float, float], voxel_size: float) -> None:
    """Fail on a configuration error before any work, and never as a :class:`BadScanError`."""
    if intensity not in ("minmax", "zscore", "percentile"):
        raise ValueError(f"unknown intensity method {intensity!r}")
    if not 0.0 <= percentiles[0] < percentiles[1] <= 100.0:
        raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100, got {percentiles}")
    if voxel_size <= 0:
        raise ValueError(f"voxel_size must be > 0, got {voxel_size}")


def _write_outputs(
    out: np.ndarray,
    affine: np.ndarray,
    paths: dict[str, Path],
    qc: dict[str, Any],
    mask: np.ndarray,
    template_img: nib.Nifti1Image,
    transform: bytes,
) -> None:
    """The NIfTI (float32, the template's sform/qform codes), the float16 C-order tensor, the QC
    json, the montage with the template's brain-mask contour and the registration affine."""
    paths["image"].parent.mkdir(parents=True, exist_ok=True)
    paths["transform"].write_bytes(transform)
    save_float32(out, affine, paths["image"], like=template_img)
    np.save(paths["tensor"], np.ascontiguousarray(out, dtype=np.float16))
    paths["qc_json"].write_text(json.dumps(qc, indent=2) + "\n")
    title = (
        f"{qc['participant_id']} {qc['session_id']}   ncc {qc['ncc']:.3f}   "
        f"mask Dice {qc['mask_dice']:.3f}   {'registered' if qc['registered'] else 'MNI'}"
    )
    three_plane_montage(out, affine, paths["montage"], title, mask_contour=mask)


def normalize_scan(
    t1_linear: Path,
    template: Path,
    template_mask: Path,
    out_dir: Path,
    participant_id: str,
    session_id: str,
    *,
    register: bool = True,
    voxel_size: float = 1.5,
    intensity: Intensity = "minmax",
    percentiles: tuple[float, float] = (1.0, 99.0),
    seed: int = 0,
) -> NormalizeResult:
    """Normalize one t1-linear output (see the module docstring) and write its four files.

    Raises :class:`BadScanError` for a scan without a brain, ``ValueError`` for bad options.
    """
    _check_options(intensity, percentiles, voxel_size)
    t1_linear = Path(t1_linear)
    data, affine, nan_voxels = read_volume(t1_linear)
    _check_has_brain(data, affine, t1_linear)
    tpl_data, tpl_affine, _ = read_volume(Path(template))
    mask_data, mask_affine, _ = read_volume(Path(template_mask))
    mask_data = (mask_data > 0).astype(np.float32)
    grid = isotropic_grid(tpl_data.shape, tpl_affine, voxel_size)

    moved, transform = _to_grid(
        (data, affine), (tpl_data, tpl_affine), (mask_data, mask_affine), grid, register, seed
    )
    moved_bad = ~np.isfinite(moved)
    moved[moved_bad] = 0.0
    tpl_on_grid = _on_grid(tpl_data, tpl_affine, grid)
    mask_on_grid = _on_grid(mask_data, mask_affine, grid) >= 0.5
    metrics, _ = _qc_metrics(moved, tpl_on_grid, mask_on_grid, voxel_size)
    try:
        out = standardize(moved, mask_on_grid, intensity, percentiles)
    except ValueError as err:
        raise BadScanError(f"{t1_linear}: {err}") from err

    qc = {
        "participant_id": participant_id,
        "session_id": session_id,
        "input": str(t1_linear),
        "template": str(template),
        "registered": bool(register),
        **metrics,
        "nan_voxels": nan_voxels + int(moved_bad.sum()),
        "shape": list(out.shape),
        "voxel_size": float(voxel_size),
        "intensity": intensity,
        "percentiles": list(percentiles) if intensity == "percentile" else None,
        "tensor_dtype": "float16",
        "tensor_axes": "XYZ",
        "affine": np.round(grid[1], 6).tolist(),
        "transform": output_paths(Path(out_dir), participant_id, session_id)["transform"].name,
    }
    paths = output_paths(Path(out_dir), participant_id, session_id)
    _write_outputs(out, grid[1], paths, qc, mask_on_grid, nib.load(str(template)), transform)
    return NormalizeResult(
        image=paths["image"],
        tensor=paths["tensor"],
        qc_json=paths["qc_json"],
        montage=paths["montage"],
        transform=paths["transform"],
        qc=qc,
    )
