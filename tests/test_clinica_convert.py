"""The synthetic ADNI download converts with the REAL ``clinica convert adni-to-bids -m T1``.

``test_real_clinica_conversion`` (slow, ~25 s on 2 cores: ~10 s to synthesise 6 scans from the
Colin27 template, ~3 s for Clinica itself) checks the BIDS output scan by scan against the
ground truth: one T1w per scan, the per-visit diagnosis in sessions.tsv, the DICOM scan's
geometry after dcm2niix, and that the atrophy masks overlay the BIDS images.

``test_dicom_round_trip_oblique`` is fast and needs only dcm2niix: it checks the DICOM writer on
an oblique, flipped grid, which brain.py never produces but a future generator might.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from earlyad.adni import check_adni_download
from earlyad.synth.cohort import CohortSpec, _write_dicom_series, clinica_bids_space

VENV_BIN = Path(sys.executable).parent


def _tool(name: str) -> str | None:
    """A tool from this interpreter's venv first (where pip puts clinica/dcm2niix), else PATH."""
    local = VENV_BIN / name
    return str(local) if local.exists() else shutil.which(name)


def _env(log_dir: Path) -> dict[str, str]:
    """How to run Clinica offline and tidy (docs/adni-download.md, "Running Clinica").

    PATH has the venv's bin first, so Clinica finds the pip-installed dcm2niix;
    CLINICA_LOGGING_DIR keeps nipype's ``pypeline.log`` out of the working directory;
    NIPYPE_NO_ET disables nipype's online version check (etelemetry).
    """
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["CLINICA_LOGGING_DIR"] = str(log_dir)
    env["NIPYPE_NO_ET"] = "1"
    return env


def _dcm2niix(folder: Path, out: Path) -> nib.Nifti1Image:
    """Run dcm2niix exactly as Clinica does for T1 (uncompressed, no sidecar)."""
    exe = _tool("dcm2niix")
    if exe is None:
        pytest.skip("dcm2niix not installed")
    out.mkdir(parents=True, exist_ok=True)
    cmd = [exe, "-w", "0", "-f", "img", "-o", str(out), "-z", "n", "-b", "n", str(folder)]
    subprocess.run(cmd, check=True, capture_output=True)
    (nii,) = out.glob("img*.nii")
    return nib.load(nii)


def _assert_same_image(a: nib.Nifti1Image, b: nib.Nifti1Image, atol: float = 0.0) -> None:
    """Same voxels at the same world positions (after reorienting both to RAS), 1e-3 mm."""
    ca, cb = nib.as_closest_canonical(a), nib.as_closest_canonical(b)
    assert ca.shape == cb.shape
    np.testing.assert_allclose(ca.affine, cb.affine, atol=1e-3)
    np.testing.assert_allclose(ca.get_fdata(), cb.get_fdata(), atol=atol)


