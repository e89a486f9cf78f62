"""Baseline models: uniform, centre bias, and the leave-one-subject-out gold standard.

- :class:`Uniform` ``(dataset=None)``: ``-log(H W)`` everywhere.
- :class:`CenterBias` ``.fit(dataset, images)``: a Gaussian KDE of the fixations in image-normalised
  coordinates (sigma = ``bandwidth`` x width, x height) mixed with a uniform density, ``(1 - a) *
  KDE + a / (h w)``; ``log_density(i)`` leaves out image ``i``'s own fixations,
  ``log_density_for_size(h, w)`` uses all; ``to_dict`` / ``from_dict`` persist it.
- :class:`GoldStandard` ``.fit(dataset, center_bias, images)``: for subject ``s``, the KDE of the
  other subjects' fixations on the image (sigma = ``bandwidth`` x max(H, W) px) mixed as ``w_kde *
  KDE + w_cb * CB + w_uniform / (H W)``; ``loso_log_density(i, s)`` and
  ``fixation_log_likelihoods(i)`` are held out, ``log_density(i)`` is in-sample.
- :func:`fitted` ``(dataset)``: both, searched once per data set and then rebuilt from a cache
  (every notebook and evaluation of one data set shares them).

Densities: natural logs normalised over the pixels; kernels sit on the fixation's **pixel**
``(floor(y), floor(x))``, truncated (not reflected) at the border. Fits maximise the held-out
log-likelihood (docs/baselines.md).
"""
from __future__ import annotations

import base64
import hashlib
import json
import math
import sys
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import minimize_scalar

from .datasets.pixels import fixation_cells
from .io import DataError, write_json
from .paths import cache_dir
from .util import single_threaded_blas

BANDWIDTH_RANGE = (0.003, 0.5)       # search range of the relative bandwidths
SIZE_CACHE = 4                       # image sizes whose maps a CenterBias keeps (bounded memory)


def gaussian_matrix(n: int, sigma: float) -> np.ndarray:
    """(n, n) unnormalised Gaussian ``exp(-(i-k)^2 / (2 sigma^2))``."""
    d = np.arange(n, dtype=np.float64)
    return np.exp(-0.5 * ((d[:, None] - d[None, :]) / sigma) ** 2)


def _bounded_put(cache: dict, key, value, keep: int = SIZE_CACHE):
    """``cache[key] = value``, first dropping the oldest entries of its kind (``key[0]``) so that at
    most ``keep`` remain: memory stays bounded however many image sizes are seen."""
    same = [k for k in cache if k[0] == key[0]]
    for old in same[:max(0, len(same) - keep + 1)]:
        del cache[old]
    cache[key] = value
    return value


def _pixels(u, v, h, w):
    """Grid cells (row, col) of normalised positions (``x / W``, ``y / H``) on an h x w grid
    (:func:`dgstudy.datasets.pixels.fixation_cells` over an image of extent 1 x 1)."""
    return fixation_cells(u, v, 1.0, 1.0, grid=(h, w), what="centre-bias fixations")


def _log_mix(kde_density: np.ndarray, weight_uniform: float, n_pixels: int) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.log((1.0 - weight_uniform) * kde_density + weight_uniform / n_pixels)


def uniform_log_density(h: int, w: int) -> np.ndarray:
    """The uniform log density over an h x w image (float64)."""
    return np.full((int(h), int(w)), -math.log(int(h) * int(w)), dtype=np.float64)


class Uniform:
    """The uniform density over the pixels of each image (:func:`uniform_log_density`)."""

    def __init__(self, dataset=None):
        self.dataset = dataset

    def log_density_for_size(self, h: int, w: int) -> np.ndarray:
        return uniform_log_density(h, w)

    def log_density(self, i: int) -> np.ndarray:
        if self.dataset is None:
            raise ValueError("Uniform() has no dataset: use Uniform(dataset) or log_density_for_size(h, w)")
        return self.log_density_for_size(*self.dataset.sizes[i])


