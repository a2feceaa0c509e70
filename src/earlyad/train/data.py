"""The fast data path: a validated, memory-mapped tensor cache and the paper's augmentation.

The reference study lost most of its training time in the loader: every sample re-read a
gzipped NIfTI, cleaned and min-max scaled it in float64 and blurred the WHOLE volume before
cropping 96^3 out of it. Here the preprocessing stage has already written one clean float16
``.npy`` per scan (the tensor cache), so a training sample is:

1. a random 96^3 crop (REFERENCE.md, augmentation), read straight from a memory map;
2. with probability 0.5, a Gaussian blur with sigma ~ U[0, 1.5] computed only on the crop plus
   a margin of one kernel radius on each side (clipped at the volume border). Blurring that
   region with scipy's kernel and ``mode='reflect'`` and cropping it back gives what blurring
   the whole volume and then cropping gives (to float32 rounding): away from the border the
   margin holds every voxel the kernel reaches, and at the border the region's edge IS the
   volume's edge, so the reflection happens at the same place. The kernel radius is scipy's,
   ``int(truncate * sigma + 0.5)``, with scipy's default ``truncate = 4`` (what a plain
   ``gaussian_filter(volume, sigma)`` call, as in the study's loader, uses); with
   ``truncate = 3`` the radius is at most ``ceil(3 sigma)``.

Validation and test use the centre crop, ``(shape - 96) // 2`` from the low end of each axis,
without blur.

All randomness of a sample comes from its own generator, seeded by (seed, epoch, sample index),
and the epoch's order from one seeded by (seed, epoch): the batches are the same whatever the
number of loader workers, and a resumed run sees exactly the samples an uninterrupted one does.

Two loaders share these rules: :class:`CpuLoader` (a torch ``DataLoader`` with worker
processes, a shift-and-add blur on the CPU) and :class:`ResidentLoader`, which keeps a whole
split on the model's device as float16 and crops and blurs there with a separable conv3d
(:func:`crop_and_blur_torch`); :func:`make_loader` picks the resident one on CUDA.
"""

from __future__ import annotations

import math
import mmap
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from torch.utils.data import DataLoader, Dataset, Sampler

from earlyad import CLASSES

#: Columns the tensor-cache index must have.
INDEX_COLUMNS: tuple[str, ...] = ("participant_id", "session_id", "split", "label", "path")
SPLITS: tuple[str, ...] = ("train", "val", "test")

# Stream tags keep the per-epoch shuffle and the per-sample draws apart: numpy's SeedSequence
# treats missing entropy words as zeros, so [seed, epoch] would collide with [seed, epoch, 0].
_STREAM_SHUFFLE = 1
_STREAM_SAMPLE = 2
_STREAM_SUBSET = 3

Shape3 = tuple[int, int, int]


@dataclass(frozen=True)
class AugmentConfig:
    """Crop and blur settings (REFERENCE.md, augmentation); defaults are the paper's.

    Args:
        crop: edge of the cubic crop, the model's input size.
        blur_p: probability that a training sample is blurred.
        blur_sigma_max: sigma is drawn from U[0, blur_sigma_max] (voxels).
        blur_truncate: kernel radius in sigmas, scipy's rule ``int(truncate * sigma + 0.5)``;
            4 is scipy's default, the one the study's loader got.
    """

    crop: int = 96
    blur_p: float = 0.5
    blur_sigma_max: float = 1.5
    blur_truncate: float = 4.0

    def __post_init__(self) -> None:
        if self.crop < 1:
            raise ValueError(f"crop must be positive, got {self.crop}")
        if not 0.0 <= self.blur_p <= 1.0:
            raise ValueError(f"blur_p must be in [0, 1], got {self.blur_p}")
        if self.blur_sigma_max < 0 or self.blur_truncate <= 0:
            raise ValueError("blur_sigma_max must be >= 0 and blur_truncate > 0")


@dataclass(frozen=True)
class SampleParams:
    """Where one sample is cropped and how much it is blurred (sigma 0: no blur)."""

    offset: Shape3
    sigma: float = 0.0


# --------------------------------------------------------------------------- the index


