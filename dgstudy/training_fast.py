"""A fold's training data as :func:`dgstudy.training.train_fold` holds it: features standardised
once, laid out for the 1x1 convolutions, each batch read in place.

:class:`FoldData` ``(features, dataset, images, mean, std, log_cb_for_size, device, grid_of,
mirrored, batch_size)`` holds, for the fold's ``images`` (training and validation):

- the features standardised once, ``(x - mean) / std`` (the float32 operations of
  ``DeepGazeII.saliency_logits``, so every value is the one the plain model computes), in one
  contiguous float32 tensor per image size laid out ``(N * h * w, C)``: positions, then channels;
- the log centre bias of each image size, and each image's fixations as flat indices
  (``datasets.image_fixation_index``) on the grid the likelihood is scored on (``grid_of(H, W)``:
  the model's reduced grid; None: the image's pixels).

:meth:`FoldData.log_likelihoods` ``(model, batch, reduced, flip)`` runs the model on a batch
without copying its features: the readout's first 1x1 conv (``model_fast.PointwiseConv.rows``)
reads each image's (h*w, C) rows in place in the fold's tensor, the rest of the readout works on
that channels-last output, and ``model.density`` (the model's ``forward`` after the readout) does
the rest. The same products on the same values as the plain model on raw features: the losses
are the plain path's bits (tests/test_training.py). A readout with a layer norm, and a mirrored
batch (``flip``), gather the batch with one ``index_select`` into a buffer reused from batch to
batch.
Why this layout and dtype, and what it gains: docs/training.md.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from . import datasets
from .model_fast import PointwiseConv
from .util import to_device

LN2 = math.log(2.0)      # the one: dgstudy.training re-exports it


class FoldData:
    """The fold's standardised features, centre bias and fixation indices (module docstring)."""

    def __init__(self, features, dataset, images, mean, std, log_cb_for_size, device: str = "cpu",
                 grid_of=None, mirrored=None, batch_size: int = 8):
        self.dataset, self.device, self.grid_of, self.batch_size = dataset, device, grid_of, batch_size
        self.log_cb_for_size = log_cb_for_size
        mean = torch.as_tensor(mean, dtype=torch.float32).reshape(-1, 1, 1)
        std = torch.as_tensor(std, dtype=torch.float32).reshape(-1, 1, 1)
        self.row: dict[int, int] = {}                       # image -> its row in its size's tensor
        by_size: dict[tuple, list[int]] = {}
        for i in sorted({int(i) for i in images}):
            by_size.setdefault(self.size(i), []).append(i)
        self.tensors, self.mirrored, self.grids = {}, {}, {}
        self._buffers, self._cb, self._cell_cb, self._fix = {}, {}, {}, {}
        for size, imgs in by_size.items():
            c, h, w = np.shape(features[imgs[0]])
            self.grids[size] = (h, w)
            self.row.update({i: r for r, i in enumerate(imgs)})
            self.tensors[size] = self._standardised(features, imgs, mean, std)
            if mirrored is not None:
                self.mirrored[size] = self._standardised(mirrored, imgs, mean, std)

    def _standardised(self, features, imgs, mean, std) -> torch.Tensor:
        """(len(imgs) * h * w, C) float32 on the device: image after image, each (h, w, C)."""
        c, h, w = np.shape(features[imgs[0]])
        out = torch.empty(len(imgs), h * w, c, device=self.device)
        tmp = torch.empty(c, h, w)
        for r, i in enumerate(imgs):
            x = torch.from_numpy(np.asarray(features[i], dtype=np.float32))
            if tuple(x.shape) != (c, h, w):
                raise ValueError(f"image {i}: features {tuple(x.shape)}, others of its size {(c, h, w)}")
            torch.div(torch.sub(x, mean, out=tmp), std, out=tmp)
            out[r].copy_(tmp.view(c, h * w).t())          # torch's blocked 2-D transpose copy
        return out.reshape(-1, c)

    def size(self, i: int) -> tuple[int, int]:
        return tuple(int(v) for v in self.dataset.sizes[i])

    def grid(self, size) -> tuple[int, int]:
        """The grid the likelihood of an image of ``size`` is scored on (its pixels, or cells)."""
        return tuple(size) if self.grid_of is None else tuple(self.grid_of(*size))

    def center_bias(self, size) -> torch.Tensor:
        """The log centre bias (H, W) of images of ``size``, on the device."""
        if size not in self._cb:
            cb = np.asarray(self.log_cb_for_size(*size), dtype=np.float32)
            if cb.shape != size:
                raise ValueError(f"centre bias for size {size} has shape {cb.shape}")
            self._cb[size] = torch.from_numpy(cb).to(self.device)
        return self._cb[size]

    def fixations(self, i: int) -> np.ndarray:
        """Flat indices of image ``i``'s fixations on its scoring grid (:meth:`grid`)."""
        if i not in self._fix:
            grid = None if self.grid_of is None else self.grid(self.size(i))
            self._fix[i] = datasets.image_fixation_index(self.dataset, i, grid)
        return self._fix[i]

    def n_fixations(self, images) -> int:
        return int(sum(len(self.fixations(int(i))) for i in images))

    def _gather(self, batch, flip: bool, mirrored: bool) -> torch.Tensor:
        """The batch's standardised features, (B, C, h, w): a view of the reused (B, h, w, C)
        buffer. ``flip``: mirrored left-right (column ``j -> w - 1 - j``); ``mirrored``: the
        mirrored images' features instead."""
        size = self.size(int(batch[0]))
        h, w = self.grids[size]
        src = (self.mirrored if mirrored else self.tensors)[size]
        cols = torch.arange(w - 1, -1, -1) if flip else torch.arange(w)
        pos = (torch.arange(h)[:, None] * w + cols[None, :]).reshape(-1)
        rows = torch.tensor([self.row[int(i)] for i in batch])
        idx = (rows[:, None] * (h * w) + pos[None, :]).reshape(-1)
        if size not in self._buffers:                      # allocated once, on first use
            self._buffers[size] = torch.empty(self.batch_size * h * w, src.shape[1], device=self.device)
        out = self._buffers[size][:len(idx)]
        torch.index_select(src, 0, to_device(idx, self.device), out=out)
        return out.view(len(batch), h, w, -1).permute(0, 3, 1, 2)

    def logits(self, readout, batch, flip: bool = False, mirrored: bool = False) -> torch.Tensor:
        """``readout`` (the model's, :func:`dgstudy.model.make_readout`) on the batch's
        standardised features: (B, 1, h, w), mirrored left-right if ``flip``; ``mirrored``: on
        the mirrored images' features instead.

        A readout of 1x1 convs and pointwise nonlinearities works on each position alone: its
        first conv reads each image's rows in place in the fold's tensor
        (``PointwiseConv.rows``, one product per image as its ``forward`` computes them) and the
        rest runs on that conv's channels-last output. A readout with a layer norm, and a
        mirrored batch, are gathered into the reused buffer first (the plain path's order of
        the positions, so the same bits)."""
        if flip or not all(_per_position(m) for m in readout):
            return readout(self._gather(batch, flip, mirrored))
        size = self.size(int(batch[0]))
        h, w = self.grids[size]
        src = (self.mirrored if mirrored else self.tensors)[size]
        n = h * w
        y = readout[0].rows([src[self.row[int(i)] * n:(self.row[int(i)] + 1) * n] for i in batch])
        return readout[1:](y.view(len(batch), h, w, -1).permute(0, 3, 1, 2))

    def log_likelihoods(self, model, batch, reduced: bool, flip: bool = False):
        """(natural-log probability of each fixation of ``batch``'s images at its pixel or cell,
        the scoring grid): ``model.density`` of :meth:`logits`, mirrored if ``flip`` (the
        mirrored images' features where the fold holds them, ``flip_source='images'``). Every
        step but the readout's standardisation, done once per fold, is the model's ``forward``."""
        size = self.size(int(batch[0]))
        grid = self.grid(size)
        fix = [self.fixations(int(i)) for i in batch]
        b_idx = to_device(torch.from_numpy(np.repeat(np.arange(len(batch)), [len(f) for f in fix])), self.device)
        p_idx = to_device(torch.from_numpy(np.concatenate(fix)), self.device)
        cb = self.center_bias(size).expand(len(batch), *size)
        use_mirrored = flip and bool(self.mirrored)
        x = self.logits(model.readout, batch, flip=flip and not use_mirrored, mirrored=use_mirrored)
        if flip:
            x, cb, p_idx = flip_batch(x, cb, p_idx, grid, mirrored_x=x)
        logd = model.density(x, cb, size, reduced=reduced)
        return logd.reshape(logd.shape[0], -1)[b_idx, p_idx], grid

    def center_bias_log_likelihood(self, images) -> float:
        """Mean log-likelihood of the fixations on ``images`` under the centre bias alone, bits per
        fixation relative to uniform, on the scoring grid: on a grid of cells, the centre bias's
        probability of a cell is the sum over the pixels whose centres lie in it (the pixel
        convention of ``datasets.pixels``), so it is compared with the model on the same cells."""
        total, n = 0.0, 0
        for i in images:
            size, pix = self.size(int(i)), self.fixations(int(i))
            grid = self.grid(size)
            if size not in self._cell_cb:              # one per image size, float64
                self._cell_cb[size] = cell_log_density(self.log_cb_for_size(*size), grid).reshape(-1)
            total += float(self._cell_cb[size][pix].sum()) / LN2
            total += len(pix) * math.log2(grid[0] * grid[1])
            n += len(pix)
        return total / max(n, 1)


