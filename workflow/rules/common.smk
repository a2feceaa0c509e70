# Config validation, sample-sheet loading and the input functions of every rule.
import sys
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
from snakemake.exceptions import WorkflowError

# The rules call the package in src/ of this checkout, also when it is not pip-installed.
SRC = Path(workflow.basedir) / "src"
sys.path.insert(0, str(SRC))

from earlyad.config import ConfigError, validate_config  # noqa: E402

try:
    _validated = validate_config(config, base_dir=Path.cwd())
except ConfigError as err:
    raise WorkflowError(f"invalid configuration: {err}") from None
config.clear()
config.update(_validated)

SPLITS = ["train", "val", "test"]
SOURCE = config["dataset"]["source"]
SHAREABLE = config["report"]["shareable"]


wildcard_constraints:
    split="|".join(SPLITS),
    participant_id=r"sub-[A-Za-z0-9]+",
    session_id=r"ses-[A-Za-z0-9]+",
    run=r"[A-Za-z0-9_.\-]+",
    threads=r"[0-9]+",


def code(*modules):
    """Package modules a rule runs, as inputs, so that a code change reruns the rule."""
    return [str(SRC / "earlyad" / m) for m in modules]


def private_report(path, **kwargs):
    """``report(path, ...)`` for a file that lists subjects or shows one subject's scan.

    With ``report.shareable: true`` the file stays out of the report (it is still produced), so
    that the report can leave the group without breaking a data use agreement.
    """
    return path if SHAREABLE else report(path, **kwargs)


def adni_download(wildcards):
    """The ADNI image folder and clinical CSV folder: the synthetic cohort or the user's."""
    if SOURCE == "synthetic":
        return {
            "adni": "results/synthetic/ADNI",
            "clinical": "results/synthetic/clinical",
        }
    return {
        "adni": config["dataset"]["adni_dir"],
        "clinical": config["dataset"]["clinical_dir"],
    }


def bids_dir(wildcards):
    """The BIDS dataset that labels are read from: Clinica's conversion, or the user's BIDS."""
    if SOURCE == "bids":
        return config["dataset"]["bids_dir"]
    return "results/bids"


def user_manifests(wildcards):
    """User-supplied split manifests (all three or none; the schema checks)."""
    given = config["splits"].get("manifests") or {}
    return [given[s] for s in SPLITS if given.get(s)]


def all_targets():
    """Everything the default run produces."""
    return (
        expand("results/splits/{split}.tsv", split=SPLITS)
        + [
            "results/splits/summary.tsv",
            "results/splits/balance.tsv",
            "results/splits/cohort.png",
            "results/labels/exclusions.tsv",
            "results/qc/qc.tsv",
            "results/cache/index.tsv",
            "results/training/grid_summary.tsv",
            "results/evaluation/grid_summary.tsv",
            "results/evaluation/comparison.tsv",
            "results/report/exclusion_counts.tsv",
        ]
        + expand("results/training/{run}/learning_curves.png", run=RUNS)
        + expand("results/evaluation/{run}/metrics.json", run=RUNS)
        + (["results/scaling/scaling.tsv"] if SCALING["threads"] else [])
        + expand("results/gradcam/{run}/localization.tsv", run=RUNS)
    )


# ---------------------------------------------------------------- per-scan inputs (checkpoint)
PREP = config["preprocessing"]


def manifest(split):
    """A split manifest, read after the split checkpoint has run."""
    path = checkpoints.split.get().output[split]
    return pd.read_csv(path, sep="\t", dtype=str)


def scan_dirs(stage, splits=SPLITS):
    """Per-scan output folders of ``stage`` for every scan of the given splits."""
    return [
        f"results/{stage}/{row.participant_id}/{row.session_id}"
        for split in splits
        for row in manifest(split).itertuples()
    ]


