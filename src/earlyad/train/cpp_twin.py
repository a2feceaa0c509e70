"""The Python side of the C++/LibTorch twin (``cpp/``, issue 8): its inputs and how it is run.

The twin (``train_app``) trains the same ClassifierCNN with the same initialisation, optimizer,
loss, selection and outputs as :func:`earlyad.train.trainer.train`. What it does not do is
draw random numbers for the data: the crop offsets, blur sigmas and epoch orders come from
numpy's seeded generators (SeedSequence + PCG64, :func:`~earlyad.train.data.sample_params`
and :func:`~earlyad.train.data.epoch_order`), and re-implementing those bit for bit in C++
would be a second source of truth to keep in step. Instead :func:`plan_epochs` computes them
here, once, and the twin reads the plan TSV: both implementations see the same samples in the
same order by construction, which the parity tests then check end to end.

The model's initial weights need no such help: LibTorch's CPU generator is the one
``torch.manual_seed`` seeds in Python, and the twin builds its modules in Python's order, so
the same seed gives bitwise the same weights (tested).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

from earlyad.train.data import AugmentConfig, epoch_order, read_index, sample_params, seeded_subset
from earlyad.train.trainer import LOG_COLUMNS, TrainConfig, plot_learning_curves

#: Columns of the plan TSV that ``train_app`` reads.
PLAN_COLUMNS: tuple[str, ...] = (
    "epoch",
    "position",
    "row",
    "offset_x",
    "offset_y",
    "offset_z",
    "sigma",
)
#: Where ``scripts/build_cpp.sh`` builds by default, relative to the repository.
DEFAULT_BUILD = Path(__file__).resolve().parents[3] / "cpp" / "build"


def train_shapes(index_tsv: Path | str) -> list[tuple[int, int, int]]:
    """Volume shapes of the training rows of the index, in index order (from the .npy headers;
    the voxels are validated by the trainer that reads them)."""
    table = read_index(index_tsv)
    paths = table.loc[table["split"] == "train", "path"]
    return [tuple(np.load(p, mmap_mode="r").shape) for p in paths]  # type: ignore[misc]


def plan_epochs(
    shapes: list[tuple[int, int, int]], seed: int, epochs: int, augment: AugmentConfig
) -> pd.DataFrame:
    """Every training sample of epochs ``1..epochs``: its position in the epoch's order, its
    row in the training split, crop offset (x, y, z) and blur sigma (0: not blurred).

    Exactly the draws of :class:`~earlyad.train.data.CpuLoader` for the same seed.
    """
    records = []
    for epoch in range(1, epochs + 1):
        for position, row in enumerate(epoch_order(seed, epoch, len(shapes), shuffle=True)):
            p = sample_params(seed, epoch, row, shapes[row], augment, train=True)
            records.append((epoch, position, row, *p.offset, p.sigma))
    return pd.DataFrame(records, columns=list(PLAN_COLUMNS))


def write_plan(index_tsv: Path | str, out: Path | str, config: TrainConfig) -> pd.DataFrame:
    """:func:`plan_epochs` for a run's settings, written as TSV (floats round-trip exactly)."""
    plan = plan_epochs(train_shapes(index_tsv), config.seed, config.epochs, config.augment_config())
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    plan.to_csv(out, sep="\t", index=False)
    return plan


def write_run_file(
    path: Path,
    *,
    index_tsv: Path,
    plan: Path,
    out_dir: Path,
    config: TrainConfig,
    n_train: int,
    init: Path | None = None,
) -> None:
    """The YAML run file of ``train_app`` (its usage text lists the keys)."""
    hp = asdict(config)
    hp["betas"] = list(hp["betas"])
    run = {
        "index": str(index_tsv),
        "plan": str(plan),
        "out_dir": str(out_dir),
        "train_eval_rows": seeded_subset(config.seed, n_train, config.train_eval_max),
        "init": str(init) if init else None,
        "hyperparameters": hp,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(run, sort_keys=False))


def find_app(name: str, build_dir: Path | str | None = None) -> Path:
    """``train_app`` or ``test_app`` in ``build_dir`` (default: ``$EARLYAD_CPP_BUILD`` or
    ``cpp/build``).

    Raises:
        FileNotFoundError: not built, with the command that builds it.
    """
    folder = Path(build_dir or os.environ.get("EARLYAD_CPP_BUILD") or DEFAULT_BUILD)
    app = folder / name
    if not app.is_file():
        raise FileNotFoundError(
            f"{app} not found: build the C++ twin with `bash scripts/build_cpp.sh {folder}`"
        )
    return app


def prepare_run(
    index_tsv: Path,
    out_dir: Path,
    work_dir: Path,
    config: TrainConfig,
    init: Path | None = None,
) -> Path:
    """Write the plan (``work_dir/plan.tsv``) and the run file (``work_dir/run.yaml``) of one
    ``train_app`` run; returns the run file. Its arguments are :func:`train_cpp`'s."""
    out_dir.mkdir(parents=True, exist_ok=True)
    plan_path = work_dir / "plan.tsv"
    plan = write_plan(index_tsv, plan_path, config)
    run_file = work_dir / "run.yaml"
    write_run_file(
        run_file,
        index_tsv=index_tsv,
        plan=plan_path,
        out_dir=out_dir,
        config=config,
        n_train=int((plan["epoch"] == 1).sum()),
        init=init,
    )
    return run_file


def train_cpp(
    index_tsv: Path,
    out_dir: Path,
    work_dir: Path,
    config: TrainConfig,
    app: Path,
    init: Path | None = None,
) -> pd.DataFrame:
    """Train with the C++ twin: plan the epochs, write the run file, run ``train_app`` (its
    progress goes to this process's stderr), then draw the learning curves from its log.

    Args:
        index_tsv: tensor-cache index (relative scan paths are read from the cwd).
        out_dir: receives what :func:`~earlyad.train.trainer.train` writes there.
        work_dir: holds the plan and run file (outside the workflow's outputs).
        config: the run's settings, as for the Python trainer.
        app: the ``train_app`` binary.
        init: a ``model.pt`` to start from instead of the seeded initialisation.

    Returns:
        The per-epoch log.

    Raises:
        RuntimeError: ``train_app`` failed (its message is in the log above).
    """
    run_file = prepare_run(index_tsv, out_dir, work_dir, config, init)
    try:  # the rule's log file (earlyad.logs.log_to); pytest's capture has no descriptor
        stderr: int | None = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        stderr = None
    t0 = time.perf_counter()
    done = subprocess.run([str(app), str(run_file)], stderr=stderr, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{app} {run_file} failed with exit status {done.returncode}")
    print(f"[train_cpp] train_app took {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    log = pd.read_csv(out_dir / "log.tsv", sep="\t")
    if tuple(log.columns) != LOG_COLUMNS:
        raise RuntimeError(f"{out_dir / 'log.tsv'} has columns {list(log.columns)}")
    ckpt = torch.load(out_dir / "model.pt", map_location="cpu", weights_only=True)
    plot_learning_curves(log, int(ckpt["epoch"]), out_dir / "learning_curves.png")
    return log
