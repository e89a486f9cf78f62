"""Cross-validated maximum-likelihood training of the DeepGaze readout on stored features.

:func:`train_crossval` trains every fold of a :class:`~dgstudy.config.TrainConfig` into
``results/<run>/`` (layout: :mod:`dgstudy.runs`), resuming at the unfinished folds, each one task
(:func:`run_fold`; executed where :mod:`dgstudy.tasks` says: this process, a local Dask cluster or
any Dask cluster); :func:`train_runs` submits the folds of several runs at once (an ablation's
grid); :func:`train_fold` fits one fold. Per fold k (``datasets.fold_split``: test fold k, validation
fold k+1, training the rest) the centre bias, the feature standardisation and the readout see
the training images only, early stopping the validation images only. Loss: NLL in bits per
fixation, every fixation of an epoch weighing the same whatever the batch sizes, plus
``l1 * sum|w|`` over the readout's convolution weights; the features standardised once per fold
and held as :mod:`dgstudy.training_fast` lays them out. Reported log-likelihoods (``log.csv``)
are bits/fixation relative to a uniform density on the grid the model is scored on (reduced-grid
cells or pixels); ``*_ig`` columns relative to the fold's centre bias on that same grid. A dead readout restarts from the next seed; a fold not above its centre bias
is warned about. What happens step by step, and the choices not fixed by the paper:
``docs/training.md``.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import hashlib
import io
import json
import math
import os
import time
import warnings
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from . import datasets, tasks
from .backbones.geometry import GEOMETRY_VERSION
from .baselines import fitted_center_bias
from .config import TrainConfig
from .features import FeatureStore
from .io import atomic_path, file_lock, write_json
from .model import DeepGazeII
from .paths import results_dir
from .rescale import TRAINING_SCALE_KEY, training_pixel_area
from .runs import check_run_config, check_trained_on, fold_dir, fold_done, load_dataset, open_store
from .training_fast import LN2, FoldData, flip_batch  # noqa: F401 (LN2, flip_batch: re-exported)


# -- data ------------------------------------------------------------------------------------
def read_features(store, images, layers=None, dtype=np.float32, progress=True) -> dict[int, np.ndarray]:
    """{image: (C, h, w) array} for ``images``: ``store.stacked`` (float32, every layer on one
    grid), i.e. exactly the input the predictions see. (``dtype=np.float16`` halves the memory
    but rounds the resized layers once more.)"""
    out = {}
    for i in tqdm(list(images), desc="reading features", disable=not progress, leave=False):
        out[int(i)] = np.asarray(store.stacked(int(i), layers), dtype=dtype)
    return out


def fit_center_bias(dataset, images):
    """The centre-bias model of the training images (``dgstudy.baselines.CenterBias``), searched
    once per fold for all the runs that share it (:func:`dgstudy.baselines.fitted_center_bias`)."""
    return fitted_center_bias(dataset, images)


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
                      saliency_map_factor=cfg.saliency_map_factor,
                      readout_channels=cfg.readout_channels)


def l1_weights(model: DeepGazeII, which: str = "all") -> list[torch.Tensor]:
    """The weights under the L1 penalty: every readout conv's (``'all'``) or the first one's
    (``'first'``: with ReLUs between the layers an L1 on every layer can be dodged by scaling one
    layer's weights down and the next one's up)."""
    weights = model.readout_weights()
    return weights[:1] if which == "first" else weights


@torch.no_grad()
def mean_log_likelihood(model, data: FoldData, images, batch_size: int) -> float:
    """Mean log-likelihood of the fixations on ``images``, bits/fixation relative to uniform
    over the grid ``data`` scores on (pixels, or reduced-grid cells), every fixation weighing the
    same; ``data.center_bias_log_likelihood(images)`` is the centre bias's on the same grid."""
    total, n = 0.0, 0
    model.eval()
    for batch in make_batches(images, data.dataset.sizes, batch_size, None):
        ll, grid = data.log_likelihoods(model, batch, reduced=data.grid_of is not None)
        total += float(ll.double().sum()) / LN2 + len(ll) * math.log2(grid[0] * grid[1])
        n += len(ll)
    return total / max(n, 1)


