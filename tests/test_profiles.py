"""The Slurm profiles: MeluXina passes lint and a dry run; local-slurm mirrors its structure;
cluster names live only in profiles/."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import yaml
from test_workflow import snakemake

REPO = Path(__file__).resolve().parents[1]
PROFILES = REPO / "profiles"
GPU_RULES = ("train", "gradcam", "scaling_train")


def profile(name: str) -> dict:
    return yaml.safe_load((PROFILES / name / "config.yaml").read_text())


def study_config(tmp_path: Path) -> Path:
    """config/adni.yaml with its user-filled paths pointed at an (empty) ADNI download."""
    config = yaml.safe_load((REPO / "config" / "adni.yaml").read_text())
    for key in ("adni_dir", "clinical_dir"):
        (tmp_path / key).mkdir()
        config["dataset"][key] = str(tmp_path / key)
    path = tmp_path / "adni.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def snakemake_meluxina(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    profile_args = ["--profile", str(PROFILES / "meluxina")]
    config_args = ["--configfile", str(study_config(tmp_path))]
    return snakemake(tmp_path, *profile_args, *config_args, *args, cores=None)


def test_meluxina_profile_passes_lint(tmp_path):
    out = snakemake_meluxina(tmp_path, "--lint")
    assert "Congratulations, your workflow is in a good condition" in out.stdout + out.stderr


def test_meluxina_profile_dry_run_sends_training_to_one_gpu(tmp_path):
    # The profile deploys conda envs; a machine without conda checks everything else.
    sdm = [] if shutil.which("conda") else ["--software-deployment-method", "env-modules"]
    out = snakemake_meluxina(tmp_path, "-n", *sdm).stdout
    blocks = re.split(r"\n(?=(?:local)?(?:rule|checkpoint) )", out)
    train = [b for b in blocks if b.startswith("rule train:")]
    assert len(train) == len(
        yaml.safe_load((REPO / "config" / "adni.yaml").read_text())["training"]["grid"]
    )
    for block in train:
        for setting in ("slurm_partition=gpu", "gpu=1", "cpus_per_gpu=8", "slurm_account=p200895"):
            assert setting in block, block
        assert "threads: 8" in block, block  # not capped by the default profile's cores
    scaling = [b for b in blocks if b.startswith("rule scaling_train:")]
    assert {re.search(r"threads=(\d+)", b).group(1) for b in scaling} == {"8", "16", "32", "64"}
    labels = next(b for b in blocks if b.startswith("rule labels:"))
    assert "slurm_partition=cpu" in labels and "qos=" in labels


def test_local_slurm_mirrors_meluxina():
    meluxina, local = profile("meluxina"), profile("local-slurm")
    assert meluxina["executor"] == local["executor"] == "slurm"
    assert set(meluxina["set-resources"]) == set(local["set-resources"])
    for rule in GPU_RULES:
        for name in ("meluxina", "local-slurm"):
            resources = profile(name)["set-resources"][rule]
            assert resources["slurm_partition"] == "gpu" and resources["gpu"] == 1, (name, rule)
    assert meluxina["default-resources"]["slurm_partition"] == "cpu"
    assert local["default-resources"]["slurm_partition"] == "cpu"
    assert meluxina["groups"] == local["groups"]
    groups = {g.split("=")[1] for g in meluxina["groups"]}
    for p in (meluxina, local):
        assert {c.split("=")[0] for c in p["group-components"]} == groups
    assert meluxina["software-deployment-method"] == "conda" and meluxina["conda-prefix"]
    assert local["slurm-status-command"] == "squeue"  # no slurmdbd on the test cluster


def test_default_profile_leaves_cores_to_the_command_line():
    # a workflow profile overrides --profile; cores there would cap Slurm jobs' threads
    assert "cores" not in profile("default")


def test_cluster_names_live_only_in_profiles():
    names = re.compile(r"slurm_partition|slurm_account|p200895|\bqos\b")
    offenders = [
        str(path.relative_to(REPO))
        for folder in ("workflow", "config", "src")
        for path in (REPO / folder).rglob("*")
        if path.is_file()
        and path.suffix in {".smk", ".py", ".yaml", ".rst"}
        and names.search(path.read_text(errors="replace"))
    ]
    assert not offenders, offenders
