"""Write a synthetic ADNI download that the real ``clinica convert adni-to-bids`` accepts.

The pipeline's default dataset must exercise the same code path as a real study: Clinica 0.12.0
reads an ADNI image folder plus the LONI clinical CSVs, picks one T1 per visit, converts DICOM
series with dcm2niix, re-centres every image, and writes ``participants.tsv`` and per-subject
``sessions.tsv``. So instead of writing BIDS directly, this module writes what LONI IDA hands
out (see ``docs/adni-download.md`` for the contract, column by column):

* ``ADNI/<PTID>/MPRAGE/<YYYY-MM-DD_HH_MM_SS.0>/I<uid>/`` holding
  ``ADNI_<PTID>_MR_MPRAGE_br_raw_<timestamp>_1_S<series>_I<uid>.nii`` (a few scans as
  one-``.dcm``-per-slice DICOM series instead, so dcm2niix runs);
* ``clinical/`` with ADNIMERGE, MPRAGEMETA, MRIQUALITY, MAYOADIRL_MRI_IMAGEQC_05_07_15, APOERES
  and DXSUM_PDXCONV_ADNIALL, holding every column Clinica reads;
* ``ground_truth/cohort.tsv`` (one row per scan: identifiers, expected BIDS ids, diagnosis at
  that visit, severity, volumes, transform parameters) and one atrophy mask per scan.

The subjects are ADNI1-style (PTID ``011_S_0002``, COLPROT = ORIGPROT = ADNI1, 1.5 T MPRAGE),
because that is the phase whose visit naming and scan selection Clinica handles with the
fewest special cases (see the doc for why ADNI3 would need "accelerated" sequences).
"""

from __future__ import annotations

import datetime as dt
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd

__all__ = [
    "CohortSpec",
    "write_synthetic_adni",
    "adni1_visit_name",
    "participant_id_from_ptid",
    "session_id_from_viscode",
    "clinica_bids_space",
    "GROUND_TRUTH_COLUMNS",
]

#: ADNI1 follow-up schedule used for synthetic visits (months after baseline).
VISIT_CODES: tuple[str, ...] = ("bl", "m06", "m12", "m24", "m36")
#: Most visits a subject can have (the schedule length).
MAX_VISITS = len(VISIT_CODES)
#: Diagnoses in the order a subject may move through them (never backwards).
CLASSES: tuple[str, str, str] = ("CN", "MCI", "AD")
#: ADNIMERGE ``DX`` spelling (Clinica maps Dementia -> AD in sessions.tsv).
ADNIMERGE_DX = {"CN": "CN", "MCI": "MCI", "AD": "Dementia"}
#: ADNIMERGE ``DX_bl`` spelling in ADNI1 (MCI at ADNI1 baseline is late MCI).
ADNIMERGE_DX_BL = {"CN": "CN", "MCI": "LMCI", "AD": "AD"}
#: DXSUM numeric codes (DXCURREN in ADNI1, DIAGNOSIS in ADNI3).
DXSUM_CODE = {"CN": 1, "MCI": 2, "AD": 3}
#: Real ADNI site numbers, so PTIDs look like the ones users know.
SITES: tuple[int, ...] = (
    2, 3, 5, 6, 7, 11, 13, 14, 16, 18, 22, 23, 24, 27, 31, 32, 33, 35, 36, 37,
    41, 52, 53, 57, 62, 67, 68, 73, 82, 94, 98, 99, 100, 109, 114, 116, 123, 126,
    127, 128, 130, 131, 133, 136, 137, 141,
)  # fmt: skip
#: Severity centre per diagnosis (0 = healthy, 1 = typical AD; brain.py accepts [0, 1]).
SEVERITY_BASE = {"CN": 0.0, "MCI": 0.5, "AD": 0.92}
#: Severity gained per year of follow-up, per current diagnosis.
SEVERITY_RATE = {"CN": 0.01, "MCI": 0.04, "AD": 0.03}
#: Subject-level severity jitter (standard deviation) per baseline diagnosis.
SEVERITY_JITTER = {"CN": 0.03, "MCI": 0.06, "AD": 0.05}
#: Mean baseline age per baseline diagnosis (AD older on average, as in ADNI1).
AGE_MEAN = {"CN": 71.0, "MCI": 73.5, "AD": 77.0}
AGE_MIN, AGE_MAX = 55.0, 90.0

