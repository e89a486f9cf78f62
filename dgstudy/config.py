"""The study's configuration: :class:`StudyConfig` (a profile), with a :class:`TrainConfig` nested.

A profile is a YAML file ``dgstudy/profiles/<name>.yaml`` with flat keys; :meth:`StudyConfig.load`
puts the keys that are ``TrainConfig`` fields into ``.train`` and the rest (which ablations, how
many bootstrap resamples, ...) into the study's own fields. An unknown key is an error, so a typo
in a profile or an override never passes silently. Every notebook's parameters are a profile name
and a dict of overrides: ``StudyConfig.load(profile, **overrides)``.

Two configurations per profile: ``.train``, the *reference* configuration that every ablation
varies (notebooks 03, 04, 05, 09), and :attr:`StudyConfig.main_train`, the *main run* (notebooks 02,
06, 07, 08): the reference with the profile's ``main`` overrides, the training choices adopted from
notebook 09 on validation folds. Without ``main`` overrides the two are one run.

Names defined here and nowhere else: :func:`run_name` (a run's folder under ``results/``),
:attr:`StudyConfig.main_train` (the main run's name) and :meth:`StudyConfig.output_tag` (the
folder of the chain's tables and figures).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from . import grids
from .paths import figures_dir, results_dir

PROFILE_DIR = Path(__file__).with_name("profiles")


def run_name(prefix: str, backbone: str, readout: str | None = None) -> str:
    """``<prefix>-<backbone>`` (prefix: the profile, or the dataset outside a profile), plus
    ``-<readout>`` for a readout other than the paper's ``deepgaze2``."""
    name = f"{prefix}-{backbone}"
    return name if readout in (None, "deepgaze2") else f"{name}-{readout}"


def describe_changes(overrides: dict) -> str:
    """``key=value, ...`` of TrainConfig overrides (a grid condition, a profile's ``main``)."""
    return ", ".join(f"{k}={v}" for k, v in overrides.items())


