"""Snakemake script of rule `qc`: QC table, exclusions, tensor-cache index and montages."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))  # noqa: F821

from earlyad.logs import log_to  # noqa: E402

log_to(snakemake.log[0])  # noqa: F821

from earlyad.preprocess.stages import qc_stage  # noqa: E402

sm = snakemake  # noqa: F821
qc_stage(
    {s: Path(p) for s, p in zip(("train", "val", "test"), sm.input.manifests, strict=True)},
    Path("results/normalized"),
    sm.params.thresholds,
    Path(sm.output.qc),
    Path(sm.output.plot),
    Path(sm.output.exclusions),
    Path(sm.output.index),
    Path(sm.output.montages),
)