#: Columns of ``ground_truth/cohort.tsv`` (and of the returned dataframe), in order.
GROUND_TRUTH_COLUMNS: list[str] = [
    "ptid",
    "participant_id",
    "rid",
    "site",
    "viscode",
    "session_id",
    "visit",
    "diagnosis",
    "baseline_diagnosis",
    "severity",
    "age",
    "sex",
    "examdate",
    "scandate",
    "image_uid",
    "series_id",
    "study_id",
    "format",
    "path",
    "dicom_source",
    "atrophy_mask",
    "hippocampus_volume_ratio",
    "ventricle_volume_ratio",
    "scanner_to_bids_x_mm",
    "scanner_to_bids_y_mm",
    "scanner_to_bids_z_mm",
]


@dataclass(frozen=True)
class CohortSpec:
    """What to synthesise; the defaults make the pipeline's built-in demo cohort."""

    n_subjects: int = 60
    mean_visits: float = 1.5  # about 90 scans for 60 subjects
    n_dicom: int = 3  # this many scans written as DICOM series (the rest as .nii)
    seed: int = 42
    voxel_size: float = 1.5
    class_fractions: tuple[float, float, float] = (0.35, 0.35, 0.30)  # baseline CN/MCI/AD
    conversion_prob: float = 0.3  # chance of CN->MCI or MCI->AD at each follow-up visit
    hippocampal_shrink: float = 0.35
    ventricle_growth: float = 0.6

    def __post_init__(self) -> None:
        """Reject specs that cannot produce an ADNI-shaped cohort, before any file is written."""
        if not 1 <= self.n_subjects <= 4999:
            raise ValueError(f"n_subjects must be in 1..4999 (4-digit RIDs), got {self.n_subjects}")
        if not 1.0 <= self.mean_visits <= MAX_VISITS:
            raise ValueError(f"mean_visits must be in [1, {MAX_VISITS}], got {self.mean_visits}")
        if self.n_dicom < 0:
            raise ValueError(f"n_dicom must be >= 0, got {self.n_dicom}")
        if len(self.class_fractions) != 3 or min(self.class_fractions) < 0:
            raise ValueError(f"class_fractions must be 3 numbers >= 0: {self.class_fractions}")
        if abs(sum(self.class_fractions) - 1.0) > 1e-6:
            raise ValueError(f"class_fractions must sum to 1, got {sum(self.class_fractions)}")
        if not 0.0 <= self.conversion_prob <= 1.0:
            raise ValueError(f"conversion_prob must be in [0, 1], got {self.conversion_prob}")
        if self.voxel_size <= 0:
            raise ValueError(f"voxel_size must be > 0, got {self.voxel_size}")


# --------------------------------------------------------------------------- naming helpers


def adni1_visit_name(viscode: str) -> str:
    """MPRAGEMETA ``Visit`` label of an ADNI1 visit, exactly as Clinica 0.12 expects it.

    Clinica matches ADNIMERGE visits to image visits by this name first (and only falls back to
    date proximity), so getting it right makes the visit mapping unambiguous.
    """
    if viscode == "bl":
        return "ADNI Screening"
    if viscode == "m03":
        return "ADNIGO Month 3 MRI"  # sic: Clinica's expectation for ADNI1 month 3
    month = int(viscode[1:])
    return f"ADNI{'1/' if month < 54 else ''}GO Month {month}"


def participant_id_from_ptid(ptid: str) -> str:
    """BIDS participant id Clinica derives from a PTID (``011_S_0002`` -> sub-ADNI011S0002)."""
    return "sub-ADNI" + ptid.replace("_", "")


def session_id_from_viscode(viscode: str) -> str:
    """BIDS session id Clinica derives from an ADNIMERGE VISCODE (``bl`` -> ses-M000)."""
    if viscode in ("bl", "m0"):
        return "ses-M000"
    return f"ses-M{int(viscode[1:]):03d}"


def clinica_bids_space(img: nib.Nifti1Image) -> nib.Nifti1Image:
    """The image as Clinica's T1 conversion leaves it (``center_nifti_origin``).

    Clinica reorients to the closest RAS axes and then REPLACES the affine by
    ``diag(pixdim)`` with the origin at the volume centre, dropping any rotation. Ground-truth
    masks are written through this function so they overlay the BIDS T1w voxel for voxel.
    """
    canonical = nib.as_closest_canonical(img)
    header = canonical.header.copy()
    affine = np.eye(4)
    for i in range(3):
        pixdim = float(header["pixdim"][i + 1])
        affine[i, i] = pixdim
        affine[i, 3] = -pixdim * float(header["dim"][i + 1]) / 2.0
    return nib.Nifti1Image(np.asanyarray(canonical.dataobj), affine, header=header)


