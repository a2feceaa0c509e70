"""Grad-CAM stage: atlas label look-up, thresholds, fallback, map placement and affine, map
normalization and direction, GIFs, transforms, and the stage end to end on a tiny model."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch import nn

pytest.importorskip("monai")

from earlyad.gradcam import atlas as atlas_mod  # noqa: E402
from earlyad.gradcam.figures import crop_span, gif_frames, write_gif  # noqa: E402
from earlyad.gradcam.maps import VolumeGradCAM, crop_box, place_in_volume, save_map  # noqa: E402
from earlyad.gradcam.regions import REGIONS, atlas_paths, load_atlas  # noqa: E402
from earlyad.gradcam.scores import localization, region_shares  # noqa: E402
from earlyad.gradcam.stage import GradCamSettings, run_gradcam, select_scans  # noqa: E402
from earlyad.gradcam.threshold import (  # noqa: E402
    restriction_region,
    threshold_map,
    threshold_value,
)
from earlyad.gradcam.transforms import compose, read_ants_affine, resample_to_grid  # noqa: E402
from earlyad.preprocess import TRANSFORM_SUFFIX  # noqa: E402
from earlyad.synth.brain import DEFAULT_TEMPLATE_DIR  # noqa: E402
from earlyad.train.model import ClassifierCNN, ModelConfig  # noqa: E402

# --------------------------------------------------------------------------- atlas look-up


def test_label_lookup_uses_the_code_the_image_stores_not_the_list_position() -> None:
    """Codes 4101/4102/4201 are not contiguous and not positions: the look-up by name must
    return the voxels that hold 4101 and 4102, where a look-up by position (1, 2) finds none."""
    table = {"Hippocampus_L": [1, 4101], "Hippocampus_R": [2, 4102], "Amygdala_L": [3, 4201]}
    image = np.zeros((6, 6, 6), dtype=np.int32)
    image[1, 1, 1] = 4101
    image[4, 4, 4] = 4102
    image[2:4, 2:4, 2:4] = 4201
    values = atlas_mod._aal_values(image, table, ("Hippocampus_L", "Hippocampus_R"))
    assert values == [4101, 4102]
    assert not np.isin(image, [1, 2]).any()  # what a position look-up would have given
    # the same table on an image storing the index column
    index_image = np.where(image == 4101, 1, np.where(image == 4102, 2, np.where(image, 3, 0)))
    assert atlas_mod._aal_values(index_image, table, ("Hippocampus_L", "Hippocampus_R")) == [1, 2]
    with pytest.raises(KeyError, match="Hippocampus_X"):
        atlas_mod._aal_values(image, table, ("Hippocampus_X",))


@pytest.mark.skipif(
    not (DEFAULT_TEMPLATE_DIR / "aal.nii.gz").is_file(), reason="mricron-data not installed"
)
def test_real_aal_regions_on_a_grid(tmp_path: Path) -> None:
    """mricron's AAL on a 3 mm MNI grid: every region is found, the hippocampus by its label
    values 37/38 (Hippocampus_L/_R in aal.nii.txt), about 15 mL, and the world map is applied."""
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    affine[:3, 3] = [-90.0, -126.0, -72.0]
    shape = (61, 73, 61)
    mask_img = nib.Nifti1Image(np.ones(shape, np.uint8), affine)
    nib.save(mask_img, tmp_path / "brain.nii.gz")
    paths = atlas_mod.build_atlas(
        tmp_path / "atlas", shape, affine, np.eye(4), "identity", tmp_path / "brain.nii.gz"
    )
    table = pd.read_csv(paths.table, sep="\t", dtype=str)
    assert list(table["region"]) == list(REGIONS)
    assert table.set_index("region").loc["hippocampus", "atlas_values"] == "37 38"
    ml = float(table.set_index("region").loc["hippocampus", "volume_ml"])
    assert 10.0 < ml < 20.0
    labels, _, got_affine = load_atlas(tmp_path / "atlas")
    np.testing.assert_allclose(got_affine, affine)
    ijk = np.argwhere(labels == 1).mean(axis=0)
    centre = affine[:3, :3] @ ijk + affine[:3, 3]
    assert abs(abs(centre[0]) - 0) < 5 and -35 < centre[1] < -10 and -25 < centre[2] < 0
    # a world map that moves the atlas 12 mm to the right (dst point x -> src x - 12)
    shift = np.eye(4)
    shift[0, 3] = -12.0
    moved = atlas_mod.build_atlas(
        tmp_path / "moved", shape, affine, shift, "shift", tmp_path / "brain.nii.gz"
    )
    moved_labels = np.asarray(nib.load(moved.regions).dataobj)
    right = affine[:3, :3] @ np.argwhere(moved_labels == 1).mean(axis=0) + affine[:3, 3]
    assert right[0] - centre[0] == pytest.approx(12.0, abs=1.6)


# --------------------------------------------------------------------------- thresholds


def test_percentile_keeps_the_top_share() -> None:
    cam = np.arange(1000, dtype=np.float32).reshape(10, 10, 10) / 999.0
    region = np.ones(cam.shape, bool)
    out = threshold_map(cam, region, None, "percentile", percentile=10.0)
    assert out.mask.sum() == 100 and cam[out.mask].min() == pytest.approx(900 / 999)
    assert not out.fell_back and out.region_voxels == 1000


def test_otsu_splits_a_bimodal_map() -> None:
    rng = np.random.default_rng(0)
    cam = np.where(np.arange(1000).reshape(10, 10, 10) < 800, 0.1, 0.9).astype(np.float32)
    cam += rng.normal(0, 0.02, cam.shape).astype(np.float32)
    value = threshold_value(cam.ravel(), "otsu")
    low = np.arange(1000).reshape(10, 10, 10) < 800
    assert cam[low].max() < value < cam[~low].min()  # in the gap between the two modes
    out = threshold_map(cam, np.ones(cam.shape, bool), None, "otsu")
    assert out.mask.sum() == 200


def test_mean_std_threshold() -> None:
    values = np.array([0.0, 0.0, 0.0, 0.0, 10.0])  # mean 2, sd 4
    assert threshold_value(values, "mean_std", k=1.0) == pytest.approx(6.0)
    assert threshold_value(values, "mean_std", k=0.5) == pytest.approx(4.0)
    cam = values.reshape(5, 1, 1)
    out = threshold_map(cam, np.ones(cam.shape, bool), None, "mean_std", k=1.0)
    assert out.mask.ravel().tolist() == [False] * 4 + [True]


def test_threshold_errors_are_named() -> None:
    with pytest.raises(ValueError, match="unknown threshold mode"):
        threshold_value(np.ones(3), "median")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="percentile"):
        threshold_value(np.ones(3), "percentile", percentile=0.0)
    with pytest.raises(ValueError, match="gradcam mode"):
        GradCamSettings(mode="median")


def test_threshold_is_computed_inside_the_hippocampus() -> None:
    cam = np.zeros((10, 10, 10), np.float32)
    cam[:5] = 1.0  # strong outside
    cam[7, 7, 7], cam[7, 7, 8] = 0.3, 0.2  # weak inside the hippocampus
    crop = np.ones(cam.shape, bool)
    hippo = np.zeros(cam.shape, bool)
    hippo[6:9, 6:9, 6:9] = True
    out = threshold_map(cam, crop, hippo, "percentile", percentile=5.0)
    assert not out.fell_back and out.region_voxels == 27
    assert np.argwhere(out.mask).tolist() == [[7, 7, 7]]


def test_hippocampus_missing_the_crop_falls_back_to_the_crop() -> None:
    crop = np.zeros((10, 10, 10), bool)
    crop[2:8, 2:8, 2:8] = True
    hippo = np.zeros(crop.shape, bool)
    hippo[0, 0, 0] = True  # outside the crop
    region, fell_back = restriction_region(crop, hippo)
    assert fell_back and (region == crop).all()
    assert restriction_region(crop, None) == (crop, False)
    cam = np.random.default_rng(1).random(crop.shape).astype(np.float32)
    out = threshold_map(cam, crop, hippo, "otsu")
    assert out.fell_back and out.region_voxels == int(crop.sum())
    assert not (out.mask & ~crop).any()


# --------------------------------------------------------------------------- the map itself


class RegionScoreNet(nn.Module):
    """AD's score is the summed activation inside ``region``; CN's outside it (a model whose
    evidence for AD is known to lie in ``region``)."""

    def __init__(self, region: np.ndarray) -> None:
        super().__init__()
        self.last_conv = nn.Conv3d(1, 1, kernel_size=1, bias=False)
        nn.init.ones_(self.last_conv.weight)
        self.register_buffer("region", torch.as_tensor(region, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.relu(self.last_conv(x))[:, 0]
        ad = (a * self.region).sum(dim=(1, 2, 3))
        cn = (a * (1 - self.region)).sum(dim=(1, 2, 3)) * 1e-3
        return torch.stack([cn, torch.zeros_like(ad), ad], dim=1)


def test_map_peaks_in_the_region_the_score_depends_on_and_is_not_inverted() -> None:
    n = 24
    region = np.zeros((n, n, n), bool)
    region[14:20, 4:10, 10:16] = True
    x = np.full((n, n, n), 0.2, np.float32)
    x[region] = 1.0  # the evidence
    x[2:6, 18:22, 2:6] = 0.5  # a bright spot the AD score ignores
    with torch.no_grad():  # the caller's no_grad must not break Grad-CAM
        result = VolumeGradCAM(RegionScoreNet(region))(x, class_idx=2)
    cam = result.cam
    assert result.class_idx == 2 and result.raw_max > 0
    peak = np.unravel_index(int(np.argmax(cam)), cam.shape)
    assert region[peak], "the map must peak where the AD evidence is (MONAI's default inverts)"
    assert cam.max() == pytest.approx(1.0)
    assert cam[region].mean() > 4 * cam[~region].mean()
    # normalized per VOLUME: a slice away from the region keeps its low values (per-slice
    # scaling would lift each slice's maximum to 1)
    assert cam[:, :, 0].max() < 0.6


def test_cam_on_the_study_model_has_the_crop_shape() -> None:
    model = ClassifierCNN(ModelConfig(width=0.0625, input_size=96))
    engine = VolumeGradCAM(model)
    assert engine.layer == "features.3.0"  # the model's last_conv
    crop = np.random.default_rng(0).random((96, 96, 96)).astype(np.float32)
    result = engine(crop)
    assert result.cam.shape == (96, 96, 96) and result.cam.dtype == np.float32
    assert 0.0 <= result.cam.min() and result.cam.max() <= 1.0
    assert result.probabilities.shape == (3,)
    with pytest.raises(ValueError, match="no layer 'nope'"):
        VolumeGradCAM(model, "nope")


def test_map_goes_back_at_the_crop_offset_and_keeps_the_scan_affine(tmp_path: Path) -> None:
    shape = (13, 12, 11)
    cam = np.arange(8**3, dtype=np.float32).reshape(8, 8, 8)
    full = place_in_volume(cam, shape)
    box = crop_box(shape, 8)
    assert [(s.start, s.stop) for s in box] == [(2, 10), (2, 10), (1, 9)]
    np.testing.assert_array_equal(full[box], cam)
    assert full.sum() == cam.sum()
    affine = np.array([[-1.5, 0, 0, 84.0], [0, 1.5, 0, -119.0], [0, 0, 1.5, -78.0], [0, 0, 0, 1]])
    scan = nib.Nifti1Image(np.zeros(shape, np.float32), affine)
    scan.set_sform(affine, code=4)
    nib.save(scan, tmp_path / "scan.nii.gz")
    out = save_map(full, tmp_path / "scan.nii.gz", tmp_path / "cam.nii.gz")
    img = nib.load(out)
    np.testing.assert_allclose(img.affine, affine)
    np.testing.assert_allclose(img.get_qform(), affine)
    assert int(img.header["sform_code"]) == 4
    with pytest.raises(ValueError, match="does not match"):
        save_map(full[:-1], tmp_path / "scan.nii.gz", tmp_path / "bad.nii.gz")


# --------------------------------------------------------------------------- pictures


def test_gif_has_one_frame_per_stride_slice(tmp_path: Path) -> None:
    shape = (20, 24, 18)
    scan = np.random.default_rng(0).random(shape).astype(np.float32)
    overlay = np.zeros(shape, np.float32)
    overlay[5:9, 5:9, 5:9] = 0.8
    affine = np.diag([1.5, 1.5, 1.5, 1.0])
    frames = gif_frames(scan, overlay, affine, "axial", "AD", "sub-x ses-M000\ntrue AD", stride=3)
    assert len(frames) == 6  # ceil(18 / 3)
    path = write_gif(frames, tmp_path / "axial.gif")
    with Image.open(path) as gif:
        assert gif.n_frames == 6
        assert gif.size == (2 * 20, 2 * 24 + 56)
    span = gif_frames(scan, overlay, affine, "coronal", "CN", "t", stride=2, span=(4, 14))
    assert len(span) == 5
    # the AD colour (red) is in the frame through the overlay; the CN one is not red
    rgb = np.asarray(frames[2].convert("RGB"), dtype=int)[56:]
    assert ((rgb[..., 0] > 150) & (rgb[..., 1] < 100)).any()
    with pytest.raises(ValueError, match="unknown plane"):
        gif_frames(scan, overlay, affine, "oblique", "AD", "t")


def test_crop_span_follows_flipped_axes() -> None:
    box = (slice(2, 10), slice(3, 7), slice(0, 5))
    shape = (12, 10, 8)
    assert crop_span(box, shape, np.diag([1.5, 1.5, 1.5, 1]), 0) == (2, 10)
    assert crop_span(box, shape, np.diag([-1.5, 1.5, 1.5, 1]), 0) == (2, 10)  # 12-10, 12-2
    assert crop_span(box, shape, np.diag([1.5, -1.5, 1.5, 1]), 1) == (3, 7)


# --------------------------------------------------------------------------- scores


def test_region_shares_and_their_chance() -> None:
    cam = np.zeros((10, 10, 10))
    cam[0:2] = 1.0
    domain = np.ones(cam.shape, bool)
    regions = {"a": np.zeros(cam.shape, bool), "b": np.zeros(cam.shape, bool)}
    regions["a"][0] = True
    regions["b"][5] = True
    out = region_shares(cam, regions, domain)
    assert out["mass_a"] == pytest.approx(0.5) and out["mass_b"] == 0.0
    assert out["volume_a"] == pytest.approx(0.1)


def test_localization_scores_against_a_known_truth() -> None:
    shape = (20, 20, 20)
    domain = np.ones(shape, bool)
    truth = np.zeros(shape, bool)
    truth[0:2] = True  # 10 % of the domain
    cam = np.zeros(shape)
    cam[0:2] = 1.0  # exactly the truth
    good = localization(cam, truth, domain, 0.0, 1.5)
    assert good["top_decile_share"] == 1.0 and good["pointing_hit"] == 1.0
    assert good["chance"] == pytest.approx(0.1)
    bad = localization(cam[::-1], truth, domain, 0.0, 1.5)
    assert bad["top_decile_share"] == 0.0 and bad["pointing_hit"] == 0.0
    dilated = localization(cam, truth, domain, 3.0, 1.5)  # 2 voxels more
    assert dilated["chance"] == pytest.approx(0.2)
    empty = localization(cam, np.zeros(shape, bool), domain, 0.0, 1.5)
    assert np.isnan(empty["top_decile_share"]) and np.isnan(empty["pointing_hit"])


# --------------------------------------------------------------------------- transforms


def test_ants_affine_matches_ants_apply_transforms(tmp_path: Path) -> None:
    ants = pytest.importorskip("ants")
    from scipy.spatial.transform import Rotation

    rng = np.random.default_rng(3)
    data = np.zeros((30, 34, 28), np.float32)
    data[8:20, 10:25, 6:18] = rng.random((12, 15, 12)).astype(np.float32) + 1.0
    src_affine = np.array([[2.0, 0, 0, -30], [0, 2.0, 0, -34], [0, 0, 2.0, -28], [0, 0, 0, 1]])
    dst_affine = np.array([[1.5, 0, 0, -25], [0, 1.5, 0, -30], [0, 0, 1.5, -20], [0, 0, 0, 1]])
    dst_shape = (34, 40, 30)
    mats = []
    for k, (angles, shift) in enumerate((((6, -4, 3), (3, -2, 1)), ((-3, 5, 2), (-1, 2, 4)))):
        tx = ants.create_ants_transform(
            transform_type="AffineTransform",
            dimension=3,
            matrix=Rotation.from_euler("xyz", angles, degrees=True).as_matrix() * 1.03,
            translation=list(shift),
            center=[4.0, -3.0, 2.0],
        )
        path = tmp_path / f"t{k}.mat"
        ants.write_transform(tx, str(path))
        mats.append(str(path))
    lps = np.diag([-1.0, -1.0, 1.0, 1.0])

    def to_ants(a: np.ndarray, affine: np.ndarray):  # noqa: ANN202
        m = lps @ affine
        spacing = np.linalg.norm(m[:3, :3], axis=0)
        return ants.from_numpy(
            a, origin=m[:3, 3].tolist(), spacing=spacing.tolist(), direction=m[:3, :3] / spacing
        )

    fixed = to_ants(np.zeros(dst_shape, np.float32), dst_affine)
    expected = ants.apply_transforms(
        fixed=fixed, moving=to_ants(data, src_affine), transformlist=mats, interpolator="linear"
    ).numpy()
    world = compose(*(read_ants_affine(Path(m)) for m in reversed(mats)))
    got = resample_to_grid(data, src_affine, dst_shape, dst_affine, world, order=1)
    assert np.abs(got - expected).max() < 1e-3
    with pytest.raises(ValueError, match="not a 3D ANTs affine"):
        from scipy.io import savemat

        savemat(tmp_path / "bad.mat", {"x": np.ones(3)})
        read_ants_affine(tmp_path / "bad.mat")


# --------------------------------------------------------------------------- the stage


def _save(data: np.ndarray, affine: np.ndarray, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


@pytest.fixture(scope="module")
def stage_inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two normalized scans, an atlas whose hippocampus lies OUTSIDE the crop (the fallback),
    a tiny model, predictions, and ground-truth masks with identity transforms."""
    ants = pytest.importorskip("ants")
    root = tmp_path_factory.mktemp("gradcam")
    shape = (100, 104, 98)
    affine = np.array([[1.5, 0, 0, -74.0], [0, 1.5, 0, -90.0], [0, 0, 1.5, -60.0], [0, 0, 0, 1]])
    rng = np.random.default_rng(0)
    rows, cohort = [], []
    for pid, label in (("sub-A", 2), ("sub-B", 0)):
        folder = root / "normalized" / pid / "ses-M000"
        vol = (rng.random(shape) * 0.2).astype(np.float32)
        vol[30:70, 30:74, 30:68] += 0.7
        _save(vol, affine, folder / f"{pid}_ses-M000_desc-norm_T1w.nii.gz")
        np.save(folder / f"{pid}_ses-M000.npy", vol.astype(np.float16))
        identity = ants.create_ants_transform(transform_type="AffineTransform", dimension=3)
        ants.write_transform(identity, str(folder / f"{pid}_ses-M000{TRANSFORM_SUFFIX}"))
        t1 = root / "t1_linear" / pid / "ses-M000"
        t1.mkdir(parents=True)
        ants.write_transform(
            identity, str(t1 / f"{pid}_ses-M000_space-MNI152NLin2009cSym_res-1x1x1_affine.mat")
        )
        (t1 / "status.json").write_text(json.dumps({"ok": True, "backend": "native"}))
        truth = np.zeros(shape, np.uint8)
        if label:
            truth[45:55, 45:55, 45:55] = 1
        _save(truth, affine, root / "synthetic" / "ground_truth" / f"{pid}_atrophy.nii.gz")
        cohort.append(
            {
                "participant_id": pid,
                "session_id": "ses-M000",
                "atrophy_mask": f"ground_truth/{pid}_atrophy.nii.gz",
            }
        )
        probs = {"prob_CN": 0.4, "prob_MCI": 0.3, "prob_AD": 0.3}
        rows.append(
            {"participant_id": pid, "session_id": "ses-M000", "true_label": label,
             "predicted_label": 0, **probs}
        )  # fmt: skip
    pd.DataFrame(cohort).to_csv(root / "synthetic/ground_truth/cohort.tsv", sep="\t", index=False)
    run = root / "training" / "tiny"
    run.mkdir(parents=True)
    pd.DataFrame(rows).to_csv(run / "predictions_test.tsv", sep="\t", index=False)
    torch.manual_seed(0)
    config = ModelConfig(width=0.0625, input_size=96)
    model = ClassifierCNN(config)
    torch.save(
        {"state_dict": model.state_dict(), "model_config": asdict(config), "epoch": 1},
        run / "model.pt",
    )
    labels = np.zeros(shape, np.uint8)
    labels[0:2, 0:2, 0:2] = 1  # hippocampus in a corner, outside the centred crop
    labels[50:53, 50:53, 50:53] = 4
    paths = atlas_paths(root / "atlas")
    _save(labels, affine, paths.regions)
    brain = np.zeros(shape, np.uint8)
    brain[20:80, 20:84, 20:78] = 1
    _save(brain, affine, paths.brain)
    return {"root": root, "run": run}


