"""Logging set-up for Snakemake scripts: everything a stage prints goes to the rule's log file."""

from __future__ import annotations

import logging
import sys
from pathlib import Path


def log_to(path: str | Path) -> logging.Logger:
    """Send stderr and the ``earlyad`` logger to ``path`` (Snakemake's ``log:`` file).

    Tracebacks of a failing stage then land in the log Snakemake shows with
    ``--show-failed-logs``, next to the progress lines.
    """
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    stream = open(path, "a", buffering=1)  # noqa: SIM115 - lives as long as the script
    sys.stderr = stream
    logging.basicConfig(
        stream=stream,
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        force=True,
    )
    return logging.getLogger("earlyad")
