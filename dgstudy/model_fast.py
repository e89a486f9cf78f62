"""Exact CPU speed-ups of pieces of :mod:`dgstudy.model` (same parameters, same results up to
float rounding; the plain definitions they replace are kept and tested against them).

- :class:`PointwiseConv` ``(c_in, c_out)``: ``nn.Conv2d(c_in, c_out, 1)`` (same parameters, same
  state dict keys ``weight``, ``bias``) computed as one ``F.linear`` over the rows of positions x
  channels. Its output is a channels-last view, so the next 1x1 conv reads it in place.
- :func:`replicate_blur_matrix` ``(kernel, n)``: the (n, n) matrix ``M`` with ``v @ M`` = ``v``
  convolved with ``kernel`` after padding by replication; ``GaussianBlur.forward`` is two such
  products, equal to ``GaussianBlur.reference`` (the padded separable convolution).
- :func:`bilinear_matrix` ``(n_in, n_out)``: the (n_out, n_in) matrix of
  ``F.interpolate(..., mode='bilinear', align_corners=False)`` along one axis, so that a resize
  followed by the blur is one small product per axis (``DeepGazeII.density``).

Several times faster on CPU than torch's convolutions and interpolation, backward included
(docs/training.md); the equivalence tests are in tests/test_model_fast.py.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn


class PointwiseConv(nn.Conv2d):
    """A 1x1 convolution computed as ``F.linear`` over the positions (same parameters and result
    as ``nn.Conv2d(c_in, c_out, 1)``; several times faster on CPU, backward included).

    ``forward`` multiplies the (B * h * w, c_in) rows of positions x channels: read in place
    from channels-last input (a (B, C, h, w) view of a (B, h, w, C) tensor, as its own output
    is), copied once from any other layout, one product per image (:meth:`rows`), so that the
    training's fast path, which reads each image's rows in place, computes the same products in
    the same order, forward and backward (tests/test_training.py).
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(in_channels, out_channels, 1)

    def rows(self, blocks) -> torch.Tensor:
        """(sum n, c_out): the convolution of each (n, c_in) block of positions, concatenated."""
        weight = self.weight.view(self.out_channels, self.in_channels)
        return torch.cat([F.linear(r, weight, self.bias) for r in blocks])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        rows = x.permute(0, 2, 3, 1).contiguous().view(-1, c)    # a view of channels-last input
        return self.rows(rows.split(h * w)).view(b, h, w, -1).permute(0, 3, 1, 2)


def replicate_blur_matrix(k: torch.Tensor, n: int) -> torch.Tensor:
    """(n, n) matrix M with ``blur_1d(v) = v @ M`` for a length-n signal, borders replicated.

    ``k`` is an odd-length kernel (tap ``t`` at offset ``t - r``); column ``j`` of ``M`` holds the
    taps that reach output ``j``, the input index clamped to ``[0, n - 1]`` (replication).
    """
    dtype, device = k.dtype, k.device
    r = (len(k) - 1) // 2
    j = torch.arange(n, device=device)
    t = torch.arange(-r, r + 1, device=device)
    src = (j[None, :] + t[:, None]).clamp(0, n - 1)          # (2r+1, n): input index per tap
    m = torch.zeros(n, n, dtype=dtype, device=device)
    return m.index_put((src.reshape(-1), j.repeat(len(k))), k[:, None].expand(-1, n).reshape(-1),
                       accumulate=True)


@functools.lru_cache(maxsize=64)
def bilinear_matrix(n_in: int, n_out: int, dtype=torch.float32, device="cpu") -> torch.Tensor:
    """(n_out, n_in) matrix R with ``R @ v`` = ``v`` resized from ``n_in`` to ``n_out`` samples as
    ``F.interpolate(mode='bilinear', align_corners=False)`` resizes each axis (torch's own
    weights: the interpolation of each unit vector). Cached; do not modify it."""
    eye = torch.eye(n_in, dtype=torch.float64)[None]                  # (1, n_in, n_in)
    r = F.interpolate(eye, size=n_out, mode="linear", align_corners=False)[0]   # (n_in, n_out)
    return r.t().contiguous().to(dtype=dtype, device=device)