def test_stage_end_to_end(stage_inputs: dict[str, Path]) -> None:
    root, run = stage_inputs["root"], stage_inputs["run"]
    out = root / "out"
    scans = run_gradcam(
        run / "model.pt",
        run / "predictions_test.tsv",
        root / "normalized",
        root / "atlas",
        out,
        GradCamSettings(mode="otsu", gif_stride=4),
        ground_truth=root / "synthetic" / "ground_truth" / "cohort.tsv",
        t1_linear_root=root / "t1_linear",
    )
    assert list(scans["participant_id"]) == ["sub-A", "sub-B"]
    # the hippocampus misses the crop: the crop was used, and the table says so
    table = pd.read_csv(out / "scans.tsv", sep="\t")
    assert table["hippocampus_fallback"].all() and set(table["threshold_region"]) == {"crop"}
    assert set(table["threshold_mode"]) == {"otsu"}
    for pid in ("sub-A", "sub-B"):
        scan = nib.load(
            root / "normalized" / pid / "ses-M000" / f"{pid}_ses-M000_desc-norm_T1w.nii.gz"
        )
        cam = nib.load(out / "scans" / f"{pid}_ses-M000_gradcam.nii.gz")
        np.testing.assert_allclose(cam.affine, scan.affine)
        data = cam.get_fdata()
        assert data.shape == scan.shape and data.max() == pytest.approx(1.0, abs=1e-6)
        box = crop_box(scan.shape, 96)
        outside = np.ones(scan.shape, bool)
        outside[box] = False
        assert not data[outside].any()
        for plane, n in (("axial", 24), ("coronal", 24), ("sagittal", 24)):
            with Image.open(out / "scans" / f"{pid}_ses-M000_{plane}.gif") as gif:
                assert gif.n_frames == n  # 96 crop slices / stride 4
        assert (out / "montages" / f"{pid}_ses-M000.png").is_file()
    assert (out / "group" / "mean_true-AD.nii.gz").is_file()
    assert (out / "group" / "mean_pred-CN.nii.gz").is_file()
    assert (out / "group_montage.png").is_file()
    regions = pd.read_csv(out / "regions.tsv", sep="\t")
    assert set(regions["region"]) == set(REGIONS)
    assert set(regions["grouping"]) == {"true", "predicted"}
    loc = pd.read_csv(out / "localization.tsv", sep="\t")
    row = loc[(loc["region"] == "any") & (loc["true_class"] == "all")].iloc[0]
    assert row["n_scans"] == 1  # sub-B (CN) has no atrophy to point at
    assert 0 < row["top_decile_chance"] < 0.2
    assert row["transforms"] == "exact (affines)"
    settings = json.loads((out / "settings.json").read_text())
    assert settings["layer_name"] == "features.3.0" and settings["n_scans"] == 2


