"""Snakemake script of rule `train_cpp`: one grid run trained by the C++ twin (train_app)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))  # noqa: F821

from earlyad.logs import log_to  # noqa: E402

log_to(snakemake.log[0])  # noqa: F821

from earlyad.train.cpp_twin import train_cpp  # noqa: E402
from earlyad.train.trainer import TrainConfig  # noqa: E402

hp = dict(snakemake.params.hp)  # noqa: F821
hp["threads"] = snakemake.threads  # noqa: F821
train_cpp(
    Path(snakemake.input.index),  # noqa: F821
    Path(snakemake.output.model).parent,  # noqa: F821
    Path(snakemake.params.work_dir),  # noqa: F821
    TrainConfig(**hp),
    Path(snakemake.input.train_app),  # noqa: F821
)
