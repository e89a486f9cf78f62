"""Shared test fixtures. Tests write caches into a temporary data root, never into data/."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np
import pytest

# pysaliency 0.2.22 (the reference implementation we compare against) still calls np.trapz,
# which numpy 2.4 removed; alias it here rather than pinning an old numpy.
if not hasattr(np, "trapz"):
    np.trapz = np.trapezoid

REPO = Path(__file__).resolve().parents[1]
# Trainings and evaluations run in the test process (dgstudy.tasks) unless a test asks for Dask.
os.environ["DGSTUDY_SCHEDULER"] = "sync"
OSIE_DIR = Path(os.environ.get("DGSTUDY_OSIE_DIR", REPO.parent / "shared" / "datasets" / "osie"))


@contextlib.contextmanager
def isolated_study(root: Path):
    """For a module-scoped fixture: DGSTUDY_DATA and DGSTUDY_RESULTS under ``root`` and one torch
    thread (tiny tensors on a shared 2-core machine run many times faster without contention);
    both restored afterwards."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    mp = pytest.MonkeyPatch()
    mp.setenv("DGSTUDY_DATA", str(root / "data"))
    mp.setenv("DGSTUDY_RESULTS", str(root / "results"))
    try:
        yield root
    finally:
        mp.undo()
        torch.set_num_threads(threads)


@pytest.fixture
def data_root(tmp_path, monkeypatch):
    """A fresh, empty DGSTUDY_DATA for the test."""
    root = tmp_path / "data"
    monkeypatch.setenv("DGSTUDY_DATA", str(root))
    return root


@pytest.fixture(scope="session")
def osie_dir():
    if not (OSIE_DIR / "fixations.mat").exists():
        pytest.fail(f"the OSIE mirror is missing at {OSIE_DIR} (set DGSTUDY_OSIE_DIR)")
    return OSIE_DIR


def pytest_collection_modifyitems(config, items):
    """The tests marked ``slow`` (about 20 s or more each) run first: with ``make test``'s two
    processes (pytest-xdist, one test handed out at a time), the longest start first and the
    short ones fill in around them, so both cores stay busy to the end."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)   # stable