def test_stage_without_ground_truth_and_a_missing_transform(
    stage_inputs: dict[str, Path], tmp_path: Path
) -> None:
    root, run = stage_inputs["root"], stage_inputs["run"]
    run_gradcam(
        run / "model.pt", run / "predictions_test.tsv", root / "normalized", root / "atlas",
        tmp_path / "plain", GradCamSettings(max_scans=1, restrict_to_hippocampus=False),
    )  # fmt: skip
    loc = pd.read_csv(tmp_path / "plain" / "localization.tsv", sep="\t")
    assert loc["n_scans"].tolist() == [0] and "no ground truth" in loc["transforms"][0]
    scans = pd.read_csv(tmp_path / "plain" / "scans.tsv", sep="\t")
    assert len(scans) == 1 and not scans["hippocampus_fallback"].any()
    # a normalized scan without its saved transform: the error names the file and the fix
    norm = tmp_path / "normalized"
    for pid in ("sub-A", "sub-B"):
        src = root / "normalized" / pid / "ses-M000"
        dst = norm / pid / "ses-M000"
        dst.mkdir(parents=True)
        for f in src.iterdir():
            if not f.name.endswith(TRANSFORM_SUFFIX):
                (dst / f.name).symlink_to(f)
    with pytest.raises(FileNotFoundError, match="rerun the normalize rule"):
        run_gradcam(
            run / "model.pt", run / "predictions_test.tsv", norm, root / "atlas",
            tmp_path / "fails", GradCamSettings(),
            ground_truth=root / "synthetic" / "ground_truth" / "cohort.tsv",
            t1_linear_root=root / "t1_linear",
        )  # fmt: skip


