"""Pre-flight check of an ADNI download before ``clinica convert adni-to-bids -m T1`` runs.

Clinica 0.12.0 fails late and unhelpfully on incomplete downloads: a missing CSV column is a bare
``KeyError`` after images were already converted, a T1 it selects but cannot find on disk is only
a debug-level log line (the visit silently vanishes from BIDS), and an unknown ``DX`` spelling
leaves every diagnosis unconverted. This module re-implements the parts of Clinica's T1 logic
that decide what is read and which image is picked (``clinica/converters/adni_to_bids/``), so
all problems are found up front and reported together, each with what to do about it.
``docs/adni-download.md`` describes the contract in prose.
"""

from __future__ import annotations

import datetime as dt
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import pandas as pd

__all__ = [
    "AdniCheckReport",
    "AdniDownloadError",
    "CSV_REQUIREMENTS",
    "check_adni_download",
    "find_clinical_csv",
    "run_check",
    "select_t1_scans",
]

#: Subject folders Clinica converts (``_define_subjects_list``): ``<3 digits>_S_<4 digits>``.
PTID_RE = re.compile(r"\d{3}_S_\d{4}")
#: ADNIMERGE VISCODEs Clinica can turn into a BIDS session (``viscode_to_session``).
VISCODE_RE = re.compile(r"bl|m\d+")
#: ADNIMERGE ``DX`` values Clinica knows; anything else aborts the whole diagnosis mapping.
DX_VALUES = {"CN", "MCI", "Dementia"}
#: Studies Clinica's T1 converter accepts in ORIGPROT/COLPROT (``ADNIStudy``).
STUDIES = {"ADNI1", "ADNIGO", "ADNI2", "ADNI3"}
#: (PTID, VISCODE) pairs Clinica 0.12 never converts (``_get_known_conversion_errors``).
KNOWN_CONVERSION_ERRORS = {
    ("031_S_0830", "m48"),
    ("100_S_0995", "m18"),
    ("031_S_0867", "m48"),
    ("100_S_0892", "m18"),
    ("003_S_6264", "m12"),
    ("011_S_4105", "m72"),
    ("006_S_4485", "m84"),
    ("029_S_2395", "m72"),
    ("114_S_6039", "bl"),
    ("016_S_4952", "m48"),
}
#: Image files Clinica finds: any file below ``<ADNI>/<PTID>/`` whose name has ``_I<uid>.``.
IMAGE_UID_RE = re.compile(r"_I(\d+)\.")


@dataclass(frozen=True)
class CsvRequirement:
    """One clinical CSV: the name Clinica looks for and the columns it reads from it."""

    name: str
    columns: dict[str, str]  # column -> what Clinica uses it for
    fallback: str | None = None  # older file name Clinica accepts instead
    alternatives: dict[str, tuple[str, ...]] = field(default_factory=dict)  # col -> substitutes


_ADNIMERGE_T1 = "T1 visit matching"
_SESSIONS = "sessions.tsv"
_PARTICIPANTS = "participants.tsv"

