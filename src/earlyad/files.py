"""File helpers shared by the stages."""

from __future__ import annotations

import hashlib
from pathlib import Path

_CHUNK = 1 << 20


def sha256_of(path: Path | str) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks (templates and caches can be large).

    One function for every content hash the pipeline records (template checksums, the study
    template's input manifest, the training resume key), so they always agree.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()
