"""dgstudy and pysaliency both ways (dgstudy.pysaliency_bridge): the same model scored by pysaliency's
code and by dgstudy's agrees on OSIE; a pysaliency data set becomes a dgstudy one unchanged."""
from __future__ import annotations

import numpy as np
import pytest

from dgstudy import baselines, classic, datasets, metrics
from dgstudy.map_density import density_from_maps
from dgstudy.pysaliency_bridge import as_pysaliency_model, from_pysaliency, import_pysaliency, to_pysaliency

ps = import_pysaliency()


@pytest.fixture(scope="module")
def osie30(osie_dir, tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("DGSTUDY_DATA", str(tmp_path_factory.mktemp("data")))
    yield datasets.load("osie", n_images=30)
    mp.undo()


def pysaliency_scores(model, baseline, stimuli, fixations) -> dict:
    dens = ps.DensitySaliencyMapModel(model)
    return {"LL": model.information_gain(stimuli, fixations, baseline_model=ps.UniformModel()),
            "IG": model.information_gain(stimuli, fixations, baseline_model=baseline),
            "AUC": dens.AUC(stimuli, fixations, average="image"),
            "NSS": dens.NSS(stimuli, fixations, average="image")}


def dgstudy_scores(model, ds, baseline) -> dict:
    s = metrics.evaluate(model, ds, baseline=baseline)
    return {"LL": s["LL_per_fixation"], "IG": s["IG_per_fixation"], "AUC": s["AUC_per_image"],
            "NSS": s["NSS_per_image"]}


@pytest.mark.slow
def test_a_cross_validated_model_scores_the_same_in_pysaliency_and_dgstudy_on_osie(osie30):
    """Spectral-residual maps made a density (10 folds) and the leave-image-out centre bias, each
    handed to pysaliency as a pysaliency.Model: LL, IG, AUC and NSS agree to 3 decimals (in fact
    to rounding: both put a fixation in pixel (int(y), int(x)))."""
    ds = osie30
    model = density_from_maps(classic.write_maps("spectral_residual", ds), ds)
    cb = baselines.CenterBias.fit(ds)
    stimuli, fixations = to_pysaliency(ds)
    theirs = pysaliency_scores(as_pysaliency_model(model, ds), as_pysaliency_model(cb, ds), stimuli, fixations)
    ours = dgstudy_scores(model, ds, cb)
    assert ours["IG"] > 0.2
    for k in ours:
        assert ours[k] == pytest.approx(theirs[k], abs=5e-4), k
        assert ours[k] == pytest.approx(theirs[k], abs=1e-6), k       # and in fact to rounding


@pytest.mark.slow
def test_the_shipped_model_predicts_in_pysaliency_what_it_predicts_in_dgstudy(osie30):
    from dgstudy.predict import load_model

    ds = osie30.subset(np.arange(3))
    predictor = load_model()
    stimuli, fixations = to_pysaliency(ds)
    model = as_pysaliency_model(predictor)
    for i in range(len(ds)):
        assert np.array_equal(model.log_density(stimuli[i]), predictor.log_density(ds.image(i)))
    cb = baselines.Uniform(ds)
    theirs = pysaliency_scores(model, ps.UniformModel(), stimuli, fixations)
    ours = dgstudy_scores(lambda i: predictor.log_density(ds.image(i)), ds, cb)
    # the predictor's float32 density sums to 1 only to float32 rounding; dgstudy renormalises it in
    # float64 (metrics.checked_log_density), pysaliency takes it as it is: 1e-5 bit apart
    for k in ("LL", "AUC", "NSS"):
        assert ours[k] == pytest.approx(theirs[k], abs=1e-4), k


def test_a_cross_validated_model_refuses_images_it_does_not_know(osie30):
    ds = osie30.subset(np.arange(2))
    model = as_pysaliency_model(baselines.Uniform(ds), ds)
    with pytest.raises(ValueError, match="not one of its images"):
        model.log_density(np.zeros((600, 800, 3), dtype=np.uint8))


def test_a_pysaliency_data_set_becomes_the_same_dgstudy_data_set(osie30, tmp_path):
    ds = osie30.subset(np.arange(6))
    stimuli, fixations = to_pysaliency(ds)
    back = from_pysaliency(stimuli, fixations, name="osie6")
    assert back.stimuli == [str(p) for p in ds.stimuli] and np.array_equal(back.sizes, ds.sizes)
    cols = ["image", "subject", "x", "y"]
    assert back.fixations[cols].equals(ds.fixations[cols])
    # fix_index: the order of a subject's fixations on an image, as in the original table (OSIE's
    # own numbering starts at 1: its first, central fixation is dropped; fixations without history
    # carry no numbers, so the order is what survives)
    order = ds.fixations.groupby(["image", "subject"]).cumcount().to_numpy()
    assert np.array_equal(back.fixations["fix_index"].to_numpy(), order)

    # in-memory stimuli are written as PNG; the data set then scores a model the same way
    arrays = ps.Stimuli([np.asarray(ds.image(i)) for i in range(len(ds))])
    mem = from_pysaliency(arrays, fixations, name="osie6-memory", folder=tmp_path / "png")
    assert all(np.array_equal(mem.image(i), ds.image(i)) for i in range(len(ds)))
    cb = baselines.CenterBias.fit(ds)
    rebuilt = baselines.CenterBias.fit(mem)
    assert metrics.evaluate(rebuilt, mem)["LL"] == pytest.approx(metrics.evaluate(cb, ds)["LL"], abs=1e-12)
