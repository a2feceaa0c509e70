"""Snakemake script of rule `gradcam`: Grad-CAM maps, GIFs, group maps and tables of one run."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))  # noqa: F821

from earlyad.logs import log_to  # noqa: E402

log_to(snakemake.log[0])  # noqa: F821

from earlyad.gradcam.stage import GradCamSettings, run_gradcam  # noqa: E402

sm = snakemake  # noqa: F821
truth = sm.input.get("truth")
run_gradcam(
    Path(sm.input.model),
    Path(sm.input.predictions),
    Path(sm.params.normalized_root),
    Path(sm.input.regions).parent,
    Path(sm.output.table).parent,
    GradCamSettings(**sm.params.settings),
    ground_truth=Path(truth) / "cohort.tsv" if truth else None,
    t1_linear_root=Path(sm.params.t1_linear_root),
    threads=sm.threads,
)
