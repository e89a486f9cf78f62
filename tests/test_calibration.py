"""Calibration in density deciles (dgstudy.calibration) on densities with a known answer."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dgstudy import calibration, figures


class Sampled:
    """One 40 x 50 image whose fixations are drawn from a known density."""

    def __init__(self, logp, n: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.logp = logp
        h, w = logp.shape
        k = rng.choice(h * w, size=n, p=np.exp(logp).ravel())
        self.name, self.sizes = "sampled", np.array([[h, w]])
        self.fix = pd.DataFrame({"x": k % w + rng.uniform(0, 1, n), "y": k // w + rng.uniform(0, 1, n)})

    def __len__(self):
        return 1

    def fixations_of(self, i):
        return self.fix


def blob(h=40, w=50, sharp=1.0):
    yy, xx = np.mgrid[0:h, 0:w]
    logp = -sharp * (((yy - 12) / 6.0) ** 2 + ((xx - 30) / 9.0) ** 2)
    return logp - np.logaddexp.reduce(logp.ravel())


def test_a_uniform_model_predicts_a_tenth_per_decile_and_the_truth_is_calibrated():
    ds = Sampled(blob(), n=20000)
    uniform = lambda i: np.full((40, 50), -np.log(2000.0))  # noqa: E731
    t = calibration.calibration_table(uniform, ds)
    np.testing.assert_allclose(t["predicted"], 0.1)          # 2000 pixels: 200 per decile, equal mass
    assert t["observed"].sum() == pytest.approx(1.0) and t["n_fixations"].sum() == 20000
    assert t["observed"].max() > 0.3          # ties split in pixel order: the fixations crowd the blob's rows
    truth = calibration.calibration_table(lambda i: ds.logp, ds)
    assert truth["predicted"].sum() == pytest.approx(1.0)
    se = np.sqrt(truth["predicted"] * (1 - truth["predicted"]) / 20000)
    assert (np.abs(truth["observed"] - truth["predicted"]) < 4 * se + 1e-4).all()


def test_an_overconfident_model_overpredicts_its_top_decile():
    ds = Sampled(blob(), n=20000, seed=1)
    sharp = blob(sharp=3.0)                                     # the same peak, three times as narrow
    t = calibration.calibration_table(lambda i: sharp, ds)
    assert t["predicted"].iloc[0] > t["observed"].iloc[0]
    assert t["observed_over_predicted"].iloc[1:].max() > 1.0
    fig = figures.plot_calibration({"sharp": t})
    xy = fig.axes[0].lines[0].get_xydata()
    np.testing.assert_allclose(xy[0], t[["predicted", "observed"]].iloc[0])
    import matplotlib.pyplot as plt
    plt.close(fig)


def test_fixations_map_to_their_pixels_with_the_one_convention():
    logp = np.log(np.full((2, 10), 1 / 20.0))
    logp[0, 9] += 1.0                                           # one pixel denser than the rest
    logp -= np.logaddexp.reduce(logp.ravel())
    pred, obs = calibration.image_calibration(logp, np.array([9.0, 9.99, 0.5]), np.array([0.0, 0.999, 1.5]), 10)
    assert obs[0] == 2                                          # (9, 0) and (9.99, 0.999) are pixel (0, 9)
    assert pred[0] == pytest.approx(np.exp(logp).ravel()[[9, 0]].sum())   # the top pixel and the first tie


# -- the ceiling (dgstudy.ceiling) -------------------------------------------------------------------
def test_observer_subsets_draw_k_others_and_never_the_observer_itself():
    from dgstudy import ceiling

    subjects = np.repeat([3, 5, 8, 9], [2, 3, 1, 2])
    m = ceiling.observer_subsets(subjects, 2, np.random.default_rng(0))
    assert m.shape == (8, 8)
    for f in range(8):
        chosen = set(subjects[m[f]])
        assert subjects[f] not in chosen and len(chosen) == 2
        assert all(m[f, g] == (subjects[g] in chosen) for g in range(8))   # all of a chosen observer's fixations
    full = ceiling.observer_subsets(subjects, 10, np.random.default_rng(0))   # more than there are: all others
    np.testing.assert_array_equal(full, subjects[:, None] != subjects[None, :])


def test_the_extrapolation_recovers_a_known_curve_and_the_table_divides_by_it():
    from dgstudy import ceiling

    k = np.array([1, 2, 3, 5, 7, 10, 14])
    curve = pd.DataFrame({"k": k, "IG": 2.6 - 1.2 * k ** -0.6})
    fit = ceiling.extrapolate(curve)
    assert fit["IG_inf"] == pytest.approx(2.6, abs=1e-4) and fit["b"] == pytest.approx(0.6, abs=1e-3)
    assert fit["IG_inf_b1"] < fit["IG_inf"] and fit["IG_K"] == pytest.approx(2.6 - 1.2 * 14 ** -0.6)
    t = ceiling.ceiling_table(1.3, fit, curve)
    assert t["explained_IG"].iloc[0] == pytest.approx(1.3 / fit["IG_K"])
    assert t["explained_IG"].iloc[1] == pytest.approx(0.5, abs=1e-4)
    assert t["rms_residual"].iloc[1] < 1e-4 < t["rms_residual"].iloc[2]     # b = 1 misses a b = 0.6 curve
    assert not t["ceiling"].str.contains(",").any()     # rows citable as ceiling=... (dgstudy.citations)
    both = ceiling.ceiling_tables({"ensemble": 1.56, "single": 1.3}, fit, curve)   # notebook 07's table
    assert list(both["model"]) == ["ensemble"] * 3 + ["single"] * 3
    assert both["explained_IG"].iloc[:3].to_numpy() == pytest.approx(1.2 * t["explained_IG"].to_numpy())
    pd.testing.assert_frame_equal(both.iloc[3:].drop(columns="model").reset_index(drop=True), t)
    fig = figures.plot_observer_curve(curve, fit, model_ig=1.3)
    np.testing.assert_allclose(fig.axes[0].lines[0].get_ydata(), curve["IG"])
    import matplotlib.pyplot as plt
    plt.close(fig)


def test_too_few_observer_counts_give_no_extrapolation_not_a_wrong_one():
    from dgstudy import ceiling

    fit = ceiling.extrapolate(pd.DataFrame({"k": [1, 2], "IG": [0.8, 1.0]}))     # three observers per image
    assert np.isnan(fit["IG_inf"]) and np.isnan(fit["IG_inf_b1"]) and fit["IG_K"] == 1.0 and fit["K"] == 2
    t = ceiling.ceiling_table(0.5, fit, pd.DataFrame({"k": [1, 2], "IG": [0.8, 1.0]}))
    assert t["explained_IG"].iloc[0] == 0.5 and t["explained_IG"].iloc[1:].isna().all()
