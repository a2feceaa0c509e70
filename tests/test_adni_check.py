"""The ADNI pre-check names every missing piece, and passes the synthetic download.

Fast: the synthetic cohort is written with a tiny stand-in for ``earlyad.synth.brain`` (a few
kB per image), because these tests are about the CSVs and the file layout, not the anatomy.
Where Clinica is installed, the check's T1 selection is compared with Clinica's own.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from earlyad.adni import AdniDownloadError, check_adni_download, run_check
from earlyad.synth import cohort as cohort_mod
from earlyad.synth.cohort import CohortSpec, write_synthetic_adni


@dataclass
class _Scan:
    image: nib.Nifti1Image
    atrophy: nib.Nifti1Image
    hippocampus_volume_ratio: float
    ventricle_volume_ratio: float
    params: dict[str, float]


def _fake_synthesize(ref, severity, rng, *, hippocampal_shrink=0.35, ventricle_growth=0.6):
    """A 12x14x10 noise volume on an axis-aligned grid, like brain.py's scanner grids."""
    data = rng.normal(800, 80, (12, 14, 10)).astype(np.int16)
    affine = np.diag([1.5, 1.5, 1.5, 1.0])
    affine[:3, 3] = rng.uniform(-20, 20, 3)
    atrophy = (data > 900).astype(np.uint8)
    return _Scan(
        nib.Nifti1Image(data, affine),
        nib.Nifti1Image(atrophy, affine),
        1.0 - hippocampal_shrink * severity,
        1.0 + ventricle_growth * severity,
        {"severity": float(severity)},
    )


FAKE_BRAIN = SimpleNamespace(
    load_reference=lambda voxel_size=1.5: None, synthesize_scan=_fake_synthesize
)


@pytest.fixture
def fake_brain(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cohort_mod, "_brain_api", lambda: FAKE_BRAIN)


@pytest.fixture
def download(tmp_path: Path, fake_brain: None) -> tuple[Path, Path, pd.DataFrame]:
    """A small synthetic download: (ADNI dir, clinical dir, ground truth)."""
    spec = CohortSpec(n_subjects=6, mean_visits=2.0, n_dicom=1, seed=3)
    truth = write_synthetic_adni(tmp_path / "syn", spec, progress=False)
    return tmp_path / "syn" / "ADNI", tmp_path / "syn" / "clinical", truth


def _edit_csv(path: Path, fn) -> None:
    frame = pd.read_csv(path)
    fn(frame).to_csv(path, index=False)


def _problems(adni: Path, clinical: Path) -> list[str]:
    with pytest.raises(AdniDownloadError) as err:
        check_adni_download(adni, clinical)
    assert isinstance(err.value, ValueError)
    return err.value.problems


def test_good_download_passes(download: tuple[Path, Path, pd.DataFrame]) -> None:
    adni, clinical, truth = download
    report = check_adni_download(adni, clinical)
    assert report.n_images == len(truth)
    expected = set(zip(truth.participant_id, truth.session_id, strict=True))
    got = set(zip(report.images.participant_id, report.images.session_id, strict=True))
    assert got == expected
    assert set(report.images.Image_ID.astype(int)) == set(truth.image_uid)
    assert int(report.images.Is_Dicom.sum()) == 1
    assert "OK" in str(report)
    buf = io.StringIO()
    assert run_check(adni, clinical, stream=buf) == 0


def test_selection_matches_clinica(download: tuple[Path, Path, pd.DataFrame], tmp_path: Path):
    """Same images, same DICOM/NIfTI decision and path as Clinica's own T1 path finder."""
    t1 = pytest.importorskip("clinica.converters.adni_to_bids.modality_converters._t1")
    adni, clinical, _ = download
    # Make selection non-trivial: a processed N3/Scaled image Clinica must prefer (on disk too).
    meta_path = clinical / "MPRAGEMETA.csv"
    meta = pd.read_csv(meta_path)
    first = meta[meta.Sequence == "MPRAGE"].iloc[0]
    processed = first.copy()
    processed["Sequence"] = "MPR; GradWarp; B1 Correction; N3; Scaled"
    processed["Orig/Proc"] = "Processed"
    processed["ImageUID"] = 999001
    pd.concat([meta, processed.to_frame().T]).to_csv(meta_path, index=False)
    src = next((adni / first.SubjectID).rglob(f"*_I{first.ImageUID}.nii"))
    dst = adni / first.SubjectID / "MPR__GradWarp__B1_Correction__N3__Scaled" / "x" / "S1"
    dst.mkdir(parents=True)
    (dst / f"ADNI_{first.SubjectID}_MR_MPR__GradWarp__N3__Scaled_Br_1_S1_I999001.nii").write_bytes(
        src.read_bytes()
    )

    report = check_adni_download(adni, clinical)
    conv = tmp_path / "conv"
    conv.mkdir()
    theirs = t1._compute_t1_paths(adni, clinical, report.subjects, conv)
    ours = report.images
    key = ["Subject_ID", "VISCODE"]
    cols = ["Image_ID", "Series_ID", "Is_Dicom", "Path", "Original"]
    merged = ours[key + cols].merge(theirs[key + cols], on=key, suffixes=("", "_clinica"))
    assert len(merged) == len(ours) == len(theirs)
    for col in cols:
        assert (merged[col].astype(str) == merged[f"{col}_clinica"].astype(str)).all(), col
    assert "999001" in set(ours.Image_ID)


