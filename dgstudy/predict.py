"""Use a trained DeepGaze II run on any image: :func:`load_model`, :func:`predict_images`, the CLI.

Conventions
-----------
* A prediction is a **natural-log density** over the pixels of the image, shape ``(H, W)``,
  ``exp`` sums to 1 — the same convention as every model in dgstudy.
* Fixation coordinates follow :mod:`dgstudy.datasets`: ``x`` is the column and ``y`` the row, in
  pixels of the (orientation-corrected) image, 0-based and continuous with pixel centres at
  integer + 0.5; a fixation at ``(x, y)`` falls in pixel ``(floor(y), floor(x))``.
* Images are read as RGB: the EXIF orientation tag is applied first (``ImageOps.exif_transpose``,
  so the image is the way a viewer shows it), grayscale is replicated to three channels, an alpha
  channel is **composited on white** (transparent pixels become white), 16-bit images are scaled to
  8 bits, and only the first frame of a multi-frame file is used.
* A run with several folds is combined as the paper does for MIT300: the **average of the fold
  densities**, ``log p = logsumexp_k(log p_k) - log K`` (still normalised). With one fold the
  prediction is exactly that fold's, so ``load_model(run, fold=k)`` reproduces the very values
  (float32 here, cast to float64 there) that the training evaluation (``training.CrossValModel``)
  gives for the images held out by fold ``k`` — provided the feature store was extracted with
  ``batch_size=1`` (the default) on the same kind of device, and the stimulus files carry no EXIF
  rotation (``dgstudy.datasets`` reads stimuli as stored, this module as displayed).

Image reading lives in :mod:`dgstudy.imageio`, the fixation CSV in :mod:`dgstudy.fixation_csv`
(both re-exported here).

Layout of a run (written by :mod:`dgstudy.training`): ``results/<run>/config.json`` and
``fold_XX/{model.pt, config.json, center_bias.json, log.csv}``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from .ensemble import average_log_densities  # noqa: F401  (the fold ensemble's average)
from .io import DataError, atomic_path, write_json

from .imageio import IMAGE_SUFFIXES, composite_on_white, expand_image_args, read_rgb  # noqa: F401
from .fixation_csv import (AMBIGUOUS, UNKNOWN, FixationTable, check_fixations,  # noqa: F401
                           read_fixation_csv)


# ----------------------------------------------------------------------------------------------
# Combining fold models
# ----------------------------------------------------------------------------------------------
def uniform_log_density(h: int, w: int) -> np.ndarray:
    return np.full((h, w), -math.log(h * w), dtype=np.float64)


def resize_log_density(log_density: np.ndarray, h: int, w: int) -> np.ndarray:
    """A log-density resampled to (h, w): bilinear on the density, renormalised."""
    import torch
    import torch.nn.functional as F

    ld = np.asarray(log_density, dtype=np.float64)
    if ld.shape == (h, w):
        return ld
    d = torch.from_numpy(np.exp(ld - ld.max()))[None, None]
    r = F.interpolate(d, size=(h, w), mode="bilinear", align_corners=False)[0, 0].numpy()
    r = np.maximum(r, 0)
    return np.log(r) - np.log(r.sum())


# ----------------------------------------------------------------------------------------------
# The predictor
# ----------------------------------------------------------------------------------------------
@dataclass
class FoldMember:
    """One trained fold: its readout model and the centre bias of its training images."""

    name: str                      # e.g. "fold_03"
    model: object                  # dgstudy.model.DeepGazeII (torch module, eval mode)
    center_bias: object | None     # dgstudy.baselines.CenterBias (None if not recorded)


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

    def key(self) -> tuple:
        return (self.backbone, self.architecture, self.weights_sha256, tuple(self.layers),
                float(self.downsample), self.dtype, self.autocast_bf16)


class Predictor:
    """A trained run as a model for any image: ``log_density(image) -> (H, W)`` natural-log density.

    ``image`` is an RGB array or a path (see :func:`read_rgb`); the result is float32 (the
    readout's precision). Built by :func:`load_model`. ``center_bias`` is ``'training'`` (each fold's
    own training centre bias, rescaled to the image), ``'uniform'``, an (H, W) log-density array
    (resampled to other sizes, renormalised), an object with ``log_density_for_size(h, w)`` (e.g. a
    :class:`dgstudy.baselines.CenterBias`) or a callable ``(h, w) -> log-density``.
    """

    def __init__(self, members: list[FoldMember], backbone, spec: FeatureSpec,
                 center_bias="training", device: str = "cpu", run_dir: Path | None = None):
        if not members:
            raise ValueError("a Predictor needs at least one fold model")
        self.members = members
        self.backbone = backbone
        self.spec = spec
        self.center_bias = center_bias
        self.device = device
        self.run_dir = run_dir
        if isinstance(center_bias, str):
            if center_bias not in ("training", "uniform"):
                raise ValueError(f"center_bias must be 'training', 'uniform', an array or a callable, "
                                 f"got {center_bias!r}")
            if center_bias == "training":
                missing = [m.name for m in members if m.center_bias is None]
                if missing:
                    raise DataError(f"{run_dir}: no center_bias.json for {', '.join(missing)}; "
                                    "use center_bias='uniform' or give one")

    def __repr__(self) -> str:
        cb = self.center_bias if isinstance(self.center_bias, str) else type(self.center_bias).__name__
        return (f"Predictor({self.run_dir}, folds={[m.name for m in self.members]}, "
                f"backbone={self.spec.backbone}, layers={self.spec.layers}, downsample={self.spec.downsample}, "
                f"dtype={self.spec.dtype}, center_bias={cb}, device={self.device})")

    # -- centre bias ----------------------------------------------------------------------------
    def _member_center_bias(self, member: FoldMember, h: int, w: int) -> np.ndarray:
        cb = self.center_bias
        if isinstance(cb, str):
            if cb == "uniform":
                return uniform_log_density(h, w)
            return np.asarray(member.center_bias.log_density_for_size(h, w))
        if callable(cb) or hasattr(cb, "log_density_for_size"):
            fn = cb.log_density_for_size if hasattr(cb, "log_density_for_size") else cb
            out = np.asarray(fn(h, w), dtype=np.float64)
            if out.shape != (h, w):
                raise ValueError(f"the centre-bias callable returned shape {out.shape} for a {h}x{w} image")
            return out
        return resize_log_density(cb, h, w)

    def center_bias_log_density(self, h: int, w: int) -> np.ndarray:
        """The centre bias the model uses for an (h, w) image (fold centre biases averaged).

        This is also the baseline of the information gain in :func:`predict_images`.
        """
        return average_log_densities([self._member_center_bias(m, h, w).astype(np.float64)
                                      for m in self.members])

    # -- features and prediction ----------------------------------------------------------------
    def features(self, rgb: np.ndarray) -> np.ndarray:
        """The stacked readout input (C, h, w) float32, exactly as the feature store gives it."""
        from . import features as F

        feats = F.compute(self.backbone, rgb, self.spec.layers, self.spec.downsample, self.spec.dtype,
                          autocast_bf16=self.spec.autocast_bf16)
        return F.stack_layers(feats, self.spec.layers)

    def iter_fold_log_densities(self, image):
        """Yield each fold's (H, W) float32 log-density for ``image`` (features computed once)."""
        import torch

        rgb = read_rgb(image)
        h, w = rgb.shape[:2]
        x = torch.from_numpy(np.ascontiguousarray(self.features(rgb), dtype=np.float32))[None].to(self.device)
        with torch.no_grad():
            for m in self.members:
                cb = self._member_center_bias(m, h, w)
                cb_t = torch.from_numpy(np.ascontiguousarray(cb, dtype=np.float32))[None].to(self.device)
                yield m.model(x, cb_t)[0].detach().cpu().numpy()

    def log_densities_per_fold(self, image) -> list[np.ndarray]:
        """Each fold's (H, W) log-density for ``image``."""
        return list(self.iter_fold_log_densities(image))

    def log_density(self, image) -> np.ndarray:
        """(H, W) float32 natural-log density for ``image`` (array or path).

        The average of the fold densities, ``logsumexp_k(l_k) - log K``, accumulated fold by fold
        in float64 (so memory does not grow with K); one fold is returned unchanged.
        """
        acc, k = None, 0
        for k, ld in enumerate(self.iter_fold_log_densities(image), start=1):
            acc = ld if acc is None else np.logaddexp(acc, ld, dtype=np.float64)
        if k == 1:
            return acc
        return (acc - math.log(k)).astype(np.float32)

    __call__ = log_density


