"""The Grad-CAM stage: maps, pictures, group maps and tables for one trained run.

Called by the ``gradcam`` rule and by ``earlyad gradcam``. Writes into ``out_dir``:

* ``scans/{pid}_{ses}_gradcam.nii.gz`` (the map, [0, 1] per volume, on the normalized scan's
  grid and affine), ``scans/{pid}_{ses}_gradcam-thr.nii.gz`` (the map where it passes the
  threshold, 0 elsewhere) and ``scans/{pid}_{ses}_{axial,coronal,sagittal}.gif``;
* ``montages/{pid}_{ses}.png`` (three planes through the map's peak, hippocampus contour);
* ``group/mean_{true,pred}-{CN,MCI,AD}.nii.gz`` and ``group_montage.png``;
* ``scans.tsv`` (one row per scan), ``regions.tsv`` and ``localization.tsv``
  (:mod:`earlyad.gradcam.scores`).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
import torch

from earlyad import CLASSES
from earlyad.gradcam.figures import PLANES, crop_span, gif_frames, group_montage, write_gif
from earlyad.gradcam.maps import VolumeGradCAM, crop_box, place_in_volume, save_map
from earlyad.gradcam.regions import HIPPOCAMPUS, load_atlas, region_masks
from earlyad.gradcam.scores import localization, region_shares
from earlyad.gradcam.threshold import MODES, threshold_map
from earlyad.gradcam.transforms import compose, read_ants_affine, resample_to_grid
from earlyad.preprocess import TRANSFORM_SUFFIX
from earlyad.preprocess.montage import three_plane_montage
from earlyad.tables import write_tsv
from earlyad.train.data import seeded_subset
from earlyad.train.trainer import load_model

__all__ = ["GradCamSettings", "TRUTH_REGIONS", "run_gradcam", "select_scans"]

log = logging.getLogger("earlyad")

#: Ground-truth regions of the synthetic atrophy masks (values 1 and 2, see synth.brain).
TRUTH_REGIONS: dict[str, tuple[int, ...]] = {"any": (1, 2), "hippocampus": (1,), "ventricles": (2,)}
_T1_LINEAR_MAT = "_space-MNI152NLin2009cSym_res-1x1x1_affine.mat"


@dataclass(frozen=True)
class GradCamSettings:
    """Settings of the stage (config ``gradcam:``; defaults in one place).

    Args:
        mode: threshold mode, ``percentile`` | ``otsu`` | ``mean_std``.
        percentile: top share (%) kept by ``percentile``.
        k: standard deviations above the mean for ``mean_std``.
        target: class explained: ``predicted``, ``true_class`` or a class name (CN, MCI, AD).
        split: scans explained: ``test`` or ``val`` (their predictions file).
        max_scans: a seeded subset of this many scans (0: all).
        restrict_to_hippocampus: threshold (and show) the map inside the AAL hippocampus only,
            falling back to the centred crop when the mask misses it.
        layer: target layer, ``last_conv`` or a module name of the model.
        dilation_mm: dilation of the ground-truth masks for the localization scores.
        gif_stride: every how many slices a GIF frame is drawn.
        seed: seed of the subset.
    """

    mode: str = "percentile"
    percentile: float = 10.0
    k: float = 1.0
    target: str = "predicted"
    split: str = "test"
    max_scans: int = 0
    restrict_to_hippocampus: bool = True
    layer: str = "last_conv"
    dilation_mm: float = 4.5
    gif_stride: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"gradcam mode must be one of {MODES}, got {self.mode!r}")
        if self.target not in ("predicted", "true_class", *CLASSES):
            raise ValueError(
                f"gradcam target must be predicted, true_class or one of {CLASSES}, "
                f"got {self.target!r}"
            )
        if self.split not in ("val", "test"):
            raise ValueError(f"gradcam split must be val or test, got {self.split!r}")
        if not 0 < self.percentile <= 100:
            raise ValueError(f"gradcam percentile must be in (0, 100], got {self.percentile}")
        if self.max_scans < 0 or self.gif_stride < 1 or self.dilation_mm < 0:
            raise ValueError("gradcam max_scans and dilation_mm must be >= 0, gif_stride >= 1")


def select_scans(predictions: pd.DataFrame, max_scans: int, seed: int) -> pd.DataFrame:
    """The predictions' rows sorted by scan, or a seeded subset of ``max_scans`` of them."""
    rows = predictions.sort_values(["participant_id", "session_id"]).reset_index(drop=True)
    return rows.iloc[seeded_subset(seed, len(rows), max_scans)].reset_index(drop=True)


