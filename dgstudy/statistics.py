"""Bootstrap statistics over images, the unit the study generalises over.

Images are resampled with replacement (fixations stay with their image); a per-fixation average
over images is the ratio ``sum_i n_i v_i / sum_i n_i`` (``n_i`` fixations and per-fixation mean
``v_i`` of image ``i``), recomputed in every resample; intervals are percentile intervals. The
same ``seed`` gives the same resamples, so intervals of several runs on one data set (and paired
differences) use identical image sets.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.stats

from .metrics import MAIN_AVERAGE


@dataclass(frozen=True)
class Interval:
    """A point estimate with a percentile bootstrap interval."""

    estimate: float
    low: float
    high: float
    level: float
    n_boot: int

    def as_dict(self, name: str) -> dict:
        """``{name: estimate, name_lo: low, name_hi: high}``."""
        return {name: self.estimate, f"{name}_lo": self.low, f"{name}_hi": self.high}

    def __str__(self) -> str:
        return f"{self.estimate:.4f} [{self.low:.4f}, {self.high:.4f}]"


def _resample_counts(n: int, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n) how often each of n units is drawn in each resample (sum n per row)."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(np.float64)


def _interval(estimate: float, boots: np.ndarray, level: float) -> Interval:
    alpha = (1.0 - level) / 2.0
    boots = boots[np.isfinite(boots)]
    lo, hi = np.quantile(boots, [alpha, 1.0 - alpha]) if boots.size else (np.nan, np.nan)
    return Interval(float(estimate), float(lo), float(hi), level, int(boots.size))


def bootstrap_mean(values, weights=None, n_boot: int = 1000, level: float = 0.95,
                   seed: int = 0) -> Interval:
    """Weighted mean ``sum w v / sum w`` over units, with a bootstrap interval over units.

    ``values``: one number per unit (image); ``weights``: e.g. the fixation count of each image,
    which makes the estimate the per-fixation average. Units are resampled with replacement.
    """
    v = np.asarray(values, dtype=np.float64)
    w = np.ones_like(v) if weights is None else np.asarray(weights, dtype=np.float64)
    if v.ndim != 1 or v.shape != w.shape or v.size == 0:
        raise ValueError(f"need matching non-empty 1-d values/weights, got {v.shape} and {w.shape}")
    return bootstrap_ratio(v * w, w, n_boot=n_boot, level=level, seed=seed)


def bootstrap_ratio(numerator, denominator, n_boot: int = 1000, level: float = 0.95,
                    seed: int = 0) -> Interval:
    """``sum num / sum den`` over units, with a bootstrap interval resampling units jointly."""
    a = np.asarray(numerator, dtype=np.float64)
    b = np.asarray(denominator, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"need matching non-empty 1-d arrays, got {a.shape} and {b.shape}")
    return _interval(a.sum() / b.sum(), _ratio_resamples(a, b, n_boot, seed), level)


def _ratio_resamples(a: np.ndarray, b: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """``sum num / sum den`` in each of ``n_boot`` resamples of the units (:func:`_resample_counts`)."""
    counts = _resample_counts(a.size, n_boot, seed)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (counts @ a) / (counts @ b)


def bootstrap_paired_difference(values_a, values_b, weights, n_boot: int = 1000,
                                level: float = 0.95, seed: int = 0) -> Interval:
    """Difference of two weighted means over the *same* units, resampled jointly (paired)."""
    return paired_difference_test(values_a, values_b, weights, n_boot, level, seed)[0]


def paired_difference_test(values_a, values_b, weights, n_boot: int = 1000, level: float = 0.95,
                           seed: int = 0) -> tuple[Interval, float]:
    """(:func:`bootstrap_paired_difference`, its two-sided bootstrap p-value for "no difference").

    The p-value is twice the smaller share of resampled differences on either side of 0 (at
    least ``1 / n_boot``; 1 when the two are equal on every unit): the level at which the
    percentile interval would just reach 0, the test that the interval itself makes."""
    a, b, w = (np.asarray(x, dtype=np.float64) for x in (values_a, values_b, weights))
    num, den = (a - b) * w, w
    if num.shape != den.shape or num.ndim != 1 or num.size == 0:
        raise ValueError(f"need matching non-empty 1-d arrays, got {num.shape} and {den.shape}")
    boots = _ratio_resamples(num, den, n_boot, seed)
    interval = _interval(num.sum() / den.sum(), boots, level)
    boots = boots[np.isfinite(boots)]
    if not boots.size:
        return interval, float("nan")
    if not np.any(num):
        return interval, 1.0
    side = min(np.mean(boots <= 0), np.mean(boots >= 0))
    return interval, float(min(1.0, max(2 * side, 1.0 / boots.size)))


def with_seed_spread(estimate: float, low: float, high: float, seed_sd: float, level: float = 0.95,
                     instances: tuple[int, int] = (1, 1)) -> tuple[float, float, float]:
    """A paired image-bootstrap interval of a difference between two trained conditions, widened
    for the run-to-run noise of training: (low, high, two-sided p-value for "no difference").

    The image bootstrap keeps both trained runs fixed. Trained again from other initial seeds, each
    condition's result moves by a seed effect of standard deviation ``seed_sd`` (measured as the
    spread of one configuration's instances); an average of ``n`` instances moves by
    ``seed_sd / sqrt(n)`` (``instances``: the two conditions' n). Seed effects are independent of
    the image sample and of each other, so the variances add: the bootstrap interval enters as its
    normal-equivalent standard error ``(high - low) / (2 z)``, and the difference's standard error is
    ``sqrt(se_boot² + seed_sd² (1/n_a + 1/n_b))``. The interval is ``estimate ± z·se`` and the p-value
    the normal one. With ``seed_sd = 0`` the interval is the bootstrap's, made symmetric."""
    if not (seed_sd >= 0) or not np.isfinite(seed_sd):
        raise ValueError(f"seed_sd must be a finite number >= 0, got {seed_sd!r}")
    if min(instances) < 1:
        raise ValueError(f"instances must be >= 1, got {instances!r}")
    z = float(scipy.stats.norm.ppf(0.5 + level / 2))
    se = float(np.hypot((high - low) / (2 * z), seed_sd * np.sqrt(1 / instances[0] + 1 / instances[1])))
    if se == 0:
        return float(estimate), float(estimate), (1.0 if estimate == 0 else 0.0)
    p = float(2 * scipy.stats.norm.sf(abs(estimate) / se))
    return float(estimate - z * se), float(estimate + z * se), p


def holm(p_values) -> np.ndarray:
    """Holm's step-down adjustment of a family of p-values (NaN stays NaN, and is not counted):
    the k-th smallest of m is multiplied by m - k + 1, made non-decreasing, capped at 1. A
    comparison holds at family-wise level alpha when its adjusted p-value is below alpha."""
    p = np.asarray(p_values, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    order = ok[np.argsort(p[ok], kind="stable")]
    m = len(order)
    adjusted = np.maximum.accumulate(p[order] * (m - np.arange(m)))
    out[order] = np.minimum(adjusted, 1.0)
    return out


def summarize(summary: dict, per_image: pd.DataFrame, n_boot: int = 1000, level: float = 0.95,
              seed: int = 0) -> dict:
    """The run's metrics plus image-bootstrap intervals ``<m>_lo``, ``<m>_hi`` for every metric in
    the per-image table: LL and IG as per-fixation averages (images weighted by their fixation
    count), AUC, sAUC, NSS, CC, KLDiv, SIM as per-image averages, and explained IG (the ratio of
    summed IG to summed gold-standard IG, column ``IG_gold``) when the table has it.

    Returns a flat dict: every scalar entry of ``summary`` (the headline values win over the
    bootstrap's point estimates, which equal them up to rounding), plus the intervals.
    """
    out = {k: v for k, v in summary.items() if np.isscalar(v) or v is None}
    n = per_image["n_fix"].to_numpy(dtype=np.float64)
    for col, average in MAIN_AVERAGE.items():
        if col in per_image:
            w = n if average == "fixation" else None
            iv = bootstrap_mean(per_image[col].to_numpy(), w, n_boot, level, seed)
            out[f"{col}_lo"], out[f"{col}_hi"] = iv.low, iv.high
            out.setdefault(col, iv.estimate)
    if "IG_gold" in per_image and "IG" in per_image:
        iv = bootstrap_ratio(per_image["IG"].to_numpy() * n, per_image["IG_gold"].to_numpy() * n,
                             n_boot, level, seed)
        out["explained_IG_lo"], out["explained_IG_hi"] = iv.low, iv.high
        out.setdefault("explained_IG", iv.estimate)
    out["n_images"] = int(len(per_image))
    out["n_fixations"] = int(n.sum())
    return out