def test_select_scans_is_sorted_and_seeded() -> None:
    df = pd.DataFrame({"participant_id": ["c", "a", "b", "d"], "session_id": ["s"] * 4})
    assert select_scans(df, 0, 0)["participant_id"].tolist() == ["a", "b", "c", "d"]
    two = select_scans(df, 2, 5)
    assert len(two) == 2 and two.equals(select_scans(df, 2, 5))


def test_cli_takes_the_threshold_mode(stage_inputs: dict[str, Path], tmp_path: Path) -> None:
    from earlyad.cli import build_parser, main

    args = build_parser().parse_args(["gradcam", "results/training/r", "--mode", "otsu"])
    assert args.mode == "otsu" and args.atlas == Path("results/atlas")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["gradcam", "r", "--mode", "median"])
    root = stage_inputs["root"]
    argv = ["gradcam", str(stage_inputs["run"]), "--mode", "mean_std", "--k", "2",
            "--max-scans", "1", "--normalized", str(root / "normalized"),
            "--atlas", str(root / "atlas"), "--out", str(tmp_path / "cli")]  # fmt: skip
    assert main(argv) == 0
    assert set(pd.read_csv(tmp_path / "cli" / "scans.tsv", sep="\t")["threshold_mode"]) == {
        "mean_std"
    }
    assert main([*argv[:-2], "--atlas", str(tmp_path / "none"), "--out", str(tmp_path / "x")]) == 2
