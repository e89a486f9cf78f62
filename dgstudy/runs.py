"""A trained run on disk: its folders, which folds are finished, loading them, the cross-validated
model, and the checks that a run matches its data and features.

Layout (written by :func:`dgstudy.training.train_crossval`)::

    results/<run>/config.json          the TrainConfig (compared on resume)
    results/<run>/fold_XX/model.pt     hparams + state dict of the fold's DeepGazeII
                          center_bias.json  the fold's training-image centre bias
                          log.csv      one row per epoch
                          config.json  written last: marks the fold finished; train/val/test
                                       images, the feature store's attributes, the training
                                       scale (:func:`training_scale`), seeds, timings
    results/<run>/metrics.json, per_image.csv   from :func:`dgstudy.evaluation.evaluate_run`

A fold is finished when ``config.json`` and ``model.pt`` exist. Runs are named by
:func:`dgstudy.config.run_name`.
"""
from __future__ import annotations

import dataclasses

import inspect
import json
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from . import datasets, pretrained
from .backbones.geometry import GEOMETRY_VERSION
from .baselines import CenterBias
from .config import TrainConfig
from .features import NETWORK_KEYS, FeatureStore, default_store_path
from .io import DataError, sha256_file, write_json
from .model import DeepGazeII
from .paths import data_dir, results_dir
from .rescale import TRAINING_SCALE_KEY, training_pixel_area


# -- the run's data and features ----------------------------------------------------------------
def load_dataset(cfg: TrainConfig) -> datasets.FixationDataset:
    """The run's dataset (``cfg.dataset``, its first ``cfg.n_images``, ``cfg.dataset_options``)."""
    return datasets.load(cfg.dataset, n_images=cfg.n_images, **(cfg.dataset_options or {}))


def store_location(feature_path: str | Path) -> Path:
    """Where a recorded ``feature_path`` is: a bare file name is a store in this data folder's
    ``features/``; so is a path that does not exist (a run made in another checkout or on another
    machine) when this data folder has a store of that name (a store's name is its content key,
    :func:`dgstudy.features.default_store_path`); any other path as given."""
    path = Path(feature_path)
    local = data_dir() / "features" / path.name
    return local if path.parent == Path(".") or (not path.exists() and local.exists()) else path


def recorded_store(path: str | Path) -> str:
    """How a run records a store it reads (its ``feature_path``): by file name when the store is in
    this data folder's ``features/`` (so :func:`store_location` finds it in any checkout), else by
    path (a store named elsewhere)."""
    path = Path(path)
    return path.name if path.parent.resolve() == (data_dir() / "features").resolve() else str(path)


def feature_path(cfg: TrainConfig, dataset, mirror: bool = False) -> Path:
    """The run's feature store (:func:`store_location` of ``cfg.feature_path`` when given);
    ``mirror``: the store of the mirrored images beside it."""
    if cfg.feature_path:
        path = store_location(cfg.feature_path)
        return path.with_name(path.stem + "-mirror" + path.suffix) if mirror else path
    return Path(default_store_path(dataset, cfg.backbone, cfg.downsample, layers=cfg.layers,
                                   dtype=cfg.feature_dtype, mirror=mirror))


def open_store(cfg: TrainConfig, dataset, mirror: bool = False):
    """The run's FeatureStore (``mirror``: of the mirrored images), checked against the dataset
    (DataError naming the file if not)."""
    path = feature_path(cfg, dataset, mirror)
    if not Path(path).exists():
        raise DataError(f"{path}: feature store is missing; run dgstudy.features.extract(dataset, "
                        f"'{cfg.backbone}', downsample={cfg.downsample}{', mirror=True' if mirror else ''}) first")
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


# -- folders and finished folds ------------------------------------------------------------------
def fold_dir(run_dir: Path, fold: int) -> Path:
    return Path(run_dir) / f"fold_{fold:02d}"


def fold_done(d: Path) -> bool:
    return (d / "config.json").exists() and (d / "model.pt").exists()


