"""Where dgstudy keeps data, caches, results and figures.

Everything is relative to one data root, ``$DGSTUDY_DATA`` if set, else the
repository's ``data/`` folder (when dgstudy runs from a checkout), else
``~/.cache/dgstudy``.
"""
from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def _in_checkout() -> bool:
    return (REPO_ROOT / "pyproject.toml").exists() and (REPO_ROOT / "dgstudy").is_dir()


def data_dir() -> Path:
    """Root for downloads and caches (created on demand)."""
    env = os.environ.get("DGSTUDY_DATA")
    root = Path(env) if env else (REPO_ROOT / "data" if _in_checkout() else Path.home() / ".cache" / "dgstudy")
    root.mkdir(parents=True, exist_ok=True)
    return root


def cache_dir() -> Path:
    d = data_dir() / "cache"
    d.mkdir(parents=True, exist_ok=True)
    return d


def results_dir() -> Path:
    env = os.environ.get("DGSTUDY_RESULTS")
    d = Path(env) if env else (REPO_ROOT / "results" if _in_checkout() else Path.cwd() / "results")
    d.mkdir(parents=True, exist_ok=True)
    return d


def figures_dir() -> Path:
    env = os.environ.get("DGSTUDY_FIGURES")
    d = Path(env) if env else (REPO_ROOT / "figures" if _in_checkout() else Path.cwd() / "figures")
    d.mkdir(parents=True, exist_ok=True)
    return d
