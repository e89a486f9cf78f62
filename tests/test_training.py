"""Cross-validated readout training on generated data with a known fixation density."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dgstudy import datasets, evaluation, metrics, runs, training
from dgstudy.baselines import CenterBias
from dgstudy.config import StudyConfig, TrainConfig

H, W, P = 48, 64, 2     # synthetic image size and the feature grid's pooling factor


def synthetic_features(ds, n_noise: int = 4, seed: int = 0) -> dict[int, np.ndarray]:
    """Per image: the RGB channels pooled 2x2 (red drives the true density), the squared centred
    coordinates (the true density's Gaussian centre term is linear in them) and noise channels;
    float16 as a feature store keeps them."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:H // P, 0:W // P]
    u, v = (xx + 0.5) / (W // P) - 0.5, (yy + 0.5) / (H // P) - 0.5
    coords = np.stack([u ** 2, v ** 2]).astype(np.float32)
    out = {}
    for i in range(len(ds)):
        img = ds.image(i).astype(np.float32) / 255
        pooled = img.reshape(H // P, P, W // P, P, 3).mean((1, 3)).transpose(2, 0, 1)
        noise = rng.normal(size=(n_noise, H // P, W // P)).astype(np.float32)
        out[i] = np.concatenate([pooled, coords, noise]).astype(np.float16)
    return out


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: one intra-op thread is faster, and much faster on a busy machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def results_root(tmp_path, monkeypatch, data_root):
    root = tmp_path / "results"
    monkeypatch.setenv("DGSTUDY_RESULTS", str(root))
    return root


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    folder = tmp_path_factory.mktemp("synthetic")
    ds = datasets.load("synthetic", n_images=60, size=(H, W), n_subjects=10, fixations_per_subject=10,
                       seed=1, beta=8.0, folder=folder)
    return ds, synthetic_features(ds)


def small_config(**kw) -> TrainConfig:
    base = dict(dataset="synthetic", folds=3, max_epochs=60, lr=0.01, batch_size=4, patience=5,
                blur_sigma=1.0, saliency_map_factor=2, run="synthetic-test")
    return TrainConfig(**{**base, **kw})


def test_recovers_the_true_density(synthetic, results_root):
    """The cross-validated model gets >= 90 % of the true density's IG over the centre bias."""
    ds, feats = synthetic
    run = training.train_crossval(small_config(), dataset=ds, features=feats, progress=False)
    result = evaluation.evaluate_run(run, dataset=ds, features=feats, progress=False)
    baseline = CenterBias.fit(ds)
    truth = metrics.evaluate(ds, ds, baseline=baseline)
    ig_model, ig_true = result["summary"]["IG"], truth["IG"]
    assert ig_true > 0.5                                  # the generator's signal is strong
    assert ig_model >= 0.9 * ig_true, (ig_model, ig_true)
    assert ig_model <= ig_true + 0.05                     # cannot beat the truth by much
    # per-fold IG is in metrics.json and its fixation-weighted mean is the overall IG
    saved = json.loads((run / "metrics.json").read_text())
    folds = saved["folds"]
    assert [f["fold"] for f in folds] == [0, 1, 2]
    n = np.array([f["n_fix"] for f in folds], dtype=float)
    assert np.dot([f["IG"] for f in folds], n) / n.sum() == pytest.approx(ig_model, abs=1e-9)
    assert all(f["IG"] > 0 for f in folds)
    per_image = (run / "per_image.csv").read_text().splitlines()
    assert len(per_image) == len(ds) + 1 and "fold" in per_image[0]
    logs = runs.fold_logs(run)
    assert {"train_LL", "val_LL", "val_ig", "sigma"} <= set(logs.columns)


def test_no_test_image_influences_its_own_fold(synthetic, results_root, monkeypatch):
    ds, feats = synthetic
    seen = {}
    real_fit, real_train, real_norm = training.fit_center_bias, training.train_fold, training.feature_normalization

    def spy_fit(dataset, images):
        seen.setdefault("cb", []).append(set(np.asarray(images).tolist()))
        return real_fit(dataset, images)

    def spy_norm(features, images):
        seen.setdefault("norm", []).append(set(np.asarray(images).tolist()))
        return real_norm(features, images)

    def spy_train(cfg, features, dataset, train, val, *a, **kw):
        seen.setdefault("train", []).append(set(np.asarray(train).tolist()))
        seen.setdefault("val", []).append(set(np.asarray(val).tolist()))
        return real_train(cfg, features, dataset, train, val, *a, **kw)

    monkeypatch.setattr(training, "fit_center_bias", spy_fit)
    monkeypatch.setattr(training, "feature_normalization", spy_norm)
    monkeypatch.setattr(training, "train_fold", spy_train)
    cfg = small_config(max_epochs=1, run="leak-check", num_threads=2)
    run = training.train_crossval(cfg, dataset=ds, features=feats, progress=False)
    assert torch.get_num_threads() == 1                       # the thread setting is restored
    tests = []
    for fold in range(3):
        info = json.loads((run / f"fold_{fold:02d}" / "config.json").read_text())
        test = set(info["test_images"])
        tests.append(test)
        for what in ("cb", "norm", "train", "val"):
            assert not seen[what][fold] & test, (what, fold)
        assert seen["cb"][fold] == seen["norm"][fold] == seen["train"][fold] == set(info["train_images"])
        assert seen["val"][fold] == set(info["val_images"])
    assert set().union(*tests) == set(range(len(ds))) and sum(map(len, tests)) == len(ds)
    # the cross-validated prediction of an image comes from the fold that held it out
    cvm = runs.CrossValModel(run, dataset=ds, features=feats)
    for fold, test in enumerate(tests):
        assert all(cvm.fold_of[i] == fold for i in test)
    ld = cvm.log_density(0)
    assert ld.shape == (H, W) and abs(np.logaddexp.reduce(ld.ravel())) < 1e-5


def test_resume_after_interrupted_fold(synthetic, results_root, monkeypatch):
    ds, feats = synthetic
    cfg = small_config(max_epochs=2, run="resume")
    real_train = training.train_fold
    calls = []

    def crash_on_fold_1(cfg, features, dataset, train, val, *a, seed, **kw):
        calls.append(seed)
        if seed == 1:
            raise KeyboardInterrupt("interrupted during fold 1")
        return real_train(cfg, features, dataset, train, val, *a, seed=seed, **kw)

    monkeypatch.setattr(training, "train_fold", crash_on_fold_1)
    with pytest.raises(KeyboardInterrupt):
        training.train_crossval(cfg, dataset=ds, features=feats, progress=False)
    run = results_root / "resume"
    assert runs.fold_done(run / "fold_00") and not (run / "fold_01" / "config.json").exists()
    assert not list(run.rglob("*.tmp"))                       # nothing half-written left behind
    model0 = (run / "fold_00" / "model.pt").read_bytes()

    monkeypatch.setattr(training, "train_fold", real_train)
    seeds = []
    monkeypatch.setattr(training, "train_fold",
                        lambda *a, **kw: seeds.append(kw["seed"]) or real_train(*a, **kw))
    training.train_crossval(cfg, dataset=ds, features=feats, progress=False)
    assert seeds == [1, 2]                                    # fold 0 was not trained again
    assert (run / "fold_00" / "model.pt").read_bytes() == model0
    assert all(runs.fold_done(run / f"fold_{k:02d}") for k in range(3))
    # a finished run is not retrained, and different settings under the same name are refused
    training.train_crossval(cfg, dataset=ds, features=feats, progress=False)
    assert seeds == [1, 2]
    with pytest.raises(ValueError, match="different settings"):
        training.train_crossval(small_config(max_epochs=3, run="resume"), dataset=ds, features=feats,
                                progress=False)


def test_training_is_deterministic(synthetic):
    ds, feats = synthetic
    cfg = small_config(max_epochs=2)
    train, val, _ = datasets.fold_split(len(ds), 0, 3, 0)
    cb = CenterBias.fit(ds, images=train)
    a, log_a, rec = training.train_fold(cfg, feats, ds, train, val, cb.log_density_for_size, seed=5,
                                        progress=False)
    b, log_b, _ = training.train_fold(cfg, feats, ds, train, val, cb.log_density_for_size, seed=5,
                                      progress=False)
    assert rec == {"seed": 5, "dead_seeds": []}
    for k, v in a.state_dict().items():
        torch.testing.assert_close(v, b.state_dict()[k], rtol=0, atol=0)
    assert log_a["val_LL"].tolist() == log_b["val_LL"].tolist()


def test_config_from_profile():
    cfg = StudyConfig.load("smoke", readout="deepgaze1", run="smoke-efficientnet_lite0").train
    assert (cfg.dataset, cfg.n_images, cfg.folds, cfg.max_epochs, cfg.readout) == ("osie", 24, 3, 4, "deepgaze1")
    assert cfg.run == "smoke-efficientnet_lite0" and cfg.device in ("cpu", "cuda")
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


def kill_two_channel_layer(model):
    """The collapse seen on OSIE (EfficientNet-Lite1, fold 8): both channels of the readout's
    2-channel ReLU layer are zero at every position, so the output is the last bias, constant,
    and no gradient reaches anything before it."""
    with torch.no_grad():
        model.readout.conv2.bias.fill_(-1e4)
    return model


def test_readout_is_constant(synthetic):
    ds, feats = synthetic
    model = training.build_model(small_config(), next(iter(feats.values())).shape[0])
    assert not training.readout_is_constant(model, feats, range(5))
    assert training.readout_is_constant(kill_two_channel_layer(model), feats, range(5))


def test_dead_readout_restarts_with_the_next_seed(synthetic, results_root, monkeypatch):
    """A collapsing initialisation stays dead through training (zero gradient); the fold detects it
    after the first epoch, restarts from the next seed, records both, and learns."""
    ds, feats = synthetic
    real_build = training.build_model
    built = []

    def collapse_first(cfg, in_channels):
        model = real_build(cfg, in_channels)
        built.append(torch.initial_seed())
        return kill_two_channel_layer(model) if len(built) == 1 else model

    monkeypatch.setattr(training, "build_model", collapse_first)
    cfg = small_config(folds=3, max_epochs=30, run="collapse")
    with pytest.warns(UserWarning, match="constant after the first epoch; restarting from seed 10007"):
        run = training.train_crossval(cfg, folds=[0], dataset=ds, features=feats, progress=False)
    info = json.loads((run / "fold_00" / "config.json").read_text())
    assert info["dead_seeds"] == [0] and info["seed"] == training.RESTART_SEED_STEP
    assert built == [0, training.RESTART_SEED_STEP]
    assert info["best_val_ig"] > 0.3                       # the restarted readout learned

    # without the check the collapse trains to a constant readout: verify the failure it prevents
    monkeypatch.setattr(training, "build_model", lambda cfg, c: kill_two_channel_layer(real_build(cfg, c)))
    train, val, _ = datasets.fold_split(len(ds), 0, 3, 0)
    cb = CenterBias.fit(ds, images=train)
    with pytest.warns(UserWarning, match="restarting"), pytest.raises(training.DeadReadout, match="every one"):
        training.train_fold(cfg, feats, ds, train, val, cb.log_density_for_size, seed=0, progress=False)


def test_fold_health_flags_failed_folds(tmp_path):
    import pandas as pd

    for fold, val_ig in enumerate([0.8, -0.01, 0.7, 0.9]):
        d = tmp_path / f"fold_{fold:02d}"
        d.mkdir()
        (d / "model.pt").write_bytes(b"")
        (d / "config.json").write_text(json.dumps({"fold": fold, "best_val_ig": val_ig,
                                                    "dead_seeds": [3] if fold == 2 else []}))
    folds = pd.DataFrame({"fold": [0, 1, 2, 3], "IG": [1.9, 0.0002, 2.0, 0.6]})
    health = evaluation.fold_health(tmp_path, folds)
    assert health["folds_not_above_center_bias"] == [1]
    assert health["folds_low_test_ig"] == [1, 3]            # below 0.5 x the median 1.25
    assert health["folds_restarted"] == {2: [3]}
    assert len(health["problems"]) == 3
