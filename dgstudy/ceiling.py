"""The ceiling: how much the gold standard explains with 1, 2, ... observers, and with infinitely many.

The gold standard (``baselines.GoldStandard``) predicts an observer's fixations from a kernel
density estimate of the *other* observers' fixations on the same image, mixed with the centre bias
and a uniform density. With 15 observers per image it sees 14. More observers would give a sharper
estimate of where people look, so its information gain is a lower bound of what is explainable, and
a model's "explained information gain" is measured against that bound, not against the truth.

:func:`gold_by_observers` measures the gold standard's information gain over the centre bias with
``k`` other observers, for ``k`` from 1 to K (K = the observers per image minus one; by default
about eight values spaced on a log scale, :func:`default_ks`): for every image
and every held-out observer, ``k`` of the others are drawn at random (one draw per observer and
image, seeded), and for each ``k`` the bandwidth and the mixture weights are fitted anew by the
held-out log-likelihood, exactly as ``GoldStandard.fit`` fits them for ``k = K`` (which this
reproduces). :func:`extrapolate` fits ``IG(k) = IG_inf - a * k**(-b)`` to that curve, a saturating
power law as in Kümmerer, Wallis & Bethge (PNAS 2015), and :func:`observer_curve` caches both per
data set. How far the extrapolated value lies above the K-observer one is an estimate of how much a
model's explained information gain is inflated by the finite number of observers; it depends on
the assumed form of the curve, which the table states beside the result (``b`` free and ``b = 1``).
"""
from __future__ import annotations


import numpy as np
import pandas as pd
from scipy.optimize import curve_fit

from .baselines import GoldStandard, cached_per_dataset