# -- centre bias ---------------------------------------------------------------------------------
@dataclass
class CenterBias:
    """Gaussian KDE of fixation positions normalised to image size, mixed with a uniform density.

    ``log_density(i)`` (image ``i`` of the fitted dataset) leaves out image ``i``'s own fixations
    when ``i`` was among the fitted images, so it is a cross-validated prediction;
    ``log_density_for_size(h, w)`` uses all fitted fixations (for new images / the model input).
    """

    bandwidth: float                   # kernel sd as a fraction of image width (x) and height (y)
    uniform_weight: float
    u: np.ndarray                      # normalised x of every fitted fixation
    v: np.ndarray                      # normalised y
    image_of: np.ndarray               # dataset image index of every fitted fixation (-1 if unknown)
    heldout_ll: float = float("nan")   # leave-image-out LL at the fit, bits/fix rel. to uniform
    dataset: object = field(default=None, repr=False)
    _cache: dict = field(default_factory=dict, repr=False)

    # ---- fitting ----
    @classmethod
    def fit(cls, dataset, images=None, bandwidth: float | None = None,
            uniform_weight: float | None = None) -> "CenterBias":
        """Fit on the fixations of ``images`` (default all); fixed values skip their search.

        The held-out objective is evaluated on the grid of the most common image size among
        ``images`` (exact when all share one size, as in OSIE; an approximation for mixed sizes
        that only affects which parameters are chosen).
        """
        images = np.arange(len(dataset)) if images is None else np.asarray(images, dtype=np.int64)
        fx = dataset.fixations
        fx = fx[np.isin(fx["image"].to_numpy(), images)]
        img = fx["image"].to_numpy()
        if len(np.unique(img)) < 2:
            raise DataError(f"{dataset.name}: the centre bias needs fixations on at least 2 images")
        sizes = dataset.sizes[img]
        u = fx["x"].to_numpy() / sizes[:, 1]
        v = fx["y"].to_numpy() / sizes[:, 0]
        shapes, n = np.unique(dataset.sizes[images], axis=0, return_counts=True)
        h, w = (int(s) for s in shapes[np.argmax(n)])
        with single_threaded_blas():
            return cls._fit(dataset, u, v, img, h, w, bandwidth, uniform_weight)

    @classmethod
    def _fit(cls, dataset, u, v, img, h, w, bandwidth, uniform_weight) -> "CenterBias":
        objective = _CenterBiasObjective(u, v, img, h, w)
        if bandwidth is None:
            res = minimize_scalar(lambda lb: -objective.best(math.exp(lb), uniform_weight)[0],
                                  bounds=tuple(np.log(BANDWIDTH_RANGE)), method="bounded",
                                  options={"xatol": 1e-3})
            bandwidth = math.exp(res.x)
        ll, uniform_weight = objective.best(bandwidth, uniform_weight)
        return cls(bandwidth=float(bandwidth), uniform_weight=float(uniform_weight), u=u, v=v,
                   image_of=img, heldout_ll=float(ll / math.log(2)), dataset=dataset)

    # ---- densities ----
    # Maps are kept for the last SIZE_CACHE image sizes only (a new size costs two h x h x w matrix products).
    def _kernels(self, h: int, w: int):
        key = ("K", h, w)
        if key not in self._cache:
            _bounded_put(self._cache, key,
                         (gaussian_matrix(h, self.bandwidth * h), gaussian_matrix(w, self.bandwidth * w)))
        return self._cache[key]

    def _total_kde(self, h: int, w: int) -> np.ndarray:
        """Unnormalised KDE map of all fitted fixations on an h x w grid."""
        key = ("T", h, w)
        if key not in self._cache:
            ky, kx = self._kernels(h, w)
            rows, cols = _pixels(self.u, self.v, h, w)
            counts = np.bincount(rows * w + cols, minlength=h * w).reshape(h, w).astype(np.float64)
            _bounded_put(self._cache, key, ky @ counts @ kx.T)
        return self._cache[key]

    def log_density_for_size(self, h: int, w: int) -> np.ndarray:
        """Log density (h, w) from all fitted fixations."""
        h, w = int(h), int(w)
        t = self._total_kde(h, w)
        return _log_mix(t / t.sum(), self.uniform_weight, h * w)

    def log_density(self, i: int) -> np.ndarray:
        """Log density over image ``i`` of the fitted dataset, leaving out its own fixations."""
        if self.dataset is None:
            raise ValueError("this CenterBias was rebuilt from a dict and knows no dataset; "
                             "use log_density_for_size(h, w)")
        h, w = (int(s) for s in self.dataset.sizes[i])
        own = self.image_of == i
        if not own.any():
            return self.log_density_for_size(h, w)
        ky, kx = self._kernels(h, w)
        rows, cols = _pixels(self.u[own], self.v[own], h, w)
        t = np.maximum(self._total_kde(h, w) - ky[:, rows] @ kx[:, cols].T, 0.0)
        return _log_mix(t / t.sum(), self.uniform_weight, h * w)

    # ---- persistence ----
    def to_dict(self) -> dict:
        """JSON-able; enough for ``log_density_for_size`` (positions as base64 float64, exact)."""
        return {"kind": "CenterBias", "bandwidth": self.bandwidth, "uniform_weight": self.uniform_weight,
                "heldout_ll_bits": self.heldout_ll, "n_fixations": int(len(self.u)),
                "u": _encode(self.u), "v": _encode(self.v)}

    @classmethod
    def from_dict(cls, d: dict) -> "CenterBias":
        if d.get("kind") != "CenterBias":
            raise DataError(f"not a CenterBias dict (kind={d.get('kind')!r})")
        u, v = _decode(d["u"]), _decode(d["v"])
        if len(u) != len(v) or len(u) != d.get("n_fixations", len(u)):
            raise DataError(f"CenterBias dict: {len(u)} u but {len(v)} v positions "
                            f"(n_fixations={d.get('n_fixations')})")
        return cls(bandwidth=float(d["bandwidth"]), uniform_weight=float(d["uniform_weight"]), u=u,
                   v=v, image_of=np.full(len(u), -1),
                   heldout_ll=float(d.get("heldout_ll_bits", float("nan"))))


