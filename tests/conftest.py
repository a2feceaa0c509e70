"""Shared fixtures: small BIDS trees and label tables built in tmp folders."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]


def write_bids(root: Path, subjects: dict[str, dict], with_images: bool = True) -> Path:
    """Write a BIDS tree. ``subjects`` maps participant_id to
    ``{"sex": "M", "age_bl": 70, "diagnosis_sc": "CN", "sessions": {ses: dx or None},
    "sessions_tsv": True, "images": [ses, ...] (default: all sessions)}``."""
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    img = nib.Nifti1Image(np.zeros((4, 4, 4), np.int16), np.eye(4))
    for pid, spec in subjects.items():
        rows.append(
            {
                "participant_id": pid,
                "sex": spec.get("sex", "F"),
                "age_bl": spec.get("age_bl", 70.0),
                "diagnosis_sc": spec.get("diagnosis_sc", ""),
            }
        )
        sessions = spec["sessions"]
        for ses in spec.get("images", list(sessions)):
            anat = root / pid / ses / "anat"
            anat.mkdir(parents=True, exist_ok=True)
            if with_images:
                nib.save(img, anat / f"{pid}_{ses}_T1w.nii.gz")
        if spec.get("sessions_tsv", True):
            df = pd.DataFrame(
                {"session_id": list(sessions), "diagnosis": [d or "" for d in sessions.values()]}
            )
            df.to_csv(root / pid / f"{pid}_sessions.tsv", sep="\t", index=False)
    pd.DataFrame(rows).to_csv(root / "participants.tsv", sep="\t", index=False)
    return root


def make_labels(n_per_class: int = 10, visits: int = 2, seed: int = 0) -> pd.DataFrame:
    """A label table with ``n_per_class`` subjects per class, each with ``visits`` scans."""
    rng = np.random.default_rng(seed)
    rows = []
    for label, dx in enumerate(("CN", "MCI", "AD")):
        for i in range(n_per_class):
            pid = f"sub-ADNI{label}{i:02d}S{1000 + i}"
            age = float(rng.uniform(60, 85))
            sex = "M" if rng.random() < 0.5 else "F"
            for v in range(visits):
                rows.append(
                    {
                        "participant_id": pid,
                        "session_id": f"ses-M{6 * v:03d}",
                        "diagnosis": dx,
                        "label": label,
                        "age": round(age + v / 2, 2),
                        "sex": sex,
                        "raw_diagnosis": dx,
                        "image_path": f"/x/{pid}_{v}.nii.gz",
                    }
                )
    return pd.DataFrame(rows)


@pytest.fixture
def labels_table() -> pd.DataFrame:
    return make_labels()


def resample_to_grid(
    img: nib.Nifti1Image, affine: np.ndarray, shape: tuple[int, int, int], interpolation: str
) -> np.ndarray:
    """``img`` (e.g. nilearn's bundled MNI152) resampled onto a test grid, as float32."""
    from nilearn.image import resample_img

    out = resample_img(
        img,
        target_affine=affine,
        target_shape=shape,
        interpolation=interpolation,
        force_resample=True,
        copy_header=True,
    )
    return np.asarray(out.get_fdata(), dtype=np.float32)


@pytest.fixture(scope="session")
def workflow_run(tmp_path_factory) -> Path:
    """The whole DAG run once on the tiny cohort of ``test_workflow.tiny_config`` (minutes).

    Session-scoped so that the workflow, rerun, scaling and Slurm tests share one run. Tests that
    change its config.yaml restore it; tests that write outputs work on a copy.
    """
    from test_workflow import snakemake, tiny_config

    workdir = tmp_path_factory.mktemp("workflow")
    cfg = tiny_config(workdir)
    snakemake(workdir, "--configfile", str(cfg))
    return workdir
