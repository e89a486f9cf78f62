"""A trained run as a model for any image: :func:`load_model` and :class:`Predictor`.

* A prediction is a **natural-log density** over the pixels of the image, shape ``(H, W)``,
  ``exp`` sums to 1 — the same convention as every model in dgstudy.
* Images are read by :func:`dgstudy.imageio.read_rgb` (EXIF orientation applied, grayscale to RGB,
  alpha composited on white): coordinates refer to the image as displayed.
* A run with several folds is combined as the paper does for MIT300: the **average of the fold
  densities** (:func:`dgstudy.ensemble.average_log_densities`). With one fold the prediction is
  exactly that fold's, so ``load_model(run, fold=k)`` reproduces the values the training
  evaluation (:class:`dgstudy.runs.CrossValModel`) gives for the images held out by fold ``k``
  (feature store extracted with ``batch_size=1`` on the same kind of device; stimuli without
  EXIF rotation).
* The backbone is rebuilt from what the run records (:func:`dgstudy.runs.feature_spec`), and must
  be the network it was trained on (architecture and weights), else :class:`DataError`.
* **Scale** (``scale=`` of :func:`load_model` and of ``log_density``): ``'training'`` (default)
  predicts each image at the run's training scale (:func:`dgstudy.runs.training_scale`: the
  pixel area of its training images): the image is resampled to that area, same aspect ratio
  (:mod:`dgstudy.rescale`), predicted there (fold densities averaged there) and the density is
  mapped back to the image's own pixels, normalised over them. ``'native'`` predicts at the size
  given; a number is a pixel area to predict at. An image already at the scale (e.g. an 800x600
  image for an OSIE run) is predicted exactly as ``'native'``. Cost and memory of a large image
  are those of a training-size one plus the final resampling.
"""
from __future__ import annotations

import json
import math
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from . import backbones, features, pretrained
from .baselines import uniform_log_density
from .ensemble import average_log_densities
from .imageio import read_rgb
from .io import DataError
from .rescale import resample_log_density, resize_image, working_size
from .runs import FeatureSpec, feature_spec, find_fold_dirs, load_fold, resolve_run_path, training_scale

SCALES = ("training", "native")
CB_CACHE_SIZES = 2        # image sizes whose fold centre biases a Predictor keeps


def parse_scale(scale):
    """``'training'``, ``'native'`` or a positive pixel area (float; numeric strings accepted, as
    from the command line); anything else: ValueError."""
    if isinstance(scale, str) and scale in SCALES:
        return scale
    try:
        area = float(scale)
    except (TypeError, ValueError):
        raise ValueError(f"scale must be 'training', 'native' or a pixel area (a number, e.g. 480000 "
                         f"for 800x600), got {scale!r}") from None
    if not (math.isfinite(area) and area > 0):
        raise ValueError(f"a scale given as a pixel area must be a positive number, got {scale!r}")
    return area


# ----------------------------------------------------------------------------------------------
# The predictor
# ----------------------------------------------------------------------------------------------
@dataclass
class FoldMember:
    """One trained fold: its readout model and the centre bias of its training images."""

    name: str                      # e.g. "fold_03"
    model: object                  # dgstudy.model.DeepGazeII (torch module, eval mode)
    center_bias: object | None     # dgstudy.baselines.CenterBias (None if not recorded)