def _encode(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a, dtype="<f8").tobytes()).decode("ascii")


def _decode(text) -> np.ndarray:
    if isinstance(text, list):                   # plain lists are accepted too
        return np.asarray(text, dtype=np.float64)
    return np.frombuffer(base64.b64decode(text), dtype="<f8").copy()


class _CenterBiasObjective:
    """Leave-image-out log-likelihood of the centre bias on one h x w grid."""

    def __init__(self, u, v, img, h, w):
        self.h, self.w = h, w
        self.rows, self.cols = _pixels(u, v, h, w)
        self.counts = np.bincount(self.rows * w + self.cols, minlength=h * w).reshape(h, w).astype(float)
        order = np.argsort(img, kind="stable")
        bounds = np.flatnonzero(np.diff(img[order])) + 1
        self.groups = np.split(order, bounds)

    def kde_at_fixations(self, bandwidth: float) -> np.ndarray:
        """Leave-image-out KDE density (per grid cell) at every fixation."""
        h, w = self.h, self.w
        ky, kx = gaussian_matrix(h, bandwidth * h), gaussian_matrix(w, bandwidth * w)
        total = ky @ self.counts @ kx.T
        cy, cx = ky.sum(0), kx.sum(0)                  # mass of a kernel centred in each row/col
        z_all = cy @ self.counts @ cx
        out = total[self.rows, self.cols]
        for idx in self.groups:
            r, c = self.rows[idx], self.cols[idx]
            own = (ky[np.ix_(r, r)] * kx[np.ix_(c, c)]).sum(1)
            out[idx] = (out[idx] - own) / (z_all - (cy[r] * cx[c]).sum())
        return np.maximum(out, 0.0)

    def best(self, bandwidth: float, uniform_weight: float | None = None) -> tuple[float, float]:
        """(mean LL in nats rel. to uniform, uniform weight) at this bandwidth, weight optimised."""
        kde = self.kde_at_fixations(bandwidth) * (self.h * self.w)   # density ratio to uniform

        def ll(a):
            return float(np.mean(np.log((1 - a) * kde + a)))
        if uniform_weight is None:        # search log(a): the optimum is often tiny
            res = minimize_scalar(lambda t: -ll(math.exp(t)), bounds=(math.log(1e-8), math.log(0.999)),
                                  method="bounded", options={"xatol": 1e-4})
            uniform_weight = math.exp(res.x)
        return ll(uniform_weight), uniform_weight