#: What Clinica 0.12.0 reads, per file (see docs/adni-download.md for the details).
CSV_REQUIREMENTS: dict[str, CsvRequirement] = {
    "ADNIMERGE": CsvRequirement(
        "ADNIMERGE",
        {
            "PTID": f"{_ADNIMERGE_T1}, subject list, BIDS ids",
            "VISCODE": f"{_ADNIMERGE_T1}, BIDS session ids",
            "EXAMDATE": f"{_ADNIMERGE_T1} (date fallback), {_SESSIONS} examination_date/age",
            "COLPROT": f"{_ADNIMERGE_T1} (phase -> scan selection rule), {_SESSIONS}",
            "ORIGPROT": f"{_ADNIMERGE_T1} (phase -> visit names), {_PARTICIPANTS} original_study",
            "EXAMDATE_bl": f"{_SESSIONS} age at follow-up visits",
            "AGE": f"{_SESSIONS} age, {_PARTICIPANTS} age_bl",
            "DX": f"{_SESSIONS} diagnosis (CN/MCI/Dementia -> CN/MCI/AD)",
            "AV45": f"{_SESSIONS} adni_av45 and amyloid status (KeyError without it)",
            "PIB": f"{_SESSIONS} adni_pib and amyloid status (KeyError without it)",
            "ABETA": f"{_SESSIONS} adni_abeta and amyloid status (KeyError without it)",
            "PTAU": f"{_SESSIONS} adni_ptau and tau status (KeyError without it)",
            "RID": f"{_PARTICIPANTS} adni_rid",
            "PTGENDER": f"{_PARTICIPANTS} sex",
            "PTEDUCAT": f"{_PARTICIPANTS} education_level",
            "PTMARRY": f"{_PARTICIPANTS} marital_status",
            "PTETHCAT": f"{_PARTICIPANTS} ethnic_cat",
            "SITE": f"{_PARTICIPANTS} site",
            "DX_bl": f"{_PARTICIPANTS} diagnosis_sc",
            "MMSE_bl": f"{_PARTICIPANTS} mmse_bl",
            "ADAS11_bl": f"{_PARTICIPANTS} adas11_bl",
            "ADAS13_bl": f"{_PARTICIPANTS} adas13_bl",
            "ADASQ4_bl": f"{_PARTICIPANTS} adas_Q4_bl",
            "APOE4": f"{_PARTICIPANTS} apoe4",
            "RAVLT_immediate_bl": f"{_PARTICIPANTS} ravlt_immediate_bl",
            "MOCA_bl": f"{_PARTICIPANTS} moca_bl",
            "TRABSCOR_bl": f"{_PARTICIPANTS} trabscor_bl",
            "mPACCdigit_bl": f"{_PARTICIPANTS} mpaccdigit_bl",
            "mPACCtrailsB_bl": f"{_PARTICIPANTS} mpacctrails_bl",
        },
    ),
    "MPRAGEMETA": CsvRequirement(
        "MPRAGEMETA",
        {
            "SubjectID": "T1 selection (rows of a subject)",
            "Visit": "T1 selection (LONI visit name matched to VISCODE)",
            "Sequence": "T1 selection (MPRAGE/SPGR, Scaled/N3m, accelerated, repeat)",
            "ScanDate": "T1 selection (date fallback when visit names do not match)",
            "StudyID": "T1 selection (copied to conversion_info)",
            "SeriesID": "T1 selection (QC lookup, tie-break)",
            "ImageUID": "T1 selection (the image file name carries _I<ImageUID>)",
            "Orig/Proc": "T1 selection (Original vs Processed)",
            "MagStrength": "T1 selection (1.5 T preferred in ADNI1, 3 T otherwise)",
        },
    ),
    "MRIQUALITY": CsvRequirement(
        "MRIQUALITY",
        {
            "RID": "T1 QC of ADNI1/GO/2 scans",
            "LONIUID": "T1 QC of ADNI1/GO/2 scans (S<SeriesID>)",
            "PASS": "T1 QC of ADNI1/GO/2 scans (scans with PASS != 1 are dropped)",
        },
    ),
    "MAYOADIRL_MRI_IMAGEQC_05_07_15": CsvRequirement(
        "MAYOADIRL_MRI_IMAGEQC_05_07_15",
        {
            "RID": "T1 QC of 3 T scans",
            "series_type": "T1 QC of 3 T scans (only 'T1' rows are used)",
            "loni_image": "T1 QC of 3 T scans (I<ImageUID>)",
            "series_selected": "T1 QC of 3 T scans",
            "series_quality": "T1 QC of 3 T scans (>= 4 means rejected)",
        },
    ),
    "APOERES": CsvRequirement(
        "APOERES",
        {
            "APGEN1": f"{_PARTICIPANTS} apoe_gen1",
            "APGEN2": f"{_PARTICIPANTS} apoe_gen2",
        },
        alternatives={"APGEN1": ("GENOTYPE",), "APGEN2": ("GENOTYPE",)},
    ),
    "DXSUM_PDXCONV_ADNIALL": CsvRequirement(
        "DXSUM_PDXCONV_ADNIALL",
        {
            "PTID": f"{_PARTICIPANTS} diagnosis_sc correction (index)",
            "VISCODE2": f"{_PARTICIPANTS} diagnosis_sc correction (index)",
        },
        fallback="DXSUM_PDXCONV",
    ),
}

#: Columns the T1 selection itself needs (the rest only matter for the TSVs Clinica writes).
SELECTION_COLUMNS: dict[str, tuple[str, ...]] = {
    "ADNIMERGE": ("PTID", "VISCODE", "EXAMDATE", "COLPROT", "ORIGPROT"),
    "MPRAGEMETA": tuple(CSV_REQUIREMENTS["MPRAGEMETA"].columns),
    "MRIQUALITY": tuple(CSV_REQUIREMENTS["MRIQUALITY"].columns),
    "MAYOADIRL_MRI_IMAGEQC_05_07_15": tuple(
        CSV_REQUIREMENTS["MAYOADIRL_MRI_IMAGEQC_05_07_15"].columns
    ),
}

