"""Cross-validated training of the DeepGaze readout on stored features.

What happens (``train_crossval``)
---------------------------------
1. The dataset is loaded, and the features of every image are read **once** from the
   :class:`dgstudy.features.FeatureStore` into memory (``store.stacked``: float32, all layers on
   one grid; the backbone is never run here). OSIE with 2560 channels on 19 x 25 takes 3.4 GB.
2. For each of ``cfg.folds`` image-wise folds (``dgstudy.datasets.fold_split``: test fold k,
   validation fold k+1, training = the rest):

   * the centre-bias input is ``CenterBias.fit(dataset, images=train)`` (training images only);
   * the per-channel feature standardisation is computed from the training images only;
   * the readout, blur width and centre-bias weight are fitted by Adam on the negative
     log-likelihood of the training fixations in **bits per fixation** (every fixation weighs the
     same) plus ``l1 * sum(|w|)`` over the readout's convolution weights;
   * by default (``train_resolution='reduced'``) the likelihood is computed on the model's
     reduced grid (``DeepGazeII.forward(..., reduced=True)``: the density over cells of about
     f x f pixels, before the final bilinear upsampling), about f^2 times cheaper than the
     full-resolution softmax and equal to it up to the map's variation within a cell;
     ``'full'`` fits the exact full-resolution density. Evaluation always uses the full output;
   * after every epoch the validation log-likelihood is computed; training stops after
     ``patience`` epochs without improvement (or at ``max_epochs``) and the best epoch's weights
     are kept;
   * a readout whose output is constant after the first epoch or at its best epoch (a dead
     ReLU layer: no gradient, the density is the centre bias alone) is abandoned and the fold
     restarts from the next seed (:func:`train_fold`); a fold whose best validation IG is not
     above its centre bias is warned about and listed in ``metrics.json``.

   So no test image influences its own prediction: not the readout, not early stopping, not the
   centre bias, not the feature standardisation.
3. Each finished fold writes ``fold_XX/{model.pt, center_bias.json, log.csv, config.json}``
   atomically; ``config.json`` is written last and marks the fold as done, so an interrupted run
   resumes at the next unfinished fold.

Choices not fixed by the paper (recorded in every ``config.json``)
------------------------------------------------------------------
The paper (arXiv 1610.01563) does not give the settings below in a form we can reuse (it used a
different optimiser setup and SALICON pre-training, which this study skips). Ours: Adam,
``lr=0.005`` (betas 0.9/0.999), batches of ``batch_size=8`` images of one size, ``l1=1e-4`` per unit
of ``sum |w|`` added to the loss in bits/fixation, ``patience=5`` epochs, initial blur sigma
8 px of the reduced grid (32 stimulus px at ``saliency_map_factor=4``), centre-bias weight 1.

Log-likelihoods reported (tqdm, ``log.csv`` columns ``train_LL``, ``val_LL``) are in bits per
fixation **relative to a uniform density** over the image's pixels: ``mean(log2 p(fix)) +
log2(H * W)`` (the train value is the running mean over the epoch's batches, the validation value
is computed after the epoch). ``train_ig`` / ``val_ig`` are the same minus the log-likelihood of
the fold's (training-image) centre-bias input, i.e. information gain over it. Other columns:
``l1`` (sum |w|), ``sigma``, ``center_bias_weight``, ``seconds``.

Results layout: ``results/<run>/config.json`` (the ``TrainConfig``), ``fold_XX/...`` as above,
``metrics.json`` and ``per_image.csv`` from :func:`evaluate_run`.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from . import datasets as _datasets
from . import profiles
from .io import DataError, atomic_path, write_json
from .model import DeepGazeII

LN2 = math.log(2.0)


# -- configuration -----------------------------------------------------------------------
@dataclass
class TrainConfig:
    """Everything that determines a cross-validated training run."""

    dataset: str = "osie"
    dataset_options: dict = field(default_factory=dict)
    n_images: int | None = None
    backbone: str = "efficientnet_lite0"
    layers: list[str] | None = None          # None = every layer in the feature store
    downsample: int = 2
    feature_path: str | None = None          # None = dgstudy.features.default_store_path(...)
    feature_dtype: str = "float16"
    readout: str = "deepgaze2"               # or 'deepgaze1' (linear readout)
    nonlinearity: str = "relu"               # or 'softplus_layernorm'
    center_bias: str = "learned"             # or 'fixed', 'none'
    folds: int = 10
    seed: int = 0
    max_epochs: int = 60
    lr: float = 0.005
    batch_size: int = 8
    l1: float = 1e-4
    patience: int = 5
    device: str = "cpu"
    run: str | None = None                   # results/<run>/; None = profiles.run_name(dataset, ...)
    blur_sigma: float = 8.0                  # initial blur width, px of the reduced grid
    saliency_map_factor: int = 4
    train_resolution: str = "reduced"        # likelihood used for fitting: 'reduced' grid or 'full'
    num_threads: int | None = None           # torch intra-op threads while training (None: as is)

    def __post_init__(self):
        if not self.run:
            self.run = profiles.run_name(self.dataset, self.backbone, self.readout)
        if self.device == "auto":
            self.device = "cuda" if torch.cuda.is_available() else "cpu"
        if self.layers is not None:
            self.layers = list(self.layers)

    @classmethod
    def from_profile(cls, params: dict, **overrides) -> "TrainConfig":
        """Build from a profile dict (``dgstudy.profiles.load``); unknown keys are ignored."""
        params = {**params, **{k: v for k, v in overrides.items() if v is not None}}
        if not params.get("run") and params.get("profile") and params.get("backbone"):
            params["run"] = profiles.resolve(params)["run"]
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in params.items() if k in names and v is not None}
        return cls(**kw)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


# -- data ------------------------------------------------------------------------------------
def load_dataset(cfg: TrainConfig) -> _datasets.FixationDataset:
    return _datasets.load(cfg.dataset, n_images=cfg.n_images, **(cfg.dataset_options or {}))


def feature_path(cfg: TrainConfig, dataset) -> Path:
    if cfg.feature_path:
        return Path(cfg.feature_path)
    from . import features
    return Path(features.default_store_path(dataset, cfg.backbone, cfg.downsample, layers=cfg.layers,
                                            dtype=cfg.feature_dtype))


def open_store(cfg: TrainConfig, dataset):
    """The run's FeatureStore, checked against the dataset (DataError naming the file if not)."""
    from .features import FeatureStore
    path = feature_path(cfg, dataset)
    if not Path(path).exists():
        raise DataError(f"{path}: feature store is missing; run dgstudy.features.extract(dataset, "
                        f"'{cfg.backbone}', downsample={cfg.downsample}) first")
    store = FeatureStore(path)
    checksum = store.attrs.get("dataset_checksum")
    if checksum and dataset.checksum and checksum != dataset.checksum:
        raise DataError(f"{path}: features were extracted for another dataset "
                        f"(checksum {checksum[:12]}, this dataset {dataset.checksum[:12]})")
    missing = [i for i in range(len(dataset)) if not store.has(i)]
    if missing:
        raise DataError(f"{path}: no features for {len(missing)} images (first: {missing[:5]}); "
                        "the extraction did not finish")
    return store


