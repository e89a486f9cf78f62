"""The registry of backbones and the named-stage network they all are (:class:`SequentialBackbone`).

Backbone modules (one file per backbone family) import :func:`register` and
:class:`SequentialBackbone` from here; :mod:`dgstudy.backbones` imports those modules, so every
registered name is available once the package is imported.
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Callable, Sequence

import torch
from torch import nn

from . import geometry

_REGISTRY: dict[str, Callable[..., "SequentialBackbone"]] = {}
_DEFAULT_LAYERS: dict[str, list[str]] = {}
_ARCHITECTURE: dict[str, str] = {}


def register(name: str, default_layers: Sequence[str], architecture: str):
    """Register a builder under ``name``; the network it builds must report ``architecture``."""
    def deco(fn):
        _REGISTRY[name] = fn
        _DEFAULT_LAYERS[name] = list(default_layers)
        _ARCHITECTURE[name] = architecture
        return fn
    return deco


def _known(name: str) -> str:
    if name not in _REGISTRY:
        raise KeyError(f"unknown backbone {name!r}; available: {', '.join(sorted(_REGISTRY))}")
    return name


def default_layers(name: str) -> list[str]:
    """The default layer set of backbone ``name``, without building the network."""
    return list(_DEFAULT_LAYERS[_known(name)])


def architecture(name: str) -> str:
    """The architecture string of backbone ``name``, without building the network."""
    return _ARCHITECTURE[_known(name)]


def architecture_id(backbone: "str | SequentialBackbone") -> str:
    """8 hex digits of SHA-256 over the architecture string of ``backbone`` (a registered name, or
    a backbone object): part of feature-store file names."""
    arch = architecture(backbone) if isinstance(backbone, str) else backbone.architecture
    return hashlib.sha256(arch.encode()).hexdigest()[:8]


def available() -> list[str]:
    return sorted(_REGISTRY)


def get(name: str, weights=None, device: str | torch.device = "cpu", **options) -> "SequentialBackbone":
    """The backbone ``name`` in eval mode, frozen, on ``device``.

    ``weights``: a path to a weights file (for ``vgg19``; overrides ``$DGSTUDY_VGG19_WEIGHTS``).
    Other ``options`` go to the builder (e.g. ``download=False`` for vgg19, ``seed=`` for
    vgg19_random).
    """
    bb = _REGISTRY[_known(name)](weights=weights, **options)
    if bb.architecture != _ARCHITECTURE[name]:
        raise RuntimeError(f"{name}: built {bb.architecture!r}, registered as {_ARCHITECTURE[name]!r}")
    return bb.to(device).eval().requires_grad_(False)


def network_id(architecture: str, weights_sha256: str) -> str:
    """12 hex digits of SHA-256 over ``architecture`` and ``weights_sha256``: equal ids, equal network."""
    return hashlib.sha256(f"{architecture}\n{weights_sha256}".encode()).hexdigest()[:12]


def tensors_sha256(state: dict) -> str:
    """SHA-256 over the names, shapes and float32 bytes of a state dict (order as given)."""
    h = hashlib.sha256()
    for k, v in state.items():
        h.update(k.encode())
        h.update(str(tuple(v.shape)).encode())
        h.update(v.detach().to(torch.float32).contiguous().cpu().numpy().tobytes())
    return h.hexdigest()


class SequentialBackbone(nn.Module):
    """A frozen feature extractor made of named stages (see the module docstring)."""

    def __init__(self, name: str, stages: "OrderedDict[str, nn.Module]", mean: Sequence[float],
                 std: Sequence[float], default_layers: Sequence[str], strides: dict[str, int],
                 weights_sha256: str, weights_source: str, architecture: str):
        super().__init__()
        self.name = name
        self.architecture = architecture
        self.stages = nn.Sequential(stages)
        self.layer_names = list(stages)
        self.default_layers = list(default_layers)
        self.strides = dict(strides)
        self.weights_sha256 = weights_sha256
        self.weights_source = weights_source
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))
        self._index = {n: k for k, n in enumerate(self.layer_names)}
        self._geometry = {}           # a plain dict: the meta copy must not become a submodule

    def axes(self, height: int, width: int) -> dict:
        """{layer: (rows, columns)} :class:`~dgstudy.backbones.geometry.Axis`: where each layer's
        cells are centred in an input of ``height x width`` (traced from this network's padding
        arithmetic, :func:`dgstudy.backbones.geometry.trace`; cached per size)."""
        key = (int(height), int(width))
        if key not in self._geometry:
            if "stages" not in self._geometry:
                self._geometry["stages"] = geometry.meta_copy(self.stages)
            self._geometry[key] = geometry.trace(self._geometry["stages"], *key)
        return self._geometry[key]

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.name!r}, {len(self.layer_names)} layers, "
                f"default={self.default_layers}, weights={self.weights_source}, "
                f"architecture={self.architecture!r})")

    @property
    def network_id(self) -> str:
        """:func:`network_id` of this backbone's architecture and weights."""
        return network_id(self.architecture, self.weights_sha256)

    def check_layers(self, layers: Sequence[str] | None) -> list[str]:
        """``layers`` as a list (the defaults if None); KeyError naming any unknown layer."""
        layers = list(self.default_layers if layers is None else layers)
        unknown = [l for l in layers if l not in self._index]
        if unknown:
            raise KeyError(f"{self.name}: unknown layers {unknown}; known: {', '.join(self.layer_names)}")
        if not layers:
            raise ValueError(f"{self.name}: no layers requested")
        return layers

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.uint8:
            x = x.to(torch.float32) / 255.0
        return (x - self.mean) / self.std

    def features(self, x: torch.Tensor, layers: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        """Activations ``{layer: (B, C, h, w)}`` of the named ``layers`` for RGB images ``x``."""
        layers = self.check_layers(layers)
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"{self.name}: expected images (B, 3, H, W), got {tuple(x.shape)}")
        wanted = set(layers)
        last = max(self._index[l] for l in layers)
        out = {}
        h = self.normalise(x.to(self.mean.device))
        for k, (name, stage) in enumerate(self.stages.named_children()):
            h = stage(h)
            if name in wanted:
                out[name] = h
            if k == last:
                break
        return {l: out[l] for l in layers}

    def forward(self, x, layers=None):
        return self.features(x, layers)