def _class_index(settings: GradCamSettings, true_label: int) -> int | None:
    if settings.target == "predicted":
        return None
    if settings.target == "true_class":
        return int(true_label)
    return CLASSES.index(settings.target)


def _scan_files(normalized_root: Path, pid: str, ses: str) -> tuple[Path, Path]:
    folder = Path(normalized_root) / pid / ses
    image = folder / f"{pid}_{ses}_desc-norm_T1w.nii.gz"
    tensor = folder / f"{pid}_{ses}.npy"
    for p in (image, tensor):
        if not p.is_file():
            raise FileNotFoundError(f"{p} is missing: the scan was not normalized")
    return image, tensor


def _truth_on_grid(
    row: pd.Series, base: Path, roots: tuple[Path, Path], shape: tuple[int, ...], affine: np.ndarray
) -> tuple[np.ndarray, str]:
    """The scan's ground-truth atrophy mask on the normalized grid, and how exact that is.

    BIDS grid -> t1-linear (its affine .mat) -> normalized grid (normalize's .mat), one
    nearest-neighbour resampling through the composed affine.
    """
    pid, ses = row["participant_id"], row["session_id"]
    t1_dir, norm_dir = (Path(r) / pid / ses for r in roots)
    t1_mat = t1_dir / f"{pid}_{ses}{_T1_LINEAR_MAT}"
    norm_mat = norm_dir / f"{pid}_{ses}{TRANSFORM_SUFFIX}"
    for p, fix in ((t1_mat, "t1_linear"), (norm_mat, "normalize")):
        if not p.is_file():
            raise FileNotFoundError(
                f"{p} is missing: rerun the {fix} rule (normalize saves its transform since "
                "the Grad-CAM stage was added)"
            )
    mask_img = nib.load(str(base / row["atrophy_mask"]))
    world = compose(read_ants_affine(t1_mat), read_ants_affine(norm_mat))
    mask = resample_to_grid(
        np.asarray(mask_img.dataobj).astype(np.uint8), mask_img.affine, shape, affine, world
    )
    if _t1_linear_backend(t1_dir) == "native":
        return mask, "exact (affines)"
    return mask, "approximate: Clinica's t1-linear is a SyN warp of which only the affine is saved"


def _t1_linear_backend(t1_dir: Path) -> str:
    """The backend t1-linear ran with (its status.json; ``native`` when not recorded)."""
    status = Path(t1_dir) / "status.json"
    return (
        str(json.loads(status.read_text()).get("backend", "native"))
        if status.exists()
        else "native"
    )


def _peak_mm(cam: np.ndarray, affine: np.ndarray) -> list[float]:
    ijk = np.unravel_index(int(np.argmax(cam)), cam.shape)
    return [round(float(v), 1) for v in (affine @ np.append(np.asarray(ijk, float), 1.0))[:3]]


def _write_pictures(
    scan: np.ndarray,
    shown: np.ndarray,
    affine: np.ndarray,
    box: tuple[slice, ...],
    hippocampus: np.ndarray,
    peak_mm: Sequence[float],
    out_dir: Path,
    stem: str,
    classes: tuple[str, str, str],
    threshold: str,
    gif_stride: int,
) -> None:
    """The three GIFs (through the crop, coloured by the predicted class) and the montage
    (through ``peak_mm``, hippocampus outlined) of one scan; ``classes`` is (true, predicted,
    explained)."""
    true_class, predicted, explained = classes
    scan_id = stem.replace("_", " ")
    title = f"{scan_id}\ntrue {true_class}, map of {explained}"
    for plane, axis in PLANES.items():
        span = crop_span(box, scan.shape, affine, axis)
        frames = gif_frames(scan, shown, affine, plane, predicted, title, gif_stride, span=span)
        write_gif(frames, out_dir / "scans" / f"{stem}_{plane}.gif")
    title = (
        f"{scan_id}  true {true_class}  predicted {predicted}  map of {explained}  ({threshold})"
    )
    three_plane_montage(
        scan, affine, out_dir / "montages" / f"{stem}.png", title, overlay=shown,
        mask_contour=hippocampus, contour_color="cyan", cut_mm=peak_mm, overlay_range=(0.0, 1.0),
    )  # fmt: skip