RUNTIME_KEYS = ("device", "num_threads", "scheduler")   # settings that do not change what a run computes


def _train_defaults() -> dict:
    """TrainConfig's field defaults (``run`` and ``device`` excluded: they are derived)."""
    return {f.name: (f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default)
            for f in dataclasses.fields(TrainConfig) if f.name not in ("run", "device")}


def check_run_config(run_dir: Path, cfg: TrainConfig) -> None:
    """Write the run's config.json, or ValueError if the run was started with other settings and
    has a finished fold. A run started with other settings that finished no fold (e.g. one that
    failed on a typo) is replaced: its unfinished folds are removed and the new settings written,
    with a warning that says so."""
    path = run_dir / "config.json"
    new = cfg.to_dict()
    if path.exists():
        old = json.loads(path.read_text())
        # a setting added to TrainConfig after the run started is the same setting at its default
        old = {**{k: v for k, v in _train_defaults().items() if k not in old}, **old}
        diff = {k for k in (set(old) | set(new)) - set(RUNTIME_KEYS) if old.get(k) != new.get(k)}
        if "feature_path" in diff and old.get("feature_path") and new.get("feature_path") and \
                Path(old["feature_path"]).name == Path(new["feature_path"]).name:
            diff.discard("feature_path")      # the same store, in another data folder (store_location)
        if not diff:
            return
        folds = sorted(Path(run_dir).glob("fold_*"))
        if any(fold_done(d) for d in folds):
            raise ValueError(f"{path}: this run was started with different settings ({sorted(diff)}) and has "
                             "finished folds; choose another run name or delete the folder")
        for d in folds:
            shutil.rmtree(d)
        warnings.warn(f"{run_dir}: replaced a run started with other settings ({sorted(diff)}) that had "
                      "finished no fold", stacklevel=2)
    write_json(path, new)


def check_trained_on(fold_dirs, store) -> None:
    """DataError unless every finished fold among ``fold_dirs`` was trained on features of the
    network that made ``store`` (``features.NETWORK_KEYS``: backbone, architecture, weights) and
    with the current geometry (:func:`check_geometry`); folds trained before dgstudy 0.2 recorded
    no architecture and fail too."""
    for d in fold_dirs:
        if not fold_done(d):
            continue
        info = json.loads((Path(d) / "config.json").read_text())
        check_geometry(Path(d), info)
        rec = info.get("store_attrs")
        if rec is None:        # trained on features handed in directly (tests, notebooks)
            continue
        diff = [f"{k}: fold has {rec.get(k)!r}, store has {store.attrs.get(k)!r}"
                for k in NETWORK_KEYS if rec.get(k) != store.attrs.get(k)]
        if diff:
            raise DataError(f"{d}: this fold was trained on features of another network than the one "
                            f"that wrote {store.path} ({'; '.join(diff)}); delete the run folder "
                            f"{Path(d).parent} and train again")


def check_geometry(d: Path, info: dict) -> None:
    """DataError unless fold ``d`` (its ``config.json`` record ``info``) was trained on features
    placed by the current geometry (``geometry_version``, :mod:`dgstudy.backbones.geometry`)."""
    have = info.get("geometry_version")
    if have != GEOMETRY_VERSION:
        raise DataError(f"{d}: this fold was trained on features of geometry version {have} "
                        f"(this dgstudy places them by version {GEOMETRY_VERSION}: each layer's cells "
                        "where their receptive fields are); its numbers are outdated: delete the run "
                        f"folder {Path(d).parent} and train again (make reproduce retrains it)")


