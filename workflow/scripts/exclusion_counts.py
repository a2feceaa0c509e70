"""Snakemake script of rule `exclusion_counts`: excluded scans counted by stage and reason, no
identifiers (shown in every report, shareable or not)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))  # noqa: F821

from earlyad.logs import log_to  # noqa: E402

log_to(snakemake.log[0])  # noqa: F821

from earlyad.deidentify import exclusion_counts  # noqa: E402
from earlyad.tables import read_tsv, write_tsv  # noqa: E402

sm = snakemake  # noqa: F821
tables = {name: read_tsv(sm.input[name]) for name in ("labels", "splits", "qc")}
write_tsv(exclusion_counts(tables), Path(sm.output.counts))
