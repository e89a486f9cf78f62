"""Centre bias, gold standard and the `dgstudy baselines` command, on real OSIE and generated data."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from dgstudy import datasets
from dgstudy.baselines import CenterBias, GoldStandard, Uniform
from dgstudy.io import DataError


@pytest.fixture(scope="module")
def osie8(osie_dir):
    return datasets.load("osie", n_images=8)


@pytest.fixture(scope="module")
def cb8(osie8):
    return CenterBias.fit(osie8)


@pytest.fixture(scope="module")
def gold8(osie8, cb8):
    return GoldStandard.fit(osie8, cb8)


def pix(g):
    return np.floor(g["y"].to_numpy()).astype(int), np.floor(g["x"].to_numpy()).astype(int)


def brute_force_kde(rows, cols, h, w, sy, sx):
    """Normalised sum of Gaussians at pixel centres, one explicit kernel per fixation."""
    yy, xx = np.mgrid[0:h, 0:w]
    t = np.zeros((h, w))
    for r, c in zip(rows, cols):
        t += np.exp(-0.5 * ((yy - r) / sy) ** 2 - 0.5 * ((xx - c) / sx) ** 2)
    return t / t.sum()


# -- centre bias -----------------------------------------------------------------------------------
def test_center_bias_density_matches_brute_force_kde(cb8):
    h, w = 30, 40
    rows = np.clip(np.floor(cb8.v * h), 0, h - 1).astype(int)
    cols = np.clip(np.floor(cb8.u * w), 0, w - 1).astype(int)
    kde = brute_force_kde(rows, cols, h, w, cb8.bandwidth * h, cb8.bandwidth * w)
    expected = np.log((1 - cb8.uniform_weight) * kde + cb8.uniform_weight / (h * w))
    np.testing.assert_allclose(cb8.log_density_for_size(h, w), expected, rtol=1e-9, atol=1e-12)
    assert np.exp(cb8.log_density_for_size(17, 91)).sum() == pytest.approx(1.0, rel=1e-12)


def test_center_bias_leaves_the_image_out(osie8, cb8):
    i = 3
    others = [j for j in range(len(osie8)) if j != i]
    ref = CenterBias.fit(osie8.subset(others), bandwidth=cb8.bandwidth, uniform_weight=cb8.uniform_weight)
    h, w = osie8.sizes[i]
    np.testing.assert_allclose(cb8.log_density(i), ref.log_density_for_size(h, w), rtol=1e-9, atol=1e-12)
    assert not np.allclose(cb8.log_density(i), cb8.log_density_for_size(h, w))


def test_center_bias_fit_is_the_heldout_optimum(osie8, cb8):
    def heldout_bits(cb):
        lls = [cb.log_density(i)[pix(g)] + math.log(h * w)
               for i, (h, w), g in ((i, osie8.sizes[i], osie8.fixations_of(i)) for i in range(len(osie8)))]
        return np.concatenate(lls).mean() / math.log(2)
    # the fast objective used in the fit equals the direct leave-image-out likelihood
    assert cb8.heldout_ll == pytest.approx(heldout_bits(cb8), rel=1e-9)
    for factor in (0.6, 1.6):
        other = CenterBias.fit(osie8, bandwidth=cb8.bandwidth * factor)
        assert heldout_bits(other) < cb8.heldout_ll
    other = CenterBias.fit(osie8, bandwidth=cb8.bandwidth, uniform_weight=min(0.5, cb8.uniform_weight * 10 + 0.05))
    assert heldout_bits(other) < cb8.heldout_ll


def test_center_bias_dict_round_trip_and_errors(osie8, cb8):
    d = json.loads(json.dumps(cb8.to_dict()))
    cb2 = CenterBias.from_dict(d)
    np.testing.assert_array_equal(cb2.log_density_for_size(61, 83), cb8.log_density_for_size(61, 83))
    with pytest.raises(ValueError, match="knows no dataset"):
        cb2.log_density(0)
    with pytest.raises(DataError, match="not a CenterBias"):
        CenterBias.from_dict({"kind": "something"})
    with pytest.raises(DataError, match="at least 2 images"):
        CenterBias.fit(osie8, images=[0])


def test_a_subsets_fit_is_searched_once_and_rebuilt_exactly(osie8, data_root, monkeypatch):
    from dgstudy import baselines

    searches = []
    real_fit = CenterBias.fit.__func__

    def counting_fit(cls, dataset, images=None, bandwidth=None, uniform_weight=None):
        searches.append(bandwidth is None)
        return real_fit(cls, dataset, images, bandwidth, uniform_weight)

    monkeypatch.setattr(CenterBias, "fit", classmethod(counting_fit))
    fresh = baselines.fitted_center_bias(osie8, [5, 0, 1, 3, 2])
    again = baselines.fitted_center_bias(osie8, [0, 1, 2, 3, 5])     # the same set, another order
    other = baselines.fitted_center_bias(osie8, [0, 1, 2, 3, 4])
    assert searches == [True, False, True]                           # the repeat did not search
    assert (again.bandwidth, again.uniform_weight, again.heldout_ll) == \
           (fresh.bandwidth, fresh.uniform_weight, fresh.heldout_ll)
    np.testing.assert_array_equal(again.log_density_for_size(60, 80), fresh.log_density_for_size(60, 80))
    assert other.heldout_ll != fresh.heldout_ll
    direct = real_fit(CenterBias, osie8, [0, 1, 2, 3, 5])            # what training did before
    assert (direct.bandwidth, direct.uniform_weight) == (fresh.bandwidth, fresh.uniform_weight)


def test_a_cached_record_is_computed_once_and_anew_when_it_does_not_fit(data_root):
    from types import SimpleNamespace

    from dgstudy import baselines

    ds = SimpleNamespace(name="toy", checksum="ab" * 32)
    calls = []

    def compute():
        calls.append(1)
        return {"value": len(calls)}

    first = baselines.cached_per_dataset(ds, "part", compute)
    assert first == {"dataset": "toy", "checksum": "ab" * 32, "value": 1}
    path = data_root / "cache" / "baselines" / f"toy-{'ab' * 8}-part-v{baselines.FIT_CACHE_VERSION}.json"
    assert path.is_file()
    assert baselines.cached_per_dataset(ds, "part", compute)["value"] == 1 and len(calls) == 1
    # a record that does not match, a changed data set, an unreadable file: computed anew
    assert baselines.cached_per_dataset(ds, "part", compute, matches=lambda r: r["value"] == 7)["value"] == 2
    path.write_text("{not json")
    assert baselines.cached_per_dataset(ds, "part", compute)["value"] == 3
    changed = SimpleNamespace(name="toy", checksum="ab" * 8 + "cd" * 24)   # same first 16 hex digits
    assert baselines.cached_per_dataset(changed, "part", compute)["value"] == 4
    assert baselines.cached_per_dataset(ds, "", compute)["value"] == 5        # no stem: another file
    assert (path.parent / f"toy-{'ab' * 8}-v{baselines.FIT_CACHE_VERSION}.json").is_file()


def test_uniform_model():
    lp = Uniform().log_density_for_size(3, 5)
    assert lp.shape == (3, 5) and np.allclose(lp, -math.log(15))
    with pytest.raises(ValueError, match="no dataset"):
        Uniform().log_density(0)


# -- gold standard ---------------------------------------------------------------------------------
def test_gold_fixation_likelihoods_equal_the_loso_maps(osie8, gold8):
    assert gold8.weights.sum() == pytest.approx(1.0) and (gold8.weights >= 0).all()
    for i in (0, 5):
        g = osie8.fixations_of(i)
        r, c = pix(g)
        ll = gold8.fixation_log_likelihoods(i)
        from_maps = np.array([gold8.loso_log_density(i, s)[rr, cc]
                              for s, rr, cc in zip(g["subject"].to_numpy(), r, c)])
        np.testing.assert_allclose(ll, from_maps, rtol=1e-9, atol=1e-9)
        for s in (0, 7):
            assert np.exp(gold8.loso_log_density(i, s)).sum() == pytest.approx(1.0, rel=1e-12)


def test_gold_loso_density_matches_brute_force_and_ignores_the_subject(osie8, gold8):
    i, s = 2, 4
    g = osie8.fixations_of(i)
    h, w = osie8.sizes[i]
    r, c = pix(g)
    keep = g["subject"].to_numpy() != s
    sig = gold8.bandwidth * max(h, w)
    a, b, u = gold8.weights
    cb = np.exp(gold8.center_bias.log_density(i))
    expected = np.log(a * brute_force_kde(r[keep], c[keep], h, w, sig, sig) + b * cb + u / (h * w))
    np.testing.assert_allclose(gold8.loso_log_density(i, s), expected, rtol=1e-8, atol=1e-8)
    # moving subject s's fixations does not change its leave-one-subject-out density
    fx = osie8.fixations.copy()
    moved = (fx["image"] == i) & (fx["subject"] == s)
    fx.loc[moved, ["x", "y"]] = [[5.5, 7.5]] * int(moved.sum())
    ds2 = datasets.FixationDataset(name="osie", stimuli=osie8.stimuli, sizes=osie8.sizes, fixations=fx)
    gold2 = GoldStandard.fit(ds2, gold8.center_bias, bandwidth=gold8.bandwidth)
    gold2.weights = gold8.weights
    np.testing.assert_allclose(gold2.loso_log_density(i, s), gold8.loso_log_density(i, s), rtol=1e-9)


def test_gold_beats_center_bias_which_beats_uniform(osie8, cb8, gold8):
    from dgstudy.metrics import evaluate
    r_gold = evaluate(gold8, osie8, baseline=cb8, gold=gold8)
    assert r_gold["explained_IG"] == pytest.approx(1.0, rel=1e-12)
    assert r_gold["IG"] > 1.0 and gold8.heldout_ll > cb8.heldout_ll > 0
    assert "leave_one_subject_out" in r_gold["conventions"]


# -- command line ------------------------------------------------------------------------------------
def test_baselines_command_writes_the_table(data_root, tmp_path, capsys):
    from dgstudy.cli import main
    out = tmp_path / "bl"
    assert main(["baselines", "--dataset", "synthetic", "--n-images", "6", "--out", str(out)]) == 0
    table = pd.read_csv(out / "table.csv", index_col="model")
    assert list(table.index) == ["uniform", "center_bias", "gold_standard"]
    assert table.loc["uniform", "LL"] == 0.0 and table.loc["center_bias", "IG"] == 0.0
    assert table.loc["gold_standard", "explained_IG"] == pytest.approx(1.0)
    meta = json.loads((out / "table.json").read_text())
    assert meta["n_images"] == 6 and "timings" in meta and meta["center_bias"]["bandwidth"] > 0
    assert len(pd.read_csv(out / "per_image_gold_standard.csv")) == 6
    assert "gold_standard" in capsys.readouterr().out


def test_the_observer_curve_ends_at_the_gold_standard_itself(osie8, cb8, gold8):
    """With every other observer, gold_by_observers refits exactly the gold standard's objective:
    its IG is the IG_gold that metrics.evaluate reports; with one observer it is far lower."""
    from dgstudy import ceiling, metrics

    K = int(max(len(np.unique(osie8.fixations_of(i)["subject"])) for i in range(len(osie8)))) - 1
    curve = ceiling.gold_by_observers(gold8, ks=[1, K]).set_index("k")
    ig_gold = metrics.evaluate(gold8.log_density, osie8, baseline=cb8, gold=gold8)["IG_gold"]
    assert curve.loc[K, "IG"] == pytest.approx(ig_gold, abs=1e-6)
    assert curve.loc[K, "bandwidth"] == pytest.approx(gold8.bandwidth, rel=1e-6)
    assert curve.loc[1, "IG"] < curve.loc[K, "IG"] - 0.2