# ----------------------------------------------------------------------------------------------
# Loading a run
# ----------------------------------------------------------------------------------------------
def _resolve_run_path(run) -> Path:
    p = Path(run)
    if not p.exists() and not p.is_absolute():
        from .paths import results_dir
        q = results_dir() / p
        if q.exists():
            p = q
    if not p.exists():
        raise DataError(f"{run}: no such run folder, fold folder or checkpoint "
                        "(give results/<run>/, results/<run>/fold_XX/ or a model.pt)")
    return p


def _fold_done(d: Path) -> bool:
    """Training writes config.json last: a fold is finished when it and model.pt exist."""
    return (d / "model.pt").exists() and (d / "config.json").exists()


def find_fold_dirs(run, fold: int | Sequence[int] | None = None) -> tuple[Path, list[Path]]:
    """(run folder, trained fold folders) for a run folder, a fold folder or a checkpoint file."""
    p = _resolve_run_path(run)
    if fold is not None and (p.is_file() or (p / "model.pt").exists()):
        raise ValueError(f"{p} is one fold already; fold={fold!r} applies to a run folder only")
    if p.is_file():
        if p.suffix != ".pt":
            raise DataError(f"{p}: not a checkpoint (expected a .pt file)")
        return p.parent.parent, [p.parent]
    if (p / "model.pt").exists():
        return p.parent, [p]
    folds = sorted(d for d in p.glob("fold_*") if d.is_dir())
    trained = [d for d in folds if _fold_done(d)]
    if not folds:
        raise DataError(f"{p}: not a training run (no fold_XX/ folders and no model.pt)")
    if fold is not None:
        wanted = [fold] if isinstance(fold, (int, np.integer)) else list(fold)
        chosen = []
        for k in wanted:
            d = p / f"fold_{int(k):02d}"
            if not _fold_done(d):
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


