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
from dataclasses import dataclass, field
from pathlib import Path

import yaml

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
            self.layers = list(self.layers)
        if self.flip_source not in ("features", "images"):
            raise ValueError(f"flip_source must be 'features' or 'images', got {self.flip_source!r}")
        if self.l1_layers not in ("all", "first"):
            raise ValueError(f"l1_layers must be 'all' or 'first', got {self.l1_layers!r}")
        for key in ("readout_channels", "lr_milestones"):
            if getattr(self, key) is not None:
                setattr(self, key, [int(v) for v in getattr(self, key)])

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """From a saved ``to_dict()`` (keys a newer or older dgstudy wrote are ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


TRAIN_KEYS = tuple(f.name for f in dataclasses.fields(TrainConfig))


@dataclass
class StudyConfig:
    """One profile of the study: the reference configuration (``train``), the main run's changes to
    it (``main``) and which ablations surround them."""

    profile: str
    train: TrainConfig
    main: dict = field(default_factory=dict)        # TrainConfig overrides of the main run (notebook 09)
    run_prefix: str | None = None            # runs are <run_prefix or profile>-<backbone>...
    ablation_layers: list | dict | None = None      # None = ablations.layer_grid's default
    ablation_backbones: list[str] = field(default_factory=list)   # compared with train.backbone
    ablation_vgg: str | None = None          # a VGG-19 whose layer grid runs beside the backbone's
    ablation_vgg_from: str | None = None     # else: a profile whose committed VGG-19 layer table
                                             # notebook 03 draws beside this profile's stages
    ablation_training: dict | None = None    # {condition: TrainConfig overrides}; None = the default grid
    instances: int = 1                       # the main run trained with init seeds 0..n-1
    reference_instances: int | None = None   # the reference run's instances when it is not the main
                                             # run (None: as many as the main run's)
    bootstrap: int = 1000                    # bootstrap resamples of every interval

    @classmethod
    def load(cls, profile: str, **overrides) -> "StudyConfig":
        """The profile ``profile`` with ``overrides`` (any profile or TrainConfig key; None = keep)."""
        params = yaml.safe_load(profile_path(profile).read_text()) or {}
        params.update({k: v for k, v in overrides.items() if v is not None})
        study_keys = {f.name for f in dataclasses.fields(cls)} - {"train"}
        unknown = sorted(set(params) - study_keys - set(TRAIN_KEYS))
        if unknown:
            raise KeyError(f"{profile_path(profile)} (or its overrides): unknown keys {unknown}; "
                           f"known: {sorted(study_keys | set(TRAIN_KEYS))}")
        train = {k: v for k, v in params.items() if k in TRAIN_KEYS and v is not None}
        if not train.get("run"):
            train["run"] = run_name(params.get("run_prefix") or params["profile"],
                                    train.get("backbone", TrainConfig.backbone), train.get("readout"))
        study = {k: v for k, v in params.items() if k in study_keys and v is not None}
        main = set(study.get("main") or {})
        unknown = sorted(main - set(TRAIN_KEYS) | main & {"run", "feature_path"})
        if unknown:
            raise KeyError(f"{profile_path(profile)} (or its overrides): main: {unknown} are not "
                           f"TrainConfig keys a main run may change")
        return cls(train=TrainConfig(**train), **study)

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
        """``<profile>``, or ``<profile>-<backbone>`` when the backbone is not the profile's own."""
        own = (yaml.safe_load(profile_path(self.profile).read_text()) or {}).get("backbone",
                                                                                  TrainConfig.backbone)
        return self.profile if self.train.backbone == own else f"{self.profile}-{self.train.backbone}"

    def output_dir(self) -> Path:
        """``results/<output_tag>/`` (created): the chain's tables and executed notebooks."""
        d = results_dir() / self.output_tag
        d.mkdir(parents=True, exist_ok=True)
        return d

    def figure_dir(self) -> Path:
        """``figures/<output_tag>/`` (created)."""
        d = figures_dir() / self.output_tag
        d.mkdir(parents=True, exist_ok=True)
        return d


def profile_names() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))


def profile_path(name: str) -> Path:
    p = PROFILE_DIR / f"{name}.yaml"
    if not p.exists():
        raise KeyError(f"unknown profile {name!r}; available: {', '.join(profile_names())}")
    return p
