"""Small helpers shared by the numerical modules (no dgstudy imports).

- :func:`single_threaded_blas`: a context manager limiting BLAS to one thread while small matrix
  products run (performance only; results are the same with or without it).
- :func:`to_device`: a CPU tensor onto a device; to CUDA through pinned memory, asynchronously.
"""
from __future__ import annotations

import contextlib

try:
    from threadpoolctl import threadpool_limits
except ImportError:          # optional: without it the context manager does nothing
    threadpool_limits = None


def single_threaded_blas():
    """Context manager limiting BLAS to one thread (``threadpoolctl``), else a no-op.

    The matrix products of the metrics and baselines are small (e.g. 600x8 @ 8x800); a
    multi-threaded BLAS spends longer synchronising than computing them (see docs/metrics.md).
    """
    if threadpool_limits is None:
        return contextlib.nullcontext()
    return threadpool_limits(1, user_api="blas")


def to_device(x, device, dtype=None):
    """``x`` (a CPU torch tensor) on ``device`` (as ``dtype``). To CUDA it is copied through pinned
    (page-locked) memory without blocking the host; the values are the same as ``x.to(device)``."""
    if str(device).startswith("cuda"):
        x = x.pin_memory().to(device, non_blocking=True)
        return x if dtype is None else x.to(dtype)
    return x.to(device) if dtype is None else x.to(device, dtype)