class Predictor:
    """A trained run as a model for any image: ``log_density(image) -> (H, W)`` natural-log density.

    ``image`` is an RGB array or a path (see :func:`read_rgb`); the result is float32 (the
    readout's precision). Built by :func:`load_model`. ``center_bias`` is ``'training'`` (each fold's
    own training centre bias, rescaled to the image), ``'uniform'``, an (H, W) log-density array
    (resampled to other sizes, renormalised), an object with ``log_density_for_size(h, w)`` (e.g. a
    :class:`dgstudy.baselines.CenterBias`) or a callable ``(h, w) -> log-density``.
    """

    def __init__(self, members: list[FoldMember], backbone, spec: FeatureSpec,
                 center_bias="training", device: str = "cpu", run_dir: Path | None = None,
                 scale="native", fold_dirs: Sequence[Path] | None = None):
        if not members:
            raise ValueError("a Predictor needs at least one fold model")
        self.members = members
        self.backbone = backbone
        self.spec = spec
        self.center_bias = center_bias
        self.device = device
        self.run_dir = run_dir
        self.fold_dirs = list(fold_dirs) if fold_dirs is not None else None
        self._cb_cache: OrderedDict = OrderedDict()
        self.scale, self.pixel_area = self._resolve_scale(scale)
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
        scale = self.scale if self.pixel_area is None else f"{self.scale} ({self.pixel_area:.0f} px)"
        return (f"Predictor({self.run_dir}, folds={[m.name for m in self.members]}, "
                f"backbone={self.spec.backbone}, layers={self.spec.layers}, downsample={self.spec.downsample}, "
                f"dtype={self.spec.dtype}, center_bias={cb}, scale={scale}, device={self.device})")

    # -- scale ----------------------------------------------------------------------------------
    def _resolve_scale(self, scale) -> tuple[str, float | None]:
        """(label, pixel area to predict at, None = native) for a ``scale`` argument."""
        scale = parse_scale(scale)
        if scale == "native":
            return "native", None
        if scale == "training":
            if getattr(self, "scale", None) == "training":
                return "training", self.pixel_area
            if not self.fold_dirs:
                raise ValueError("this Predictor was built without its run's folders, so it knows no "
                                 "training scale; give scale='native' or a pixel area")
            return "training", training_scale(self.fold_dirs)
        return "pixel_area", scale

    def working_size(self, h: int, w: int, scale=None) -> tuple[int, int]:
        """The size an (h, w) image is predicted at (:func:`dgstudy.rescale.working_size`)."""
        area = self.pixel_area if scale is None else self._resolve_scale(scale)[1]
        return working_size(h, w, area)

    def scale_record(self, h: int, w: int, scale=None) -> dict:
        """What the prediction of an (h, w) image used, for output metadata: ``scale`` (training,
        native or pixel_area), ``pixel_area`` (None for native), ``size`` and ``predicted_at`` (h, w)."""
        label, area = (self.scale, self.pixel_area) if scale is None else self._resolve_scale(scale)
        return {"scale": label, "pixel_area": area, "size": [int(h), int(w)],
                "predicted_at": list(working_size(h, w, area))}

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
        return resample_log_density(cb, h, w)

    def _member_center_biases(self, h: int, w: int) -> list[torch.Tensor]:
        """Each fold's log centre bias at (h, w) as a float32 tensor on the device.

        Folds whose centre bias is one object (a shipped ensemble's members of one fold), and all
        folds under a ``center_bias`` given to the Predictor, share one tensor. The last
        ``CB_CACHE_SIZES`` sizes are kept (consecutive images of one size reuse them); the
        parts of an :class:`~dgstudy.predict_ensemble.EnsemblePredictor` share one cache."""
        key = (int(h), int(w))
        if key not in self._cb_cache:
            self._cb_cache[key] = {}
            while len(self._cb_cache) > CB_CACHE_SIZES:
                self._cb_cache.popitem(last=False)
        self._cb_cache.move_to_end(key)
        by_source = self._cb_cache[key]
        own = isinstance(self.center_bias, str) and self.center_bias == "training"
        out = []
        for m in self.members:
            source = id(m.center_bias) if own else id(self.center_bias)
            if source not in by_source:
                by_source[source] = torch.from_numpy(np.ascontiguousarray(
                    self._member_center_bias(m, h, w), dtype=np.float32)).to(self.device)
            out.append(by_source[source])
        return out

    def center_bias_log_density(self, h: int, w: int, scale=None) -> np.ndarray:
        """The centre bias the model uses for an (h, w) image (fold centre biases averaged), at the
        working size and mapped to (h, w) like the prediction.

        This is also the baseline of the information gain in :func:`predict_images`.
        """
        size = self.working_size(h, w, scale)
        cb = average_log_densities([self._member_center_bias(m, *size).astype(np.float64)
                                    for m in self.members])
        return resample_log_density(cb, h, w)

    # -- features and prediction ----------------------------------------------------------------
    def features(self, rgb: np.ndarray) -> np.ndarray:
        """The stacked readout input (C, h, w) float32, exactly as the feature store gives it."""
        return features.compute_stacked(self.backbone, rgb, self.spec.layers, self.spec.downsample,
                                        self.spec.dtype, autocast_bf16=self.spec.autocast_bf16,
                                        pool_stride=self.spec.pool_stride)

    def _working_image(self, image, scale) -> tuple[np.ndarray, tuple[int, int]]:
        """(the image resampled to its working size, its original (H, W))."""
        rgb = read_rgb(image)
        size = tuple(rgb.shape[:2])
        return resize_image(rgb, self.working_size(*size, scale)), size

    def _iter_working(self, rgb: np.ndarray):
        """Each fold's float32 log-density over the pixels of ``rgb`` (features computed once)."""
        h, w = rgb.shape[:2]
        x = torch.from_numpy(np.ascontiguousarray(self.features(rgb), dtype=np.float32))[None].to(self.device)
        x = x.contiguous(memory_format=torch.channels_last)   # the readout's 1x1 convs read it in place
        with torch.no_grad():
            for m, cb in zip(self.members, self._member_center_biases(h, w)):
                yield m.model(x, cb[None])[0].detach().cpu().numpy()

    def iter_fold_log_densities(self, image, scale=None):
        """Yield each fold's (H, W) float32 log-density for ``image`` (features computed once;
        each mapped from the working size to (H, W))."""
        rgb, (h, w) = self._working_image(image, scale)
        for ld in self._iter_working(rgb):
            yield resample_log_density(ld, h, w, np.float32)

    def log_densities_per_fold(self, image, scale=None) -> list[np.ndarray]:
        """Each fold's (H, W) log-density for ``image``."""
        return list(self.iter_fold_log_densities(image, scale))

    def log_density(self, image, scale=None) -> np.ndarray:
        """(H, W) float32 natural-log density for ``image`` (array or path) at ``scale`` (default:
        the Predictor's; see the module docstring).

        The average of the fold densities at the working size
        (:func:`dgstudy.ensemble.average_log_densities`, fold by fold, so memory does not grow with
        K; one fold is returned unchanged), then mapped to (H, W)
        (:func:`dgstudy.rescale.resample_log_density`, normalised over the image's pixels).
        """
        rgb, (h, w) = self._working_image(image, scale)
        ld = average_log_densities(self._iter_working(rgb))
        return resample_log_density(ld, h, w, ld.dtype)

    __call__ = log_density

    def single_folds(self) -> dict[int, "Predictor"]:
        """{fold number: a Predictor of that fold alone}, sharing this one's backbone, centre-bias
        choice and scale (a ``'training'`` scale is each fold's own): e.g. to predict each image of
        the training data set with the fold that held it out."""
        out = {}
        for k, m in enumerate(self.members):
            dirs = [self.fold_dirs[k]] if self.fold_dirs else None
            scale = self.scale if self.scale in SCALES else self.pixel_area
            out[int(m.name.split("_")[-1])] = Predictor(
                [m], self.backbone, self.spec, center_bias=self.center_bias, device=self.device,
                run_dir=self.run_dir, scale=scale, fold_dirs=dirs)
        return out


