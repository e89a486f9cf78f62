"""Is a predicted density calibrated? Predicted against observed fixation mass in density deciles.

A log-likelihood score says how good a density is on average; it does not say *where* the density
is wrong. Calibration does: rank each image's pixels by the model's density and cut them into
``n_bins`` groups of equal pixel count (decile 1: the densest tenth of the image's pixels). For a
calibrated model the share of the image's fixations that fall in a group equals the probability
mass the model puts there. Over a data set both are averaged with each image weighted by its
fixation count, so ``observed`` is the share of all fixations in each decile and ``predicted`` the
mass a model that generated them would put there; both columns sum to 1.

An over-confident model puts more mass in its top decile than the fixations fill
(``observed < predicted`` there, ``>`` further down); an over-cautious one, like the centre bias
on an image with a salient object, the reverse. Pixels of equal density are split between
neighbouring deciles in the order ``numpy.argsort`` (stable) gives them.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .datasets.pixels import fixation_cells, flat_index


def image_calibration(log_density, xs, ys, n_bins: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """(predicted mass, fixation count) per density decile of one image: ``log_density`` (H, W)
    (natural log, normalised), the fixations at ``(xs, ys)`` (stimulus pixels, the one pixel
    convention of :mod:`dgstudy.datasets.pixels`)."""
    logp = np.asarray(log_density, dtype=np.float64)
    h, w = logp.shape
    p = np.exp(logp - logp.max()).ravel()
    p /= p.sum()
    rank = np.empty(p.size, dtype=np.int64)
    rank[np.argsort(-p, kind="stable")] = np.arange(p.size)
    group = rank * n_bins // p.size
    rows, cols = fixation_cells(xs, ys, h, w, what="calibration fixations")
    predicted = np.bincount(group, weights=p, minlength=n_bins)
    observed = np.bincount(group[flat_index(rows, cols, w)], minlength=n_bins).astype(np.float64)
    return predicted, observed


def calibration_table(model, dataset, images=None, n_bins: int = 10) -> pd.DataFrame:
    """One row per density decile (1 = the densest pixels) of ``model`` (``log_density(i)``, or a
    callable) over ``images`` (default all with fixations): ``predicted`` (the fixation-weighted
    mean of the mass the model puts in the decile), ``observed`` (the share of all fixations that
    fall in it), their ratio, and the fixation count."""
    f = model.log_density if hasattr(model, "log_density") else model
    images = range(len(dataset)) if images is None else images
    predicted, observed = np.zeros(n_bins), np.zeros(n_bins)
    for i in images:
        fx = dataset.fixations_of(int(i))
        if not len(fx):
            continue
        pred, obs = image_calibration(f(int(i)), fx["x"].to_numpy(), fx["y"].to_numpy(), n_bins)
        predicted += pred * len(fx)
        observed += obs
    n = observed.sum()
    if n == 0:
        raise ValueError(f"{getattr(dataset, 'name', 'dataset')}: no fixations on the images given")
    table = pd.DataFrame({"decile": np.arange(1, n_bins + 1), "predicted": predicted / n,
                          "observed": observed / n, "n_fixations": observed.astype(np.int64)})
    table["observed_over_predicted"] = table["observed"] / table["predicted"]
    return table