def _scanner_to_bids_shift(scanner: nib.Nifti1Image, bids: nib.Nifti1Image) -> list[float]:
    """Translation from scanner-world mm to the BIDS T1w's world mm (NaN if not a translation).

    Clinica re-centres the origin, so landmarks placed in the scanner frame (for instance with
    ``brain.mni_to_scanner``) need this shift to land on the BIDS image. It is a pure shift when
    the scanner grid is axis-aligned RAS, as brain.py writes it.
    """
    canonical = nib.as_closest_canonical(scanner).affine
    transform = bids.affine @ np.linalg.inv(canonical)
    if not np.allclose(transform[:3, :3], np.eye(3), atol=1e-6):
        return [float("nan")] * 3
    return [round(float(v), 4) for v in transform[:3, 3]]


# --------------------------------------------------------------------------- cohort plan


@dataclass
class _Subject:
    """Subject-level draws, made before any image so the plan is cheap and reproducible."""

    index: int
    ptid: str
    rid: int
    site: int
    sex: str
    baseline_age: float
    baseline_dx: str
    jitter: float
    education: int
    marital: str
    ethnicity: str
    race: str
    apoe: tuple[int, int]
    bl_date: dt.date
    icv: float
    hippo_scale: float
    vent_scale: float
    has_csf: bool


def _n_visits(rng: np.random.Generator, mean_visits: float) -> int:
    """Visits per subject: 1 + Binomial(MAX_VISITS-1, p), whose mean is ``mean_visits``."""
    p = (mean_visits - 1.0) / (MAX_VISITS - 1)
    return 1 + int(rng.binomial(MAX_VISITS - 1, p))


def _apoe_genotype(rng: np.random.Generator, dx: str) -> tuple[int, int]:
    """APOE alleles with e4 enriched in MCI/AD, as in ADNI."""
    probs = {"CN": (0.73, 0.25, 0.02), "MCI": (0.50, 0.40, 0.10), "AD": (0.35, 0.47, 0.18)}[dx]
    n_e4 = int(rng.choice(3, p=probs))
    other = [2, 3] if rng.random() < 0.12 else [3, 3]
    alleles = sorted(other[: 2 - n_e4] + [4] * n_e4)
    return alleles[0], alleles[1]


def _plan_subjects(spec: CohortSpec, rng: np.random.Generator) -> list[_Subject]:
    """Draw subject identities and demographics (RIDs unique, as Clinica assumes)."""
    pool = np.arange(2, max(1500, 2 * spec.n_subjects))  # ADNI1 RIDs run to ~1500
    rids = np.sort(rng.choice(pool, size=spec.n_subjects, replace=False))
    # Keep the requested class mix exactly (rounded), then shuffle, so small cohorts stay mixed.
    counts = np.floor(np.array(spec.class_fractions) * spec.n_subjects).astype(int)
    while counts.sum() < spec.n_subjects:
        counts[int(np.argmax(np.array(spec.class_fractions) * spec.n_subjects - counts))] += 1
    dxs = [c for c, n in zip(CLASSES, counts, strict=True) for _ in range(n)]
    rng.shuffle(dxs)
    first_day = dt.date(2005, 9, 7)
    subjects = []
    for i, (rid, dx) in enumerate(zip(rids, dxs, strict=True)):
        site = int(rng.choice(SITES))
        sex = "Male" if rng.random() < 0.56 else "Female"
        # Clip so that the last possible visit (m36, +12 days) is still within AGE_MAX.
        age = float(np.clip(rng.normal(AGE_MEAN[dx], 6.0), AGE_MIN, AGE_MAX - 3.2))
        subjects.append(
            _Subject(
                index=i,
                ptid=f"{site:03d}_S_{int(rid):04d}",
                rid=int(rid),
                site=site,
                sex=sex,
                baseline_age=round(age, 1),
                baseline_dx=dx,
                jitter=float(rng.normal(0.0, SEVERITY_JITTER[dx])),
                education=int(np.clip(round(rng.normal(15.7, 2.9)), 6, 20)),
                marital=str(
                    rng.choice(
                        ["Married", "Widowed", "Divorced", "Never married", "Unknown"],
                        p=[0.75, 0.12, 0.08, 0.04, 0.01],
                    )
                ),
                ethnicity=str(
                    rng.choice(["Not Hisp/Latino", "Hisp/Latino", "Unknown"], p=[0.97, 0.02, 0.01])
                ),
                race=str(rng.choice(["White", "Black", "Asian"], p=[0.92, 0.05, 0.03])),
                apoe=_apoe_genotype(rng, dx),
                bl_date=first_day + dt.timedelta(days=int(rng.integers(0, 750))),
                icv=float(rng.normal(1.60e6 if sex == "Male" else 1.42e6, 0.09e6)),
                hippo_scale=float(rng.normal(1.0, 0.06)),
                vent_scale=float(np.exp(rng.normal(0.0, 0.3))),
                has_csf=bool(rng.random() < 0.5),
            )
        )
    return subjects


