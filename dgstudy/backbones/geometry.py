"""Where each layer's cells sit in the image: the receptive-field centres, from the padding arithmetic.

A layer's grid is not laid evenly over its input. Cell ``k`` of a layer reached through
convolutions and pools of kernel ``K``, stride ``S``, dilation ``D`` and padding ``P`` before the
data (per axis) has its receptive field centred at ``step * k + offset`` input pixels, where each
such operation maps ``(step, offset) -> (step * S, offset + step * (D * (K - 1) / 2 - P))``,
starting from ``(1, 1/2)`` (continuous coordinates: input pixel ``j`` spans ``[j, j + 1)``).
TensorFlow's "same" padding (EfficientNet-Lite) puts the odd padding row at the bottom, so ``P``
depends on the size of the layer's input: at stride ``s`` the centres lie at ``s (k + 1) - 1/2``
for sizes divisible by ``s``, and elsewhere for others. VGG's max-pools take floor sizes, so its
grid covers less than the image. Stretching a grid over the image, as an interpolation with
``align_corners=False`` does, places cell ``k`` at ``s (k + 1/2)`` instead.

:func:`trace` runs the network's own modules on the meta device (no arithmetic happens, only
shapes) at a given input size and returns each layer's :class:`Axis` pair
(``SequentialBackbone.axes`` caches it per size); the padding of
every module is the one it applies (``nn.Conv2d`` / pooling ``padding``; timm's ``Conv2dSame``
and ``MaxPool2dSame`` through timm's ``get_same_padding``). :func:`resample_matrix` is the exact
linear interpolation from a layer's cell centres onto any other set of positions, which is how
:func:`dgstudy.features.stack_layers` puts every layer onto one image-aligned grid. The
convention and why: docs/model.md ("Registration").
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

#: Bumped whenever the placement of features on the image changes; stores and runs record it
#: and those of another version are refused (dgstudy.features, dgstudy.runs).
GEOMETRY_VERSION = 1


@dataclass(frozen=True)
class Axis:
    """One axis of a layer's grid: ``n`` cells, cell ``k`` centred at ``offset + step * k`` (pixels
    of the network's input, continuous: pixel ``j`` spans ``[j, j + 1)``)."""

    n: int
    step: float
    offset: float

    def centres(self) -> np.ndarray:
        return self.offset + self.step * np.arange(self.n, dtype=np.float64)

    def through(self, kernel: int, stride: int, dilation: int, pad_before: int, n_out: int) -> "Axis":
        """This axis's cells seen through one convolution or pool."""
        return Axis(int(n_out), self.step * stride,
                    self.offset + self.step * (dilation * (kernel - 1) / 2 - pad_before))

    def pooled(self, k: int) -> "Axis":
        """Average-pooled in windows of ``k`` cells, the partial window at the end dropped."""
        return self.through(k, k, 1, 0, self.n // k)


def input_axis(n: int) -> Axis:
    """The network input's own pixels: ``n`` cells centred at ``k + 1/2``."""
    return Axis(int(n), 1.0, 0.5)


def image_aligned(n: int, extent: float) -> Axis:
    """``n`` equal cells laid over ``[0, extent)``: centres at ``(k + 1/2) * extent / n`` (the grid
    of ``datasets.pixels``; what ``interpolate(..., align_corners=False)`` assumes of both sides)."""
    return Axis(int(n), extent / n, extent / n / 2)


def _pair(v) -> tuple[int, int]:
    return (int(v[0]), int(v[1])) if isinstance(v, (tuple, list)) else (int(v), int(v))


def _pad_before(module: nn.Module, size: tuple[int, int]) -> tuple[int, int]:
    """The padding ``module`` puts before the data on each axis, for an input of ``size``."""
    kernel, stride = _pair(module.kernel_size), _pair(module.stride)
    dilation = _pair(getattr(module, "dilation", 1))
    name = type(module).__name__
    if name in ("Conv2dSame", "Conv2dSameExport", "MaxPool2dSame", "AvgPool2dSame"):
        from timm.layers.padding import get_same_padding
        return tuple(get_same_padding(n, k, s, d) // 2 for n, k, s, d in zip(size, kernel, stride, dilation))
    padding = module.padding
    if isinstance(padding, str):
        if padding == "valid":
            return 0, 0
        if padding == "same":      # torch: stride 1 only, the extra at the end
            return tuple(d * (k - 1) // 2 for k, d in zip(kernel, dilation))
        raise ValueError(f"{name}: unknown padding {padding!r}")
    return _pair(padding)


_SPATIAL = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)


def meta_copy(stages: nn.Module) -> nn.Module:
    """A copy of ``stages`` on the meta device: the architecture, no numbers (for :func:`trace`)."""
    return copy.deepcopy(stages).to("meta")


def trace(stages: nn.Sequential, height: int, width: int) -> dict[str, tuple[Axis, Axis]]:
    """{stage name: (rows axis, columns axis)} of a ``SequentialBackbone``'s ``stages`` (on the
    meta device, :func:`meta_copy`) for an input of ``height x width``, from forward hooks on
    every convolution and pool (module docstring). Modules off the main path (e.g. on a globally
    pooled tensor) are recognised by their input size and ignored. Stages that an input this
    small cannot reach are left out."""
    if any(p.device.type != "meta" for p in stages.parameters()):
        raise ValueError("trace runs on a copy of the network on the meta device (meta_copy)")
    state = {"axes": (input_axis(height), input_axis(width))}

    def hook(module, inputs, output):
        size = tuple(int(s) for s in inputs[0].shape[-2:])
        ay, ax = state["axes"]
        if size != (ay.n, ax.n):
            return
        kernel, stride = _pair(module.kernel_size), _pair(module.stride)
        dilation = _pair(getattr(module, "dilation", 1))
        pad = _pad_before(module, size)
        out = tuple(int(s) for s in output.shape[-2:])
        state["axes"] = tuple(a.through(k, s, d, p, o) for a, k, s, d, p, o
                              in zip((ay, ax), kernel, stride, dilation, pad, out))

    handles = [m.register_forward_hook(hook) for m in stages.modules() if isinstance(m, _SPATIAL)]
    out = {}
    try:
        x = torch.empty(1, 3, int(height), int(width), device="meta")
        with torch.no_grad():
            for name, stage in stages.named_children():
                try:
                    x = stage(x)
                except RuntimeError:       # the input is too small for this stage and beyond
                    break
                ay, ax = state["axes"]
                if (ay.n, ax.n) != tuple(x.shape[-2:]):
                    raise RuntimeError(f"stage {name}: traced grid {(ay.n, ax.n)} but output "
                                       f"{tuple(x.shape[-2:])}: an operation changed the size unseen")
                out[name] = state["axes"]
    finally:
        for h in handles:
            h.remove()
    return out


def resample_matrix(source: Axis, positions: np.ndarray) -> np.ndarray:
    """(len(positions), source.n) matrix of linear interpolation from ``source``'s cell centres to
    ``positions`` (same units); beyond the first or last centre the edge cell's value is kept."""
    positions = np.asarray(positions, dtype=np.float64)
    m = np.zeros((len(positions), source.n))
    if source.n == 1:
        m[:, 0] = 1.0
        return m
    u = np.clip((positions - source.offset) / source.step, 0.0, source.n - 1.0)
    lo = np.minimum(np.floor(u).astype(np.int64), source.n - 2)
    frac = u - lo
    rows = np.arange(len(positions))
    m[rows, lo] = 1.0 - frac
    m[rows, lo + 1] += frac
    return m


def axes_to_list(axes: tuple[Axis, Axis]) -> list:
    """(rows, columns) as ``[n, step, offset, n, step, offset]`` (JSON, for store attributes)."""
    return [v for a in axes for v in (a.n, a.step, a.offset)]


def axes_from_list(v) -> tuple[Axis, Axis]:
    return Axis(int(v[0]), float(v[1]), float(v[2])), Axis(int(v[3]), float(v[4]), float(v[5]))