_HOW_TO_GET_CSV = (
    "download it from LONI IDA (Download > Study Data, ADNI) and put it in the clinical "
    "directory; Clinica accepts the plain name or the dated one (e.g. {name}_12Mar2024.csv)"
)


class AdniDownloadError(ValueError):
    """The ADNI download would not convert completely; ``problems`` lists every reason."""

    def __init__(self, problems: list[str], adni_dir: Path, clinical_dir: Path) -> None:
        self.problems = list(problems)
        self.adni_dir = adni_dir
        self.clinical_dir = clinical_dir
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(
            f"ADNI download not ready for 'clinica convert adni-to-bids -m T1' "
            f"(images: {adni_dir}, clinical CSVs: {clinical_dir}); "
            f"{len(self.problems)} problem(s):\n{lines}"
        )


@dataclass
class AdniCheckReport:
    """What Clinica will convert: the CSVs it will read and one row per T1 it will write."""

    adni_dir: Path
    clinical_dir: Path
    csv_files: dict[str, Path]
    subjects: list[str]
    #: One row per selected T1: Subject_ID, VISCODE, Visit, Sequence, Scan_Date, Study_ID,
    #: Series_ID, Image_ID, Field_Strength, Original, Is_Dicom, Path, participant_id, session_id.
    images: pd.DataFrame
    warnings: list[str] = field(default_factory=list)

    @property
    def n_images(self) -> int:
        """Number of T1 images Clinica will write to BIDS."""
        return len(self.images)

    def __str__(self) -> str:
        """A short human summary (the CLI prints it)."""
        n_dicom = int(self.images["Is_Dicom"].sum()) if len(self.images) else 0
        csvs = ", ".join(p.name for p in self.csv_files.values())
        lines = [
            f"ADNI download OK: {len(self.subjects)} subjects, {self.n_images} T1 images "
            f"({n_dicom} DICOM series, {self.n_images - n_dicom} NIfTI) will be converted",
            f"  images: {self.adni_dir}",
            f"  clinical: {self.clinical_dir} ({csvs})",
        ]
        lines += [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)


# --------------------------------------------------------------------------- CSV discovery


def find_clinical_csv(clinical_dir: Path, name: str) -> list[Path]:
    """Every file Clinica's ``load_clinical_csv`` would match for ``name`` (it needs exactly 1).

    Same rule as Clinica: searched recursively, hidden files skipped, the name optionally
    followed by a LONI download date (``_12Mar2024``), matched with ``re.search``.
    """
    pattern = re.compile(name + r"(_\d{1,2}[A-Za-z]{3}\d{4})?.csv")
    return sorted(f for f in Path(clinical_dir).rglob("[!.]*.csv") if pattern.search(f.name))


def _load_csvs(
    clinical_dir: Path, problems: list[str]
) -> tuple[dict[str, pd.DataFrame], dict[str, Path]]:
    """Load each required CSV (or record why not), then check its columns."""
    frames: dict[str, pd.DataFrame] = {}
    paths: dict[str, Path] = {}
    for key, req in CSV_REQUIREMENTS.items():
        names = [req.name] + ([req.fallback] if req.fallback else [])
        found: list[Path] = []
        for candidate in names:
            found = find_clinical_csv(clinical_dir, candidate)
            if found:
                break
        if not found:
            problems.append(
                f"{req.name}.csv is missing from {clinical_dir}: "
                + _HOW_TO_GET_CSV.format(name=req.name)
            )
            continue
        if len(found) > 1:
            problems.append(
                f"{len(found)} files in {clinical_dir} match {req.name}.csv "
                f"({', '.join(str(p) for p in found)}): Clinica needs exactly one, "
                "keep only the latest download"
            )
            continue
        try:
            frame = pd.read_csv(found[0], sep=",", low_memory=False)
        except Exception as exc:  # noqa: BLE001 - any parse error is a user-facing problem
            problems.append(f"{found[0]} cannot be read as CSV ({exc}); re-download it")
            continue
        missing = []
        for col, why in req.columns.items():
            alternatives = req.alternatives.get(col, ())
            if col not in frame.columns and not any(a in frame.columns for a in alternatives):
                alt = f" (or {' / '.join(alternatives)})" if alternatives else ""
                missing.append(f"'{col}'{alt} [{why}]")
        if missing:
            problems.append(
                f"{found[0].name} lacks column(s) {', '.join(missing)}: Clinica 0.12 reads "
                "them; re-download the full table from LONI IDA (not a trimmed export)"
            )
        # Kept even when incomplete, so the image checks still run if selection can.
        frames[key] = frame
        paths[key] = found[0]
    return frames, paths


