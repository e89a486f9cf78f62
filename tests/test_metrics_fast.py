"""dgstudy.metrics_fast (what metrics.evaluate runs) equals the plain definitions in dgstudy.metrics."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter, gaussian_filter1d

from dgstudy import metrics, metrics_fast
from dgstudy.metrics_fast import Blur

SHAPES_SIGMAS = [(60, 80, 24.0), (7, 5, 10.0), (50, 41, 1.5), (120, 33, 6.3), (1, 9, 2.0), (31, 31, 0.4)]


def test_blur_equals_scipy_gaussian_filter():
    rng = np.random.default_rng(1)
    for (h, w, sigma) in [(60, 80, 24.0), (7, 5, 10.0), (50, 41, 1.5), (120, 33, 6.3)]:
        img = rng.random((h, w))
        ref = gaussian_filter(img, sigma, mode="reflect")
        np.testing.assert_allclose(Blur(sigma).dense(img), ref, rtol=1e-12, atol=1e-14 * ref.max())
        rows, cols = rng.integers(0, h, 9), rng.integers(0, w, 9)
        counts = np.zeros((h, w))
        np.add.at(counts, (rows, cols), 1)
        ref = gaussian_filter(counts, sigma, mode="reflect")
        np.testing.assert_allclose(Blur(sigma).fixations(rows, cols, (h, w)), ref, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("h, w, sigma", SHAPES_SIGMAS)
def test_dense_blur_equals_the_plain_empirical_map_blur(h, w, sigma):
    rng = np.random.default_rng(2)
    density = rng.random((h, w))
    density /= density.sum()
    plain = metrics.expected_saliency_map(density, sigma)
    np.testing.assert_allclose(plain, metrics.gaussian_blur(density, sigma), rtol=0, atol=0)
    np.testing.assert_allclose(Blur(sigma).dense(density), plain, rtol=1e-9, atol=1e-9 * plain.max())


@pytest.mark.parametrize("h, w, sigma", SHAPES_SIGMAS)
@pytest.mark.parametrize("n_fix", [1, 9, 200])          # 200: the dense branch of Blur.fixations
def test_fixation_blur_equals_the_plain_empirical_map(h, w, sigma, n_fix):
    rng = np.random.default_rng(3)
    rows, cols = rng.integers(0, h, n_fix), rng.integers(0, w, n_fix)
    plain = metrics.empirical_saliency_map(rows, cols, (h, w), sigma)
    assert plain.sum() == pytest.approx(n_fix, rel=1e-9)            # 'reflect' keeps the mass
    np.testing.assert_allclose(Blur(sigma).fixations(rows, cols, (h, w)), plain, rtol=1e-9, atol=1e-9)


def test_kernel_and_blur_matrix_are_scipys():
    rng = np.random.default_rng(4)
    for n, sigma in [(40, 3.3), (5, 7.0), (1, 1.0)]:
        v = rng.random(n)
        ref = gaussian_filter1d(v, sigma, mode="reflect", truncate=4.0)
        np.testing.assert_allclose(metrics_fast.blur_matrix(n, sigma) @ v, ref, rtol=1e-12, atol=1e-15)
        impulse = np.zeros(2 * int(4 * sigma + 0.5) + 1)
        impulse[len(impulse) // 2] = 1.0
        np.testing.assert_allclose(metrics_fast.gaussian_kernel1d(sigma),
                                   gaussian_filter1d(impulse, sigma, mode="constant", truncate=4.0),
                                   rtol=1e-12, atol=1e-15)


def _auc_cases():
    rng = np.random.default_rng(5)
    neg = rng.random(4000)
    yield neg[rng.integers(0, 4000, 50)], neg                                   # positives among negatives
    yield rng.normal(size=30), np.exp(4 * rng.normal(size=10000))                # long tail
    yield np.round(8 * rng.random(60)), np.round(8 * rng.random(3000))          # heavy ties
    yield np.ones(5), np.ones(100)                                               # constant
    with np.errstate(divide="ignore"):                                          # -inf (zero density)
        logs = np.log(np.where(rng.random(2000) < 0.1, 0.0, rng.random(2000)))
    yield np.concatenate([logs[:20], [-np.inf, np.inf]]), logs
    yield np.array([np.inf, 0.3]), np.concatenate([rng.random(50), [np.inf, -np.inf]])


@pytest.mark.parametrize("case", range(6))
def test_fast_auc_is_the_plain_auc_bit_for_bit(case):
    pos, neg = list(_auc_cases())[case]
    plain = metrics.auc_per_positive(pos, neg)
    np.testing.assert_array_equal(metrics_fast.auc_per_positive(pos, neg), plain)
    # and the plain one is the definition: the fraction of negatives below, ties counting one half
    brute = ((neg[None, :] < pos[:, None]) + 0.5 * (neg[None, :] == pos[:, None])).mean(1)
    np.testing.assert_allclose(plain, brute, rtol=1e-12, atol=0)