def read_index(path: Path | str) -> pd.DataFrame:
    """Read and check the tensor-cache index; relative scan paths are resolved against the
    current working directory (where the pipeline runs), so workers and later chdirs agree.

    Raises:
        ValueError: a missing column, an unknown split, a label outside 0..2, or a label that
            disagrees with the ``diagnosis`` column.
    """
    df = pd.read_csv(path, sep="\t", dtype={"participant_id": str, "session_id": str})
    missing = [c for c in INDEX_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: index lacks column(s) {missing}")
    bad_split = sorted(set(df["split"]) - set(SPLITS))
    if bad_split:
        raise ValueError(f"{path}: unknown split value(s) {bad_split}; expected {SPLITS}")
    labels = pd.to_numeric(df["label"], errors="coerce")
    bad = df[labels.isna() | ~labels.isin(range(len(CLASSES)))]
    if len(bad):
        row = bad.iloc[0]
        raise ValueError(
            f"{path}: scan {row.participant_id} {row.session_id} has label {row.label!r}, "
            f"expected 0..{len(CLASSES) - 1}"
        )
    df["label"] = labels.astype(int)
    if "diagnosis" in df.columns:
        expected = df["diagnosis"].map({c: i for i, c in enumerate(CLASSES)})
        wrong = df[expected != df["label"]]
        if len(wrong):
            row = wrong.iloc[0]
            raise ValueError(
                f"{path}: scan {row.participant_id} {row.session_id} has diagnosis "
                f"{row.diagnosis!r} but label {row.label}"
            )
    cwd = Path.cwd()
    df["path"] = [str(p if p.is_absolute() else cwd / p) for p in map(Path, df["path"])]
    return df.reset_index(drop=True)


def _release_pages(a: np.ndarray) -> None:
    """Drop a memory-mapped volume's pages from this process after validation.

    Why: validation reads every voxel, and the touched pages of a file mapping stay in the
    process's resident set; for an ADNI-sized cache that is gigabytes of MaxRSS (what Slurm
    and the scaling table count) for data the process does not need until a crop reads it
    again. The pages stay in the kernel's page cache, so the next read is still a memory read.
    """
    handle = getattr(a, "_mmap", None)
    if isinstance(handle, mmap.mmap) and hasattr(mmap, "MADV_DONTNEED"):
        handle.madvise(mmap.MADV_DONTNEED)


class CachedVolumes:
    """The scans of one split, validated at start-up and memory-mapped (float16, X, Y, Z).

    Validation reads every volume once, so a bad scan stops the run before the first epoch
    rather than hours into it, with the scan named.

    Args:
        index: the index TSV or its table (from :func:`read_index`).
        split: keep only this split (``None``: all rows).
        crop: every volume must be at least this large in each axis.
        mmap: memory-map the files (shared page cache, nothing copied per worker); False loads
            them into memory.

    Raises:
        FileNotFoundError: a scan's ``.npy`` is missing.
        ValueError: a volume is not 3D, not floating point, smaller than the crop, or holds NaN
            or inf.
    """

    def __init__(
        self,
        index: Path | str | pd.DataFrame,
        split: str | None = None,
        crop: int = 96,
        mmap: bool = True,
    ) -> None:
        table = index if isinstance(index, pd.DataFrame) else read_index(index)
        if split is not None:
            if split not in SPLITS:
                raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
            table = table[table["split"] == split]
        self.records = table.reset_index(drop=True)
        self.crop = crop
        self.mmap = mmap
        self.labels: NDArray[np.int64] = self.records["label"].to_numpy(dtype=np.int64)
        self._arrays: list[np.ndarray] | None = None
        arrays = self._open()
        self.shapes: list[Shape3] = [a.shape for a in arrays]  # type: ignore[misc]
        for i, a in enumerate(arrays):
            self._validate(i, a)
            _release_pages(a)
        self._arrays = arrays

    def describe(self, i: int) -> str:
        """``participant_id session_id (path)``, for error messages."""
        r = self.records.iloc[i]
        return f"{r.participant_id} {r.session_id} ({r.path})"

    def _open(self) -> list[np.ndarray]:
        arrays = []
        for i, path in enumerate(self.records["path"]):
            if not Path(path).is_file():
                raise FileNotFoundError(f"scan {self.describe(i)}: cached volume not found")
            try:
                arrays.append(np.load(path, mmap_mode="r" if self.mmap else None))
            except (ValueError, OSError) as err:
                raise ValueError(f"scan {self.describe(i)}: unreadable .npy: {err}") from err
        return arrays

    def _validate(self, i: int, a: np.ndarray) -> None:
        if a.ndim != 3:
            raise ValueError(f"scan {self.describe(i)}: expected a 3D volume, got shape {a.shape}")
        if not np.issubdtype(a.dtype, np.floating):
            raise ValueError(f"scan {self.describe(i)}: expected float16 voxels, got {a.dtype}")
        small = [ax for ax in range(3) if a.shape[ax] < self.crop]
        if small:
            raise ValueError(
                f"scan {self.describe(i)}: volume shape {a.shape} is smaller than the "
                f"{self.crop}^3 crop along axis {small}"
            )
        bad = int(a.size - np.count_nonzero(np.isfinite(a)))
        if bad:
            raise ValueError(f"scan {self.describe(i)}: volume holds {bad} NaN/inf voxel(s)")

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> np.ndarray:
        if self._arrays is None:  # unpickled in a spawned worker: reopen the memory maps
            self._arrays = self._open()
        return self._arrays[i]

    def __getstate__(self) -> dict[str, Any]:
        """Memory maps are reopened, not pickled (a spawned worker would copy every scan)."""
        state = self.__dict__.copy()
        if self.mmap:
            state["_arrays"] = None
        return state

    def subset(self, rows: Sequence[int]) -> CachedVolumes:
        """The same scans restricted to ``rows`` (arrays shared, nothing re-validated)."""
        new = object.__new__(CachedVolumes)
        new.__dict__.update(self.__dict__)
        rows = list(rows)
        new.records = self.records.iloc[rows].reset_index(drop=True)
        new.labels = self.labels[rows]
        new.shapes = [self.shapes[i] for i in rows]
        new._arrays = [self[i] for i in rows]
        return new

    def to_tensor(self, device: torch.device | str) -> torch.Tensor | list[torch.Tensor]:
        """All volumes on ``device`` as float16: one (N, X, Y, Z) tensor when the shapes agree
        (the normal case: every scan is on the template grid), else a list."""

        def one(i: int) -> torch.Tensor:  # np.array copies: memory maps are read-only
            return torch.from_numpy(np.array(self[i], dtype=np.float16)).to(device)

        if len(set(self.shapes)) == 1:
            out = torch.empty((len(self), *self.shapes[0]), dtype=torch.float16, device=device)
            for i in range(len(self)):
                out[i] = one(i)  # filled scan by scan: no second full copy in host memory
            return out
        return [one(i) for i in range(len(self))]


# --------------------------------------------------------------------------- randomness


def centre_offset(shape: Sequence[int], crop: int) -> Shape3:
    """Low corner of the centre crop: ``(n - crop) // 2`` per axis."""
    return tuple((int(n) - crop) // 2 for n in shape)  # type: ignore[return-value]


def sample_params(
    seed: int, epoch: int, index: int, shape: Sequence[int], config: AugmentConfig, train: bool
) -> SampleParams:
    """Crop offset and blur sigma of one sample, a pure function of (seed, epoch, index).

    Training: offsets uniform in ``[0, n - crop]`` per axis, then blur with probability
    ``blur_p`` and sigma ~ U[0, blur_sigma_max]; every number is drawn every time, so the
    stream never depends on an earlier outcome. Evaluation: centre crop, no blur.
    """
    if not train:
        return SampleParams(centre_offset(shape, config.crop), 0.0)
    rng = np.random.default_rng([seed, epoch, _STREAM_SAMPLE, index])
    offset = tuple(int(rng.integers(0, int(n) - config.crop + 1)) for n in shape)
    blur = rng.random() < config.blur_p
    sigma = float(rng.uniform(0.0, config.blur_sigma_max))
    return SampleParams(offset, sigma if blur else 0.0)  # type: ignore[arg-type]


def epoch_order(seed: int, epoch: int, n: int, shuffle: bool) -> list[int]:
    """The order of the epoch's samples (a seeded permutation when shuffling)."""
    if not shuffle:
        return list(range(n))
    return [int(i) for i in np.random.default_rng([seed, epoch, _STREAM_SHUFFLE, 0]).permutation(n)]


def epoch_batches(seed: int, epoch: int, n: int, shuffle: bool, batch_size: int) -> list[list[int]]:
    """The epoch's order cut into consecutive batches (the last one may be smaller), as
    torch's default batching of :class:`EpochSampler` cuts it."""
    order = epoch_order(seed, epoch, n, shuffle)
    return [order[s : s + batch_size] for s in range(0, n, batch_size)]


def seeded_subset(seed: int, n: int, size: int) -> list[int]:
    """A fixed, sorted subset of ``size`` of ``range(n)`` (all when ``size`` is 0 or >= n)."""
    if size <= 0 or size >= n:
        return list(range(n))
    rng = np.random.default_rng([seed, 0, _STREAM_SUBSET, 0])
    return sorted(int(i) for i in rng.choice(n, size=size, replace=False))


# --------------------------------------------------------------------------- blur, CPU


def kernel_radius(sigma: float, truncate: float) -> int:
    """scipy's Gaussian kernel radius, ``int(truncate * sigma + 0.5)`` (0 when sigma is 0)."""
    return int(truncate * float(sigma) + 0.5) if sigma > 0 else 0


def gaussian_kernel1d(sigma: float, radius: int) -> NDArray[np.float64]:
    """scipy's normalized Gaussian kernel of ``2 * radius + 1`` taps (a delta for radius 0)."""
    if radius == 0:
        return np.ones(1)
    x = np.arange(-radius, radius + 1)
    phi = np.exp(-0.5 / (sigma * sigma) * x**2)
    return phi / phi.sum()


def _to_float32(block: np.ndarray) -> torch.Tensor:
    """A float32 copy, as a tensor. Through torch: numpy's float16 -> float32 cast is scalar
    code, about ten times slower (1.7 ms against 0.15 ms for a 96^3 crop); same values."""
    if block.dtype != np.float16:
        return torch.from_numpy(np.array(block, dtype=np.float32))
    return torch.from_numpy(np.array(block)).float()


def _blur_axis(
    x: torch.Tensor, axis: int, start: int, crop: int, weights: NDArray[np.float64]
) -> torch.Tensor:
    """One 1D Gaussian pass along ``axis`` that returns only the ``crop`` positions from
    ``start``: ``sum_j w_j * x[i + j - r]``, as 2r + 1 in-place multiply-adds of shifted views.

    Where the region stops short of ``r`` voxels around the crop it ends at the volume's edge
    (the caller clips only there), so the missing voxels are filled by scipy's 'reflect' rule
    (d c b a | a b c d), which puts the reflection exactly where a whole-volume filter puts it.

    Why not scipy: ``gaussian_filter1d`` converts every line to float64 and back and filters
    the margin rows of the output too; this is about four times faster on a 96^3 crop (4.7 ms
    against 18.6 ms at sigma 1.5, one thread) and agrees to float32 rounding (~2e-7). torch's
    kernels also release the GIL.
    """
    r = (len(weights) - 1) // 2
    n = x.shape[axis]
    pad_lo = max(0, r - start)
    pad_hi = max(0, start + crop + r - n)
    if pad_lo or pad_hi:
        parts = [x.narrow(axis, 0, pad_lo).flip(axis)] if pad_lo else []
        parts.append(x)
        if pad_hi:
            parts.append(x.narrow(axis, n - pad_hi, pad_hi).flip(axis))
        x = torch.cat(parts, dim=axis)
        start += pad_lo
    out = x.narrow(axis, start, crop) * float(weights[r])
    for j in range(1, r + 1):
        out.add_(x.narrow(axis, start - j, crop), alpha=float(weights[r - j]))
        out.add_(x.narrow(axis, start + j, crop), alpha=float(weights[r + j]))
    return out


def crop_and_blur(
    volume: np.ndarray, params: SampleParams, crop: int, truncate: float = 4.0
) -> NDArray[np.float32]:
    """The ``crop^3`` float32 sample: the crop at ``params.offset`` of the volume blurred with
    ``params.sigma`` (scipy's kernel and ``mode='reflect'``), computed on the crop plus its
    margin only.

    The three 1D passes (:func:`_blur_axis`) shrink the region as they go (after filtering
    axis 0 only the crop's rows along axis 0 are needed), which is exact because each pass
    only mixes voxels along its own axis.
    """
    r = kernel_radius(params.sigma, truncate)
    lo = [max(0, o - r) for o in params.offset]
    hi = [min(n, o + crop + r) for o, n in zip(params.offset, volume.shape, strict=True)]
    region = _to_float32(volume[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]])
    starts = [o - low for o, low in zip(params.offset, lo, strict=True)]
    if r == 0:
        s = starts
        return np.ascontiguousarray(
            region[s[0] : s[0] + crop, s[1] : s[1] + crop, s[2] : s[2] + crop].numpy()
        )
    weights = gaussian_kernel1d(params.sigma, r)
    for axis in range(3):
        region = _blur_axis(region, axis, starts[axis], crop, weights)
    return np.ascontiguousarray(region.numpy())


# --------------------------------------------------------------------------- blur, torch


def _reflect_index(start: int, length: int, n: int, device: torch.device) -> torch.Tensor:
    """Indices ``start .. start + length - 1`` folded into ``[0, n)`` the way scipy's 'reflect'
    mode extends an axis (d c b a | a b c d | d c b a); valid for overhangs up to ``n``."""
    i = torch.arange(start, start + length, device=device)
    i = torch.where(i < 0, -i - 1, i)
    return torch.where(i >= n, 2 * n - 1 - i, i)


def crop_and_blur_torch(
    volumes: torch.Tensor | Sequence[torch.Tensor],
    indices: Sequence[int],
    params: Sequence[SampleParams],
    crop: int,
    truncate: float = 4.0,
) -> torch.Tensor:
    """:func:`crop_and_blur` for a batch, on whatever device ``volumes`` live (the GPU path).

    Each sample's crop is gathered with a margin of R, the largest kernel radius in the batch,
    the margin folded back at the volume border exactly like scipy's 'reflect' mode; then three
    grouped 1D convolutions (one group per sample, each its own Gaussian zero-padded to R) blur
    and shrink it to ``crop^3``. Zero taps add exact zeros, so a sample's result does not
    depend on the others in its batch. Computed in float32 with TF32 off: the result agrees
    with scipy to about 1e-6.

    Args:
        volumes: float16 volumes, (N, X, Y, Z) or a list of (X, Y, Z).
        indices: which volume each sample crops.
        params: one :class:`SampleParams` per sample.
        crop: edge of the output crop.
        truncate: kernel radius in sigmas (scipy's rule).

    Returns:
        float32 tensor (B, 1, crop, crop, crop) on the volumes' device.
    """
    device = volumes[0].device
    radii = [kernel_radius(p.sigma, truncate) for p in params]
    big = max(radii, default=0)
    size = crop + 2 * big
    region = torch.empty((len(params), size, size, size), dtype=torch.float32, device=device)
    for b, (i, p) in enumerate(zip(indices, params, strict=True)):
        v = volumes[i]
        ix, iy, iz = (
            _reflect_index(o - big, size, int(n), device)
            for o, n in zip(p.offset, v.shape, strict=True)
        )
        region[b] = v.index_select(0, ix).index_select(1, iy).index_select(2, iz).float()
    if big == 0:
        return region.unsqueeze(1)
    taps = np.zeros((len(params), 2 * big + 1))
    for b, (p, r) in enumerate(zip(params, radii, strict=True)):
        taps[b, big - r : big + r + 1] = gaussian_kernel1d(p.sigma, r)
    weight = torch.as_tensor(taps, dtype=torch.float32, device=device)
    k = 2 * big + 1
    x = region.unsqueeze(0)  # (1, B, L, L, L): one group per sample
    prev_tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        with torch.autocast(device_type=device.type, enabled=False):
            for shape in ((k, 1, 1), (1, k, 1), (1, 1, k)):
                x = F.conv3d(x, weight.view(len(params), 1, *shape), groups=len(params))
    finally:
        torch.backends.cudnn.allow_tf32 = prev_tf32
    return x.transpose(0, 1).contiguous()


# --------------------------------------------------------------------------- loaders

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # x (B,1,c,c,c), labels, row indices


class EpochLoader(Protocol):
    """What the training loop needs from a loader: epoch-aware iteration over batches."""

    def set_epoch(self, epoch: int) -> None: ...

    def __iter__(self) -> Iterator[Batch]: ...

    def __len__(self) -> int: ...


class AugmentedVolumes(Dataset[tuple[torch.Tensor, int, int]]):
    """Map-style dataset keyed by ``(epoch, index)``: the epoch travels with the key, so
    persistent workers (which hold a copy of the dataset) never need to be told it.

    The pages a crop reads are dropped from this process right after (they stay in the
    page cache). Otherwise every scan read stays in the resident set: a worker that has read
    the 606 training scans of the study would report 2.2 GB of RSS, counted again for each
    worker by process-summing accounting (Slurm's jobacct_gather/linux, Snakemake's
    benchmarks), and the training process would look as if it held the whole cache. Dropping
    them costs about 0.04 ms of a sample's 2.3 ms (mapping them back in on the next read).
    """

    def __init__(
        self, volumes: CachedVolumes, config: AugmentConfig, seed: int, train: bool
    ) -> None:
        self.volumes = volumes
        self.config = config
        self.seed = seed
        self.train = train

    def __len__(self) -> int:
        return len(self.volumes)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int, int]:
        epoch, i = key
        vol = self.volumes[i]
        p = sample_params(self.seed, epoch, i, vol.shape, self.config, self.train)
        x = crop_and_blur(vol, p, self.config.crop, self.config.blur_truncate)
        _release_pages(vol)
        return torch.from_numpy(x).unsqueeze(0), int(self.volumes.labels[i]), i