# --------------------------------------------------------------------------- value checks


def _is_iso_date(value: object) -> bool:
    try:
        dt.datetime.strptime(str(value), "%Y-%m-%d")
    except ValueError:
        return False
    return True


def _examples(values: Iterable[object], n: int = 5) -> str:
    vals = sorted({str(v) for v in values})
    more = f" (+{len(vals) - n} more)" if len(vals) > n else ""
    return ", ".join(vals[:n]) + more


def _check_adnimerge_values(merge: pd.DataFrame, subjects: list[str], problems: list[str]) -> None:
    """Values that make Clinica crash or silently mangle the clinical tables.

    Only columns that are present are checked; missing ones were reported already.
    """
    cols = set(merge.columns)
    ptids = merge["PTID"].astype(str)
    bad_ptid = ptids[~ptids.str.fullmatch(PTID_RE)]
    if len(bad_ptid):
        problems.append(
            f"ADNIMERGE PTID values not of the form 000_S_0000 ({_examples(bad_ptid)}): "
            "Clinica's participants.tsv step raises on them; fix or drop those rows"
        )
    # sessions.tsv rows are keyed by the last 4 digits of the PTID (the RID).
    good = pd.Series(ptids[ptids.str.fullmatch(PTID_RE)].unique())
    clash = good.groupby(good.str[-4:]).filter(lambda s: len(s) > 1)
    if len(clash):
        problems.append(
            f"PTIDs sharing the same 4-digit RID ({_examples(clash)}): Clinica keys "
            "sessions.tsv by RID and would mix their visits; RIDs must be unique"
        )
    mine = merge[ptids.isin(subjects)]
    if mine.empty:
        return
    for col in ("ORIGPROT", "COLPROT"):
        if col not in cols:
            continue
        bad = mine[~mine[col].isin(STUDIES)]
        if len(bad):
            problems.append(
                f"ADNIMERGE {col} has values Clinica does not know ({_examples(bad[col])}) "
                f"for {_examples(bad['PTID'])}: expected one of {sorted(STUDIES)}"
            )
    viscodes = mine["VISCODE"].astype(str) if "VISCODE" in cols else pd.Series(dtype=str)
    bad = mine[~viscodes.str.fullmatch(VISCODE_RE)] if "VISCODE" in cols else mine.iloc[0:0]
    if len(bad):
        problems.append(
            f"ADNIMERGE VISCODE values Clinica cannot map to a session ({_examples(bad.VISCODE)}"
            f" for {_examples(bad.PTID)}): expected 'bl' or 'm<months>'"
        )
    for col in ("EXAMDATE", "EXAMDATE_bl"):
        if col not in cols:
            continue
        bad = mine[~mine[col].map(_is_iso_date)]
        if len(bad):
            problems.append(
                f"ADNIMERGE {col} not in YYYY-MM-DD form ({_examples(bad[col])} for "
                f"{_examples(bad.PTID)}): Clinica parses it with '%Y-%m-%d'"
            )
    dx = mine["DX"].dropna() if "DX" in cols else pd.Series(dtype=str)
    bad_dx = dx[~dx.isin(DX_VALUES)]
    if len(bad_dx):
        problems.append(
            f"ADNIMERGE DX has values other than CN/MCI/Dementia ({_examples(bad_dx)}): Clinica "
            "then leaves the whole sessions.tsv diagnosis column unconverted"
        )


# --------------------------------------------------------------------------- T1 selection