# -- one fold --------------------------------------------------------------------------------
INSTANCE_SEED_STEP = 1_000_003   # instance (init_seed) n starts from seed + n * INSTANCE_SEED_STEP


def fold_seed(cfg: TrainConfig, fold: int) -> int:
    """The seed fold ``fold`` of ``cfg`` starts from: ``seed * 1000 + fold`` for instance 0."""
    return cfg.seed * 1000 + fold + cfg.init_seed * INSTANCE_SEED_STEP


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
               log_cb_for_size: Callable, seed: int, progress: bool = True, desc: str = "fold",
               mirrored: Mapping[int, np.ndarray] | None = None) -> tuple[DeepGazeII, pd.DataFrame, dict]:
    """Fit one model on ``train``, early-stopped on ``val``; returns (best model, per-epoch log,
    attempts record). ``mirrored``: the mirrored images' features (``cfg.flip_source='images'``).

    The features are standardised once (:func:`feature_normalization` of the training images)
    and held with the centre bias and the fixations as a :class:`~dgstudy.training_fast.FoldData`.
    Each batch's loss is the sum of its fixations' NLL (bits) divided by the epoch's mean number
    of fixations per batch, plus the L1 term: over an epoch every fixation weighs the same,
    whatever the sizes of the batches.

    A readout that is constant after the first epoch, or whose best state is constant
    (:func:`readout_is_constant`: a dead ReLU layer), is thrown away and the fold starts again
    from the next seed (``seed + a * RESTART_SEED_STEP`` for attempt ``a``), at most
    ``MAX_ATTEMPTS`` times (then :class:`DeadReadout`). The record says which seed was used and
    which were abandoned: ``{"seed": used, "dead_seeds": [...]}``.
    """
    if cfg.train_resolution not in ("reduced", "full"):
        raise ValueError(f"train_resolution must be 'reduced' or 'full', got {cfg.train_resolution!r}")
    if cfg.flip and cfg.flip_source == "images" and mirrored is None:
        raise ValueError("flip_source='images' needs the mirrored images' features (mirrored=...)")
    fold = {"normalization": feature_normalization(features, train)}   # FoldData: built by attempt 0
    dead = []
    for attempt in range(MAX_ATTEMPTS):
        s = seed + attempt * RESTART_SEED_STEP
        try:
            model, log = _fit_fold(cfg, features, dataset, train, val, log_cb_for_size, s, progress,
                                   desc if not attempt else f"{desc} (restart {attempt})", mirrored, fold)
            return model, log, {"seed": s, "dead_seeds": dead}
        except DeadReadout as e:
            warnings.warn(f"{desc}: {e}; restarting from seed {seed + (attempt + 1) * RESTART_SEED_STEP}")
            dead.append(s)
    raise DeadReadout(f"{desc}: the readout was dead for every one of seeds {dead}")


def train_epoch(model, opt, data: FoldData, batches, cfg: TrainConfig, epoch: int) -> tuple[float, torch.Tensor]:
    """One optimiser step per batch of ``batches`` (one epoch); returns (the epoch's mean
    log-likelihood in bits/fixation relative to uniform on the scoring grid, the last L1 term).

    A batch's loss is the sum of its fixations' NLL (bits) divided by the epoch's mean number of
    fixations per batch, plus ``cfg.l1`` times the L1 term, so the gradient summed over the epoch
    is ``len(batches)`` times that of the mean NLL over all its fixations: every fixation weighs
    the same, whatever the sizes of the batches. With ``cfg.flip`` every other batch is mirrored."""
    model.train()
    reduced = data.grid_of is not None
    per_batch = data.n_fixations(np.concatenate(batches)) / len(batches)
    tot_ll, n = 0.0, 0
    for j, batch in enumerate(batches):
        flip = bool(cfg.flip and (epoch + j) % 2)       # every other batch (batches are shuffled)
        ll, grid = data.log_likelihoods(model, batch, reduced, flip=flip)
        l1 = sum(w.abs().sum() for w in l1_weights(model, cfg.l1_layers))
        loss = -ll.sum() / (LN2 * per_batch) + cfg.l1 * l1
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        tot_ll += float(ll.detach().double().sum()) / LN2 + len(ll) * math.log2(grid[0] * grid[1])
        n += len(ll)
    return tot_ll / max(n, 1), l1


