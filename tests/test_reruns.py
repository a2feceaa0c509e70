"""What a config or caption change reruns, read from ``snakemake -n``'s printed reasons.

(``--list-changes params`` is unreliable in Snakemake 9.27, so the tests read the dry run's job
list.) They work on the tiny-cohort run of conftest.workflow_run, restoring anything they change,
or on a copy when they must run something.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from test_workflow import REPO, snakemake, tiny_config

pytestmark = pytest.mark.slow

#: Rules before training: a training hyper-parameter must never make these stale.
UPSTREAM = {
    "synthesize",
    "check_adni",
    "adni_to_bids",
    "labels",
    "split",
    "templates",
    "t1_linear",
    "study_template",
    "normalize",
    "qc",
}


@dataclass(frozen=True)
class Planned:
    """One job of a dry run: its rule, wildcards and the reason Snakemake gives."""

    rule: str
    wildcards: str
    reason: str


def planned_jobs(dry_run_output: str) -> list[Planned]:
    """The jobs a ``snakemake -n`` output lists (rule, checkpoint and local-rule blocks)."""
    jobs: list[Planned] = []
    block: dict[str, str] | None = None
    for line in dry_run_output.splitlines() + [""]:
        head = re.match(r"^(?:local)?(?:rule|checkpoint) (\w+):$", line)
        if head or not line.startswith("    "):
            if block is not None:
                jobs.append(Planned(block["rule"], block["wildcards"], block["reason"]))
            block = {"rule": head.group(1), "wildcards": "", "reason": ""} if head else None
            continue
        key, _, value = line.strip().partition(": ")
        if block is not None and key in ("wildcards", "reason"):
            block[key] = value
    return jobs


def dry_run(workdir: Path) -> list[Planned]:
    out = snakemake(workdir, "--configfile", str(workdir / "config.yaml"), "-n").stdout
    return planned_jobs(out)


def write_config(workdir: Path, config: dict) -> None:
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))


def test_planned_jobs_parser():
    out = (
        "[Sat Dec  5 01:00:22 2026]\nrule train:\n    input: a\n    wildcards: run=x\n"
        "    reason: Params have changed since last execution\n\n"
        "[Sat Dec  5 01:00:22 2026]\nlocalrule grid_summary:\n"
        "    reason: Input files updated by another job: b\n"
        "checkpoint split:\n    reason: Params have changed\nJob stats:\n"
    )
    assert planned_jobs(out) == [
        Planned("train", "run=x", "Params have changed since last execution"),
        Planned("grid_summary", "", "Input files updated by another job: b"),
        Planned("split", "", "Params have changed"),
    ]


@pytest.fixture
def two_runs(workflow_run: Path, tmp_path: Path) -> Path:
    """A copy of the tiny run whose grid has a second run, trained for real (seconds)."""
    work = tmp_path / "two-runs"
    shutil.copytree(workflow_run, work, symlinks=True)
    config = yaml.safe_load((work / "config.yaml").read_text())
    config["training"]["grid"].append({"name": "second", "lr": 0.002})
    write_config(work, config)
    snakemake(work, "--configfile", str(work / "config.yaml"))
    assert not dry_run(work), "a completed run must have nothing to do"
    return work


def test_one_runs_learning_rate_marks_only_that_runs_training_stale(two_runs: Path):
    config = yaml.safe_load((two_runs / "config.yaml").read_text())
    first = config["training"]["grid"][0]["name"]

    config["training"]["grid"][1]["lr"] = 0.005  # the second run only
    write_config(two_runs, config)
    jobs = dry_run(two_runs)
    train = [j for j in jobs if j.rule == "train"]
    assert [j.wildcards for j in train] == ["run=second"], jobs
    assert train[0].reason.startswith("Params have changed"), train[0]
    assert not [j for j in jobs if j.rule in UPSTREAM or f"run={first}" in j.wildcards], jobs
    # the scaling study benchmarks the first run, so it stays as it is
    assert not [j for j in jobs if j.rule == "scaling_train"], jobs
    assert "grid_summary" in {j.rule for j in jobs}  # the selection must be redone

    config["training"]["grid"][1]["lr"] = 0.002
    config["training"]["grid"][0]["lr"] = 0.005  # now the first run only
    write_config(two_runs, config)
    jobs = dry_run(two_runs)
    assert [j.wildcards for j in jobs if j.rule == "train"] == [f"run={first}"], jobs
    assert not [j for j in jobs if j.rule in UPSTREAM or "run=second" in j.wildcards], jobs
    # ... and the scaling runs, which train the first run's settings
    scaling = {j.wildcards for j in jobs if j.rule == "scaling_train"}
    assert scaling == {f"threads={t}" for t in config["benchmark"]["threads"]}, jobs


def test_split_seed_marks_the_split_and_what_reads_it_stale(workflow_run: Path):
    try:
        tiny_config(workflow_run, splits={"seed": 5})
        jobs = dry_run(workflow_run)
    finally:
        tiny_config(workflow_run)
    by_rule = {j.rule: j for j in jobs}
    assert by_rule["split"].reason.startswith("Params have changed"), jobs
    # everything downstream is stale: QC and the tensor cache, training, the grid selection and
    # the scaling runs; the per-scan jobs after the checkpoint (t1-linear, study template,
    # normalization) are re-planned once the new manifests exist (test_workflow checks that)
    for rule in ("qc", "train", "grid_summary", "scaling_train"):
        assert "Input files updated by another job" in by_rule[rule].reason, jobs
    assert not {"synthesize", "adni_to_bids", "check_adni", "labels"} & set(by_rule), jobs


def test_report_caption_change_reruns_nothing(workflow_run: Path):
    caption = REPO / "workflow" / "report" / "train_log.rst"
    text, stat = caption.read_text(), caption.stat()
    try:
        caption.write_text(text + "\nA reworded caption.\n")
        jobs = dry_run(workflow_run)
    finally:
        caption.write_text(text)
        os.utime(caption, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert jobs == [], jobs