def _cfg_get(cfg, key, default=None):
    if isinstance(cfg, dict):
        return cfg.get(key, default)
    return getattr(cfg, key, default)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e})") from e


def recorded_store_attrs(fold_dir: Path, cfg) -> dict:
    """The feature-store attributes a fold was trained on (backbone, weights_sha256, layers, ...).

    From ``fold_XX/config.json`` (``store_attrs``, written by training), else from the feature
    store itself if it is still there; ``{}`` if neither is available.
    """
    info = _read_json(fold_dir / "config.json")
    if info.get("store_attrs"):
        return dict(info["store_attrs"])
    fp = info.get("feature_path") or _cfg_get(cfg, "feature_path")
    if fp and Path(fp).exists():
        from .features import FeatureStore
        return dict(FeatureStore(fp).attrs)
    return {}


def feature_spec(fold_dir: Path, cfg, default_layers: Sequence[str] | None = None) -> FeatureSpec:
    """How fold ``fold_dir`` made its features: the recorded store attributes win over the config."""
    attrs = recorded_store_attrs(fold_dir, cfg)
    layers = _cfg_get(cfg, "layers") or attrs.get("layers") or default_layers
    if not layers:
        raise DataError(f"{fold_dir}: the run records no feature layers")
    return FeatureSpec(backbone=str(attrs.get("backbone") or _cfg_get(cfg, "backbone")),
                       layers=[str(l) for l in layers],
                       downsample=attrs.get("downsample", _cfg_get(cfg, "downsample")),
                       dtype=str(attrs.get("dtype") or _cfg_get(cfg, "feature_dtype")),
                       weights_sha256=attrs.get("weights_sha256"),
                       autocast_bf16=bool(attrs.get("autocast_bf16", False)),
                       architecture=attrs.get("architecture"))


