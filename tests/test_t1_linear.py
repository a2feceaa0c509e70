"""t1-linear per scan: geometry, registration quality (also for rotated headers), determinism,
clear errors for bad inputs, header handling; one slow test runs the real Clinica pipeline.

The fast tests run three native registrations at once (about 30 s on 2 cores).
"""

from __future__ import annotations

import gzip
import json
import struct
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from earlyad.preprocess import t1_linear as tl
from earlyad.preprocess.t1_linear import (
    STATUS_NAME,
    InputImageError,
    load_t1,
    output_names,
    run_t1_linear,
    to_ants,
)
from earlyad.preprocess.templates import (
    MNI_NAME,
    TemplateError,
    TemplatePaths,
    install_templates,
    sha256_of,
)
from earlyad.synth.brain import load_reference, synthesize_scan

PID, SES = "sub-ADNI011S0002", "ses-M000"
LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
#: NCC of a well-registered synthetic scan with the STAND-IN inside its brain mask is ~0.64
#: (Colin27 itself, placed in MNI space, scores 0.62: a single brain with skull against a
#: skull-stripped average). A failed registration (inflated head) scores ~0.15-0.3.
MIN_NCC_STANDIN = 0.55
NAN_VOXELS = 50


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def templates(tmp_path_factory: pytest.TempPathFactory) -> TemplatePaths:
    root = tmp_path_factory.mktemp("templates")
    return install_templates("standin", root / "dest", clinica_dir=root / "clinica")


def _rotated_header_copy(img: nib.Nifti1Image, path: Path) -> np.ndarray:
    """The same voxels with the head turned 25 deg and moved 30 mm, stored in the nastiest way:
    qform only, uncompressed float32 with scl_slope = 2 (data halved) and some NaN voxels.
    Returns the world motion (normal scan world -> this copy's world)."""
    axis = np.array([0.6, 0.6, -0.53])
    motion = np.eye(4)
    motion[:3, :3] = Rotation.from_rotvec(np.radians(25) * axis / np.linalg.norm(axis)).as_matrix()
    motion[:3, 3] = 30 * np.array([1.0, -1.0, 1.0]) / np.sqrt(3)
    affine = motion @ img.affine
    data = np.asarray(img.dataobj, dtype=np.float32) / 2
    data[:5, :5, :2] = np.nan  # background corner: 50 voxels
    copy = nib.Nifti1Image(data, affine)
    copy.set_qform(affine, code=1)
    copy.set_sform(None, code=0)
    nib.save(copy, path)
    with open(path, "r+b") as fh:  # nibabel resets scl_slope on save: patch the header
        fh.seek(112)
        fh.write(struct.pack("<f", 2.0))
    return motion


@pytest.fixture(scope="module")
def scans(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("scans")
    scan = synthesize_scan(load_reference(), 0.5, np.random.default_rng(3))
    normal = root / "normal.nii.gz"
    nib.save(scan.image, normal)
    messy = root / "messy.nii"
    motion = _rotated_header_copy(scan.image, messy)
    return {"normal": normal, "messy": messy, "motion": motion}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, templates: TemplatePaths, scans: dict) -> dict:
    """Three native runs in parallel, one ITK thread each: normal twice (same seed), messy."""
    root = tmp_path_factory.mktemp("runs")
    jobs = {"a": scans["normal"], "b": scans["normal"], "messy": scans["messy"]}
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = {
            name: pool.submit(
                run_t1_linear, image, PID, SES, root / name, templates, "native", seed=7, threads=1
            )
            for name, image in jobs.items()
        }
        return {name: f.result() for name, f in futures.items()}


def _data(path: Path) -> np.ndarray:
    return np.asarray(nib.load(path).dataobj, dtype=np.float64)


