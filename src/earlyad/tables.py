"""Column conventions and TSV I/O shared by every stage.

All tables are tab-separated with a header, read with ``dtype=str`` semantics for identifiers so
that ``ses-M006`` or ``002_S_0295`` never turn into numbers.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

#: One row per scan in the label table and the split manifests (ClinicaDL's first columns first).
LABEL_COLUMNS: list[str] = [
    "participant_id",
    "session_id",
    "diagnosis",
    "label",
    "age",
    "sex",
    "raw_diagnosis",
    "image_path",
]

#: One row per scan left out at any stage, with the stage and the reason.
EXCLUSION_COLUMNS: list[str] = ["participant_id", "session_id", "stage", "reason"]

ID_COLUMNS: dict[str, type] = {"participant_id": str, "session_id": str}


def read_tsv(path: Path | str) -> pd.DataFrame:
    """Read a TSV with identifier columns kept as strings."""
    return pd.read_csv(path, sep="\t", dtype=ID_COLUMNS, keep_default_na=True)


def write_tsv(df: pd.DataFrame, path: Path | str) -> None:
    """Write a TSV atomically (a temporary file renamed), so a crash never leaves half a table."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    df.to_csv(tmp, sep="\t", index=False, na_rep="n/a")
    tmp.replace(path)


def exclusions_frame(rows: list[dict[str, str]]) -> pd.DataFrame:
    """An exclusions table with the standard columns, even when empty."""
    return pd.DataFrame(rows, columns=EXCLUSION_COLUMNS)
