"""dgstudy: a reproducible study of DeepGaze II.

Submodules are imported lazily so that ``import dgstudy`` is instant and
``dgstudy.datasets.load('osie')`` works without importing torch.
"""
from __future__ import annotations

import importlib

from ._version import __version__  # noqa: F401

_SUBMODULES = {
    "paths", "io", "config", "datasets", "baselines", "metrics", "statistics", "backbones", "features",
    "model", "training", "runs", "evaluation", "ensemble", "ablations", "report", "figures", "predict",
    "predict_files", "imageio", "fixation_csv", "cli", "util", "metrics_fast", "model_fast", "feature_shards",
}


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if name == "load_model":   # deferred on purpose, like the submodules: `import dgstudy` stays instant
        from .predict import load_model
        return load_model
    raise AttributeError(f"module 'dgstudy' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | _SUBMODULES | {"load_model"})
