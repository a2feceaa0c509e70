"""Snakemake script of rule `evaluate`: one run's metrics with subject-bootstrap intervals."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))  # noqa: F821

from earlyad.logs import log_to  # noqa: E402

log_to(snakemake.log[0])  # noqa: F821

from earlyad.evaluate.metrics import BootstrapConfig  # noqa: E402
from earlyad.evaluate.stage import RunOutputs, evaluate_run  # noqa: E402

sm = snakemake  # noqa: F821
evaluate_run(
    sm.wildcards.run,
    {"val": Path(sm.input.val), "test": Path(sm.input.test)},
    RunOutputs(
        metrics_json=Path(sm.output.metrics_json),
        metrics_tsv=Path(sm.output.metrics_tsv),
        confusion=Path(sm.output.confusion),
        radar=Path(sm.output.radar),
        roc=Path(sm.output.roc),
    ),
    BootstrapConfig(resamples=sm.params.bootstrap, seed=sm.params.seed, ci=sm.params.ci),
)