def _explain_scan(
    row: pd.Series,
    cam_engine: VolumeGradCAM,
    settings: GradCamSettings,
    atlas: tuple[np.ndarray, np.ndarray, np.ndarray],
    normalized_root: Path,
    out_dir: Path,
    crop: int,
) -> tuple[dict[str, Any], np.ndarray, np.ndarray, np.ndarray]:
    """Map, thresholded map, pictures and scores of one scan: (record, cam, scan, image affine)."""
    pid, ses = str(row["participant_id"]), str(row["session_id"])
    image, tensor = _scan_files(normalized_root, pid, ses)
    img = nib.load(str(image))
    labels, brain, atlas_affine = atlas
    if img.shape[:3] != labels.shape or not np.allclose(img.affine, atlas_affine, atol=1e-4):
        raise ValueError(
            f"{image} is not on the atlas grid ({labels.shape}); rebuild the atlas for this "
            "preprocessing (rule gradcam_atlas)"
        )
    volume = np.load(tensor, mmap_mode="r")
    box = crop_box(volume.shape, crop)
    result = cam_engine(
        np.asarray(volume[box], dtype=np.float32), _class_index(settings, row["true_label"])
    )
    cam = place_in_volume(result.cam, volume.shape)
    in_crop = np.zeros(volume.shape, bool)
    in_crop[box] = True
    regions = region_masks(labels)
    hippo = regions[HIPPOCAMPUS] if settings.restrict_to_hippocampus else None
    thr = threshold_map(cam, in_crop, hippo, settings.mode, settings.percentile, settings.k)  # type: ignore[arg-type]
    shown = np.where(thr.mask, cam, 0.0).astype(np.float32)
    scans_dir = out_dir / "scans"
    save_map(cam, image, scans_dir / f"{pid}_{ses}_gradcam.nii.gz")
    save_map(shown, image, scans_dir / f"{pid}_{ses}_gradcam-thr.nii.gz")
    scan = np.asarray(volume, dtype=np.float32)
    predicted = CLASSES[int(np.argmax(result.probabilities))]
    true_class = CLASSES[int(row["true_label"])]
    explained = CLASSES[result.class_idx]
    peak = _peak_mm(cam, img.affine)
    # the montage cuts through what it shows: the thresholded map's peak (inside the
    # hippocampus when restricted), the whole map's when nothing passed the threshold
    cut = _peak_mm(shown, img.affine) if shown.any() else peak
    _write_pictures(
        scan, shown, img.affine, box, regions[HIPPOCAMPUS], cut, out_dir, f"{pid}_{ses}",
        (true_class, predicted, explained), f"{settings.mode} threshold {thr.value:.2f}",
        settings.gif_stride,
    )  # fmt: skip
    domain = brain & in_crop
    record: dict[str, Any] = {
        "participant_id": pid,
        "session_id": ses,
        "true_class": true_class,
        "predicted_class": predicted,
        "predicted_class_saved": CLASSES[int(row["predicted_label"])],
        "explained_class": explained,
        **{
            f"prob_{c}": round(float(p), 6)
            for c, p in zip(CLASSES, result.probabilities, strict=True)
        },
        "cam_raw_max": result.raw_max,
        "threshold_mode": settings.mode,
        "threshold": round(thr.value, 6),
        "threshold_region": "hippocampus" if hippo is not None and not thr.fell_back else "crop",
        "hippocampus_fallback": thr.fell_back,
        "voxels_above_threshold": int(thr.mask.sum()),
        "peak_x_mm": peak[0],
        "peak_y_mm": peak[1],
        "peak_z_mm": peak[2],
        **region_shares(cam, regions, domain),
    }
    return record, cam, scan, img.affine


def _localize(
    record: dict[str, Any],
    truth: np.ndarray,
    cam: np.ndarray,
    domain: np.ndarray,
    settings: GradCamSettings,
    voxel: float,
) -> None:
    """Add the per-scan localization scores of every truth region to ``record``."""
    for name, values in TRUTH_REGIONS.items():
        scores = localization(cam, np.isin(truth, values), domain, settings.dilation_mm, voxel)
        for key, value in scores.items():
            record[f"truth_{name}_{key}"] = value