def read_features(store, images, layers=None, dtype=np.float32, progress=True) -> dict[int, np.ndarray]:
    """{image: (C, h, w) array} for ``images``: ``store.stacked`` (float32, every layer on one
    grid), i.e. exactly the input the predictions see. (``dtype=np.float16`` halves the memory
    but rounds the resized layers once more.)"""
    out = {}
    for i in tqdm(list(images), desc="reading features", disable=not progress, leave=False):
        out[int(i)] = np.asarray(store.stacked(int(i), layers), dtype=dtype)
    return out


def fixation_pixels(dataset, i: int, grid: tuple[int, int] | None = None) -> np.ndarray:
    """Flat index ``row * w + col`` of the pixel of every fixation of image ``i`` (order of
    ``fixations_of``). With ``grid=(h, w)``: the cell of an h x w grid laid over the image
    (row = floor(y * h / H), col = floor(x * w / W))."""
    fx = dataset.fixations_of(i)
    H, W = (int(v) for v in dataset.sizes[i])
    h, w = (H, W) if grid is None else grid
    col = np.clip(np.floor(fx["x"].to_numpy() * (w / W)).astype(np.int64), 0, w - 1)
    row = np.clip(np.floor(fx["y"].to_numpy() * (h / H)).astype(np.int64), 0, h - 1)
    return row * w + col


def fit_center_bias(dataset, images):
    """The centre-bias model of the training images (``dgstudy.baselines.CenterBias``)."""
    from .baselines import CenterBias
    return CenterBias.fit(dataset, images=np.asarray(images))


