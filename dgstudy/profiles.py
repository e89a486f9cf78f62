"""Named parameter sets (``paper``, ``osie``, ``smoke``) for the notebook chain.

The YAML files beside this module are what the Makefile hands to papermill
(``papermill -f dgstudy/profiles/<name>.yaml``); :func:`load` reads the same files
for use from Python.
"""
from __future__ import annotations

from pathlib import Path

import yaml

PROFILE_DIR = Path(__file__).with_name("profiles")


def names() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))


def path(name: str) -> Path:
    p = PROFILE_DIR / f"{name}.yaml"
    if not p.exists():
        raise KeyError(f"unknown profile {name!r}; available: {', '.join(names())}")
    return p


def load(name: str, **overrides) -> dict:
    """The profile's parameters, with ``overrides`` applied and derived defaults filled in."""
    params = yaml.safe_load(path(name).read_text())
    params.update({k: v for k, v in overrides.items() if v is not None})
    return resolve(params)


def resolve(params: dict) -> dict:
    """Fill derived defaults: the run name and the device."""
    params = dict(params)
    if not params.get("run"):
        params["run"] = f"{params['profile']}-{params['backbone']}"
    if params.get("device", "auto") == "auto":
        import torch
        params["device"] = "cuda" if torch.cuda.is_available() else "cpu"
    return params
