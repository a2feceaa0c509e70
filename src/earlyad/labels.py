"""Build the per-scan label table from a BIDS dataset (as Clinica's converters write it).

The label of a scan is the diagnosis AT THAT VISIT (``sub-*/sub-*_sessions.tsv`` column
``diagnosis``), never the baseline diagnosis copied onto follow-ups (REFERENCE.md, defect 3).
Every scan that cannot be labelled is listed in the exclusions table with its reason.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from earlyad import CLASSES
from earlyad.tables import LABEL_COLUMNS, exclusions_frame

#: The mapping of ADNI diagnosis codes to the three classes (REFERENCE.md, Task).
DEFAULT_DIAGNOSIS_MAP: dict[str, str] = {
    "CN": "CN",
    "MCI": "MCI",
    "EMCI": "MCI",
    "LMCI": "MCI",
    "AD": "AD",
    "Dementia": "AD",
}

#: participants.tsv columns that may hold the baseline diagnosis (Clinica: diagnosis_sc).
BASELINE_DX_COLUMNS: tuple[str, ...] = ("diagnosis_sc", "diagnosis_bl", "diagnosis")
#: Session names that denote the baseline visit.
BASELINE_SESSIONS: tuple[str, ...] = ("ses-M000", "ses-M00", "ses-M0", "ses-bl", "ses-BL")

STAGE = "labels"
_EMPTY = {"", "nan", "None", "n/a", "NA"}


class BidsError(ValueError):
    """The BIDS directory cannot be read as a labelled dataset."""


@dataclass
class LabelResult:
    """The label table (one row per usable scan) and the exclusions (one row per dropped scan)."""

    labels: pd.DataFrame
    exclusions: pd.DataFrame
    notes: list[str] = field(default_factory=list)


def map_diagnosis(raw: object, mapping: Mapping[str, str] = DEFAULT_DIAGNOSIS_MAP) -> str | None:
    """Map an ADNI diagnosis code to CN/MCI/AD, or ``None`` when it has no class.

    Matching ignores case and surrounding spaces, so ``"dementia "`` maps like ``"Dementia"``.
    """
    if raw is None or (isinstance(raw, float) and math.isnan(raw)):
        return None
    text = str(raw).strip()
    if text == "" or text.lower() in {"n/a", "na", "nan"}:
        return None
    folded = {k.strip().lower(): v for k, v in mapping.items()}
    return folded.get(text.lower())


def normalise_sex(raw: object) -> str:
    """M/F from the spellings BIDS datasets use (M, F, Male, Female, 1/2 as in ADNI PTGENDER)."""
    text = str(raw).strip().lower()
    if text in {"m", "male", "1"}:
        return "M"
    if text in {"f", "female", "2"}:
        return "F"
    return "n/a"


def session_months(session_id: str) -> float | None:
    """Months since baseline encoded in a Clinica session id (``ses-M012`` -> 12)."""
    match = re.fullmatch(r"ses-M(\d+)", session_id)
    if match:
        return float(match.group(1))
    if session_id in BASELINE_SESSIONS:
        return 0.0
    return None


def find_t1(bids_dir: Path, participant_id: str, session_id: str) -> Path | None:
    """The T1w image of a session (first run when there are several), or ``None``."""
    anat = bids_dir / participant_id / session_id / "anat"
    if not anat.is_dir():
        return None
    hits = sorted(anat.glob(f"{participant_id}_{session_id}*_T1w.nii*"))
    return hits[0] if hits else None


def _read_participants(bids_dir: Path) -> pd.DataFrame:
    path = bids_dir / "participants.tsv"
    if not path.exists():
        raise BidsError(
            f"'{path}' is missing: a BIDS dataset needs participants.tsv "
            "(participant_id, sex and ideally age_bl)"
        )
    df = pd.read_csv(path, sep="\t", dtype=str)
    if "participant_id" not in df.columns:
        raise BidsError(f"'{path}' has no participant_id column")
    return df.set_index("participant_id", drop=False)


def _float_or_nan(value: object) -> float:
    try:
        out = float(str(value))
    except (TypeError, ValueError):
        return math.nan
    return out


def _age(session_row: Mapping[str, object], participant: Mapping[str, object], ses: str) -> float:
    """Age at the visit: sessions.tsv ``age``, else participants ``age_bl`` plus the months."""
    age = _float_or_nan(session_row.get("age"))
    if not math.isnan(age):
        return round(age, 2)
    age_bl = _float_or_nan(participant.get("age_bl", participant.get("age")))
    months = session_months(ses)
    if math.isnan(age_bl) or months is None:
        return math.nan
    return round(age_bl + months / 12.0, 2)


def _subject_sessions(bids_dir: Path, participant_id: str) -> list[str]:
    return sorted(p.name for p in (bids_dir / participant_id).glob("ses-*") if p.is_dir())


def _baseline_session(sessions: list[str]) -> str | None:
    for name in BASELINE_SESSIONS:
        if name in sessions:
            return name
    timed = [(session_months(s), s) for s in sessions if session_months(s) is not None]
    return min(timed)[1] if timed else None


def _read_sessions(bids_dir: Path, participant_id: str) -> pd.DataFrame | None:
    path = bids_dir / participant_id / f"{participant_id}_sessions.tsv"
    if not path.exists():
        return None
    df = pd.read_csv(path, sep="\t", dtype=str)
    if "session_id" not in df.columns:
        raise BidsError(f"'{path}' has no session_id column")
    if "diagnosis" not in df.columns:
        raise BidsError(
            f"'{path}' has no diagnosis column: the label of a scan is the diagnosis at its "
            "visit; add a diagnosis column (CN/MCI/AD or ADNI codes) to every sessions.tsv"
        )
    return df


def build_label_table(
    bids_dir: Path, diagnosis_map: Mapping[str, str] = DEFAULT_DIAGNOSIS_MAP
) -> LabelResult:
    """One row per labelled scan, plus an exclusions row for every scan that cannot be used.

    Args:
        bids_dir: the BIDS root (``participants.tsv`` and ``sub-*`` folders).
        diagnosis_map: ADNI code -> class; codes absent from it (e.g. SMC) are excluded.
    """
    bids_dir = Path(bids_dir)
    if not bids_dir.is_dir():
        raise BidsError(f"BIDS directory '{bids_dir}' does not exist")
    participants = _read_participants(bids_dir)
    subjects = sorted(p.name for p in bids_dir.glob("sub-*") if p.is_dir())
    if not subjects:
        raise BidsError(f"'{bids_dir}' holds no sub-* folders: is it a BIDS dataset?")
    rows: list[dict[str, object]] = []
    excluded: list[dict[str, str]] = []

    def exclude(pid: str, ses: str, reason: str) -> None:
        excluded.append(
            {"participant_id": pid, "session_id": ses, "stage": STAGE, "reason": reason}
        )

    for pid in subjects:
        participant = participants.loc[pid].to_dict() if pid in participants.index else {}
        sex = normalise_sex(participant.get("sex", "n/a"))
        on_disk = _subject_sessions(bids_dir, pid)
        sessions = _read_sessions(bids_dir, pid)
        if sessions is None:
            sessions = _fallback_sessions(pid, on_disk, participant, exclude)
        else:
            for ses in sorted(set(on_disk) - set(sessions["session_id"])):
                exclude(pid, ses, "session not listed in sessions.tsv, so it has no diagnosis")
        for record in sessions.to_dict("records"):
            ses = str(record["session_id"])
            raw = record.get("diagnosis")
            dx = map_diagnosis(raw, diagnosis_map)
            if ses not in on_disk:
                continue  # a clinical-only visit (Clinica lists every ADNIMERGE visit): no scan
            image = find_t1(bids_dir, pid, ses)
            if image is None:
                exclude(pid, ses, "no T1w image in the session's anat folder")
                continue
            if dx is None:
                shown = "empty" if raw is None or str(raw).strip() in {"", "nan"} else repr(raw)
                exclude(
                    pid,
                    ses,
                    f"diagnosis {shown} maps to no class (add it to labels.diagnosis_map "
                    "if it should)",
                )
                continue
            rows.append(
                {
                    "participant_id": pid,
                    "session_id": ses,
                    "diagnosis": dx,
                    "label": CLASSES.index(dx),
                    "age": _age(record, participant, ses),
                    "sex": sex,
                    "raw_diagnosis": str(raw).strip(),
                    "image_path": str(image),
                }
            )
    labels = pd.DataFrame(rows, columns=LABEL_COLUMNS)
    labels = labels.sort_values(["participant_id", "session_id"]).reset_index(drop=True)
    return LabelResult(labels=labels, exclusions=exclusions_frame(excluded))


def _fallback_sessions(
    pid: str, on_disk: list[str], participant: Mapping[str, object], exclude
) -> pd.DataFrame:
    """Sessions for a subject without sessions.tsv: baseline only, from participants.tsv.

    A baseline diagnosis says nothing about later visits, so follow-ups are excluded rather
    than labelled with it (REFERENCE.md, defect 3).
    """
    baseline = _baseline_session(on_disk)
    dx_col = next(
        (c for c in BASELINE_DX_COLUMNS if str(participant.get(c, "")).strip() not in _EMPTY), None
    )
    records = []
    for ses in on_disk:
        if ses == baseline and dx_col is not None:
            records.append({"session_id": ses, "diagnosis": participant.get(dx_col)})
        elif ses == baseline:
            exclude(pid, ses, "no sessions.tsv and no baseline diagnosis in participants.tsv")
        else:
            exclude(
                pid,
                ses,
                "no sessions.tsv: participants.tsv's baseline diagnosis applies to the "
                "baseline session only",
            )
    return pd.DataFrame(records, columns=["session_id", "diagnosis"])
