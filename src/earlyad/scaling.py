"""The scalability study: training time, CPU time and memory versus the thread count.

The study (REFERENCE.md, "Scalability study", Tables 4-5 and Figures 8-10) trained its Python
and C++ implementations on one A100 with 8, 16, 32 and 64 threads (``--cpus-per-task``) and
published elapsed minutes and MaxRSS. Rule ``scaling_train`` repeats the training under each
thread count of ``benchmark.threads`` inside Snakemake's ``benchmark:`` directive, which records
wall time, CPU time and peak memory of the whole job; this module turns those records into one
table with the published rows beside ours, and the three plots.

The table has an ``impl`` column (``python`` now; ``cpp`` when the C++ twin's rule writes
``benchmarks/scaling/cpp_t<threads>.tsv``) so both implementations share one table and plot.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

#: Columns of the scaling table, in order.
COLUMNS = [
    "source",
    "impl",
    "threads",
    "device",
    "epochs",
    "elapsed_min",
    "cpu_time_min",
    "max_rss_mb",
    "speedup",
    "cpu_efficiency",
]

#: Source label of the rows measured by this workflow.
MEASURED = "this workflow"
#: Source label of the rows copied from the study.
PUBLISHED = "study (Tables 4-5)"

#: The study's Tables 4-5: (impl, threads) -> (elapsed minutes, MaxRSS MB), one A100 on MeluXina,
#: 100 epochs of the full model. CPU time was not published.
STUDY_ROWS: dict[tuple[str, int], tuple[float, float]] = {
    ("cpp", 8): (52.35, 3762.0),
    ("cpp", 16): (50.03, 3727.0),
    ("cpp", 32): (52.75, 3968.0),
    ("cpp", 64): (51.48, 3958.0),
    ("python", 8): (88.05, 5539.0),
    ("python", 16): (93.08, 5440.0),
    ("python", 32): (98.08, 5440.0),
    ("python", 64): (49.70, 5528.0),
}
STUDY_EPOCHS = 100
STUDY_DEVICE = "cuda (A100 40 GB)"

#: The three plots: table column -> (axis label, file stem suffix).
METRICS: dict[str, str] = {
    "elapsed_min": "elapsed time (min)",
    "cpu_time_min": "total CPU time (min)",
    "max_rss_mb": "MaxRSS (MB)",
}


class BenchmarkError(ValueError):
    """A Snakemake benchmark file that cannot be read (names the file)."""


def read_benchmark(path: Path | str) -> dict[str, float]:
    """Wall seconds, CPU seconds and MaxRSS (MB) of one Snakemake ``benchmark:`` file.

    Snakemake writes one row per repetition with columns ``s`` (wall seconds), ``max_rss`` (MB)
    and ``cpu_time`` (user + system seconds of the job's process tree); repetitions are averaged
    (MaxRSS: the largest) so that ``repeat()`` in the rule smooths noise.
    """
    path = Path(path)
    try:
        df = pd.read_csv(path, sep="\t")
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise BenchmarkError(f"{path}: cannot read the benchmark file ({err})") from err
    missing = {"s", "max_rss", "cpu_time"} - set(df.columns)
    if missing or df.empty:
        raise BenchmarkError(
            f"{path}: not a Snakemake benchmark file (missing columns {sorted(missing)} "
            f"or no rows); rerun its rule with --forcerun scaling_train"
        )
    rss = pd.to_numeric(df["max_rss"], errors="coerce")  # "NA" when the job was too short
    return {
        "seconds": float(df["s"].mean()),
        "cpu_seconds": float(pd.to_numeric(df["cpu_time"], errors="coerce").mean()),
        "max_rss_mb": float(rss.max()) if rss.notna().any() else math.nan,
    }


def read_device(path: Path | str) -> str:
    """The device a training run used, from the trainer's ``device.txt`` (key<TAB>value lines)."""
    for line in Path(path).read_text().splitlines():
        key, _, value = line.partition("\t")
        if key == "device":
            return value
    raise BenchmarkError(f"{path}: no 'device' line (written by earlyad.train.trainer)")


def _add_ratios(table: pd.DataFrame) -> pd.DataFrame:
    """Speed-up versus the fewest threads of the same source and impl, and CPU efficiency
    (CPU time / (elapsed x threads): 1.0 means every thread was busy all the time)."""
    table = table.sort_values(["source", "impl", "threads"]).reset_index(drop=True)
    base = table.groupby(["source", "impl"])["elapsed_min"].transform("first")
    table["speedup"] = base / table["elapsed_min"]
    table["cpu_efficiency"] = table["cpu_time_min"] / (table["elapsed_min"] * table["threads"])
    return table


def scaling_table(
    measured: Mapping[tuple[str, int], tuple[Path, Path]],
    epochs: int,
    include_study: bool = True,
) -> pd.DataFrame:
    """One row per (source, impl, threads): our benchmark records and the study's rows.

    Args:
        measured: (impl, threads) -> (benchmark TSV, device.txt) of each scaling run.
        epochs: epochs each of our scaling runs trained (the study's trained 100), so a reader
            compares per-epoch cost rather than raw minutes.
        include_study: add the study's published rows (Tables 4-5) beside ours.
    """
    if not measured:
        raise ValueError("no scaling runs: set benchmark.threads to a non-empty list")
    rows = []
    for (impl, threads), (bench, device) in sorted(measured.items()):
        b = read_benchmark(bench)
        rows.append(
            {
                "source": MEASURED,
                "impl": impl,
                "threads": int(threads),
                "device": read_device(device),
                "epochs": epochs,
                "elapsed_min": b["seconds"] / 60.0,
                "cpu_time_min": b["cpu_seconds"] / 60.0,
                "max_rss_mb": b["max_rss_mb"],
            }
        )
    if include_study:
        for (impl, threads), (minutes, rss) in STUDY_ROWS.items():
            rows.append(
                {
                    "source": PUBLISHED,
                    "impl": impl,
                    "threads": threads,
                    "device": STUDY_DEVICE,
                    "epochs": STUDY_EPOCHS,
                    "elapsed_min": minutes,
                    "cpu_time_min": math.nan,
                    "max_rss_mb": rss,
                }
            )
    table = _add_ratios(pd.DataFrame(rows))[COLUMNS]
    return table.round({c: 4 for c in ("elapsed_min", "cpu_time_min", "speedup", "cpu_efficiency")})


def plot_metric(table: pd.DataFrame, metric: str, path: Path | str) -> None:
    """One line per (source, impl) of ``metric`` versus threads (log2 x axis, as the study's
    thread counts double). Elapsed time uses a log y axis: the demo's seconds and the study's
    hours then share one figure."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose one of {sorted(METRICS)}")
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for (source, impl), group in table.groupby(["source", "impl"], sort=True):
        values = group.dropna(subset=[metric])
        if values.empty:
            continue
        style = "-o" if source == MEASURED else "--s"
        ax.plot(values["threads"], values[metric], style, label=f"{impl}, {source}")
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(table["threads"].unique()))
    ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
    if metric == "elapsed_min":
        ax.set_yscale("log")
    ax.set_xlabel("threads (cpus per task)")
    ax.set_ylabel(METRICS[metric])
    ax.set_title(f"{METRICS[metric]} vs threads")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
