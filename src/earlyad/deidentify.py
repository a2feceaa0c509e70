"""What may leave the group: identifier scrubbing and de-identified aggregates.

ADNI's data use agreement forbids passing on subject-level data. A report made with
``report.shareable: true`` therefore leaves out every table that lists scans by subject and every
picture of one subject's brain (see ``private_report`` in ``workflow/rules/common.smk``), and
shows aggregates instead, such as :func:`exclusion_counts`. :func:`find_identifiers` is what the
tests use to prove that a shareable report names nobody.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import pandas as pd

#: Identifier shapes, each with its stand-in: BIDS subjects (``sub-ADNI002S0295``) and sessions,
#: ADNI PTIDs (``002_S_0295``), ADNI image ids (``I118671``) and file paths (which hold them).
IDENTIFIERS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\S*/\S*"), "<path>"),
    (re.compile(r"sub-[A-Za-z0-9]+"), "<subject>"),
    (re.compile(r"ses-[A-Za-z0-9]+"), "<session>"),
    (re.compile(r"\b\d{3}_S_\d{4}\b"), "<subject>"),
    (re.compile(r"\bI\d{4,}\b"), "<image>"),
)
#: Subject identifiers in any text: what a shareable report must not contain.
SUBJECT_ID = re.compile(r"sub-ADNI[A-Za-z0-9]+|\d{3}_S_\d{4}")
#: A QC failure names the measured value ("ncc 0.381 < 0.5"); the value is per scan.
_MEASURED = re.compile(r"\b([A-Za-z_]+) -?[0-9][0-9.eE+-]* <")


def scrub(text: str) -> str:
    """``text`` with identifiers, paths and per-scan measured values replaced by stand-ins."""
    text = _MEASURED.sub(r"\1 <", str(text))
    for pattern, stand_in in IDENTIFIERS:
        text = pattern.sub(stand_in, text)
    return text


def find_identifiers(text: str) -> list[str]:
    """Every ADNI-style subject identifier in ``text`` (BIDS ``sub-ADNI...`` or ``002_S_0295``)."""
    return SUBJECT_ID.findall(text)


def exclusion_counts(tables: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Scans and subjects left out, per table, stage and (scrubbed) reason.

    Args:
        tables: name -> exclusions table (``participant_id``, ``session_id``, ``stage``,
            ``reason``), e.g. ``{"labels": ..., "splits": ..., "qc": ...}``.

    Returns:
        Columns ``table``, ``stage``, ``reason``, ``scans``, ``subjects``; one row per table
        with ``stage`` ``-`` and 0 scans when it excluded nothing, so that "none" is explicit.
    """
    rows = []
    for name, df in tables.items():
        if not len(df):
            rows.append({"table": name, "stage": "-", "reason": "none", "scans": 0, "subjects": 0})
            continue
        grouped = df.assign(reason=df["reason"].fillna("").map(scrub)).groupby(
            ["stage", "reason"], sort=True
        )
        for (stage, reason), part in grouped:
            rows.append(
                {
                    "table": name,
                    "stage": stage,
                    "reason": reason,
                    "scans": len(part),
                    "subjects": part["participant_id"].nunique(),
                }
            )
    return pd.DataFrame(rows, columns=["table", "stage", "reason", "scans", "subjects"])
