"""Snakemake script of rule `normalize`: register, resample, standardize, cache one scan."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))  # noqa: F821

from earlyad.logs import log_to  # noqa: E402

log_to(snakemake.log[0])  # noqa: F821

from earlyad.preprocess.stages import normalize_stage  # noqa: E402

sm = snakemake  # noqa: F821
normalize_stage(
    Path(sm.input.t1_linear),
    Path(sm.input.template),
    Path(sm.input.mask),
    Path(sm.output[0]),
    sm.wildcards.participant_id,
    sm.wildcards.session_id,
    register=sm.params.template == "study",
    voxel_size=sm.params.voxel_size,
    intensity=sm.params.intensity,
    percentiles=sm.params.percentiles,
    seed=sm.params.seed,
    on_bad_scan=sm.params.on_bad_scan,
)
