"""The resumable training loop of ClassifierCNN (REFERENCE.md, Training).

Adam (lr 0.0018, betas 0.9/0.999), cross-entropy, batch 36, 100 epochs, as in the paper. What
the study lacked and this loop adds:

- Selection on VALIDATION only (REFERENCE.md, defect 2): the kept checkpoint is the epoch with
  the best validation macro-AUC (``select_on="auc"``, on softmax probabilities, defect 4) or the
  lowest validation loss (``select_on="loss"``, the public code's rule); optional early stopping.
  Test predictions are written from the selected model but no test metric is computed here:
  the evaluation stage owns the test set.
- Restartable on a batch system: after EVERY epoch the whole state (model, optimizer, RNG
  states, best-so-far model, early-stopping counter, log rows) goes atomically to
  ``state_dir/last.pt``, outside the Snakemake outputs (Snakemake deletes a failed job's
  outputs). A rerun with the same hyper-parameters and the same index resumes from it; the
  data randomness is a function of (seed, epoch, sample), so the resumed run is the
  uninterrupted one, bitwise in deterministic mode on CPU. SIGTERM (Slurm's time limit) stops
  at the next batch boundary without writing anything half-way and raises
  :class:`TrainingInterrupted`.
- The device decides the data path (``data.make_loader``): on CUDA the split lives on the GPU
  and is cropped and blurred there, training runs under bf16 autocast with channels_last_3d
  and cuDNN benchmarking; on CPU, loader worker processes and ``threads`` torch threads.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from earlyad import CLASSES
from earlyad.files import sha256_of
from earlyad.train.data import (
    AugmentConfig,
    CachedVolumes,
    EpochLoader,
    make_loader,
    read_index,
    seeded_subset,
)
from earlyad.train.metrics import classification_metrics
from earlyad.train.model import ClassifierCNN, ModelConfig, NormType, Variant

SelectOn = Literal["auc", "loss"]
DeviceChoice = Literal["auto", "cpu", "cuda"]

#: Columns of ``log.tsv``, in order. The train_* metrics come from an evaluation pass over the
#: training split (centre crop, eval mode), comparable with val_*, not from the augmented
#: batches the optimizer saw.
LOG_COLUMNS: tuple[str, ...] = (
    "epoch",
    "train_loss",
    "train_accuracy",
    "train_balanced_accuracy",
    "train_macro_auc",
    "val_loss",
    "val_accuracy",
    "val_balanced_accuracy",
    "val_macro_auc",
    "lr",
    "seconds",
    "samples_per_second",
)
#: Log columns that measure the machine, not the model (they differ between identical runs).
TIMING_COLUMNS: tuple[str, ...] = ("seconds", "samples_per_second")
PREDICTION_COLUMNS: tuple[str, ...] = (
    "participant_id",
    "session_id",
    "true_label",
    "predicted_label",
    *(f"prob_{c}" for c in CLASSES),
)
#: Fields that do not change what a run computes, so they may differ on resume: the loader's
#: results do not depend on its worker count, there is no learning-rate schedule (so epoch k
#: does not depend on the total number of epochs, and a finished run can be extended), and
#: the thread count is a property of the allocation.
RESUME_IGNORES: frozenset[str] = frozenset({"epochs", "threads", "num_workers"})
CHECKPOINT_FORMAT = 1


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on; the defaults are the paper's best run.

    Args:
        epochs: maximum number of epochs.
        batch_size: training batch size.
        eval_batch_size: batch size of the evaluation passes (train, val, test).
        lr: Adam learning rate.
        betas: Adam betas.
        patience: stop after this many epochs without improvement of the selection metric on
            validation; 0 turns early stopping off.
        select_on: the kept checkpoint has the best validation macro-AUC (``auc``) or the
            lowest validation loss (``loss``, the public code's rule).
        seed: seeds the model initialisation and all data randomness.
        deterministic: deterministic kernels (bitwise-reproducible on CPU; see
            :func:`_reproducibility`).
        threads: torch threads (None: torch's default).
        num_workers: worker processes of the CPU training loader (0: load in the training
            process); evaluation passes always load in the training process, and on CUDA the
            data live on the GPU. One is plenty on CPU: a training sample costs about 2.5 ms
            to load against about 200 ms of training at width 0.125.
        blur_p: probability of blurring a training sample.
        blur_sigma_max: blur sigma ~ U[0, blur_sigma_max] voxels.
        blur_truncate: Gaussian kernel radius in sigmas (scipy's rule and default).
        crop: edge of the cubic crop, also the model's input size.
        train_eval_max: the per-epoch evaluation on the training split (centre crop) uses a
            fixed seeded subset of this many scans, to bound its cost; 0 uses all of them.
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        width: ModelConfig.width, channel multiplier (1.0 is the paper's).
        norm_type: ModelConfig.norm_type.
        head_relu: ModelConfig.head_relu.
        variant: ModelConfig.variant.
    """

    epochs: int = 100
    batch_size: int = 36
    eval_batch_size: int = 36
    lr: float = 0.0018
    betas: tuple[float, float] = (0.9, 0.999)
    patience: int = 20
    select_on: SelectOn = "auc"
    seed: int = 0
    deterministic: bool = False
    threads: int | None = None
    num_workers: int = 1
    blur_p: float = 0.5
    blur_sigma_max: float = 1.5
    blur_truncate: float = 4.0
    crop: int = 96
    train_eval_max: int = 0
    device: DeviceChoice = "auto"
    width: float = 1.0
    norm_type: NormType = "instance"
    head_relu: bool = True
    variant: Variant = "paper"

    def __post_init__(self) -> None:
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        if self.select_on not in ("auc", "loss"):
            raise ValueError(f"select_on must be 'auc' or 'loss', got {self.select_on!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {self.device!r}")
        if min(self.epochs, self.batch_size, self.eval_batch_size) < 1:
            raise ValueError("epochs, batch_size and eval_batch_size must be >= 1")
        if self.patience < 0 or self.num_workers < 0 or self.train_eval_max < 0:
            raise ValueError("patience, num_workers and train_eval_max must be >= 0")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1 or None, got {self.threads}")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Build from a mapping (the workflow config), refusing unknown keys."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown training setting(s) {unknown}; known: {sorted(known)}")
        return cls(**values)

    def model_config(self) -> ModelConfig:
        """The network's settings; its input size is the crop."""
        return ModelConfig(
            norm_type=self.norm_type,
            head_relu=self.head_relu,
            variant=self.variant,
            width=self.width,
            input_size=self.crop,
            n_classes=len(CLASSES),
        )

    def augment_config(self) -> AugmentConfig:
        """The data path's crop and blur settings."""
        return AugmentConfig(
            crop=self.crop,
            blur_p=self.blur_p,
            blur_sigma_max=self.blur_sigma_max,
            blur_truncate=self.blur_truncate,
        )


