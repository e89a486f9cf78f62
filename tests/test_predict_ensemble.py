"""The main ensemble: its candidates, its choice, and the ensemble as a model for any image, as
evaluated and as shipped (dgstudy.main_ensemble, dgstudy.predict_ensemble, pretrained.export_ensemble)."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from scipy.special import logsumexp

from dgstudy import ensemble, main_ensemble, predict, pretrained, runs
from dgstudy.config import StudyConfig, TrainConfig
from dgstudy.predict_ensemble import EnsemblePredictor
from conftest import isolated_study


# -- the members and the candidates -----------------------------------------------------------------
def test_members_and_candidates_of_a_profile():
    cfg = StudyConfig.load("osie_extended", ensemble_backbones=["efficientnet_lite0", "efficientnet_lite2"],
                           ensemble_instances=2)
    members = main_ensemble.member_conditions(cfg)
    assert list(members) == ["efficientnet_lite0", "efficientnet_lite2"]
    lite0, lite2 = members["efficientnet_lite0"], members["efficientnet_lite2"]
    assert lite0["init0"] == cfg.main_train                       # the main run is a member
    assert lite0["init1"].run == f"{cfg.main_train.run}-init1" and lite0["init1"].init_seed == 1
    assert lite2["init0"].run == "osie-efficientnet_lite2-main" and lite2["init0"].backbone == "efficientnet_lite2"
    # the main configuration, its backbone swapped: only the backbone, its layers and the run differ
    same = dataclasses.replace(lite2["init0"], backbone=cfg.main_train.backbone, run=cfg.main_train.run,
                               layers=cfg.main_train.layers, feature_path=cfg.main_train.feature_path)
    assert same == cfg.main_train and lite2["init0"].downsample == 1 and lite2["init0"].layers is None
    cands = main_ensemble.candidates(cfg)
    assert len(cands) == 3 * 3 - 1 and len(set(cands)) == len(cands)
    a0, a1 = lite0["init0"].run, lite0["init1"].run
    b0, b1 = lite2["init0"].run, lite2["init1"].run
    assert set(cands) == {(a0,), (a0, a1), (b0,), (b0, b1), (a0, b0), (a0, a1, b0), (a0, b0, b1),
                          (a0, a1, b0, b1)}
    assert [len(c) for c in cands] == sorted(len(c) for c in cands)
    assert set(main_ensemble.member_runs(cfg)) == {a0, a1, b0, b1}
    assert set(main_ensemble.candidates(cfg, max_instances=1)) == {(a0,), (b0,), (a0, b0)}
    assert StudyConfig.load("osie").ensemble_backbones == []
    with pytest.raises(ValueError, match="ensemble_instances"):
        StudyConfig.load("osie", ensemble_instances=0)


def test_a_weighted_average_is_the_weighted_mean_of_densities():
    rng = np.random.default_rng(1)
    lds = [np.log(rng.dirichlet(np.ones(20))).reshape(4, 5).astype(np.float32) for _ in range(3)]
    w = [0.5, 0.125, 0.375]
    got = ensemble.average_log_densities(lds, weights=w)
    want = np.log(sum(wi * np.exp(l.astype(np.float64)) for l, wi in zip(lds, w)))
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert got.dtype == np.float32
    # weights are relative: equal weights are the plain average
    np.testing.assert_allclose(ensemble.average_log_densities(lds, weights=[3, 3, 3]), ensemble.average_log_densities(lds),
                               atol=1e-6)


# -- an ensemble over two backbones, evaluated, loaded and shipped -------------------------------------
@pytest.fixture(scope="module")
def two_backbones(tmp_path_factory):
    """Three 3-fold runs on 9 synthetic 96x128 images: efficientnet_lite0 with init seeds 0 and 1,
    efficientnet_lite1 with seed 0 (2 epochs each), and their validation-chosen ensemble."""
    from dgstudy import features, training

    with isolated_study(tmp_path_factory.mktemp("predict_ensemble")) as root:
        base = TrainConfig(dataset="synthetic", n_images=9, backbone="efficientnet_lite0",
                           dataset_options={"size": [96, 128], "seed": 3, "n_subjects": 4,
                                            "fixations_per_subject": 6},
                           folds=3, max_epochs=2, patience=2, batch_size=4, run="a0")
        cfgs = [base, dataclasses.replace(base, run="a1", init_seed=1),
                dataclasses.replace(base, run="b0", backbone="efficientnet_lite1")]
        ds = runs.load_dataset(base)
        for c in (cfgs[0], cfgs[2]):
            features.extract(ds, c.backbone, downsample=c.downsample, out=runs.feature_path(c, ds), progress=False)
        dirs = {c.run: training.train_crossval(c, progress=False) for c in cfgs}
        cands = [("a0",), ("a0", "a1"), ("b0",), ("a0", "b0"), ("a0", "a1", "b0")]
        out = root / "results" / "ens"
        res = ensemble.select_and_evaluate(dirs, out, progress=False, candidates=cands)
        yield ds, dirs, out, res, cands, root


def test_the_choice_is_among_the_candidates(two_backbones):
    _, _, out, res, cands, _ = two_backbones
    for fold, chosen in res["choice"].items():
        scores = res["validation_LL"][fold]
        assert set(scores) == {"+".join(c) for c in cands}
        assert tuple(chosen) in cands and scores["+".join(chosen)] == max(scores.values())
    assert json.loads((out / "ensemble.json").read_text())["candidates"] == [list(c) for c in cands]
    with pytest.raises(ValueError, match="candidates"):
        ensemble.select_and_evaluate(two_backbones[1], out / "x", progress=False, candidates=[("zz",)])


def test_one_fold_of_the_loaded_ensemble_is_the_evaluated_density(two_backbones):
    ds, dirs, out, res, _, _ = two_backbones
    ens = predict.load_model(out, scale="native")
    assert isinstance(ens, EnsemblePredictor)
    models = {n: runs.CrossValModel(d) for n, d in dirs.items()}
    choice = {int(f): tuple(c) for f, c in res["choice"].items()}
    sel = ensemble.SelectedEnsemble(models, choice)
    one = ens.single_folds()
    assert sorted(one) == [0, 1, 2]
    for fold in range(3):
        i = int(models["a0"].fold_images(fold, "test")[0])
        got = one[fold].log_density(ds.image(i))
        np.testing.assert_allclose(got, sel.log_density(i), atol=2e-4)
        assert len(one[fold].members) == len(choice[fold])
    assert predict.load_model(out, fold=1, scale="native").choice == {1: list(choice[1])}


def test_the_full_ensemble_averages_its_folds_ensembles(two_backbones):
    ds, _, out, res, _, _ = two_backbones
    ens = predict.load_model(out, scale="native")
    used = {{"a": "efficientnet_lite0", "b": "efficientnet_lite1"}[n[0]] for c in res["choice"].values() for n in c}
    assert sorted(s.backbone for s in ens.specs) == sorted(used)      # one part per backbone used
    rgb = ds.image(4)
    per_fold = [p.log_density(rgb).astype(np.float64) for _, p in sorted(ens.single_folds().items())]
    want = logsumexp(per_fold, axis=0) - np.log(len(per_fold))
    got = ens.log_density(rgb)
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert logsumexp(got.astype(np.float64)) == pytest.approx(0.0, abs=1e-5)
    cb = ens.center_bias_log_density(*rgb.shape[:2])
    assert logsumexp(cb) == pytest.approx(0.0, abs=1e-9)


def test_shipped_ensemble_predicts_as_the_evaluated_one(two_backbones, tmp_path):
    ds, dirs, out, res, _, _ = two_backbones
    shipped = pretrained.export_ensemble(out, tmp_path / "ens-model", ds, why="test")
    prov = json.loads((shipped / "provenance.json").read_text())
    assert prov["kind"] == "ensemble" and prov["choice"] == res["choice"]
    assert prov["cross_validated_metrics"]["IG"] == pytest.approx(res["summary"]["IG"])
    # only the chosen (member, fold) readouts ship; each fold's centre bias once
    pairs = {(d.parent.name, d.name) for d in (shipped / "members").glob("*/fold_*")}
    assert pairs == {(m, f"fold_{int(f):02d}") for f, c in res["choice"].items() for m in c}
    assert sorted(d.name for d in shipped.glob("fold_*")) == ["fold_00", "fold_01", "fold_02"]
    assert not list((shipped / "members").rglob(pretrained.GRID_FILE))
    rgb = ds.image(5)
    a = predict.load_model(out, scale="native", center_bias="uniform").log_density(rgb)
    b = predict.load_model(shipped, scale="native", center_bias="uniform").log_density(rgb)
    np.testing.assert_array_equal(a, b)                      # the same readouts, the same weights
    c = predict.load_model(shipped, scale="native").log_density(rgb)   # the centre bias from its grid
    p, q = np.exp(predict.load_model(out, scale="native").log_density(rgb).astype(np.float64)), np.exp(c)
    assert np.abs(p - q).sum() < 0.02


def test_each_folds_centre_bias_is_kept_once(two_backbones, tmp_path):
    """Members of one fold share their training centre bias (one map per fold and image size,
    across backbones), in an evaluated ensemble and in a shipped one; each member's map is its own
    centre bias's, as before the sharing."""
    ds, _, out, res, _, _ = two_backbones
    shipped = pretrained.export_ensemble(out, tmp_path / "ens-model", ds, why="test")
    for folder in (out, shipped):
        ens = predict.load_model(folder, scale="native")
        assert len(ens.members) > 3                              # some fold has several members
        maps = [t for p in ens.parts for t in p._member_center_biases(96, 128)]
        assert len({id(t) for t in maps}) == 3                   # one per fold
        assert all(p._cb_cache is ens.parts[0]._cb_cache for p in ens.parts)
        for p in ens.parts:
            for m, t in zip(p.members, p._member_center_biases(96, 128)):
                np.testing.assert_array_equal(t.numpy(), m.center_bias.log_density_for_size(96, 128).astype(np.float32))
