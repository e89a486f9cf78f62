"""The ablation grids a profile defines, and the one rule for changing them.

Every grid is a profile key, ``ablation_<name>``, and can be added to with ``ablation_<name>_extra``:

========================  ===========================================  ==============================
grid (notebook)           ``ablation_<name>``: the grid (null: default)  ``ablation_<name>_extra``
========================  ===========================================  ==============================
``layers`` (03)           layer names, or {condition: [layers]}         the same, added
``vgg_layers`` (03)       the same, for the VGG-19 grid (``ablation_vgg``) the same, added
``centerbias`` (04)       {condition: TrainConfig changes}              {condition: changes}, added
``backbones`` (05)        backbone names (null: none)                   backbone names, added
``training`` (09)         {condition: TrainConfig changes}              {condition: changes}, added
========================  ===========================================  ==============================

``ablation_size`` (``full`` or ``small``) says how large the default layer grids are (``small``: the
default layer set and one other layer; the smoke profile's). An ``_extra`` condition whose name is
already in the grid must have the same settings (else it is an error: rename it, or replace the grid).

This module reads only the profile's values: it imports no torch and no other part of dgstudy, so
that :meth:`dgstudy.config.StudyConfig.load` can check every condition of every grid
(:func:`check`) before anything is extracted or trained. The layer grids need the backbone's
layers and are built in :func:`dgstudy.ablations.layer_grid`.
"""
from __future__ import annotations

import dataclasses
import re

GRID_NAMES = ("layers", "vgg_layers", "centerbias", "backbones", "training")
ABLATION_SIZES = ("full", "small")

CENTER_BIAS_CONDITIONS = {
    # name: TrainConfig changes of the reference run ({} = the reference run itself)
    "none": {"center_bias": "none"},
    "fixed": {"center_bias": "fixed"},
    "learned": {},
    "deepgaze1": {"readout": "deepgaze1"},
}

TRAINING_CONDITIONS = {
    # name: TrainConfig changes of the reference run (the default grid; docs/ablations.md)
    "ds1": {"downsample": 1},
    "flip": {"flip": True},
    "flip_images": {"flip": True, "flip_source": "images"},
    "l1_first": {"l1_layers": "first"},
    "adam_step": {"lr": 0.001, "lr_milestones": [3, 6, 9, 12, 15, 18, 21, 24]},
    "softplus_ln": {"nonlinearity": "softplus_layernorm"},
    "blur4": {"blur_sigma": 4.0},      # the blur's initial width (default 8 cells): early stopping
    "blur16": {"blur_sigma": 16.0},    # ends training before sigma converges (docs/training.md)
}

NOT_A_CONDITION_KEY = ("run", "feature_path")   # a condition's run and store are derived from its name
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.]*")


class GridError(ValueError):
    """A grid or one of its conditions is not valid; the message names the key and the condition."""


def with_extra(key: str, grid: dict, extra: dict | None) -> dict:
    """``grid`` with the conditions of ``extra`` (the profile's ``<key>_extra``) added after it."""
    out = dict(grid)
    for name, value in (extra or {}).items():
        if name in out and out[name] != value:
            raise GridError(f"{key}_extra: condition {name!r} is already in the grid as {out[name]!r}, "
                            f"not {value!r}; give it another name, or replace the grid with {key}")
        out[name] = value
    return out


def layer_conditions(key: str, value) -> dict[str, list[str]] | None:
    """A layer grid's profile value as {condition: [layers]}: None stays None (the default grid), a
    list gives one single-layer condition per layer, a dict is used as given (a single layer name
    standing for a one-layer list)."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        value = {layer: [layer] for layer in value}
    if not isinstance(value, dict):
        raise GridError(f"{key}: expected a list of layer names or a mapping {{condition: [layers]}}, "
                        f"got {value!r}")
    out = {}
    for name, layers in value.items():
        layers = [layers] if isinstance(layers, str) else layers
        if not isinstance(layers, (list, tuple)) or not layers or not all(isinstance(x, str) for x in layers):
            raise GridError(f"{key}: condition {name!r}: expected a non-empty list of layer names, got {layers!r}")
        out[_condition_name(key, name)] = list(layers)
    return out


def change_conditions(key: str, value) -> dict[str, dict]:
    """A grid of TrainConfig changes ({condition: {key: value}}), checked for its form."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise GridError(f"{key}: expected a mapping {{condition: {{TrainConfig key: value}}}}, got {value!r}")
    out = {}
    for name, changes in value.items():
        changes = {} if changes is None else changes
        if not isinstance(changes, dict):
            raise GridError(f"{key}: condition {name!r}: expected a mapping of TrainConfig keys, got {changes!r}")
        out[_condition_name(key, name)] = dict(changes)
    return out