def _backbone_options(spec: FeatureSpec) -> dict:
    """Builder options implied by the recorded hash (the seed of a randomly initialised network)."""
    h = spec.weights_sha256 or ""
    if h.startswith("random-seed") and ":" in h:
        return {"seed": int(h[len("random-seed"):h.index(":")])}
    return {}


def load_model(run, fold: int | Sequence[int] | None = None, center_bias="training",
               device: str = "cpu", weights=None) -> Predictor:
    """A trained run as a model for any image (see :class:`Predictor`).

    ``run``: a run folder ``results/<run>/`` (all trained folds, averaged as densities), a name under
    ``results/``, one fold folder ``results/<run>/fold_XX/`` or its ``model.pt``. ``fold``: restrict a
    run folder to one fold (or a list of folds). ``center_bias``: ``'training'`` | ``'uniform'`` | an
    (H, W) log-density array | a callable ``(h, w) -> log-density``. ``weights``: passed to
    ``dgstudy.backbones.get`` (a local weights file). The backbone is rebuilt from the recorded
    feature configuration (backbone, layers, downsample, dtype) and its weights hash must equal the
    recorded one (else :class:`DataError`).
    """
    from . import backbones
    from .training import load_fold

    run_dir, fold_dirs = find_fold_dirs(run, fold)
    members, specs = [], []
    for d in fold_dirs:
        model, cfg, cb = load_fold(d)
        backbone_name = str(_cfg_get(cfg, "backbone"))
        specs.append(feature_spec(d, cfg, backbones.default_layers(backbone_name)))
        members.append(FoldMember(name=d.name, model=model.to(device).eval(), center_bias=cb))
    spec = specs[0]
    for d, s in zip(fold_dirs, specs):
        if s.key() != spec.key():
            raise DataError(f"{d}: its features ({s}) differ from those of {fold_dirs[0]} ({spec}); "
                            "the folds of one ensemble must share backbone, weights, layers, downsample "
                            "and dtype")
    backbone = backbones.get(spec.backbone, weights=weights, device=device, **_backbone_options(spec))
    check_backbone(backbone, spec, fold_dirs)
    predictor = Predictor(members, backbone, spec, center_bias=center_bias, device=device, run_dir=run_dir)
    check_channels(predictor, fold_dirs)
    return predictor


def check_channels(predictor: "Predictor", fold_dirs: Sequence[Path]) -> None:
    """DataError unless the rebuilt features have the channel count each readout was trained on."""
    have = predictor.features(np.zeros((64, 64, 3), dtype=np.uint8)).shape[0]
    for d, m in zip(fold_dirs, predictor.members):
        want = getattr(m.model, "hparams", {}).get("in_channels")
        if want is not None and want != have:
            raise DataError(f"{d}: the readout takes {want} feature channels but {predictor.spec.backbone} "
                            f"layers {predictor.spec.layers} give {have}; the run's recorded feature "
                            "configuration does not match its model")