def _ncc(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    x, y = a[mask] - a[mask].mean(), b[mask] - b[mask].mean()
    return float((x * y).sum() / np.sqrt((x * x).sum() * (y * y).sum()))


def _mapping(mat: Path) -> np.ndarray:
    """Template RAS -> scan RAS of an ITK affine .mat."""
    import ants

    tx = ants.read_transform(str(mat))
    p = np.asarray(tx.parameters, dtype=np.float64)
    centre = np.asarray(tx.fixed_parameters, dtype=np.float64)
    m = np.eye(4)
    m[:3, :3] = p[:9].reshape(3, 3)
    m[:3, 3] = p[9:12] + centre - m[:3, :3] @ centre
    return LPS @ m @ LPS


# --------------------------------------------------------------------------- native runs


def test_output_names_are_clinicas() -> None:
    from clinica.pipelines.t1_linear.anat_linear_utils import (
        get_substitutions_datasink_t1_linear,
    )

    subs = dict(get_substitutions_datasink_t1_linear(f"{PID}_{SES}_T1w"))
    image, affine = output_names(PID, SES)
    assert subs[f"{PID}_{SES}_T1wWarped_cropped.nii.gz"] == image
    assert subs[f"{PID}_{SES}_T1w0GenericAffine.mat"] == affine


def test_native_outputs_on_the_cropped_reference(runs: dict, templates: TemplatePaths) -> None:
    result = runs["a"]
    assert result.ok, result.error
    assert result.image.name == output_names(PID, SES)[0] and result.affine.is_file()
    out, ref = nib.load(result.image), nib.load(templates.cropped)
    assert out.shape == (169, 208, 179)
    np.testing.assert_array_equal(out.affine, ref.affine)
    assert out.header.get_qform(coded=True)[1] == ref.header.get_qform(coded=True)[1]
    assert out.get_data_dtype() == np.float32
    status = json.loads(result.status.read_text())
    assert status["ok"] and status["backend"] == "native" and status["error"] is None
    assert status["nan_voxels"] == 0 and status["template_source"] == "standin"
    assert status["seconds"] > 0 and status["peak_rss_mb"] > 100


def test_native_registers_normal_and_rotated_headers(
    runs: dict, templates: TemplatePaths, scans: dict
) -> None:
    mask = _data(templates.cropped_mask) > 0
    template = _data(templates.cropped)
    normal, messy = runs["a"], runs["messy"]
    assert messy.ok, messy.error
    for result in (normal, messy):
        assert _ncc(_data(result.image), template, mask) > MIN_NCC_STANDIN
    # Same voxels, so the same anatomy must land in the same place (25 deg, 30 mm later).
    assert _ncc(_data(normal.image), _data(messy.image), mask) > 0.99
    idx = np.argwhere(mask)[::200]
    points = nib.load(templates.cropped_mask).affine @ np.c_[idx, np.ones(len(idx))].T
    expected = scans["motion"] @ _mapping(normal.affine)
    gap = np.linalg.norm((expected @ points - _mapping(messy.affine) @ points)[:3], axis=0)
    assert gap.mean() < 1.0


def test_messy_header_handled_and_nans_counted(runs: dict) -> None:
    status = json.loads(runs["messy"].status.read_text())
    assert status["ok"]
    assert status["nan_voxels"] == NAN_VOXELS == runs["messy"].nan_voxels
    assert status["header_notes"] == []  # qform only: ITK and nibabel agree


def test_deterministic_for_a_seed(runs: dict) -> None:
    a, b = runs["a"], runs["b"]
    assert a.affine.read_bytes() == b.affine.read_bytes()
    np.testing.assert_array_equal(_data(a.image), _data(b.image))


# --------------------------------------------------------------------------- bad inputs


def _missing(path: Path) -> None:
    pass


def _garbage(path: Path) -> None:
    path.write_bytes(b"this is not a NIfTI file" * 10)


def _truncated(path: Path) -> None:
    img = nib.Nifti1Image(
        np.random.default_rng(0).random((40, 40, 40), dtype=np.float32), np.eye(4)
    )
    nib.save(img, path)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])


def _bad_gzip_stream(path: Path) -> None:
    """A valid gzip stream holding only the start of a NIfTI."""
    raw = nib.Nifti1Image(np.ones((40, 40, 40), np.float32), np.eye(4)).to_bytes()
    path.write_bytes(gzip.compress(raw[:1000]))


def _four_d(path: Path) -> None:
    nib.save(nib.Nifti1Image(np.ones((32, 32, 32, 3), np.float32), np.eye(4)), path)


def _no_orientation(path: Path) -> None:
    img = nib.Nifti1Image(np.random.default_rng(0).random((32, 32, 32), dtype=np.float32), None)
    img.set_qform(None, code=0)
    img.set_sform(None, code=0)
    nib.save(img, path)


def _constant(path: Path) -> None:
    nib.save(nib.Nifti1Image(np.zeros((32, 32, 32), np.float32), np.eye(4)), path)


