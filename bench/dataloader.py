"""Samples per second of earlyad's training loader against one written like the study's.

Both read the same N synthetic scans (113x139x119, the 1.5 mm template grid) with the same
number of worker processes, batch size and augmentation (random 96^3 crop, Gaussian blur with
p = 0.5 and sigma ~ U[0, 1.5]):

- ``study``: per sample, nibabel loads the gzipped float32 NIfTI (``get_fdata``, float64),
  NaN -> 0, min-max to [0, 1], ``scipy.ndimage.gaussian_filter`` of the WHOLE volume with
  p = 0.5, then a random crop;
- ``ours``: ``earlyad.train.data`` on the float16 tensor cache (memory-mapped ``.npy``), crop
  first, blur only the crop plus its kernel margin (same values as blurring everything).

Each loader runs in its own subprocess so the peak resident set sizes do not contaminate each
other: the main process's (VmHWM) and the largest worker's (getrusage RUSAGE_CHILDREN; it
counts the pages a forked worker shares with the main process, torch's libraries included).
The first batch (worker start-up) is not timed.

    python bench/dataloader.py [--n 16] [--workers 0 2] [--batch-size 4] [--seconds 10]
                               [--shape 113 139 119]

``--workers 0`` measures the per-sample work alone; with workers, the transfer of each batch
to the training process (shared memory) is included.

Two ratios are printed. ``same grid``: both loaders on volumes of ``--shape`` (our 1.5 mm
grid), which isolates the loader code; at 1.5 mm the crop plus its blur margin is most of the
volume, so margin-only blurring saves little there. ``pipeline``: the study's loader on what
the study's preprocessing hands it (t1-linear's 1 mm 169x208x179 NIfTI, ``--study-shape``)
against ours on our 1.5 mm cache of the same scans: the data path a user of either pipeline
actually trains from.

``--train-steps N`` (default 8) then measures the peak host memory of a short training run
fed by each loader (a ``--width`` 0.0625 ClassifierCNN, Adam, N steps after the first batch,
the same workers): what a training job asks the scheduler for, beside the study's. The net is
narrow because on CPU its activations are host memory and would bury the loaders'
difference; on the GPU the study trained on, they are not. The parent samples the run's
whole process tree every 20 ms and keeps the peak of two sums (median of ``--repeats``
runs): PSS, the memory the job really occupies (a page shared by k processes counts 1/k in
each), and RSS, what process-summing accounting (Slurm's jobacct_gather/linux, Snakemake's
``max_rss``) reports, in which every worker counts the pages it shares with the training
process again.

Last, the training step the loader feeds: on CUDA (``--step-device auto`` finds it), the
trainer's own ``train_step`` (bf16 autocast, channels_last_3d, cudnn autotuning) on the
full-width model at batch 36, with its achieved TFLOP/s against the GPU's dense bf16 peak
(``earlyad.train.flops``: 0.6 TFLOP per training sample). ``--step-device cpu`` times it on
the CPU instead (pick ``--step-width`` and ``--step-batch`` to fit); ``--step-only`` skips
the loader measurements.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import psutil
import torch
from scipy.ndimage import gaussian_filter
from torch.utils.data import DataLoader, Dataset

SHAPE = (113, 139, 119)
CROP = 96


def make_scans(root: Path, n: int, shape: Sequence[int]) -> Path:
    """N brain-like float32 volumes: a smooth textured ellipsoid on a zero background, a few
    NaN voxels outside it (t1-linear outputs can hold them), written as .nii.gz and as the
    float16 min-max-scaled .npy the tensor cache holds; returns the cache index."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    rows = []
    for k in range(n):
        radii = rng.uniform(0.75, 0.9, size=3)
        inside = ((grid / radii[:, None, None, None]) ** 2).sum(0) < 1
        texture = gaussian_filter(rng.random(shape, dtype=np.float32), 1.5)
        v = np.where(inside, 300 + 900 * texture, 0).astype(np.float32)
        v[0, 0, : 5 + k] = np.nan
        nii = root / f"sub-{k:02d}_T1w.nii.gz"
        nib.save(nib.Nifti1Image(v, np.diag([1.5, 1.5, 1.5, 1])), nii)
        clean = np.nan_to_num(v)
        clean = (clean - clean.min()) / (clean.max() - clean.min())
        npy = root / f"sub-{k:02d}.npy"
        np.save(npy, clean.astype(np.float16))
        rows.append(
            {
                "participant_id": f"sub-{k:02d}",
                "session_id": "ses-M000",
                "split": "train",
                "diagnosis": ("CN", "MCI", "AD")[k % 3],
                "label": k % 3,
                "path": str(npy),
                "nifti": str(nii),
            }
        )
    index = root / "index.tsv"
    pd.DataFrame(rows).to_csv(index, sep="\t", index=False)
    return index