def _visit_name(study: str, viscode: str) -> str:
    """LONI visit name Clinica expects for an ADNIMERGE visit (``_get_preferred_visit_name``)."""
    month = 0 if viscode == "bl" else int(viscode[1:])
    if study == "ADNI3":
        return "ADNI Screening" if viscode == "bl" else f"ADNI3 Year {month / 12} Visit"
    if study == "ADNI2":
        special = {
            "bl": "ADNI2 Screening MRI-New Pt",
            "m03": "ADNI2 Month 3 MRI-New Pt",
            "m06": "ADNI2 Month 6-New Pt",
        }
        return special.get(viscode, f"ADNI2 Year {month / 12} Visit")
    if study == "ADNIGO" and viscode == "bl":
        return "ADNIGO Screening MRI"
    if viscode == "bl":
        return "ADNI Screening"
    if viscode == "m03":
        return "ADNIGO Month 3 MRI"
    return f"ADNI{'1/' if month < 54 else ''}GO Month {month}"


def _days(a: str, b: str) -> int:
    fmt = "%Y-%m-%d"
    return abs((dt.datetime.strptime(b, fmt) - dt.datetime.strptime(a, fmt)).days)


def _closest_visit(scan_date: str, pending: list[pd.Series]) -> pd.Series | None:
    """Clinica's ``_get_closest_visit``: nearest EXAMDATE, with its >90-day tie rule."""
    if not pending:
        return None
    if len(pending) == 1:
        return pending[0]
    diffs = [_days(scan_date, v.EXAMDATE) for v in pending]
    order = np.argsort(diffs)
    closest, second = pending[order[0]], pending[order[1]]
    if diffs[order[0]] > 90:
        fmt = "%Y-%m-%d"
        c, s, d = (
            dt.datetime.strptime(x, fmt) for x in (closest.EXAMDATE, scan_date, second.EXAMDATE)
        )
        if c > s > d:
            gap = _days(closest.EXAMDATE, second.EXAMDATE)
            if abs(gap / 2.0 - _days(scan_date, closest.EXAMDATE)) < 30:
                return second
    return closest


def _visits_to_timepoints(
    meta_subj: pd.DataFrame, merge_subj: pd.DataFrame
) -> dict[tuple[str, str, str], str]:
    """Map (VISCODE, COLPROT, ORIGPROT) -> LONI visit name, as ``visits_to_timepoints`` does."""
    meta_subj = meta_subj[meta_subj.Visit != "ADNI Baseline"]
    unique_visits = list(meta_subj.Visit.unique())
    visits: dict[tuple[str, str, str], str] = {}
    pending: list[pd.Series] = []
    for _, row in merge_subj.iterrows():
        name = _visit_name(row.ORIGPROT, row.VISCODE)
        if name in unique_visits:
            visits.setdefault((row.VISCODE, row.COLPROT, row.ORIGPROT), name)
            unique_visits.remove(name)
            continue
        pending.append(row)
    for name in unique_visits:
        image = meta_subj[meta_subj.Visit == name].iloc[0]
        closest = _closest_visit(str(image.ScanDate), pending)
        if closest is not None:
            visits.setdefault((closest.VISCODE, closest.COLPROT, closest.ORIGPROT), name)
    return visits


def _no_qc_pick(scans: pd.DataFrame) -> pd.Series:
    """First scan whose sequence is not a repeat (``_select_scan_no_qc``)."""
    keep = scans[~scans.Sequence.str.contains("repeat", case=False, na=False)]
    return (keep if not keep.empty else scans).iloc[0]


def _qc_pick(scans: pd.DataFrame, mayo_subj: pd.DataFrame, preferred: float) -> pd.Series | None:
    """``_select_scan_from_qc``: Mayo QC for 3 T, first non-repeat otherwise.

    Returns None where Clinica 0.12 would crash (every 3 T candidate rejected by QC).
    """
    multiple = scans.MagStrength.nunique() > 1
    others = scans[scans.MagStrength != preferred] if multiple else None
    if multiple:
        scans = scans[scans.MagStrength == preferred]
    if scans.MagStrength.unique()[0] == 3.0:
        ids = scans.ImageUID.unique()
        qc = mayo_subj[mayo_subj.loni_image.isin([f"I{i}" for i in ids])]
        if not qc.empty:
            selected = None
            if np.sum(qc.series_selected) == 1:
                selected = qc[qc.series_selected == 1].iloc[0].loni_image[1:]
            else:
                ok = qc[qc.series_quality < 4]
                if ok.empty:
                    no_qc = set(int(i) for i in ids) - {int(x[1:]) for x in qc.loni_image.unique()}
                    if no_qc:
                        return _no_qc_pick(scans[scans.ImageUID.isin(list(no_qc))])
                else:
                    quality = [q if q > 0 else 4 for q in ok.series_quality]
                    best = np.amin(quality)
                    best = -1 if best == 4 else best
                    best_rows = ok[ok.series_quality == best]
                    if len(best_rows) == 1:
                        selected = best_rows.iloc[0].loni_image[1:]
                    else:
                        best_ids = [int(x[1:]) for x in best_rows.loni_image.unique()]
                        return _no_qc_pick(scans[scans.ImageUID.isin(best_ids)])
            if not selected and multiple:
                scans = others
            elif not selected:
                return None
            else:
                return scans[scans.ImageUID == int(selected)].iloc[0]
    return _no_qc_pick(scans)


