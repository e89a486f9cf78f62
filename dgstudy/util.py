"""Small helpers shared by the numerical modules (no dgstudy imports).

- :func:`single_threaded_blas`: a context manager limiting BLAS to one thread while small matrix
  products run (performance only; results are the same with or without it).
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