class StudyLikeDataset(Dataset[tuple[torch.Tensor, int]]):
    """The reference study's per-sample work, re-done from the NIfTI every time."""

    def __init__(self, paths: list[str], labels: list[int]) -> None:
        self.paths, self.labels = paths, labels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        img = nib.load(self.paths[i]).get_fdata()
        img = np.nan_to_num(img)
        img = (img - img.min()) / (img.max() - img.min())
        if random.random() < 0.5:
            img = gaussian_filter(img, sigma=random.uniform(0.0, 1.5))
        x, y, z = (random.randint(0, s - CROP) for s in img.shape)
        crop = img[x : x + CROP, y : y + CROP, z : z + CROP]
        return torch.from_numpy(np.ascontiguousarray(crop, dtype=np.float32)).unsqueeze(0), (
            self.labels[i]
        )


def _peak_rss_mb() -> float:
    """This process's peak RSS. /proc's VmHWM where it exists: Linux's ru_maxrss survives
    exec, so a subprocess would report its parent's peak if the parent's was higher."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _one_thread(_: int) -> None:
    torch.set_num_threads(1)


def build_loader(kind: str, index: Path, workers: int, batch_size: int) -> DataLoader:
    """The loader under test: earlyad's on the tensor cache, or the study-like one on NIfTI."""
    table = pd.read_csv(index, sep="\t")
    if kind == "ours":
        from earlyad.train.data import AugmentConfig, CachedVolumes, make_loader

        loader = make_loader(
            CachedVolumes(index, "train"),
            AugmentConfig(),
            seed=0,
            train=True,
            batch_size=batch_size,
            num_workers=workers,
        )
    else:
        dataset = StudyLikeDataset(table.nifti.tolist(), table.label.tolist())
        loader = DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=True,
            num_workers=workers,
            persistent_workers=workers > 0,
            worker_init_fn=_one_thread if workers else None,
        )
    return loader


def run_child(kind: str, index: Path, workers: int, batch_size: int, seconds: float) -> dict:
    """Iterate epochs until ``seconds`` have passed after the first batch; report throughput."""
    torch.set_num_threads(1)
    loader = build_loader(kind, index, workers, batch_size)
    samples, start, epoch = 0, None, 0
    while start is None or time.perf_counter() - start < seconds:
        epoch += 1
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        for batch in loader:
            if start is None:  # worker start-up and first reads are not timed
                start = time.perf_counter()
                continue
            samples += len(batch[1])
    elapsed = time.perf_counter() - start
    del loader  # joins persistent workers, so their RSS reaches RUSAGE_CHILDREN
    self_mb = _peak_rss_mb()
    child_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {
        "kind": kind,
        "samples": samples,
        "seconds": elapsed,
        "samples_per_second": samples / elapsed,
        "peak_rss_main_mb": self_mb,
        "peak_rss_worker_mb": child_mb,
    }