# -- loading -------------------------------------------------------------------------------------
def load_fold(d) -> tuple[DeepGazeII, TrainConfig, object]:
    """(model in eval mode, its TrainConfig, its training centre bias) from ``fold_XX/``.

    The centre bias is the fold's ``CenterBias`` (``center_bias.json``), or in a shipped model its
    :class:`~dgstudy.pretrained.CenterBiasGrid`; None if the fold recorded neither.
    """
    d = Path(d)
    if not fold_done(d):
        raise DataError(f"{d}: fold is not finished (config.json or model.pt missing)")
    info = _read_json(d / "config.json")
    check_geometry(d, info)
    saved = load_checkpoint(d / "model.pt", info.get("model_sha256"))
    model = DeepGazeII(**saved["hparams"])
    model.load_state_dict(saved["state_dict"])
    model.eval()
    if (d / "center_bias.json").exists():
        cb = CenterBias.from_dict(json.loads((d / "center_bias.json").read_text()))
    elif (d / pretrained.GRID_FILE).exists():          # a shipped model (dgstudy.pretrained)
        cb = pretrained.CenterBiasGrid.load(d / pretrained.GRID_FILE)
    else:
        cb = None
    return model, TrainConfig.from_dict(info["train_config"]), cb


def load_checkpoint(path: Path, sha256: str | None = None) -> dict:
    """A fold's ``model.pt`` ({"hparams", "state_dict"}), verified against the ``sha256`` its
    ``config.json`` records (folds trained since dgstudy records it); DataError, naming the file
    and how to retrain it, if it is cut short or corrupt."""
    path = Path(path)
    retrain = (f"delete the fold folder {path.parent} and train again (train_crossval or make reproduce "
               "retrains exactly the missing folds)")
    if sha256 is not None and (got := sha256_file(path)) != sha256:
        raise DataError(f"{path}: checkpoint is corrupt or cut short (SHA-256 {got[:12]}..., its "
                        f"config.json records {sha256[:12]}...); {retrain}")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:   # noqa: BLE001 -- torch raises RuntimeError, EOFError, UnpicklingError...
        raise DataError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e}); {retrain}") from e
    if not isinstance(saved, dict) or not {"hparams", "state_dict"} <= set(saved):
        raise DataError(f"{path}: not a dgstudy checkpoint (no hparams and state_dict); {retrain}")
    return saved


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


def fold_logs(run_dir) -> pd.DataFrame:
    """All folds' ``log.csv`` in one table (column ``fold`` added), for learning curves."""
    frames = []
    for d in sorted(Path(run_dir).glob("fold_*")):
        if (d / "log.csv").exists():
            frames.append(pd.read_csv(d / "log.csv").assign(fold=int(d.name.split("_")[1])))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def fold_parameters(run_dir: str | Path) -> pd.DataFrame:
    """Per finished fold: learned blur width (reduced-grid px and stimulus px), centre-bias weight
    (NaN for a run without a centre-bias term, ``center_bias='none'``), best epoch, epochs run,
    seconds (from ``fold_XX/config.json``)."""
    rows = []
    for d in sorted(Path(run_dir).glob("fold_*")):
        f = d / "config.json"
        if not f.exists():
            continue
        info = json.loads(f.read_text())
        train = info.get("train_config", {})
        factor = train.get("saliency_map_factor", 1)
        weight = np.nan if train.get("center_bias") == "none" else info.get("center_bias_weight")
        rows.append({"fold": info.get("fold"), "sigma": info.get("sigma"),
                     "sigma_px": info.get("sigma", np.nan) * factor,
                     "center_bias_weight": weight,
                     "best_epoch": info.get("best_epoch"), "epochs_run": info.get("epochs_run"),
                     "seconds": info.get("seconds")})
    return pd.DataFrame(rows)


# -- finding a run's folds and what its features were ---------------------------------------------
def resolve_run_path(run) -> Path:
    """``run`` as a path: the name of a shipped model (:func:`dgstudy.pretrained.names`), else as
    given, else under ``results/`` (DataError if none exists)."""
    if str(run) in pretrained.names():
        return pretrained.model_dir(str(run))
    p = Path(run)
    if not p.exists() and not p.is_absolute():
        q = results_dir() / p
        if q.exists():
            p = q
    if not p.exists():
        raise DataError(f"{run}: no such run folder, fold folder or checkpoint "
                        "(give results/<run>/, results/<run>/fold_XX/, a model.pt or a shipped model: "
                        f"{', '.join(pretrained.names()) or 'none'})")
    return p


