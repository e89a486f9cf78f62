"""Cross-validated readout training on generated data with a known fixation density."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
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


# -- the fast path, the epoch's weights, one grid for val_ig -----------------------------------------
def plain_batch(model, feats, ds, batch, cb_fn, reduced, flip=False):
    """A batch as the plain model sees it: raw float32 features (B, C, h, w) through ``forward``
    (which standardises them), the fixations' pixels or cells; natural-log p of each fixation."""
    from dgstudy.training_fast import flip_batch

    H_, W_ = (int(v) for v in ds.sizes[batch[0]])
    grid = model.finalizer.reduced_size(H_, W_) if reduced else (H_, W_)
    x = torch.from_numpy(np.stack([np.asarray(feats[i], dtype=np.float32) for i in batch]))
    cb = torch.from_numpy(np.asarray(cb_fn(H_, W_), dtype=np.float32)).expand(len(batch), H_, W_)
    fix = [datasets.image_fixation_index(ds, int(i), grid if reduced else None) for i in batch]
    b_idx = torch.from_numpy(np.repeat(np.arange(len(batch)), [len(f) for f in fix]))
    p_idx = torch.from_numpy(np.concatenate(fix))
    if flip:
        x, cb, p_idx = flip_batch(x, cb, p_idx, grid)
    logd = model(x, cb, reduced=reduced)
    return logd.reshape(len(batch), -1)[b_idx, p_idx]


@pytest.mark.parametrize("kw", [dict(), dict(train_resolution="full"), dict(flip=True),
                                dict(nonlinearity="softplus_layernorm", l1_layers="first")])
def test_fast_path_gives_the_plain_paths_losses(synthetic, kw):
    """Same seed, same batches, up to eight Adam steps: the fast path (features standardised once,
    (N*h*w, C) layout, reused buffers) and the plain model on raw features give the same
    per-fixation log-likelihoods and losses: the same bits (the authors' layer norm: to 1e-5 bit),
    and training.train_epoch is that loop."""
    from dgstudy.training_fast import FoldData

    ds, feats = synthetic
    cfg = small_config(batch_size=2, **kw)
    reduced = cfg.train_resolution == "reduced"
    # the same products on the same values: equal bits; the layer norm's mean and variance are
    # reduced over the (h, w, C) layout in another order (a float32 ulp of log p ~ 1e-6 here)
    tol = 1e-5 if cfg.nonlinearity == "softplus_layernorm" else 0.0
    train, val, _ = datasets.fold_split(len(ds), 0, 3, 0)
    cb_fn = CenterBias.fit(ds, images=train).log_density_for_size
    norm = training.feature_normalization(feats, train)
    models, opts = {}, {}
    for k in ("plain", "fast"):
        torch.manual_seed(3)
        models[k] = training.build_model(cfg, 9)
        models[k].set_feature_normalization(*norm)
        opts[k] = torch.optim.Adam(models[k].parameters(), lr=cfg.lr)
    data = FoldData(feats, ds, np.concatenate([train, val]), models["fast"].feature_mean,
                    models["fast"].feature_std, cb_fn, grid_of=models["fast"].finalizer.reduced_size
                    if reduced else None, batch_size=cfg.batch_size)
    batches = training.make_batches(train, ds.sizes, cfg.batch_size, np.random.default_rng(0))[:8]
    assert len(batches) >= 3
    per_batch = data.n_fixations(np.concatenate(batches)) / len(batches)
    for j, batch in enumerate(batches):
        flip = bool(cfg.flip and (1 + j) % 2)
        lls = {"plain": plain_batch(models["plain"], feats, ds, batch, cb_fn, reduced, flip),
               "fast": data.log_likelihoods(models["fast"], batch, reduced, flip=flip)[0]}
        losses = {}
        for k, ll in lls.items():
            l1 = sum(w.abs().sum() for w in training.l1_weights(models[k], cfg.l1_layers))
            losses[k] = -ll.sum() / (training.LN2 * per_batch) + cfg.l1 * l1
            opts[k].zero_grad()
            losses[k].backward()
            opts[k].step()
        diff = (lls["fast"] - lls["plain"]).abs().max().item() / training.LN2
        assert diff <= tol, (j, diff)
        assert abs(losses["fast"].item() - losses["plain"].item()) <= tol, j
    # the library's epoch is the loop above: the same parameters after it
    torch.manual_seed(3)
    again = training.build_model(cfg, 9)
    again.set_feature_normalization(*norm)
    training.train_epoch(again, torch.optim.Adam(again.parameters(), lr=cfg.lr), data, batches, cfg, 1)
    for k, v in again.state_dict().items():
        torch.testing.assert_close(v, models["fast"].state_dict()[k], rtol=0, atol=0)