def check_backbone(backbone, spec: FeatureSpec, fold_dirs: Sequence[Path]) -> None:
    """Raise DataError unless the rebuilt backbone is the network the run was trained on: the
    recorded architecture (absent in runs trained before dgstudy 0.2: an error too, since the
    EfficientNet-Lite builder changed then) and weights hash."""
    have = getattr(backbone, "weights_sha256", None)
    where = fold_dirs[0] if len(fold_dirs) == 1 else fold_dirs[0].parent
    if spec.weights_sha256 is not None and spec.architecture != backbone.architecture:
        recorded = spec.architecture or "not recorded: trained with dgstudy < 0.2"
        raise DataError(f"{where}: the run was trained on features of another network ({recorded}) "
                        f"than {spec.backbone} is now ({backbone.architecture}); its predictions would "
                        "be wrong: train the run again")
    if spec.weights_sha256 is None:
        warnings.warn(f"{where}: no backbone weights hash recorded (fold config.json has no store_attrs "
                      f"and the feature store is gone); cannot verify the {spec.backbone} weights")
        return
    if have != spec.weights_sha256:
        raise DataError(f"{where}: the run was trained on {spec.backbone} features from weights with "
                        f"sha256 {spec.weights_sha256}, but the backbone loaded here has sha256 {have} "
                        f"({getattr(backbone, 'weights_source', '?')}); give the weights the run was "
                        "trained with")


# ----------------------------------------------------------------------------------------------
# Predicting a list of images (the CLI's work)
# ----------------------------------------------------------------------------------------------
@dataclass
class PredictReport:
    outputs: dict[str, Path]                 # image as given -> .npy written
    errors: list[str]
    evaluation: dict | None = None
    per_image: pd.DataFrame | None = None
    notes: list[str] = field(default_factory=list)     # e.g. CSV rows naming images not given

    @property
    def ok(self) -> bool:
        return not self.errors


def output_stems(images: Sequence[Path]) -> list[str]:
    """Unique file stems for the outputs (``name``, ``name-2``, ... when stems collide)."""
    seen: dict[str, int] = {}
    stems = []
    for p in images:
        s = Path(p).stem
        seen[s] = seen.get(s, 0) + 1
        stems.append(s if seen[s] == 1 else f"{s}-{seen[s]}")
    return stems


def predict_images(model, images: Sequence[str | os.PathLike], out, fixations=None,
                   plot: bool = True, progress: bool | None = None,
                   kernel_size: float | None = None) -> PredictReport:
    """Write ``<stem>.npy`` (float32 log-density) and ``<stem>.png`` for each image into ``out``.

    ``model`` needs ``log_density(rgb_array)`` and, for an evaluation, ``center_bias_log_density(h, w)``
    (a :class:`Predictor` has both). ``fixations``: a CSV (see :func:`read_fixation_csv`); then the
    images with fixations are evaluated with :func:`dgstudy.metrics.evaluate` — LL and IG (over the
    model's centre bias) in bits/fixation, AUC, NSS, ... — and ``evaluation.json`` and
    ``evaluation_per_image.csv`` are written to ``out``. ``kernel_size``: sigma (px) of the empirical
    saliency map for CC, KLDiv, SIM (default: ``metrics.default_kernel_size``, 1/30 of the larger
    side of the first image). An image that fails is reported in ``errors`` and the others still run.
    """
    from tqdm.auto import tqdm

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    given = [str(p) for p in images]
    paths = [Path(p) for p in images]
    stems = output_stems(paths)
    errors: list[str] = []
    outputs: dict[str, Path] = {}
    sizes: dict[int, tuple[int, int]] = {}
    rows = None
    if fixations is not None:
        try:                                           # check the CSV before the long loop
            rows = read_fixation_csv(fixations, paths, given)
        except DataError as e:
            errors.append(str(e))
    disable = (len(paths) < 2) if progress is None else not progress
    for i, (p, stem) in enumerate(tqdm(list(zip(paths, stems)), desc="predict", unit="img", disable=disable)):
        try:
            rgb = read_rgb(p)
            logd = np.asarray(model.log_density(rgb), dtype=np.float32)
            if logd.shape != rgb.shape[:2]:
                raise DataError(f"{p}: model returned shape {logd.shape} for a {rgb.shape[1]}x{rgb.shape[0]} image")
            npy = out / f"{stem}.npy"
            with atomic_path(npy, suffix=".npy") as tmp:
                with open(tmp, "wb") as f:
                    np.save(f, logd)
            outputs[str(p)] = npy
            sizes[i] = rgb.shape[:2]
        except DataError as e:
            errors.append(str(e))
            continue
        except Exception as e:                       # noqa: BLE001 - keep going, report at the end
            errors.append(f"{p}: prediction failed ({type(e).__name__}: {e})")
            continue
        if plot:
            try:
                fx = None
                if rows is not None:
                    fx = check_fixations(rows[rows["image"] == i], {i: rgb.shape[:2]}, fixations).fixations
                save_density_plot(out / f"{stem}.png", rgb, logd, fx, title=p.name)
            except Exception as e:                   # noqa: BLE001
                errors.append(f"{p}: the figure failed ({type(e).__name__}: {e}); {npy.name} was written")
    report = PredictReport(outputs=outputs, errors=errors)
    if rows is not None:
        table = check_fixations(rows, sizes, fixations)
        errors.extend(table.errors)
        report.notes.extend(table.notes)
        if not len(table.fixations):
            errors.append(f"{fixations}: no valid fixation on any image given; nothing evaluated")
            return report
        try:
            report.evaluation, report.per_image = evaluate_predictions(
                model, paths, stems, sizes, table.fixations, out, kernel_size=kernel_size)
        except (DataError, ValueError) as e:
            errors.append(f"{fixations}: evaluation failed: {e}")
    return report


