"""The study template depends on its inputs only, is reproducible, and sits on the MNI grid.

Inputs are fake t1-linear outputs: nilearn's MNI152 template on the cropped grid's field of view
(2 mm here, to keep registrations fast), moved by small random affines, with random gain and
noise, as t1-linear would leave real scans.
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

from earlyad.preprocess.study_template import (  # noqa: E402
    build_study_template,
    downsample,
    inputs_manifest_path,
    select_images,
)

# Clinica's cropped 1 mm grid is 169x208x179 from (-84, -119, -78); the same box at 2 mm.
SPACING = 2.0
SHAPE = (85, 104, 90)
AFFINE = np.diag([SPACING, SPACING, SPACING, 1.0])
AFFINE[:3, 3] = (-84 + 0.5, -119 + 0.5, -78 + 0.5)


def _resampled(img: nib.Nifti1Image, interpolation: str) -> np.ndarray:
    return resample_to_grid(img, AFFINE, SHAPE, interpolation)


@pytest.fixture(scope="module")
def mni(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The cropped MNI template and brain mask, on the 2 mm test grid."""
    from nilearn.datasets import load_mni152_brain_mask, load_mni152_template

    root = tmp_path_factory.mktemp("mni")
    paths = {"template": root / "tpl.nii.gz", "mask": root / "mask.nii.gz"}
    nib.save(
        nib.Nifti1Image(_resampled(load_mni152_template(resolution=1), "continuous"), AFFINE),
        paths["template"],
    )
    mask = _resampled(load_mni152_brain_mask(resolution=1), "nearest") > 0
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), AFFINE), paths["mask"])
    return paths


def fake_t1_linear(template: Path, out: Path, seed: int) -> Path:
    """A template copy moved by <= 3 deg / 3 mm / 4 % scale, with gain and Rician-like noise."""
    rng = np.random.default_rng(seed)
    data = np.asarray(nib.load(template).get_fdata(), dtype=np.float32)
    ax, ay, az = np.deg2rad(rng.uniform(-3, 3, 3))
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    lin = rz @ ry @ rx @ np.diag(rng.uniform(0.96, 1.04, 3))
    centre = (np.asarray(SHAPE) - 1) / 2
    offset = centre - lin @ centre + rng.uniform(-3, 3, 3) / SPACING
    moved = ndi.affine_transform(data, lin, offset, order=1)
    moved = moved * rng.uniform(50, 500) + rng.normal(0, 5, moved.shape)
    nib.save(nib.Nifti1Image(np.abs(moved).astype(np.float32), AFFINE), out)
    return out


@pytest.fixture(scope="module")
def scans(mni: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Four fake scans in one folder: three 'training' inputs and one 'test' scan."""
    root = tmp_path_factory.mktemp("t1_linear")
    names = ["sub-01_ses-M000", "sub-02_ses-M000", "sub-03_ses-M000", "sub-99_ses-M000"]
    return [
        fake_t1_linear(mni["template"], root / f"{n}_T1w.nii.gz", i) for i, n in enumerate(names)
    ]


def _build(inputs: list[Path], out: Path, mni: dict[str, Path], **kw: object) -> np.ndarray:
    kw = {"threads": 2, **kw}
    path = build_study_template(inputs, out, initial=mni["template"], mask=mni["mask"], **kw)
    return np.asarray(nib.load(path).dataobj)


@pytest.fixture(scope="module")
def baseline(
    scans: list[Path], mni: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, np.ndarray]:
    out = tmp_path_factory.mktemp("tpl") / "study_template.nii.gz"
    return out, _build(scans[:3], out, mni, iterations=1, seed=0)


def test_template_grid_range_and_manifest(
    baseline: tuple[Path, np.ndarray], scans: list[Path], mni: dict[str, Path]
) -> None:
    out, data = baseline
    img, init = nib.load(out), nib.load(mni["template"])
    assert img.shape == init.shape
    np.testing.assert_allclose(img.affine, init.affine)
    assert img.get_data_dtype() == np.float32
    assert data.min() == 0.0 and data.max() == 1.0
    manifest = json.loads(inputs_manifest_path(out).read_text())
    assert [m["path"] for m in manifest["images"]] == [str(p) for p in scans[:3]]
    assert all(len(m["sha256"]) == 64 for m in manifest["images"])
    assert str(scans[3]) not in json.dumps(manifest)  # the test scan is not listed


def test_template_resembles_mni(baseline: tuple[Path, np.ndarray], mni: dict[str, Path]) -> None:
    """An average of MNI copies registered back to MNI must look like MNI."""
    _, data = baseline
    tpl = nib.load(mni["template"]).get_fdata()
    mask = nib.load(mni["mask"]).get_fdata() > 0
    assert np.corrcoef(data[mask], tpl[mask])[0, 1] > 0.95


def test_template_ignores_non_inputs_and_order(
    baseline: tuple[Path, np.ndarray],
    scans: list[Path],
    mni: dict[str, Path],
    tmp_path: Path,
) -> None:
    """Changing the test scan next to the inputs, listing inputs in another order or using
    another number of workers changes nothing, bit for bit; changing an input changes the
    template."""
    _, before = baseline  # built with 2 workers
    test_scan = scans[3]
    fake_t1_linear(mni["template"], test_scan, seed=1234)  # the 'test' scan changes
    again = _build(scans[2::-1], tmp_path / "again.nii.gz", mni, iterations=1, threads=1)
    assert again.tobytes() == before.tobytes()

    changed_input = tmp_path / scans[2].name
    fake_t1_linear(mni["template"], changed_input, seed=4321)
    other = _build([*scans[:2], changed_input], tmp_path / "o.nii.gz", mni, iterations=1, threads=1)
    assert not np.array_equal(other, before)


def test_two_iterations_and_subset(scans: list[Path], mni: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "tpl2.nii.gz"
    data = _build(scans[:3], out, mni, iterations=2, max_images=2, seed=7, threads=1)
    manifest = json.loads(inputs_manifest_path(out).read_text())
    assert manifest["n_images"] == 2 and manifest["n_candidates"] == 3
    assert manifest["iterations"] == 2
    assert data.shape == SHAPE and np.isfinite(data).all()


def test_select_images_sorted_and_seeded() -> None:
    paths = [Path(f"/x/sub-{i:02d}.nii.gz") for i in range(20)]
    shuffled = paths[::-1]
    assert select_images(shuffled, None, 0) == paths
    a = select_images(shuffled, 5, seed=3)
    assert a == select_images(paths, 5, seed=3)
    assert a == sorted(a, key=str) and len(a) == 5
    assert a != select_images(paths, 5, seed=4)


def test_downsample_keeps_world_positions() -> None:
    """The block average of a 1 mm grid sits at its blocks' centres in the world."""
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    affine[:3, 3] = (-84, -119, -78)
    data = np.zeros((169, 208, 179), np.float32)
    data[100:102, 50:52, 20:22] = 1.0  # a 2x2x2 block
    small, small_affine = downsample(data, affine)
    assert small.shape == (84, 104, 89)
    ijk = np.argwhere(small == small.max())[0]
    world = small_affine @ np.append(ijk, 1.0)
    np.testing.assert_allclose(world[:3], affine[:3, :3] @ [100.5, 50.5, 20.5] + affine[:3, 3])
