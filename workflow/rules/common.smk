# Config validation, sample-sheet loading and the input functions of every rule.
import sys
from pathlib import Path

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


wildcard_constraints:
    split="|".join(SPLITS),


def code(*modules):
    """Package modules a rule runs, as inputs, so that a code change reruns the rule."""
    return [str(SRC / "earlyad" / m) for m in modules]


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
    return expand("results/splits/{split}.tsv", split=SPLITS) + [
        "results/splits/summary.tsv",
        "results/splits/balance.tsv",
        "results/splits/cohort.png",
        "results/labels/exclusions.tsv",
    ]
