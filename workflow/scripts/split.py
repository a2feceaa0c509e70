"""Snakemake script of rule `split`: subject-level manifests, balance tests and the cohort plot."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))  # noqa: F821

from earlyad.logs import log_to  # noqa: E402

log_to(snakemake.log[0])  # noqa: F821

from earlyad.splits import SplitConfig  # noqa: E402
from earlyad.stages import run_split  # noqa: E402

params = snakemake.params  # noqa: F821
config = SplitConfig(
    fractions=params.fractions,
    seed=params.seed,
    baseline_only_eval=params.baseline_only_eval,
    balance_alpha=params.balance_alpha,
)
run_split(
    Path(snakemake.input.labels),  # noqa: F821
    Path(snakemake.output.train).parent,  # noqa: F821
    config,
    params.manifests,
)