def _plan_visits(
    spec: CohortSpec, subjects: list[_Subject], rng: np.random.Generator
) -> list[dict]:
    """Visits, diagnoses (forward-only conversions), dates and severities for every subject."""
    visits: list[dict] = []
    for subj in subjects:
        n = _n_visits(rng, spec.mean_visits)
        dx_index = CLASSES.index(subj.baseline_dx)
        prev_dx_index = dx_index
        for v, viscode in enumerate(VISIT_CODES[:n]):
            months = 0 if viscode == "bl" else int(viscode[1:])
            if v > 0 and dx_index < 2 and rng.random() < spec.conversion_prob:
                dx_index += 1
            dx = CLASSES[dx_index]
            years = months / 12.0
            severity = SEVERITY_BASE[dx] + subj.jitter + SEVERITY_RATE[dx] * years
            if dx == "CN":
                severity = abs(severity)
            examdate = subj.bl_date + dt.timedelta(
                days=round(months * 30.4375) + (0 if v == 0 else int(rng.integers(-12, 13)))
            )
            # ADNI1 screening MRI precedes the baseline clinical visit; follow-ups are close.
            scan_offset = -int(rng.integers(7, 29)) if v == 0 else int(rng.integers(-7, 15))
            visits.append(
                {
                    "subject": subj,
                    "visit_index": v,
                    "viscode": viscode,
                    "months": months,
                    "diagnosis": dx,
                    "converted": dx_index != prev_dx_index,
                    "severity": float(np.clip(severity, 0.0, 1.0)),
                    "examdate": examdate,
                    "scandate": examdate + dt.timedelta(days=scan_offset),
                    "scantime": dt.time(
                        int(rng.integers(7, 19)), int(rng.integers(0, 60)), int(rng.integers(0, 60))
                    ),
                    "has_repeat": bool(rng.random() < 0.2),
                }
            )
            prev_dx_index = dx_index
    return visits


# --------------------------------------------------------------------------- image writing


def _brain_api() -> ModuleType:
    """The image synthesiser (``earlyad.synth.brain``); a function so tests can swap it out."""
    from earlyad.synth import brain

    return brain


def _ds(value: float) -> str:
    """A DICOM decimal string within the 16-character limit, precise to well under 1e-3 mm."""
    text = f"{value:.6f}"
    if len(text) > 16:
        text = f"{value:.9g}"
    return "0.000000" if text in ("-0.000000", "-0") else text


