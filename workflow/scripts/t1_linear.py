"""Snakemake script of rule `t1_linear`: one scan, native or Clinica backend."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))  # noqa: F821

from earlyad.logs import log_to  # noqa: E402

log_to(snakemake.log[0])  # noqa: F821

from earlyad.preprocess.stages import t1_linear_stage  # noqa: E402

sm = snakemake  # noqa: F821
t1_linear_stage(
    Path(sm.input.image),
    sm.wildcards.participant_id,
    sm.wildcards.session_id,
    Path(sm.output[0]),
    Path(sm.input.mni).parent,
    sm.params.backend,
    sm.params.seed,
    sm.threads,
    sm.params.on_bad_scan,
)