def _select_visit(
    cohort: str,
    visit_name: str,
    meta_subj: pd.DataFrame,
    quality_subj: pd.DataFrame,
    mayo_subj: pd.DataFrame,
) -> tuple[pd.Series | None, bool, str | None]:
    """The scan Clinica picks for one visit: (row, is_original, crash reason or None)."""
    if cohort in ("ADNI1", "ADNIGO", "ADNI2"):
        preferred = 1.5 if cohort == "ADNI1" else 3.0

        def passes(row: pd.Series) -> bool:
            qc = quality_subj[quality_subj.LONIUID == f"S{row.SeriesID}"]
            return qc.empty or qc.iloc[0].PASS == 1

        meta = meta_subj[meta_subj.apply(passes, axis=1)] if len(meta_subj) else meta_subj
        in_visit = meta[(meta["Orig/Proc"] == "Processed") & (meta.Visit == visit_name)]
        processed = in_visit[in_visit.Sequence.str.endswith("Scaled", na=False)]
        if processed.empty:
            processed = in_visit[in_visit.Sequence.str.endswith("N3m", na=False)]
        if not processed.empty:
            if processed.MagStrength.nunique() > 1:
                processed = processed[processed.MagStrength == preferred]
            return processed.sort_values("SeriesID").iloc[0], False, None
        orig = meta[(meta["Orig/Proc"] == "Original") & (meta.Visit == visit_name)]
        seq = orig.Sequence
        mprage = seq.str.contains(
            "mprage|mp-rage|mp rage", case=False, na=False
        ) & ~seq.str.contains("2", na=False)
        spgr = seq.str.contains("spgr", case=False, na=False) & ~seq.str.contains(
            "acc", case=False, na=False
        )
        candidates = orig[mprage | spgr]
    elif cohort == "ADNI3":
        preferred = 3.0
        orig = meta_subj[(meta_subj["Orig/Proc"] == "Original") & (meta_subj.Visit == visit_name)]
        seq = orig.Sequence
        candidates = orig[
            seq.str.contains("accel", case=False, na=False)
            & ~seq.str.lower().str.endswith("_nd", na=False)
        ]
    else:
        return None, True, None
    if candidates.empty:
        return None, True, None
    pick = _qc_pick(candidates, mayo_subj, preferred)
    if pick is None:
        return None, True, "every 3 T candidate is rejected by the Mayo QC (Clinica crashes)"
    return pick, True, None


