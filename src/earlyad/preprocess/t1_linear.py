"""t1-linear for one scan: bias correction, affine registration to MNI152NLin2009cSym, crop.

Why two backends behind one function (measured facts: /work/shared/T1LINEAR-FACTS.md):

* ``clinica`` runs the real ``clinica run t1-linear --use-antspy`` on one scan (a one-row
  subjects/sessions TSV, so Slurm can run scans in parallel). Beware: Clinica 0.12 passes
  ``type_of_transformation=`` to ``ants.registration``, whose keyword is ``type_of_transform``,
  so ANTsPy's default ``SyN`` runs: the CAPS image is NONLINEARLY warped (the saved ``.mat`` is
  only its affine part), ``--random_seed`` has no effect, and the SyN warp fields (about 180 MB
  per scan) are left in ``$TMPDIR``, so the child gets a private one inside the work dir.
  About 110-150 s and 1.7 GB per scan. Against the skull-stripped stand-in template its affine
  stage inflates the head onto the brain (scales ~1.3-1.4, errors ~20 mm): compare backends
  only with a whole-head template (the real 2009c).
* ``native`` calls ANTsPy directly: N4 (shrink 8, spline 200 mm), a coarse rigid search from
  7 starting rotations at 8 mm, then RIGID followed by AFFINE on 2 mm copies, the composed
  affine applied once to the full-resolution N4 image. The rigid stages are what keep heads
  turned by 25 degrees (and moved by 30 mm) from failing; a single rigid run from the centre of
  mass still failed on 2 of 3 such copies against the skull-stripped stand-in template.

Both write Clinica's file names (``clinica/pipelines/t1_linear/anat_linear_utils.py``)::

    {participant}_{session}_space-MNI152NLin2009cSym_desc-Crop_res-1x1x1_T1w.nii.gz
    {participant}_{session}_space-MNI152NLin2009cSym_res-1x1x1_affine.mat
    status.json   ({"ok", "backend", "seconds", "peak_rss_mb", "error", "nan_voxels", ...})

The image has the 169x208x179 1 mm grid and header of Clinica's cropped reference.

Inputs are read with nibabel, never assumed RAS or 1 mm: nibabel's affine (sform when its code
is set, else qform) is handed to ANTs directly. ITK's own NIfTI reader can disagree (it prefers
the qform when both are set and the sform code is not 1, and takes voxel sizes from pixdim), so
no input file is given to ITK as is. NaN voxels become 0 and are counted. N4 runs on an
axis-aligned copy: ANTs' N4 gave a bias field 10% different for the same voxels when the header
was turned by 25 degrees about y (its padding ignores the direction).

Each native run is a child process: ITK fixes its thread count when first used, the child's
peak memory is measured exactly (``os.wait4``), and a crash inside ITK fails one scan, not the
caller. ``ants.registration(random_seed=...)`` is silently ignored by antspyx 0.6.3 (the seed is
the module global ``ants.config._random_seed``), so the child sets that global, to ``seed + 1``:
ANTs reads 0 as "seed from the clock". Results are bit-identical for a seed with ``threads=1``;
with more ITK threads the metric's sums are reordered (outputs then agree to NCC ~0.9999).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError

from earlyad.preprocess.templates import (
    CROP_BOX,
    CROPPED_NAME,
    CROPPED_SHAPE,
    GRID_SHAPE,
    MNI_NAME,
    TemplatePaths,
    clinica_resources_dir,
    sha256_of,
)

__all__ = [
    "STATUS_NAME",
    "Backend",
    "CheckedImage",
    "InputImageError",
    "NativeSettings",
    "T1LinearError",
    "T1LinearResult",
    "load_t1",
    "native_t1_linear",
    "output_names",
    "run_t1_linear",
    "to_ants",
]

log = logging.getLogger("earlyad")

Backend = Literal["native", "clinica"]
STATUS_NAME = "status.json"
#: Voxel sizes outside this range (mm) are not a structural T1 (or a header in metres).
VOXEL_SIZE_RANGE = (0.2, 4.0)
#: Smallest plausible number of voxels along an axis of a T1 volume.
MIN_AXIS_VOXELS = 16
_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])  # RAS (NIfTI) <-> LPS (ITK) world coordinates


class InputImageError(ValueError):
    """The input scan is unusable (missing, corrupt, 4D, no orientation...); names the file."""


class T1LinearError(RuntimeError):
    """A backend ran but did not produce valid outputs."""


@dataclass(frozen=True)
class NativeSettings:
    """The native registration schedule, in one place (values: T1LINEAR-FACTS.md).

    Attributes:
        n4_shrink: N4 shrink factor; 8 is 5x faster than Clinica's 4, bias field within ~4%.
        n4_spline_mm: N4 B-spline fitting distance in mm (Clinica's 200).
        reg_spacing_mm: both images are registered as copies at this isotropic spacing.
        search_spacing_mm, search_angle_deg, search_iterations: the coarse rigid search (7
            starts: none, +-angle about each axis) that finds large head rotations.
        rigid_iterations, rigid_shrink, rigid_sigmas: the rigid stage (sigmas in voxels).
        affine_iterations, affine_shrink, affine_sigmas: the affine stage, started from rigid.
        sampling_rate: fraction of voxels the Mattes metric samples. 0.1 rather than ANTsPy's
            0.2: registration 2x faster (scan 25% faster); the same scan under headers turned
            by 25 degrees then lands within 0.17-0.34 mm of itself (0.06-0.32 mm at 0.2).
    """

    n4_shrink: int = 8
    n4_spline_mm: float = 200.0
    reg_spacing_mm: float = 2.0
    search_spacing_mm: float = 8.0
    search_angle_deg: float = 30.0
    search_iterations: int = 30
    rigid_iterations: tuple[int, ...] = (50, 25, 10)
    rigid_shrink: tuple[int, ...] = (4, 2, 1)
    rigid_sigmas: tuple[int, ...] = (2, 1, 0)
    affine_iterations: tuple[int, ...] = (25, 10)
    affine_shrink: tuple[int, ...] = (2, 1)
    affine_sigmas: tuple[int, ...] = (1, 0)
    sampling_rate: float = 0.1


@dataclass(frozen=True)
class T1LinearResult:
    """What one run produced; ``ok`` False means ``error`` says why (outputs are removed).

    Attributes:
        image: the cropped registered image (Clinica's name).
        affine: the ITK affine .mat, template -> scan (Clinica's name).
        status: status.json, the same facts as a file for the workflow's QC table.
    """

    image: Path
    affine: Path
    status: Path
    ok: bool
    seconds: float
    error: str | None
    backend: str
    peak_rss_mb: float | None = None
    nan_voxels: int | None = None

    def raise_for_error(self) -> None:
        """Raise :class:`T1LinearError` if the run failed (the workflow's ``on_bad_scan: fail``)."""
        if not self.ok:
            raise T1LinearError(self.error or "t1-linear failed")


@dataclass(frozen=True)
class CheckedImage:
    """A validated scan: float32 data, a single unambiguous affine, and what was fixed.

    Attributes:
        image: float32 NIfTI, scaling applied, NaN/inf set to 0, qform = sform (code 1).
        nan_voxels: how many voxels were NaN or infinite in the input.
        notes: header fixes a user should know about (e.g. qform and sform disagree).
    """

    image: nib.Nifti1Image
    nan_voxels: int
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def clean(self) -> bool:
        """True when any reader (ITK included) sees the input exactly as we do."""
        return self.nan_voxels == 0 and not self.notes


def output_names(participant_id: str, session_id: str) -> tuple[str, str]:
    """Clinica's CAPS file names of the cropped image and the affine for one scan."""
    stem = f"{participant_id}_{session_id}_space-MNI152NLin2009cSym"
    return f"{stem}_desc-Crop_res-1x1x1_T1w.nii.gz", f"{stem}_res-1x1x1_affine.mat"


# --------------------------------------------------------------------------- input checks


def _read_nifti(path: Path) -> tuple[nib.Nifti1Image, np.ndarray]:
    """Load header and data, turning every reader failure into an error naming the file."""
    if not path.is_file():
        raise InputImageError(f"{path}: no such file")
    try:
        img = nib.load(path)
        if not isinstance(img, nib.Nifti1Pair):  # Nifti1Image, Nifti2Image, .hdr/.img pairs
            raise InputImageError(f"{path}: not a NIfTI image ({type(img).__name__})")
        data = img.get_fdata(dtype=np.float32)  # applies scl_slope / scl_inter
    except InputImageError:
        raise
    except (OSError, EOFError, ValueError, zlib.error, ImageFileError) as err:
        raise InputImageError(f"{path}: unreadable or truncated NIfTI ({err})") from err
    return img, data


def _check_shape(path: Path, data: np.ndarray) -> np.ndarray:
    """One 3D volume of plausible size (a 4D file with one volume is accepted)."""
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InputImageError(
            f"{path}: {data.ndim}D image of shape {data.shape}; t1-linear needs one 3D volume"
        )
    if min(data.shape) < MIN_AXIS_VOXELS:
        raise InputImageError(f"{path}: shape {data.shape} is too small for a T1 volume")
    return data


def _check_affine(path: Path, img: nib.Nifti1Image) -> tuple[np.ndarray, list[str]]:
    """The affine nibabel uses, checked for orientation, voxel size and shear."""
    hdr = img.header
    q_code, s_code = int(hdr["qform_code"]), int(hdr["sform_code"])
    if q_code == 0 and s_code == 0:
        raise InputImageError(
            f"{path}: neither qform nor sform is set (codes 0), so its orientation is unknown; "
            "fix the header (e.g. reconvert the DICOMs with dcm2niix)"
        )
    affine = np.asarray(img.affine, dtype=np.float64)
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise InputImageError(f"{path}: singular or non-finite affine\n{affine}")
    zooms = np.linalg.norm(affine[:3, :3], axis=0)
    lo, hi = VOXEL_SIZE_RANGE
    if np.any(zooms < lo) or np.any(zooms > hi):
        raise InputImageError(
            f"{path}: voxel size {np.round(zooms, 3).tolist()} mm is outside {lo}-{hi} mm "
            "(not a structural T1, or spatial units that are not mm)"
        )
    cosines = affine[:3, :3] / zooms
    if np.abs(cosines.T @ cosines - np.eye(3)).max() > 1e-3:
        raise InputImageError(f"{path}: sheared affine (non-orthogonal axes) is not supported")
    return affine, _header_notes(img, affine, zooms)


def _header_notes(img: nib.Nifti1Image, affine: np.ndarray, zooms: np.ndarray) -> list[str]:
    """Header features on which ITK's reader and nibabel would disagree (we follow nibabel)."""
    hdr = img.header
    notes = []
    units = hdr.get_xyzt_units()[0]
    if units not in ("mm", "unknown"):
        notes.append(f"spatial units '{units}' ignored, voxel sizes read as mm")
    if int(hdr["sform_code"]) > 0 and int(hdr["qform_code"]) > 0:
        gap = np.abs(hdr.get_qform() - hdr.get_sform()).max()
        if gap > 1e-3:
            notes.append(f"qform and sform differ (max {gap:.3g}); used the sform, like nibabel")
    pixdim = np.asarray(hdr.get_zooms()[:3], dtype=np.float64)
    if np.abs(pixdim - zooms).max() > 1e-3:
        notes.append(f"pixdim {pixdim.tolist()} differs from the affine's voxel sizes")
    return notes


def load_t1(path: Path) -> CheckedImage:
    """Read and validate one T1 scan; every problem raises an error that names the file.

    Checked: the file exists and decompresses fully; one 3D volume; an orientation (qform or
    sform) with a voxel size of 0.2-4 mm and no shear; some signal. Fixed and reported:
    ``scl_slope``/``scl_inter`` applied, NaN/inf voxels set to 0 and counted, and the header
    rewritten with one affine for qform and sform.
    """
    path = Path(path)
    img, data = _read_nifti(path)
    data = _check_shape(path, data)
    affine, notes = _check_affine(path, img)
    bad = ~np.isfinite(data)
    nan_voxels = int(bad.sum())
    if nan_voxels:
        data = np.where(bad, np.float32(0), data)
    if nan_voxels == data.size or float(data.max()) == float(data.min()):
        raise InputImageError(f"{path}: constant image (no signal) after setting NaN to 0")
    clean = nib.Nifti1Image(np.ascontiguousarray(data, dtype=np.float32), affine)
    clean.set_qform(affine, code=1)
    clean.set_sform(affine, code=1)
    clean.header.set_xyzt_units("mm", "sec")
    return CheckedImage(image=clean, nan_voxels=nan_voxels, notes=tuple(notes))


def to_ants(img: nib.Nifti1Image) -> Any:
    """An ANTs image with the geometry of nibabel's affine (RAS -> ITK's LPS), data as float32.

    Why not ``ants.image_read``: ITK may pick the other of qform/sform, or pixdim for spacing.
    """
    import ants

    lps = _LPS @ np.asarray(img.affine, dtype=np.float64)
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    data = np.asarray(img.dataobj, dtype=np.float32)
    return ants.from_numpy(
        np.ascontiguousarray(data),
        origin=lps[:3, 3].tolist(),
        spacing=spacing.tolist(),
        direction=lps[:3, :3] / spacing,
    )


def _check_templates(templates: TemplatePaths) -> None:
    """Fail early, naming the file, when the installed templates are missing or wrong."""
    for path, shape in ((templates.mni, GRID_SHAPE), (templates.cropped, CROPPED_SHAPE)):
        if not Path(path).is_file():
            raise T1LinearError(f"{path}: template missing; run install_templates first")
        found = nib.load(path).shape[:3]
        if found != shape:
            raise T1LinearError(f"{path}: template shape {found}, expected {shape}")


# --------------------------------------------------------------------------- native backend


@contextmanager
def _timed(stages: dict[str, float], name: str) -> Iterator[None]:
    """Record the wall seconds of a stage (reported in status.json, for tuning)."""
    start = time.perf_counter()
    yield
    stages[name] = round(time.perf_counter() - start, 3)


@contextmanager
def _ants_seed(seed: int) -> Iterator[None]:
    """Set antspyx's global registration seed (its ``random_seed=`` keyword is ignored)."""
    import ants

    previous = ants.config._random_seed
    ants.config._random_seed = int(seed) + 1  # ANTs takes 0 as "seed from the clock"
    try:
        yield
    finally:
        ants.config._random_seed = previous


def _n4(img: Any, s: NativeSettings) -> Any:
    """N4 bias correction computed on an axis-aligned copy, geometry put back afterwards.

    Why: ANTs' N4 pads the image to whole B-spline spans and shifts the origin along the world
    axes, ignoring the direction; on a header rotated by 25 degrees about y the bias field
    changed by +-10% for the same voxels. The copy keeps the spacing, so distances are right.
    """
    import ants

    plain = ants.from_numpy(img.numpy(), spacing=img.spacing)
    corrected = ants.n4_bias_field_correction(
        plain, shrink_factor=s.n4_shrink, spline_param=s.n4_spline_mm
    )
    return ants.from_numpy(
        corrected.numpy(), origin=img.origin, spacing=img.spacing, direction=img.direction
    )


def _lowres(img: Any, spacing_mm: float) -> Any:
    """An isotropic copy for registration (linear interpolation)."""
    import ants

    return ants.resample_image(img, (spacing_mm,) * 3, use_voxels=False, interp_type=0)


def _start_transform(
    fixed: Any, moving: Any, angles_deg: tuple[float, float, float], path: Path
) -> Path:
    """A rotation about the fixed centre of mass that also aligns the centres of mass.

    ANTs maps fixed points to moving points: ``y = R (x - c_fixed) + c_moving``.
    """
    import ants
    from scipy.spatial.transform import Rotation

    c_fixed = np.asarray(ants.get_center_of_mass(fixed))
    c_moving = np.asarray(ants.get_center_of_mass(moving))
    tx = ants.create_ants_transform(
        transform_type="AffineTransform",
        precision="float",
        dimension=3,
        matrix=Rotation.from_euler("xyz", angles_deg, degrees=True).as_matrix(),
        center=c_fixed.tolist(),
        translation=(c_moving - c_fixed).tolist(),
    )
    ants.write_transform(tx, str(path))
    return path


def _search_starts(angle: float) -> list[tuple[float, float, float]]:
    """No rotation, and +-``angle`` about each axis: 7 starts."""
    starts = [(0.0, 0.0, 0.0)]
    for sign in (-1.0, 1.0):
        a = sign * angle
        starts += [(a, 0.0, 0.0), (0.0, a, 0.0), (0.0, 0.0, a)]
    return starts


def _search_rigid(fixed: Any, moving: Any, work: Path, s: NativeSettings, metric: dict) -> str:
    """Short rigid registrations at ``search_spacing_mm`` from 7 starts; best Mattes MI wins.

    Why: one rigid run from the centre of mass fails when the head is rotated by 25 degrees
    or more against the template (and a skull-stripped template, like the stand-in, makes the
    affine stage then inflate the brain to the head). The coarse search costs about 1 s.
    """
    import ants

    fixed_c, moving_c = _lowres(fixed, s.search_spacing_mm), _lowres(moving, s.search_spacing_mm)
    best: tuple[float, str] | None = None
    for k, angles in enumerate(_search_starts(s.search_angle_deg)):
        start = _start_transform(fixed_c, moving_c, angles, work / f"start{k}.mat")
        reg = ants.registration(
            fixed_c,
            moving_c,
            type_of_transform="Rigid",
            initial_transform=[str(start)],
            aff_iterations=(s.search_iterations,),
            aff_shrink_factors=(1,),
            aff_smoothing_sigmas=(1,),
            outprefix=str(work / f"search{k}_"),
            **metric,
        )
        value = float(
            ants.image_similarity(fixed_c, reg["warpedmovout"], "MattesMutualInformation")
        )
        if best is None or value < best[0]:  # ANTs' MI is negative: lower is better
            best = (value, reg["fwdtransforms"][0])
    assert best is not None
    return best[1]


def _register(
    fixed: Any, moving: Any, seed: int, work: Path, s: NativeSettings, stages: dict[str, float]
) -> Path:
    """Coarse rigid search, rigid, then affine on ``reg_spacing_mm`` copies; the composed .mat."""
    import ants

    fixed_lo, moving_lo = _lowres(fixed, s.reg_spacing_mm), _lowres(moving, s.reg_spacing_mm)
    metric = {
        "aff_metric": "mattes",
        "aff_sampling": 32,
        "aff_random_sampling_rate": s.sampling_rate,
    }
    # -z 1 (ANTsPy's default) folds each initial transform into the stage's output .mat.
    with _ants_seed(seed), _timed(stages, "search"):
        start = _search_rigid(fixed_lo, moving_lo, work, s, metric)
    with _ants_seed(seed), _timed(stages, "rigid"):
        rigid = ants.registration(
            fixed_lo,
            moving_lo,
            type_of_transform="Rigid",
            initial_transform=[start],
            aff_iterations=s.rigid_iterations,
            aff_shrink_factors=s.rigid_shrink,
            aff_smoothing_sigmas=s.rigid_sigmas,
            outprefix=str(work / "rigid_"),
            **metric,
        )
    with _ants_seed(seed), _timed(stages, "affine"):
        affine = ants.registration(
            fixed_lo,
            moving_lo,
            type_of_transform="Affine",
            initial_transform=rigid["fwdtransforms"],
            aff_iterations=s.affine_iterations,
            aff_shrink_factors=s.affine_shrink,
            aff_smoothing_sigmas=s.affine_sigmas,
            outprefix=str(work / "affine_"),
            **metric,
        )
    forward = affine["fwdtransforms"]
    if len(forward) != 1 or not str(forward[0]).endswith(".mat"):
        raise T1LinearError(f"expected one affine .mat from the affine stage, got {forward}")
    return Path(forward[0])


def _write_cropped(data: np.ndarray, cropped_ref: Path, out: Path, descrip: str) -> None:
    """Crop the template-grid image with Clinica's box; header of the cropped reference."""
    ref = nib.load(cropped_ref)
    header = ref.header.copy()
    header.set_data_dtype(np.float32)
    header["descrip"] = descrip.encode()[:79]
    img = nib.Nifti1Image(np.asarray(data[CROP_BOX], dtype=np.float32), ref.affine, header)
    img.header.set_slope_inter(1.0, 0.0)
    nib.save(img, out)


def native_t1_linear(
    clean_image: Path,
    templates: TemplatePaths,
    out_image: Path,
    out_affine: Path,
    seed: int = 0,
    work: Path | None = None,
    settings: NativeSettings | None = None,
) -> dict[str, float]:
    """The native backend, in this process (:func:`run_t1_linear` runs it in a child).

    Args:
        clean_image: a scan written from :func:`load_t1` (one affine, float32, no NaN).
        templates: the installed templates (registration target, crop header).
        out_image, out_affine: output paths (Clinica's names).
        seed: ANTs' random seed for metric sampling.
        work: folder for ANTs' transform files (default: a temporary folder).
        settings: the registration schedule (default :class:`NativeSettings`).

    Returns:
        Wall seconds per stage (read, n4, search, rigid, affine, write).
    """
    import ants

    s = settings or NativeSettings()
    stages: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="t1lin-") as tmp:
        work = Path(work) if work is not None else Path(tmp)
        with _timed(stages, "read"):
            fixed = to_ants(nib.load(templates.mni))
            moving = to_ants(nib.load(clean_image))
        with _timed(stages, "n4"):
            n4 = _n4(moving, s)
        mat = _register(fixed, n4, seed, work, s, stages)
        with _timed(stages, "write"):
            shutil.copyfile(mat, out_affine)
            warped = ants.apply_transforms(fixed, n4, [str(mat)], interpolator="linear")
            note = f"earlyad t1-linear native; template {templates.source}"
            _write_cropped(warped.numpy(), templates.cropped, out_image, note)
    return stages


def _templates_from_json(d: dict[str, str]) -> TemplatePaths:
    """Inverse of ``asdict(TemplatePaths)`` after a JSON round trip."""
    paths = {k: Path(d[k]) for k in ("mni", "cropped", "cropped_mask")}
    return TemplatePaths(**paths, source=d["source"])


def _settings_from_json(d: dict[str, Any]) -> NativeSettings:
    """Inverse of ``asdict(NativeSettings)`` after a JSON round trip (lists back to tuples)."""
    return NativeSettings(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def _worker(request_path: Path) -> int:
    """Child-process entry: run :func:`native_t1_linear` from a JSON request, report in JSON."""
    request = json.loads(Path(request_path).read_text())
    reply: dict[str, Any] = {"ok": True, "error": None}
    try:
        reply["stages"] = native_t1_linear(
            Path(request["clean_image"]),
            _templates_from_json(request["templates"]),
            Path(request["out_image"]),
            Path(request["out_affine"]),
            seed=int(request["seed"]),
            work=Path(request["work"]),
            settings=_settings_from_json(request["settings"]),
        )
    except Exception as err:  # noqa: BLE001 - reported to the parent, which writes status.json
        traceback.print_exc()
        reply = {"ok": False, "error": f"{type(err).__name__}: {err}"}
    reply["self_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    Path(request["reply"]).write_text(json.dumps(reply))
    return 0 if reply["ok"] else 1


# --------------------------------------------------------------------------- child processes


@dataclass(frozen=True)
class _Usage:
    """Resources of one child process tree (``os.wait4``: exact, per child)."""

    returncode: int
    seconds: float
    cpu_seconds: float
    peak_rss_mb: float
    stages: dict[str, float] | None = None


def _child_env(threads: int, tmp: Path) -> dict[str, str]:
    """Thread counts for ITK and BLAS, a private TMPDIR (ANTsPy leaves transforms there)."""
    env = dict(os.environ)
    for name in (
        "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS",
        "OMP_NUM_THREADS",
        "OPENBLAS_NUM_THREADS",
        "MKL_NUM_THREADS",
    ):
        env[name] = str(threads)
    tmp.mkdir(parents=True, exist_ok=True)
    env["TMPDIR"] = str(tmp)
    env["NIPYPE_NO_ET"] = "1"  # nipype's version check would wait on the network
    return env


def _run_measured(cmd: list[str], env: dict[str, str], cwd: Path, log_path: Path) -> _Usage:
    """Run ``cmd`` with output to ``log_path``; wall time, CPU time and peak RSS of its tree."""
    start = time.perf_counter()
    with open(log_path, "ab") as log_file:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
        )
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
    proc.returncode = os.waitstatus_to_exitcode(status)
    return _Usage(
        returncode=proc.returncode,
        seconds=time.perf_counter() - start,
        cpu_seconds=usage.ru_utime + usage.ru_stime,
        peak_rss_mb=usage.ru_maxrss / 1024,  # kB on Linux
    )


def _log_tail(log_path: Path, lines: int = 15) -> str:
    """The end of a child's log, for error messages."""
    try:
        return "\n".join(log_path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _run_native(
    checked: CheckedImage,
    templates: TemplatePaths,
    out: tuple[Path, Path],
    seed: int,
    threads: int,
    work: Path,
) -> _Usage:
    """Write the checked scan, run :func:`native_t1_linear` in a child, read its reply."""
    clean = work / "input_clean.nii"
    nib.save(checked.image, clean)
    request = {
        "clean_image": str(clean),
        "templates": {k: str(v) for k, v in asdict(templates).items()},
        "out_image": str(out[0]),
        "out_affine": str(out[1]),
        "seed": seed,
        "work": str(work),
        "settings": asdict(NativeSettings()),
        "reply": str(work / "reply.json"),
    }
    (work / "request.json").write_text(json.dumps(request))
    cmd = [sys.executable, "-m", "earlyad.preprocess.t1_linear", str(work / "request.json")]
    log_path = work / "native.log"
    usage = _run_measured(cmd, _child_env(threads, work / "tmp"), work, log_path)
    reply_path = work / "reply.json"
    if not reply_path.is_file():
        raise T1LinearError(
            f"native worker died (exit {usage.returncode}) on {_describe(checked)}\n"
            f"{_log_tail(log_path)}"
        )
    reply = json.loads(reply_path.read_text())
    if not reply["ok"]:
        raise T1LinearError(f"native registration failed: {reply['error']}")
    return dataclasses.replace(usage, stages=reply.get("stages"))


def _describe(checked: CheckedImage) -> str:
    """A short description of a checked image for messages (its shape and voxel size)."""
    zooms = np.round(np.linalg.norm(checked.image.affine[:3, :3], axis=0), 3).tolist()
    return f"image of shape {checked.image.shape} and voxel size {zooms} mm"


# --------------------------------------------------------------------------- clinica backend


def _check_clinica_templates(templates: TemplatePaths) -> None:
    """Clinica must find, in its own folder, exactly the templates we crop and compare with.

    Why: it silently downloads missing files (impossible on compute nodes) and silently uses
    whatever file is there under the name (see ``templates``).
    """
    folder = clinica_resources_dir()
    for name, ours in ((MNI_NAME, templates.mni), (CROPPED_NAME, templates.cropped)):
        theirs = folder / name
        if not theirs.is_file():
            raise T1LinearError(
                f"{theirs}: missing, Clinica would try to download it; run install_templates"
            )
        if sha256_of(theirs) != sha256_of(Path(ours)):
            raise T1LinearError(
                f"{theirs} differs from {ours}: Clinica would register to another template; "
                "run install_templates again with the mode you want"
            )


def _write_dataset(root: Path, participant_id: str) -> None:
    """The files Clinica's BIDS check needs (dataset_description.json with DatasetType raw)."""
    description = {"Name": "earlyad one-scan", "BIDSVersion": "1.7.0", "DatasetType": "raw"}
    (root / "dataset_description.json").write_text(json.dumps(description, indent=2))
    (root / "participants.tsv").write_text(f"participant_id\n{participant_id}\n")


def _bids_for_clinica(
    image: Path,
    checked: CheckedImage,
    ids: tuple[str, str],
    bids_dir: Path | None,
    work: Path,
) -> Path:
    """The BIDS root Clinica reads: the user's when the scan is clean and in place, else ours.

    Ours is a one-scan BIDS in the work dir, holding a link to a clean scan or, when the header
    needed fixing or NaNs were zeroed, the fixed copy (so both backends see the same image).
    """
    pid, ses = ids
    expected = (
        Path(bids_dir) / pid / ses / "anat" / f"{pid}_{ses}_T1w{''.join(image.suffixes[-2:])}"
        if bids_dir is not None
        else None
    )
    if checked.clean and expected is not None and expected.resolve() == image.resolve():
        return Path(bids_dir)  # type: ignore[arg-type]
    root = work / "bids"
    anat = root / pid / ses / "anat"
    anat.mkdir(parents=True, exist_ok=True)
    if checked.clean:
        (anat / f"{pid}_{ses}_T1w{''.join(image.suffixes[-2:])}").symlink_to(image.resolve())
    else:
        nib.save(checked.image, anat / f"{pid}_{ses}_T1w.nii.gz")
    _write_dataset(root, pid)
    return root


def _clinica_command(bids: Path, caps: Path, tsv: Path, work: Path, seed: int) -> list[str]:
    """``clinica run t1-linear`` on the one scan listed in ``tsv`` (flags of clinica 0.12)."""
    exe = Path(sys.executable).with_name("clinica")
    clinica = str(exe) if exe.is_file() else (shutil.which("clinica") or "clinica")
    return [
        clinica, "run", "t1-linear", str(bids), str(caps),
        "--use-antspy", "--random_seed", str(seed),
        "-tsv", str(tsv), "-wd", str(work / "clinica_wd"), "-np", "1",
    ]  # fmt: skip


def _run_clinica(
    image: Path,
    checked: CheckedImage,
    ids: tuple[str, str],
    out: tuple[Path, Path],
    seed: int,
    threads: int,
    work: Path,
    bids_dir: Path | None,
    templates: TemplatePaths,
) -> _Usage:
    """Run Clinica on one scan in a private CAPS, then copy its two outputs to ``out``."""
    _check_clinica_templates(templates)
    pid, ses = ids
    bids = _bids_for_clinica(image, checked, ids, bids_dir, work)
    tsv = work / "one_scan.tsv"
    tsv.write_text(f"participant_id\tsession_id\n{pid}\t{ses}\n")
    caps = work / "caps"
    shutil.rmtree(caps, ignore_errors=True)
    log_path = work / "clinica.log"
    cmd = _clinica_command(bids, caps, tsv, work, seed)
    log.info("running %s", " ".join(cmd))
    usage = _run_measured(cmd, _child_env(threads, work / "tmp"), work, log_path)
    found = caps / "subjects" / pid / ses / "t1_linear"
    for target in out:
        produced = found / target.name
        if not produced.is_file():
            raise T1LinearError(
                f"clinica t1-linear (exit {usage.returncode}) did not write {produced}; "
                f"log {log_path}:\n{_log_tail(log_path)}"
            )
        shutil.copyfile(produced, target)
    return usage


# --------------------------------------------------------------------------- public entry


def _check_outputs(out_image: Path, templates: TemplatePaths) -> None:
    """The output must sit exactly on the cropped reference's grid, with finite values."""
    img = nib.load(out_image)
    ref = nib.load(templates.cropped)
    if img.shape != ref.shape or not np.allclose(img.affine, ref.affine, atol=1e-4):
        raise T1LinearError(
            f"{out_image}: grid {img.shape} / {img.affine.tolist()} differs from the cropped "
            f"reference {templates.cropped}"
        )
    if not np.all(np.isfinite(img.get_fdata(dtype=np.float32))):
        raise T1LinearError(f"{out_image}: non-finite voxels in the output")


def _absolute(templates: TemplatePaths) -> TemplatePaths:
    """The same templates with absolute paths."""
    return dataclasses.replace(
        templates,
        mni=Path(templates.mni).absolute(),
        cropped=Path(templates.cropped).absolute(),
        cropped_mask=Path(templates.cropped_mask).absolute(),
    )


@contextmanager
def _job_dir(work_dir: Path | None) -> Iterator[Path]:
    """The per-scan work dir: the caller's (kept, for debugging) or a temporary one."""
    if work_dir is not None:
        work = Path(work_dir)
        work.mkdir(parents=True, exist_ok=True)
        yield work
        return
    with tempfile.TemporaryDirectory(prefix="earlyad-t1lin-") as tmp:
        yield Path(tmp)


def _write_status(path: Path, status: dict[str, Any]) -> None:
    """status.json, written atomically so the workflow never reads half a file."""
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(status, indent=2) + "\n")
    tmp.replace(path)


def run_t1_linear(
    image: Path,
    participant_id: str,
    session_id: str,
    out_dir: Path,
    templates: TemplatePaths,
    backend: Backend,
    seed: int = 0,
    threads: int = 1,
    work_dir: Path | None = None,
    bids_dir: Path | None = None,
) -> T1LinearResult:
    """t1-linear for one scan; never raises for a bad scan (see ``ok``/``error``).

    Args:
        image: the scan (any NIfTI orientation, voxel size, scaling, qform or sform).
        participant_id, session_id: BIDS ids (``sub-...``, ``ses-...``) for the output names.
        out_dir: receives the cropped image, the affine .mat and status.json.
        templates: from :func:`earlyad.preprocess.templates.install_templates`.
        backend: ``native`` (ANTsPy rigid+affine) or ``clinica`` (``clinica run t1-linear``).
        seed: random seed of the registration metric's sampling.
        threads: ITK threads of the child process (Slurm's cpus-per-task).
        work_dir: per-scan scratch folder, kept if given (else a temporary one).
        bids_dir: clinica only: the BIDS root holding ``image`` at its BIDS path; Clinica then
            reads it there (otherwise a one-scan BIDS is made in the work dir).

    Returns:
        The result; its ``raise_for_error()`` turns a failure into an exception.
    """
    if backend not in ("native", "clinica"):
        raise ValueError(f"unknown backend {backend!r}: use 'native' or 'clinica'")
    # Absolute paths: the child processes run in the work dir.
    image, out_dir = Path(image).absolute(), Path(out_dir).absolute()
    work_dir = Path(work_dir).absolute() if work_dir is not None else None
    bids_dir = Path(bids_dir).absolute() if bids_dir is not None else None
    templates = _absolute(templates)
    out_dir.mkdir(parents=True, exist_ok=True)
    out = tuple(out_dir / name for name in output_names(participant_id, session_id))
    status_path = out_dir / STATUS_NAME
    for stale in (*out, status_path):
        stale.unlink(missing_ok=True)
    start = time.perf_counter()
    status: dict[str, Any] = {"ok": False, "backend": backend, "error": None}
    usage: _Usage | None = None
    checked: CheckedImage | None = None
    try:
        checked = load_t1(image)
        _check_templates(templates)
        with _job_dir(work_dir) as work:
            if backend == "native":
                usage = _run_native(checked, templates, out, seed, threads, work)
            else:
                ids = (participant_id, session_id)
                usage = _run_clinica(
                    image, checked, ids, out, seed, threads, work, bids_dir, templates
                )
        _check_outputs(out[0], templates)
        status["ok"] = True
    except Exception as err:  # noqa: BLE001 - one bad scan must not stop the cohort
        status["error"] = f"{type(err).__name__}: {err}"
        log.error("t1-linear failed for %s: %s", image, status["error"])
        for path in out:
            path.unlink(missing_ok=True)
    seconds = time.perf_counter() - start
    status.update(
        {
            "seconds": round(seconds, 3),
            "cpu_seconds": round(usage.cpu_seconds, 3) if usage else None,
            "peak_rss_mb": round(usage.peak_rss_mb, 1) if usage else None,
            "stage_seconds": usage.stages if usage else None,
            "nan_voxels": checked.nan_voxels if checked else None,
            "header_notes": list(checked.notes) if checked else [],
            "participant_id": participant_id,
            "session_id": session_id,
            "input": str(image),
            "seed": seed,
            "threads": threads,
            "template_source": templates.source,
        }
    )
    _write_status(status_path, status)
    return T1LinearResult(
        image=out[0],
        affine=out[1],
        status=status_path,
        ok=bool(status["ok"]),
        seconds=seconds,
        error=status["error"],
        backend=backend,
        peak_rss_mb=status["peak_rss_mb"],
        nan_voxels=status["nan_voxels"],
    )


if __name__ == "__main__":
    sys.exit(_worker(Path(sys.argv[1])))
