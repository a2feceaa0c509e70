"""normalize_scan: world coordinates kept, intensities standardized, tensor cache readable,
QC separating good from misregistered scans, bad scans refused by name; montages.

Inputs are fake t1-linear outputs on Clinica's cropped 1 mm grid (169x208x179 from
(-84, -119, -78)), made from nilearn's bundled MNI152 template.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import resample_to_grid
from scipy import ndimage as ndi

pytest.importorskip("ants")
pytest.importorskip("nilearn")

from earlyad.preprocess.montage import _planes, canonical, three_plane_montage  # noqa: E402
from earlyad.preprocess.normalize import (  # noqa: E402
    BadScanError,
    NormalizeResult,
    isotropic_grid,
    normalize_scan,
    standardize,
)
from earlyad.preprocess.qc import QCThresholds, assemble_qc  # noqa: E402

SHAPE = (169, 208, 179)
AFFINE = np.eye(4)
AFFINE[:3, 3] = (-84, -119, -78)
LANDMARK_MM = np.array([30.0, -20.0, 25.0])  # right hemisphere, world (RAS) mm


def _resampled(img: nib.Nifti1Image, interpolation: str) -> np.ndarray:
    return resample_to_grid(img, AFFINE, SHAPE, interpolation)


@pytest.fixture(scope="module")
def mni(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Cropped MNI template and brain mask (the same grid as t1-linear outputs)."""
    from nilearn.datasets import load_mni152_brain_mask, load_mni152_template

    root = tmp_path_factory.mktemp("mni")
    paths = {"template": root / "tpl.nii.gz", "mask": root / "mask.nii.gz"}
    tpl = _resampled(load_mni152_template(resolution=1), "continuous")
    nib.save(nib.Nifti1Image(tpl, AFFINE), paths["template"])
    mask = _resampled(load_mni152_brain_mask(resolution=1), "nearest") > 0
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), AFFINE), paths["mask"])
    return paths


def _write(data: np.ndarray, path: Path) -> Path:
    nib.save(nib.Nifti1Image(data.astype(np.float32), AFFINE), path)
    return path


def _template(mni: dict[str, Path]) -> np.ndarray:
    return np.asarray(nib.load(mni["template"]).get_fdata(), dtype=np.float32)


def _moved(data: np.ndarray, seed: int, shift_mm: tuple[float, float, float]) -> np.ndarray:
    """``data`` with a small random rotation (<= 2 deg) plus ``shift_mm``, gain and noise."""
    rng = np.random.default_rng(seed)
    a = np.deg2rad(rng.uniform(-2, 2))
    lin = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    centre = (np.asarray(SHAPE) - 1) / 2
    offset = centre - lin @ centre - np.asarray(shift_mm)  # pull-back: content moves by +shift
    out = ndi.affine_transform(data, lin, offset, order=1) * rng.uniform(100, 300)
    return np.abs(out + rng.normal(0, 3, out.shape)).astype(np.float32)