# -- gold standard -------------------------------------------------------------------------------
@dataclass
class GoldStandard:
    """Leave-one-subject-out KDE of the other subjects' fixations, mixed with centre bias + uniform."""

    dataset: object = field(repr=False)
    center_bias: object = field(repr=False)
    bandwidth: float                       # kernel sd as a fraction of max(H, W)
    weights: np.ndarray                    # (w_kde, w_cb, w_uniform), sum 1
    heldout_ll: float = float("nan")       # LOSO LL at the fit, bits/fix rel. to uniform
    _cache: dict = field(default_factory=dict, repr=False)

    @classmethod
    def fit(cls, dataset, center_bias, images=None, bandwidth: float | None = None) -> "GoldStandard":
        """Fit bandwidth and mixture weights by the LOSO log-likelihood of the fixations on ``images``."""
        with single_threaded_blas():
            return cls._fit(dataset, center_bias, images, bandwidth)

    @classmethod
    def _fit(cls, dataset, center_bias, images, bandwidth) -> "GoldStandard":
        gold = cls(dataset=dataset, center_bias=center_bias, bandwidth=0.02, weights=np.ones(3) / 3)
        s = gold._search(images, bandwidth)
        gold.bandwidth, gold.weights, gold.heldout_ll = s["bandwidth"], s["weights"], s["LL"]
        return gold

    def fit_with_others(self, choose_others, images=None) -> dict:
        """The fit of :meth:`fit` (bandwidth and mixture weights searched anew by the held-out
        log-likelihood on ``images``, default all) when the fixations that enter the KDE at each
        fixation are ``choose_others(subjects)`` rather than those of every other subject:
        ``subjects`` holds one subject id per fixation of an image, and the (n, n) bool answer says
        whether fixation g enters the density at fixation f; it is called once per image with
        fixations, in image order. Returns ``{"LL", "IG", "bandwidth", "weights", "n_fixations"}``:
        LL in bit/fix over a uniform density, IG over the centre bias. :mod:`dgstudy.ceiling` draws
        ``k`` other observers with it."""
        with single_threaded_blas():
            return self._search(images, None, choose_others)

    def _search(self, images, bandwidth=None, choose_others=None) -> dict:
        images = np.arange(len(self.dataset)) if images is None else np.asarray(images, dtype=np.int64)
        data = [self._image_terms(int(i)) for i in images]
        data = [d for d in data if d is not None]
        if not data:
            raise DataError(f"{self.dataset.name}: no fixations to fit the gold standard on")
        masks = [None if choose_others is None else choose_others(d["subject"]) for d in data]
        cb = np.concatenate([d["cb"] for d in data])       # CB density / uniform density

        def fitted(bw):
            kde = np.concatenate([self._loso_kde(d, bw, m) for d, m in zip(data, masks)])   # NaN: no other
            return _mixture_weights(kde, cb)

        if bandwidth is None:
            res = minimize_scalar(lambda lb: -fitted(math.exp(lb))[0], bounds=tuple(np.log(BANDWIDTH_RANGE)),
                                  method="bounded", options={"xatol": 1e-3})
            bandwidth = math.exp(res.x)
        ll, weights = fitted(bandwidth)
        return {"LL": float(ll / math.log(2)), "IG": (ll - float(np.log(cb).mean())) / math.log(2),
                "bandwidth": float(bandwidth), "weights": weights, "n_fixations": int(len(cb))}

    # ---- pieces ----
    def _image_terms(self, i: int):
        """Pixels, subjects and centre-bias values of image i's fixations (None if it has none)."""
        key = ("terms", i)
        if key not in self._cache:
            g = self.dataset.fixations_of(i)
            if len(g) == 0:
                return None
            h, w = (int(s) for s in self.dataset.sizes[i])
            rows, cols = fixation_cells(g["x"].to_numpy(), g["y"].to_numpy(), h, w,
                                        what=f"{self.dataset.name} image {i}")
            log_cb = self.center_bias.log_density(i)
            self._cache[key] = {"i": i, "h": h, "w": w, "rows": rows, "cols": cols,
                                "subject": g["subject"].to_numpy(),
                                "cb": np.exp(log_cb[rows, cols]) * (h * w)}
        return self._cache[key]

    def _sigma(self, h, w, bw):
        return bw * max(h, w)

    def _kernels(self, h: int, w: int, bw: float):
        """Gaussian matrices (rows, cols) of one image size at relative bandwidth ``bw`` (cached)."""
        key = ("K", h, w, bw)
        if key not in self._cache:
            for old in [k for k in self._cache if k[0] == "K" and k[1:3] == (h, w)]:
                del self._cache[old]                  # keep one bandwidth per size
            sig = self._sigma(h, w, bw)
            _bounded_put(self._cache, key, (gaussian_matrix(h, sig), gaussian_matrix(w, sig)))
        return self._cache[key]

    def _loso_kde(self, d: dict, bw: float, other: np.ndarray | None = None) -> np.ndarray:
        """LOSO KDE density / uniform density at each fixation of one image (NaN: no other subject).
        ``other``: (n, n) bool, which fixations g enter the KDE at fixation f (default: those of
        every other subject; :meth:`fit_with_others` passes a chosen subset)."""
        h, w, r, c, s = d["h"], d["w"], d["rows"], d["cols"], d["subject"]
        ky, kx = self._kernels(h, w, bw)
        pair = ky[np.ix_(r, r)] * kx[np.ix_(c, c)]                        # kernel of g at f
        other = s[:, None] != s[None, :] if other is None else other
        mass = ky.sum(0)[r] * kx.sum(0)[c]                                # grid mass of each kernel
        z = other @ mass
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(z > 0, (pair * other).sum(1) / z, np.nan) * (h * w)

    def _last(self, name: str, i: int, compute):
        """Per-image value kept for the most recent image only (evaluation walks image by image)."""
        key = ("last", name)
        if key not in self._cache or self._cache[key][0] != i:
            self._cache[key] = (i, compute())
        return self._cache[key][1]

    def _kde_sum(self, i: int, keep=None) -> np.ndarray:
        """Unnormalised KDE map of image i from all its fixations, or those selected by ``keep``."""
        d = self._image_terms(i)
        ky, kx = self._kernels(d["h"], d["w"], self.bandwidth)
        if keep is None:       # the Gaussian matrices are symmetric: ky[:, r] == ky[r].T
            return self._last("kde", i, lambda: ky[d["rows"]].T @ kx[d["cols"]])
        return ky[d["rows"][keep]].T @ kx[d["cols"][keep]]

    def _mix(self, i: int, kde_map) -> np.ndarray:
        """Log of the gold mixture on image i given a normalised KDE map (None: no KDE term)."""
        h, w = (int(s) for s in self.dataset.sizes[i])
        a, b, c = self.weights
        rest = self._last("rest", i, lambda: b * np.exp(self.center_bias.log_density(i)) + c / (h * w))
        if kde_map is None:
            return np.log(rest / (b + c))
        out = kde_map * a             # kde_map may be modified in place by the caller's choice
        out += rest
        return np.log(out, out=out)

    # ---- public ----
    def fixation_log_likelihoods(self, i: int) -> np.ndarray:
        """Natural-log LOSO likelihood of each fixation of image i (order of ``fixations_of(i)``)."""
        d = self._image_terms(i)
        if d is None:
            return np.zeros(0)
        kde = self._loso_kde(d, self.bandwidth)
        a, b, c = self.weights
        with np.errstate(invalid="ignore"):
            p = np.where(np.isnan(kde), (b * d["cb"] + c) / (b + c), a * kde + b * d["cb"] + c)
        return np.log(p) - math.log(d["h"] * d["w"])

    def loso_log_density(self, i: int, subject: int) -> np.ndarray:
        """Log density over image i from every subject except ``subject``."""
        d = self._image_terms(i)
        if d is None or (d["subject"] == subject).all():
            return self._mix(i, None)
        own = d["subject"] == subject
        t = self._kde_sum(i) - self._kde_sum(i, own)
        np.maximum(t, 0.0, out=t)
        t /= t.sum()
        return self._mix(i, t)

    def log_density(self, i: int) -> np.ndarray:
        """Log density over image i from all subjects (for plots; in-sample)."""
        if self._image_terms(i) is None:
            return self._mix(i, None)
        t = self._kde_sum(i)
        return self._mix(i, t / t.sum())

    def to_dict(self) -> dict:
        return {"kind": "GoldStandard", "bandwidth": self.bandwidth,
                "weights": {"kde": float(self.weights[0]), "center_bias": float(self.weights[1]),
                            "uniform": float(self.weights[2])}, "heldout_ll_bits": self.heldout_ll}