class EpochSampler(Sampler[tuple[int, int]]):
    """Yields ``(epoch, index)`` in the epoch's seeded order; lives in the main process."""

    def __init__(self, n: int, seed: int, shuffle: bool) -> None:
        self.n, self.seed, self.shuffle = n, seed, shuffle
        self.epoch = 0

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter(
            [(self.epoch, i) for i in epoch_order(self.seed, self.epoch, self.n, self.shuffle)]
        )

    def __len__(self) -> int:
        return self.n


def _worker_init(_: int) -> None:
    """One thread per worker: the workers are the parallelism, and oversubscribing the cores
    the model trains on only slows both down."""
    torch.set_num_threads(1)


class _SlotBatches(Dataset[tuple[int, list[int], list[int]]]):
    """Worker side of :class:`CpuLoader`: a whole batch per key, written into a slot of a
    shared ring; only the slot number and the labels travel back through the queue."""

    def __init__(self, samples: AugmentedVolumes, ring: torch.Tensor) -> None:
        self.samples = samples
        self.ring = ring

    def __getitem__(self, key: tuple[int, int, list[int]]) -> tuple[int, list[int], list[int]]:
        epoch, number, rows = key
        slot = number % len(self.ring)
        labels = []
        for j, i in enumerate(rows):
            x, label, _ = self.samples[epoch, i]
            self.ring[slot, j].copy_(x)
            labels.append(label)
        return slot, labels, rows