def center_bias_from_dict(d: dict):
    """Rebuild a saved centre bias (``dgstudy.baselines.CenterBias.from_dict``)."""
    from .baselines import CenterBias
    return CenterBias.from_dict(d)


def make_batches(images, sizes, batch_size: int, rng: np.random.Generator | None) -> list[np.ndarray]:
    """Split ``images`` into batches of one image size each; shuffled if ``rng`` is given."""
    images = np.asarray(images, dtype=np.int64)
    if rng is not None:
        images = images[rng.permutation(len(images))]
    groups: dict[tuple, list[int]] = {}
    for i in images:
        groups.setdefault(tuple(int(v) for v in sizes[i]), []).append(int(i))
    batches = [np.array(g[k:k + batch_size]) for g in groups.values()
               for k in range(0, len(g), batch_size)]
    if rng is not None:
        batches = [batches[j] for j in rng.permutation(len(batches))]
    return batches


class _Batcher:
    """Turns a list of images into tensors: features, log centre bias, fixation indices."""

    def __init__(self, features: Mapping[int, np.ndarray], dataset, log_cb_for_size: Callable,
                 device: str, grid_of: Callable | None = None):
        self.features, self.dataset, self.device = features, dataset, device
        self.grid_of = grid_of            # (H, W) -> grid the likelihood is computed on (None: pixels)
        self.log_cb_for_size = log_cb_for_size
        self._cb: dict[tuple, torch.Tensor] = {}
        self._fix: dict[int, np.ndarray] = {}

    def center_bias(self, size) -> torch.Tensor:
        if size not in self._cb:
            cb = np.asarray(self.log_cb_for_size(*size), dtype=np.float32)
            if cb.shape != size:
                raise ValueError(f"centre bias for size {size} has shape {cb.shape}")
            self._cb[size] = torch.from_numpy(cb).to(self.device)
        return self._cb[size]

    def fixations(self, i: int, grid=None) -> np.ndarray:
        if (i, grid) not in self._fix:
            self._fix[i, grid] = fixation_pixels(self.dataset, i, grid)
        return self._fix[i, grid]

    def __call__(self, batch):
        size = tuple(int(v) for v in self.dataset.sizes[batch[0]])
        x = torch.from_numpy(np.stack([self.features[int(i)] for i in batch])).to(self.device, torch.float32)
        cb = self.center_bias(size).expand(len(batch), *size)
        grid = None if self.grid_of is None else self.grid_of(*size)
        fix = [self.fixations(int(i), grid) for i in batch]
        b_idx = torch.from_numpy(np.repeat(np.arange(len(batch)), [len(f) for f in fix])).to(self.device)
        p_idx = torch.from_numpy(np.concatenate(fix)).to(self.device)
        return x, cb, b_idx, p_idx, (size if grid is None else grid)


def fixation_log_likelihoods(model, x, cb, b_idx, p_idx, reduced: bool = False) -> torch.Tensor:
    """Natural-log probability of each fixation's pixel (or reduced-grid cell) under the model."""
    logd = model(x, cb, reduced=reduced)
    return logd.reshape(logd.shape[0], -1)[b_idx, p_idx]