def _write_dicom_series(
    img: nib.Nifti1Image,
    folder: Path,
    *,
    ptid: str,
    series_id: int,
    study_id: int,
    image_uid: int,
    sex: str,
    age: float,
    when: dt.datetime,
    stamp: str,
) -> None:
    """Write ``img`` as one MR DICOM file per slice, with geometry dcm2niix turns back into it.

    The NIfTI voxel (i, j, k) becomes pixel (row=j, column=i) of slice k; positions and
    direction cosines are the NIfTI affine converted from RAS to DICOM's LPS.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import (
        PYDICOM_IMPLEMENTATION_UID,
        ExplicitVRLittleEndian,
        MRImageStorage,
        generate_uid,
    )

    affine = np.asarray(img.affine, dtype=float)
    cols = affine[:3, :3]
    spacing = np.linalg.norm(cols, axis=0)
    unit = cols / spacing
    if not np.allclose(unit.T @ unit, np.eye(3), atol=1e-6):
        raise ValueError(
            f"{ptid} I{image_uid}: the affine has shear, which DICOM cannot store; "
            "write this scan as NIfTI instead"
        )
    lps = np.diag([-1.0, -1.0, 1.0])
    row_dir = lps @ unit[:, 0]  # direction of increasing column index (NIfTI i)
    col_dir = lps @ unit[:, 1]  # direction of increasing row index (NIfTI j)
    data = np.asanyarray(img.dataobj).astype(np.int16)
    nx, ny, nz = data.shape
    entropy = [ptid, str(series_id), str(image_uid)]
    study_uid = generate_uid(entropy_srcs=[*entropy, "study"])
    series_uid = generate_uid(entropy_srcs=[*entropy, "series"])
    frame_uid = generate_uid(entropy_srcs=[*entropy, "frame"])
    folder.mkdir(parents=True, exist_ok=True)
    date = when.strftime("%Y%m%d")
    time = when.strftime("%H%M%S.000000")
    for k in range(nz):
        position = lps @ (affine @ np.array([0.0, 0.0, float(k), 1.0]))[:3]
        sop_uid = generate_uid(entropy_srcs=[*entropy, f"slice{k}"])
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = MRImageStorage
        ds.SOPInstanceUID = sop_uid
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.Modality = "MR"
        ds.Manufacturer = "SIEMENS"
        ds.ManufacturerModelName = "Symphony"
        ds.MagneticFieldStrength = "1.5"
        ds.PatientID = ptid
        ds.PatientName = ptid
        ds.PatientSex = "M" if sex == "Male" else "F"
        ds.PatientAge = f"{int(age):03d}Y"
        ds.PatientPosition = "HFS"
        ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = date
        ds.StudyTime = ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = time
        ds.StudyID = str(study_id)
        ds.StudyDescription = "ADNI Research"
        ds.SeriesDescription = "MPRAGE"
        ds.ProtocolName = "MPRAGE"
        ds.SeriesNumber = 2
        ds.AcquisitionNumber = 1
        ds.InstanceNumber = k + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND", "NORM"]
        ds.ScanningSequence = ["GR", "IR"]
        ds.SequenceVariant = ["SP", "MP"]
        ds.MRAcquisitionType = "3D"
        ds.RepetitionTime = "2400"
        ds.EchoTime = "3.65"
        ds.InversionTime = "1000"
        ds.FlipAngle = "8"
        ds.SliceThickness = _ds(spacing[2])
        ds.SpacingBetweenSlices = _ds(spacing[2])
        ds.PixelSpacing = [_ds(spacing[1]), _ds(spacing[0])]  # [between rows, between columns]
        ds.ImagePositionPatient = [_ds(x) for x in position]
        ds.ImageOrientationPatient = [_ds(x) for x in (*row_dir, *col_dir)]
        ds.SliceLocation = _ds(float(position @ np.cross(row_dir, col_dir)))
        ds.Rows = ny
        ds.Columns = nx
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.RescaleIntercept = "0"
        ds.RescaleSlope = "1"
        ds.PixelData = np.ascontiguousarray(data[:, :, k].T).astype("<i2").tobytes()
        name = f"ADNI_{ptid}_MR_MPRAGE_br_raw_{stamp}_{k + 1}_S{series_id}_I{image_uid}.dcm"
        try:
            ds.save_as(folder / name, enforce_file_format=True)
        except TypeError:  # pydicom < 3 spells it differently
            ds.is_little_endian, ds.is_implicit_VR = True, False
            ds.save_as(folder / name, write_like_original=False)


# --------------------------------------------------------------------------- clinical tables


def _round_half(x: float) -> float:
    return float(np.round(x * 2.0) / 2.0)


def _adnimerge_row(
    subj: _Subject, visit: dict, scan: dict, rng: np.random.Generator, bl: dict
) -> dict[str, Any]:
    """One ADNIMERGE row (a visit), with scores and volumes driven by the visit's severity."""
    sev = visit["severity"]
    months = visit["months"]
    mmse = int(np.clip(round(29.3 - 5.6 * sev + rng.normal(0, 1.0)), 0, 30))
    adas11 = round(float(np.clip(5.5 + 13.0 * sev + rng.normal(0, 2.0), 0, 70)), 2)
    adas13 = round(float(np.clip(adas11 * 1.55 + rng.normal(0, 1.5), 0, 85)), 2)
    cdrsb = _round_half(float(np.clip(4.4 * sev**1.3 + rng.normal(0, 0.3), 0, 18)))
    has_fdg = rng.random() < 0.45
    has_csf = subj.has_csf and visit["visit_index"] in (0, 1)
    row: dict[str, Any] = {
        "RID": subj.rid,
        "COLPROT": "ADNI1",
        "ORIGPROT": "ADNI1",
        "PTID": subj.ptid,
        "SITE": subj.site,
        "VISCODE": visit["viscode"],
        "EXAMDATE": visit["examdate"].isoformat(),
        "DX_bl": ADNIMERGE_DX_BL[subj.baseline_dx],
        "AGE": subj.baseline_age,
        "PTGENDER": subj.sex,
        "PTEDUCAT": subj.education,
        "PTETHCAT": subj.ethnicity,
        "PTRACCAT": subj.race,
        "PTMARRY": subj.marital,
        "APOE4": float(sum(a == 4 for a in subj.apoe)),
        "FDG": round(6.6 - 1.3 * sev + rng.normal(0, 0.3), 4) if has_fdg else np.nan,
        "PIB": np.nan,
        "AV45": np.nan,
        "ABETA": round(float(1350 - 620 * sev + rng.normal(0, 120)), 1) if has_csf else np.nan,
        "TAU": round(float(230 + 160 * sev + rng.normal(0, 35)), 2) if has_csf else np.nan,
        "PTAU": round(float(21 + 15 * sev + rng.normal(0, 3)), 2) if has_csf else np.nan,
        "CDRSB": cdrsb,
        "ADAS11": adas11,
        "ADAS13": adas13,
        "ADASQ4": int(np.clip(round(2 + 5.5 * sev + rng.normal(0, 1)), 0, 10)),
        "MMSE": mmse,
        "RAVLT_immediate": int(np.clip(round(45 - 20 * sev + rng.normal(0, 5)), 0, 75)),
        "MOCA": np.nan,  # MoCA starts in ADNIGO/2
        "FAQ": int(np.clip(round(13 * sev**1.5 + rng.normal(0, 1.5)), 0, 30)),
        "TRABSCOR": int(np.clip(round(85 + 95 * sev + rng.normal(0, 20)), 20, 300)),
        "mPACCdigit": round(float(-10.5 * sev + rng.normal(0, 1.5)), 4),
        "mPACCtrailsB": round(float(-10.0 * sev + rng.normal(0, 1.5)), 4),
        "Ventricles": round(28000 * subj.vent_scale * scan["ventricle_volume_ratio"]),
        "Hippocampus": round(7300 * subj.hippo_scale * scan["hippocampus_volume_ratio"]),
        "WholeBrain": round(subj.icv * 0.68 * (1 - 0.06 * sev)),
        "Entorhinal": round(3800 * subj.hippo_scale * (1 - 0.3 * sev)),
        "Fusiform": round(18000 * (1 - 0.12 * sev)),
        "MidTemp": round(20000 * (1 - 0.12 * sev)),
        "ICV": round(subj.icv),
        "DX": ADNIMERGE_DX[visit["diagnosis"]],
        "FLDSTRENG": "1.5 Tesla MRI",
        "EXAMDATE_bl": subj.bl_date.isoformat(),
        "Years_bl": round(months / 12.0, 4),
        "Month_bl": round(months * 1.0, 4),
        "Month": months,
        "M": months,
    }
    # Baseline copies ("_bl") are the same on every row of a subject, as in ADNIMERGE.
    source = row if visit["visit_index"] == 0 else bl
    for col in ("CDRSB", "ADAS11", "ADAS13", "ADASQ4", "MMSE", "RAVLT_immediate", "MOCA"):
        row[f"{col}_bl"] = source[col]
    for col in ("TRABSCOR", "mPACCdigit", "mPACCtrailsB", "Hippocampus", "Ventricles", "ICV"):
        row[f"{col}_bl"] = source[col]
    return row