class _BatchKeys(Sampler[tuple[int, int, list[int]]]):
    """``(epoch, batch number, rows)`` for each batch of the epoch's seeded order."""

    def __init__(self, n: int, seed: int, shuffle: bool, batch_size: int) -> None:
        self.n, self.seed, self.shuffle, self.batch_size = n, seed, shuffle, batch_size
        self.epoch = 0

    def __iter__(self) -> Iterator[tuple[int, int, list[int]]]:
        batches = epoch_batches(self.seed, self.epoch, self.n, self.shuffle, self.batch_size)
        return iter([(self.epoch, k, rows) for k, rows in enumerate(batches)])

    def __len__(self) -> int:
        return math.ceil(self.n / self.batch_size)


def _as_is(batch: Any) -> Any:
    """collate_fn of the ring path: a worker's batch is already assembled."""
    return batch


class CpuLoader:
    """Crop and blur on the CPU, in this process or in persistent DataLoader worker processes.

    With workers, a batch does not travel as a tensor. The default path puts every batch in a
    fresh shared-memory segment (created, zero-filled by page faults, its descriptor handed
    over a socket, mapped, unmapped), which cost more than making the batch: one worker was
    slower than none (200 against 440 samples/s). Here each worker writes its batch into a
    slot of a ring allocated once in shared memory, sends back the slot number, and the
    training process copies the batch out before it asks for the next one. The DataLoader
    has at most ``prefetch_factor * num_workers`` batches requested and not yet handed out,
    and requests the next one only while handing one out, so a ring of that many slots plus
    one is never overwritten before its batch has been copied.

    Args:
        volumes: the split.
        config: crop and blur settings.
        seed: run seed (with the epoch and sample index, the only source of randomness).
        train: random crop + blur and shuffling; else centre crop in index order.
        batch_size: samples per batch (the last one may be smaller).
        num_workers: worker processes (0: load in this process); persistent across epochs.
    """

    #: Batches requested ahead per worker. One is enough: a worker makes a batch in a few
    #: milliseconds and the model takes far longer over it, and each one more is a ring slot.
    PREFETCH = 1

    def __init__(
        self,
        volumes: CachedVolumes,
        config: AugmentConfig,
        seed: int,
        train: bool,
        batch_size: int,
        num_workers: int = 0,
    ) -> None:
        samples = AugmentedVolumes(volumes, config, seed, train)
        self.ring: torch.Tensor | None = None
        if num_workers == 0:
            self.sampler: EpochSampler | _BatchKeys = EpochSampler(len(volumes), seed, train)
            self.loader = DataLoader(samples, batch_size=batch_size, sampler=self.sampler)
            return
        c = config.crop
        slots = self.PREFETCH * num_workers + 1
        self.ring = torch.empty((slots, batch_size, 1, c, c, c)).share_memory_()
        self.sampler = _BatchKeys(len(volumes), seed, train, batch_size)
        self.loader = DataLoader(
            _SlotBatches(samples, self.ring),
            batch_size=None,
            sampler=self.sampler,
            collate_fn=_as_is,
            num_workers=num_workers,
            prefetch_factor=self.PREFETCH,
            persistent_workers=True,
            worker_init_fn=_worker_init,
        )

    def set_epoch(self, epoch: int) -> None:
        self.sampler.epoch = epoch

    def __iter__(self) -> Iterator[Batch]:
        if self.ring is None:
            return iter(self.loader)
        return self._from_ring(self.ring)

    def _from_ring(self, ring: torch.Tensor) -> Iterator[Batch]:
        for slot, labels, rows in self.loader:
            x = ring[slot, : len(rows)].clone()  # before the next request can reuse the slot
            yield x, torch.tensor(labels, dtype=torch.int64), torch.tensor(rows)

    def __len__(self) -> int:
        return len(self.loader)