def feature_normalization(features: Mapping[int, np.ndarray], images) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std over all positions of ``images`` (float64 accumulation)."""
    c = next(iter(features.values())).shape[0]
    s, s2, n = np.zeros(c), np.zeros(c), 0
    for i in images:
        f = features[int(i)].astype(np.float64).reshape(c, -1)
        s += f.sum(1)
        s2 += (f ** 2).sum(1)
        n += f.shape[1]
    mean = s / n
    return mean, np.sqrt(np.maximum(s2 / n - mean ** 2, 0.0))


def build_model(cfg: TrainConfig, in_channels: int) -> DeepGazeII:
    return DeepGazeII(in_channels, readout=cfg.readout, nonlinearity=cfg.nonlinearity,
                      center_bias=cfg.center_bias, blur_sigma=cfg.blur_sigma,
                      saliency_map_factor=cfg.saliency_map_factor)


def center_bias_log_likelihood(batcher: _Batcher, images) -> float:
    """Mean log-likelihood of the fixations on ``images`` under the centre-bias input alone
    (bits/fixation relative to uniform): the reference for the IG columns of ``log.csv``."""
    total, n = 0.0, 0
    for i in images:
        size = tuple(int(v) for v in batcher.dataset.sizes[i])
        pix = batcher.fixations(int(i))
        cb = batcher.center_bias(size).reshape(-1)[torch.from_numpy(pix).to(batcher.device)]
        total += float(cb.double().sum()) / LN2 + len(pix) * math.log2(size[0] * size[1])
        n += len(pix)
    return total / max(n, 1)


@torch.no_grad()
def mean_log_likelihood(model, batcher: _Batcher, images, batch_size: int) -> float:
    """Mean log-likelihood of the fixations on ``images``, bits/fixation relative to uniform
    (over the batcher's grid: pixels, or reduced-grid cells)."""
    total, n = 0.0, 0
    model.eval()
    for batch in make_batches(images, batcher.dataset.sizes, batch_size, None):
        x, cb, b_idx, p_idx, size = batcher(batch)
        ll = fixation_log_likelihoods(model, x, cb, b_idx, p_idx, batcher.grid_of is not None).double() / LN2
        total += float(ll.sum()) + len(ll) * math.log2(size[0] * size[1])
        n += len(ll)
    return total / max(n, 1)


# -- one fold --------------------------------------------------------------------------------
MAX_ATTEMPTS = 5          # initialisations tried before a fold with a dead readout is an error
RESTART_SEED_STEP = 10007  # attempt a uses seed + a * RESTART_SEED_STEP


class DeadReadout(RuntimeError):
    """The readout's output is the same at every position of every image: no gradient reaches it."""


@torch.no_grad()
def readout_is_constant(model: DeepGazeII, features: Mapping[int, np.ndarray], images,
                        device: str = "cpu", max_images: int = 16) -> bool:
    """True if the readout map (before blur and centre bias) takes one value on all of
    ``images[:max_images]``: e.g. every unit of a ReLU layer is zero everywhere, so the output is
    the last bias, the density is the centre bias alone and no gradient flows."""
    lo, hi = math.inf, -math.inf
    for i in list(images)[:max_images]:
        x = torch.from_numpy(np.asarray(features[int(i)], dtype=np.float32))[None].to(device)
        out = model.saliency_logits(x)
        lo, hi = min(lo, float(out.min())), max(hi, float(out.max()))
    return hi - lo <= 1e-7 * max(1.0, abs(hi))


def train_fold(cfg: TrainConfig, features: Mapping[int, np.ndarray], dataset, train, val,
               log_cb_for_size: Callable, seed: int, progress: bool = True, desc: str = "fold"
               ) -> tuple[DeepGazeII, pd.DataFrame, dict]:
    """Fit one model on ``train``, early-stopped on ``val``; returns (best model, per-epoch log,
    attempts record).

    A readout that is constant after the first epoch, or whose best state is constant
    (:func:`readout_is_constant`: a dead ReLU layer), is thrown away and the fold starts again
    from the next seed (``seed + a * RESTART_SEED_STEP`` for attempt ``a``), at most
    ``MAX_ATTEMPTS`` times (then :class:`DeadReadout`). The record says which seed was used and
    which were abandoned: ``{"seed": used, "dead_seeds": [...]}``.
    """
    dead = []
    for attempt in range(MAX_ATTEMPTS):
        s = seed + attempt * RESTART_SEED_STEP
        try:
            model, log = _fit_fold(cfg, features, dataset, train, val, log_cb_for_size, s, progress,
                                   desc if not attempt else f"{desc} (restart {attempt})")
            return model, log, {"seed": s, "dead_seeds": dead}
        except DeadReadout as e:
            warnings.warn(f"{desc}: {e}; restarting from seed {seed + (attempt + 1) * RESTART_SEED_STEP}")
            dead.append(s)
    raise DeadReadout(f"{desc}: the readout was dead for every one of seeds {dead}")


def _fit_fold(cfg, features, dataset, train, val, log_cb_for_size, seed, progress, desc):
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    in_channels = next(iter(features.values())).shape[0]
    model = build_model(cfg, in_channels).to(cfg.device)
    model.set_feature_normalization(*feature_normalization(features, train))
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
    if cfg.train_resolution not in ("reduced", "full"):
        raise ValueError(f"train_resolution must be 'reduced' or 'full', got {cfg.train_resolution!r}")
    reduced = cfg.train_resolution == "reduced"
    batcher = _Batcher(features, dataset, log_cb_for_size, cfg.device,
                       grid_of=model.finalizer.reduced_size if reduced else None)

    cb_train = center_bias_log_likelihood(batcher, train)
    cb_val = center_bias_log_likelihood(batcher, val)
    rows, best, best_state, waited = [], -np.inf, None, 0
    bar = tqdm(range(1, cfg.max_epochs + 1), desc=desc, disable=not progress, leave=False)
    for epoch in bar:
        t0 = time.perf_counter()
        model.train()
        tot_ll, tot_n = 0.0, 0
        for batch in make_batches(train, dataset.sizes, cfg.batch_size, rng):
            x, cb, b_idx, p_idx, size = batcher(batch)
            ll = fixation_log_likelihoods(model, x, cb, b_idx, p_idx, reduced)
            nll_bits = -ll.mean() / LN2
            l1 = sum(w.abs().sum() for w in model.readout_weights())
            loss = nll_bits + cfg.l1 * l1
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            tot_ll += float(ll.detach().double().sum()) / LN2 + len(ll) * math.log2(size[0] * size[1])
            tot_n += len(ll)
        if epoch == 1 and readout_is_constant(model, features, train, cfg.device):
            bar.close()
            raise DeadReadout(f"seed {seed}: the readout output is constant after the first epoch")
        val_ll = mean_log_likelihood(model, batcher, val, cfg.batch_size)
        train_ll = tot_ll / max(tot_n, 1)
        rows.append(dict(epoch=epoch, train_LL=train_ll, val_LL=val_ll,
                         train_ig=train_ll - cb_train, val_ig=val_ll - cb_val,
                         l1=float(l1.detach()), sigma=float(model.blur.sigma.detach()),
                         center_bias_weight=float(model.center_bias.weight.detach()),
                         seconds=time.perf_counter() - t0))
        bar.set_postfix(train_LL=f"{train_ll:.3f}", val_LL=f"{val_ll:.3f}", val_ig=f"{val_ll - cb_val:.3f}")
        if val_ll > best:
            best, best_state, waited = val_ll, copy.deepcopy(model.state_dict()), 0
        else:
            waited += 1
            if waited >= cfg.patience:
                break
    bar.close()
    model.load_state_dict(best_state)
    model.eval()
    if readout_is_constant(model, features, train, cfg.device):
        raise DeadReadout(f"seed {seed}: the best epoch's readout output is constant")
    return model, pd.DataFrame(rows)


# -- cross-validation --------------------------------------------------------------------------
def fold_dir(run_dir: Path, fold: int) -> Path:
    return Path(run_dir) / f"fold_{fold:02d}"


def fold_done(d: Path) -> bool:
    return (d / "config.json").exists() and (d / "model.pt").exists()


RUNTIME_KEYS = ("device", "num_threads")   # settings that do not change what a run computes


def _check_run_config(run_dir: Path, cfg: TrainConfig) -> None:
    path = run_dir / "config.json"
    new = cfg.to_dict()
    if path.exists():
        old = json.loads(path.read_text())
        diff = {k for k in (set(old) | set(new)) - set(RUNTIME_KEYS) if old.get(k) != new.get(k)}
        if diff:
            raise ValueError(f"{path}: this run was started with different settings ({sorted(diff)}); "
                             "choose another run name or delete the folder")
    else:
        write_json(path, new)


def train_crossval(cfg: TrainConfig, folds=None, *, dataset=None, features=None,
                   progress: bool = True) -> Path:
    """Train the cross-validation folds of ``cfg`` (default all) and return ``results/<run>/``.

    Folds already finished (``fold_XX/config.json`` present) are skipped, so an interrupted run
    resumes at the next unfinished fold. ``dataset`` and ``features`` ({image: (C, h, w) array})
    may be given directly (tests, notebooks); by default they come from ``cfg``.
    ``cfg.num_threads`` sets torch's intra-op threads for the duration (restored after): the
    tensors are small, and on a busy 2-core machine one thread was ~5x faster than two.
    The feature store is checked against every finished fold (:func:`check_trained_on`): a run
    whose folds were trained on another network's features raises DataError, never resumes.
    """
    from .paths import results_dir
    run_dir = results_dir() / cfg.run
    run_dir.mkdir(parents=True, exist_ok=True)
    _check_run_config(run_dir, cfg)
    folds = range(cfg.folds) if folds is None else [int(f) for f in folds]
    store = None
    if features is None:
        dataset = load_dataset(cfg) if dataset is None else dataset
        store = open_store(cfg, dataset)
        check_trained_on([fold_dir(run_dir, f) for f in range(cfg.folds)], store)
    todo = [f for f in folds if not fold_done(fold_dir(run_dir, f))]
    if not todo:
        return run_dir
    threads = torch.get_num_threads()
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    try:
        return _train_folds(cfg, run_dir, todo, dataset, features, store, progress)
    finally:
        torch.set_num_threads(threads)


def check_trained_on(fold_dirs, store) -> None:
    """DataError unless every finished fold among ``fold_dirs`` was trained on features of the
    network that made ``store`` (``features.NETWORK_KEYS``: backbone, architecture, weights);
    folds trained before dgstudy 0.2 recorded no architecture and fail too."""
    from .features import NETWORK_KEYS

    for d in fold_dirs:
        if not fold_done(d):
            continue
        rec = json.loads((Path(d) / "config.json").read_text()).get("store_attrs")
        if rec is None:        # trained on features handed in directly (tests, notebooks)
            continue
        diff = [f"{k}: fold has {rec.get(k)!r}, store has {store.attrs.get(k)!r}"
                for k in NETWORK_KEYS if rec.get(k) != store.attrs.get(k)]
        if diff:
            raise DataError(f"{d}: this fold was trained on features of another network than the one "
                            f"that wrote {store.path} ({'; '.join(diff)}); delete the run folder "
                            f"{Path(d).parent} and train again")


def _train_folds(cfg, run_dir, todo, dataset, features, store, progress) -> Path:
    dataset = load_dataset(cfg) if dataset is None else dataset
    store_info = {}
    if store is not None:
        store_info = {"feature_path": str(store.path),
                      "store_attrs": {k: v for k, v in store.attrs.items()
                                      if isinstance(v, (str, int, float, list, type(None)))}}
        features = read_features(store, range(len(dataset)), cfg.layers, progress=progress)
    for fold in todo:
        t0 = time.perf_counter()
        train, val, test = _datasets.fold_split(len(dataset), fold, cfg.folds, cfg.seed)
        cb = fit_center_bias(dataset, train)
        model, log, attempts = train_fold(cfg, features, dataset, train, val, cb.log_density_for_size,
                                          seed=cfg.seed * 1000 + fold, progress=progress,
                                          desc=f"{cfg.run} fold {fold}/{cfg.folds}")
        d = fold_dir(run_dir, fold)
        d.mkdir(parents=True, exist_ok=True)
        with atomic_path(d / "model.pt") as tmp:
            torch.save({"hparams": model.hparams, "state_dict": model.state_dict()}, tmp)
        write_json(d / "center_bias.json", cb.to_dict())
        with atomic_path(d / "log.csv") as tmp:
            log.to_csv(tmp, index=False)
        best = log.loc[log["val_LL"].idxmax()]
        if not best["val_ig"] > 0:
            warnings.warn(f"{d}: the fold's best validation IG over its centre bias is "
                          f"{best['val_ig']:.4f} bit/fix (not above the centre bias); metrics.json "
                          "lists it under folds_not_above_center_bias")
        write_json(d / "config.json", {
            "fold": fold, "train_config": cfg.to_dict(),
            "train_images": train, "val_images": val, "test_images": test,
            "dataset_checksum": dataset.checksum, "n_images": len(dataset),
            "best_epoch": int(best["epoch"]), "best_val_LL": float(best["val_LL"]),
            "best_val_ig": float(best["val_ig"]), "seed": attempts["seed"],
            "dead_seeds": attempts["dead_seeds"],
            "epochs_run": int(len(log)), "sigma": float(model.blur.sigma.detach()),
            "center_bias_weight": float(model.center_bias.weight.detach()),
            "seconds": time.perf_counter() - t0, "torch": torch.__version__, **store_info,
            "optimizer": {"name": "Adam", "lr": cfg.lr, "betas": [0.9, 0.999]},
            "loss": "mean NLL in bits/fixation + l1 * sum|readout conv weights|",
        })
    return run_dir


# -- loading and predicting ---------------------------------------------------------------------
def load_fold(d) -> tuple[DeepGazeII, TrainConfig, object]:
    """(model in eval mode, its TrainConfig, its training CenterBias) from ``fold_XX/``."""
    d = Path(d)
    if not fold_done(d):
        raise DataError(f"{d}: fold is not finished (config.json or model.pt missing)")
    info = json.loads((d / "config.json").read_text())
    saved = torch.load(d / "model.pt", map_location="cpu", weights_only=True)
    model = DeepGazeII(**saved["hparams"])
    model.load_state_dict(saved["state_dict"])
    model.eval()
    cb = center_bias_from_dict(json.loads((d / "center_bias.json").read_text()))
    return model, TrainConfig.from_dict(info["train_config"]), cb


class CrossValModel:
    """The cross-validated prediction of a run: image ``i`` is predicted by the fold that held it
    out (its model, with the centre bias fitted on that fold's training images).

    ``log_density(i) -> (H, W)`` float64 natural-log density; ``.dataset``; ``.fold_of[i]`` (-1
    for images of unfinished folds, only possible with ``allow_partial=True``); ``.images``
    (the images that have a prediction).
    """

    def __init__(self, run_dir, dataset=None, features=None, allow_partial: bool = False):
        self.run_dir = Path(run_dir)
        cfg_path = self.run_dir / "config.json"
        if not cfg_path.exists():
            raise DataError(f"{cfg_path}: not a training run (config.json missing)")
        self.cfg = TrainConfig.from_dict(json.loads(cfg_path.read_text()))
        self.dataset = load_dataset(self.cfg) if dataset is None else dataset
        self.fold_of = np.full(len(self.dataset), -1, dtype=np.int64)
        self.folds = {}
        self.missing_folds = [f for f in range(self.cfg.folds) if not fold_done(fold_dir(self.run_dir, f))]
        if self.missing_folds and not allow_partial:
            raise DataError(f"{self.run_dir}: folds {self.missing_folds} are not finished; "
                            "resume train_crossval (or pass allow_partial=True)")
        for f in range(self.cfg.folds):
            if f in self.missing_folds:
                continue
            d = fold_dir(self.run_dir, f)
            model, _, cb = load_fold(d)
            info = json.loads((d / "config.json").read_text())
            if info.get("n_images") != len(self.dataset):
                raise DataError(f"{d / 'config.json'}: trained on {info.get('n_images')} images, "
                                f"dataset has {len(self.dataset)}")
            self.folds[f] = (model, cb)
            self.fold_of[np.asarray(info["test_images"], dtype=np.int64)] = f
        self.images = np.flatnonzero(self.fold_of >= 0)
        self._features = features
        self._store = None
        self._cb_cache: dict[tuple, np.ndarray] = {}

    def features(self, i: int) -> np.ndarray:
        if self._features is not None:
            return self._features[i]
        if self._store is None:
            store = open_store(self.cfg, self.dataset)
            check_trained_on([fold_dir(self.run_dir, f) for f in self.folds], store)
            self._store = store
        return self._store.stacked(i, self.cfg.layers)

    def log_center_bias(self, fold: int, size) -> np.ndarray:
        key = (fold, *size)
        if key not in self._cb_cache:
            self._cb_cache[key] = np.asarray(self.folds[fold][1].log_density_for_size(*size), np.float32)
        return self._cb_cache[key]

    def log_density(self, i: int) -> np.ndarray:
        """Image ``i``'s density from the fold that held it out."""
        fold = int(self.fold_of[i])
        if fold < 0:
            raise KeyError(f"image {i} is in no test fold of {self.run_dir}")
        return self.fold_log_density(fold, i)

    @torch.no_grad()
    def fold_log_density(self, fold: int, i: int) -> np.ndarray:
        """Image ``i``'s (H, W) log-density under fold ``fold``'s model and training centre bias
        (e.g. a validation image of that fold, for choices made on validation data)."""
        model = self.folds[fold][0]
        size = tuple(int(v) for v in self.dataset.sizes[i])
        x = torch.from_numpy(np.asarray(self.features(i), dtype=np.float32))[None]
        cb = torch.from_numpy(self.log_center_bias(fold, size))[None]
        return model(x, cb)[0].double().numpy()

    def fold_images(self, fold: int, which: str) -> np.ndarray:
        """Fold ``fold``'s ``'train'``, ``'val'`` or ``'test'`` images (from its config.json)."""
        info = json.loads((fold_dir(self.run_dir, fold) / "config.json").read_text())
        return np.asarray(info[f"{which}_images"], dtype=np.int64)

    __call__ = log_density


def per_fold_summary(per_image: pd.DataFrame, fold_of: np.ndarray) -> pd.DataFrame:
    """Per-fold fixation-weighted means of the per-image per-fixation metrics (LL, IG, ...)."""
    df = per_image.copy()
    df["fold"] = fold_of[df["image"].to_numpy()]
    cols = [c for c in ("LL", "IG", "IG_gold", "LL_baseline") if c in df.columns]
    rows = []
    for f, g in df.groupby("fold"):
        w = g["n_fix"].to_numpy(dtype=np.float64)
        row = {"fold": int(f), "n_images": len(g), "n_fix": int(w.sum())}
        for c in cols:
            row[c] = float(np.sum(g[c].to_numpy() * w) / w.sum())
        if "IG" in row and "IG_gold" in row and row["IG_gold"] != 0:
            row["explained_IG"] = row["IG"] / row["IG_gold"]
        rows.append(row)
    return pd.DataFrame(rows)


LOW_FOLD_FRACTION = 0.5   # a fold whose test IG is below this fraction of the median fold is flagged


def fold_health(run_dir, folds: pd.DataFrame) -> dict:
    """What could have gone wrong in a run's folds, for ``metrics.json``:

    ``folds_not_above_center_bias`` (best validation IG <= 0), ``folds_low_test_ig`` (test IG below
    ``LOW_FOLD_FRACTION`` x the median fold's, or <= 0), ``folds_restarted`` ({fold: abandoned seeds}
    of dead readouts) and ``problems`` (one sentence for each flagged fold; empty if none).
    """
    not_above, restarted = [], {}
    for d in sorted(Path(run_dir).glob("fold_*")):
        if not fold_done(d):
            continue
        info = json.loads((d / "config.json").read_text())
        if "best_val_ig" in info and not info["best_val_ig"] > 0:
            not_above.append(int(info["fold"]))
        if info.get("dead_seeds"):
            restarted[int(info["fold"])] = list(info["dead_seeds"])
    low = []
    if "IG" in folds and len(folds):
        median = float(np.median(folds["IG"]))
        low = [int(r.fold) for r in folds.itertuples() if r.IG <= 0 or r.IG < LOW_FOLD_FRACTION * median]
    problems = [f"fold {f}: best validation IG not above the centre bias" for f in not_above]
    problems += [f"fold {f}: test IG below {LOW_FOLD_FRACTION} x the median fold's" for f in low]
    return {"folds_not_above_center_bias": not_above, "folds_low_test_ig": low,
            "folds_restarted": restarted, "problems": problems}


def evaluate_run(run_dir, *, dataset=None, features=None, baseline=None, gold=None,
                 progress: bool = True, allow_partial: bool = False) -> dict:
    """Evaluate a run's cross-validated predictions; writes ``metrics.json`` and ``per_image.csv``.

    Baseline: the leave-image-out centre bias ``CenterBias.fit(dataset)``; gold standard:
    ``GoldStandard.fit(dataset, baseline)``. ``metrics.json`` holds the overall metrics
    (``dgstudy.metrics.evaluate``) and, per fold, the fixation-weighted test IG over the baseline.
    ``allow_partial=True`` evaluates only the test images of finished folds (``folds_missing``
    in metrics.json says which are not). Flagged folds (:func:`fold_health`) are warned about and
    listed in metrics.json.
    """
    from . import metrics
    from .baselines import CenterBias, GoldStandard
    t0 = time.perf_counter()
    cvm = CrossValModel(run_dir, dataset=dataset, features=features, allow_partial=allow_partial)
    ds = cvm.dataset
    baseline = CenterBias.fit(ds) if baseline is None else baseline
    gold = GoldStandard.fit(ds, baseline) if gold is None else gold
    summary, per_image = metrics.evaluate(cvm.log_density, ds, baseline=baseline, gold=gold,
                                          images=cvm.images, per_image=True, progress=progress)
    per_image = per_image.copy()
    per_image["fold"] = cvm.fold_of[per_image["image"].to_numpy()]
    folds = per_fold_summary(per_image, cvm.fold_of)
    health = fold_health(cvm.run_dir, folds)
    for problem in health["problems"]:
        warnings.warn(f"{run_dir}: {problem}")
    result = {"run": cvm.cfg.run, "config": cvm.cfg.to_dict(), "summary": summary,
              "folds": folds.to_dict(orient="records"), "folds_missing": cvm.missing_folds,
              **health, "seconds": time.perf_counter() - t0}
    run_dir = Path(run_dir)
    write_json(run_dir / "metrics.json", result)
    with atomic_path(run_dir / "per_image.csv") as tmp:
        per_image.to_csv(tmp, index=False)
    return result


def fold_logs(run_dir) -> pd.DataFrame:
    """All folds' ``log.csv`` in one table (column ``fold`` added), for learning curves."""
    frames = []
    for d in sorted(Path(run_dir).glob("fold_*")):
        if (d / "log.csv").exists():
            frames.append(pd.read_csv(d / "log.csv").assign(fold=int(d.name.split("_")[1])))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
