"""Ensembles over runs chosen on validation data: the choice, its scores and the test densities."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from dgstudy import datasets, ensemble, runs, training
from dgstudy.io import DataError
from conftest import isolated_study
from test_training import H, W, small_config, synthetic_features


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """Two 3-fold runs on one synthetic data set: one on informative features, one on noise."""
    with isolated_study(tmp_path_factory.mktemp("ensemble")) as root:
        yield _train_two(root)


def _train_two(root):
    ds = datasets.load("synthetic", n_images=30, size=(H, W), n_subjects=8, fixations_per_subject=8,
                       seed=2, beta=8.0, folder=root / "synthetic")
    good = synthetic_features(ds)
    noise = {i: np.random.default_rng(i).normal(size=f.shape).astype(np.float16) for i, f in good.items()}
    trained = {}
    for name, feats in (("good", good), ("noise", noise)):
        run = training.train_crossval(small_config(run=name, max_epochs=8), dataset=ds, features=feats,
                                      progress=False)
        trained[name] = (run, feats)
    return ds, trained, root


def _models(ds, trained):
    return {n: runs.CrossValModel(r, dataset=ds, features=f) for n, (r, f) in trained.items()}


def test_validation_scores_equal_a_direct_computation(two_runs):
    ds, trained, _ = two_runs
    models = _models(ds, trained)
    scores = ensemble.validation_log_likelihoods(models, fold=1)
    assert set(scores) == {("good",), ("noise",), ("good", "noise")}
    val = models["good"].fold_images(1, "val")
    fx = ds.fixations
    for combo, got in scores.items():
        total, n = 0.0, 0
        for i in val:
            dens = np.mean([np.exp(models[m].fold_log_density(1, int(i))) for m in combo], axis=0)
            f = fx[fx["image"] == i]
            p = dens[np.floor(f["y"]).astype(int), np.floor(f["x"]).astype(int)]
            total += float(np.sum(np.log2(p) + math.log2(H * W)))
            n += len(f)
        assert got == pytest.approx(total / n, abs=1e-9)
    assert scores[("good",)] > scores[("noise",)]


def test_select_and_evaluate(two_runs):
    ds, trained, root = two_runs
    models = _models(ds, trained)
    out = root / "results" / "ens"
    res = ensemble.select_and_evaluate(models, out, progress=False)
    assert res["choice"].keys() == {"0", "1", "2"}
    for fold, members in res["choice"].items():
        scores = res["validation_LL"][fold]
        assert scores["+".join(members)] == max(scores.values())
        assert "good" in members                   # noise alone never wins on validation data
    saved = json.loads((out / "ensemble.json").read_text())
    assert saved["choice"] == res["choice"]
    assert saved["fingerprint"] == ensemble.fingerprint({n: r for n, (r, _) in trained.items()})
    assert [row[0] for row in saved["fingerprint"]["good"]] == [0, 1, 2]
    # the test density of an image is the average over its fold's chosen members
    sel = ensemble.SelectedEnsemble(models, {int(f): tuple(m) for f, m in res["choice"].items()})
    i = int(models["good"].fold_images(0, "test")[0])
    chosen = res["choice"]["0"]
    want = np.log(np.mean([np.exp(models[m].log_density(i)) for m in chosen], axis=0))
    np.testing.assert_allclose(sel.log_density(i), want, atol=1e-9)
    assert abs(np.logaddexp.reduce(sel.log_density(i).ravel())) < 1e-6
    assert (out / "per_image.csv").exists() and res["summary"]["IG"] > 0


def test_runs_with_other_splits_are_refused(two_runs, tmp_path, monkeypatch):
    ds, trained, root = two_runs
    other_run = training.train_crossval(small_config(run="other-seed", seed=1, max_epochs=1), dataset=ds,
                                        features=trained["good"][1], progress=False)
    models = {"good": runs.CrossValModel(trained["good"][0], dataset=ds, features=trained["good"][1]),
              "other": runs.CrossValModel(other_run, dataset=ds, features=trained["good"][1])}
    with pytest.raises(DataError, match="one fold split"):
        ensemble._check_same_split(models)


def test_average_log_densities():
    rng = np.random.default_rng(0)
    lds = [np.log(rng.dirichlet(np.ones(12))).reshape(3, 4) for _ in range(3)]
    got = ensemble.average_log_densities(lds)
    np.testing.assert_allclose(np.exp(got), np.mean([np.exp(l) for l in lds], axis=0), rtol=1e-12)
    assert ensemble.average_log_densities(lds[:1]) is lds[0]
    with pytest.raises(ValueError):
        ensemble.average_log_densities([])
    assert ensemble.subsets(["a", "b", "c"]) == [("a",), ("b",), ("c",), ("a", "b"), ("a", "c"),
                                                  ("b", "c"), ("a", "b", "c")]


def test_average_log_densities_is_logsumexp_over_any_range():
    """The streaming sum agrees with scipy's logsumexp where exp() alone would overflow or
    underflow (values from -1500 to +800), weighted and not, and in any order of arrival."""
    from scipy.special import logsumexp
    rng = np.random.default_rng(1)
    lds = [rng.uniform(-1500, 800, size=(5, 7)) for _ in range(6)]
    w = rng.uniform(0.1, 3.0, size=6)
    want = logsumexp(np.stack(lds), axis=0, b=(w / w.sum())[:, None, None])
    np.testing.assert_allclose(ensemble.average_log_densities(iter(lds), weights=w), want, rtol=0, atol=1e-12)
    np.testing.assert_allclose(ensemble.average_log_densities(lds[::-1]),
                               logsumexp(np.stack(lds), axis=0) - np.log(6), rtol=0, atol=1e-12)
    assert np.isfinite(ensemble.average_log_densities(lds)).all()
    zero = np.array([-np.inf, 0.0])
    np.testing.assert_allclose(ensemble.average_log_densities([zero, zero, np.array([-np.inf, -1.0])]),
                               [-np.inf, np.log((2 + np.exp(-1)) / 3)])
    np.testing.assert_allclose(ensemble.average_log_densities([zero, np.array([-2.0, -np.inf])], weights=[1, 3]),
                               [np.log(0.75 * np.exp(-2)), np.log(0.25)])