def resolve_device(device: str) -> str:
    """``'auto'`` -> ``'cuda'`` if available, else ``'cpu'``; anything else unchanged."""
    if device != "auto":
        return device
    import torch   # deferred on purpose: reading a profile should not import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


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
    nonlinearity: str = "relu"               # or 'softplus_layernorm' (the authors' later readout)
    readout_channels: list[int] | None = None   # None = the paper's 16, 32, 2, 1
    center_bias: str = "learned"             # or 'fixed', 'none'
    folds: int = 10
    seed: int = 0
    max_epochs: int = 60
    lr: float = 0.005
    batch_size: int = 8
    l1: float = 1e-4
    l1_layers: str = "all"                   # L1 on every readout conv, or on the 'first' only
    lr_milestones: list[int] | None = None   # epochs after which lr *= lr_gamma (None: constant lr)
    lr_gamma: float = 0.5
    flip: bool = False                       # every other batch mirrored: features, fixations, centre bias
    flip_source: str = "features"            # mirrored batches: the stored features mirrored (the same
                                             # likelihood: changes nothing but rounding), or the features
                                             # of the mirrored 'images' (a store of its own)
    init_seed: int = 0                       # an instance: seeds the init and batch order, not the split
    patience: int = 5
    device: str = "cpu"
    run: str | None = None                   # results/<run>/; None = run_name(dataset, backbone, readout)
    blur_sigma: float = 8.0                  # initial blur width, px of the reduced grid
    saliency_map_factor: int = 4
    train_resolution: str = "reduced"        # likelihood used for fitting: 'reduced' grid or 'full'
    num_threads: int | None = None           # torch intra-op threads while training (None: as is)
    scheduler: str | None = None             # where folds run: sync, local, tcp://... (dgstudy.tasks)

    def __post_init__(self):
        if not self.run:
            self.run = run_name(self.dataset, self.backbone, self.readout)
        self.device = resolve_device(self.device)
        if self.layers is not None:
            self.layers = [self.layers] if isinstance(self.layers, str) else list(self.layers)
        for key in ("readout_channels", "lr_milestones"):
            if isinstance(getattr(self, key), (list, tuple)):
                setattr(self, key, [_integer(key, v) for v in getattr(self, key)])
        check_train_values(self)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """From a saved ``to_dict()`` (keys a newer or older dgstudy wrote are ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


CHOICES = {   # the TrainConfig keys that take one of a few values, and those values
    "readout": ("deepgaze2", "deepgaze1"),
    "nonlinearity": ("relu", "softplus_layernorm"),
    "center_bias": ("learned", "fixed", "none"),
    "train_resolution": ("reduced", "full"),
    "feature_dtype": ("float16", "float32"),
    "flip_source": ("features", "images"),
    "l1_layers": ("all", "first"),
}


def _integer(key: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or int(v) != v:
        raise ValueError(f"{key}: expected an integer, got {v!r}")
    return int(v)


def check_train_values(t: TrainConfig) -> None:
    """ValueError naming the key unless every value of ``t`` has the right kind and range."""
    def fail(key, what):
        raise ValueError(f"{key}: {what}, got {getattr(t, key)!r}")

    for key, allowed in CHOICES.items():
        if getattr(t, key) not in allowed:
            fail(key, f"expected one of {', '.join(map(repr, allowed))}")
    for key, low in (("folds", 2), ("max_epochs", 1), ("batch_size", 1), ("patience", 1),
                     ("saliency_map_factor", 1), ("init_seed", 0), ("seed", 0)):
        if _integer(key, getattr(t, key)) < low:
            fail(key, f"expected an integer >= {low}")
    for key in ("n_images", "num_threads"):
        if getattr(t, key) is not None and _integer(key, getattr(t, key)) < 1:
            fail(key, "expected null or an integer >= 1")
    for key, positive in (("downsample", True), ("lr", True), ("blur_sigma", True), ("l1", False)):
        v = getattr(t, key)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not (v > 0 if positive else v >= 0):
            fail(key, "expected a number > 0" if positive else "expected a number >= 0")
    if isinstance(t.lr_gamma, bool) or not isinstance(t.lr_gamma, (int, float)) or not 0 < t.lr_gamma <= 1:
        fail("lr_gamma", "expected a number in (0, 1]")
    if not isinstance(t.flip, bool):
        fail("flip", "expected true or false")
    for key in ("dataset", "backbone", "device"):
        if not isinstance(getattr(t, key), str) or not getattr(t, key):
            fail(key, "expected a name")
    if not isinstance(t.dataset_options, dict):
        fail("dataset_options", "expected a mapping")
    if t.layers is not None and (not t.layers or not all(isinstance(x, str) for x in t.layers)):
        fail("layers", "expected null or a non-empty list of layer names")
    channels, milestones = t.readout_channels, t.lr_milestones
    if channels is not None and (not isinstance(channels, list) or not channels
                                 or any(_integer("readout_channels", c) < 1 for c in channels) or channels[-1] != 1):
        fail("readout_channels", "expected null or positive channel counts, the last 1")
    if milestones is not None and (not isinstance(milestones, list)
                                   or any(_integer("lr_milestones", m) < 1 for m in milestones)
                                   or milestones != sorted(set(milestones))):
        fail("lr_milestones", "expected null or increasing epochs >= 1")


TRAIN_KEYS = tuple(f.name for f in dataclasses.fields(TrainConfig))


_DERIVED = {"derived": True}     # StudyConfig fields that are not profile keys


@dataclass
class StudyConfig:
    """One profile of the study: the reference configuration (``train``), the main run's changes to
    it (``main``) and the ablation grids around them (:mod:`dgstudy.grids`: ``ablation_<grid>``
    replaces a grid, ``ablation_<grid>_extra`` adds to it)."""

    profile: str
    train: TrainConfig
    main: dict = field(default_factory=dict)        # TrainConfig overrides of the main run (notebook 09)
    run_prefix: str | None = None            # runs are <run_prefix or profile>-<backbone>...
    ablation_size: str = "full"              # the default layer grids: 'full', or 'small' (smoke)
    ablation_layers: list | dict | None = None      # None = ablations.layer_grid's default
    ablation_layers_extra: list | dict | None = None
    ablation_layers_from: str | None = None  # else: a profile (same data set and backbone) whose committed
                                             # layer table notebook 03 draws instead of training a grid
    ablation_vgg: str | None = None          # a VGG-19 whose layer grid runs beside the backbone's
    ablation_vgg_layers: list | dict | None = None  # that grid (None: the VGG default)
    ablation_vgg_layers_extra: list | dict | None = None
    ablation_vgg_from: str | None = None     # else: a profile whose committed VGG-19 layer table
                                             # notebook 03 draws beside this profile's stages
    ablation_centerbias: dict | None = None  # {condition: TrainConfig overrides}; None = the default grid
    ablation_centerbias_extra: dict | None = None
    ablation_backbones: list[str] | None = field(default_factory=list)   # compared with train.backbone
    ablation_backbones_extra: list[str] | None = None
    ablation_training: dict | None = None    # {condition: TrainConfig overrides}; None = the default grid
    ablation_training_extra: dict | None = None
    instances: int = 1                       # the main run trained with init seeds 0..n-1
    ensemble_backbones: list[str] | None = field(default_factory=list)   # non-empty: the main
                                             # result is the validation-chosen ensemble of these
                                             # backbones' main-configuration runs (DeepGaze IIE;
                                             # dgstudy.main_ensemble)
    ensemble_instances: int = 2              # init seeds per ensemble backbone (0..n-1)
    ensemble_from: str | None = None         # no ensemble_backbones: a profile whose committed main-
                                             # ensemble table notebook 10 shows instead
    reference_instances: int | None = None   # the reference run's instances when it is not the main
                                             # run (None: as many as the main run's)
    bootstrap: int = 1000                    # bootstrap resamples of every interval
    # not profile keys: where the profile came from and what the overrides changed (output_tag)
    files: tuple[Path, ...] = field(default=(), compare=False, metadata=_DERIVED)   # read_profile's files
    changes: dict = field(default_factory=dict, compare=False, metadata=_DERIVED)
    profile_backbone: str | None = field(default=None, compare=False, metadata=_DERIVED)

    @classmethod
    def load(cls, profile: str | Path, /, **overrides) -> "StudyConfig":
        """The profile ``profile`` (a name in ``dgstudy/profiles/``, or a YAML file's path; see
        :func:`read_profile` for ``extends``) with ``overrides``: any profile or TrainConfig key, an
        explicit None meaning null (not "keep"). Every key, every value and every condition of
        every grid is checked here (:func:`check_train_values`, :func:`dgstudy.grids.check`), so a
        typo fails before anything is extracted or trained, naming the key and the condition."""
        name, params, files = read_profile(profile)
        where = f"{files[0]}" + (" (or its overrides)" if overrides else "")
        if "profile" in overrides:
            raise KeyError(f"{where}: 'profile' is not an override: load another profile instead")
        cfg = cls._build(name, {**params, **overrides}, where)
        base = cfg if not overrides else cls._build(name, params, str(files[0]))
        changes = {k: v for k, v in overrides.items()
                   if k != "backbone" and _value(base, k) != _value(cfg, k)}
        return dataclasses.replace(cfg, files=tuple(files), changes=changes, profile_backbone=base.train.backbone)

    @classmethod
    def _build(cls, name: str, params: dict, where: str) -> "StudyConfig":
        study_keys = {f.name for f in dataclasses.fields(cls) if not f.metadata.get("derived")} - {"train", "profile"}
        unknown = sorted(set(params) - study_keys - set(TRAIN_KEYS))
        if unknown:
            raise KeyError(f"{where}: unknown keys {unknown}; known: {sorted(study_keys | set(TRAIN_KEYS))}")
        train = {k: v for k, v in params.items() if k in TRAIN_KEYS}
        if not train.get("run"):
            train["run"] = run_name(params.get("run_prefix") or name,
                                    train.get("backbone") or TrainConfig.backbone, train.get("readout"))
        study = {k: v for k, v in params.items() if k in study_keys}
        study["main"] = study.get("main") or {}
        if not isinstance(study["main"], dict):
            raise ValueError(f"{where}: main: expected a mapping of TrainConfig keys, got {study['main']!r}")
        main = set(study["main"])
        unknown = sorted(main - set(TRAIN_KEYS) | main & {"run", "feature_path"})
        if unknown:
            raise KeyError(f"{where}: main: {unknown} are not TrainConfig keys a main run may change")
        try:
            cfg = cls(profile=name, train=TrainConfig(**train), **study)
            for key, low in (("instances", 1), ("reference_instances", 1), ("bootstrap", 1),
                             ("ensemble_instances", 1)):
                v = getattr(cfg, key)
                if not (v is None and key == "reference_instances") and _integer(key, v) < low:
                    raise ValueError(f"{key}: expected an integer >= {low}, got {v!r}")
            grids.check(cfg)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{where}: {e}") from None
        return cfg

    @property
    def main_train(self) -> TrainConfig:
        """The main run: ``train`` with the ``main`` overrides, named ``<train.run>-main``; ``train``
        itself when there are none."""
        if not self.main:
            return self.train
        reads_other_features = bool(set(self.main) & {"backbone", "layers", "downsample", "feature_dtype"})
        return self.with_train(run=f"{self.train.run}-main", **self.main,
                               **({"feature_path": None} if reads_other_features else {}))

    def with_train(self, **changes) -> TrainConfig:
        """A copy of ``train`` with ``changes`` (e.g. another run, layers or backbone)."""
        return dataclasses.replace(self.train, **changes)

    @property
    def output_tag(self) -> str:
        """The folder of this configuration's tables, figures and executed notebooks: ``<profile>``;
        ``-<backbone>`` added when the backbone is not the profile's own; ``+<8 hex digits>``
        (:func:`changes_hash`) when other overrides change the profile, so that only the profile
        run as it is writes the profile's own outputs."""
        tag = self.profile
        if self.profile_backbone is not None and self.train.backbone != self.profile_backbone:
            tag += f"-{self.train.backbone}"
        return f"{tag}+{changes_hash(self.changes)}" if self.changes else tag

    def output_dir(self) -> Path:
        """``results/<output_tag>/`` (created): the chain's tables and executed notebooks; with
        overrides, their record ``overrides.yaml`` in it."""
        d = results_dir() / self.output_tag
        d.mkdir(parents=True, exist_ok=True)
        if self.changes:
            text = yaml.safe_dump({"profile": self.profile, "overrides": self.changes}, sort_keys=True)
            record = d / "overrides.yaml"
            if not record.exists() or record.read_text() != text:
                tmp = record.with_suffix(".yaml.tmp")
                tmp.write_text(text)
                tmp.replace(record)
        return d

    def figure_dir(self) -> Path:
        """``figures/<output_tag>/`` (created)."""
        d = figures_dir() / self.output_tag
        d.mkdir(parents=True, exist_ok=True)
        return d