def _mixture_weights(kde: np.ndarray, cb: np.ndarray, iterations: int = 500, tol: float = 1e-10
                     ) -> tuple[float, np.ndarray]:
    """EM for the weights of ``w0*kde + w1*cb + w2*1`` (densities relative to uniform).

    Fixations with NaN kde (no other subject) use ``(w1*cb + w2) / (w1 + w2)``.
    Returns (mean log-likelihood in nats rel. to uniform, weights).
    """
    has = ~np.isnan(kde)
    comp = np.stack([np.where(has, kde, 0.0), cb, np.ones_like(cb)], 1)
    wts = np.array([0.8, 0.15, 0.05])
    last = -np.inf
    for _ in range(iterations):
        mix = comp * wts
        tot = mix.sum(1)
        tot_no = np.where(has, tot, tot / (wts[1] + wts[2]))
        ll = float(np.mean(np.log(tot_no)))
        resp = mix / tot[:, None]
        wts = resp[has].sum(0) + np.concatenate([[0.0], resp[~has, 1:].sum(0)]) if (~has).any() else resp.sum(0)
        wts = wts / wts.sum()
        if ll - last < tol:
            break
        last = ll
    mix = comp * wts
    tot = mix.sum(1)
    ll = float(np.mean(np.log(np.where(has, tot, tot / (wts[1] + wts[2])))))
    return ll, wts


