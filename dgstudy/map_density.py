"""Saliency maps made into densities the benchmark's way (Kümmerer, Wallis & Bethge, ECCV 2018).

A saliency map is not a density: its values have no scale and its blur and centre bias are
arbitrary. :class:`MapDensity` makes one a density with three fitted pieces, named submodules
applied in pysaliency's order (``saliency_map_conversion_torch``):

``map`` (scaled to [0, 1] by :meth:`dgstudy.saliency_maps.SaliencyMaps.normalized` and resampled to
the grid of ``H/f x W/f`` cells, ``f = saliency_map_factor``) -> ``blur``
(:class:`~dgstudy.model.GaussianBlur`, sigma in cells) -> ``nonlinearity``
(:class:`MonotoneNonlinearity`: increasing, piecewise linear, its output a log density) ->
``center_bias`` (+ weight x the log centre bias, :class:`~dgstudy.model.CenterBiasTerm`) ->
``finalizer`` (bilinear up to H x W and log-softmax over the pixels,
:class:`~dgstudy.model.Finalizer`, as DeepGaze II).

- :func:`fit` maximises the log-likelihood of the training fixations on the cell grid, every
  fixation weighted alike, by full-batch L-BFGS-B in float64 (deterministic) within
  :func:`bounds`.
- :func:`density_from_maps` fits one per cross-validation fold of the study (the folds of
  :func:`dgstudy.datasets.kfold`; each fit on every image outside its test fold, with that fold's
  training centre bias, :func:`dgstudy.baselines.fitted_center_bias`) and returns a
  :class:`CrossValidatedMaps`: ``log_density(i)`` of each image from the fold that held it out,
  which :func:`dgstudy.evaluation.score_cross_validated` scores like a trained run.

docs/evaluate.md explains the choices and shows the command (``dgstudy evaluate --maps``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .baselines import CenterBias, fitted_center_bias
from .datasets import kfold
from .datasets.pixels import fixation_cells, flat_index, round_half_up
from .model import CenterBiasTerm, Finalizer, GaussianBlur
from .saliency_maps import SaliencyMaps

N_NODES = 12            # nodes of the nonlinearity (11 linear pieces over [0, 1])
GRID_CELLS = 50         # the default grid has about this many cells along an image's longer side (docs/evaluate.md)
MAX_ITER = 300          # L-BFGS-B iterations per fit


class MonotoneNonlinearity(nn.Module):
    """An increasing piecewise-linear function on [0, 1] with ``n_nodes`` equally spaced nodes.

    Its values at the nodes are ``0, cumsum(softplus(steps))``: each step is positive, so the
    function is increasing for any parameters (non-decreasing in float rounding, where a step is
    tiny); inputs outside [0, 1] are clamped. Initialised as
    the straight line from 0 to ``rise``.
    """

    def __init__(self, n_nodes: int = N_NODES, rise: float = 4.0):
        super().__init__()
        if n_nodes < 2:
            raise ValueError(f"n_nodes must be at least 2, got {n_nodes}")
        step = rise / (n_nodes - 1)
        self.steps = nn.Parameter(torch.full((n_nodes - 1,), math.log(math.expm1(step))))

    def values(self) -> torch.Tensor:
        """The function's values at the nodes ``0, 1/(n-1), ..., 1``."""
        return torch.cat([self.steps.new_zeros(1), torch.cumsum(F.softplus(self.steps), 0)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.values().to(x.dtype)
        pieces = len(y) - 1
        pos = x.clamp(0.0, 1.0) * pieces
        k = pos.detach().floor().clamp(max=pieces - 1)
        left = k.long()
        return y[left] + (pos - k) * (y[left + 1] - y[left])

    def extra_repr(self) -> str:
        return f"n_nodes={len(self.steps) + 1}"


class MapDensity(nn.Module):
    """A saliency map on the cell grid -> a log density over the pixels (module docstring)."""

    def __init__(self, n_nodes: int = N_NODES, blur_sigma: float = 2.0, saliency_map_factor: int = 8,
                 center_bias: str = "learned"):
        super().__init__()
        self.hparams = dict(n_nodes=n_nodes, blur_sigma=blur_sigma, saliency_map_factor=saliency_map_factor,
                            center_bias=center_bias)
        self.blur = GaussianBlur(blur_sigma, learn_sigma=True)
        self.nonlinearity = MonotoneNonlinearity(n_nodes)
        self.center_bias = CenterBiasTerm(center_bias, 1.0)
        self.finalizer = Finalizer(saliency_map_factor)

    def forward(self, maps: torch.Tensor, log_center_bias: torch.Tensor | None, size: tuple[int, int],
                reduced: bool = False) -> torch.Tensor:
        """``maps`` (B, 1, h, w): normalised maps on the grid of ``size`` = (H, W)
        (``finalizer.reduced_size(H, W)``); ``log_center_bias``: the log centre bias on that grid,
        (B or 1, 1, h, w) (:meth:`~dgstudy.model.Finalizer.downscale`). Returns the log density
        (B, H, W) over the pixels, or with ``reduced=True`` over the cells (B, h, w)."""
        x = self.nonlinearity(self.blur(maps))
        x = self.center_bias(x, log_center_bias)
        return self.finalizer(x, self.finalizer.reduced_size(*size) if reduced else tuple(size))

    def parameters_dict(self) -> dict:
        """The fitted values (JSON-able): blur sigma in cells and in pixels, centre-bias weight,
        the nonlinearity's values at its nodes."""
        f = self.finalizer.saliency_map_factor
        sigma = float(self.blur.sigma.detach())
        return {"blur_sigma_cells": sigma, "blur_sigma_px": sigma * f,
                "center_bias_weight": float(self.center_bias.weight.detach()),
                "nonlinearity": [float(v) for v in self.nonlinearity.values().detach()],
                "saliency_map_factor": f}


def default_factor(dataset, cells: int = GRID_CELLS) -> int:
    """The grid factor that gives about ``cells`` cells along the data set's longest image side."""
    return round_half_up(int(dataset.sizes.max()) / cells)


@dataclass
class _Group:
    """The training images of one size: maps on the grid, their fixations' flat cell indices."""

    size: tuple[int, int]
    maps: torch.Tensor          # (N, 1, h, w) float64
    image_of: torch.Tensor      # (M,) position in ``maps`` of each fixation
    cell_of: torch.Tensor       # (M,) flat cell index of each fixation


def _groups(grid_maps: dict, dataset, images, factor: int) -> list[_Group]:
    fx = dataset.fixations
    fx = fx[np.isin(fx["image"].to_numpy(), images)]
    by_size: dict[tuple, list[int]] = {}
    for i in images:
        by_size.setdefault(tuple(int(s) for s in dataset.sizes[i]), []).append(int(i))
    fin = Finalizer(factor)
    groups = []
    for size, imgs in by_size.items():
        grid = fin.reduced_size(*size)
        g = fx[np.isin(fx["image"].to_numpy(), imgs)]
        if not len(g):
            continue
        rows, cols = fixation_cells(g["x"].to_numpy(), g["y"].to_numpy(), size[0], size[1], grid=grid)
        pos = {i: k for k, i in enumerate(imgs)}
        groups.append(_Group(size=size,
                             maps=torch.from_numpy(np.stack([grid_maps[i] for i in imgs]))[:, None],
                             image_of=torch.as_tensor([pos[int(i)] for i in g["image"]]),
                             cell_of=torch.from_numpy(flat_index(rows, cols, grid[1]))))
    return groups


def fit(model: MapDensity, groups: list[_Group], log_center_bias, max_iter: int = MAX_ITER) -> dict:
    """Fit ``model`` (in place, float64) to the fixations of ``groups`` by L-BFGS-B
    (``scipy.optimize.minimize`` with torch's gradients) within :func:`bounds`; returns
    ``{'train_ll_cells': mean log-likelihood per fixation on the cell grid (nats), 'iterations',
    'converged'}``. ``log_center_bias(H, W) -> (H, W)`` numpy: the centre bias for an image size."""
    from scipy.optimize import minimize

    model.double()
    n_fix = sum(len(g.cell_of) for g in groups)
    cbs = [Finalizer.downscale(torch.from_numpy(np.asarray(log_center_bias(*g.size), dtype=np.float64))[None],
                               model.finalizer.reduced_size(*g.size)) for g in groups]
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    lower, upper = bounds(model, [g.size for g in groups])

    def set_vector(v: np.ndarray) -> None:
        k = 0
        with torch.no_grad():
            for _, p in named:
                p.copy_(torch.from_numpy(v[k:k + p.numel()]).view_as(p))
                k += p.numel()

    def loss_and_grad(v: np.ndarray):
        set_vector(v)
        model.zero_grad()
        loss = 0.0
        for g, cb in zip(groups, cbs):
            logp = model(g.maps, cb, g.size, reduced=True).flatten(1)
            loss = loss - logp[g.image_of, g.cell_of].sum() / n_fix
        loss.backward()
        return float(loss.detach()), np.concatenate([p.grad.reshape(-1).numpy() for _, p in named])

    start = np.concatenate([p.detach().reshape(-1).numpy() for _, p in named])
    res = minimize(loss_and_grad, np.clip(start, lower, upper), jac=True, method="L-BFGS-B",
                   bounds=list(zip(lower, upper)), options={"maxiter": max_iter})
    set_vector(res.x)
    return {"train_ll_cells": -float(res.fun), "iterations": int(res.nit), "converged": bool(res.success)}


MAX_STEP = 10.0       # nats: the nonlinearity's largest rise over one of its pieces


def bounds(model: MapDensity, sizes) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper bounds of the parameters, in ``named_parameters`` order: blur sigma from a
    quarter cell to a quarter of the largest grid side; the nonlinearity's rise per piece from 0
    to :data:`MAX_STEP` (so that a range of map values without training fixations cannot be given
    a density of practically zero); the centre-bias weight from 0 to 4."""
    longest = max(max(model.finalizer.reduced_size(*s)) for s in sizes)
    limits = {"blur.sigma": (0.25, max(0.5, longest / 4)),
              "nonlinearity.steps": (-30.0, math.log(math.expm1(MAX_STEP))),
              "center_bias.weight": (0.0, 4.0)}
    lo, hi = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            lo += [limits[name][0]] * p.numel()
            hi += [limits[name][1]] * p.numel()
    return np.array(lo), np.array(hi)


class CrossValidatedMaps:
    """A folder of saliency maps as a cross-validated model on its data set: ``log_density(i)``
    from the fold that held image ``i`` out (``.dataset``, ``.images``, ``.fold_of``, ``.folds``:
    per fold its fitted :class:`MapDensity`, training images and centre bias)."""

    def __init__(self, maps: SaliencyMaps, grid_maps: dict, folds: dict, fold_of: np.ndarray, per: str):
        self.maps, self.dataset = maps, maps.dataset
        self._grid_maps = grid_maps
        self.folds = folds
        self.fold_of = fold_of
        self.images = np.flatnonzero(fold_of >= 0)
        self.per = per

    def log_density(self, i: int) -> np.ndarray:
        f = self.folds[int(self.fold_of[i])]
        model, cb = f["model"], f["center_bias"]
        size = tuple(int(s) for s in self.dataset.sizes[i])
        grid = model.finalizer.reduced_size(*size)
        log_cb = Finalizer.downscale(torch.from_numpy(cb.log_density_for_size(*size))[None], grid)
        with torch.no_grad():
            out = model(torch.from_numpy(self._grid_maps[int(i)])[None, None], log_cb, size)
        return out[0].numpy()

    def summary(self) -> dict:
        """Per fold the fitted parameters and training log-likelihood (JSON-able)."""
        return {"normalize": self.per, "value_range": self.maps.value_range,
                "folds": [{"fold": k, "n_train_images": len(f["train"]), **f["fit"],
                           **f["model"].parameters_dict(),
                           "center_bias": {"bandwidth": f["center_bias"].bandwidth,
                                           "uniform_weight": f["center_bias"].uniform_weight}}
                          for k, f in sorted(self.folds.items())]}


def density_from_maps(maps, dataset=None, k: int = 10, seed: int = 0, per: str = "dataset",
                      n_nodes: int = N_NODES, saliency_map_factor: int | None = None,
                      max_iter: int = MAX_ITER, progress: bool = False) -> CrossValidatedMaps:
    """Fit :class:`MapDensity` to ``maps`` (a :class:`~dgstudy.saliency_maps.SaliencyMaps` or a
    folder of maps for ``dataset``) once per fold of ``kfold(n_images, k, seed)``, each on the
    images outside the fold's test images with that fold's training centre bias; ``per``: how the
    maps are scaled to [0, 1] (:meth:`~dgstudy.saliency_maps.SaliencyMaps.normalized`);
    ``saliency_map_factor``: the grid (default :func:`default_factor`)."""
    maps = maps if isinstance(maps, SaliencyMaps) else SaliencyMaps(maps, dataset)
    ds = maps.dataset
    maps.check(progress=progress)
    factor = saliency_map_factor or default_factor(ds)
    fin = Finalizer(factor)
    grid_maps = {i: maps.normalized(i, fin.reduced_size(*ds.sizes[i]), per=per)
                 for i in tqdm(range(len(ds)), desc="maps to grid", unit="map", disable=not progress, leave=False)}
    fold_of = np.full(len(ds), -1, dtype=np.int64)
    folds = {}
    for f, test in enumerate(tqdm(kfold(len(ds), k, seed), desc="fit folds", unit="fold",
                                  disable=not progress, leave=False)):
        train = np.setdiff1d(np.arange(len(ds)), test)
        cb: CenterBias = fitted_center_bias(ds, train)
        model = MapDensity(n_nodes=n_nodes, saliency_map_factor=factor)
        info = fit(model, _groups(grid_maps, ds, train, factor), cb.log_density_for_size, max_iter)
        folds[f] = {"model": model.eval(), "center_bias": cb, "train": train, "test": test, "fit": info}
        fold_of[test] = f
    return CrossValidatedMaps(maps, grid_maps, folds, fold_of, per)
