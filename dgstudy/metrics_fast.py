"""Exact speed-ups of the plain definitions in :mod:`dgstudy.metrics` (used by ``metrics.evaluate``).

- :class:`Blur` ``(sigma)``: ``.dense(map)`` == ``metrics.gaussian_blur(map, sigma)`` (in the DCT
  basis) and ``.fixations(rows, cols, shape)`` == ``metrics.empirical_saliency_map`` (a product of
  two blur matrices); equal to rounding (tests/test_metrics_fast.py).
- :func:`auc_per_positive`: the same numbers as ``metrics.auc_per_positive`` (bit for bit), by
  binning the values instead of sorting all negatives.
- :func:`gaussian_kernel1d`, :func:`blur_matrix`: scipy's Gaussian kernel and 1-D filter matrix.

Why each is exact, and what it saves: docs/metrics.md.
"""
from __future__ import annotations

import numpy as np
from scipy.fft import dct, idct
from scipy.ndimage import gaussian_filter1d


# -- the empirical-map blur ---------------------------------------------------------------------
def gaussian_kernel1d(sigma: float, truncate: float = 4.0) -> np.ndarray:
    """The normalised kernel of ``scipy.ndimage.gaussian_filter1d`` (radius ``int(truncate*sigma+0.5)``)."""
    radius = int(truncate * float(sigma) + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def blur_matrix(n: int, sigma: float, mode: str = "reflect") -> np.ndarray:
    """(n, n) matrix ``B`` with ``B @ v == scipy.ndimage.gaussian_filter1d(v, sigma, mode=mode)``."""
    return gaussian_filter1d(np.eye(n), sigma, axis=0, mode=mode, truncate=4.0)


class Blur:
    """The empirical-map blur of :mod:`dgstudy.metrics` at one ``sigma``, fast and exact to rounding.

    ``dense(map)`` is :func:`dgstudy.metrics.gaussian_blur` (``scipy.ndimage.gaussian_filter(map,
    sigma, mode='reflect', truncate=4)``); ``fixations(rows, cols, shape)`` is
    :func:`dgstudy.metrics.empirical_saliency_map`.

    scipy's ``'reflect'`` boundary is the half-sample symmetric extension, under which convolution
    with a symmetric kernel is diagonal in the DCT-II basis: blur = IDCT(DCT(map) * response), the
    response being the real DFT of the (truncated, normalised) scipy kernel wrapped onto a circle
    of length 2n. Agrees with scipy to rounding for any size and sigma (tested).
    """

    def __init__(self, sigma: float):
        self.sigma = float(sigma)
        self.kernel = gaussian_kernel1d(self.sigma)
        self._response = {}

    def response(self, n: int) -> np.ndarray:
        if n not in self._response:
            r = (len(self.kernel) - 1) // 2
            circle = np.zeros(2 * n)
            np.add.at(circle, np.arange(-r, r + 1) % (2 * n), self.kernel)
            self._response[n] = np.fft.rfft(circle).real[:n]
        return self._response[n]

    def dense(self, image: np.ndarray) -> np.ndarray:
        """``gaussian_blur(image, sigma)`` (a dense map)."""
        coef = dct(dct(image, type=2, axis=0, norm="ortho"), type=2, axis=1, norm="ortho")
        coef *= self.response(image.shape[0])[:, None]
        coef *= self.response(image.shape[1])[None, :]
        return idct(idct(coef, type=2, axis=1, norm="ortho"), type=2, axis=0, norm="ortho")

    def columns(self, n: int) -> np.ndarray:
        """``B.T`` (contiguous), ``B`` the (n, n) matrix with ``B @ v`` = the 1-D filter (cached)."""
        if ("BT", n) not in self._response:
            self._response[("BT", n)] = np.ascontiguousarray(blur_matrix(n, self.sigma, "reflect").T)
        return self._response[("BT", n)]

    def fixations(self, rows, cols, shape) -> np.ndarray:
        """The blurred fixation count map, ``empirical_saliency_map(rows, cols, shape, sigma)``.

        A sum of separable kernels: ``By[:, rows] @ Bx[:, cols].T`` (cheaper than a dense blur
        for the ~100 fixations of an image).
        """
        if len(rows) > min(shape) // 2:
            h, w = shape
            counts = np.bincount(np.asarray(rows) * w + np.asarray(cols), minlength=h * w)
            return self.dense(counts.reshape(h, w).astype(np.float64))
        return self.columns(shape[0])[rows].T @ self.columns(shape[1])[cols]


# -- AUC ------------------------------------------------------------------------------------------
def auc_per_positive(positives: np.ndarray, negatives: np.ndarray) -> np.ndarray:
    """:func:`dgstudy.metrics.auc_per_positive` (``P(neg < pos) + P(neg == pos) / 2`` per positive).

    The same numbers bit for bit (and pysaliency's ``general_rocs_per_positive``), but without
    sorting all negatives: values are first binned on a uniform grid (binning is monotone, so a
    negative in a lower bin is smaller), and only the negatives sharing a bin with some positive
    are sorted and compared exactly.
    """
    positives = np.asarray(positives, dtype=np.float64).ravel()
    negatives = np.asarray(negatives, dtype=np.float64).ravel()
    n = len(negatives)
    lo = min(negatives.min(), positives.min())
    hi = max(negatives.max(), positives.max())
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return _auc_by_search(positives, negatives)
    if hi == lo:
        return np.full(len(positives), 0.5)
    n_bins = int(min(1 << 16, max(256, n // 32)))
    scale = n_bins / (hi - lo)

    def binned(v):
        return np.minimum(((v - lo) * scale).astype(np.int64), n_bins - 1)

    bn, bp = binned(negatives), binned(positives)
    counts = np.bincount(bn, minlength=n_bins)
    below_bin = np.cumsum(counts) - counts                  # negatives in strictly lower bins
    shared = np.zeros(n_bins, dtype=bool)
    shared[bp] = True
    same = np.sort(negatives[shared[bn]])                   # negatives in the positives' bins
    start = np.searchsorted(binned(same), bp, side="left")  # first of each positive's bin
    left = np.searchsorted(same, positives, side="left")
    right = np.searchsorted(same, positives, side="right")
    less = below_bin[bp] + (left - start)
    return (less + 0.5 * (right - left)) / n


def _auc_by_search(positives: np.ndarray, negatives: np.ndarray) -> np.ndarray:
    """The same by binary search of every negative in the sorted positives (handles +-inf)."""
    u, inverse = np.unique(positives, return_inverse=True)
    k = len(u)
    # v <= u_j  <=>  #{u < v} <= j ;  v < u_j  <=>  #{u <= v} <= j
    at_most = np.cumsum(np.bincount(np.searchsorted(u, negatives, side="left"), minlength=k + 1))[:k]
    below = np.cumsum(np.bincount(np.searchsorted(u, negatives, side="right"), minlength=k + 1))[:k]
    return (0.5 * (below + at_most) / len(negatives))[inverse]
