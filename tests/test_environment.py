"""pyproject.toml and environment.yml must list the same packages."""
import re
import tomllib

import yaml

from conftest import REPO

# conda-forge / pytorch channel names that differ from the PyPI names
CONDA_TO_PIP = {"pytorch": "torch"}


def _name(spec: str) -> str:
    return re.split(r"[<>=!~ \[]", spec.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_pyproject_and_environment_yml_agree():
    py = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pip_names = {_name(s) for s in py["dependencies"]}
    pip_names |= {_name(s) for s in py["optional-dependencies"]["test"]}
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    conda_names = set()
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            conda_names |= {_name(s) for s in dep["pip"] if not s.startswith("-")}
        else:
            conda_names.add(CONDA_TO_PIP.get(_name(dep), _name(dep)))
    conda_names -= {"python", "pip"}
    assert pip_names == conda_names, (
        f"only in pyproject: {sorted(pip_names - conda_names)}; "
        f"only in environment.yml: {sorted(conda_names - pip_names)}")