@dataclass
class TrainResult:
    """What :func:`train` did."""

    best_epoch: int
    epochs_run: int
    stopped_early: bool
    resumed_from: int | None
    device: str
    val_metrics: dict[str, float]
    model_path: Path
    log_path: Path
    log: pd.DataFrame = field(repr=False)


class TrainingInterrupted(RuntimeError):
    """SIGTERM arrived; the last completed epoch's state is in ``state_dir/last.pt``."""


# --------------------------------------------------------------------------- small helpers


def config_hash(config: TrainConfig, index_sha256: str) -> str:
    """Identity of a run for resuming: the settings that change results (all but
    :data:`RESUME_IGNORES`) and the content of the index file. The ``.npy`` files are not
    hashed (gigabytes); the preprocessing stage rewrites the index whenever it rewrites them."""
    settings = {k: v for k, v in asdict(config).items() if k not in RESUME_IGNORES}
    blob = json.dumps({"config": settings, "index": index_sha256}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def resolve_device(choice: DeviceChoice) -> tuple[torch.device, str]:
    """The device and a sentence saying why it was chosen (written to device.txt)."""
    available = torch.cuda.is_available()
    if choice == "cuda":
        if not available:
            raise RuntimeError("device='cuda' was requested but torch.cuda.is_available() is False")
        return torch.device("cuda"), "device='cuda' requested"
    if choice == "cpu":
        return torch.device("cpu"), "device='cpu' requested"
    if available:
        name = torch.cuda.get_device_name(0)
        return torch.device("cuda"), f"device='auto' and CUDA is available ({name})"
    return torch.device("cpu"), "device='auto' and torch.cuda.is_available() is False"


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save to a temporary file in the same folder, fsync, then os.replace: a reader (or
    a rerun after a kill) sees the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _rng_state() -> dict[str, Any]:
    """Every global generator, as plain Python/torch objects (loadable with weights_only)."""
    name, key, pos, has_gauss, gauss = np.random.get_state(legacy=True)  # type: ignore[misc]
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": (name, torch.from_numpy(np.asarray(key).copy()), pos, has_gauss, gauss),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    name, key, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, key.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


@contextmanager
def _reproducibility(config: TrainConfig, device: torch.device) -> Iterator[None]:
    """Thread count and determinism flags for the run, restored afterwards (they are
    process-wide and the caller may be a test session or a notebook).

    Deterministic mode turns on ``torch.use_deterministic_algorithms``. On CUDA it is
    warn-only: MaxPool3d's backward has no deterministic CUDA kernel, so strict mode would
    refuse to train this model at all; bitwise reproducibility is promised on CPU only.
    """
    prev_threads = torch.get_num_threads()
    prev_det = torch.are_deterministic_algorithms_enabled()
    prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    prev_bench, prev_cudnn_det = torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic
    try:
        if config.threads is not None:
            torch.set_num_threads(config.threads)
        if config.deterministic:
            if device.type == "cuda":
                os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=device.type == "cuda")
            torch.backends.cudnn.deterministic = True
            torch.backends.cudnn.benchmark = False
        elif device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed 96^3 input: autotuning pays off
        yield
    finally:
        torch.set_num_threads(prev_threads)
        torch.use_deterministic_algorithms(prev_det, warn_only=prev_warn)
        torch.backends.cudnn.benchmark = prev_bench
        torch.backends.cudnn.deterministic = prev_cudnn_det


