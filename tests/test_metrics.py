"""dgstudy.metrics against pysaliency 0.2.22 (the benchmark's own code) and closed-form answers."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy.ndimage import gaussian_filter

from dgstudy import datasets, metrics, metrics_fast
from dgstudy.baselines import CenterBias, Uniform
from dgstudy.io import DataError
from dgstudy.metrics import KL_EPS, checked_log_density, evaluate

pysaliency = pytest.importorskip("pysaliency")
from pysaliency.numba_utils import general_rocs_per_positive_numba  # noqa: E402
from pysaliency.roc import general_roc  # noqa: E402

RTOL = 1e-6


# -- helpers: our datasets/models as pysaliency objects --------------------------------------------
class TableModel:
    """A model from a dict {image: log density}."""

    def __init__(self, maps):
        self.maps = maps

    def log_density(self, i):
        return self.maps[i]


def random_log_densities(dataset, seed=0, ties=False):
    rng = np.random.default_rng(seed)
    maps = {}
    for i, (h, w) in enumerate(dataset.sizes):
        s = gaussian_filter(rng.normal(size=(h, w)), sigma=max(h, w) / 15, mode="reflect")
        s = 3 * s / s.std()
        if ties:                                   # plateaus: many pixels share a value
            s = np.round(s)
        maps[i] = s - np.log(np.exp(s).sum())
    return maps


def to_pysaliency(dataset):
    """Stimuli (distinct dummy arrays of the right sizes) and Fixations with image index n."""
    arrays = [np.full((int(h), int(w)), i, dtype=np.uint16) for i, (h, w) in enumerate(dataset.sizes)]
    stimuli = pysaliency.Stimuli(arrays)
    fx = dataset.fixations
    fixations = pysaliency.Fixations.create_without_history(
        fx["x"].to_numpy(), fx["y"].to_numpy(), fx["image"].to_numpy(), subjects=fx["subject"].to_numpy())
    return stimuli, fixations


class PysalModel(pysaliency.Model):
    def __init__(self, maps):
        super().__init__(caching=False)
        self.maps = maps

    def _log_density(self, stimulus):
        return self.maps[int(np.asarray(stimulus).flat[0])]


def pysaliency_metrics(maps, base_maps, dataset, kernel_size):
    stimuli, fixations = to_pysaliency(dataset)
    model, base = PysalModel(maps), PysalModel(base_maps)
    dens = pysaliency.DensitySaliencyMapModel(model)
    blurred = pysaliency.BluringSaliencyMapModel(dens, kernel_size=kernel_size, mode="reflect", caching=False)
    empirical = pysaliency.FixationMap(stimuli, fixations, kernel_size=kernel_size, caching=False)
    sauc_model = pysaliency.ShuffledAUCSaliencyMapModel(model, base)
    return {
        "LL": model.information_gain(stimuli, fixations, baseline_model=pysaliency.UniformModel()),
        "IG": model.information_gain(stimuli, fixations, baseline_model=base),
        "AUC_per_image": dens.AUC(stimuli, fixations, average="image"),
        "AUC_per_fixation": dens.AUC(stimuli, fixations, average="fixation"),
        "sAUC_per_image": sauc_model.AUC(stimuli, fixations, nonfixations="shuffled", average="image"),
        "sAUC_per_fixation": sauc_model.AUC(stimuli, fixations, nonfixations="shuffled", average="fixation"),
        "NSS_per_image": dens.NSS(stimuli, fixations, average="image"),
        "NSS_per_fixation": dens.NSS(stimuli, fixations, average="fixation"),
        "CC": blurred.CC(stimuli, empirical),
        "KLDiv": blurred.image_based_kl_divergence(stimuli, empirical, minimum_value=0,
                                                   log_regularization=KL_EPS, quotient_regularization=KL_EPS),
        "SIM": blurred.SIM(stimuli, empirical),
    }


def assert_agree(ours: dict, ref: dict, rtol=RTOL):
    for k, v in ref.items():
        assert ours[k] == pytest.approx(v, rel=rtol, abs=1e-12), k


@pytest.fixture(scope="module")
def osie_small(osie_dir):
    return datasets.load("osie", n_images=5)


@pytest.fixture(scope="module")
def two_sizes(tmp_path_factory):
    """Synthetic images of two sizes (for sAUC rescaling and any-size handling)."""
    root = tmp_path_factory.mktemp("synth")
    a = datasets.load("synthetic", n_images=3, size=(30, 40), n_subjects=4, fixations_per_subject=6,
                      seed=1, folder=root / "a")
    b = datasets.load("synthetic", n_images=3, size=(45, 35), n_subjects=4, fixations_per_subject=6,
                      seed=2, folder=root / "b")
    fb = b.fixations.copy()
    fb["image"] += len(a)
    return datasets.FixationDataset(name="two-sizes", stimuli=a.stimuli + b.stimuli,
                                    sizes=np.concatenate([a.sizes, b.sizes]),
                                    fixations=pd.concat([a.fixations, fb], ignore_index=True))


# -- pieces --------------------------------------------------------------------------------------
@pytest.mark.parametrize("auc_per_positive", [metrics.auc_per_positive, metrics_fast.auc_per_positive],
                         ids=["plain", "fast"])
def test_auc_per_positive_matches_pysaliency_including_ties(auc_per_positive):
    rng = np.random.default_rng(0)
    cases = [(rng.random(5000), None), (np.exp(5 * rng.normal(size=20000)), None),
             (np.round(10 * rng.random(3000)), np.round(12 * rng.random(40)) - 1),   # heavy ties
             (np.ones(100), np.ones(4)), (rng.random(2000), 2 * rng.random(9))]
    for neg, pos in cases:
        pos = neg[rng.integers(0, len(neg), 60)] if pos is None else pos
        ours = auc_per_positive(pos, neg)
        np.testing.assert_array_equal(ours, general_rocs_per_positive_numba(pos, neg))
        assert ours.mean() == pytest.approx(general_roc(pos, neg)[0], rel=1e-12)


# -- whole evaluation vs pysaliency -------------------------------------------------------------
@pytest.mark.parametrize("ties", [False, True])
def test_evaluate_matches_pysaliency_on_osie(osie_small, ties):
    ds = osie_small
    maps = random_log_densities(ds, seed=3, ties=ties)
    cb = CenterBias.fit(ds, bandwidth=0.1, uniform_weight=0.01)
    base_maps = {i: cb.log_density(i) for i in range(len(ds))}
    ours = evaluate(TableModel(maps), ds, baseline=TableModel(base_maps), kernel_size=24.0)
    assert_agree(ours, pysaliency_metrics(maps, base_maps, ds, 24.0))
    assert ours["n_fixations"] == len(ds.fixations) and ours["n_images"] == 5


def test_evaluate_matches_pysaliency_with_two_image_sizes(two_sizes):
    ds = two_sizes
    maps = random_log_densities(ds, seed=4, ties=True)
    base_maps = random_log_densities(ds, seed=5)
    ours = evaluate(TableModel(maps), ds, baseline=TableModel(base_maps), kernel_size=3.0)
    assert_agree(ours, pysaliency_metrics(maps, base_maps, ds, 3.0))


# -- closed forms ----------------------------------------------------------------------------------
def test_uniform_model_closed_form(two_sizes):
    r = evaluate(Uniform(), two_sizes, kernel_size=3.0)
    assert r["LL"] == 0.0 and r["IG"] == 0.0
    assert r["AUC"] == 0.5 and r["AUC_per_fixation"] == 0.5
    assert r["NSS"] == 0.0 and r["CC"] == 0.0
    assert r["baseline"] == "uniform" and math.isnan(r["explained_IG"])


def test_perfect_model_information_gain_is_the_kl_divergence(data_root):
    ds = datasets.load("synthetic", n_images=20, size=(24, 32), n_subjects=10, fixations_per_subject=20)
    r, table = evaluate(ds, ds, per_image=True, kernel_size=2.0)
    kl_bits = np.mean([np.sum(np.exp(lp) * (lp + np.log(lp.size))) / np.log(2) for lp in ds.true_log_densities])
    ll = np.concatenate([ds.log_density(i)[np.floor(g.y).astype(int), np.floor(g.x).astype(int)]
                         for i, g in ds.fixations.groupby("image")])
    se = (ll / np.log(2)).std() / np.sqrt(len(ll))
    # every image has the same number of fixations, so the fixation mean estimates the image mean of KL
    assert abs(r["LL"] - kl_bits) < 3 * se
    assert r["LL_per_image"] == pytest.approx(table["LL"].mean())
    assert (table["n_fix"] == 200).all()

    class Gold:                      # the true density as its own gold standard: explained IG = 1
        def fixation_log_likelihoods(self, i):
            g = ds.fixations_of(i)
            return ds.log_density(i)[np.floor(g.y).astype(int), np.floor(g.x).astype(int)]
    r2 = evaluate(ds, ds, gold=Gold(), kernel_size=2.0)
    assert r2["explained_IG"] == pytest.approx(1.0, rel=1e-12)


# -- input handling -------------------------------------------------------------------------------
def test_inputs_torch_callable_and_renormalisation(two_sizes):
    torch = pytest.importorskip("torch")
    ds = two_sizes
    maps = random_log_densities(ds, seed=6)
    ref = evaluate(TableModel(maps), ds, kernel_size=3.0)
    as_torch = evaluate(lambda i: torch.from_numpy(maps[i]).float(), ds, kernel_size=3.0)
    assert as_torch["LL"] == pytest.approx(ref["LL"], abs=1e-5)
    # within the tolerance the map is renormalised exactly: identical results
    off = evaluate(lambda i: maps[i] + math.log(1.0005), ds, kernel_size=3.0)
    for k in ("LL", "AUC", "sAUC", "NSS", "CC", "KLDiv", "SIM"):
        assert off[k] == pytest.approx(ref[k], rel=1e-9), k


def test_bad_inputs_raise_clear_errors(two_sizes):
    ds = two_sizes
    maps = random_log_densities(ds, seed=7)
    with pytest.raises(ValueError, match="sums to"):
        evaluate(lambda i: maps[i] + math.log(1.01), ds)
    with pytest.raises(ValueError, match="NaN"):
        evaluate(lambda i: np.where(np.arange(maps[i].size).reshape(maps[i].shape) == 3, np.nan, maps[i]), ds)
    with pytest.raises(ValueError, match="shape"):
        evaluate(lambda i: maps[i].T, ds)
    with pytest.raises(ValueError, match="sums to"):
        evaluate(lambda i: np.exp(maps[i]), ds)           # a density, not a log density
    with pytest.raises(ValueError, match="shape"):
        checked_log_density(np.zeros(5), (2, 3), image=0)
    bad = ds.fixations.copy()
    bad.loc[0, "x"] = ds.sizes[bad.loc[0, "image"], 1] + 2.0
    outside = datasets.FixationDataset(name="bad", stimuli=ds.stimuli, sizes=ds.sizes, fixations=bad)
    with pytest.raises(DataError, match="outside"):
        evaluate(lambda i: maps[i], outside)
    with pytest.raises(TypeError):
        evaluate(42, ds)


def test_models_not_bound_to_a_dataset_are_evaluated_at_its_sizes(two_sizes):
    """``Uniform()`` or a centre bias rebuilt from a dict: ``log_density_for_size`` at each image's size."""
    ds = two_sizes
    cb = CenterBias.fit(ds, bandwidth=0.1, uniform_weight=0.01)
    unbound = CenterBias.from_dict(cb.to_dict())
    assert unbound.dataset is None
    by_size = evaluate(lambda i: cb.log_density_for_size(*ds.sizes[i]), ds, kernel_size=3.0)
    ours = evaluate(unbound, ds, kernel_size=3.0)
    for k in ("LL", "AUC", "sAUC", "NSS", "CC", "KLDiv", "SIM"):
        assert ours[k] == by_size[k], k
    assert evaluate(Uniform(), ds, kernel_size=3.0)["LL"] == evaluate(Uniform(ds), ds, kernel_size=3.0)["LL"]
