"""Snakemake script of rule `scaling_train`: one training under a given thread count, from
scratch (never resumed, so the benchmark measures the whole run)."""

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))  # noqa: F821

from earlyad.logs import log_to  # noqa: E402

log_to(snakemake.log[0])  # noqa: F821

from earlyad.train.trainer import TrainConfig, train  # noqa: E402

hp = dict(snakemake.params.hp)  # noqa: F821
with tempfile.TemporaryDirectory(prefix="earlyad-scaling-") as state_dir:
    train(
        Path(snakemake.input.index),  # noqa: F821
        Path(snakemake.output.log).parent,  # noqa: F821
        Path(state_dir),
        TrainConfig(**hp),
    )