def _condition_name(key: str, name) -> str:
    name = str(name)
    if not _NAME.fullmatch(name):
        raise GridError(f"{key}: condition name {name!r}: use letters, digits, '_' and '.' (it names a run folder)")
    return name


def center_bias_grid(cfg) -> dict[str, dict]:
    """Notebook 04's conditions, {condition: TrainConfig changes}: ``ablation_centerbias`` (null:
    :data:`CENTER_BIAS_CONDITIONS`) plus ``ablation_centerbias_extra``. The condition without changes
    is the reference run; when the grid has none, one is added as ``reference``."""
    grid = CENTER_BIAS_CONDITIONS if cfg.ablation_centerbias is None else cfg.ablation_centerbias
    grid = with_extra("ablation_centerbias", change_conditions("ablation_centerbias", grid),
                      change_conditions("ablation_centerbias_extra", cfg.ablation_centerbias_extra))
    return grid if any(not c for c in grid.values()) else {"reference": {}, **grid}


def reference_condition(grid: dict[str, dict]) -> str:
    """The condition of a grid of changes that is the reference run (the first without changes)."""
    return next(name for name, changes in grid.items() if not changes)


def training_grid(cfg) -> dict[str, dict]:
    """Notebook 09's conditions, {condition: TrainConfig changes of the reference run}: ``default``
    (the reference run, no changes), ``ablation_training`` (null: :data:`TRAINING_CONDITIONS`) plus
    ``ablation_training_extra`` and, when the profile has ``main`` changes that no condition has
    already, ``main``."""
    grid = TRAINING_CONDITIONS if cfg.ablation_training is None else cfg.ablation_training
    grid = {"default": {}, **change_conditions("ablation_training", grid)}
    grid = with_extra("ablation_training", grid, change_conditions("ablation_training_extra",
                                                                   cfg.ablation_training_extra))
    if cfg.main and dict(cfg.main) not in grid.values():
        grid["main"] = dict(cfg.main)
    return grid


def backbone_grid(cfg) -> list[str]:
    """Notebook 05's backbones: the reference's first, then ``ablation_backbones`` and
    ``ablation_backbones_extra`` (each once)."""
    names = []
    for key in ("ablation_backbones", "ablation_backbones_extra"):
        value = getattr(cfg, key) or []
        if isinstance(value, str) or not all(isinstance(v, str) for v in value):
            raise GridError(f"{key}: expected a list of backbone names, got {value!r}")
        names += value
    return list(dict.fromkeys([cfg.train.backbone, *names]))


def check(cfg) -> None:
    """Check every grid of ``cfg`` (a :class:`~dgstudy.config.StudyConfig`): the form of every
    grid, and every condition of the centre-bias and training grids and the main run as the
    TrainConfig it makes (its keys and every value, ``TrainConfig.__post_init__``). A
    :class:`GridError` names the key and the condition. Backbone and layer names need the
    backbones: :func:`dgstudy.ablations.check_conditions` checks them (through
    :func:`dgstudy.ablations.profile_runs`, before notebook 01 extracts anything)."""
    if cfg.ablation_size not in ABLATION_SIZES:
        raise GridError(f"ablation_size: {cfg.ablation_size!r} is not one of {', '.join(ABLATION_SIZES)}")
    for key in ("ablation_layers", "ablation_layers_extra", "ablation_vgg_layers", "ablation_vgg_layers_extra"):
        layer_conditions(key, getattr(cfg, key))
    for extra, key in (("ablation_layers_extra", "ablation_layers"),
                       ("ablation_vgg_layers_extra", "ablation_vgg_layers")):
        base = layer_conditions(key, getattr(cfg, key))
        if base is not None:
            with_extra(key, base, layer_conditions(extra, getattr(cfg, extra)))
    backbone_grid(cfg)
    keys = {f.name for f in dataclasses.fields(cfg.train)}
    grids = {"ablation_centerbias": center_bias_grid(cfg), "ablation_training": training_grid(cfg)}
    for key, grid in grids.items():
        for name, changes in grid.items():
            where = f"{key}: condition {name!r}"
            if key == "ablation_training" and name == "main" and changes == dict(cfg.main):
                where = "main"
            bad = sorted(set(changes) - keys | set(changes) & set(NOT_A_CONDITION_KEY))
            if bad:
                raise GridError(f"{where}: {bad} are not TrainConfig keys a condition may change")
            try:
                dataclasses.replace(cfg.train, **changes)
            except (TypeError, ValueError) as e:
                raise GridError(f"{where}: {e}") from None