def _region_table(scans: pd.DataFrame) -> pd.DataFrame:
    """Mean share of map mass per region, per true and per predicted class (and all scans)."""
    rows = []
    names = [c[len("mass_") :] for c in scans.columns if c.startswith("mass_")]
    for grouping, column in (("true", "true_class"), ("predicted", "predicted_class")):
        for cls in ("all", *CLASSES):
            part = scans if cls == "all" else scans[scans[column] == cls]
            if cls != "all" and part.empty:
                continue
            for name in names:
                mass = part[f"mass_{name}"].astype(float)
                rows.append(
                    {
                        "grouping": grouping,
                        "class": cls,
                        "n_scans": int(mass.notna().sum()),
                        "region": name,
                        "mass_share_mean": round(float(mass.mean()), 4)
                        if mass.notna().any()
                        else math.nan,
                        "mass_share_sd": round(float(mass.std(ddof=1)), 4)
                        if mass.notna().sum() > 1
                        else math.nan,
                        "chance": round(float(part[f"volume_{name}"].astype(float).mean()), 4),
                    }
                )
    return pd.DataFrame(rows)


def _localization_table(scans: pd.DataFrame, settings: GradCamSettings, note: str) -> pd.DataFrame:
    """Localization scores per truth region, over all scans with a truth and per true class."""
    columns = ["region", "true_class", "n_scans", "n_empty_maps", "top_decile_share",
               "top_decile_chance", "top_decile_lift", "pointing_hits", "pointing_hit_rate",
               "pointing_chance", "dilation_mm", "transforms"]  # fmt: skip
    rows = []
    for name in TRUTH_REGIONS:
        prefix = f"truth_{name}_"
        share = f"{prefix}top_decile_share"
        if share not in scans.columns:
            continue
        for cls in ("all", *CLASSES):
            part = scans if cls == "all" else scans[scans["true_class"] == cls]
            part = part[part[share].astype(float).notna()]
            if part.empty:
                continue
            top = float(part[share].astype(float).mean())
            chance = float(part[f"{prefix}chance"].astype(float).mean())
            hits = part[f"{prefix}pointing_hit"].astype(float)
            rows.append(
                {
                    "region": name,
                    "true_class": cls,
                    "n_scans": len(part),
                    "n_empty_maps": int(part[f"{prefix}empty_map"].astype(float).sum()),
                    "top_decile_share": round(top, 4),
                    "top_decile_chance": round(chance, 4),
                    "top_decile_lift": round(top / chance, 3) if chance > 0 else math.nan,
                    "pointing_hits": int(hits.sum()),
                    "pointing_hit_rate": round(float(hits.mean()), 4),
                    "pointing_chance": round(chance, 4),
                    "dilation_mm": settings.dilation_mm,
                    "transforms": note,
                }
            )
    if not rows:
        rows.append({"region": "any", "true_class": "all", "n_scans": 0, "transforms": note})
    return pd.DataFrame(rows, columns=columns)


