"""The pixel convention, defined once: where a fixation falls on an image or on a grid laid over it.

Coordinates are continuous stimulus pixels, 0-based, with pixel centres at integer + 0.5: the
image of ``H`` rows and ``W`` columns spans ``[0, W) x [0, H)``. A grid of ``h x w`` cells laid
over the image cuts each axis into equal cells, so cell ``k`` of ``n`` along an axis of extent
``N`` spans ``[k N / n, (k + 1) N / n)`` and its centre lies at ``(k + 1/2) N / n``.

- :func:`cells` (one axis) and :func:`fixation_cells` (both): the cell of each position,
  ``floor(pos * n / N)``. On the image's own grid (``n == N``) that is exactly ``floor(pos)``,
  the pixel; on another grid a position within 1e-9 of a cell below a cell edge counts as on the
  edge (so that normalised positions ``x / W`` on a grid of ``W`` cells give back ``floor(x)``,
  undoing the rounding of the division). One edge rule: a position outside ``[0, N)`` is an error (loaders drop fixations
  outside the image, so none reaches here); a position inside never lands outside the grid
  (float rounding at the far edge is clamped to the last cell).
- :func:`flat_index`: ``row * w + col``, the index into a flattened ``(h, w)`` map.
- :func:`round_half_up`: the one rounding rule for sizes (``floor(v + 1/2)``, at least 1).

Training, metrics, baselines, sAUC negatives and rescaling all map positions through these
functions, so a fixation scores the same cell everywhere.
"""
from __future__ import annotations

import math

import numpy as np

from ..io import DataError

EDGE_EPS = 1e-9       # in cells: see the module docstring


def round_half_up(v: float) -> int:
    """``floor(v + 1/2)``, at least 1: the rounding of every size derived from another."""
    return max(1, int(math.floor(float(v) + 0.5)))


def cells(pos, extent, n, what: str = "positions") -> np.ndarray:
    """The cell (0 .. n-1) of each position on an axis of ``extent`` cut into ``n`` equal cells.

    ``pos``, ``extent`` and ``n`` are arrays (or scalars) that broadcast: a position, the size of
    its own image along this axis and the number of cells. ``floor(pos * n / extent)``, exactly
    ``floor(pos)`` where ``n == extent``. DataError (naming ``what``) for a position outside
    ``[0, extent)``.
    """
    pos = np.asarray(pos, dtype=np.float64)
    extent = np.broadcast_to(np.asarray(extent, dtype=np.float64), pos.shape)
    n = np.broadcast_to(np.asarray(n, dtype=np.int64), pos.shape)
    bad = ~((pos >= 0) & (pos < extent))
    if bad.any():
        k = int(np.flatnonzero(bad.ravel())[0])
        raise DataError(f"{what}: {int(bad.sum())} positions lie outside their image "
                        f"(e.g. {pos.ravel()[k]:.3f} on an axis of {extent.ravel()[k]:g} px)")
    scaled = np.where(extent == n, pos, pos * (n / extent) + EDGE_EPS)
    return np.minimum(np.floor(scaled).astype(np.int64), n - 1)


def fixation_cells(x, y, height, width, grid: tuple[int, int] | None = None,
                   what: str = "fixations") -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) of fixations ``(x, y)`` on images of ``height x width`` (scalars, or arrays
    per fixation): their pixels, or with ``grid=(h, w)`` their cells of an h x w grid laid over
    each image (module docstring)."""
    h, w = (height, width) if grid is None else grid
    return cells(y, height, h, what), cells(x, width, w, what)


def flat_index(rows, cols, width: int) -> np.ndarray:
    """``row * width + col``: the index into a flattened ``(h, width)`` map."""
    return np.asarray(rows, dtype=np.int64) * int(width) + np.asarray(cols, dtype=np.int64)


def image_fixation_index(dataset, i: int, grid: tuple[int, int] | None = None) -> np.ndarray:
    """Flat indices (:func:`flat_index`) of image ``i``'s fixations (order of ``fixations_of``)
    on its pixels, or on the cells of ``grid=(h, w)``."""
    fx = dataset.fixations_of(i)
    H, W = (int(v) for v in dataset.sizes[i])
    rows, cols = fixation_cells(fx["x"].to_numpy(), fx["y"].to_numpy(), H, W, grid,
                                what=f"{dataset.name} image {i}")
    return flat_index(rows, cols, W if grid is None else grid[1])
