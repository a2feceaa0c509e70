"""Load and validate the workflow configuration against its JSON schema.

Snakemake's own validator prints the whole schema on failure; users need one line that names the
key and says what is wrong, so validation goes through :func:`validate_config` both from
``workflow/rules/common.smk`` and from the CLI.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jsonschema
import yaml

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"

#: Config keys that name an input path which must exist when the key is in use.
PATH_KEYS: dict[str, tuple[str, ...]] = {
    "adni": ("dataset.adni_dir", "dataset.clinical_dir"),
    "bids": ("dataset.bids_dir",),
}


class ConfigError(ValueError):
    """A configuration value is missing, unknown, of the wrong type or points nowhere."""


def load_schema(path: Path = SCHEMA_PATH) -> dict[str, Any]:
    """Read the JSON schema (stored as YAML beside the workflow rules)."""
    with open(path) as fh:
        return yaml.safe_load(fh)


def _key_of(error: jsonschema.ValidationError) -> str:
    """Dotted key path of a validation error, e.g. ``splits.fractions.train``."""
    parts = [str(p) for p in error.absolute_path]
    if error.validator == "additionalProperties":
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        parts.append(extra[0] if extra else "?")
    elif error.validator == "required":
        missing = error.message.split("'")[1] if "'" in error.message else "?"
        parts.append(missing)
    return ".".join(parts) or "<top level>"


def _message_of(error: jsonschema.ValidationError) -> str:
    key = _key_of(error)
    if error.validator == "additionalProperties":
        return (
            f"config key '{key}' is not a known setting; "
            "check its spelling against config/README.md"
        )
    if error.validator == "required":
        return f"config key '{key}' is required but missing; see config/README.md"
    if error.validator == "type" and error.instance is None:
        return f"config key '{key}' must be set for this dataset.source (it is null)"
    return f"config key '{key}': {error.message}"


def _fill_defaults(schema: Mapping[str, Any], config: dict[str, Any]) -> None:
    """Insert schema defaults for absent keys so downstream code sees one complete config."""
    for name, sub in schema.get("properties", {}).items():
        if name not in config and "default" in sub:
            config[name] = copy.deepcopy(sub["default"])
        if isinstance(config.get(name), dict) and sub.get("type") == "object":
            _fill_defaults(sub, config[name])


def _lookup(config: Mapping[str, Any], dotted: str) -> Any:
    value: Any = config
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    return value


def check_paths(config: Mapping[str, Any], base_dir: Path) -> None:
    """Fail when a path key needed by the chosen dataset source does not exist."""
    source = config["dataset"]["source"]
    for key in PATH_KEYS.get(source, ()):
        value = _lookup(config, key)
        path = Path(value) if Path(value).is_absolute() else base_dir / value
        if not path.exists():
            raise ConfigError(
                f"config key '{key}' points to '{value}', which does not exist "
                f"(dataset.source is '{source}'); fix the path in your config file"
            )


def check_semantics(config: Mapping[str, Any]) -> None:
    """Rules a JSON schema cannot express."""
    fractions = config["splits"]["fractions"]
    total = sum(fractions.values())
    if abs(total - 1.0) > 1e-6:
        raise ConfigError(
            f"config key 'splits.fractions': train + val + test must sum to 1, got {total:g}"
        )
    names = [run["name"] for run in config.get("training", {}).get("grid", [])]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(
            f"config key 'training.grid': run name '{dupes[0]}' is used twice; names must differ"
        )
    twins = [n for n in names if n.endswith("_cpp")]
    if twins:
        raise ConfigError(
            f"config key 'training.grid': run name '{twins[0]}' ends in '_cpp', the suffix of "
            "the C++ twin's runs (training.impl); rename the run"
        )
    manifests = config["splits"].get("manifests") or {}
    given = [k for k in ("train", "val", "test") if manifests.get(k)]
    if given and len(given) != 3:
        missing = sorted({"train", "val", "test"} - set(given))
        raise ConfigError(
            f"config key 'splits.manifests.{missing[0]}' is missing: supply all three "
            "manifests (train, val, test) or none"
        )


def validate_config(
    config: Mapping[str, Any], base_dir: Path | None = None, schema: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Validate ``config`` and return a copy with defaults filled in.

    Args:
        config: the parsed configuration.
        base_dir: directory that relative input paths are resolved against (Snakemake's
            working directory). ``None`` skips the existence checks.
        schema: the JSON schema; defaults to ``workflow/schemas/config.schema.yaml``.

    Raises:
        ConfigError: with a single message naming the offending key.
    """
    schema = dict(schema or load_schema())
    result = copy.deepcopy(dict(config))
    _fill_defaults(schema, result)
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(result), key=lambda e: list(e.absolute_path))
    if errors:
        # the deepest error is the most specific one (an allOf/if-then failure wraps its cause)
        best = jsonschema.exceptions.best_match(errors)
        raise ConfigError(_message_of(best))
    check_semantics(result)
    if base_dir is not None:
        check_paths(result, base_dir)
    return result


def load_config(path: Path, base_dir: Path | None = None) -> dict[str, Any]:
    """Read a YAML config file and validate it."""
    try:
        with open(path) as fh:
            raw = yaml.safe_load(fh) or {}
    except FileNotFoundError as err:
        raise ConfigError(f"config file '{path}' does not exist") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"config file '{path}' is not valid YAML: {err}") from err
    return validate_config(raw, base_dir=base_dir)