def flip_batch(x: torch.Tensor, cb: torch.Tensor, p_idx: torch.Tensor, grid: tuple[int, int],
               mirrored_x: torch.Tensor | None = None):
    """The batch mirrored left-right: features (B, C, h, w), log centre bias (B, H, W) and the
    fixations' flat indices ``row * w + col`` on ``grid`` (h, w), column ``col -> w - 1 - col``.
    ``mirrored_x``: the features of the mirrored images (or the features already mirrored), used
    instead of ``x.flip(-1)``.

    With the stored features mirrored (``flip_source='features'``), the batch's likelihood is the
    original batch's: the 1x1 readout, the resizes, the blur and the softmax commute with the
    mirror, and every grid is image-aligned, hence symmetric. That "augmentation" changes nothing
    but rounding (tests/test_training_choices.py: the same validation LL to 1e-4 bit/fix). The
    mirrored images' features differ (a CNN is not mirror-equivariant): ``flip_source='images'``
    is the real augmentation."""
    w = int(grid[1])
    p_idx = (p_idx // w) * w + (w - 1 - p_idx % w)
    return (x.flip(-1) if mirrored_x is None else mirrored_x), cb[:1].flip(-1).expand_as(cb), p_idx


def cell_log_density(log_density: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """A log density over the pixels (H, W) as the log probability of each cell of ``grid``
    (h, w): the sum of the probabilities of the pixels whose centres lie in the cell. The
    pixels' own grid returns it unchanged."""
    log_density = np.asarray(log_density, dtype=np.float64)
    H, W = log_density.shape
    if tuple(grid) == (H, W):
        return log_density
    rows = datasets.cells(np.arange(H) + 0.5, H, grid[0])
    cols = datasets.cells(np.arange(W) + 0.5, W, grid[1])
    to_rows = np.zeros((grid[0], H))
    to_rows[rows, np.arange(H)] = 1.0
    to_cols = np.zeros((W, grid[1]))
    to_cols[np.arange(W), cols] = 1.0
    top = log_density.max()
    with np.errstate(divide="ignore"):
        return np.log(to_rows @ np.exp(log_density - top) @ to_cols) + top


def _per_position(module) -> bool:
    """True for a readout piece that maps each position on its own (1x1 conv, pointwise nonlinearity)."""
    return isinstance(module, (PointwiseConv, torch.nn.ReLU, torch.nn.Softplus))
