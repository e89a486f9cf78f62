"""Natural-log densities over the pixels of an image: the convention of every model in dgstudy.

A log-density is an (H, W) array whose ``exp`` sums to 1 over the pixels.

- :func:`uniform_log_density` ``(h, w)``: ``-log(h w)`` everywhere.
- :func:`resize_log_density` ``(log_density, h, w)``: the density resampled to another grid
  (bilinear on the density, not on its log), renormalised over the new pixels.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def uniform_log_density(h: int, w: int) -> np.ndarray:
    return np.full((h, w), -math.log(h * w), dtype=np.float64)


def resize_log_density(log_density: np.ndarray, h: int, w: int) -> np.ndarray:
    """A log-density resampled to (h, w): bilinear on the density, renormalised."""
    ld = np.asarray(log_density, dtype=np.float64)
    if ld.shape == (h, w):
        return ld
    d = torch.from_numpy(np.exp(ld - ld.max()))[None, None]
    r = F.interpolate(d, size=(h, w), mode="bilinear", align_corners=False)[0, 0].numpy()
    r = np.maximum(r, 0)
    return np.log(r) - np.log(r.sum())