class _SavedPredictions:
    """The written .npy files as a dgstudy model over the evaluation dataset (memory-mapped)."""

    def __init__(self, files: list[Path]):
        self.files = files

    def log_density(self, i: int) -> np.ndarray:
        return np.load(self.files[i], mmap_mode="r").astype(np.float64)

    __call__ = log_density


class _SizeModel:
    """A model whose log-density depends only on image size (the centre-bias baseline)."""

    def __init__(self, fn: Callable[[int, int], np.ndarray], sizes: np.ndarray):
        self.fn, self.sizes, self._cache = fn, sizes, {}

    def log_density(self, i: int) -> np.ndarray:
        key = tuple(int(s) for s in self.sizes[i])
        if key not in self._cache:
            self._cache[key] = np.asarray(self.fn(*key), dtype=np.float64)
        return self._cache[key]

    __call__ = log_density


def evaluate_predictions(model, paths: Sequence[Path], stems: Sequence[str], sizes: dict[int, tuple[int, int]],
                         fixations: pd.DataFrame, out: Path, kernel_size: float | None = None
                         ) -> tuple[dict, pd.DataFrame]:
    """Evaluate the written predictions on ``fixations`` with :func:`dgstudy.metrics.evaluate`."""
    from . import metrics
    from .datasets import FixationDataset

    used = sorted(int(i) for i in fixations["image"].unique())
    remap = {old: new for new, old in enumerate(used)}
    fx = fixations.copy()
    fx["image"] = fx["image"].map(remap).astype(np.int64)
    fx["onset"] = np.nan
    fx["duration"] = np.nan
    fx = fx.sort_values(["image", "subject", "fix_index"], kind="stable").reset_index(drop=True)
    ds = FixationDataset(name="predict", stimuli=[str(paths[i]) for i in used],
                         sizes=np.array([sizes[i] for i in used]), fixations=fx, source="dgstudy predict")
    preds = _SavedPredictions([out / f"{stems[i]}.npy" for i in used])
    cb_fn = getattr(model, "center_bias_log_density", None)
    baseline = _SizeModel(cb_fn or uniform_log_density, ds.sizes)
    summary, per_image = metrics.evaluate(preds, ds, baseline=baseline, per_image=True, kernel_size=kernel_size)
    per_image = per_image.copy()
    per_image.insert(0, "file", [str(paths[used[int(j)]]) for j in per_image["image"]])
    summary = {"n_images": len(used), "n_fixations": int(len(fx)), **dict(summary),
               "baseline": ("the centre bias the model uses" if cb_fn else "uniform") + " (for IG and sAUC)"}
    write_json(out / "evaluation.json", {"summary": summary, "per_image": per_image.to_dict(orient="records")})
    with atomic_path(out / "evaluation_per_image.csv", suffix=".csv") as tmp:
        per_image.to_csv(tmp, index=False)
    return summary, per_image