def _write_clinical(
    clinical_dir: Path,
    subjects: list[_Subject],
    visits: list[dict],
    scans: list[dict],
    rng: np.random.Generator,
) -> None:
    """Write the six clinical CSVs Clinica's ADNI converter needs for T1 + clinical data."""
    clinical_dir.mkdir(parents=True, exist_ok=True)
    merge_rows: list[dict] = []
    meta_rows: list[dict] = []
    quality_rows: list[dict] = []
    mayo_rows: list[dict] = []
    dxsum_rows: list[dict] = []
    baseline: dict[str, dict] = {}
    for i, (visit, scan) in enumerate(zip(visits, scans, strict=True)):
        subj: _Subject = visit["subject"]
        row = _adnimerge_row(subj, visit, scan, rng, baseline.get(subj.ptid, {}))
        if visit["visit_index"] == 0:
            baseline[subj.ptid] = row
        merge_rows.append(row)
        name = adni1_visit_name(visit["viscode"])
        series = [(scan["series_id"], scan["image_uid"], "MPRAGE", True)]
        if visit["has_repeat"]:  # listed by LONI but not downloaded: Clinica must skip it
            series.append((scan["series_id"] + 1, scan["image_uid"] + 1, "MPRAGE Repeat", False))
        for series_id, uid, sequence, selected in series:
            meta_rows.append(
                {
                    "SubjectID": subj.ptid,
                    "RID": subj.rid,
                    "Visit": name,
                    "Sequence": sequence,
                    "ScanDate": visit["scandate"].isoformat(),
                    "StudyID": scan["study_id"],
                    "SeriesID": series_id,
                    "ImageUID": uid,
                    "Orig/Proc": "Original",
                    "MagStrength": 1.5,
                    "Manufacturer": "SIEMENS",
                    "Model": "Symphony",
                }
            )
            quality_rows.append(
                {
                    "RID": subj.rid,
                    "VISCODE": visit["viscode"],
                    "LONIUID": f"S{series_id}",
                    "STUDYDATE": visit["scandate"].isoformat(),
                    "PASS": 1,
                    "QCDATE": (visit["scandate"] + dt.timedelta(days=30)).isoformat(),
                }
            )
            mayo_rows.append(
                {
                    "RID": subj.rid,
                    "loni_study": f"S{scan['study_id']}",
                    "loni_series": f"S{series_id}",
                    "loni_image": f"I{uid}",
                    "series_type": "T1",
                    "series_quality": 1 if selected else 2,
                    "series_selected": 1 if selected else 0,
                    "study_overallpass": 1,
                    "series_date": visit["scandate"].isoformat(),
                }
            )
        code = DXSUM_CODE[visit["diagnosis"]]
        prev = visits[i - 1]["diagnosis"] if visit["visit_index"] else None
        dxsum_rows.append(
            {
                "Phase": "ADNI1",
                "ID": len(dxsum_rows) + 1,
                "RID": subj.rid,
                "PTID": subj.ptid,
                "SITEID": subj.site,
                "VISCODE": visit["viscode"],
                "VISCODE2": visit["viscode"],
                "USERDATE": visit["examdate"].isoformat(),
                "EXAMDATE": visit["examdate"].isoformat(),
                "DXCURREN": code,
                "DXCONV": np.nan if prev is None else int(visit["converted"]),
                "DXCONTYP": (1 if prev == "CN" else 3) if visit["converted"] else np.nan,
                "DXCHANGE": (4 if prev == "CN" else 5) if visit["converted"] else code,
                "DIAGNOSIS": code,
            }
        )
    apoe_rows = [
        {
            "Phase": "ADNI1",
            "ID": i + 1,
            "RID": s.rid,
            "SITEID": s.site,
            "VISCODE": "sc",
            "USERDATE": (s.bl_date - dt.timedelta(days=30)).isoformat(),
            "APGEN1": s.apoe[0],
            "APGEN2": s.apoe[1],
            "GENOTYPE": f"{s.apoe[0]}/{s.apoe[1]}",
        }
        for i, s in enumerate(sorted(subjects, key=lambda s: s.rid))
    ]
    frames = {
        "ADNIMERGE.csv": pd.DataFrame(merge_rows),
        "MPRAGEMETA.csv": pd.DataFrame(meta_rows),
        "MRIQUALITY.csv": pd.DataFrame(quality_rows),
        "MAYOADIRL_MRI_IMAGEQC_05_07_15.csv": pd.DataFrame(mayo_rows),
        "APOERES.csv": pd.DataFrame(apoe_rows),
        "DXSUM_PDXCONV_ADNIALL.csv": pd.DataFrame(dxsum_rows),
    }
    for name, frame in frames.items():
        frame.to_csv(clinical_dir / name, index=False)


