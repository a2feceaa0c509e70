"""Snakemake script of rule `gradcam_atlas`: AAL regions and brain mask on the normalized grid."""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))  # noqa: F821

from earlyad.logs import log_to  # noqa: E402

log_to(snakemake.log[0])  # noqa: F821
# ITK's registration result depends on its thread count: one thread, reproducible everywhere.
os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = "1"

from earlyad.gradcam.atlas import atlas_stage  # noqa: E402

sm = snakemake  # noqa: F821
atlas_stage(
    Path(sm.input.template),
    Path(sm.input.mni),
    Path(sm.input.mask),
    Path(sm.output.regions).parent,
    register=sm.params.template == "study",
    voxel_size=sm.params.voxel_size,
    seed=sm.params.seed,
)
