"""Exact CPU speed-ups of two pieces of :mod:`dgstudy.model` (same parameters, same results).

- :class:`PointwiseConv` ``(c_in, c_out)``: ``nn.Conv2d(c_in, c_out, 1)`` (same parameters, same
  state dict keys ``weight``, ``bias``) whose forward is one matrix product over the channels.
- :func:`replicate_blur_matrix` ``(kernel, n)``: the (n, n) matrix ``M`` with ``v @ M`` = ``v``
  convolved with ``kernel`` after padding by replication; ``GaussianBlur.forward`` is two such
  products, equal to ``GaussianBlur.reference`` (the padded separable convolution).

Both are several times faster on CPU than torch's convolutions, backward included (docs/model.md);
the equivalence tests are in tests/test_model_fast.py.
"""
from __future__ import annotations

import torch
from torch import nn


class PointwiseConv(nn.Conv2d):
    """A 1x1 convolution computed as one matrix product over the channels (same parameters and
    result as ``nn.Conv2d(c_in, c_out, 1)``; several times faster on CPU, backward included)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        y = torch.matmul(self.weight[:, :, 0, 0], x.reshape(b, c, h * w)) + self.bias[:, None]
        return y.reshape(b, -1, h, w)


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