def _left_hippocampus_mm(hippocampus: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """World centroid of the left hippocampus (x < 0): the group montage cuts through it (the
    centroid of both would put the sagittal slice on the midline)."""
    ijk = np.argwhere(hippocampus)
    world = (affine[:3, :3] @ ijk.T + affine[:3, 3:4]).T
    left = world[world[:, 0] < 0]
    return (left if len(left) else world).mean(axis=0)


class _GroupMeans:
    """Running sums of the maps per true and per predicted class, and of the scans (the
    montage's background): memory for one volume per group, whatever the number of scans."""

    def __init__(self) -> None:
        self.sums: dict[str, np.ndarray] = {}
        self.counts: dict[str, int] = {}
        self.background: np.ndarray | None = None
        self.n = 0

    def add(self, cam: np.ndarray, scan: np.ndarray, true_class: str, predicted: str) -> None:
        """Count one scan's map in its true and its predicted class."""
        for key in (f"true-{true_class}", f"pred-{predicted}"):
            if key not in self.sums:
                self.sums[key] = np.zeros(cam.shape, np.float64)
                self.counts[key] = 0
            self.sums[key] += cam
            self.counts[key] += 1
        self.background = scan.astype(np.float64) + (
            0.0 if self.background is None else self.background
        )
        self.n += 1

    def means(self) -> dict[str, np.ndarray]:
        """Mean map per group, true classes first, each in CLASSES order."""
        keys = [f"{g}-{c}" for g in ("true", "pred") for c in CLASSES]
        return {
            k: (self.sums[k] / self.counts[k]).astype(np.float32) for k in keys if k in self.sums
        }


def _group_maps(
    groups: _GroupMeans, like: Path, atlas_labels: np.ndarray, affine: np.ndarray,
    out_dir: Path, run: str,
) -> None:  # fmt: skip
    """Mean map per true and per predicted class (NIfTI) and one montage of them all."""
    if groups.background is None:
        raise ValueError("no scans were explained")
    group_dir = out_dir / "group"
    group_dir.mkdir(parents=True, exist_ok=True)
    maps = groups.means()
    for key, mean in maps.items():
        save_map(mean, like, group_dir / f"mean_{key}.nii.gz")
    labelled = {k.replace("-", " "): v for k, v in maps.items()}
    counts = {k.replace("-", " "): groups.counts[k] for k in maps}
    cut = _left_hippocampus_mm(atlas_labels == 1, affine)
    group_montage(
        groups.background / groups.n, labelled, counts, affine, cut, out_dir / "group_montage.png",
        f"{run}: mean Grad-CAM per true and predicted class (cut through the hippocampus)",
    )  # fmt: skip


def run_gradcam(
    model_path: Path,
    predictions: Path,
    normalized_root: Path,
    atlas_dir: Path,
    out_dir: Path,
    settings: GradCamSettings,
    ground_truth: Path | None = None,
    t1_linear_root: Path | None = None,
    threads: int = 1,
) -> pd.DataFrame:
    """Explain the run's ``settings.split`` scans (see the module docstring); returns scans.tsv.

    Args:
        ground_truth: the synthetic cohort's ``ground_truth/cohort.tsv`` (its masks are read
            relative to the folder above it); None for real data (no localization scores).
        t1_linear_root: where t1-linear outputs live (needed with ``ground_truth``).
    """
    out_dir = Path(out_dir)
    torch.set_num_threads(max(1, threads))
    model, ckpt = load_model(model_path)
    crop = int(model.config.input_size)
    layer = None if settings.layer == "last_conv" else settings.layer
    engine = VolumeGradCAM(model, layer)
    atlas = load_atlas(atlas_dir)
    preds = pd.read_csv(predictions, sep="\t", dtype={"participant_id": str, "session_id": str})
    chosen = select_scans(preds, settings.max_scans, settings.seed)
    if chosen.empty:
        raise ValueError(f"{predictions}: no scans to explain")
    truth_rows: dict[tuple[str, str], pd.Series] = {}
    if ground_truth is not None:
        if t1_linear_root is None:
            raise ValueError("ground truth given without t1_linear_root (its transforms)")
        cohort = pd.read_csv(ground_truth, sep="\t", dtype=str)
        truth_rows = {(r.participant_id, r.session_id): r for _, r in cohort.iterrows()}
    voxel = float(np.linalg.norm(atlas[2][:3, 0]))
    records, notes, groups = [], set(), _GroupMeans()
    like = None
    t0 = time.perf_counter()
    for _, row in chosen.iterrows():
        record, cam, scan, affine = _explain_scan(
            row, engine, settings, atlas, normalized_root, out_dir, crop
        )
        key = (record["participant_id"], record["session_id"])
        if key in truth_rows:
            roots = (Path(t1_linear_root), Path(normalized_root))
            base = Path(ground_truth).parents[1]
            truth, how = _truth_on_grid(truth_rows[key], base, roots, cam.shape, affine)
            notes.add(how)
            in_crop = np.zeros(cam.shape, bool)
            in_crop[crop_box(cam.shape, crop)] = True
            _localize(record, truth, cam, atlas[1] & in_crop, settings, voxel)
        records.append(record)
        groups.add(cam, scan, record["true_class"], record["predicted_class"])
        like = normalized_root / key[0] / key[1] / f"{key[0]}_{key[1]}_desc-norm_T1w.nii.gz"
        log.info(
            "%s %s: explained %s (fallback %s)",
            *key,
            record["explained_class"],
            record["hippocampus_fallback"],
        )
    scans = pd.DataFrame(records)
    write_tsv(scans, out_dir / "scans.tsv")
    write_tsv(_region_table(scans), out_dir / "regions.tsv")
    note = "; ".join(sorted(notes)) if notes else "no ground truth (not the synthetic cohort)"
    write_tsv(_localization_table(scans, settings, note), out_dir / "localization.tsv")
    _group_maps(groups, like, atlas[0], atlas[2], out_dir, Path(model_path).parent.name)
    (out_dir / "settings.json").write_text(
        json.dumps({**asdict(settings), "layer_name": engine.layer, "model": str(model_path),
                    "model_epoch": ckpt.get("epoch"), "n_scans": len(scans),
                    "seconds": round(time.perf_counter() - t0, 1)}, indent=2) + "\n"
    )  # fmt: skip
    return scans