# ----------------------------------------------------------------------------------------------
# Plot
# ----------------------------------------------------------------------------------------------
def density_overlay(rgb: np.ndarray, log_density: np.ndarray, alpha: float = 0.7) -> np.ndarray:
    """(H, W, 3) float RGB in [0, 1]: the grey image under the density in the 'magma' colour map.

    The density is scaled to its maximum; ``alpha`` is the weight of the colour map.
    """
    from matplotlib import colormaps

    gray = rgb.astype(np.float32).mean(axis=2, keepdims=True) / 255.0
    dens = np.exp(log_density.astype(np.float64) - np.max(log_density))
    colour = colormaps["magma"](dens)[..., :3]
    return (1 - alpha) * gray + alpha * colour


def save_density_plot(path, rgb: np.ndarray, log_density: np.ndarray, fixations: pd.DataFrame | None = None,
                      title: str = "") -> None:
    """PNG (matplotlib, Agg): the image, and the predicted density over the greyed image with the
    fixations (if any) as dots. Written atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    h, w = log_density.shape
    scale = 6.0 / max(h, w)
    pw, ph = max(w * scale, 1.5), max(h * scale, 1.5)
    fig = Figure(figsize=(2 * pw + 0.3, ph + 0.4), dpi=100)
    FigureCanvasAgg(fig)
    ax0, ax1 = fig.subplots(1, 2)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - 0.35 / (ph + 0.4), wspace=0.04)
    ax0.imshow(rgb)
    ax0.set_title(title or "image", fontsize=9)
    ax1.imshow(density_overlay(rgb, log_density))
    ax1.set_title("predicted fixation density", fontsize=9)
    if fixations is not None and len(fixations):
        # imshow puts pixel (r, c) at [c-0.5, c+0.5]; dgstudy's pixel (r, c) spans [c, c+1).
        ax1.scatter(fixations["x"] - 0.5, fixations["y"] - 0.5, s=14, c="cyan", edgecolors="k", linewidths=0.3)
    for ax in (ax0, ax1):
        ax.set_axis_off()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", pil_kwargs={"compress_level": 1})   # speed over file size


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------
PREDICT_HELP = """\
Predict fixation densities with a trained run (the average of its fold models' densities).

For each IMAGE (a folder stands for the image files in it) writes into --out:
  <stem>.npy   natural-log density over the pixels, float32 (H, W); exp sums to 1
  <stem>.png   the image and the predicted density

Images of any size; grayscale is replicated to RGB, transparency is composited on white,
the EXIF orientation is applied first (coordinates refer to the image as displayed).

--fixations FILE.csv evaluates the predictions. Columns: image,x,y[,subject]
  image    the image as given on the command line, its file name, or its stem
  x, y     pixel coordinates: 0-based, x = column, y = row, pixel centres at +0.5
           (the top-left pixel spans 0 <= x < 1, 0 <= y < 1; a MATLAB 1-based
           coordinate c becomes c - 0.5); must lie inside the image
  subject  observer id (optional, default 0)
prints (dgstudy.metrics conventions) LL (bits/fixation relative to a uniform density), IG
(bits/fixation over the centre bias the model uses: the training one, or uniform with
--center-bias uniform), AUC, sAUC, NSS, CC, KLDiv, SIM, and writes evaluation.json and
evaluation_per_image.csv into --out.

Bad inputs (an image that does not decode, a CSV row outside its image) are reported with the
file and the CSV line; the other images still run and the exit status is 1.
"""


def add_predict_command(subparsers) -> argparse.ArgumentParser:
    """Register ``dgstudy predict`` on an argparse ``subparsers`` object.

    The handler is stored as ``func`` (and ``handler``) in the namespace: ``args.func(args)`` runs
    it and returns the exit status (0 = all fine, 1 = some image or row failed).
    """
    p = subparsers.add_parser("predict", help="predict fixation densities for images with a trained run",
                              description=PREDICT_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_arguments(p)
    p.set_defaults(func=run_predict_command, handler=run_predict_command)
    return p


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders of images")
    p.add_argument("--model", required=True, metavar="RUN",
                   help="training run folder (results/<run>/ or a run name), a fold folder or a model.pt")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created)")
    p.add_argument("--fold", type=int, default=None, metavar="K", help="use only fold K (default: all folds)")
    p.add_argument("--fixations", default=None, metavar="FILE.csv",
                   help="CSV image,x,y[,subject] to evaluate against (coordinates: see above)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--center-bias", default="training", choices=["training", "uniform"],
                   help="centre bias of the training data rescaled to each image (default) or uniform")
    p.add_argument("--kernel-size", type=float, default=None, metavar="PX",
                   help="sigma (px) of the empirical saliency map for CC, KLDiv, SIM "
                        "(default: 1/30 of the larger image side; about 1 degree of visual angle is usual)")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG figures")


def run_predict_command(args: argparse.Namespace) -> int:
    """The ``dgstudy predict`` handler; returns the exit status."""
    images = expand_image_args(args.images)
    if not images:
        print("dgstudy predict: no images found", file=sys.stderr)
        return 1
    try:
        model = load_model(args.model, fold=args.fold, center_bias=args.center_bias, device=args.device)
    except (DataError, KeyError, ValueError, OSError) as e:
        print(f"dgstudy predict: cannot load the model {args.model}: {e}", file=sys.stderr)
        return 1
    report = predict_images(model, images, args.out, fixations=args.fixations, plot=not args.no_plot,
                            progress=len(images) > 1, kernel_size=args.kernel_size)
    print(f"wrote {len(report.outputs)} of {len(images)} predictions to {args.out}")
    if report.evaluation is not None:
        print(format_summary(report.evaluation))
        print(f"evaluation written to {Path(args.out) / 'evaluation.json'}")
    for n in report.notes:
        print(f"note: {n}", file=sys.stderr)
    for e in report.errors:
        print(f"error: {e}", file=sys.stderr)
    if report.errors:
        print(f"dgstudy predict: {len(report.errors)} problem(s); see above", file=sys.stderr)
    return 0 if report.ok else 1


SUMMARY_KEYS = ("n_images", "n_fixations", "LL", "IG", "AUC", "sAUC", "NSS", "CC", "KLDiv", "SIM")


def format_summary(summary: dict) -> str:
    """The headline metrics as a text table (LL, IG in bits/fixation; averages as in metrics.py)."""
    conv = summary.get("conventions", {}) if isinstance(summary.get("conventions"), dict) else {}
    lines = [f"  {'metric':<12} {'value':>10}  average"]
    for k in SUMMARY_KEYS:
        v = summary.get(k)
        if v is None or (isinstance(v, float) and not np.isfinite(v)):
            continue
        text = f"{int(v):d}" if k.startswith("n_") else f"{float(v):.4f}"
        unit = " bits/fix" if k in ("LL", "IG") else ""
        lines.append(f"  {k:<12} {text:>10}  {conv.get(k, '')}{unit}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m dgstudy.predict IMAGE... --model RUN --out DIR`` (same as ``dgstudy predict``)."""
    p = argparse.ArgumentParser(prog="dgstudy predict", description=PREDICT_HELP,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_arguments(p)
    return run_predict_command(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