def scan_image(wildcards):
    """The BIDS T1w image of one scan, from the manifests (the split is a checkpoint)."""
    for split in SPLITS:
        df = manifest(split)
        hit = df[
            (df.participant_id == wildcards.participant_id)
            & (df.session_id == wildcards.session_id)
        ]
        if len(hit):
            return hit.image_path.iloc[0]
    raise WorkflowError(
        f"{wildcards.participant_id} {wildcards.session_id} is in no split manifest"
    )


def train_t1_linear(wildcards):
    """t1-linear outputs of the TRAINING scans only: the study template sees nothing else."""
    return scan_dirs("t1_linear", ["train"])


def normalization_template(wildcards):
    """The template scans are normalized to: the study template or the cropped MNI one."""
    if PREP["template"] == "study":
        return "results/template/study_template.nii.gz"
    return "results/templates/ref_cropped_template.nii.gz"


def all_normalized(wildcards):
    """Normalized folders of every scan in every split."""
    return scan_dirs("normalized")


# ---------------------------------------------------------------- training grid
# training.impl: python trains each run as <name>, cpp as <name>_cpp (rule train_cpp), both both
IMPL = config["training"]["impl"]
RUNS = [
    run["name"] + suffix
    for run in config["training"]["grid"]
    for impl, suffix in (("python", ""), ("cpp", "_cpp"))
    if IMPL in (impl, "both")
]
TRAIN_DEFAULTS = {
    k: v for k, v in config["training"].items() if k not in ("grid", "impl")
}


def run_hyperparameters(wildcards):
    """The full hyper-parameter set of one grid run: defaults overridden by the run's entry.

    As a params function, a change to one run's values marks only that run's jobs stale.
    """
    run = next(r for r in config["training"]["grid"] if r["name"] == wildcards.run)
    return {**TRAIN_DEFAULTS, **{k: v for k, v in run.items() if k != "name"}}


# ---------------------------------------------------------------- scalability study
SCALING = config["benchmark"]


def scaling_threads(wildcards):
    """Cores of one scaling job: its thread count (Slurm's cpus-per-task / cpus-per-gpu)."""
    return int(wildcards.threads)


def scaling_epochs(wildcards):
    """Epochs of every scaling run: benchmark.epochs, else those of the benchmarked grid run."""
    return SCALING["epochs"] or _scaling_run()["epochs"]


def _scaling_run():
    """Hyper-parameters of the grid run the study benchmarks (benchmark.run, else the first)."""
    grid = [run["name"] for run in config["training"]["grid"]]
    name = SCALING["run"] or grid[0]
    if name not in grid:
        raise WorkflowError(
            f"config key 'benchmark.run' names '{name}', which is not a training.grid run "
            f"(runs: {', '.join(grid)})"
        )
    return run_hyperparameters(SimpleNamespace(run=name))


def scaling_hyperparameters(wildcards):
    """The benchmarked grid run's hyper-parameters with this job's threads and epochs."""
    return {
        **_scaling_run(),
        "threads": int(wildcards.threads),
        "epochs": scaling_epochs(wildcards),
    }


if SCALING["threads"]:
    _scaling_run()  # a wrong benchmark.run stops the workflow before anything runs


# ---------------------------------------------------------------- Grad-CAM
def gradcam_settings(wildcards):
    """The ``gradcam:`` settings the stage takes (threads go to the rule's ``threads``)."""
    return {k: v for k, v in config["gradcam"].items() if k != "threads"}


def gradcam_inputs(wildcards):
    """Predictions of the explained split, its normalized scans and, for the synthetic cohort,
    the ground-truth masks with the t1-linear folders holding the transforms they go through.
    """
    split = config["gradcam"]["split"]
    inputs = {
        "predictions": f"results/training/{wildcards.run}/predictions_{split}.tsv",
        "scans": scan_dirs("normalized", [split]),
    }
    if SOURCE == "synthetic":
        inputs["truth"] = "results/synthetic/ground_truth"
        inputs["t1_linear"] = scan_dirs("t1_linear", [split])
    return inputs