def find_fold_dirs(run, fold: int | Sequence[int] | None = None) -> tuple[Path, list[Path]]:
    """(run folder, trained fold folders) for a run folder, a fold folder or a checkpoint file."""
    p = resolve_run_path(run)
    if fold is not None and (p.is_file() or (p / "model.pt").exists()):
        raise ValueError(f"{p} is one fold already; fold={fold!r} applies to a run folder only")
    if p.is_file():
        if p.suffix != ".pt":
            raise DataError(f"{p}: not a checkpoint (expected a .pt file)")
        return p.parent.parent, [p.parent]
    if (p / "model.pt").exists():
        return p.parent, [p]
    folds = sorted(d for d in p.glob("fold_*") if d.is_dir())
    trained = [d for d in folds if fold_done(d)]
    if not folds:
        raise DataError(f"{p}: not a training run (no fold_XX/ folders and no model.pt)")
    if fold is not None:
        wanted = [fold] if isinstance(fold, (int, np.integer)) else list(fold)
        chosen = []
        for k in wanted:
            d = p / f"fold_{int(k):02d}"
            if not fold_done(d):
                raise DataError(f"{d}: fold {k} is not trained (no model.pt and config.json); "
                                f"trained folds: {[x.name for x in trained]}")
            chosen.append(d)
        return p, chosen
    if not trained:
        raise DataError(f"{p}: no fold has finished training (no fold_XX/ with model.pt and config.json)")
    untrained = [d.name for d in folds if d not in trained]
    if untrained:
        warnings.warn(f"{p}: folds {untrained} are not trained; the ensemble uses {len(trained)} folds")
    return p, trained


# -- the pixel scale a run was trained at ----------------------------------------------------------
def training_scale(fold_dirs) -> float:
    """The pixel area (px) that fold(s) ``fold_dirs`` (one fold folder or several) were trained at.

    This is the one definition of a run's *training scale* (used by scale-aware prediction,
    :mod:`dgstudy.predict`): :func:`dgstudy.rescale.training_pixel_area` of each fold's training images, as
    ``fold_XX/config.json`` records it (``training_pixel_area``, written by training from now
    on), so a run folder's small files are enough. A fold that does not record it (older
    runs) has it derived from its recorded data set (``train_config``: dataset, n_images,
    dataset_options, loaded without downloading and checked against the recorded checksum) and
    ``train_images``; if that data set does not load here, :class:`DataError` says how to give a
    scale. Several folds: the median of their values (the features are computed once, at one scale,
    for all folds; for one data set the folds' values differ only through their sampling).
    """
    dirs = [Path(fold_dirs)] if isinstance(fold_dirs, (str, Path)) else [Path(d) for d in fold_dirs]
    if not dirs:
        raise ValueError("no fold folders given")
    return float(np.median([_fold_training_scale(d) for d in dirs]))


def _fold_training_scale(d: Path) -> float:
    info = _read_json(d / "config.json")
    if info.get(TRAINING_SCALE_KEY):
        return float(info[TRAINING_SCALE_KEY])
    cfg = TrainConfig.from_dict(info.get("train_config", {}))
    how = ("give the scale: scale='native' (keyword of load_model, --scale native), or the training "
           "images' pixel area as a number (e.g. scale=480000 for 800x600 images), or record it once "
           "in the run with dgstudy.runs.record_training_scale(run, pixel_area)")
    if "train_images" not in info:
        raise DataError(f"{d / 'config.json'}: records neither {TRAINING_SCALE_KEY} nor train_images; {how}")
    try:
        ds = _recorded_dataset(cfg)
    except Exception as e:  # noqa: BLE001 -- any loader failure means: not derivable here
        raise DataError(f"{d / 'config.json'}: the run does not record its training scale "
                        f"({TRAINING_SCALE_KEY}) and its data set {cfg.dataset!r} does not load here "
                        f"({type(e).__name__}: {e}); {how}") from e
    recorded = info.get("dataset_checksum")
    if recorded and ds.checksum != recorded:
        raise DataError(f"{d / 'config.json'}: the run does not record its training scale and the data "
                        f"set {cfg.dataset!r} that loads here is not the one it was trained on "
                        f"(checksum {ds.checksum[:12]}, recorded {recorded[:12]}); {how}")
    return training_pixel_area(ds.sizes[np.asarray(info["train_images"], dtype=np.int64)])


