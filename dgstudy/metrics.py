"""Metrics of probabilistic fixation models, computed the way the MIT/Tübingen benchmark does.

A *model* is an object with ``log_density(i) -> (H, W)`` (natural log, ``exp`` sums to 1 over the
pixels of image ``i``; numpy or torch), a callable ``f(i)`` returning the same, or an object not
bound to a data set (``model.dataset is None``) with ``log_density_for_size(h, w)``, which is
evaluated at the data set's image sizes. :func:`evaluate` computes every metric; what each sees:

- LL: bits/fixation relative to a uniform density, ``log2 p(fix) + log2(H W)``; IG: bits/fixation
  over ``baseline`` (None = uniform), ``log2 p(fix) - log2 p_baseline(fix)``; explained_IG:
  ``IG / IG_gold`` over the same baseline and fixations.
- AUC: the density, negatives = all pixels; sAUC: ``log p - log p_baseline``, negatives = the
  fixations on the other evaluated images rescaled to this image's size; ties count one half.
- NSS: the density standardised per image; CC, KLDiv, SIM: the density blurred like the empirical
  map (:func:`gaussian_blur`, sigma = ``kernel_size`` px) against the empirical map.
- Fixation pixel = ``(floor(y), floor(x))``; outside the image: DataError. Per-fixation metrics
  come as ``<m>_per_fixation`` and ``<m>_per_image``; the plain key follows the benchmark (LL, IG,
  explained_IG per fixation, the rest per image; ``result['conventions']``). A model with
  ``loso_log_density(i, subject)`` is scored per subject on LL, IG, AUC, sAUC, NSS.

:func:`evaluate_saliency_maps` scores raw saliency maps (not densities) the classic way: AUC,
sAUC, NSS, CC, KLDiv and SIM on the map as it is.

The plain definitions come first; :func:`evaluate` uses the exact speed-ups of
:mod:`dgstudy.metrics_fast` (equivalence-tested). Sources and departures: docs/metrics.md.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import pandas as pd
from scipy.ndimage import gaussian_filter
from tqdm.auto import tqdm

from . import metrics_fast
from .datasets.pixels import fixation_cells, flat_index
from .util import single_threaded_blas

CONSTANT_RTOL = 1e-9
KL_EPS = 2.2204e-16                    # regularisation of the MIT benchmark's KL divergence
PIXELS_PER_DEGREE = {"osie": 24.0, "mit1003": 35.0}   # ~1 degree of visual angle, in pixels
PER_FIXATION = ("LL", "IG", "AUC", "sAUC", "NSS")
PER_IMAGE_ONLY = ("CC", "KLDiv", "SIM")
NOT_COMPUTABLE = {"sAUC": "the fixations fall on a single image; sAUC draws its negatives from the "
                          "fixations on the other images (NaN)"}
MAIN_AVERAGE = {"LL": "fixation", "IG": "fixation", "explained_IG": "fixation", "AUC": "image",
                "sAUC": "image", "NSS": "image", "CC": "image", "KLDiv": "image", "SIM": "image"}


# -- the metrics: plain definitions --------------------------------------------------------------
def log_likelihood_bits(log_p, n_pixels: int):
    """LL in bits/fixation relative to a uniform density over ``n_pixels``: ``(log p + log n) / log 2``."""
    return (log_p + math.log(n_pixels)) / math.log(2)


def information_gain_bits(log_p, log_p_baseline):
    """IG in bits/fixation over a baseline: ``(log p - log p_baseline) / log 2``."""
    return (log_p - log_p_baseline) / math.log(2)


def auc_per_positive(positives: np.ndarray, negatives: np.ndarray) -> np.ndarray:
    """AUC of each positive against all negatives: ``P(neg < pos) + P(neg == pos) / 2``.

    The probability that the positive outranks a negative, ties counting one half; its mean over
    the positives is the AUC (pysaliency's ``general_rocs_per_positive`` / ``general_roc``).
    """
    positives = np.asarray(positives, dtype=np.float64).ravel()
    negatives = np.sort(np.asarray(negatives, dtype=np.float64).ravel())
    less = np.searchsorted(negatives, positives, side="left")
    ties = np.searchsorted(negatives, positives, side="right") - less
    return (less + 0.5 * ties) / len(negatives)


class ShuffledNegatives:
    """The sAUC negatives of each image: the fixations on all *other* evaluated images.

    Rescaled to the image's size: the cell of an ``H_n x W_n`` grid laid over the other image
    (:func:`dgstudy.datasets.pixels.fixation_cells`, ``floor(x * W_n / W_other)``, as pysaliency's
    ``FullShuffledNonfixationProvider`` truncates ``x * W_n / W_other``); the sAUC of a fixation is :func:`auc_per_positive` of
    ``log p - log p_baseline`` there against the same at these pixels. (Pixels are computed once
    per image size.)
    """

    def __init__(self, image, x, y, sizes):
        self.image, self.x, self.y = np.asarray(image), np.asarray(x, float), np.asarray(y, float)
        self.sizes = np.asarray(sizes)
        self._flat = {}

    def _flat_for_size(self, h: int, w: int) -> np.ndarray:
        if (h, w) not in self._flat:
            rows, cols = fixation_cells(self.x, self.y, self.sizes[self.image, 0], self.sizes[self.image, 1],
                                        grid=(h, w), what="sAUC negatives")
            self._flat[(h, w)] = flat_index(rows, cols, w)
        return self._flat[(h, w)]

    def indices(self, h: int, w: int, n: int) -> np.ndarray:
        """Flat pixel indices (on an h x w image) of the fixations on images other than ``n``."""
        return self._flat_for_size(h, w)[self.image != n]


def nss_values(saliency: np.ndarray, rows, cols) -> np.ndarray:
    """Standardised saliency at the fixations (pysaliency ``NSS``).

    A constant map (std below ``CONSTANT_RTOL`` times the mean: constant up to rounding) gives 0.
    """
    mean, std = saliency.mean(), saliency.std()
    if std <= CONSTANT_RTOL * abs(mean):
        return np.zeros(len(np.atleast_1d(rows)))
    return (saliency[rows, cols] - mean) / std


def cc(map1: np.ndarray, map2: np.ndarray) -> float:
    """Pearson correlation of two maps (pysaliency ``CC``: 0 if only ``map1`` is constant).

    ``map1`` counts as constant when its std is below ``CONSTANT_RTOL`` times its mean (a blurred
    uniform density is constant only up to rounding).
    """
    a = map1 - map1.mean()
    b = map2 - map2.mean()
    saa, sbb = float((a * a).sum()), float((b * b).sum())
    if saa <= (CONSTANT_RTOL * map1.mean()) ** 2 * a.size and sbb != 0:
        return 0.0
    with np.errstate(invalid="ignore", divide="ignore"):
        return float((a * b).sum() / math.sqrt(saa * sbb))


def as_density(saliency: np.ndarray) -> np.ndarray:
    """pysaliency's ``convert_saliency_map_to_density`` with ``minimum_value=0``."""
    if saliency.min() < 0:
        saliency = saliency - saliency.min()
    total = saliency.sum()
    return saliency / total if total else np.full_like(saliency, 1.0 / saliency.size)


def kl_div(model_map: np.ndarray, empirical_map: np.ndarray, eps: float = KL_EPS) -> float:
    """The MIT benchmark's image-based KL divergence of the model map from the empirical map."""
    m, e = as_density(model_map), as_density(empirical_map)
    return float((e * np.log(eps + e / (m + eps))).sum())


def sim(map1: np.ndarray, map2: np.ndarray) -> float:
    """Histogram intersection of the two maps as densities (pysaliency ``SIM``)."""
    return float(np.minimum(as_density(map1), as_density(map2)).sum())


def gaussian_blur(saliency: np.ndarray, sigma: float) -> np.ndarray:
    """The blur of the empirical saliency map: ``gaussian_filter(..., mode='reflect', truncate=4)``.

    As pysaliency's ``FixationMap(kernel_size=sigma)``; ``'reflect'`` is the half-sample symmetric
    extension at the borders.
    """
    return gaussian_filter(np.asarray(saliency, dtype=np.float64), sigma, mode="reflect", truncate=4.0)


def empirical_saliency_map(rows, cols, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """The fixation count map (duplicates counted) blurred with :func:`gaussian_blur`."""
    counts = np.zeros(shape)
    np.add.at(counts, (np.asarray(rows), np.asarray(cols)), 1.0)
    return gaussian_blur(counts, sigma)


def expected_saliency_map(density: np.ndarray, sigma: float) -> np.ndarray:
    """A model's map for CC, KLDiv and SIM: its density blurred like the empirical map.

    The blur is linear, so this is exactly the expected empirical map under the model.
    """
    return gaussian_blur(density, sigma)


# -- models and their inputs -----------------------------------------------------------------------
def default_kernel_size(dataset, shape=None) -> float:
    """Gaussian sigma (px) of the empirical saliency map: about one degree of visual angle.

    ``dataset.notes['pixels_per_degree']`` if set, else :data:`PIXELS_PER_DEGREE` by dataset name
    (MIT1003: 35 px as in the MIT benchmark; OSIE: 24 px, 800 px spanning about 33.7 degrees),
    else 1/30 of the larger side of ``shape`` (or of the first image).
    """
    ppd = dataset.notes.get("pixels_per_degree") if hasattr(dataset, "notes") else None
    if ppd:
        return float(ppd)
    if getattr(dataset, "name", None) in PIXELS_PER_DEGREE:
        return PIXELS_PER_DEGREE[dataset.name]
    h, w = shape if shape is not None else dataset.sizes[0]
    return max(h, w) / 30.0


def model_function(model, dataset=None) -> Callable[[int], np.ndarray]:
    """``i -> log density`` for a model object or a callable (see the module docstring).

    A model with ``log_density_for_size(h, w)`` whose ``dataset`` is None (e.g. ``Uniform()`` or a
    centre bias rebuilt from a dict) is evaluated at ``dataset.sizes[i]``.
    """
    if (dataset is not None and getattr(model, "dataset", True) is None
            and hasattr(model, "log_density_for_size")):
        return lambda i: model.log_density_for_size(*dataset.sizes[i])
    if hasattr(model, "log_density"):
        return model.log_density
    if callable(model):
        return model
    raise TypeError(f"a model needs a log_density(i) method or must be callable, got {type(model).__name__}")


def to_numpy(x) -> np.ndarray:
    """A float64 numpy copy of a numpy array or torch tensor."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().double().numpy()
    return np.array(x, dtype=np.float64)


def checked_log_density(logp, shape: tuple[int, int], image: int, norm_tol: float = 1e-3
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Validate a log-density for image ``image``; return ``(log p, p)`` exactly normalised."""
    logp = to_numpy(logp)
    if logp.shape != tuple(shape):
        raise ValueError(f"image {image}: log density has shape {logp.shape}, expected {tuple(shape)}")
    top = logp.max()                     # NaN propagates through max
    if np.isnan(top) or top == np.inf:
        raise ValueError(f"image {image}: log density contains NaN or +inf")
    p = np.exp(logp)
    total = p.sum()
    if not np.isfinite(total) or abs(total - 1.0) > norm_tol:
        raise ValueError(f"image {image}: density sums to {total:.6g}, not 1 (is it a log density? "
                         f"tolerance {norm_tol})")
    if total != 1.0:
        logp -= math.log(total)
        p /= total
    return logp, p


def fixation_pixels(xs, ys, shape, image: int = -1) -> tuple[np.ndarray, np.ndarray]:
    """Row and column of each fixation on an image of ``shape`` (H, W):
    :func:`dgstudy.datasets.pixels.fixation_cells`, DataError if any lies outside."""
    return fixation_cells(xs, ys, shape[0], shape[1], what=f"image {image}")


# -- evaluation -----------------------------------------------------------------------------------
def evaluate(model, dataset, baseline=None, gold=None, images=None, per_image: bool = False,
             kernel_size: float | None = None, norm_tol: float = 1e-3, progress: bool = False):
    """All metrics of ``model`` on ``dataset`` (conventions: the module docstring, docs/metrics.md).

    Parameters
    ----------
    model : object with ``log_density(i)`` or callable ``f(i)``; log-densities over image i's pixels.
    baseline : model for IG and for the sAUC density ratio (usually the leave-image-out
        :class:`~dgstudy.baselines.CenterBias`); ``None`` = uniform.
    gold : :class:`~dgstudy.baselines.GoldStandard` (``fixation_log_likelihoods(i)``) for
        explained_IG; ``None`` leaves explained_IG NaN.
    images : indices to evaluate (default: all images); sAUC negatives come from these images only.
    kernel_size : sigma in px of the empirical saliency map (default :func:`default_kernel_size`).

    Returns a dict of floats (LL, IG, explained_IG, AUC, sAUC, NSS, CC, KLDiv, SIM, their
    ``_per_fixation``/``_per_image`` variants, IG_gold, n_images, n_fixations, n_images_skipped,
    kernel_size, baseline, conventions) and ``not_computable`` ({metric: reason}; its values are
    NaN: sAUC when the fixations fall on a single image); with ``per_image=True`` also a DataFrame with one row per
    evaluated image (image, n_fix, LL, IG, IG_gold, AUC, sAUC, NSS, CC, KLDiv, SIM).
    """
    images = np.arange(len(dataset)) if images is None else np.asarray(images, dtype=np.int64)
    fx = dataset.fixations
    fx = fx[np.isin(fx["image"].to_numpy(), images)]
    counts = np.bincount(fx["image"].to_numpy(), minlength=len(dataset))
    skipped = int((counts[images] == 0).sum())
    images = images[counts[images] > 0]
    if len(images) == 0:
        raise ValueError(f"{dataset.name}: no fixations on the images to evaluate")
    kernel_size = float(kernel_size) if kernel_size else default_kernel_size(dataset)
    model_fn = model_function(model, dataset)
    base_fn = model_function(baseline, dataset) if baseline is not None else None
    loso = getattr(model, "loso_log_density", None)
    blur = metrics_fast.Blur(kernel_size)      # gaussian_blur / empirical_saliency_map, fast
    shuffled = ShuffledNegatives(fx["image"].to_numpy(), fx["x"].to_numpy(), fx["y"].to_numpy(), dataset.sizes)
    by_image = {i: g for i, g in fx.groupby("image", sort=False)}

    with single_threaded_blas():
        fix_rows, img_rows = _evaluate_images(images, dataset, by_image, model_fn, base_fn, loso, gold,
                                              blur, shuffled, norm_tol, progress)
    table = pd.DataFrame(img_rows)
    allfix = {k: np.concatenate([r[k] for r in fix_rows]) for k in fix_rows[0]}
    summary = _summarise(allfix, table, gold is not None)
    summary.update(n_images=int(len(images)), n_fixations=int(len(allfix["LL"])),
                   n_images_skipped=skipped, kernel_size=kernel_size,
                   baseline="uniform" if baseline is None else type(baseline).__name__,
                   conventions=_conventions(loso is not None),
                   not_computable={"sAUC": NOT_COMPUTABLE["sAUC"]} if len(images) < 2 else {})
    if per_image:
        cols = ["image", "n_fix", "LL", "IG"] + (["IG_gold"] if gold is not None else []) + \
               ["AUC", "sAUC", "NSS", "CC", "KLDiv", "SIM"]
        return summary, table[cols]
    return summary


def evaluate_saliency_maps(saliency, dataset, images=None, kernel_size: float | None = None,
                           progress: bool = False) -> tuple[dict, pd.DataFrame]:
    """The classic benchmark's metrics computed on **raw** saliency maps, not on a density.

    ``saliency(i) -> (H, W)``: any map of image ``i`` at its size (only the order of its values
    matters for AUC and sAUC; NSS standardises it; CC, KLDiv and SIM compare it, made a density by
    :func:`as_density`, with the empirical map, unblurred). AUC: negatives = all pixels; sAUC:
    negatives = the map at the fixations on the other evaluated images (:class:`ShuffledNegatives`).
    These are the numbers a benchmark that scores submitted maps as they are reports; for a
    density the maps of :func:`evaluate` are the optimal ones. Returns (summary: the image
    averages of AUC, sAUC, NSS, CC, KLDiv, SIM and ``n_images``; per-image table).
    """
    images = np.arange(len(dataset)) if images is None else np.asarray(images, dtype=np.int64)
    fx = dataset.fixations
    fx = fx[np.isin(fx["image"].to_numpy(), images)]
    by_image = {i: g for i, g in fx.groupby("image", sort=False)}
    images = np.array([i for i in images if int(i) in by_image], dtype=np.int64)
    kernel_size = float(kernel_size) if kernel_size else default_kernel_size(dataset)
    blur = metrics_fast.Blur(kernel_size)
    shuffled = ShuffledNegatives(fx["image"].to_numpy(), fx["x"].to_numpy(), fx["y"].to_numpy(), dataset.sizes)
    rows_out = []
    with single_threaded_blas():
        for i in tqdm(images, desc="raw maps", disable=not progress, leave=False):
            i = int(i)
            shape = tuple(int(v) for v in dataset.sizes[i])
            g = by_image[i]
            rows, cols = fixation_pixels(g["x"].to_numpy(), g["y"].to_numpy(), shape, i)
            sal = to_numpy(saliency(i))
            if sal.shape != shape:
                raise ValueError(f"image {i}: saliency map has shape {sal.shape}, expected {shape}")
            at_fix = sal[rows, cols]
            neg = shuffled.indices(*shape, i)
            empirical = blur.fixations(rows, cols, shape)
            rows_out.append({
                "image": i, "n_fix": len(rows),
                "AUC": float(metrics_fast.auc_per_positive(at_fix, sal).mean()),
                "sAUC": float(metrics_fast.auc_per_positive(at_fix, sal.ravel()[neg]).mean()) if len(neg) else np.nan,
                "NSS": float(nss_values(sal, rows, cols).mean()),
                "CC": cc(sal, empirical), "KLDiv": kl_div(sal, empirical), "SIM": sim(sal, empirical)})
    table = pd.DataFrame(rows_out)
    summary = {m: float(table[m].mean()) for m in ("AUC", "sAUC", "NSS", "CC", "KLDiv", "SIM")}
    summary.update(n_images=int(len(table)), kernel_size=kernel_size,
                   conventions="raw maps: mean over images; CC, KLDiv, SIM against the empirical map")
    return summary, table


def _evaluate_images(images, dataset, by_image, model_fn, base_fn, loso, gold, blur, shuffled,
                     norm_tol, progress):
    """Per-fixation arrays and per-image rows for every image (the loop of :func:`evaluate`)."""
    fix_rows, img_rows = [], []
    for i in tqdm(images, desc="evaluate", disable=not progress, leave=False):
        i = int(i)
        shape = tuple(int(s) for s in dataset.sizes[i])
        g = by_image[i]
        rows, cols = fixation_pixels(g["x"].to_numpy(), g["y"].to_numpy(), shape, i)
        logp, p = checked_log_density(model_fn(i), shape, i, norm_tol)
        log_base = (checked_log_density(base_fn(i), shape, i, norm_tol)[0] if base_fn
                    else np.full(shape, -math.log(shape[0] * shape[1])))
        per_fix = _per_fixation_metrics(i, g, rows, cols, logp, p, log_base, loso, shuffled, norm_tol)
        if gold is not None:
            per_fix["IG_gold"] = information_gain_bits(
                np.asarray(gold.fixation_log_likelihoods(i), dtype=np.float64), log_base[rows, cols])
        fix_rows.append(per_fix)
        expected = blur.dense(p)                              # expected_saliency_map(p, sigma)
        empirical = blur.fixations(rows, cols, shape)         # empirical_saliency_map(...)
        img_rows.append({"image": i, "n_fix": len(rows),
                         **{k: float(v.mean()) for k, v in per_fix.items()},
                         "CC": cc(expected, empirical), "KLDiv": kl_div(expected, empirical),
                         "SIM": sim(expected, empirical)})
    return fix_rows, img_rows


def _per_fixation_metrics(i, g, rows, cols, logp, p, log_base, loso, shuffled, norm_tol):
    """LL, IG, AUC, sAUC, NSS of each fixation of image i (per subject for LOSO models)."""
    h, w = logp.shape
    neg = shuffled.indices(h, w, i)                  # sAUC negatives (flat pixel indices)
    base_neg = log_base.ravel()[neg]
    out = {k: np.empty(len(rows)) for k in PER_FIXATION}

    def score(sel, lp, pp):
        r, c = rows[sel], cols[sel]
        ll = lp[r, c]
        out["LL"][sel] = log_likelihood_bits(ll, h * w)
        out["IG"][sel] = information_gain_bits(ll, log_base[r, c])
        out["AUC"][sel] = metrics_fast.auc_per_positive(pp[r, c], pp)
        out["sAUC"][sel] = (metrics_fast.auc_per_positive(ll - log_base[r, c], lp.ravel()[neg] - base_neg)
                            if len(neg) else np.nan)       # no other image: see NOT_COMPUTABLE
        out["NSS"][sel] = nss_values(pp, r, c)

    if loso is None:
        score(slice(None), logp, p)
    else:
        subj = g["subject"].to_numpy()
        for s in np.unique(subj):
            score(np.flatnonzero(subj == s), *checked_log_density(loso(i, int(s)), (h, w), i, norm_tol))
    return out


def _summarise(allfix: dict, table: pd.DataFrame, has_gold: bool) -> dict:
    out = {}
    for m in PER_FIXATION:
        out[f"{m}_per_fixation"] = float(allfix[m].mean())
        out[f"{m}_per_image"] = float(table[m].mean())
    for m in PER_IMAGE_ONLY:
        out[f"{m}_per_image"] = float(table[m].mean())
    if has_gold:
        out["IG_gold_per_fixation"] = float(allfix["IG_gold"].mean())
        out["IG_gold_per_image"] = float(table["IG_gold"].mean())
        out["explained_IG_per_fixation"] = out["IG_per_fixation"] / out["IG_gold_per_fixation"]
        out["explained_IG_per_image"] = out["IG_per_image"] / out["IG_gold_per_image"]
    else:
        out["IG_gold_per_fixation"] = out["IG_gold_per_image"] = float("nan")
        out["explained_IG_per_fixation"] = out["explained_IG_per_image"] = float("nan")
    main = {m: out[f"{m}_per_{avg}"] for m, avg in MAIN_AVERAGE.items()}
    main["IG_gold"] = out["IG_gold_per_fixation"]
    return {**main, **out}


def _conventions(loso: bool) -> dict:
    conv = {m: f"mean over {avg}s" for m, avg in MAIN_AVERAGE.items()}
    conv["IG_gold"] = "mean over fixations"
    conv["units"] = "LL, IG, IG_gold: bits/fixation; LL relative to a uniform density"
    conv["maps"] = ("AUC, NSS: density; sAUC: log density - log baseline, negatives = fixations on "
                    "other images; CC, KLDiv, SIM: density blurred like the empirical map")
    if loso:
        conv["leave_one_subject_out"] = ("LL, IG, AUC, sAUC, NSS per subject from the density without "
                                         "that subject; CC, KLDiv, SIM from the all-subject density "
                                         "(in-sample upper bound)")
    return conv
