"""Named parameter sets (``paper``, ``osie``, ``osie_extended``, ``smoke``) for the notebook chain.

Each notebook's parameters are a profile name and a dict of overrides (papermill sets both; the
Makefile passes ``PROFILE`` and ``BACKBONE``/``OVERRIDES``); :func:`load` turns them into the
parameter dict. Any :class:`dgstudy.training.TrainConfig` field may be overridden too (e.g.
``{"readout": "deepgaze1"}``). :func:`run_name` is the one rule for a run's folder name.
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


def run_name(prefix: str, backbone: str, readout: str | None = None) -> str:
    """``<prefix>-<backbone>`` (prefix: the profile, or the dataset outside a profile), plus
    ``-<readout>`` for a readout other than the paper's ``deepgaze2``."""
    name = f"{prefix}-{backbone}"
    return name if readout in (None, "deepgaze2") else f"{name}-{readout}"


def resolve(params: dict) -> dict:
    """Fill derived defaults: the run name (:func:`run_name` of ``run_prefix``, default the
    profile's name) and the device."""
    params = dict(params)
    if not params.get("run"):
        params["run"] = run_name(params.get("run_prefix") or params["profile"], params["backbone"],
                                 params.get("readout"))
    if params.get("device", "auto") == "auto":
        import torch
        params["device"] = "cuda" if torch.cuda.is_available() else "cpu"
    return params