@contextmanager
def _sigterm_flag() -> Iterator[threading.Event]:
    """An event set by SIGTERM while training (only the main thread may install handlers)."""
    flag = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: flag.set())
    try:
        yield flag
    finally:
        signal.signal(signal.SIGTERM, previous)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- selection


@dataclass
class Selection:
    """Best-so-far tracking and early stopping on one validation metric.

    ``auc``: higher is better; ``loss``: lower is better. A tie in macro-AUC (frequent on a
    small validation split, where AUC moves in coarse steps) goes to the lower validation loss:
    an early epoch whose outputs are still near-uniform ranks the classes as well as a trained
    one but predicts only the majority class. Other ties keep the earlier epoch. A NaN score
    (macro-AUC of a validation split with fewer than two classes) never improves on a real
    one, but the first epoch is always taken, so there is a model to keep.
    """

    select_on: SelectOn
    patience: int
    best_epoch: int = 0
    best_score: float = float("nan")
    since_best: int = 0
    best_loss: float = float("inf")

    def score(self, row: dict[str, float]) -> float:
        return row["val_macro_auc"] if self.select_on == "auc" else -row["val_loss"]

    def update(self, epoch: int, row: dict[str, float]) -> bool:
        """Record ``epoch``'s log row; True when it is the new best."""
        score, loss = self.score(row), row["val_loss"]
        tie_won = self.select_on == "auc" and score == self.best_score and loss < self.best_loss
        improved = self.best_epoch == 0 or (
            not math.isnan(score)
            and (math.isnan(self.best_score) or score > self.best_score or tie_won)
        )
        if improved:
            self.best_epoch, self.best_score, self.since_best = epoch, score, 0
            self.best_loss = loss
        else:
            self.since_best += 1
        return improved

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.since_best >= self.patience


# --------------------------------------------------------------------------- passes


def _autocast(device: torch.device) -> Any:
    if device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return nullcontext()