def test_dicom_round_trip_oblique(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    data = rng.integers(-500, 3000, (11, 13, 9)).astype(np.int16)
    ang = np.deg2rad(17.0)
    rot = np.array(
        [[np.cos(ang), 0, np.sin(ang)], [0, 1, 0], [-np.sin(ang), 0, np.cos(ang)]]
    ) @ np.array([[1, 0, 0], [0, np.cos(0.2), -np.sin(0.2)], [0, np.sin(0.2), np.cos(0.2)]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([-1.2, 1.0, 1.5])  # x flipped (LAS-like), anisotropic
    affine[:3, 3] = [31.7, -12.25, 8.5]
    img = nib.Nifti1Image(data, affine)
    folder = tmp_path / "I1"
    _write_dicom_series(
        img,
        folder,
        ptid="011_S_0002",
        series_id=7,
        study_id=3,
        image_uid=1,
        sex="Female",
        age=71.0,
        when=pd.Timestamp("2006-05-04 10:11:12").to_pydatetime(),
        stamp="20060504101112000",
    )
    files = sorted(folder.glob("*.dcm"))
    assert len(files) == 9 and all(f.name.endswith("_S7_I1.dcm") for f in files)
    _assert_same_image(_dcm2niix(folder, tmp_path / "out"), img)


@pytest.mark.slow
def test_real_clinica_conversion(tmp_path: Path) -> None:
    clinica = _tool("clinica")
    if clinica is None or _tool("dcm2niix") is None:
        pytest.skip("clinica and dcm2niix are needed (pip install clinica==0.12.0 dcm2niix)")
    from earlyad.synth import brain

    if not Path(brain.DEFAULT_TEMPLATE_DIR).is_dir():
        pytest.skip(f"brain template missing: {brain.DEFAULT_TEMPLATE_DIR}")
    from earlyad.synth.cohort import write_synthetic_adni

    syn = tmp_path / "syn"
    spec = CohortSpec(n_subjects=4, mean_visits=1.75, n_dicom=1, seed=8)
    t0 = time.perf_counter()
    truth = write_synthetic_adni(syn, spec, progress=False)
    t_synth = time.perf_counter() - t0
    assert 5 <= len(truth) <= 8 and (truth.format == "dicom").sum() == 1
    report = check_adni_download(syn / "ADNI", syn / "clinical")
    assert report.n_images == len(truth)

    bids = tmp_path / "BIDS"
    cmd = [clinica, "convert", "adni-to-bids", str(syn / "ADNI"), str(syn / "clinical")]
    cmd += [str(bids), "-m", "T1", "-np", "1"]
    t0 = time.perf_counter()
    proc = subprocess.run(
        cmd, capture_output=True, text=True, env=_env(tmp_path), cwd=tmp_path, timeout=900
    )
    t_clinica = time.perf_counter() - t0
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "WARNING" not in log, log[-4000:]
    print(f"synthesis {t_synth:.1f} s, clinica convert {t_clinica:.1f} s for {len(truth)} scans")

    # One T1w per expected scan, nothing else.
    found = sorted(p.relative_to(bids).as_posix() for p in bids.glob("sub-*/ses-*/anat/*_T1w*"))
    expected = sorted(
        f"{r.participant_id}/{r.session_id}/anat/{r.participant_id}_{r.session_id}_T1w.nii.gz"
        for r in truth.itertuples()
    )
    assert found == expected

    # participants.tsv: one row per subject, Clinica's names and spellings.
    participants = pd.read_csv(bids / "participants.tsv", sep="\t", dtype=str)
    assert sorted(participants.participant_id) == sorted(set(truth.participant_id))
    assert {"sex", "age_bl", "diagnosis_sc", "alternative_id_1"} <= set(participants.columns)
    bl = truth[truth.viscode == "bl"].set_index("participant_id")
    for row in participants.itertuples():
        assert row.sex == bl.loc[row.participant_id, "sex"]
        assert row.alternative_id_1 == bl.loc[row.participant_id, "ptid"]
        assert abs(float(row.age_bl) - bl.loc[row.participant_id, "age"]) < 0.06

    # sessions.tsv: diagnosis at each visit (Clinica spells CN/MCI/AD) and age at the visit.
    for pid, visits in truth.groupby("participant_id"):
        sessions = pd.read_csv(bids / pid / f"{pid}_sessions.tsv", sep="\t", dtype=str)
        sessions = sessions.set_index("session_id")
        for row in visits.itertuples():
            assert sessions.loc[row.session_id, "diagnosis"] == row.diagnosis, (pid, row)
            assert abs(float(sessions.loc[row.session_id, "age"]) - row.age) < 0.06

    # Images: what Clinica wrote is our array, re-centred (its center_nifti_origin) and stored
    # as int16 with a scale factor, so equal up to half a quantisation step.
    for row in truth.itertuples():
        pid, sid = row.participant_id, row.session_id
        out = nib.load(bids / pid / sid / "anat" / f"{pid}_{sid}_T1w.nii.gz")
        if row.format == "dicom":
            source = nib.load(syn / row.dicom_source)
            # dcm2niix reconstructs the geometry we wrote in the DICOM headers...
            _assert_same_image(_dcm2niix(syn / row.path, tmp_path / "dcm" / sid), source)
        else:
            source = nib.load(syn / row.path)
        # ...and Clinica's BIDS image has the expected (re-centred) grid and values.
        want = clinica_bids_space(source)
        assert out.shape == want.shape
        np.testing.assert_allclose(out.affine, want.affine, atol=1e-3)
        step = float(out.dataobj.slope) if out.dataobj.slope else 1.0
        np.testing.assert_allclose(out.get_fdata(), want.get_fdata(), atol=step / 2 + 1e-6)
        # The ground-truth atrophy mask overlays the BIDS T1w voxel for voxel.
        mask = nib.load(syn / row.atrophy_mask)
        assert mask.shape == out.shape
        np.testing.assert_allclose(mask.affine, out.affine, atol=1e-3)