def _value(cfg: StudyConfig, key: str):
    return getattr(cfg.train, key) if key in TRAIN_KEYS else getattr(cfg, key)


def changes_hash(changes: dict) -> str:
    """8 hex digits of SHA-256 over the canonical JSON of ``changes`` (the output tag's suffix)."""
    text = json.dumps(changes, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:8]


# -- profile files ---------------------------------------------------------------------------------
def profile_names() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))


def is_profile_file(profile: str | Path) -> bool:
    """Whether ``profile`` names a file (a path, or a name ending in ``.yaml``/``.yml``) rather than a
    profile in ``dgstudy/profiles/``."""
    s = str(profile)
    return isinstance(profile, Path) or "/" in s or os.sep in s or s.endswith((".yaml", ".yml"))


def profile_path(profile: str | Path, relative_to: Path | None = None) -> Path:
    """The YAML file of ``profile``: ``dgstudy/profiles/<name>.yaml`` for a name, else the path
    (a relative one taken from ``relative_to``, default the working directory). KeyError if none."""
    if is_profile_file(profile):
        p = Path(profile).expanduser()
        p = (relative_to / p if relative_to is not None and not p.is_absolute() else p).resolve()
        if not p.is_file():
            raise KeyError(f"profile file {p} does not exist")
        return p
    p = PROFILE_DIR / f"{profile}.yaml"
    if not p.exists():
        raise KeyError(f"unknown profile {profile!r}; available: {', '.join(profile_names())}, "
                       "or the path of a YAML file")
    return p


def read_profile(profile: str | Path) -> tuple[str, dict, list[Path]]:
    """(name, keys, files) of a profile. A file may say ``extends: <profile or path>`` (a relative
    path is taken from the file's folder): its keys then change those of that profile, which may
    extend another in turn. The name is the file's own ``profile:`` key, else its file name without
    ``.yaml``; it is never inherited. ``files``: this file first, then those it extends."""
    files: list[Path] = []

    def read(p: Path) -> dict:
        if p in files:
            raise ValueError(f"{files[0]}: profiles extend each other in a circle: "
                             f"{' -> '.join(map(str, files + [p]))}")
        files.append(p)
        try:
            keys = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ValueError(f"{p}: not valid YAML: {e}") from None
        if not isinstance(keys, dict):
            raise ValueError(f"{p}: a profile is a mapping of keys, got {type(keys).__name__}")
        parent = keys.pop("extends", None)
        if parent is None:
            return keys
        inherited = read(profile_path(parent, relative_to=p.parent))
        inherited.pop("profile", None)
        return {**inherited, **keys}

    path = profile_path(profile)
    keys = read(path)
    name = str(keys.pop("profile", None) or path.stem)
    return name, keys, files