_DATASETS: dict[str, datasets.FixationDataset] = {}


def _recorded_dataset(cfg: TrainConfig) -> datasets.FixationDataset:
    """The run's data set for deriving its scale (loaded once per process; never downloaded)."""
    key = json.dumps([cfg.dataset, cfg.n_images, cfg.dataset_options], sort_keys=True, default=str)
    if key not in _DATASETS:
        options = dict(cfg.dataset_options or {})
        if "download" in inspect.signature(datasets.loader(cfg.dataset)).parameters:
            options.setdefault("download", False)
        _DATASETS[key] = datasets.load(cfg.dataset, n_images=cfg.n_images, **options)
    return _DATASETS[key]


def record_training_scale(run, pixel_area: float | None = None) -> float:
    """Write ``training_pixel_area`` into every trained fold's ``config.json`` of ``run`` (atomic).

    ``pixel_area=None`` derives it per fold (:func:`training_scale`; the data set must load). For
    runs trained before dgstudy recorded it, e.g. before the run's small files are copied elsewhere
    (a shipped model) where the data set is not. Returns the run's training scale.
    """
    _, dirs = find_fold_dirs(run)
    values = {d: float(pixel_area) if pixel_area is not None else _fold_training_scale(d) for d in dirs}
    for d, value in values.items():
        info = _read_json(d / "config.json")
        info[TRAINING_SCALE_KEY] = value
        write_json(d / "config.json", info)
    return training_scale(dirs)


@dataclass
class FeatureSpec:
    """How the readout's input features were made (from the run's recorded configuration)."""

    backbone: str
    layers: list[str]
    downsample: float
    dtype: str
    weights_sha256: str | None = None
    autocast_bf16: bool = False
    architecture: str | None = None
    pool_stride: int | None = None

    def key(self) -> tuple:
        return (self.backbone, self.architecture, self.weights_sha256, tuple(self.layers),
                float(self.downsample), self.dtype, self.autocast_bf16, self.pool_stride)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e})") from e


def recorded_store_attrs(fold_dir: Path, cfg: TrainConfig) -> dict:
    """The feature-store attributes a fold was trained on (backbone, weights_sha256, layers, ...).

    From ``fold_XX/config.json`` (``store_attrs``, written by training), else from the feature
    store itself if it is still there; ``{}`` if neither is available.
    """
    info = _read_json(fold_dir / "config.json")
    if info.get("store_attrs"):
        return dict(info["store_attrs"])
    fp = info.get("feature_path") or cfg.feature_path
    if fp and store_location(fp).exists():
        return dict(FeatureStore(store_location(fp)).attrs)
    return {}


def feature_spec(fold_dir: Path, cfg: TrainConfig, default_layers: Sequence[str] | None = None) -> FeatureSpec:
    """How fold ``fold_dir`` made its features: the recorded store attributes win over the config."""
    attrs = recorded_store_attrs(fold_dir, cfg)
    layers = cfg.layers or attrs.get("layers") or default_layers
    if not layers:
        raise DataError(f"{fold_dir}: the run records no feature layers")
    return FeatureSpec(backbone=str(attrs.get("backbone") or cfg.backbone),
                       layers=[str(l) for l in layers],
                       downsample=attrs.get("downsample", cfg.downsample),
                       dtype=str(attrs.get("dtype") or cfg.feature_dtype),
                       weights_sha256=attrs.get("weights_sha256"),
                       autocast_bf16=bool(attrs.get("autocast_bf16", False)),
                       architecture=attrs.get("architecture"),
                       pool_stride=attrs.get("pool_stride"))