def _huge_voxels(path: Path) -> None:
    nib.save(nib.Nifti1Image(np.ones((32, 32, 32), np.float32), np.diag([10.0, 10, 10, 1])), path)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (_missing, "no such file"),
        (_garbage, "unreadable"),
        (_truncated, "unreadable or truncated"),
        (_bad_gzip_stream, "unreadable or truncated"),
        (_four_d, "4D image"),
        (_no_orientation, "orientation is unknown"),
        (_constant, "constant image"),
        (_huge_voxels, "voxel size"),
    ],
)
def test_bad_input_fails_naming_the_file(
    make, message: str, tmp_path: Path, templates: TemplatePaths
) -> None:
    path = tmp_path / "sub-X_ses-Y_T1w.nii.gz"
    make(path)
    result = run_t1_linear(path, "sub-X", "ses-Y", tmp_path / "out", templates, "native")
    assert not result.ok
    assert str(path) in result.error and message in result.error
    status = json.loads((tmp_path / "out" / STATUS_NAME).read_text())
    assert status["ok"] is False and status["error"] == result.error
    assert not result.image.exists() and not result.affine.exists()
    with pytest.raises(tl.T1LinearError, match=message):
        result.raise_for_error()


def test_unknown_backend(tmp_path: Path, templates: TemplatePaths) -> None:
    with pytest.raises(ValueError, match="unknown backend"):
        run_t1_linear(tmp_path / "x.nii", PID, SES, tmp_path, templates, "fsl")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- headers


def _random_volume() -> np.ndarray:
    return np.random.default_rng(1).random((20, 22, 24), dtype=np.float32) * 100


def _oblique(zooms: tuple[float, float, float] = (1.2, 1.0, 1.5)) -> np.ndarray:
    affine = np.eye(4)
    affine[:3, :3] = Rotation.from_euler("xyz", (20, -10, 30), degrees=True).as_matrix()
    affine[:3, :3] = affine[:3, :3] @ np.diag(zooms)
    affine[:3, 3] = (-10.0, 20.0, -30.0)
    return affine


def _save(
    tmp_path: Path,
    data: np.ndarray,
    qform: np.ndarray | None,
    sform: np.ndarray | None,
    sform_code: int = 1,
) -> Path:
    img = nib.Nifti1Image(data, qform if qform is not None else sform)
    img.set_qform(qform, code=1 if qform is not None else 0)
    img.set_sform(sform, code=sform_code if sform is not None else 0)
    path = tmp_path / "h.nii.gz"
    nib.save(img, path)
    return path


def _ants_world(image, ijk: np.ndarray) -> np.ndarray:
    """RAS world coordinates of voxel indices in an ANTs image."""
    direction, spacing = np.asarray(image.direction), np.asarray(image.spacing)
    lps = direction @ (spacing * ijk) + np.asarray(image.origin)
    return lps * np.array([-1.0, -1.0, 1.0])


def test_qform_only_geometry_reaches_ants(tmp_path: Path) -> None:
    data, affine = _random_volume(), _oblique()
    checked = load_t1(_save(tmp_path, data, affine, None))
    np.testing.assert_allclose(checked.image.affine, affine, atol=1e-5)
    image = to_ants(checked.image)
    ijk = np.array([3.0, 17.0, 9.0])
    np.testing.assert_allclose(_ants_world(image, ijk), (affine @ np.r_[ijk, 1])[:3], atol=1e-4)
    np.testing.assert_allclose(image.numpy(), data, rtol=1e-6)


def test_to_ants_agrees_with_itk_on_a_clean_file(tmp_path: Path) -> None:
    import ants

    path = _save(tmp_path, _random_volume(), _oblique(), _oblique())
    ours, itk = to_ants(load_t1(path).image), ants.image_read(str(path))
    np.testing.assert_allclose(ours.origin, itk.origin, atol=1e-4)
    np.testing.assert_allclose(ours.spacing, itk.spacing, atol=1e-5)
    np.testing.assert_allclose(ours.direction, itk.direction, atol=1e-5)
    np.testing.assert_allclose(ours.numpy(), itk.numpy(), rtol=1e-6)


def test_sform_only_and_disagreeing_forms(tmp_path: Path) -> None:
    data, sform = _random_volume(), _oblique()
    checked = load_t1(_save(tmp_path, data, None, sform))
    np.testing.assert_allclose(checked.image.affine, sform, atol=1e-5)
    assert checked.clean
    other = np.diag([1.2, 1.0, 1.5, 1.0])
    checked = load_t1(_save(tmp_path, data, other, sform, sform_code=2))
    np.testing.assert_allclose(checked.image.affine, sform, atol=1e-5)  # nibabel's choice
    assert any("qform and sform differ" in note for note in checked.notes)
    assert not checked.clean  # the clinica backend then gets the fixed copy