class ResidentLoader:
    """The whole split held on ``device`` as float16, cropped and blurred there.

    On a GPU this removes the loader from the picture: the 606 training scans of the study
    take about 2.3 GB as float16 and a batch is a gather plus three small convolutions. It
    runs on any device, which is how it is tested against :class:`CpuLoader` on CPU.
    """

    def __init__(
        self,
        volumes: CachedVolumes,
        config: AugmentConfig,
        seed: int,
        train: bool,
        batch_size: int,
        device: torch.device | str,
    ) -> None:
        self.device = torch.device(device)
        self.data = volumes.to_tensor(self.device)
        self.shapes = volumes.shapes
        self.labels = torch.as_tensor(volumes.labels, dtype=torch.int64)
        self.config, self.seed, self.train = config, seed, train
        self.batch_size = batch_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[Batch]:
        n = len(self.shapes)
        for rows in epoch_batches(self.seed, self.epoch, n, self.train, self.batch_size):
            params = [
                sample_params(self.seed, self.epoch, i, self.shapes[i], self.config, self.train)
                for i in rows
            ]
            x = crop_and_blur_torch(
                self.data, rows, params, self.config.crop, self.config.blur_truncate
            )
            idx = torch.as_tensor(rows, dtype=torch.int64)
            yield x, self.labels[idx], idx

    def __len__(self) -> int:
        return math.ceil(len(self.shapes) / self.batch_size)


def make_loader(
    volumes: CachedVolumes,
    config: AugmentConfig,
    *,
    seed: int,
    train: bool,
    batch_size: int,
    device: torch.device | str = "cpu",
    num_workers: int = 0,
    resident: bool | None = None,
) -> EpochLoader:
    """The loader for ``device``: resident on CUDA (``resident=None``), worker processes on
    CPU. ``resident=True`` forces the device-resident path (used on CPU by the tests)."""
    device = torch.device(device)
    if resident is None:
        resident = device.type == "cuda"
    if resident:
        return ResidentLoader(volumes, config, seed, train, batch_size, device)
    return CpuLoader(volumes, config, seed, train, batch_size, num_workers)
