"""Snakemake script of rule `evaluation_summary`: grid summary with the chosen run's test
metrics, comparison with the study, training cost."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))  # noqa: F821

from earlyad.logs import log_to  # noqa: E402

log_to(snakemake.log[0])  # noqa: F821

from earlyad.evaluate.stage import SummaryOutputs, summarise_evaluation  # noqa: E402

sm = snakemake  # noqa: F821
runs = sm.params.runs


def per_run(paths: list[str]) -> dict[str, Path]:
    return {run: Path(p) for run, p in zip(runs, paths, strict=True)}


summarise_evaluation(
    Path(sm.input.grid),
    per_run(sm.input.metrics),
    per_run(sm.input.logs),
    per_run(sm.input.predictions),
    Path(sm.input.train),
    SummaryOutputs(
        grid=Path(sm.output.grid),
        comparison=Path(sm.output.comparison),
        comparison_plot=Path(sm.output.comparison_plot),
        training_cost=Path(sm.output.training_cost),
    ),
)
