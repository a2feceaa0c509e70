"""Snakemake script of rule `grid_summary`: one row per run, selection on validation only."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))  # noqa: F821

from earlyad.logs import log_to  # noqa: E402

log_to(snakemake.log[0])  # noqa: F821

from earlyad.tables import write_tsv  # noqa: E402
from earlyad.train.grid import summarise_grid  # noqa: E402

runs = snakemake.params.runs  # noqa: F821
table = summarise_grid(
    {run: Path(p) for run, p in zip(runs, snakemake.input.models, strict=True)},  # noqa: F821
    select_on=snakemake.params.select_on,  # noqa: F821
)
write_tsv(table, Path(snakemake.output.summary))  # noqa: F821
