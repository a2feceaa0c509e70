"""Snakemake script of rule `study_template`: a template from the TRAINING scans only."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))  # noqa: F821

from earlyad.logs import log_to  # noqa: E402

log_to(snakemake.log[0])  # noqa: F821

from earlyad.preprocess.stages import study_template_stage  # noqa: E402

sm = snakemake  # noqa: F821
study_template_stage(
    [Path(p) for p in sm.input.scans],
    Path(sm.output.template),
    Path(sm.input.initial),
    Path(sm.input.mask),
    sm.params.iterations,
    sm.params.max_images,
    sm.params.seed,
    sm.threads,
)
