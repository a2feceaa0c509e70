"""Snakemake script of rule `labels`: the per-scan label table and its exclusions."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))  # noqa: F821

from earlyad.logs import log_to  # noqa: E402

log_to(snakemake.log[0])  # noqa: F821

from earlyad.stages import run_labels  # noqa: E402

run_labels(
    Path(snakemake.input.bids),  # noqa: F821
    Path(snakemake.output.labels),  # noqa: F821
    Path(snakemake.output.exclusions),  # noqa: F821
    snakemake.params.diagnosis_map,  # noqa: F821
)
