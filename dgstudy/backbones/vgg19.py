"""VGG-19 (Simonyan & Zisserman 2015) with the layer names of the DeepGaze II paper.

``vgg19``: torchvision's architecture and ImageNet weights (``vgg19-dcbb9e9d.pth``, the
``IMAGENET1K_V1`` checkpoint; its ``features.*`` tensors). ``vgg19_random``: the same network
with torchvision's random initialisation under a fixed seed -- the control for "what does
ImageNet training add"; it is called ``vgg19_random`` everywhere (store attributes, logs).

Layers (``nn.Sequential`` of named stages, in order):
``conv1_1 relu1_1 conv1_2 relu1_2 pool1 conv2_1 ... relu2_2 pool2 conv3_1 ... relu3_4 pool3
conv4_1 ... relu4_4 pool4 conv5_1 ... relu5_4 pool5``. ReLUs are not in-place, so a conv output
and the ReLU after it can both be read. Strides: 1 (block 1), 2, 4, 8, 16 (block 5), pool5 32.
Input normalisation: ImageNet mean (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225).
Default layers: the paper's five, ``conv5_1 relu5_1 relu5_2 conv5_3 relu5_4``.

Where the ImageNet weights come from, in this order:
1. the ``weights=`` argument (a path), else ``$DGSTUDY_VGG19_WEIGHTS``;
2. torchvision's cache, ``$TORCH_HOME/hub/checkpoints/vgg19-dcbb9e9d.pth``
   (``torch.hub.get_dir()``);
3. a download from ``VGG19_URL`` (or ``$DGSTUDY_VGG19_URL``) into that cache (``download=True``),
   renamed into place only once it passed the hash check below.
The file is checked against the published hash. torchvision publishes only the first 8 hex
digits of the SHA-256 in the file name (``dcbb9e9d``; ``torch.hub`` checks exactly this
prefix), so that prefix is what is verified; the full SHA-256 is recorded as
``weights_sha256``. A missing file raises :class:`dgstudy.io.DataError`: it never falls back to
random weights.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

from ..io import DataError, fetch, sha256_file
from .base import SequentialBackbone, register, tensors_sha256

VGG19_FILE = "vgg19-dcbb9e9d.pth"
VGG19_URL = f"https://download.pytorch.org/models/{VGG19_FILE}"
VGG19_SHA256_PREFIX = "dcbb9e9d"      # published in the file name; torch.hub verifies the same
WEIGHTS_ENV = "DGSTUDY_VGG19_WEIGHTS"
URL_ENV = "DGSTUDY_VGG19_URL"          # another download location (a mirror; the tests' local server)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PAPER_LAYERS = ["conv5_1", "relu5_1", "relu5_2", "conv5_3", "relu5_4"]
ARCHITECTURE = "torchvision vgg19 features (configuration E), named stages, ReLU not in place"
# torchvision's configuration "E": channels per conv, "M" = max pool
CFG_E = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
         512, 512, 512, 512, "M"]


def named_layers() -> tuple["OrderedDict[str, nn.Module]", dict[int, str], dict[str, int]]:
    """The VGG-19 ``features`` stack with paper names.

    Returns (stages, torchvision index -> conv name, layer -> stride).
    """
    stages: OrderedDict[str, nn.Module] = OrderedDict()
    tv_index: dict[int, str] = {}
    strides: dict[str, int] = {}
    block, conv, in_ch, stride = 1, 0, 3, 1
    for v in CFG_E:
        idx = len(stages)
        if v == "M":
            name = f"pool{block}"
            stages[name] = nn.MaxPool2d(kernel_size=2, stride=2)
            stride *= 2
            strides[name] = stride
            block, conv = block + 1, 0
            continue
        conv += 1
        cname, rname = f"conv{block}_{conv}", f"relu{block}_{conv}"
        stages[cname] = nn.Conv2d(in_ch, v, kernel_size=3, padding=1)
        stages[rname] = nn.ReLU(inplace=False)
        tv_index[idx] = cname
        strides[cname] = strides[rname] = stride
        in_ch = v
    return stages, tv_index, strides


def state_from_torchvision(sd: dict, tv_index: dict[int, str], origin: str = "") -> dict:
    """Rename torchvision's ``features.<i>.{weight,bias}`` to ``stages.<conv name>.*``.

    Raises DataError (naming ``origin``) if a tensor is missing or has another shape.
    """
    stages, _, _ = named_layers()
    out = {}
    for i, name in tv_index.items():
        for p in ("weight", "bias"):
            key = f"features.{i}.{p}"
            if key not in sd:
                raise DataError(f"{origin}: not a torchvision VGG-19 checkpoint (no {key!r})")
            want = getattr(stages[name], p).shape
            if tuple(sd[key].shape) != tuple(want):
                raise DataError(f"{origin}: {key} has shape {tuple(sd[key].shape)}, expected {tuple(want)}")
            out[f"stages.{name}.{p}"] = sd[key]
    return out


def _build(name: str, tv_state: dict, weights_sha256: str, source: str) -> SequentialBackbone:
    stages, tv_index, strides = named_layers()
    bb = SequentialBackbone(name, stages, IMAGENET_MEAN, IMAGENET_STD, PAPER_LAYERS, strides,
                            weights_sha256=weights_sha256, weights_source=source,
                            architecture=ARCHITECTURE)
    missing, unexpected = bb.load_state_dict(state_from_torchvision(tv_state, tv_index, source), strict=False)
    missing = [k for k in missing if k not in ("mean", "std")]
    if missing or unexpected:
        raise DataError(f"{source}: VGG-19 weights do not fit (missing {missing}, unexpected {unexpected})")
    return bb


def missing_weights_message(looked: list[str], reason: str = "") -> str:
    cache = Path(torch.hub.get_dir()) / "checkpoints" / VGG19_FILE
    return (f"VGG-19 ImageNet weights {VGG19_FILE} not found (looked at: {', '.join(looked)})"
            + (f"; {reason}" if reason else "") + ". "
            f"It is torchvision's IMAGENET1K_V1 checkpoint, downloadable from {VGG19_URL}. "
            f"Download it where there is internet and either copy it to {cache} "
            f"or point at it with {WEIGHTS_ENV}=/path/to/{VGG19_FILE} "
            f"(or dgstudy.backbones.get('vgg19', weights='/path/to/{VGG19_FILE}')). "
            "dgstudy never substitutes random weights; for the random control use 'vgg19_random'.")


def resolve_weights(weights: str | os.PathLike | None = None, download: bool = True) -> Path:
    """Find (or download) the VGG-19 checkpoint and verify its published hash prefix."""
    named = weights if weights is not None else os.environ.get(WEIGHTS_ENV) or None
    if named is not None:
        path = Path(named).expanduser()
        if not path.is_file():
            src = "weights=" if weights is not None else f"${WEIGHTS_ENV}"
            raise DataError(missing_weights_message([f"{path} (from {src})"], "that file does not exist"))
    else:
        path = Path(torch.hub.get_dir()) / "checkpoints" / VGG19_FILE
        if not path.is_file():
            if not download:
                raise DataError(missing_weights_message([str(path)], "download=False"))
            url = os.environ.get(URL_ENV) or VGG19_URL
            try:
                fetch(url, path, verify=lambda tmp: _check_prefix(tmp, f"{VGG19_FILE} downloaded from {url}"))
            except DataError as e:
                raise DataError(missing_weights_message([str(path)], f"download failed: {e}")) from e
    return path


def _check_prefix(path: Path, name: str | None = None) -> str:
    digest = sha256_file(path)
    if not digest.startswith(VGG19_SHA256_PREFIX):
        raise DataError(f"{name or path}: SHA-256 {digest} does not start with the published prefix "
                        f"{VGG19_SHA256_PREFIX} of {VGG19_FILE} ({VGG19_URL}); the file is corrupt or "
                        "not torchvision's VGG-19 checkpoint")
    return digest


@register("vgg19", PAPER_LAYERS, ARCHITECTURE)
def vgg19(weights: str | os.PathLike | None = None, download: bool = True) -> SequentialBackbone:
    """VGG-19 with torchvision's ImageNet weights (see the module docstring for where from)."""
    path = resolve_weights(weights, download=download)
    digest = _check_prefix(path)
    sd = torch.load(path, map_location="cpu", weights_only=True)
    return _build("vgg19", sd, digest, str(path))


def torchvision_random_state(seed: int = 0) -> dict:
    """State dict of ``torchvision.models.vgg19(weights=None)`` built under ``torch.manual_seed(seed)``.

    The global RNG state is restored afterwards (``torch.random.fork_rng``).
    """
    import torchvision  # here, not at the top: it costs ~2 s to import, and only this needs it

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = torchvision.models.vgg19(weights=None)
    return {k: v for k, v in net.state_dict().items() if k.startswith("features.")}


@register("vgg19_random", PAPER_LAYERS, ARCHITECTURE)
def vgg19_random(weights=None, seed: int = 0) -> SequentialBackbone:
    """VGG-19 with torchvision's random initialisation (kaiming-normal convs, zero biases), seeded."""
    if weights is not None:
        raise ValueError("vgg19_random takes no weights file (it is the random-weights control)")
    bb = _build("vgg19_random", torchvision_random_state(seed), "",
                f"torchvision init, torch.manual_seed({seed})")
    named = {k: v for k, v in bb.state_dict().items() if k.startswith("stages.")}
    bb.weights_sha256 = f"random-seed{seed}:" + tensors_sha256(named)
    return bb
