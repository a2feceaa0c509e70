"""profiles/local-slurm against a real one-node Slurm cluster (tests/slurm/start_local_slurm.sh).

The cluster has MeluXina's two partitions (cpu, gpu with one GPU GRES) on one node. A copy of the
tiny-cohort run (conftest.workflow_run) re-runs, through the Slurm executor, the normalization of
a few scans (one grouped batch on cpu), training (gpu, --gpus=1) and the local aggregation rules;
Slurm's own job records must show where each ran. Each Slurm job costs ~15 s of polling, so the
test re-runs a slice of the DAG instead of the whole of it. Needs root (it installs and starts
slurmctld, slurmd and munge); CI runs as root.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from test_workflow import snakemake

from earlyad.tables import read_tsv

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "tests" / "slurm"


def skip_reason() -> str | None:
    """Why this machine cannot host the test cluster, or None."""
    if not sys.platform.startswith("linux"):
        return "the local Slurm cluster needs Linux"
    if os.geteuid() != 0:
        return "starting slurmctld/slurmd/munge needs root (CI runs as root)"
    if not shutil.which("slurmctld") and not shutil.which("apt-get"):
        return "Slurm is not installed and apt-get is missing to install it"
    return None


@pytest.fixture(scope="module")
def slurm_cluster():
    """A running cluster for the module; stopped afterwards whatever happened."""
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    try:
        start = subprocess.run(
            ["bash", str(SCRIPTS / "start_local_slurm.sh")],
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert start.returncode == 0, f"start_local_slurm.sh failed:\n{start.stderr[-4000:]}"
        yield
    finally:
        subprocess.run(
            ["bash", str(SCRIPTS / "stop_local_slurm.sh")], capture_output=True, timeout=120
        )


def slurm_jobs(workdir: Path) -> list[dict[str, str]]:
    """Slurm's records (``scontrol show job``) of the jobs submitted from ``workdir``."""
    out = subprocess.run(
        ["timeout", "20", "scontrol", "show", "job", "--details", "--oneliner"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    jobs = []
    for line in out.splitlines():
        fields = dict(re.findall(r"(\w+)=(\S*)", line))
        if fields.get("WorkDir") == str(workdir):
            jobs.append(fields)
    return jobs


@pytest.mark.slow
def test_local_slurm_profile_puts_cpu_rules_on_cpu_and_training_on_gpu(
    workflow_run: Path, slurm_cluster, tmp_path: Path
):
    work = tmp_path / "slurm-run"
    shutil.copytree(workflow_run, work, symlinks=True)
    config = yaml.safe_load((work / "config.yaml").read_text())
    config["benchmark"]["threads"] = []  # the scaling study is tested elsewhere
    (work / "config.yaml").write_text(yaml.safe_dump(config))
    scans = read_tsv(work / "results" / "splits" / "train.tsv").head(2)
    forced = [f"results/normalized/{r.participant_id}/{r.session_id}" for r in scans.itertuples()]
    run_name = config["training"]["grid"][0]["name"]

    started = time.time()
    try:
        snakemake(
            work,
            "--profile",
            str(REPO / "profiles" / "local-slurm"),
            "--configfile",
            str(work / "config.yaml"),
            "--forcerun",
            *forced,
            cores=None,
            timeout=900,
        )
    finally:
        jobs = slurm_jobs(work)

    by_comment = {job.get("Comment", ""): job for job in jobs}
    assert all(job["JobState"] == "COMPLETED" for job in jobs), jobs
    # the two normalizations ran as ONE grouped job on the cpu partition
    normalize = [j for c, j in by_comment.items() if "per_scan_normalize" in c]
    assert len(normalize) == 1, by_comment.keys()
    assert normalize[0]["Partition"] == "cpu"
    assert "gpu" not in normalize[0].get("TresPerJob", "") + normalize[0].get("JOB_GRES", "")
    assert all((work / path).stat().st_mtime > started for path in forced)
    # training ran on the gpu partition with the GPU GRES
    train = [j for c, j in by_comment.items() if c.startswith("rule_train")]
    assert len(train) == 1, by_comment.keys()
    assert train[0]["Partition"] == "gpu"
    assert train[0]["TresPerJob"] == "gres:gpu:1", train[0]  # sbatch --gpus=1
    assert train[0]["JOB_GRES"] == "gpu:1", train[0]  # and Slurm allocated it
    # local rules (qc, grid_summary) stayed off the cluster
    assert not [c for c in by_comment if "qc" in c or "grid_summary" in c]
    # the job had a GPU but no CUDA (the node's GPU is /dev/null): the trainer says so
    device = (work / "results" / "training" / run_name / "device.txt").read_text()
    assert "device\tcpu" in device and "cuda.is_available() is False" in device
    assert f"rule_train_wildcards_{run_name}" in by_comment


def test_skips_only_without_root_or_a_way_to_install_slurm(monkeypatch):
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert "needs root" in skip_reason()
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert "apt-get is missing" in skip_reason()
    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}")
    assert skip_reason() is None