def _to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last_3d)
    return x


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: EpochLoader, device: torch.device, n: int
) -> tuple[float, np.ndarray, np.ndarray]:
    """Mean cross-entropy, softmax probabilities (n, 3) and labels, in the split's row order."""
    model.eval()
    probs = np.zeros((n, len(CLASSES)))
    labels = np.zeros(n, dtype=np.int64)
    total = 0.0
    for x, y, idx in loader:
        with _autocast(device):
            logits = model(_to_device(x, device))
        logits = logits.float()
        y_dev = y.to(device)
        total += float(F.cross_entropy(logits, y_dev, reduction="sum"))
        rows = idx.numpy()
        probs[rows] = torch.softmax(logits, dim=1).double().cpu().numpy()
        labels[rows] = y.numpy()
    return (total / n if n else float("nan")), probs, labels


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    device: torch.device,
) -> torch.Tensor:
    """One optimisation step on a batch (bf16 autocast and channels_last_3d on CUDA); returns
    the loss. Shared with ``bench/dataloader.py --step``, which times exactly this."""
    with _autocast(device):
        logits = model(_to_device(x, device))
    loss = F.cross_entropy(logits.float(), y.to(device))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss


def _train_epoch(
    model: nn.Module,
    loader: EpochLoader,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    epoch: int,
    stop: threading.Event,
) -> int:
    """One pass over the training split; returns the number of samples seen."""
    model.train()
    seen = 0
    bar = tqdm(
        loader,
        desc=f"epoch {epoch}",
        unit="batch",
        leave=False,
        file=sys.stderr,
        disable=not sys.stderr.isatty(),
    )
    try:
        for x, y, _ in bar:
            if stop.is_set():
                raise TrainingInterrupted(f"SIGTERM during epoch {epoch}")
            loss = train_step(model, optimizer, x, y, device)
            seen += len(y)
            bar.set_postfix(loss=f"{loss.item():.4f}")
    except RuntimeError as err:  # e.g. loader workers killed by the same SIGTERM
        if stop.is_set() and not isinstance(err, TrainingInterrupted):
            raise TrainingInterrupted(f"SIGTERM during epoch {epoch}") from err
        raise
    finally:
        bar.close()
    return seen


# --------------------------------------------------------------------------- outputs


def write_predictions(
    path: Path, volumes: CachedVolumes, probs: np.ndarray, labels: np.ndarray
) -> None:
    """participant_id, session_id, true_label, predicted_label (integer labels, CLASSES order)
    and the softmax probability of each class."""
    df = pd.DataFrame(
        {
            "participant_id": volumes.records["participant_id"].to_numpy(),
            "session_id": volumes.records["session_id"].to_numpy(),
            "true_label": labels.astype(int),
            "predicted_label": probs.argmax(axis=1).astype(int) if len(probs) else [],
        }
    )
    for k, c in enumerate(CLASSES):
        df[f"prob_{c}"] = probs[:, k]
    df.to_csv(path, sep="\t", index=False)


def plot_learning_curves(log: pd.DataFrame, best_epoch: int, path: Path) -> None:
    """Loss and macro-AUC against epoch, train and validation, the selected epoch marked."""
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure state
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(10, 4), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, metric, title in (
        (axes[0], "loss", "cross-entropy"),
        (axes[1], "macro_auc", "macro-AUC (one-vs-rest)"),
    ):
        for split, style in (("train", "-"), ("val", "--")):
            ax.plot(log["epoch"], log[f"{split}_{metric}"], style, marker=".", label=split)
        ax.axvline(best_epoch, color="grey", lw=0.8, ls=":", label=f"selected (epoch {best_epoch})")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(title)
        ax.legend()
    axes[1].set_ylim(0.0, 1.02)
    fig.savefig(path, dpi=120)


def load_model(
    path: Path | str, map_location: str | torch.device = "cpu"
) -> tuple[ClassifierCNN, dict[str, Any]]:
    """The model saved by :func:`train` (strict loading, REFERENCE.md defect 4) and its
    checkpoint dictionary."""
    ckpt = torch.load(path, map_location=map_location, weights_only=True)
    model = ClassifierCNN(ModelConfig(**ckpt["model_config"]))
    model.load_state_dict(ckpt["state_dict"], strict=True)
    return model, ckpt


# --------------------------------------------------------------------------- train


def _load_state(path: Path, run_hash: str) -> tuple[dict[str, Any] | None, str]:
    if not path.exists():
        return None, f"no {path}"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable state means a fresh start
        return None, f"{path} is unreadable ({type(err).__name__}: {err})"
    if state.get("format") != CHECKPOINT_FORMAT:
        return None, f"{path} has checkpoint format {state.get('format')!r}"
    if state.get("config_hash") != run_hash:
        return None, f"{path} belongs to other settings or another index"
    return state, f"{path} (epoch {state['epoch']})"


