"""The scalability table and plots (rule scaling_report) from Snakemake benchmark records."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
import yaml
from test_workflow import snakemake

from earlyad.scaling import (
    COLUMNS,
    MEASURED,
    PUBLISHED,
    STUDY_ROWS,
    BenchmarkError,
    plot_metric,
    read_benchmark,
    scaling_table,
)
from earlyad.tables import read_tsv, write_tsv

HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"


def bench(path: Path, seconds: float, rss: float | str, cpu: float) -> Path:
    """A file as Snakemake's benchmark directive writes it."""
    row = [seconds, f"0:00:{int(seconds):02d}", rss, 1, 1, 1, 0, 0, 50, cpu]
    path.write_text(HEADER + "\t".join(map(str, row)) + "\n")
    return path


def device(path: Path, name: str = "cpu") -> Path:
    path.write_text(f"device\t{name}\nreason\ttest\nthreads\t2\n")
    return path


@pytest.fixture
def measured(tmp_path: Path) -> dict[tuple[str, int], tuple[Path, Path]]:
    return {
        ("python", 1): (bench(tmp_path / "p1.tsv", 120.0, 900.5, 118.0), device(tmp_path / "d1")),
        ("python", 2): (bench(tmp_path / "p2.tsv", 80.0, 950.0, 150.0), device(tmp_path / "d2")),
    }


def test_table_puts_our_rows_beside_the_studys(measured):
    table = scaling_table(measured, epochs=1)
    assert list(table.columns) == COLUMNS
    ours = table[table.source == MEASURED].set_index("threads")
    assert ours.loc[1, "elapsed_min"] == pytest.approx(2.0)
    assert ours.loc[2, "cpu_time_min"] == pytest.approx(2.5)
    assert ours.loc[1, "max_rss_mb"] == pytest.approx(900.5)
    assert ours.loc[2, "speedup"] == pytest.approx(1.5)  # 120 s / 80 s
    assert ours.loc[2, "cpu_efficiency"] == pytest.approx(150 / (80 * 2), abs=1e-4)
    assert set(ours["device"]) == {"cpu"} and set(ours["epochs"]) == {1}
    study = table[table.source == PUBLISHED]
    assert len(study) == len(STUDY_ROWS) and set(study["impl"]) == {"python", "cpp"}
    row = study[(study.impl == "python") & (study.threads == 64)].iloc[0]
    assert row["elapsed_min"] == 49.70 and row["max_rss_mb"] == 5528
    assert row["speedup"] == pytest.approx(88.05 / 49.70, abs=1e-4)  # versus the study's 8 threads
    assert study["cpu_time_min"].isna().all()  # not published


def test_table_without_the_study(measured):
    table = scaling_table(measured, epochs=3, include_study=False)
    assert set(table["source"]) == {MEASURED} and len(table) == 2


def test_repetitions_are_averaged_and_missing_rss_is_nan(tmp_path):
    path = tmp_path / "b.tsv"
    path.write_text(
        HEADER
        + "10\t0:00:10\tNA\t1\t1\t1\t0\t0\t50\t9\n"
        + "20\t0:00:20\tNA\t1\t1\t1\t0\t0\t50\t11\n"
    )
    b = read_benchmark(path)
    assert b["seconds"] == 15 and b["cpu_seconds"] == 10 and math.isnan(b["max_rss_mb"])


def test_a_broken_benchmark_file_is_named(tmp_path):
    bad = tmp_path / "python_t8.tsv"
    bad.write_text("s\n")
    with pytest.raises(BenchmarkError, match="python_t8.tsv"):
        read_benchmark(bad)
    with pytest.raises(BenchmarkError, match="missing.tsv"):
        read_benchmark(tmp_path / "missing.tsv")


def test_plots_are_written(measured, tmp_path):
    table = scaling_table(measured, epochs=1)
    for metric in ("elapsed_min", "cpu_time_min", "max_rss_mb"):
        out = tmp_path / f"{metric}.png"
        plot_metric(table, metric, out)
        assert out.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="unknown metric"):
        plot_metric(table, "nope", tmp_path / "x.png")


def test_no_runs_is_refused():
    with pytest.raises(ValueError, match="benchmark.threads"):
        scaling_table({}, epochs=1)


def test_written_table_reads_back(measured, tmp_path):
    write_tsv(scaling_table(measured, epochs=1), tmp_path / "s.tsv")
    back = read_tsv(tmp_path / "s.tsv")
    assert isinstance(back, pd.DataFrame) and "impl" in back.columns and len(back) == 10


@pytest.mark.slow
def test_workflow_scaling_table_and_report(workflow_run: Path):
    """The tiny run (config.yaml's benchmark.threads) measured every thread count, and the
    report shows the table and plots under "Performance"."""
    threads = yaml.safe_load((workflow_run / "config.yaml").read_text())["benchmark"]["threads"]
    assert threads, "config/config.yaml must keep a small benchmark.threads for the demo"
    table = read_tsv(workflow_run / "results" / "scaling" / "scaling.tsv")
    ours = table[table.source == MEASURED]
    assert sorted(ours["threads"].astype(int)) == sorted(threads)
    assert (ours["impl"] == "python").all() and (ours["device"] == "cpu").all()
    assert (ours["elapsed_min"].astype(float) > 0).all()
    assert (ours["max_rss_mb"].astype(float) > 100).all()  # torch alone takes more
    assert (table.source == PUBLISHED).sum() == len(STUDY_ROWS)
    for t in threads:
        log = (workflow_run / "logs" / "scaling_train" / f"python_t{t}.log").read_text()
        assert f"torch threads {t}," in log
    report = workflow_run / "scaling-report.html"
    snakemake(
        workflow_run, "--configfile", str(workflow_run / "config.yaml"), "--report", str(report)
    )
    html = report.read_text(errors="replace")
    assert "Performance" in html and "scaling vs threads" in html