def observer_subsets(subjects: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """(n, n) bool for one image's fixations of ``subjects`` (one subject id per fixation): entry
    (f, g) says whether fixation g enters the density that predicts fixation f, i.e. whether g's
    observer is among the ``k`` drawn (without replacement) from the observers other than f's.
    With fewer than ``k`` others, all of them."""
    ids = np.unique(subjects)
    chosen = np.zeros((len(ids), len(ids)), dtype=bool)
    for a in range(len(ids)):
        others = np.delete(np.arange(len(ids)), a)
        pick = others if len(others) <= k else rng.choice(others, size=k, replace=False)
        chosen[a, pick] = True
    idx = np.searchsorted(ids, subjects)
    return chosen[idx[:, None], idx[None, :]]


def default_ks(K: int, n: int = 8) -> list[int]:
    """About ``n`` observer counts from 1 to ``K``, spaced evenly on a log scale (K included)."""
    return sorted({int(round(v)) for v in np.geomspace(1, K, n)})


def gold_by_observers(gold: GoldStandard, ks=None, images=None, seed: int = 0) -> pd.DataFrame:
    """The gold standard's scores with ``k`` other observers, one row per ``k`` (default
    :func:`default_ks` of K):
    ``IG`` and ``LL`` (bits/fixation, IG over the centre bias that ``gold`` mixes in, LL over a
    uniform density), the fitted ``bandwidth`` and ``w_kde``, ``w_center_bias``, ``w_uniform``, and
    ``n_fixations`` (every fixation of ``images``; default all)."""
    ds = gold.dataset
    images = np.arange(len(ds)) if images is None else np.asarray(images, dtype=np.int64)
    n_obs = max((ds.fixations_of(int(i))["subject"].nunique() for i in images), default=0)
    if n_obs < 2:
        raise ValueError(f"{ds.name}: the gold standard needs at least two observers on an image, "
                         f"found at most {n_obs}")
    ks = default_ks(n_obs - 1) if ks is None else [int(k) for k in ks]
    rows = []
    for k in ks:
        rng = np.random.default_rng([seed, k])
        s = gold.fit_with_others(lambda subjects: observer_subsets(subjects, k, rng), images)
        w = s["weights"]
        rows.append({"k": k, "IG": s["IG"], "LL": s["LL"], "bandwidth": s["bandwidth"], "w_kde": w[0],
                     "w_center_bias": w[1], "w_uniform": w[2], "n_fixations": s["n_fixations"]})
    return pd.DataFrame(rows)


def _saturating(k, ig_inf, a, b):
    return ig_inf - a * np.power(k, -b)


def extrapolate(curve: pd.DataFrame) -> dict:
    """``IG(k) = IG_inf - a * k**(-b)`` fitted to ``curve`` (columns ``k``, ``IG``) by least
    squares: ``{"IG_inf", "a", "b"}`` with ``b`` free (needs four observer counts or more),
    ``{"IG_inf_b1", "a_b1"}`` with ``b = 1`` (three or more), NaN where a form cannot be fitted;
    ``K`` and ``IG_K``: the largest ``k`` and its IG."""
    k, ig = curve["k"].to_numpy(float), curve["IG"].to_numpy(float)
    nan = float("nan")
    inf = a = b = inf1 = a1 = nan
    try:                              # a form needs more observer counts than it has parameters
        if len(k) > 3:
            (inf, a, b), _ = curve_fit(_saturating, k, ig, p0=(ig.max() + 0.1, ig.max() - ig.min() + 0.1, 1.0),
                                       bounds=([ig.max(), 0.0, 0.05], [np.inf, np.inf, 5.0]), maxfev=20000)
        if len(k) > 2:
            (inf1, a1), _ = curve_fit(lambda k, i, a: _saturating(k, i, a, 1.0), k, ig,
                                      p0=(ig.max() + 0.1, ig.max() - ig.min() + 0.1))
    except RuntimeError:              # no convergence: no extrapolation rather than a wrong one
        pass
    return {"IG_inf": float(inf), "a": float(a), "b": float(b), "IG_inf_b1": float(inf1), "a_b1": float(a1),
            "K": int(k.max()), "IG_K": float(ig[np.argmax(k)])}


def observer_curve(dataset, gold: GoldStandard, seed: int = 0) -> tuple[pd.DataFrame, dict]:
    """(:func:`gold_by_observers`, :func:`extrapolate` of it) of the data set's
    gold standard, computed once per data set (:func:`dgstudy.baselines.cached_per_dataset`)."""
    def compute():
        curve = gold_by_observers(gold, seed=seed)
        return {"curve": curve.to_dict(orient="records"), "fit": extrapolate(curve)}

    p = cached_per_dataset(dataset, f"observers-s{seed}", compute,
                           matches=lambda p: {"curve", "fit"} <= set(p))
    return pd.DataFrame(p["curve"]), p["fit"]


def ceiling_table(model_ig: float, fit: dict, curve: pd.DataFrame) -> pd.DataFrame:
    """A model's information gain (bit/fix) explained against the gold standard of K observers and
    against the two extrapolations of :func:`extrapolate`: one row per ceiling, columns
    ``ceiling``, ``IG_ceiling``, ``explained_IG`` and ``rms_residual`` (bit/fix: how far the fitted
    curve misses the measured one of ``curve``; a form that misses it extrapolates nothing)."""
    k, ig = curve["k"].to_numpy(float), curve["IG"].to_numpy(float)

    def rms(inf, a, b):
        return float(np.sqrt(np.mean((_saturating(k, inf, a, b) - ig) ** 2)))

    rows = [(f"gold standard with {fit['K']} other observers (leave one out)", fit["IG_K"], 0.0),
            ("extrapolated: IG_inf - a k^-b (b fitted)", fit["IG_inf"], rms(fit["IG_inf"], fit["a"], fit["b"])),
            ("extrapolated: IG_inf - a / k (b fixed at 1)", fit["IG_inf_b1"], rms(fit["IG_inf_b1"], fit["a_b1"], 1.0))]
    return pd.DataFrame([{"ceiling": name, "IG_ceiling": v, "explained_IG": model_ig / v, "rms_residual": r}
                         for name, v, r in rows])


def ceiling_tables(model_igs: dict[str, float], fit: dict, curve: pd.DataFrame) -> pd.DataFrame:
    """:func:`ceiling_table` of every model in ``model_igs`` ({model name: its information gain in
    bit/fix}), one table with a leading ``model`` column, models in the given order."""
    tables = [ceiling_table(ig, fit, curve) for ig in model_igs.values()]
    for name, t in zip(model_igs, tables):
        t.insert(0, "model", name)
    return pd.concat(tables, ignore_index=True)