def select_t1_scans(
    frames: dict[str, pd.DataFrame], subjects: Iterable[str]
) -> tuple[pd.DataFrame, list[str]]:
    """The T1 scans Clinica 0.12 would convert, one row per (subject, visit).

    ``frames`` holds ADNIMERGE, MPRAGEMETA, MRIQUALITY and MAYOADIRL_MRI_IMAGEQC_05_07_15.
    Returns the table (Clinica's ``t1_paths.tsv`` columns, without the path) and crash reasons.
    """
    merge = frames["ADNIMERGE"]
    meta = frames["MPRAGEMETA"]
    quality = frames["MRIQUALITY"]
    mayo = frames["MAYOADIRL_MRI_IMAGEQC_05_07_15"]
    mayo = mayo[mayo.series_type == "T1"]
    merge_by = dict(tuple(merge.groupby("PTID")))
    meta_by = dict(tuple(meta.groupby("SubjectID")))
    quality_by = dict(tuple(quality.groupby("RID")))
    mayo_by = dict(tuple(mayo.groupby("RID")))
    rows: list[dict[str, Any]] = []
    crashes: list[str] = []
    for subject in subjects:
        rid = int(subject[-4:])
        merge_subj = merge_by.get(subject, merge.iloc[0:0]).sort_values("EXAMDATE")
        meta_subj = meta_by.get(subject, meta.iloc[0:0]).sort_values("ScanDate")
        quality_subj = quality_by.get(rid, quality.iloc[0:0])
        mayo_subj = mayo_by.get(rid, mayo.iloc[0:0])
        try:
            timepoints = _visits_to_timepoints(meta_subj, merge_subj)
            for (viscode, cohort, _orig), visit_name in timepoints.items():
                scan, original, crash = _select_visit(
                    cohort, visit_name, meta_subj, quality_subj, mayo_subj
                )
                if crash:
                    crashes.append(f"{subject} visit {viscode} ('{visit_name}'): {crash}")
                if scan is None or (subject, viscode) in KNOWN_CONVERSION_ERRORS:
                    continue
                rows.append(
                    {
                        "Subject_ID": subject,
                        "VISCODE": viscode,
                        "Visit": visit_name,
                        "Sequence": scan.Sequence,
                        "Scan_Date": scan.ScanDate,
                        "Study_ID": str(scan.StudyID),
                        "Series_ID": str(scan.SeriesID),
                        "Image_ID": str(scan.ImageUID),
                        "Field_Strength": scan.MagStrength,
                        "Original": original,
                    }
                )
        except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
            crashes.append(
                f"{subject}: Clinica's T1 selection would fail on this subject's ADNIMERGE/"
                f"MPRAGEMETA rows ({type(exc).__name__}: {exc}); fix the values named above"
            )
    columns = [
        "Subject_ID",
        "VISCODE",
        "Visit",
        "Sequence",
        "Scan_Date",
        "Study_ID",
        "Series_ID",
        "Image_ID",
        "Field_Strength",
        "Original",
    ]
    return pd.DataFrame(rows, columns=columns), crashes


# --------------------------------------------------------------------------- images on disk


def _index_images(subject_dir: Path) -> dict[str, list[Path]]:
    """Image UID -> files under a subject folder, by the ``_I<uid>.`` in the name."""
    index: dict[str, list[Path]] = {}
    for path in subject_dir.rglob("*"):
        match = IMAGE_UID_RE.search(path.name)
        if match and path.is_file():
            index.setdefault(match.group(1), []).append(path)
    return index


def _session_id(viscode: str) -> str:
    return "ses-M000" if viscode in ("bl", "m0") else f"ses-M{int(viscode[1:]):03d}"


# --------------------------------------------------------------------------- entry points


def check_adni_download(adni_dir: Path, clinical_dir: Path) -> AdniCheckReport:
    """Check an ADNI download against what ``clinica convert adni-to-bids -m T1`` 0.12 reads.

    Verifies the six clinical CSVs (present once, with every column Clinica reads, with values
    it can parse), re-runs Clinica's T1 selection, and checks every selected image is on disk
    (a file named ``*_I<ImageUID>.*`` below ``<adni_dir>/<PTID>/``). All problems are collected
    and raised together as :class:`AdniDownloadError`; otherwise returns the report, whose
    ``images`` table lists the BIDS T1w files the conversion will produce.
    """
    adni_dir = Path(adni_dir)
    clinical_dir = Path(clinical_dir)
    problems: list[str] = []
    warnings: list[str] = []
    if not adni_dir.is_dir():
        problems.append(f"image directory {adni_dir} does not exist (expected <dir>/<PTID>/...)")
    if not clinical_dir.is_dir():
        problems.append(f"clinical directory {clinical_dir} does not exist")
    if problems:
        raise AdniDownloadError(problems, adni_dir, clinical_dir)

    frames, paths = _load_csvs(clinical_dir, problems)
    folders = sorted(p.name for p in adni_dir.iterdir() if p.is_dir())
    subjects = [f for f in folders if PTID_RE.fullmatch(f)]
    ignored = [f for f in folders if not PTID_RE.fullmatch(f)]
    if ignored:
        warnings.append(
            f"folders ignored by Clinica (not named like 000_S_0000): {_examples(ignored)}"
        )
    if not subjects:
        problems.append(
            f"no subject folder in {adni_dir}: Clinica converts <adni_dir>/<PTID>/... with PTID "
            "like 011_S_0002; point it at the 'ADNI' folder of the unzipped download"
        )

    images = pd.DataFrame()
    merge = frames.get("ADNIMERGE")
    if merge is not None and "PTID" in merge.columns:
        known = set(merge["PTID"].astype(str))
        orphans = [s for s in subjects if s not in known]
        if orphans:
            problems.append(
                f"subject folder(s) without ADNIMERGE rows ({_examples(orphans)}): Clinica skips "
                "them; use an ADNIMERGE.csv that covers every downloaded subject"
            )
        subjects = [s for s in subjects if s in known]
        _check_adnimerge_values(merge, subjects, problems)
        dxsum = frames.get("DXSUM_PDXCONV_ADNIALL")
        mine = merge[merge["PTID"].isin(subjects)]
        adni3 = "ORIGPROT" in mine.columns and (mine["ORIGPROT"] == "ADNI3").any()
        if dxsum is not None and adni3:
            if "DIAGNOSIS" not in dxsum.columns:
                problems.append(
                    f"{paths['DXSUM_PDXCONV_ADNIALL'].name} lacks column 'DIAGNOSIS', which "
                    "Clinica reads for ADNI3 subjects' diagnosis_sc; re-download DXSUM"
                )
        selection_ready = all(
            key in frames and set(cols) <= set(frames[key].columns)
            for key, cols in SELECTION_COLUMNS.items()
        )
        if selection_ready:
            selected, crashes = select_t1_scans(frames, subjects)
            problems.extend(crashes)
            images = _locate_images(selected, adni_dir, subjects, problems, warnings)

    if problems:
        raise AdniDownloadError(problems, adni_dir, clinical_dir)
    return AdniCheckReport(
        adni_dir=adni_dir,
        clinical_dir=clinical_dir,
        csv_files=paths,
        subjects=subjects,
        images=images,
        warnings=warnings,
    )