def test_missing_csv_is_named(download: tuple[Path, Path, pd.DataFrame]) -> None:
    adni, clinical, _ = download
    (clinical / "MRIQUALITY.csv").unlink()
    (problem,) = _problems(adni, clinical)
    assert "MRIQUALITY.csv is missing" in problem
    assert "LONI" in problem


def test_missing_columns_are_named(download: tuple[Path, Path, pd.DataFrame]) -> None:
    adni, clinical, _ = download
    _edit_csv(clinical / "ADNIMERGE.csv", lambda d: d.drop(columns=["DX", "MOCA_bl"]))
    _edit_csv(clinical / "MPRAGEMETA.csv", lambda d: d.drop(columns=["ImageUID"]))
    problems = _problems(adni, clinical)
    text = "\n".join(problems)
    assert len(problems) == 2
    assert "ADNIMERGE.csv lacks column(s) 'DX'" in text and "'MOCA_bl'" in text
    assert "MPRAGEMETA.csv lacks column(s) 'ImageUID'" in text


def test_missing_image_is_named(download: tuple[Path, Path, pd.DataFrame]) -> None:
    adni, clinical, truth = download
    row = truth[truth.format == "nifti"].iloc[-1]
    (adni.parent / row.path).unlink()
    (problem,) = _problems(adni, clinical)
    assert row.ptid in problem and f"I{row.image_uid}" in problem
    assert row.viscode in problem and "download image ID" in problem


def test_missing_dicom_series_is_named(download: tuple[Path, Path, pd.DataFrame]) -> None:
    adni, clinical, truth = download
    row = truth[truth.format == "dicom"].iloc[0]
    for f in (adni.parent / row.path).iterdir():
        f.unlink()
    (problem,) = _problems(adni, clinical)
    assert row.ptid in problem and f"I{row.image_uid}" in problem


def test_all_problems_reported_together(download: tuple[Path, Path, pd.DataFrame]) -> None:
    adni, clinical, truth = download
    (clinical / "APOERES.csv").unlink()
    _edit_csv(clinical / "ADNIMERGE.csv", lambda d: d.drop(columns=["MOCA_bl"]))
    row = truth[truth.format == "nifti"].iloc[0]
    (adni.parent / row.path).unlink()
    problems = _problems(adni, clinical)
    assert len(problems) == 3
    text = "\n".join(problems)
    assert "APOERES.csv is missing" in text
    assert "'MOCA_bl'" in text
    assert f"I{row.image_uid}" in text


def test_processed_image_not_downloaded(download: tuple[Path, Path, pd.DataFrame]) -> None:
    """MPRAGEMETA listing an N3/Scaled image: Clinica picks it, so it must be on disk."""
    adni, clinical, _ = download
    meta = pd.read_csv(clinical / "MPRAGEMETA.csv")
    extra = meta.iloc[[0]].copy()
    extra["Sequence"] = "MPR-R; GradWarp; B1 Correction; N3; Scaled"
    extra["Orig/Proc"] = "Processed"
    extra["ImageUID"] = 424242
    pd.concat([meta, extra]).to_csv(clinical / "MPRAGEMETA.csv", index=False)
    (problem,) = _problems(adni, clinical)
    assert "I424242" in problem and "processed" in problem and "Scaled" in problem


def test_subject_without_selectable_t1(download: tuple[Path, Path, pd.DataFrame]) -> None:
    """A subject whose every series failed MRIQUALITY would vanish from BIDS: reported."""
    adni, clinical, truth = download
    ptid, rid = truth.ptid.iloc[0], truth.rid.iloc[0]
    _edit_csv(
        clinical / "MRIQUALITY.csv", lambda d: d.assign(PASS=np.where(d.RID == rid, 0, d.PASS))
    )
    (problem,) = _problems(adni, clinical)
    assert ptid in problem and "no T1" in problem