def train_child(
    kind: str, index: Path, workers: int, batch_size: int, steps: int, width: float
) -> dict:
    """A short training run fed by the loader; its peak host memory (main and workers)."""
    from earlyad.train.model import ClassifierCNN, ModelConfig

    torch.manual_seed(0)
    model = ClassifierCNN(ModelConfig(width=width))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    loader = build_loader(kind, index, workers, batch_size)
    done, start = 0, time.perf_counter()
    while done < steps + 1:
        for batch in loader:  # ours yields (x, label, index), the study's (x, label)
            x, y = batch[0], batch[1]
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x), torch.as_tensor(y))
            loss.backward()
            optimizer.step()
            done += 1
            if done == steps + 1:
                break
    elapsed = time.perf_counter() - start
    del loader
    return {
        "kind": kind,
        "steps": done,
        "seconds": elapsed,
        "peak_rss_main_mb": _peak_rss_mb(),
        "peak_rss_worker_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=16, help="number of scans")
    parser.add_argument(
        "--workers", type=int, nargs="+", default=[0, 2], help="loader worker process counts"
    )
    parser.add_argument("--shape", type=int, nargs=3, default=list(SHAPE), help="volume shape")
    parser.add_argument(
        "--study-shape",
        type=int,
        nargs=3,
        default=[169, 208, 179],
        help="grid the study's loader reads in the pipeline comparison (t1-linear's 1 mm crop)",
    )
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=10.0, help="timed seconds per loader")
    parser.add_argument(
        "--train-steps", type=int, default=8, help="steps of the memory run (0: skip it)"
    )
    parser.add_argument(
        "--width",
        type=float,
        default=0.0625,
        help="model width of that run (small: on a GPU the activations are not host memory)",
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="memory runs per loader (the median is shown)"
    )
    parser.add_argument(
        "--step-device",
        choices=["auto", "cuda", "cpu", "none"],
        default="auto",
        help="where to time a training step (auto: CUDA when there is one, else skip it)",
    )
    parser.add_argument("--step-width", type=float, default=1.0, help="model width of the step")
    parser.add_argument("--step-batch", type=int, default=36, help="batch size of the step")
    parser.add_argument("--step-steps", type=int, default=10, help="timed steps")
    parser.add_argument("--step-only", action="store_true", help="only time the training step")
    parser.add_argument("--child", choices=["ours", "study"], help=argparse.SUPPRESS)
    parser.add_argument("--train-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--index", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child and args.train_child:
        torch.set_num_threads(max(1, (os.cpu_count() or 1)))
        result = train_child(
            args.child, args.index, args.workers[0], args.batch_size, args.train_steps, args.width
        )
        print(json.dumps(result))
        return
    if args.child:
        result = run_child(args.child, args.index, args.workers[0], args.batch_size, args.seconds)
        print(json.dumps(result))
        return

    if not args.step_only:
        loader_benchmarks(args)
    step_benchmark(args)


def loader_benchmarks(args: argparse.Namespace) -> None:
    """Throughput of both loaders per worker count, then the memory of a training run."""
    shape = "x".join(map(str, args.shape))
    print(
        f"{args.n} scans, crop {CROP}^3, blur p=0.5 sigma~U[0,1.5], batch "
        f"{args.batch_size}, {args.seconds:g} s timed per loader, load average "
        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    )
    header = f"{'loader':<20}{'workers':>8}{'samples/s':>11}{'ms/sample':>11}"
    print(header + f"{'peak RSS main MB':>18}{'peak RSS worker MB':>20}")
    with tempfile.TemporaryDirectory(prefix="earlyad-bench-") as tmp:
        index = make_scans(Path(tmp) / "ours", args.n, args.shape)
        study_index = make_scans(Path(tmp) / "study", args.n, args.study_shape)
        study_grid = "x".join(map(str, args.study_shape))
        runs = [("study", index, shape), ("study", study_index, study_grid), ("ours", index, shape)]
        for workers in args.workers:
            speed = {}
            for kind, idx, grid in runs:
                r = _run(kind, idx, workers, args.batch_size, args.seconds)
                speed[grid, kind] = r["samples_per_second"]
                worker_mb = f"{r['peak_rss_worker_mb']:.0f}" if workers else "-"
                print(
                    f"{kind + ' ' + grid:<20}{workers:>8}{r['samples_per_second']:>11.1f}"
                    f"{1000 / r['samples_per_second']:>11.1f}"
                    f"{r['peak_rss_main_mb']:>18.0f}{worker_mb:>20}",
                    flush=True,
                )
            ours = speed[shape, "ours"]
            print(
                f"ratio ours/study with {workers} workers: same grid "
                f"{ours / speed[shape, 'study']:.1f}x, pipeline "
                f"{ours / speed[study_grid, 'study']:.1f}x",
                flush=True,
            )
        if args.train_steps > 0:
            workers = args.workers[-1]
            print(
                f"peak host memory of a training run (width {args.width:g}, batch "
                f"{args.batch_size}, {args.train_steps} steps, {workers} workers; median of "
                f"{args.repeats}):"
            )
            print(
                f"{'loader':<20}{'main MB':>10}{'worker MB':>11}{'peak PSS MB':>13}"
                f"{'peak RSS sum MB':>17}"
            )
            pss, rss = {}, {}
            for kind, idx, grid in runs:
                r = _median_run(
                    args.repeats,
                    kind,
                    idx,
                    workers,
                    args.batch_size,
                    args.seconds,
                    args.train_steps,
                    args.width,
                )
                worker_mb = r["peak_rss_worker_mb"] if workers else 0.0
                pss[grid, kind], rss[grid, kind] = r["tree_pss_mb"], r["tree_rss_mb"]
                print(
                    f"{kind + ' ' + grid:<20}{r['peak_rss_main_mb']:>10.0f}{worker_mb:>11.0f}"
                    f"{r['tree_pss_mb']:>13.0f}{r['tree_rss_mb']:>17.0f}",
                    flush=True,
                )
            for name, peak in (("PSS", pss), ("RSS sum", rss)):
                ours = peak[shape, "ours"]
                print(
                    f"peak memory ours/study ({name}, all processes): same grid "
                    f"{ours / peak[shape, 'study']:.2f}, pipeline "
                    f"{ours / peak[study_grid, 'study']:.2f}",
                    flush=True,
                )


def step_benchmark(args: argparse.Namespace) -> None:
    """Time the trainer's step on ``--step-device`` and print its achieved TFLOP/s."""
    from earlyad.train.flops import bf16_peak_tflops, training_flops_per_sample
    from earlyad.train.model import ClassifierCNN, ModelConfig
    from earlyad.train.trainer import train_step

    choice = args.step_device
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "none"
    if choice == "none":
        print("training step: no CUDA device here, not timed (--step-device cpu times it on CPU)")
        return
    if choice == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--step-device cuda: torch sees no CUDA device")
    device = torch.device(choice)
    config = ModelConfig(width=args.step_width)
    torch.manual_seed(0)
    model = ClassifierCNN(config)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as the trainer does: fixed input, autotuned
        model = model.to(device, memory_format=torch.channels_last_3d)
        name = torch.cuda.get_device_name(device)
    else:
        name = f"CPU, {torch.get_num_threads()} threads"
    optimizer = torch.optim.Adam(model.parameters(), lr=0.0018)
    size = config.input_size
    x = torch.rand((args.step_batch, 1, size, size, size), device=device)
    y = torch.arange(args.step_batch, device=device) % 3
    times = []
    for i in range(args.step_steps + 2):  # two untimed: allocation and cudnn autotuning
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        train_step(model, optimizer, x, y, device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= 2:
            times.append(time.perf_counter() - start)
    seconds = float(np.median(times))
    work = training_flops_per_sample(config) * args.step_batch
    achieved = work / seconds / 1e12
    print(
        f"training step on {name}: width {args.step_width:g}, batch {args.step_batch}, "
        f"{'bf16 autocast' if device.type == 'cuda' else 'float32'}: median {seconds:.4g} s "
        f"over {len(times)} steps, {args.step_batch / seconds:.1f} samples/s, "
        f"{work / 1e12:.4g} TFLOP per step, {achieved:.4g} TFLOP/s achieved",
        flush=True,
    )
    peak = bf16_peak_tflops(name) if device.type == "cuda" else None
    if peak:
        print(f"  {achieved / peak:.1%} of the {peak:g} TFLOP/s dense bf16 peak of the {name}")
    elif device.type == "cuda":
        print(f"  the bf16 peak of the {name} is not in earlyad.train.flops.BF16_PEAK_TFLOPS")


def _run(
    kind: str,
    index: Path,
    workers: int,
    batch_size: int,
    seconds: float,
    train_steps: int = 0,
    width: float = 0.0625,
) -> dict:
    """One loader measurement (or, with ``train_steps``, one training run) in a fresh
    subprocess, so each has its own peak RSS."""
    cmd = [sys.executable, __file__, "--child", kind, "--index", str(index)]
    cmd += ["--workers", str(workers), "--batch-size", str(batch_size), "--seconds", str(seconds)]
    if not train_steps:
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        return json.loads(out.strip().splitlines()[-1])
    cmd += ["--train-child", "--train-steps", str(train_steps), "--width", str(width)]
    with tempfile.TemporaryFile("w+") as stdout:
        child = subprocess.Popen(cmd, stdout=stdout, stderr=subprocess.PIPE, text=True)
        peak_rss = peak_pss = 0.0
        while child.poll() is None:
            rss, pss = _tree_memory_mb(child.pid)
            peak_rss, peak_pss = max(peak_rss, rss), max(peak_pss, pss)
            time.sleep(0.02)
        if child.returncode:
            raise subprocess.CalledProcessError(child.returncode, cmd, stderr=child.stderr.read())
        stdout.seek(0)
        result = json.loads(stdout.read().strip().splitlines()[-1])
    return {**result, "tree_rss_mb": peak_rss, "tree_pss_mb": peak_pss}


def _median_run(repeats: int, *args: object) -> dict:
    """:func:`_run` ``repeats`` times; the median of every number (a memory peak moves by
    tens of MB from one run to the next)."""
    results = [_run(*args) for _ in range(max(1, repeats))]  # type: ignore[arg-type]
    return {
        k: float(np.median([r[k] for r in results])) if isinstance(v, int | float) else v
        for k, v in results[0].items()
    }


def _tree_memory_mb(pid: int) -> tuple[float, float]:
    """(RSS sum, PSS sum) in MB over process ``pid`` and its descendants right now; a process
    that exits while being read is skipped."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0, 0.0
    rss = pss = 0
    for p in procs:
        try:
            info = p.memory_full_info()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        rss += info.rss
        pss += info.pss
    return rss / 2**20, pss / 2**20


if __name__ == "__main__":
    main()