# ---- one fit per data set ----
FIT_CACHE_VERSION = 1      # bump when a fit's objective or search changes


def cached_per_dataset(dataset, stem: str, compute, matches=lambda record: True) -> dict:
    """The record (a JSON object) that ``compute()`` returns for ``dataset``, computed once.

    It is kept in ``cache_dir()/baselines/<name>-<checksum>[-<stem>]-v<FIT_CACHE_VERSION>.json``
    with the data set's name and content checksum; every later call, in any process, reads it back
    when the checksum is the data set's and ``matches(record)`` holds, and computes it anew (and
    overwrites it, atomically) otherwise: another subset, a changed fixation file or an unreadable
    file."""
    path = cache_dir() / "baselines" / "-".join(
        filter(None, (dataset.name, dataset.checksum[:16], stem, f"v{FIT_CACHE_VERSION}.json")))
    try:
        record = json.loads(path.read_text())
        if record.get("checksum") == dataset.checksum and matches(record):
            return record
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    record = {"dataset": dataset.name, "checksum": dataset.checksum, **compute()}
    write_json(path, record)
    return record


def fitted_center_bias(dataset, images) -> CenterBias:
    """``CenterBias.fit(dataset, images)``, searched once per (data set, set of images).

    Every run of a study trains on the same folds, so each fold's centre bias is the same fit: the
    first call searches its bandwidth and uniform weight and keeps them
    (:func:`cached_per_dataset`, ``<name>-<checksum>-images-<hash>``); later calls, in any process,
    fit with those two values fixed, which gives the same model without the search."""
    images = np.unique(np.asarray(images, dtype=np.int64))
    key = hashlib.sha256(images.astype("<i8").tobytes()).hexdigest()[:16]
    searched = []

    def search():
        searched.append(CenterBias.fit(dataset, images))
        return {"images": images.tolist(), "bandwidth": searched[0].bandwidth,
                "uniform_weight": searched[0].uniform_weight}

    p = cached_per_dataset(dataset, f"images-{key}", search,
                           matches=lambda p: p["images"] == images.tolist())
    if searched:
        return searched[0]
    return CenterBias.fit(dataset, images, bandwidth=p["bandwidth"], uniform_weight=p["uniform_weight"])


def fitted(dataset) -> tuple[CenterBias, GoldStandard]:
    """The data set's leave-image-out centre bias and its gold standard, searched once per data set.

    The first call fits both (``CenterBias.fit(dataset)``, ``GoldStandard.fit(dataset, cb)``) and
    keeps the searched parameters (:func:`cached_per_dataset`, ``<name>-<checksum>``); every later
    call, in any process, rebuilds the same two models from them without searching. The key is
    the data set's content checksum, so another subset or a changed fixation file fits anew.
    """
    searched = []

    def search():
        print(f"{dataset.name}: fitting the centre bias and the gold standard (once per data set)",
              file=sys.stderr, flush=True)
        cb = CenterBias.fit(dataset)
        gold = GoldStandard.fit(dataset, cb)
        searched.append((cb, gold))
        return {"center_bias": {k: v for k, v in cb.to_dict().items() if k not in ("u", "v")},
                "gold_standard": gold.to_dict()}

    p = cached_per_dataset(dataset, "", search,
                           matches=lambda p: {"center_bias", "gold_standard"} <= set(p))
    if searched:
        return searched[0]
    cb = CenterBias.fit(dataset, bandwidth=p["center_bias"]["bandwidth"],
                        uniform_weight=p["center_bias"]["uniform_weight"])
    g = p["gold_standard"]
    gold = GoldStandard(dataset=dataset, center_bias=cb, bandwidth=float(g["bandwidth"]),
                        weights=np.array([g["weights"][k] for k in ("kde", "center_bias", "uniform")]),
                        heldout_ll=float(g["heldout_ll_bits"]))
    return cb, gold
