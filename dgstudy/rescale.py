"""Moving images and densities between pixel scales (scale-aware prediction).

A trained run has seen its images at one pixel scale (:func:`dgstudy.runs.training_scale`: their
pixel area); its backbone features and learned blur are tied to it. To predict an ``H x W`` image
at that scale, the image is resampled to the **working size** with that pixel area and the same
aspect ratio (:func:`working_size`, :func:`resize_image`), predicted there, and the density is
mapped back to the original ``H x W`` pixels (:func:`resample_log_density`).

Coordinates follow :mod:`dgstudy.datasets` (pixel centres at integer + 0.5), so a position ``x``
in an image ``W`` wide is ``x * W' / W`` in the same image ``W'`` wide; resampling uses
``align_corners=False``, which is that mapping (the image's outer edges map onto each other).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .datasets.pixels import round_half_up


TRAINING_SCALE_KEY = "training_pixel_area"     # in fold_XX/config.json, written by training


def training_pixel_area(sizes) -> float:
    """The training scale of images of ``sizes`` ((n, 2) height, width): the **median pixel area**
    ``H x W`` (px), so a data set of mixed sizes has one scale that half its images exceed."""
    sizes = np.asarray(sizes, dtype=np.float64).reshape(-1, 2)
    if not len(sizes):
        raise ValueError("no image sizes to take a training scale from")
    return float(np.median(sizes[:, 0] * sizes[:, 1]))


def working_size(height: int, width: int, pixel_area: float | None) -> tuple[int, int]:
    """The size with ``pixel_area`` pixels and the aspect ratio of ``height x width`` (each side
    rounded, at least 1); ``pixel_area=None``: the size itself (native)."""
    height, width = int(height), int(width)
    if pixel_area is None:
        return height, width
    if not pixel_area > 0:
        raise ValueError(f"a pixel area must be positive, got {pixel_area!r}")
    s = math.sqrt(float(pixel_area) / (height * width))
    return round_half_up(height * s), round_half_up(width * s)


def resize_image(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """An (H, W, 3) uint8 image resampled to ``size`` (h, w): bilinear, antialiased when shrinking
    (``torch.nn.functional.interpolate``, the same resampling as the feature extraction), rounded
    back to uint8. The image itself when the size is unchanged."""
    size = (int(size[0]), int(size[1]))
    if tuple(rgb.shape[:2]) == size:
        return rgb
    rgb = np.ascontiguousarray(rgb)
    x = torch.from_numpy(rgb if rgb.flags.writeable else rgb.copy()).permute(2, 0, 1)[None].to(torch.float32)
    y = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    return y[0].permute(1, 2, 0).round_().clamp_(0, 255).to(torch.uint8).numpy()


def resample_log_density(log_density: np.ndarray, height: int, width: int, dtype=np.float64) -> np.ndarray:
    """A log-density over one grid mapped to ``height x width`` pixels, normalised there.

    Onto a grid with at least as many pixels: bilinear on the **log**-density (as the model's own
    final upsampling, :class:`dgstudy.model.Finalizer`), in float32 (a 3264x2448 map in ~0.1 s).
    Onto fewer pixels: bilinear on the **density**, antialiased, so each new pixel gathers the
    mass of the pixels it covers, in float64. Either way renormalised over the new pixels (the
    normaliser summed in float64): ``logsumexp`` is 0 up to the rounding of ``dtype``. The input
    itself (as ``dtype``) when the size already matches.
    """
    size = (int(height), int(width))
    ld = np.asarray(log_density)
    if ld.shape == size:
        return ld.astype(dtype, copy=False)
    if size[0] * size[1] >= ld.shape[0] * ld.shape[1]:
        t = torch.from_numpy(np.ascontiguousarray(ld, dtype=np.float32))[None, None]
        out = F.interpolate(t, size=size, mode="bilinear", align_corners=False)[0, 0]
        top = out.max()
        out -= top + torch.log(torch.exp(out - top).sum(dtype=torch.float64)).to(torch.float32)
    else:
        ld = ld.astype(np.float64)
        d = torch.from_numpy(np.exp(ld - ld.max()))[None, None]
        r = F.interpolate(d, size=size, mode="bilinear", align_corners=False, antialias=True)[0, 0]
        out = torch.log_(r.clamp_(min=np.finfo(np.float64).tiny))
        out -= torch.logsumexp(out.reshape(-1), 0)
    return out.numpy().astype(dtype, copy=False)
