"""Snakemake script of rule `train`: one grid run, resumable from its last epoch."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))  # noqa: F821

from earlyad.logs import log_to  # noqa: E402

log_to(snakemake.log[0])  # noqa: F821

from earlyad.train.trainer import TrainConfig, train  # noqa: E402

hp = dict(snakemake.params.hp)  # noqa: F821
hp["threads"] = snakemake.threads  # noqa: F821
train(
    Path(snakemake.input.index),  # noqa: F821
    Path(snakemake.output.model).parent,  # noqa: F821
    Path(snakemake.params.state_dir),  # noqa: F821
    TrainConfig(**hp),
)