def _backbone_options(spec: FeatureSpec) -> dict:
    """Builder options implied by the recorded hash (the seed of a randomly initialised network)."""
    h = spec.weights_sha256 or ""
    if h.startswith("random-seed") and ":" in h:
        return {"seed": int(h[len("random-seed"):h.index(":")])}
    return {}


def load_model(run=None, fold: int | Sequence[int] | None = None, center_bias="training",
               device: str = "cpu", weights=None, scale="training") -> Predictor:
    """A trained run as a model for any image (see :class:`Predictor`).

    ``run``: None or a shipped model's name (``"osie"``, :mod:`dgstudy.pretrained`: the default
    model, inside the package), a run folder ``results/<run>/`` (all trained folds, averaged as
    densities), a name under ``results/``, one fold folder ``results/<run>/fold_XX/`` or its
    ``model.pt``. A folder with an ``ensemble.json`` (an evaluated ensemble, or a shipped one) is
    loaded as an :class:`dgstudy.predict_ensemble.EnsemblePredictor` (``fold``: one fold's chosen
    members; ``weights``: {backbone: local weights file}).

    ``scale``: ``'training'`` (default: each image predicted at the run's training scale,
    :func:`dgstudy.runs.training_scale`), ``'native'`` (at its own size) or a pixel area; see the
    module docstring. A run that records no training scale and whose data set does not load here
    raises :class:`DataError` saying how to give one.

    ``fold``: restrict a
    run folder to one fold (or a list of folds). ``center_bias``: ``'training'`` | ``'uniform'`` | an
    (H, W) log-density array | a callable ``(h, w) -> log-density``. ``weights``: passed to
    ``dgstudy.backbones.get`` (a local weights file). The backbone is rebuilt from the recorded
    feature configuration (backbone, layers, downsample, dtype) and its weights hash must equal the
    recorded one (else :class:`DataError`).
    """
    where = resolve_run_path(pretrained.DEFAULT if run is None else run)
    if where.is_dir() and (where / "ensemble.json").exists():      # an ensemble of runs
        from .predict_ensemble import load_ensemble
        if weights is not None and not isinstance(weights, dict):
            raise ValueError(f"{where} is an ensemble over several backbones: give weights as "
                             "{backbone: local weights file}")
        ens = load_ensemble(where, center_bias=center_bias, device=device, scale=scale, weights_files=weights)
        if fold is None:
            return ens
        if not isinstance(fold, (int, np.integer)):
            raise ValueError(f"{where}: an ensemble is restricted to one fold at a time, got fold={fold!r}")
        one = ens.single_folds()
        if int(fold) not in one:
            raise DataError(f"{where}: no fold {fold}; its folds are {sorted(one)}")
        return one[int(fold)]
    run_dir, fold_dirs = find_fold_dirs(where, fold)
    members, specs = [], []
    for d in fold_dirs:
        model, cfg, cb = load_fold(d)
        specs.append(feature_spec(d, cfg, backbones.default_layers(cfg.backbone)))
        members.append(FoldMember(name=d.name, model=model.to(device).eval(), center_bias=cb))
    spec = specs[0]
    for d, s in zip(fold_dirs, specs):
        if s.key() != spec.key():
            raise DataError(f"{d}: its features ({s}) differ from those of {fold_dirs[0]} ({spec}); "
                            "the folds of one ensemble must share backbone, weights, layers, downsample "
                            "and dtype")
    backbone = backbones.get(spec.backbone, weights=weights, device=device, **_backbone_options(spec))
    check_backbone(backbone, spec, fold_dirs)
    predictor = Predictor(members, backbone, spec, center_bias=center_bias, device=device, run_dir=run_dir,
                          scale=scale, fold_dirs=fold_dirs)
    prov = Path(run_dir) / "provenance.json"      # shipped models (dgstudy.pretrained) record one
    predictor.provenance = json.loads(prov.read_text()) if prov.exists() else None
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