def test_scl_slope_and_nan(tmp_path: Path) -> None:
    raw = np.arange(20 * 22 * 24, dtype=np.float32).reshape(20, 22, 24) % 97
    raw[0, 0, :3] = np.nan
    path = tmp_path / "s.nii"
    nib.save(nib.Nifti1Image(raw, np.eye(4)), path)
    with open(path, "r+b") as fh:
        fh.seek(112)
        fh.write(struct.pack("<ff", 3.0, 5.0))  # scl_slope, scl_inter
    checked = load_t1(path)
    assert checked.nan_voxels == 3
    expected = np.where(np.isnan(raw), 0.0, raw * 3.0 + 5.0)
    np.testing.assert_allclose(np.asarray(checked.image.dataobj), expected, rtol=1e-6)


def test_load_t1_errors_are_input_errors(tmp_path: Path) -> None:
    with pytest.raises(InputImageError, match=str(tmp_path / "absent.nii")):
        load_t1(tmp_path / "absent.nii")


def test_n4_does_not_depend_on_header_rotation(scans: dict) -> None:
    """ANTs' N4 alone changes the bias field by +-10% when the header is turned 25 deg about y;
    ours computes it on an axis-aligned copy."""
    img = nib.load(scans["normal"])
    data = np.asarray(img.dataobj, dtype=np.float32)[::3, ::3, ::3]
    affine = img.affine @ np.diag([3.0, 3.0, 3.0, 1.0])
    turn = np.eye(4)
    turn[:3, :3] = Rotation.from_euler("y", 25, degrees=True).as_matrix()
    settings = tl.NativeSettings(n4_shrink=4)
    a = tl._n4(to_ants(nib.Nifti1Image(data, affine)), settings).numpy()
    b = tl._n4(to_ants(nib.Nifti1Image(data, turn @ affine)), settings).numpy()
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-2 * float(a.max()))


# --------------------------------------------------------------------------- clinica backend


def test_clinica_refuses_templates_it_would_not_use(
    tmp_path: Path, templates: TemplatePaths, scans: dict
) -> None:
    """Clinica reads only its own folder: different files there must stop the run up front."""
    other = tmp_path / MNI_NAME
    img = nib.load(templates.mni)
    data = np.asarray(img.dataobj).copy()
    data[0, 0, 0] += 1
    nib.save(nib.Nifti1Image(data, img.affine, img.header), other)
    mismatched = TemplatePaths(other, templates.cropped, templates.cropped_mask, "standin")
    result = run_t1_linear(scans["normal"], PID, SES, tmp_path / "out", mismatched, "clinica")
    assert not result.ok
    assert "Clinica" in result.error and ("differs" in result.error or "missing" in result.error)


@pytest.mark.slow
def test_clinica_backend_for_real(tmp_path: Path, scans: dict) -> None:
    """``clinica run t1-linear --use-antspy`` on one scan of a hand-made BIDS (about 2-4 min).

    Installs the stand-in into Clinica's own folder (skipped if the real templates are there).
    """
    from clinica.utils.image import get_mni_cropped_template, get_mni_template

    try:
        templates = install_templates("standin", tmp_path / "templates")
    except TemplateError as err:
        pytest.skip(f"Clinica's folder holds the real templates: {err}")
    # Clinica takes a local file under the real name without checking its checksum.
    assert sha256_of(get_mni_template("t1")) == sha256_of(templates.mni)
    assert sha256_of(get_mni_cropped_template()) == sha256_of(templates.cropped)

    bids = tmp_path / "bids"
    anat = bids / PID / SES / "anat"
    anat.mkdir(parents=True)
    image = anat / f"{PID}_{SES}_T1w.nii.gz"
    image.write_bytes(scans["normal"].read_bytes())
    (bids / "participants.tsv").write_text(f"participant_id\n{PID}\n")
    (bids / "dataset_description.json").write_text(
        json.dumps({"Name": "test", "BIDSVersion": "1.7.0", "DatasetType": "raw"})
    )
    result = run_t1_linear(
        image,
        PID,
        SES,
        tmp_path / "out",
        templates,
        "clinica",
        threads=2,
        bids_dir=bids,
        work_dir=tmp_path / "work",
    )
    assert result.ok, result.error
    out, ref = nib.load(result.image), nib.load(templates.cropped)
    assert out.shape == ref.shape
    np.testing.assert_allclose(out.affine, ref.affine)
    assert result.affine.name == output_names(PID, SES)[1] and result.affine.stat().st_size > 0
    status = json.loads(result.status.read_text())
    assert status["backend"] == "clinica" and status["peak_rss_mb"] > 500
    assert not (tmp_path / "work" / "bids").exists()  # Clinica read the user's BIDS in place