# --------------------------------------------------------------------------- entry point


def write_synthetic_adni(out_dir: Path, spec: CohortSpec, progress: bool = True) -> pd.DataFrame:
    """Write a synthetic ADNI download (images, clinical CSVs, ground truth) under ``out_dir``.

    Returns the ground-truth table (also written to ``out_dir/ground_truth/cohort.tsv``), one
    row per scan with the BIDS ids Clinica will produce, so tests and evaluation can join on
    ``participant_id`` + ``session_id``. Progress goes to stderr, one line per subject.
    """
    out_dir = Path(out_dir)
    adni_dir = out_dir / "ADNI"
    clinical_dir = out_dir / "clinical"
    truth_dir = out_dir / "ground_truth"
    for folder in (adni_dir, clinical_dir, truth_dir):
        if folder.exists() and any(folder.iterdir()):
            raise FileExistsError(
                f"{folder} is not empty: write the synthetic cohort into a fresh directory "
                "(Clinica would otherwise pick up stale images or CSVs)"
            )
    rng = np.random.default_rng(spec.seed)
    subjects = _plan_subjects(spec, rng)
    visits = _plan_visits(spec, subjects, rng)
    dicom_set = set(
        rng.choice(len(visits), size=min(spec.n_dicom, len(visits)), replace=False).tolist()
    )
    brain = _brain_api()
    ref = brain.load_reference(voxel_size=spec.voxel_size)
    truth_dir.mkdir(parents=True, exist_ok=True)

    next_uid, next_series, next_study = 30000, 9000, 6000
    scans: list[dict] = []
    rows: list[dict] = []
    for idx, visit in enumerate(visits):
        subj: _Subject = visit["subject"]
        next_uid += int(rng.integers(3, 400))
        next_series += int(rng.integers(3, 150))
        next_study += int(rng.integers(1, 60))
        uid, series_id, study_id = next_uid, next_series, next_study
        next_uid += 1  # room for an optional "MPRAGE Repeat" image UID
        next_series += 1
        scan_rng = np.random.default_rng([spec.seed, subj.index, visit["visit_index"]])
        synth = brain.synthesize_scan(
            ref,
            visit["severity"],
            scan_rng,
            hippocampal_shrink=spec.hippocampal_shrink,
            ventricle_growth=spec.ventricle_growth,
        )
        when = dt.datetime.combine(visit["scandate"], visit["scantime"])
        folder = adni_dir / subj.ptid / "MPRAGE" / when.strftime("%Y-%m-%d_%H_%M_%S.0") / f"I{uid}"
        stamp = (when + dt.timedelta(days=int(rng.integers(30, 400)))).strftime("%Y%m%d%H%M%S")
        stamp += f"{int(rng.integers(0, 1000)):03d}"
        age = subj.baseline_age + (visit["examdate"] - subj.bl_date).days / 365.25
        is_dicom = idx in dicom_set
        pid = participant_id_from_ptid(subj.ptid)
        sid = session_id_from_viscode(visit["viscode"])
        if is_dicom:
            _write_dicom_series(
                synth.image,
                folder,
                ptid=subj.ptid,
                series_id=series_id,
                study_id=study_id,
                image_uid=uid,
                sex=subj.sex,
                age=age,
                when=when,
                stamp=stamp,
            )
            image_path = folder
            # Keep the array behind the DICOM series, so the dcm2niix round trip can be checked.
            source_path = truth_dir / f"{pid}_{sid}_dicom_source.nii.gz"
            nib.save(synth.image, source_path)
        else:
            folder.mkdir(parents=True, exist_ok=True)
            name = f"ADNI_{subj.ptid}_MR_MPRAGE_br_raw_{stamp}_1_S{series_id}_I{uid}.nii"
            image_path = folder / name
            nib.save(synth.image, image_path)
        mask_path = truth_dir / f"{pid}_{sid}_atrophy.nii.gz"
        mask = clinica_bids_space(synth.atrophy)
        mask.set_data_dtype(np.uint8)
        nib.save(mask, mask_path)
        shift = _scanner_to_bids_shift(synth.atrophy, mask)
        scan = {
            "image_uid": uid,
            "series_id": series_id,
            "study_id": study_id,
            "hippocampus_volume_ratio": float(synth.hippocampus_volume_ratio),
            "ventricle_volume_ratio": float(synth.ventricle_volume_ratio),
        }
        scans.append(scan)
        row = {
            "ptid": subj.ptid,
            "participant_id": pid,
            "rid": subj.rid,
            "site": subj.site,
            "viscode": visit["viscode"],
            "session_id": sid,
            "visit": adni1_visit_name(visit["viscode"]),
            "diagnosis": visit["diagnosis"],
            "baseline_diagnosis": subj.baseline_dx,
            "severity": round(visit["severity"], 4),
            "age": round(age, 2),
            "sex": "M" if subj.sex == "Male" else "F",
            "examdate": visit["examdate"].isoformat(),
            "scandate": visit["scandate"].isoformat(),
            "image_uid": uid,
            "series_id": series_id,
            "study_id": study_id,
            "format": "dicom" if is_dicom else "nifti",
            "path": image_path.relative_to(out_dir).as_posix(),
            "dicom_source": source_path.relative_to(out_dir).as_posix() if is_dicom else "",
            "atrophy_mask": mask_path.relative_to(out_dir).as_posix(),
            "hippocampus_volume_ratio": round(scan["hippocampus_volume_ratio"], 6),
            "ventricle_volume_ratio": round(scan["ventricle_volume_ratio"], 6),
            **{f"scanner_to_bids_{a}_mm": v for a, v in zip("xyz", shift, strict=True)},
        }
        row.update({f"param_{k}": float(v) for k, v in sorted(synth.params.items())})
        rows.append(row)
        last_of_subject = idx + 1 == len(visits) or visits[idx + 1]["subject"] is not subj
        if progress and last_of_subject:
            mine = [r for r in rows if r["ptid"] == subj.ptid]
            path = " -> ".join(r["diagnosis"] for r in mine)
            print(
                f"[synthetic ADNI] subject {subj.index + 1}/{len(subjects)} {subj.ptid}: "
                f"{len(mine)} scan(s), {path}",
                file=sys.stderr,
                flush=True,
            )

    _write_clinical(clinical_dir, subjects, visits, scans, rng)
    cohort = pd.DataFrame(rows)
    extra = [c for c in cohort.columns if c not in GROUND_TRUTH_COLUMNS]
    cohort = cohort[GROUND_TRUTH_COLUMNS + extra]
    cohort.to_csv(truth_dir / "cohort.tsv", sep="\t", index=False, na_rep="n/a")
    return cohort