def test_failed_qc_falls_back_to_repeat(download: tuple[Path, Path, pd.DataFrame]) -> None:
    """Main series failing QC: Clinica takes the listed 'MPRAGE Repeat', not downloaded here."""
    adni, clinical, truth = download
    meta = pd.read_csv(clinical / "MPRAGEMETA.csv")
    repeat = meta[meta.Sequence == "MPRAGE Repeat"].iloc[0]
    main = meta[(meta.SubjectID == repeat.SubjectID) & (meta.Visit == repeat.Visit)]
    main_series = f"S{main[main.Sequence == 'MPRAGE'].SeriesID.iloc[0]}"
    _edit_csv(
        clinical / "MRIQUALITY.csv",
        lambda d: d.assign(PASS=np.where(d.LONIUID == main_series, 0, d.PASS)),
    )
    (problem,) = _problems(adni, clinical)
    assert f"I{repeat.ImageUID}" in problem and "MPRAGE Repeat" in problem


def test_bad_values_are_reported(download: tuple[Path, Path, pd.DataFrame]) -> None:
    adni, clinical, _ = download
    _edit_csv(
        clinical / "ADNIMERGE.csv",
        lambda d: d.assign(DX=d.DX.replace("Dementia", "AD").replace("CN", "NL")),
    )
    (problem,) = _problems(adni, clinical)
    assert "DX" in problem and "NL" in problem


def test_csv_lookup_follows_clinica(download: tuple[Path, Path, pd.DataFrame]) -> None:
    """Dated names are accepted, DXSUM_PDXCONV is the fallback, duplicates are refused."""
    adni, clinical, _ = download
    (clinical / "ADNIMERGE.csv").rename(clinical / "ADNIMERGE_12Mar2024.csv")
    (clinical / "DXSUM_PDXCONV_ADNIALL.csv").rename(clinical / "DXSUM_PDXCONV.csv")
    report = check_adni_download(adni, clinical)
    assert report.csv_files["ADNIMERGE"].name == "ADNIMERGE_12Mar2024.csv"
    (clinical / "old").mkdir()
    (clinical / "old" / "MPRAGEMETA.csv").write_text((clinical / "MPRAGEMETA.csv").read_text())
    (problem,) = _problems(adni, clinical)
    assert "2 files" in problem and "MPRAGEMETA" in problem


def test_orphan_subject_folder(download: tuple[Path, Path, pd.DataFrame]) -> None:
    adni, clinical, _ = download
    (adni / "999_S_9999").mkdir()
    (adni / "notes").mkdir()
    (problem,) = _problems(adni, clinical)
    assert "999_S_9999" in problem and "ADNIMERGE" in problem
    buf = io.StringIO()
    assert run_check(adni, clinical, stream=buf) == 1
    assert "999_S_9999" in buf.getvalue()


def test_missing_directories(tmp_path: Path) -> None:
    problems = _problems(tmp_path / "nope", tmp_path / "nada")
    assert len(problems) == 2


# --------------------------------------------------------------------------- cohort sanity


def test_cohort_ground_truth_is_consistent(tmp_path: Path, fake_brain: None) -> None:
    spec = CohortSpec(n_subjects=60, seed=11)
    truth = write_synthetic_adni(tmp_path / "c", spec, progress=False)
    assert 70 <= len(truth) <= 110  # about 1.5 visits per subject
    assert truth.participant_id.nunique() == 60
    assert set(truth.diagnosis) == {"CN", "MCI", "AD"}
    order = {"CN": 0, "MCI": 1, "AD": 2}
    for _, visits in truth.groupby("ptid"):
        codes = [order[d] for d in visits.diagnosis]
        assert codes == sorted(codes), "diagnoses never go backwards"
        assert list(visits.viscode) == ["bl", "m06", "m12", "m24", "m36"][: len(visits)]
    bl = truth[truth.viscode == "bl"]
    assert bl.age.between(55, 90).all() and truth.age.max() <= 90
    assert bl[bl.diagnosis == "AD"].age.mean() > bl[bl.diagnosis == "CN"].age.mean()
    assert truth.severity.between(0, 1).all()
    assert (
        truth.groupby("diagnosis").severity.mean().reindex(["CN", "MCI", "AD"]).diff()[1:] > 0
    ).all()
    assert (truth.format == "dicom").sum() == 3
    for _, row in truth.iterrows():
        assert (tmp_path / "c" / row.atrophy_mask).exists()
    merge = pd.read_csv(tmp_path / "c" / "clinical" / "ADNIMERGE.csv")
    dx = dict(zip(zip(merge.PTID, merge.VISCODE, strict=True), merge.DX, strict=True))
    spelled = {"CN": "CN", "MCI": "MCI", "AD": "Dementia"}
    assert all(dx[(r.ptid, r.viscode)] == spelled[r.diagnosis] for r in truth.itertuples())
    again = write_synthetic_adni(tmp_path / "d", spec, progress=False)
    pd.testing.assert_frame_equal(
        truth.drop(columns=["path", "atrophy_mask", "dicom_source"]),
        again.drop(columns=["path", "atrophy_mask", "dicom_source"]),
    )