def train(index_tsv: Path, out_dir: Path, state_dir: Path, config: TrainConfig) -> TrainResult:
    """Train ClassifierCNN on the tensor-cache index; resume from ``state_dir`` when possible.

    Args:
        index_tsv: tensor-cache index (participant_id, session_id, split, label, path, ...).
        out_dir: receives log.tsv, model.pt, learning_curves.png, predictions_val.tsv,
            predictions_test.tsv and device.txt.
        state_dir: holds last.pt, the per-epoch resume state; keep it outside the workflow's
            outputs so a failed job's clean-up does not delete it.
        config: the run's settings.

    Raises:
        TrainingInterrupted: on SIGTERM (the last completed epoch is saved).
        ValueError / FileNotFoundError: a bad index or a bad cached scan, named.
    """
    index_tsv, out_dir, state_dir = Path(index_tsv), Path(out_dir), Path(state_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state_dir.mkdir(parents=True, exist_ok=True)
    device, why = resolve_device(config.device)
    with _reproducibility(config, device), _sigterm_flag() as stop:
        return _train(index_tsv, out_dir, state_dir, config, device, why, stop)


def _train(
    index_tsv: Path,
    out_dir: Path,
    state_dir: Path,
    config: TrainConfig,
    device: torch.device,
    why: str,
    stop: threading.Event,
) -> TrainResult:
    t_start = time.perf_counter()
    table = read_index(index_tsv)
    splits = {s: CachedVolumes(table, s, crop=config.crop) for s in ("train", "val", "test")}
    if len(splits["train"]) == 0 or len(splits["val"]) == 0:
        raise ValueError(f"{index_tsv}: the train and val splits must not be empty")
    train_eval = splits["train"].subset(
        seeded_subset(config.seed, len(splits["train"]), config.train_eval_max)
    )
    aug = config.augment_config()

    def loader(vols: CachedVolumes, train: bool) -> EpochLoader:
        return make_loader(
            vols,
            aug,
            seed=config.seed,
            train=train,
            batch_size=config.batch_size if train else config.eval_batch_size,
            device=device,
            # evaluation crops are not blurred (about 0.3 ms each): shipping them from a worker
            # would cost more than cutting them here, and every worker is a process in memory
            num_workers=config.num_workers if train else 0,
        )

    train_loader = loader(splits["train"], True)
    eval_loaders = {"train": loader(train_eval, False), "val": loader(splits["val"], False)}

    random.seed(config.seed)
    np.random.seed(config.seed)
    torch.manual_seed(config.seed)
    model = ClassifierCNN(config.model_config())
    memory_format = torch.channels_last_3d if device.type == "cuda" else torch.contiguous_format
    model = model.to(device, memory_format=memory_format)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, betas=config.betas)

    run_hash = config_hash(config, sha256_of(index_tsv))
    last_path = state_dir / "last.pt"
    state, reason = _load_state(last_path, run_hash)
    selection = Selection(config.select_on, config.patience)
    rows: list[dict[str, float]] = []
    best_state = _cpu_state(model)
    start_epoch, resumed_from, stopped = 1, None, False
    if state is None:
        _log(f"[train] starting fresh: {reason}")
    else:
        _log(f"[train] resuming from {reason}")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        _set_rng_state(state["rng"])
        rows = list(state["log"])
        selection = Selection(config.select_on, config.patience, **state["selection"])
        best_state = state["best_state"]
        stopped = bool(state["stopped"])
        resumed_from = int(state["epoch"])
        start_epoch = resumed_from + 1

    workers = config.num_workers if device.type == "cpu" else "none (data resident on the GPU)"
    _log(
        f"[train] device {device} ({why}); torch threads {torch.get_num_threads()}, "
        f"loader workers {workers}; "
        f"{len(splits['train'])} train / {len(splits['val'])} val / {len(splits['test'])} test "
        f"scans; train evaluated on {len(train_eval)}"
    )
    (out_dir / "device.txt").write_text(
        f"device\t{device}\nreason\t{why}\ntorch\t{torch.__version__}\n"
        f"threads\t{torch.get_num_threads()}\nloader_workers\t{workers}\n"
        f"deterministic\t{config.deterministic}\n"
        f"autocast\t{'bfloat16' if device.type == 'cuda' else 'off (float32)'}\n"
    )

    log_path = out_dir / "log.tsv"
    for epoch in range(start_epoch, config.epochs + 1):
        if stopped:
            break
        t0 = time.perf_counter()
        train_loader.set_epoch(epoch)
        seen = _train_epoch(model, train_loader, optimizer, device, epoch, stop)
        t_train = time.perf_counter() - t0
        row: dict[str, float] = {"epoch": epoch}
        for split, ld in eval_loaders.items():
            n = len(train_eval) if split == "train" else len(splits["val"])
            loss, probs, labels = evaluate(model, ld, device, n)
            row[f"{split}_loss"] = loss
            row.update(classification_metrics(labels, probs, prefix=f"{split}_"))
        row["lr"] = optimizer.param_groups[0]["lr"]
        row["seconds"] = time.perf_counter() - t0
        row["samples_per_second"] = seen / t_train if t_train > 0 else float("nan")
        rows.append(row)
        if selection.update(epoch, row):
            best_state = _cpu_state(model)
        stopped = selection.should_stop
        atomic_save(
            {
                "format": CHECKPOINT_FORMAT,
                "config_hash": run_hash,
                "config": asdict(config),
                "epoch": epoch,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "rng": _rng_state(),
                # the data generators are stateless: (seed, epoch, sample) -> draws
                "data": {"seed": config.seed, "next_epoch": epoch + 1},
                "selection": {
                    "best_epoch": selection.best_epoch,
                    "best_score": selection.best_score,
                    "since_best": selection.since_best,
                    "best_loss": selection.best_loss,
                },
                "best_state": best_state,
                "stopped": stopped,
                "log": rows,
            },
            last_path,
        )
        pd.DataFrame(rows, columns=list(LOG_COLUMNS)).to_csv(log_path, sep="\t", index=False)
        _log(
            f"[train] epoch {epoch}/{config.epochs}  train loss {row['train_loss']:.4f} "
            f"auc {row['train_macro_auc']:.3f} | val loss {row['val_loss']:.4f} "
            f"auc {row['val_macro_auc']:.3f} bacc {row['val_balanced_accuracy']:.3f} | "
            f"{row['seconds']:.1f} s, {row['samples_per_second']:.2f} samples/s"
            + ("  *best*" if selection.best_epoch == epoch else "")
        )
        if stopped:
            _log(f"[train] early stop: no improvement in {config.patience} epochs")
        if stop.is_set():
            raise TrainingInterrupted(f"SIGTERM; epoch {epoch} saved in {last_path}")

    # ---- outputs from the selected model
    log = pd.DataFrame(rows, columns=list(LOG_COLUMNS))
    log.to_csv(log_path, sep="\t", index=False)
    model.load_state_dict(best_state)
    best_row = next(r for r in rows if r["epoch"] == selection.best_epoch)
    val_metrics = {k: float(v) for k, v in best_row.items() if k.startswith("val_")}
    model_path = out_dir / "model.pt"
    atomic_save(
        {
            "state_dict": best_state,
            "config": asdict(config),
            "model_config": asdict(config.model_config()),
            "classes": list(CLASSES),
            "epoch": selection.best_epoch,
            "select_on": config.select_on,
            "val_metrics": val_metrics,
        },
        model_path,
    )
    final_loaders = {"val": eval_loaders["val"], "test": loader(splits["test"], False)}
    for split, ld in final_loaders.items():
        vols = splits[split]
        _, probs, labels = evaluate(model, ld, device, len(vols))
        write_predictions(out_dir / f"predictions_{split}.tsv", vols, probs, labels)
    plot_learning_curves(log, selection.best_epoch, out_dir / "learning_curves.png")
    _log(
        f"[train] done: selected epoch {selection.best_epoch} (val {config.select_on}), "
        f"{len(rows)} epochs, {time.perf_counter() - t_start:.1f} s this session"
    )
    return TrainResult(
        best_epoch=selection.best_epoch,
        epochs_run=len(rows),
        stopped_early=stopped,
        resumed_from=resumed_from,
        device=str(device),
        val_metrics=val_metrics,
        model_path=model_path,
        log_path=log_path,
        log=log,
    )