@pytest.fixture(scope="module")
def scans(mni: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """good: slightly moved; shifted: moved 20 mm to the right (a failed t1-linear);
    landmark: the template with a bright ball at LANDMARK_MM and 120 NaN/inf voxels."""
    root = tmp_path_factory.mktemp("t1_linear")
    tpl = _template(mni)
    landmark = tpl * 100.0
    ijk = np.linalg.solve(AFFINE, np.append(LANDMARK_MM, 1.0))[:3]
    grid = np.indices(SHAPE, dtype=np.float32)
    ball = sum((grid[a] - ijk[a]) ** 2 for a in range(3)) <= 3.0**2
    landmark[ball] = 300.0
    landmark[0, 0, :100] = np.nan
    landmark[-1, -1, :20] = np.inf
    return {
        "good": _write(_moved(tpl, 1, (0.0, 0.0, 0.0)), root / "good.nii.gz"),
        "shifted": _write(_moved(tpl, 2, (20.0, 0.0, 0.0)), root / "shifted.nii.gz"),
        "landmark": _write(landmark, root / "landmark.nii.gz"),
    }


def _normalize(
    scan: Path, mni: dict[str, Path], out: Path, pid: str, **kw: object
) -> NormalizeResult:
    return normalize_scan(scan, mni["template"], mni["mask"], out, pid, "ses-M000", **kw)


@pytest.fixture(scope="module")
def runs(
    scans: dict[str, Path], mni: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, NormalizeResult]:
    out = tmp_path_factory.mktemp("normalized")
    return {
        "good": _normalize(scans["good"], mni, out, "sub-good", register=True),
        "shifted": _normalize(scans["shifted"], mni, out, "sub-shifted", register=False),
        "landmark": _normalize(scans["landmark"], mni, out, "sub-landmark", register=False),
    }


# --------------------------------------------------------------------------- geometry


def test_isotropic_grid_keeps_field_of_view() -> None:
    shape, affine = isotropic_grid(SHAPE, AFFINE, 1.5)
    assert shape == (113, 139, 119)
    np.testing.assert_allclose(np.diag(affine)[:3], 1.5)
    centre_in = AFFINE @ np.append((np.asarray(SHAPE) - 1) / 2, 1)
    centre_out = affine @ np.append((np.asarray(shape) - 1) / 2, 1)
    np.testing.assert_allclose(centre_out, centre_in)
    lo_in = AFFINE @ np.array([-0.5, -0.5, -0.5, 1])
    lo_out = affine @ np.array([-0.5, -0.5, -0.5, 1])
    assert np.all(np.abs(lo_out - lo_in)[:3] <= 0.75)  # faces within half an output voxel


def test_landmark_keeps_its_world_position(runs: dict[str, NormalizeResult]) -> None:
    img = nib.load(runs["landmark"].image)
    data = img.get_fdata()
    assert img.shape == (113, 139, 119)
    bright = data > 0.8  # the ball is the brightest thing (1.0 after minmax)
    centroid = np.append(ndi.center_of_mass(bright), 1.0)
    world = img.affine @ centroid
    np.testing.assert_allclose(world[:3], LANDMARK_MM, atol=0.5)


def test_nifti_is_float32_with_its_affine(runs: dict[str, NormalizeResult]) -> None:
    img = nib.load(runs["landmark"].image)
    assert img.get_data_dtype() == np.float32
    _, expected = isotropic_grid(SHAPE, AFFINE, 1.5)
    np.testing.assert_allclose(img.affine, expected, atol=1e-5)
    assert img.header["sform_code"] > 0 and img.header["qform_code"] > 0
    np.testing.assert_allclose(runs["landmark"].qc["affine"], expected, atol=1e-5)


def test_minmax_range_and_nan_count(runs: dict[str, NormalizeResult]) -> None:
    data = nib.load(runs["landmark"].image).get_fdata()
    assert np.isfinite(data).all()
    assert data.min() == pytest.approx(0.0, abs=1e-6) and data.max() == pytest.approx(1.0)
    assert runs["landmark"].qc["nan_voxels"] == 120


def test_tensor_cache_float16_mmap_roundtrip(runs: dict[str, NormalizeResult]) -> None:
    result = runs["landmark"]
    cached = np.load(result.tensor, mmap_mode="r")
    assert isinstance(cached, np.memmap)
    assert cached.dtype == np.float16 and cached.flags["C_CONTIGUOUS"]
    assert all(n >= 96 for n in cached.shape)
    nifti = nib.load(result.image).get_fdata()
    assert cached.shape == nifti.shape  # axes X, Y, Z, as the NIfTI array
    np.testing.assert_allclose(cached, nifti, atol=1e-3)
    assert result.qc["shape"] == list(cached.shape) and result.qc["voxel_size"] == 1.5


def test_qc_json_and_montage_written(runs: dict[str, NormalizeResult]) -> None:
    import matplotlib.image as mpimg

    result = runs["good"]
    qc = json.loads(result.qc_json.read_text())
    for key in ("ncc", "mask_dice", "nan_voxels", "brain_fraction_in_box", "shape"):
        assert key in qc
    assert qc["registered"] is True
    assert result.montage.name == "sub-good_ses-M000_montage.png"
    png = mpimg.imread(result.montage)
    assert png.shape[0] > 200 and png.shape[1] > 600 and png[..., :3].std() > 0.05


def test_registration_affine_is_saved(runs: dict[str, NormalizeResult]) -> None:
    """The affine of the registration is kept (the Grad-CAM stage carries ground-truth masks
    through it); the identity when the scan was not registered."""
    from earlyad.gradcam.transforms import read_ants_affine

    good = runs["good"]
    assert good.transform.name == "sub-good_ses-M000_to-template_affine.mat"
    assert json.loads(good.qc_json.read_text())["transform"] == good.transform.name
    moved = read_ants_affine(good.transform)
    assert not np.allclose(moved, np.eye(4))  # a real registration (the scan was turned)
    assert np.abs(moved[:3, :3] - np.eye(3)).max() < 0.1 and np.abs(moved[:3, 3]).max() < 10
    np.testing.assert_allclose(read_ants_affine(runs["landmark"].transform), np.eye(4), atol=1e-9)


# --------------------------------------------------------------------------- QC


def test_good_passes_and_misregistered_fails(runs: dict[str, NormalizeResult]) -> None:
    good, shifted = runs["good"].qc, runs["shifted"].qc
    assert good["ncc"] > 0.9 and good["mask_dice"] > 0.9
    assert good["brain_fraction_in_box"] > 0.95
    assert shifted["ncc"] < good["ncc"] - 0.3
    records = [
        {**qc, "split": "train", "diagnosis": "CN", "label": 0, "status": "ok"}
        for qc in (good, shifted)
    ]
    table, exclusions = assemble_qc(records, QCThresholds())
    verdict = dict(zip(table["participant_id"], table["passed"], strict=True))
    assert verdict == {"sub-good": True, "sub-shifted": False}
    assert exclusions["participant_id"].tolist() == ["sub-shifted"]
    assert exclusions["stage"].tolist() == ["qc"]
    assert "ncc" in exclusions["reason"].iloc[0]


# --------------------------------------------------------------------------- intensities


def test_zscore_inside_mask_end_to_end(
    scans: dict[str, Path], mni: dict[str, Path], tmp_path: Path
) -> None:
    result = _normalize(scans["good"], mni, tmp_path, "sub-z", register=False, intensity="zscore")
    data = nib.load(result.image).get_fdata()
    from nilearn.image import resample_to_img

    mask = resample_to_img(
        nib.load(mni["mask"]),
        nib.load(result.image),
        interpolation="nearest",
        force_resample=True,
        copy_header=True,
    )
    inside = data[np.asarray(mask.dataobj) > 0]
    # nearest-neighbour mask here, linear >= 0.5 in normalize_scan: edges differ slightly
    assert abs(inside.mean()) < 0.05 and abs(inside.std() - 1.0) < 0.05


def test_standardize_methods() -> None:
    rng = np.random.default_rng(0)
    x = rng.gamma(2.0, 50.0, (20, 20, 20)).astype(np.float32)
    mask = np.zeros(x.shape, bool)
    mask[5:15, 5:15, 5:15] = True
    mm = standardize(x, mask, "minmax")
    assert mm.min() == 0.0 and mm.max() == pytest.approx(1.0) and mm.dtype == np.float32
    z = standardize(x, mask, "zscore")
    assert abs(float(z[mask].mean())) < 1e-5 and float(z[mask].std()) == pytest.approx(1.0)
    p = standardize(x, mask, "percentile", (2.0, 98.0))
    assert p.min() == 0.0 and p.max() == pytest.approx(1.0)
    top = float(np.mean(p[mask] >= 1.0 - 1e-6))
    assert 0.015 < top < 0.03  # the top 2 % of brain voxels clipped to 1
    with pytest.raises(ValueError, match="percentiles"):
        standardize(x, mask, "percentile", (99.0, 1.0))


# --------------------------------------------------------------------------- bad scans


def test_empty_scan_raises_naming_the_file(mni: dict[str, Path], tmp_path: Path) -> None:
    empty = _write(np.zeros(SHAPE, np.float32), tmp_path / "sub-empty_T1w.nii.gz")
    with pytest.raises(BadScanError, match="sub-empty_T1w.nii.gz.*constant"):
        _normalize(empty, mni, tmp_path / "out", "sub-empty")
    speck = np.zeros(SHAPE, np.float32)
    speck[80:84, 100:104, 90:94] = 1000.0  # something above threshold, but no brain
    speck_path = _write(speck, tmp_path / "sub-speck_T1w.nii.gz")
    with pytest.raises(BadScanError, match="sub-speck_T1w.nii.gz.*no brain"):
        _normalize(speck_path, mni, tmp_path / "out", "sub-speck")
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- montage


def test_montage_radiological_orientation(tmp_path: Path) -> None:
    """A blob in the subject's right shows on the viewer's left of the axial and coronal
    panels, whatever the array's storage orientation (here LPS, x flipped)."""
    shape = (40, 50, 30)
    lps = np.diag([-2.0, -2.0, 2.0, 1.0])
    lps[:3, 3] = (40.0, 50.0, -30.0)
    vol = np.zeros(shape, np.float32)
    vol[5:15, 20:30, 10:20] = 1.0  # low i = high x (right) in an LPS array
    data, affine = canonical(vol, lps)
    assert nib.aff2axcodes(affine) == ("R", "A", "S")
    centre = [int(v) for v in ndi.center_of_mass(data)]
    axial, coronal, _ = _planes(data, centre)
    for plane in (axial, coronal):
        cols = np.nonzero(plane.max(axis=0))[0]
        assert cols.mean() < plane.shape[1] / 2  # subject's right on the viewer's left
    out = three_plane_montage(
        vol, lps, tmp_path / "m.png", "test", overlay=vol * 0.5, mask_contour=vol > 0
    )
    assert out.stat().st_size > 5_000
