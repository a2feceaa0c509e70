"""The config schema: the shipped configs validate; bad keys fail with one message naming them."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from earlyad.config import ConfigError, load_config, validate_config

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def config() -> dict:
    return yaml.safe_load((REPO / "config" / "config.yaml").read_text())


def test_shipped_config_is_valid_and_defaults_are_filled(config):
    del config["synthetic"]["voxel_size"]
    out = validate_config(config, base_dir=REPO)
    assert out["synthetic"]["voxel_size"] == 1.5
    assert out["dataset"]["source"] == "synthetic"


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda c: c["splits"].update(seeed=1), "config key 'splits.seeed' is not a known"),
        (lambda c: c.update(extra=1), "config key 'extra' is not a known"),
        (lambda c: c["splits"].update(seed="x"), "config key 'splits.seed': 'x' is not of type"),
        (lambda c: c["synthetic"].update(n_subjects=2.5), "config key 'synthetic.n_subjects'"),
        (lambda c: c["dataset"].update(source="oasis"), "config key 'dataset.source'"),
        (lambda c: c.pop("splits"), "config key 'splits' is required"),
        (lambda c: c["dataset"].update(source="adni"), "config key 'dataset.(adni|clinical)_dir'"),
        (lambda c: c["labels"]["diagnosis_map"].update(SMC="HC"), "diagnosis_map.SMC"),
        (
            lambda c: c["splits"]["fractions"].update(train=0.8),
            "'splits.fractions': train \\+ val \\+ test must sum to 1",
        ),
        (
            lambda c: c["dataset"].update(source="bids", bids_dir="/does/not/exist"),
            "config key 'dataset.bids_dir' points to '/does/not/exist', which does not exist",
        ),
        (
            lambda c: c["splits"]["manifests"].update(train="a.tsv"),
            "splits.manifests.test' is missing",
        ),
    ],
)
def test_bad_config_names_the_key(config, mutate, message):
    bad = copy.deepcopy(config)
    mutate(bad)
    with pytest.raises(ConfigError, match=message):
        validate_config(bad, base_dir=REPO)


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_every_schema_key_is_documented():
    """config/README.md documents every key of the schema."""
    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
    readme = (REPO / "config" / "README.md").read_text()

    def keys(node: dict, prefix: str = ""):
        for name, sub in node.get("properties", {}).items():
            yield prefix + name
            if isinstance(sub, dict) and "properties" in sub:
                yield from keys(sub, prefix + name + ".")

    missing = [k for k in keys(schema) if f"`{k}`" not in readme]
    assert not missing, f"undocumented config keys: {missing}"


def test_adni_study_config_validates_with_the_papers_settings(tmp_path):
    config = yaml.safe_load((REPO / "config" / "adni.yaml").read_text())
    config["dataset"]["adni_dir"] = str(tmp_path)
    config["dataset"]["clinical_dir"] = str(tmp_path)
    out = validate_config(config, base_dir=REPO)
    training = out["training"]
    assert (training["lr"], training["batch_size"], training["epochs"]) == (0.0018, 36, 100)
    assert training["width"] == 1.0 and len(training["grid"]) == 3


def test_duplicate_grid_run_names_are_refused(config):
    config["training"]["grid"] = [{"name": "a"}, {"name": "a", "lr": 0.1}]
    with pytest.raises(ConfigError, match="run name 'a' is used twice"):
        validate_config(config)
