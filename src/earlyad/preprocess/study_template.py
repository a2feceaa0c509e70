"""Study template: an affine average of the TRAINING scans on the cropped MNI grid.

Why a study template: the reference study normalizes every scan to a template built from its
training set only, so that the template carries no information about validation or test scans.
This module builds it from the t1-linear outputs the caller passes (the train split) and writes
beside it a JSON list of exactly which files went in (with their sha256), so that anyone can
audit that claim.

How (an iterative affine average, like ``ants.build_template(type_of_transform="Affine")`` but
faster and reproducible bit for bit):

1. every input is read, NaN/inf set to 0, divided by its 99th percentile of positive voxels (so
   each scan weighs the same in the average whatever its scanner gain), and downsampled to
   2 mm;
2. iteration 0 registers each 2 mm copy to the 2 mm copy of ``initial`` (the cropped MNI
   template), later iterations to the previous average; every registration is affine (Mattes
   mutual information, seeded), starts from the identity, since t1-linear already put every
   scan in MNI space, and, given ``mask``, samples only a dilated brain mask;
3. intermediate averages are formed at 2 mm; the last iteration applies its transforms to the
   full-resolution scans on ``initial``'s grid, and their mean, min-max scaled to [0, 1], is the
   template.

There is no "shape update" (ANTs' step that moves the template to the mean of the affines):
anchoring the first target to MNI keeps the template in MNI space, so atlas regions (the AAL
hippocampus used by Grad-CAM), the MNI brain mask and the centred crop stay where expected.

Determinism: inputs are sorted by path; ``max_images`` draws a seeded subset; every
registration gets a non-zero ANTs seed and runs single-threaded in a worker subprocess (ITK's
result depends on its thread count); warped scans are summed as integers (fixed point, 2**-24),
which is exact and so independent of the order and of how scans were shared among workers. The
result depends only on the inputs, the seed and the settings: not on ``threads``, not on other
files in the folder.

Workers are subprocesses (``python -m earlyad.preprocess.study_template --worker spec.json``),
not ``multiprocessing``: its "spawn" start method re-executes the caller's main script, which
a Snakemake ``script:`` (no ``__main__`` guard) does not survive, and "fork" would inherit ITK's
thread pool and thread count from the parent.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

from earlyad.files import sha256_of

if TYPE_CHECKING:  # ants is heavy and lives in the preprocessing environment only
    import ants

__all__ = [
    "AFFINE_ITERATIONS",
    "AFFINE_SHRINK_FACTORS",
    "AFFINE_SMOOTHING_SIGMAS",
    "MASK_DILATION_MM",
    "REGISTRATION_SPACING_MM",
    "ants_to_affine",
    "import_ants",
    "build_study_template",
    "downsample",
    "inputs_manifest_path",
    "nifti_to_ants",
    "read_volume",
    "register_affine",
    "registration_mask",
    "save_float32",
    "select_images",
]

#: Registrations run on copies resampled to this spacing (mm): 8x fewer voxels than 1 mm, and an
#: affine is fully determined by structures much larger than 2 mm.
REGISTRATION_SPACING_MM = 2.0
#: Multi-resolution schedule on the 2 mm copies: shrink 4 and 2 (8 mm then 4 mm), with Gaussian
#: smoothing of 2 and 1 voxels. Measured on Colin27 with a known affine (4-5 deg, 4% scale,
#: 8 mm shift): 0.16 mm RMS error in ~1.5 s single-threaded without a mask (~0.9 s with one);
#: adding a 2 mm level halves the error to 0.08 mm for 4x the time, which an affine average and
#: a 1.5 mm output grid do not need.
AFFINE_ITERATIONS = (200, 100)
AFFINE_SHRINK_FACTORS = (4, 2)
AFFINE_SMOOTHING_SIGMAS = (2, 1)
#: Share of voxels sampled by the metric (ANTs' default).
AFFINE_SAMPLING_RATE = 0.2
#: The brain mask is dilated this much (mm) before it restricts the metric: the brain outline
#: and surrounding CSF carry the alignment; the scalp, neck and crop edges only mislead it.
#: Without a mask, skull-on scans against a skull-stripped template diverged (scale 1.25) in
#: 3 of 24 seeded runs; with it, in none.
MASK_DILATION_MM = 8.0
#: Upper percentile that scales each input before averaging.
SCALE_PERCENTILE = 99.0
#: Warped scans are summed as integers in units of 2**-24 (exact, so order-free).
_FIXED_POINT = float(2**24)

_LPS = np.diag([-1.0, -1.0, 1.0])  # NIfTI world is RAS+, ITK's is LPS+


# --------------------------------------------------------------------------- ANTs <-> NIfTI


def import_ants() -> Any:
    """Import ANTsPy on first use: it takes seconds and only the preprocessing env has it."""
    import ants

    return ants


def nifti_to_ants(data: np.ndarray, affine: np.ndarray) -> ants.ANTsImage:
    """An ANTs image of ``data`` (indexed like the NIfTI array) placed by the RAS ``affine``.

    Done by hand rather than with ``ants.from_nibabel_nifti``, which mutates headers with
    unknown units and prints warnings; shear-free affines only (as all ours are).
    """
    affine = np.asarray(affine, dtype=float)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    return import_ants().from_numpy(
        np.ascontiguousarray(data, dtype=np.float32),
        origin=tuple(float(v) for v in _LPS @ affine[:3, 3]),
        spacing=tuple(float(v) for v in spacing),
        direction=_LPS @ affine[:3, :3] / spacing,
    )


def ants_to_affine(img: ants.ANTsImage) -> np.ndarray:
    """The RAS voxel-to-world affine of an ANTs image (inverse of :func:`nifti_to_ants`)."""
    direction = np.asarray(img.direction, dtype=float).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = _LPS @ direction @ np.diag(np.asarray(img.spacing, dtype=float))
    affine[:3, 3] = _LPS @ np.asarray(img.origin, dtype=float)
    return affine


def read_volume(path: Path) -> tuple[np.ndarray, np.ndarray, int]:
    """``(data float32, affine, number of NaN/inf voxels)``, with NaN/inf replaced by 0.

    ANTs refuses NaN, and one NaN would poison a sum; the count goes to QC.
    """
    img = nib.load(str(path))
    data = np.asarray(img.dataobj, dtype=np.float32)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ValueError(f"{path}: expected a 3D image, got shape {data.shape}")
    bad = ~np.isfinite(data)
    n_bad = int(bad.sum())
    if n_bad:
        data[bad] = 0.0
    return data, np.asarray(img.affine, dtype=float), n_bad


def downsample(
    data: np.ndarray, affine: np.ndarray, spacing: float = REGISTRATION_SPACING_MM
) -> tuple[np.ndarray, np.ndarray]:
    """Block-average ``data`` to about ``spacing`` mm: ``(data, affine)`` of the coarse copy.

    Averaging whole blocks is anti-aliased and ~8x faster than ITK's resampling; a trailing
    partial block is dropped. The new affine puts each voxel at the centre of its block.
    """
    zooms = np.linalg.norm(np.asarray(affine, dtype=float)[:3, :3], axis=0)
    factors = [max(1, round(spacing / z)) for z in zooms]
    shape = [n // f for n, f in zip(data.shape, factors, strict=True)]
    cut = data[: shape[0] * factors[0], : shape[1] * factors[1], : shape[2] * factors[2]]
    blocks = cut.reshape(shape[0], factors[0], shape[1], factors[1], shape[2], factors[2])
    small = blocks.mean(axis=(1, 3, 5), dtype=np.float64).astype(np.float32)
    scale = np.eye(4)
    scale[:3, :3] = np.diag(factors)
    scale[:3, 3] = (np.asarray(factors) - 1) / 2.0
    return small, np.asarray(affine, dtype=float) @ scale


def registration_mask(mask: ants.ANTsImage, grid: ants.ANTsImage) -> ants.ANTsImage:
    """``mask`` on ``grid``, dilated by :data:`MASK_DILATION_MM`, as a 0/1 ANTs image."""
    resampled = import_ants().resample_image_to_target(mask, grid, interp_type="linear")
    on_grid = resampled.numpy() >= 0.5
    step = float(min(grid.spacing))
    radius = max(1, round(MASK_DILATION_MM / step))
    r = np.arange(-radius, radius + 1) * step
    ball = (r[:, None, None] ** 2 + r[None, :, None] ** 2 + r[None, None, :] ** 2) <= (
        MASK_DILATION_MM**2 + 1e-6
    )
    dilated = ndi.binary_dilation(on_grid, structure=ball)
    return grid.new_image_like(dilated.astype(np.float32))


@contextlib.contextmanager
def _ants_seed(seed: int) -> Iterator[None]:
    """Pass ``--random-seed`` to antsRegistration, which ANTsPy reads from a module global.

    ANTs seeds its metric sampling from the clock when no seed is given AND when the seed is 0,
    so the user's seed is shifted by one: seed 0 must be as reproducible as any other.
    """
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    config = import_ants().config
    before = config._random_seed
    config._random_seed = int(seed) + 1
    try:
        yield
    finally:
        config._random_seed = before


def register_affine(
    fixed: ants.ANTsImage,
    moving: ants.ANTsImage,
    seed: int,
    workdir: Path,
    mask: ants.ANTsImage | None = None,
) -> list[str]:
    """Affine transform files mapping ``fixed`` points into ``moving`` (ANTs' convention), for
    ``ants.apply_transforms(fixed=..., moving=..., transformlist=...)``.

    Starts from the identity: the inputs are t1-linear outputs, already affinely in MNI space,
    and a centre-of-mass start would be pulled around by whatever skull the crop left. ``mask``
    (on ``fixed``'s grid, see :func:`registration_mask`) restricts the metric.
    """
    ants = import_ants()
    with _ants_seed(seed):
        result = ants.registration(
            fixed,
            moving,
            type_of_transform="Affine",
            initial_transform="Identity",
            outprefix=str(Path(workdir) / "reg_"),
            mask=mask,
            aff_metric="mattes",
            aff_sampling=32,
            aff_random_sampling_rate=AFFINE_SAMPLING_RATE,
            aff_iterations=AFFINE_ITERATIONS,
            aff_shrink_factors=AFFINE_SHRINK_FACTORS,
            aff_smoothing_sigmas=AFFINE_SMOOTHING_SIGMAS,
        )
    return list(result["fwdtransforms"])


def save_float32(
    data: np.ndarray, affine: np.ndarray, path: Path, like: nib.Nifti1Image | None = None
) -> Path:
    """Write a float32 NIfTI with sform = qform = ``affine`` (codes copied from ``like``, else
    "aligned"), units mm, so that any viewer places it the same way."""
    img = nib.Nifti1Image(np.asarray(data, dtype=np.float32), affine)
    sform_code = int(like.header["sform_code"]) if like is not None else 0
    qform_code = int(like.header["qform_code"]) if like is not None else 0
    img.set_sform(affine, code=sform_code or 2)
    img.set_qform(affine, code=qform_code or 2)
    img.header.set_xyzt_units("mm", "sec")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))
    return path


# --------------------------------------------------------------------------- worker side


def _scaled_input(path: Path) -> tuple[np.ndarray, np.ndarray, float]:
    """The scan divided by its upper percentile of positive voxels, its affine and the scale."""
    data, affine, _ = read_volume(path)
    positive = data[data > 0]
    if positive.size == 0:
        raise ValueError(f"{path}: no positive voxels, cannot be part of the study template")
    scale = 1.0 / float(np.percentile(positive, SCALE_PERCENTILE))
    return data * np.float32(scale), affine, scale


def _small_copy(item: dict[str, Any], first: bool) -> ants.ANTsImage:
    """The scaled 2 mm copy of one input: made and stored on the first pass, then reloaded."""
    small_path = Path(item["small"])
    if first:
        data, affine, scale = _scaled_input(Path(item["path"]))
        small, small_affine = downsample(data, affine)
        np.save(small_path, small)
        meta = {"scale": scale, "affine": small_affine.tolist()}
        small_path.with_suffix(".json").write_text(json.dumps(meta))
        return nifti_to_ants(small, small_affine)
    meta = json.loads(small_path.with_suffix(".json").read_text())
    return nifti_to_ants(np.load(small_path), np.asarray(meta["affine"]))


def _warp_item(
    item: dict[str, Any], spec: dict[str, Any], fixed: Any, mask: Any, out_grid: Any
) -> np.ndarray:
    """Register one input's 2 mm copy to ``fixed``; return it resampled on ``out_grid`` (the
    full-resolution scan on the final pass, else the 2 mm copy)."""
    ants = import_ants()
    moving = _small_copy(item, spec["first"])
    with tempfile.TemporaryDirectory(prefix="earlyad_reg_") as tmp:
        transforms = register_affine(fixed, moving, spec["seed"], Path(tmp), mask)
        if spec["final"]:
            meta = json.loads(Path(item["small"]).with_suffix(".json").read_text())
            data, affine, _ = read_volume(Path(item["path"]))
            moving = nifti_to_ants(data * np.float32(meta["scale"]), affine)
        warped = ants.apply_transforms(
            fixed=out_grid, moving=moving, transformlist=transforms, interpolator="linear"
        )
    return warped.numpy()


def _worker_main(spec_path: Path) -> None:
    """Worker entry: warp the listed inputs and save their fixed-point sum (int64 .npy)."""
    spec = json.loads(Path(spec_path).read_text())
    fixed = nifti_to_ants(np.load(spec["target"]), np.asarray(spec["target_affine"]))
    mask = None
    if spec["mask"] is not None:
        mask = fixed.new_image_like(np.load(spec["mask"]).astype(np.float32))
    out_grid = fixed
    if spec["final"]:
        shape = tuple(spec["out_shape"])
        out_grid = nifti_to_ants(np.zeros(shape, np.float32), np.asarray(spec["out_affine"]))
    total = np.zeros(out_grid.shape, dtype=np.int64)
    for item in spec["items"]:
        warped = _warp_item(item, spec, fixed, mask, out_grid)
        total += np.rint(warped.astype(np.float64) * _FIXED_POINT).astype(np.int64)
    np.save(spec["partial"], total)


# --------------------------------------------------------------------------- parent side


def select_images(images: Sequence[Path], max_images: int | None, seed: int) -> list[Path]:
    """The inputs sorted by path, or a seeded subset of ``max_images`` of them (kept sorted).

    Sorting first makes the subset independent of the order the caller listed files in.
    """
    ordered = sorted({Path(p) for p in images}, key=str)
    if max_images is None or max_images >= len(ordered):
        return ordered
    if max_images < 1:
        raise ValueError(f"max_images must be >= 1, got {max_images}")
    picked = np.random.default_rng(seed).choice(len(ordered), size=max_images, replace=False)
    return [ordered[i] for i in sorted(picked.tolist())]


def inputs_manifest_path(out_path: Path) -> Path:
    """``study_template.nii.gz`` -> ``study_template_inputs.json`` (same folder)."""
    out_path = Path(out_path)
    stem = out_path.name.removesuffix(".gz").removesuffix(".nii")
    return out_path.with_name(f"{stem}_inputs.json")


def _run_workers(specs: list[dict[str, Any]], workdir: Path) -> None:
    """Run one subprocess per spec, each with a single ITK thread; raise with its stderr."""
    # the package's parent folder first on the path: the worker must import this very code,
    # even when the caller found it through a sys.path edit rather than an installation
    package_root = str(Path(__file__).resolve().parents[2])
    python_path = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS": "1", "PYTHONPATH": python_path}
    procs = []
    for w, spec in enumerate(specs):
        spec_path = workdir / f"worker{w}.json"
        spec_path.write_text(json.dumps(spec))
        cmd = [sys.executable, "-m", "earlyad.preprocess.study_template", "--worker"]
        procs.append(
            subprocess.Popen(
                [*cmd, str(spec_path)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
            )
        )
    errors = []
    for proc in procs:
        _, stderr = proc.communicate()
        if proc.returncode != 0:
            errors.append(stderr.decode(errors="replace")[-3000:])
    if errors:
        raise RuntimeError("study template worker failed:\n" + "\n".join(errors))


def _iterate(
    items: list[dict[str, Any]], common: dict[str, Any], workers: int, workdir: Path, tag: str
) -> np.ndarray:
    """One pass over all inputs shared round-robin among ``workers``: their mean (float32)."""
    specs = []
    for w in range(workers):
        partial = workdir / f"partial_{tag}_{w}.npy"
        specs.append({**common, "items": items[w::workers], "partial": str(partial)})
    _run_workers(specs, workdir)
    total = sum(np.load(s["partial"]) for s in specs)
    return (np.asarray(total, dtype=np.float64) / (_FIXED_POINT * len(items))).astype(np.float32)


def _rescale01(data: np.ndarray) -> np.ndarray:
    """Min-max to [0, 1]: a fixed range whatever the inputs' scanner units."""
    lo, hi = float(data.min()), float(data.max())
    if hi <= lo:
        raise ValueError("the study template is constant; are the inputs empty?")
    return ((data - lo) / (hi - lo)).astype(np.float32)


def _write_manifest(
    out_path: Path, chosen: list[Path], n_candidates: int, settings: dict[str, Any]
) -> Path:
    """The audit trail: which files (with their sha256) made the template, and how."""
    manifest = {
        "template": str(out_path),
        "n_candidates": n_candidates,
        "n_images": len(chosen),
        "images": [{"path": str(p), "sha256": sha256_of(p)} for p in chosen],
        **settings,
        "registration": {
            "type": "Affine",
            "metric": "mattes",
            "spacing_mm": REGISTRATION_SPACING_MM,
            "iterations": list(AFFINE_ITERATIONS),
            "shrink_factors": list(AFFINE_SHRINK_FACTORS),
            "smoothing_sigmas_vox": list(AFFINE_SMOOTHING_SIGMAS),
            "sampling_rate": AFFINE_SAMPLING_RATE,
            "mask_dilation_mm": MASK_DILATION_MM,
        },
        "intensity_range": [0.0, 1.0],
    }
    path = inputs_manifest_path(out_path)
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return path


def _initial_target(
    initial: Path, mask: Path | None, workdir: Path
) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """Save the 2 mm copy of ``initial`` (and the dilated mask on it) for the workers; return
    the spec fields plus ``initial``'s full-resolution shape and affine."""
    data, affine, _ = read_volume(initial)
    small, small_affine = downsample(data, affine)
    np.save(workdir / "target_0.npy", small)
    common: dict[str, Any] = {
        "target": str(workdir / "target_0.npy"),
        "target_affine": small_affine.tolist(),
        "mask": None,
        "out_shape": list(data.shape),
        "out_affine": affine.tolist(),
    }
    if mask is not None:
        mask_data, mask_affine, _ = read_volume(mask)
        grid = nifti_to_ants(small, small_affine)
        on_grid = registration_mask(nifti_to_ants(mask_data, mask_affine), grid)
        np.save(workdir / "mask.npy", on_grid.numpy() > 0.5)
        common["mask"] = str(workdir / "mask.npy")
    return common, np.asarray(data.shape), affine


def build_study_template(
    images: Sequence[Path],
    out_path: Path,
    *,
    initial: Path,
    iterations: int = 2,
    max_images: int | None = None,
    seed: int = 0,
    threads: int = 1,
    mask: Path | None = None,
) -> Path:
    """Build the study template from ``images`` (the TRAINING scans only) and write it to
    ``out_path`` on ``initial``'s grid and affine, intensities in [0, 1], plus
    ``<name>_inputs.json`` listing the scans used. Returns ``out_path``.

    ``mask``: the MNI brain mask on ``initial``'s grid; recommended (it keeps registrations from
    fitting the scalp). ``threads`` worker processes share the scans; the result is the same
    for any value.
    """
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    chosen = select_images(images, max_images, seed)
    if not chosen:
        raise ValueError("no images given for the study template")
    out_path = Path(out_path)
    workers = max(1, min(threads, len(chosen)))
    with tempfile.TemporaryDirectory(prefix="earlyad_tpl_") as tmp:
        workdir = Path(tmp)
        common, _, init_affine = _initial_target(Path(initial), mask, workdir)
        common["seed"] = seed
        items = [
            {"path": str(p), "small": str(workdir / f"small_{i:05d}.npy")}
            for i, p in enumerate(chosen)
        ]
        for it in range(iterations):
            final = it == iterations - 1
            step = {**common, "first": it == 0, "final": final}
            mean = _iterate(items, step, workers, workdir, str(it))
            if not final:
                np.save(workdir / f"target_{it + 1}.npy", mean)
                common["target"] = str(workdir / f"target_{it + 1}.npy")
    save_float32(_rescale01(mean), init_affine, out_path, like=nib.load(str(initial)))
    settings = {
        "initial": str(initial),
        "mask": None if mask is None else str(mask),
        "iterations": iterations,
        "max_images": max_images,
        "seed": seed,
        "scale_percentile": SCALE_PERCENTILE,
    }
    _write_manifest(out_path, chosen, len({Path(p) for p in images}), settings)
    return out_path


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "--worker":
        sys.exit("usage: python -m earlyad.preprocess.study_template --worker SPEC.json")
    _worker_main(Path(sys.argv[2]))