def _locate_images(
    selected: pd.DataFrame,
    adni_dir: Path,
    subjects: list[str],
    problems: list[str],
    warnings: list[str],
) -> pd.DataFrame:
    """Find each selected image on disk the way Clinica does; record what is missing."""
    out = selected.copy()
    is_dicom: list[bool] = []
    found_paths: list[str] = []
    for subject in subjects:
        if subject not in set(selected.Subject_ID):
            problems.append(
                f"{subject}: Clinica selects no T1 for any visit (no MPRAGEMETA row for this "
                "subject matching its ADNIMERGE visits, or all failed QC), so the subject would "
                "be missing from BIDS; check MPRAGEMETA.csv covers it"
            )
    indexes = {s: _index_images(adni_dir / s) for s in set(selected.Subject_ID)}
    for _, row in selected.iterrows():
        files = indexes[row.Subject_ID].get(row.Image_ID, [])
        if not files:
            kind = "original" if row.Original else "processed"
            hint = (
                ""
                if row.Original
                else " (for ADNI1/GO/2 visits Clinica prefers the processed '...N3; Scaled' or "
                "'...N3m' image when MPRAGEMETA lists one: download it too, or drop those "
                "Processed rows from MPRAGEMETA.csv)"
            )
            problems.append(
                f"{row.Subject_ID} visit {row.VISCODE} ('{row.Visit}'): Clinica selects {kind} "
                f"T1 image I{row.Image_ID} (series S{row.Series_ID}, '{row.Sequence}') but no "
                f"file named *_I{row.Image_ID}.* exists under {adni_dir / row.Subject_ID}; "
                f"download image ID {row.Image_ID} from LONI IDA into {adni_dir}{hint}"
            )
            is_dicom.append(False)
            found_paths.append("")
            continue
        dicoms = [f for f in files if "dcm" in f.suffix]
        if dicoms and len(dicoms) != len(files):
            warnings.append(
                f"{row.Subject_ID} I{row.Image_ID}: both DICOM and other files carry this image "
                "UID; Clinica uses whichever it finds first"
            )
        first = files[0]
        dicom = "dcm" in first.suffix
        is_dicom.append(dicom)
        found_paths.append(str(first.parent if dicom else first))
    out["Is_Dicom"] = is_dicom
    out["Path"] = found_paths
    out["participant_id"] = ["sub-ADNI" + s.replace("_", "") for s in out.Subject_ID]
    out["session_id"] = [_session_id(v) for v in out.VISCODE]
    return out.reset_index(drop=True)


def run_check(adni_dir: Path | str, clinical_dir: Path | str, stream: IO[str] | None = None) -> int:
    """Run the check for a command line: print the summary or every problem; 0 = ready."""
    stream = stream or sys.stdout
    try:
        report = check_adni_download(Path(adni_dir), Path(clinical_dir))
    except AdniDownloadError as err:
        print(str(err), file=stream)
        return 1
    print(str(report), file=stream)
    return 0