def _fit_fold(cfg, features, dataset, train, val, log_cb_for_size, seed, progress, desc, mirrored, fold):
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    in_channels = next(iter(features.values())).shape[0]
    model = build_model(cfg, in_channels).to(cfg.device)
    model.set_feature_normalization(*fold["normalization"])
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
    schedule = (torch.optim.lr_scheduler.MultiStepLR(opt, cfg.lr_milestones, cfg.lr_gamma)
                if cfg.lr_milestones else None)
    if "data" not in fold:           # the same for every attempt: standardised with the same buffers
        fold["data"] = FoldData(features, dataset, np.concatenate([train, val]), model.feature_mean.cpu(),
                                model.feature_std.cpu(), log_cb_for_size, cfg.device,
                                grid_of=model.finalizer.reduced_size if cfg.train_resolution == "reduced" else None,
                                mirrored=mirrored if cfg.flip and cfg.flip_source == "images" else None,
                                batch_size=cfg.batch_size)
    data = fold["data"]
    cb_train = data.center_bias_log_likelihood(train)      # on the grid the model is scored on
    cb_val = data.center_bias_log_likelihood(val)
    rows, best, best_state, waited = [], -np.inf, None, 0
    bar = tqdm(range(1, cfg.max_epochs + 1), desc=desc, disable=not progress, leave=False)
    for epoch in bar:
        t0 = time.perf_counter()
        batches = make_batches(train, dataset.sizes, cfg.batch_size, rng)
        train_ll, l1 = train_epoch(model, opt, data, batches, cfg, epoch)
        lr = opt.param_groups[0]["lr"]
        if schedule is not None:
            schedule.step()
        if epoch == 1 and readout_is_constant(model, features, train, cfg.device):
            bar.close()
            raise DeadReadout(f"seed {seed}: the readout output is constant after the first epoch")
        val_ll = mean_log_likelihood(model, data, val, cfg.batch_size)
        rows.append(dict(epoch=epoch, train_LL=train_ll, val_LL=val_ll,
                         train_ig=train_ll - cb_train, val_ig=val_ll - cb_val,
                         l1=float(l1.detach()), sigma=float(model.blur.sigma.detach()),
                         center_bias_weight=float(model.center_bias.weight.detach()),
                         **({"lr": lr} if schedule is not None else {}),
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
def train_crossval(cfg: TrainConfig, folds=None, *, dataset=None, features=None,
                   progress: bool = True, scheduler: str | None = None) -> Path:
    """Train the cross-validation folds of ``cfg`` (default all) and return ``results/<run>/``.

    Folds already finished (``fold_XX/config.json`` and ``model.pt`` present) are skipped, so an
    interrupted run resumes at the unfinished folds. ``dataset`` and ``features`` ({image: (C, h, w)
    array}) may be given directly (tests, notebooks); by default they come from ``cfg``. Each
    unfinished fold is one task (:func:`run_fold`), executed where ``scheduler`` says
    (:func:`dgstudy.tasks.resolve_scheduler`: default ``$DGSTUDY_SCHEDULER``, the profile's
    ``scheduler``, a local Dask cluster); the results do not depend on where.
    The feature store is checked against every finished fold (:func:`check_trained_on`): a run
    whose folds were trained on another network's features raises DataError, never resumes.
    """
    return train_runs([cfg], folds, dataset=dataset, features=features, progress=progress,
                      scheduler=scheduler)[0]


def train_runs(cfgs, folds=None, *, dataset=None, features=None, progress: bool = True,
               scheduler: str | None = None, mirrored=None) -> list[Path]:
    """Train the unfinished folds of every run in ``cfgs`` (as :func:`train_crossval` does for one),
    all submitted at once: one task per (run, fold). Returns the runs' folders, in order.
    ``scheduler`` defaults to the first config's ``scheduler`` (then ``$DGSTUDY_SCHEDULER`` wins).
    ``mirrored``: with ``features``, the mirrored images' features for ``flip_source='images'``
    (by default they come from the mirrored store beside the run's)."""
    cfgs = list(cfgs)
    plans = [plan_folds(c, folds, dataset=dataset, features=features, mirrored=mirrored) for c in cfgs]
    jobs = [job for _, run_jobs in plans for job in run_jobs]
    where = tasks.resolve_scheduler(scheduler, cfgs[0].scheduler if cfgs else None)
    for job in jobs:
        job["progress"] = progress and where == "sync"
    try:
        tasks.run(run_fold, jobs, scheduler=where, scatter=("dataset", "features", "mirrored"), desc="trainings",
                  labels=[f"train {j['cfg'].run} fold {j['fold']:02d}" for j in jobs],
                  progress=progress and where != "sync")
    finally:
        _store_features.cache_clear()      # the sync path's features: not kept after the runs
    return [run_dir for run_dir, _ in plans]


def plan_folds(cfg: TrainConfig, folds=None, *, dataset=None, features=None, mirrored=None
               ) -> tuple[Path, list[dict]]:
    """(``results/<run>/``, the :func:`run_fold` arguments of each unfinished fold): the run's
    settings recorded or checked (``check_run_config``), its feature store (and, for
    ``flip_source='images'``, the mirrored images' store) opened and checked once."""
    run_dir = results_dir() / cfg.run
    run_dir.mkdir(parents=True, exist_ok=True)
    check_run_config(run_dir, cfg)
    folds = range(cfg.folds) if folds is None else [int(f) for f in folds]
    todo = [f for f in folds if not fold_done(fold_dir(run_dir, f))]
    store_info = None
    if features is None:
        dataset = load_dataset(cfg) if dataset is None else dataset
        with open_store(cfg, dataset) as store:
            check_trained_on([fold_dir(run_dir, f) for f in range(cfg.folds)], store)
            store_info = {"feature_path": str(Path(store.path).resolve()),
                          "store_attrs": {k: v for k, v in store.attrs.items()
                                          if isinstance(v, (str, int, float, list, type(None)))}}
        if cfg.flip and cfg.flip_source == "images":
            with open_store(cfg, dataset, mirror=True) as mstore:
                store_info["mirror_feature_path"] = str(Path(mstore.path).resolve())
    elif todo and dataset is None:
        dataset = load_dataset(cfg)
    mirrored = mirrored if cfg.flip and cfg.flip_source == "images" else None
    return run_dir, [dict(cfg=cfg, run_dir=run_dir, fold=f, dataset=dataset, features=features,
                          store_info=store_info, **({"mirrored": mirrored} if mirrored is not None else {}))
                     for f in todo]


@functools.lru_cache(maxsize=2)
def _store_features(path: str, layers: tuple | None, n_images: int, mtime_ns: int) -> dict:
    """The features of a store as :func:`read_features` gives them, kept for the next fold of the
    same run in this process (one store, or a store and its mirror, at a time: they take gigabytes)."""
    with FeatureStore(path) as store:
        return read_features(store, range(n_images), list(layers) if layers else None, progress=False)


def run_fold(cfg: TrainConfig, run_dir, fold: int, dataset, features=None, store_info=None,
             progress: bool = False, mirrored=None) -> dict:
    """Train fold ``fold`` of ``cfg`` into ``run_dir/fold_XX/`` and return its ``config.json`` record;
    a finished fold is left as it is (its record returned). The task of :func:`train_runs`.

    Features: ``features`` if given, else read from ``store_info['feature_path']``. Under an
    exclusive lock on ``results/<run>/.fold_XX.lock`` (a second caller waits, then finds the fold finished;
    temporary files of a killed writer are removed);
    every file is written atomically and ``config.json`` last, with ``model_sha256`` (the checkpoint's
    checksum, verified on load) and ``executed_by`` (:func:`dgstudy.tasks.where`).
    """
    d = fold_dir(run_dir, fold)
    with file_lock(Path(run_dir) / f".{d.name}.lock"):
        if fold_done(d):
            return json.loads((d / "config.json").read_text())
        for stray in d.glob(".*.tmp"):       # of a writer killed mid-write (atomic_path)
            stray.unlink()
        if features is None:
            path = store_info["feature_path"]
            features = _store_features(path, tuple(cfg.layers) if cfg.layers else None, len(dataset),
                                       os.stat(path).st_mtime_ns)
        if mirrored is None and store_info and store_info.get("mirror_feature_path"):
            path = store_info["mirror_feature_path"]
            mirrored = _store_features(path, tuple(cfg.layers) if cfg.layers else None, len(dataset),
                                       os.stat(path).st_mtime_ns)
        t0 = time.perf_counter()
        cfg = dataclasses.replace(cfg, device=tasks.worker_device(cfg.device))
        with torch_threads(cfg.num_threads):
            train, val, test = datasets.fold_split(len(dataset), fold, cfg.folds, cfg.seed)
            cb = fit_center_bias(dataset, train)
            model, log, attempts = train_fold(cfg, features, dataset, train, val, cb.log_density_for_size,
                                              seed=fold_seed(cfg, fold), progress=progress, mirrored=mirrored,
                                              desc=f"{cfg.run} fold {fold}/{cfg.folds}")
        model = model.to("cpu")
        buffer = io.BytesIO()     # saved to memory first: the archive's bytes do not depend on a file name
        torch.save({"hparams": model.hparams, "state_dict": model.state_dict()}, buffer)
        with atomic_path(d / "model.pt") as tmp:
            tmp.write_bytes(buffer.getvalue())
        model_sha256 = hashlib.sha256(buffer.getvalue()).hexdigest()
        write_json(d / "center_bias.json", cb.to_dict())
        with atomic_path(d / "log.csv") as tmp:
            log.to_csv(tmp, index=False)
        best = log.loc[log["val_LL"].idxmax()]
        if not best["val_ig"] > 0:
            warnings.warn(f"{d}: the fold's best validation IG over its centre bias is "
                          f"{best['val_ig']:.4f} bit/fix (not above the centre bias); metrics.json "
                          "lists it under folds_not_above_center_bias")
        record = {
            "fold": fold, "train_config": cfg.to_dict(),
            "train_images": train, "val_images": val, "test_images": test,
            "dataset_checksum": dataset.checksum, "n_images": len(dataset),
            TRAINING_SCALE_KEY: training_pixel_area(dataset.sizes[train]),
            "best_epoch": int(best["epoch"]), "best_val_LL": float(best["val_LL"]),
            "best_val_ig": float(best["val_ig"]), "seed": attempts["seed"],
            "dead_seeds": attempts["dead_seeds"],
            "epochs_run": int(len(log)), "sigma": float(model.blur.sigma.detach()),
            "center_bias_weight": float(model.center_bias.weight.detach()),
            "seconds": time.perf_counter() - t0, "torch": torch.__version__, **(store_info or {}),
            "optimizer": {"name": "Adam", "lr": cfg.lr, "betas": [0.9, 0.999],
                          **({"lr_milestones": cfg.lr_milestones, "lr_gamma": cfg.lr_gamma}
                             if cfg.lr_milestones else {})},
            "loss": "NLL in bits/fixation (per batch: its sum / the epoch's mean fixations per batch)"
                    " + l1 * sum|readout conv weights|"
                    + (" (first conv only)" if cfg.l1_layers == "first" else ""),
            "geometry_version": GEOMETRY_VERSION,   # of the features it was trained on (runs.py checks)
            "model_sha256": model_sha256, "executed_by": tasks.where(),
        }
        write_json(d / "config.json", record)
        return json.loads((d / "config.json").read_text())


@contextlib.contextmanager
def torch_threads(n: int | None):
    """Torch's intra-op threads set to ``n`` for the block (None: as they are), restored after.
    The tensors are small: on a busy 2-core machine one thread was ~5x faster than two."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
