"""The training choices of the science grid: readout widths, the authors' layer norm, L1 on the
first layer, a step-decayed learning rate, horizontal flips, instances, and the config checks."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from dgstudy import ablations, datasets, ensemble, evaluation, grids, runs, training
from dgstudy.baselines import CenterBias
from dgstudy.config import StudyConfig, TrainConfig
from dgstudy.model import DeepGazeII, LayerNorm, make_readout

from test_training import H, W, one_thread, results_root, small_config, synthetic  # noqa: F401


def test_layer_norm_normalises_each_image_over_channels_height_and_width():
    torch.manual_seed(0)
    x = torch.randn(3, 5, 4, 6) * torch.tensor([1.0, 10, 3])[:, None, None, None] + 7
    y = LayerNorm(5)(x).detach()
    for b in range(3):            # each image as a whole: mean 0, variance 1 ...
        assert float(y[b].mean()) == pytest.approx(0, abs=1e-5)
        assert float(y[b].var(unbiased=False)) == pytest.approx(1, abs=1e-4)
    # ... but not per position (a per-position norm would make every column's mean 0)
    assert float(y.mean(1).abs().max()) > 0.1
    # one scale and shift per channel
    ln = LayerNorm(5)
    with torch.no_grad():
        ln.weight.copy_(torch.arange(1.0, 6.0)), ln.bias.copy_(torch.full((5,), 2.0))
    z = (x[:1] - x[:1].mean()) / torch.sqrt(x[:1].var(unbiased=False) + ln.eps)
    assert torch.allclose(ln(x[:1]), z * torch.arange(1.0, 6.0)[None, :, None, None] + 2, atol=1e-5)


def test_softplus_layernorm_readout_is_norm_conv_softplus():
    r = make_readout(8, nonlinearity="softplus_layernorm", channels=[4, 2, 1])
    assert list(r._modules) == ["norm0", "conv0", "act0", "norm1", "conv1", "act1", "conv2"]
    assert isinstance(r.act0, torch.nn.Softplus) and r.norm1.weight.shape == (4,)
    relu = make_readout(8, channels=[3, 1])
    assert [tuple(m.weight.shape[:2]) for m in relu if isinstance(m, torch.nn.Conv2d)] == [(3, 8), (1, 3)]
    with pytest.raises(ValueError, match="end in 1"):
        make_readout(8, channels=[4, 2])
    m = DeepGazeII(8, readout_channels=[4, 1])
    assert m.hparams["readout_channels"] == [4, 1]
    assert "readout_channels" not in DeepGazeII(8).hparams       # old checkpoints rebuild unchanged


def test_l1_on_the_first_layer_only():
    m = DeepGazeII(6)
    assert len(training.l1_weights(m, "all")) == 4
    first = training.l1_weights(m, "first")
    assert len(first) == 1 and first[0] is m.readout.conv0.weight
    with pytest.raises(ValueError, match="l1_layers"):
        TrainConfig(l1_layers="last")


def test_flip_batch_mirrors_features_centre_bias_and_fixations(synthetic):
    ds, feats = synthetic
    i = 3
    grid = (H // 2, W // 2)
    pix = datasets.image_fixation_index(ds, i, grid)
    fx = ds.fixations_of(i)
    # the cell of the mirrored fixation x -> W - x (no fixation sits exactly on a cell border)
    mirrored = (np.floor(fx["y"].to_numpy() * grid[0] / H).astype(int) * grid[1]
                + np.floor((W - fx["x"].to_numpy()) * grid[1] / W).astype(int))
    x = torch.from_numpy(feats[i].astype(np.float32))[None]
    cb = torch.randn(H, W).expand(1, H, W)
    fx_, cb_, p_ = training.flip_batch(x, cb, torch.from_numpy(pix), grid)
    assert np.array_equal(p_.numpy(), mirrored)
    assert torch.equal(fx_[0, :, :, 0], x[0, :, :, -1]) and torch.equal(cb_[0, :, 0], cb[0, :, -1])
    again = training.flip_batch(fx_, cb_, p_, grid)
    assert torch.equal(again[0], x) and torch.equal(again[1], cb) and np.array_equal(again[2].numpy(), pix)
    # a model's log-likelihood of the flipped batch is that of the mirrored model's input
    model = DeepGazeII(x.shape[1], blur_sigma=1.0, saliency_map_factor=2).eval()
    with torch.no_grad():
        a = model(fx_, cb_, reduced=True).reshape(-1)[p_]
        b = model(x.flip(-1), cb.flip(-1), reduced=True).reshape(-1)[torch.from_numpy(mirrored)]
    assert torch.allclose(a, b)


def test_choices_change_training_and_instance_zero_is_the_old_seed(synthetic, results_root):
    ds, feats = synthetic
    cfg = small_config(max_epochs=3, folds=3)
    assert training.fold_seed(cfg, 2) == 2                      # instance 0: the seed runs always had
    assert training.fold_seed(small_config(init_seed=1), 2) == 2 + training.INSTANCE_SEED_STEP
    n = len(ds)
    train, val = np.arange(0, n - n // 4), np.arange(n - n // 4, n)
    cb = CenterBias.fit(ds, images=train).log_density_for_size
    fit = lambda c, seed=0: training.train_fold(c, feats, ds, train, val, cb, seed=seed, progress=False)[1]
    base = fit(cfg)
    assert fit(cfg)["val_LL"].tolist() == base["val_LL"].tolist()          # deterministic
    # mirroring the stored features (with the fixations and the centre bias) leaves the likelihood
    # of every batch as it is: the readout, resize, blur and softmax commute with the mirror, and the
    # stacked grid is image-aligned (symmetric), so training is the same up to rounding
    flipped = fit(small_config(max_epochs=3, folds=3, flip=True))
    assert np.allclose(flipped["val_LL"], base["val_LL"], atol=1e-4, rtol=0)
    for change in (dict(l1_layers="first", l1=1e-2), dict(init_seed=1),
                   dict(nonlinearity="softplus_layernorm"), dict(readout_channels=[8, 1])):
        c = small_config(max_epochs=3, folds=3, **change)
        log = fit(c, seed=training.fold_seed(c, 0))
        assert log["val_LL"].tolist() != base["val_LL"].tolist(), change
    step = fit(small_config(max_epochs=4, patience=9, lr=0.01, lr_milestones=[1, 3], lr_gamma=0.5))
    assert step["lr"].tolist() == pytest.approx([0.01, 0.005, 0.005, 0.0025])


def test_a_run_started_before_a_setting_existed_resumes(results_root):
    cfg = small_config(run="old-run")
    d = results_root / "old-run"
    d.mkdir(parents=True)
    old = cfg.to_dict()
    for key in ("flip", "init_seed", "l1_layers", "lr_milestones", "lr_gamma", "readout_channels"):
        del old[key]
    (d / "config.json").write_text(json.dumps(old))
    runs.check_run_config(d, cfg)                                # same settings: accepted
    fold = d / "fold_00"
    fold.mkdir()
    (fold / "config.json").write_text("{}")
    (fold / "model.pt").write_bytes(b"")                         # a finished fold
    with pytest.raises(ValueError, match="flip"):
        runs.check_run_config(d, small_config(run="old-run", flip=True))


def test_a_run_with_other_settings_and_no_finished_fold_is_replaced(results_root):
    # e.g. a condition that failed on its first fold: rerunning it corrected needs no rm -r
    d = results_root / "typo-run"
    runs.check_run_config(d.mkdir(parents=True) or d, small_config(run="typo-run", lr=0.5))
    (d / "fold_00").mkdir()
    (d / "fold_00" / "log.csv").write_text("epoch\n")             # started, not finished
    with pytest.warns(UserWarning, match=r"replaced a run started with other settings \(\['lr'\]\)"):
        runs.check_run_config(d, small_config(run="typo-run", lr=0.01))
    assert not (d / "fold_00").exists()
    assert json.loads((d / "config.json").read_text())["lr"] == 0.01


def test_training_grid_and_instances(synthetic, results_root):
    ds, feats = synthetic
    cfg = StudyConfig.load("smoke")
    grid = grids.training_grid(cfg)
    assert grid["default"] == {} and set(grid) > {"default"}
    with pytest.raises(ValueError, match="ablation_training: condition 'x': .'flipp'. are not TrainConfig keys"):
        StudyConfig.load("smoke", ablation_training={"x": {"flipp": True}})
    # instances: the same split, other seeds; their average is scored like a run
    base = small_config(max_epochs=3, run="inst")
    folders = training.train_runs([base, small_config(max_epochs=3, run="inst-init1", init_seed=1)],
                                  dataset=ds, features=feats, progress=False)
    members = dict(zip(["init0", "init1"], folders))
    for f in folders:
        evaluation.evaluate_run(f, dataset=ds, features=feats, progress=False)
    models = {k: runs.CrossValModel(v, dataset=ds, features=feats) for k, v in members.items()}
    out = results_root / "inst-instances2"
    res = ensemble.select_and_evaluate(models, out, dataset=ds, members="all", progress=False)
    assert all(c == ["init0", "init1"] for c in res["choice"].values())
    # the average of two instances is at least as good on the test folds as their mean LL
    # (the log of a mean density is >= the mean of the log densities: Jensen)
    lls = [json.loads((f / "metrics.json").read_text())["summary"]["LL"] for f in folders]
    assert res["summary"]["LL"] >= np.mean(lls) - 1e-9
    spread = ablations.spread_table(members, metrics=("IG", "LL"))
    row = spread.set_index("metric").loc["LL"]
    assert row["mean"] == pytest.approx(np.mean(lls)) and row["range"] == pytest.approx(abs(lls[0] - lls[1]))
    # validation scores: each fold's recorded best validation LL; ensembles are not among them
    val = ablations.validation_scores({"init1": folders[1], "avg": out})
    assert sorted(val["fold"]) == [0, 1, 2] and set(val["condition"]) == {"init1"}
    for r in val.itertuples():
        log = pd.read_csv(folders[1] / f"fold_{r.fold:02d}" / "log.csv")
        assert r.val_LL == pytest.approx(log["val_LL"].max())
    # the ensemble's control picks its best member by the mean validation LL, never by test scores
    both = ablations.validation_scores(members).groupby("condition")["val_LL"].mean()
    assert both["init0"] != both["init1"]
    assert ablations.best_backbone(members) == both.idxmax()
    assert ablations.best_backbone({"avg": out, **members}) == both.idxmax()    # ensembles are no candidate
    with pytest.raises(ValueError, match="no run in the backbone ablation has validation scores"):
        ablations.best_backbone({"avg": out})


def test_flip_with_the_mirrored_images_features(data_root, results_root):
    """``flip_source='images'``: mirrored batches read the features of the mirrored image, from a
    store of its own (the mirrored images' features, not the stored ones mirrored)."""
    from dgstudy import datasets, features
    from test_features import toy_backbone
    ds = datasets.load("synthetic", n_images=12, size=(32, 48), seed=3)
    bb = toy_backbone()
    plain = features.extract(ds, bb, layers=["p2"], progress=False, out=data_root / "t.h5")
    mirror = features.extract(ds, bb, layers=["p2"], progress=False, out=data_root / "t-mirror.h5", mirror=True)
    assert features.FeatureStore(mirror).attrs["mirror"] is True
    x = torch.from_numpy(np.ascontiguousarray(ds.image(4)[:, ::-1]))
    ref = features.compute(bb, x.numpy(), layers=["p2"])["p2"]
    got = features.FeatureStore(mirror).read(4)["p2"]
    assert np.array_equal(got, ref)
    assert not np.array_equal(got, features.FeatureStore(plain).read(4)["p2"][:, :, ::-1])
    with pytest.raises(Exception, match="mirror"):
        features.extract(ds, bb, layers=["p2"], progress=False, out=mirror)
    assert runs.feature_path(small_config(feature_path=str(plain)), ds, mirror=True) == mirror
    cfg = small_config(dataset="synthetic", n_images=None, folds=3, max_epochs=2, feature_path=str(plain),
                       flip=True, flip_source="images", run="flip-images", saliency_map_factor=4)
    cfg.dataset_options = {}
    with pytest.raises(ValueError, match="mirrored"):
        training.train_fold(cfg, {i: features.FeatureStore(plain).stacked(i) for i in range(12)}, ds,
                            np.arange(8), np.arange(8, 10), lambda h, w: np.full((h, w), -np.log(h * w)),
                            seed=0, progress=False)
    run = training.train_crossval(cfg, dataset=ds, progress=False)
    rec = json.loads((run / "fold_00" / "config.json").read_text())
    assert rec["mirror_feature_path"] == str(mirror.resolve())
    with pytest.raises(ValueError, match="flip_source"):
        TrainConfig(flip_source="pixels")


def test_mirrored_features_feed_the_flipped_batches(synthetic):
    """With the stored features mirrored as the 'mirrored images' features', flip_source='images'
    trains exactly as flip_source='features'; with other features it does not."""
    ds, feats = synthetic
    n = len(ds)
    train, val = np.arange(0, n - n // 4), np.arange(n - n // 4, n)
    cb = CenterBias.fit(ds, images=train).log_density_for_size

    def fit(c, mirrored=None):
        return training.train_fold(c, feats, ds, train, val, cb, seed=0, progress=False,
                                   mirrored=mirrored)[1]["val_LL"].tolist()

    by_features = fit(small_config(max_epochs=3, flip=True))
    as_mirror = {i: np.ascontiguousarray(f[:, :, ::-1]) for i, f in feats.items()}
    assert fit(small_config(max_epochs=3, flip=True, flip_source="images"), as_mirror) == by_features
    shuffled = {i: feats[(i + 1) % n][:, :, ::-1].copy() for i in feats}
    assert fit(small_config(max_epochs=3, flip=True, flip_source="images"), shuffled) != by_features