def test_cohort_refuses_non_empty_dir(tmp_path: Path, fake_brain: None) -> None:
    (tmp_path / "x" / "clinical").mkdir(parents=True)
    (tmp_path / "x" / "clinical" / "ADNIMERGE.csv").write_text("old")
    with pytest.raises(FileExistsError):
        write_synthetic_adni(tmp_path / "x", CohortSpec(n_subjects=2), progress=False)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n_subjects": 0},
        {"mean_visits": 0.5},
        {"class_fractions": (0.5, 0.5, 0.5)},
        {"conversion_prob": 2.0},
        {"n_dicom": -1},
    ],
)
def test_cohort_spec_rejects_bad_values(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        CohortSpec(**kwargs)


def _to_phase(clinical: Path, phase: str, qc: str) -> None:
    """Rewrite the synthetic ADNI1 CSVs as another phase, with a Mayo QC scenario.

    qc: "selected" (main series flagged), "quality" (no flag, the repeat has better quality),
    "rejected" (every 3 T series rejected: Clinica 0.12 crashes), "renamed" (one visit name
    LONI spells differently, so Clinica falls back to matching by date).
    """
    from earlyad.adni import _visit_name

    merge = pd.read_csv(clinical / "ADNIMERGE.csv")
    merge["COLPROT"] = merge["ORIGPROT"] = phase
    merge.to_csv(clinical / "ADNIMERGE.csv", index=False)
    names = {
        adni1: _visit_name(phase, v)
        for v in ("bl", "m06", "m12", "m24", "m36")
        for adni1 in [cohort_mod.adni1_visit_name(v)]
    }
    meta = pd.read_csv(clinical / "MPRAGEMETA.csv")
    meta["Visit"] = meta.Visit.map(names)
    if phase != "ADNI1":
        meta["MagStrength"] = 3.0
    if phase == "ADNI3":
        meta["Sequence"] = meta.Sequence.str.replace("MPRAGE", "Accelerated Sagittal MPRAGE")
    if qc == "renamed":
        meta.loc[meta.Visit == names["ADNI1/GO Month 6"], "Visit"] = "ADNI1/GO Month 7"
    meta.to_csv(clinical / "MPRAGEMETA.csv", index=False)
    mayo = pd.read_csv(clinical / "MAYOADIRL_MRI_IMAGEQC_05_07_15.csv")
    if qc == "quality":
        mayo["series_selected"] = 0
        mayo["series_quality"] = np.where(mayo.series_quality == 1, 3, 1)
    elif qc == "rejected":
        mayo["series_selected"] = 0
        mayo["series_quality"] = 4
    mayo.to_csv(clinical / "MAYOADIRL_MRI_IMAGEQC_05_07_15.csv", index=False)


@pytest.mark.parametrize(
    ("phase", "qc"),
    [
        ("ADNI1", "renamed"),
        ("ADNIGO", "selected"),
        ("ADNI2", "selected"),
        ("ADNI2", "quality"),
        ("ADNI3", "selected"),
        ("ADNI3", "quality"),
        ("ADNI3", "rejected"),
    ],
)
def test_selection_matches_clinica_across_phases(
    download: tuple[Path, Path, pd.DataFrame], tmp_path: Path, phase: str, qc: str
) -> None:
    """Visit naming, 3 T preference and Mayo QC handled as Clinica 0.12 does, per phase."""
    t1 = pytest.importorskip("clinica.converters.adni_to_bids.modality_converters._t1")
    from earlyad.adni import select_t1_scans

    adni, clinical, truth = download
    _to_phase(clinical, phase, qc)
    keys = ["ADNIMERGE", "MPRAGEMETA", "MRIQUALITY", "MAYOADIRL_MRI_IMAGEQC_05_07_15"]
    frames = {k: pd.read_csv(next(clinical.glob(f"{k}.csv"))) for k in keys}
    subjects = sorted(set(truth.ptid))
    ours, crashes = select_t1_scans(frames, subjects)
    conv = tmp_path / "conv"
    conv.mkdir()
    if qc == "rejected":
        with pytest.raises(TypeError):
            t1._compute_t1_paths(adni, clinical, subjects, conv)
        assert crashes and all("Mayo QC" in c for c in crashes)
        return
    theirs = t1._compute_t1_paths(adni, clinical, subjects, conv)
    assert not crashes
    key = ["Subject_ID", "VISCODE"]
    cols = ["Image_ID", "Visit", "Original"]
    merged = ours[key + cols].merge(theirs[key + cols], on=key, suffixes=("", "_clinica"))
    assert len(merged) == len(ours) == len(theirs) > 0
    for col in cols:
        assert (merged[col].astype(str) == merged[f"{col}_clinica"].astype(str)).all(), col
    if qc == "quality":  # the repeat series won on quality, so those images are not on disk
        assert set(ours.Image_ID.astype(int)) - set(truth.image_uid)