class MixedSizes:
    """Two image sizes, fixation counts varying from 1 to 30 per image."""

    def __init__(self, seed=0):
        rng = np.random.default_rng(seed)
        self.name = "mixed"
        self.sizes = np.array([(48, 64)] * 7 + [(32, 40)] * 4)
        self._fix = []
        for (h, w), n in zip(self.sizes, rng.integers(1, 31, len(self.sizes))):
            self._fix.append(pd.DataFrame({"x": rng.uniform(0, w, n), "y": rng.uniform(0, h, n)}))

    def __len__(self):
        return len(self.sizes)

    def fixations_of(self, i):
        return self._fix[i]


class SumOfGradients:
    """An 'optimiser' that leaves the parameters alone and adds up the gradient of every step."""

    def __init__(self, params):
        self.params = [p for p in params if p.requires_grad]
        self.total = [torch.zeros_like(p) for p in self.params]
        self.param_groups = [{"lr": 0.0}]

    def zero_grad(self, set_to_none=True):
        for p in self.params:
            p.grad = None

    def step(self):
        for t, p in zip(self.total, self.params):
            if p.grad is not None:
                t += p.grad


def test_every_fixation_of_an_epoch_weighs_the_same():
    """Mixed image sizes, partial batches, 1 to 30 fixations per image: the gradient summed over
    the epoch's steps is len(batches) times the gradient of the mean NLL over all its fixations
    (issue 23, item 5); the per-batch mean it replaces is not."""
    from dgstudy.training_fast import FoldData

    ds = MixedSizes()
    rng = np.random.default_rng(1)
    feats = {i: rng.normal(size=(5, h // 4, w // 4)).astype(np.float32) for i, (h, w) in enumerate(ds.sizes)}
    cfg = small_config(batch_size=3, l1=0.0)
    images = np.arange(len(ds))
    torch.manual_seed(0)
    model = training.build_model(cfg, 5)
    model.set_feature_normalization(*training.feature_normalization(feats, images))
    cb_fn = lambda h, w: np.full((h, w), -np.log(h * w))
    data = FoldData(feats, ds, images, model.feature_mean, model.feature_std, cb_fn,
                    grid_of=model.finalizer.reduced_size, batch_size=cfg.batch_size)
    batches = training.make_batches(images, ds.sizes, cfg.batch_size, np.random.default_rng(0))
    assert sorted(len(b) for b in batches) == [1, 1, 3, 3, 3]          # partial batches of both sizes
    opt = SumOfGradients(model.parameters())
    training.train_epoch(model, opt, data, batches, cfg, epoch=2)
    n_all = data.n_fixations(images)
    target = [torch.zeros_like(p) for p in opt.params]        # gradient of the mean NLL over all
    old = [torch.zeros_like(p) for p in opt.params]           # of the sum of per-batch means
    for b in batches:         # one batch at a time: the next batch reuses the feature buffer
        ll = data.log_likelihoods(model, b, reduced=True)[0]
        grads = torch.autograd.grad(-ll.sum() / training.LN2, opt.params)
        for t, o, g in zip(target, old, grads):
            t += g / n_all
            o += g / len(ll)
    for got, want in zip(opt.total, target):     # (atol: the centre-bias weight's gradient is 0
        torch.testing.assert_close(got, len(batches) * want, rtol=1e-5, atol=1e-6)  # but for rounding)
    assert not torch.allclose(old[0], len(batches) * target[0], rtol=1e-2)


def test_val_ig_compares_like_with_like(synthetic):
    """A fold trained on the reduced grid: its validation LL and IG over the centre bias scored on
    the reduced grid (the centre bias's probability of each cell) agree with the full-resolution
    ones within 0.01 bit/fix (issue 23, item 4)."""
    from dgstudy.training_fast import FoldData

    ds, feats = synthetic
    cfg = small_config(max_epochs=15)
    train, val, _ = datasets.fold_split(len(ds), 0, 3, 0)
    cb_fn = CenterBias.fit(ds, images=train).log_density_for_size
    model, log, _ = training.train_fold(cfg, feats, ds, train, val, cb_fn, seed=0, progress=False)
    best = log.loc[log["val_LL"].idxmax()]
    on = {}
    for name, grid_of in (("reduced", model.finalizer.reduced_size), ("full", None)):
        data = FoldData(feats, ds, val, model.feature_mean, model.feature_std, cb_fn, grid_of=grid_of)
        ll = training.mean_log_likelihood(model, data, val, cfg.batch_size)
        on[name] = (ll, ll - data.center_bias_log_likelihood(val))
    assert on["reduced"][0] == pytest.approx(best["val_LL"], abs=1e-9)      # what the log holds
    assert on["reduced"][1] == pytest.approx(best["val_ig"], abs=1e-9)
    assert best["val_ig"] > 0.3
    assert abs(on["reduced"][0] - on["full"][0]) <= 0.01, on
    assert abs(on["reduced"][1] - on["full"][1]) <= 0.01, on
