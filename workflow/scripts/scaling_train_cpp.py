"""Snakemake script of rule `scaling_train_cpp`: one C++ twin training under a given thread
count. The plan and run file are written here, then this process becomes ``train_app``
(``os.execv``), so the job's benchmark record (wall time, CPU time, MaxRSS) is the twin's, not
a Python interpreter's waiting beside it."""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))  # noqa: F821

from earlyad.logs import log_to  # noqa: E402

log_to(snakemake.log[0])  # noqa: F821

from earlyad.train.cpp_twin import prepare_run  # noqa: E402
from earlyad.train.trainer import TrainConfig  # noqa: E402

run_file = prepare_run(
    Path(snakemake.input.index),  # noqa: F821
    Path(snakemake.output.log).parent,  # noqa: F821
    Path(snakemake.params.work_dir),  # noqa: F821
    TrainConfig(**snakemake.params.hp),  # noqa: F821
)
app = str(Path(snakemake.input.train_app).resolve())  # noqa: F821
print(f"[scaling_train_cpp] exec {app} {run_file}", file=sys.stderr, flush=True)
os.dup2(sys.stderr.fileno(), 2)  # train_app's progress goes to the rule's log
os.execv(app, [app, str(run_file)])
