"""The study around the model: ablation grids, bootstrap intervals, the results table, a preflight.

Everything the notebooks 03-06 compute lives here (the notebooks only call it and plot).

Conventions
-----------
* Metrics come from :func:`dgstudy.metrics.evaluate` (through ``training.evaluate_run``): ``LL`` and
  ``IG`` in **bits per fixation**, ``IG`` relative to the cross-validated centre bias, ``explained_IG``
  = IG_model / IG_gold (a fraction, not a percentage).
* Bootstrap intervals resample **images** (with replacement; fixations stay with their image), the unit
  the study generalises over. A per-fixation average over images is the ratio
  ``sum_i n_i v_i / sum_i n_i`` (``n_i`` fixations and per-fixation mean ``v_i`` of image ``i``), so
  every resample recomputes that ratio; intervals are percentile intervals.
* Each ablation condition is one ``training.train_crossval`` run named ``<run>-layers-<cond>`` or
  ``<run>-cb-<cond>``; the condition equal to the main configuration reuses the main run
  ``<run>`` (the chain trained it in notebook 02; finished folds are never retrained).
* Study outputs (tables) go to :func:`output_dir` = ``results/<profile>/`` (``results/<profile>-<backbone>/``
  when the backbone differs from the profile's own), figures to ``figures/<same tag>/``.

Layer grids (``layer_grid``)
----------------------------
Early layers are huge (VGG-19 ``relu1_x`` has 64 channels at full resolution of the downsampled
image; ``relu3_4`` 256 channels at stride 4), so the grids stop at stride >= 8 of the backbone input,
i.e. 1/16 of the stimulus after the factor-2 downsampling. For VGG-19 the default grid is

* single layers across depth: ``pool3`` (s8, 256 ch), ``relu4_2``, ``relu4_4`` (s8, 512 ch),
  ``relu5_1``, ``relu5_2``, ``relu5_4`` (s16), ``pool5`` (s32);
* blocks: ``block4`` = ``relu4_1..relu4_4``, ``block5`` = ``relu5_1..relu5_4``;
* ``paper5``: the paper's set ``conv5_1 relu5_1 relu5_2 conv5_3 relu5_4`` (the main run).

Storage (float16): the layers outside the paper set cost about 14 MB per MIT1003 image
(1024x768 -> 512x384 input), i.e. about 14 GB for MIT1003 and 6 GB for OSIE; they go to a store of
their own (``features.default_store_path`` with those layers). For other backbones the grid is derived from
``backbone.strides``: the last layer of every stride group >= 8 (the stage outputs; for
EfficientNet-Lite0 these are its blocks ``block2``, ``block4`` and ``head``) and the backbone's
default set (``block3..block6``), i.e. three extra runs. The ``smoke`` grid is the default set and the
deepest single layer.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from .io import atomic_path, write_json
from .paths import figures_dir, results_dir

PAPER_LAYERS = ["conv5_1", "relu5_1", "relu5_2", "conv5_3", "relu5_4"]

METRICS = ["LL", "IG", "explained_IG", "AUC", "sAUC", "NSS", "CC", "KLDiv", "SIM"]
UNITS = {"LL": "bit/fix", "IG": "bit/fix", "explained_IG": "fraction", "AUC": "", "sAUC": "",
         "NSS": "", "CC": "", "KLDiv": "", "SIM": ""}

# The published figures. Both sets are on MIT300 (the MIT Saliency Benchmark's held-out test set;
# the models were trained on MIT1003 after pretraining on SALICON, and the 10 fold models form an
# ensemble). ``explained_IG`` for DeepGaze II / DeepGaze I: the abstract of arXiv:1610.01563
# ("explains about 87% ... (DeepGaze I ... 56%)"). The other metrics: the MIT Saliency Benchmark's
# MIT300 entry for DeepGaze II, the benchmark the paper reports its AUC ranking on; those entries were
# computed by the benchmark from one saliency map per image (classic evaluation), not from the
# metric-specific maps dgstudy derives from the density (Kümmerer et al. 2018). Caveat: the paper's
# own text was not reachable from the workplace this table was written in; 87% / 56% are quoted in
# every abstract listing, while the six benchmark values are the widely reproduced MIT300 listing
# for DeepGaze II (e.g. in later papers' comparison tables) and should be re-checked against
# saliency.mit.edu / the paper's Table 1 before they are cited.
PAPER_SOURCE_ABSTRACT = "arXiv:1610.01563, abstract: MIT300 hold-out benchmark"
PAPER_SOURCE_MIT300 = ("MIT Saliency Benchmark, MIT300 entry 'DeepGaze II' (classic single-map "
                       "evaluation), the benchmark cited in arXiv:1610.01563; recalled listing, not re-checked "
                       "against the benchmark site in this study")
MODEL_NAMES = {"deepgaze2": "DeepGaze II", "deepgaze1": "DeepGaze I"}
PAPER_RESULTS = {
    "deepgaze2": {
        "explained_IG": (0.87, PAPER_SOURCE_ABSTRACT),
        "AUC": (0.88, PAPER_SOURCE_MIT300),
        "sAUC": (0.72, PAPER_SOURCE_MIT300),
        "NSS": (1.29, PAPER_SOURCE_MIT300),
        "CC": (0.52, PAPER_SOURCE_MIT300),
        "KLDiv": (0.96, PAPER_SOURCE_MIT300),
        "SIM": (0.46, PAPER_SOURCE_MIT300),
    },
    "deepgaze1": {
        "explained_IG": (0.56, PAPER_SOURCE_ABSTRACT),
    },
}


# -- where things go ------------------------------------------------------------------------
def output_tag(params: dict) -> str:
    """``<profile>``, or ``<profile>-<backbone>`` when the backbone is not the profile's own."""
    from . import profiles

    try:
        own = profiles.load(params["profile"]).get("backbone")
    except KeyError:
        own = None
    if own is None or params.get("backbone") in (None, own):
        return params["profile"]
    return f"{params['profile']}-{params['backbone']}"


def output_dir(params: dict) -> Path:
    d = results_dir() / output_tag(params)
    d.mkdir(parents=True, exist_ok=True)
    return d


def figure_dir(params: dict) -> Path:
    d = figures_dir() / output_tag(params)
    d.mkdir(parents=True, exist_ok=True)
    return d


# -- bootstrap ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Interval:
    """A point estimate with a percentile bootstrap interval."""

    estimate: float
    low: float
    high: float
    level: float
    n_boot: int

    def as_dict(self, name: str) -> dict:
        """``{name: estimate, name_lo: low, name_hi: high}``."""
        return {name: self.estimate, f"{name}_lo": self.low, f"{name}_hi": self.high}

    def __str__(self) -> str:
        return f"{self.estimate:.4f} [{self.low:.4f}, {self.high:.4f}]"


def _resample_counts(n: int, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n) how often each of n units is drawn in each resample (sum n per row)."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(np.float64)


def _interval(estimate: float, boots: np.ndarray, level: float) -> Interval:
    alpha = (1.0 - level) / 2.0
    boots = boots[np.isfinite(boots)]
    lo, hi = np.quantile(boots, [alpha, 1.0 - alpha]) if boots.size else (np.nan, np.nan)
    return Interval(float(estimate), float(lo), float(hi), level, int(boots.size))


def bootstrap_mean(values, weights=None, n_boot: int = 1000, level: float = 0.95,
                   seed: int = 0) -> Interval:
    """Weighted mean ``sum w v / sum w`` over units, with a bootstrap interval over units.

    ``values``: one number per unit (image); ``weights``: e.g. the fixation count of each image,
    which makes the estimate the per-fixation average. Units are resampled with replacement.
    """
    v = np.asarray(values, dtype=np.float64)
    w = np.ones_like(v) if weights is None else np.asarray(weights, dtype=np.float64)
    if v.ndim != 1 or v.shape != w.shape or v.size == 0:
        raise ValueError(f"need matching non-empty 1-d values/weights, got {v.shape} and {w.shape}")
    return bootstrap_ratio(v * w, w, n_boot=n_boot, level=level, seed=seed)


def bootstrap_ratio(numerator, denominator, n_boot: int = 1000, level: float = 0.95,
                    seed: int = 0) -> Interval:
    """``sum num / sum den`` over units, with a bootstrap interval resampling units jointly."""
    a = np.asarray(numerator, dtype=np.float64)
    b = np.asarray(denominator, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"need matching non-empty 1-d arrays, got {a.shape} and {b.shape}")
    counts = _resample_counts(a.size, n_boot, seed)
    with np.errstate(invalid="ignore", divide="ignore"):
        boots = (counts @ a) / (counts @ b)
    return _interval(a.sum() / b.sum(), boots, level)


def bootstrap_paired_difference(values_a, values_b, weights, n_boot: int = 1000,
                                level: float = 0.95, seed: int = 0) -> Interval:
    """Difference of two weighted means over the *same* units, resampled jointly (paired)."""
    a, b, w = (np.asarray(x, dtype=np.float64) for x in (values_a, values_b, weights))
    return bootstrap_ratio((a - b) * w, w, n_boot=n_boot, level=level, seed=seed)


# -- per-run summaries ------------------------------------------------------------------------
def load_run_metrics(run_dir: str | Path, **evaluate_kw) -> tuple[dict, pd.DataFrame]:
    """(metrics dict, per-image DataFrame) of a training run, from ``metrics.json`` (its ``summary``)
    and ``per_image.csv``; evaluates the run first (``training.evaluate_run(run_dir,
    **evaluate_kw)``, e.g. with a shared ``dataset``, ``baseline`` and ``gold``) if they are missing.
    """
    run_dir = Path(run_dir)
    if not (run_dir / "metrics.json").exists() or not (run_dir / "per_image.csv").exists():
        from .training import evaluate_run
        evaluate_run(run_dir, **evaluate_kw)
    summary = json.loads((run_dir / "metrics.json").read_text())
    summary = summary.get("summary", summary)   # evaluate_run nests the metrics under "summary"
    per_image = pd.read_csv(run_dir / "per_image.csv")
    return summary, per_image


# How the headline value of each metric averages (as dgstudy.metrics.evaluate does, following the
# benchmark): over fixations (weight = fixations of the image) or over images (equal weights).
PER_FIXATION_METRICS = ("LL", "IG")
PER_IMAGE_METRICS = ("AUC", "sAUC", "NSS", "CC", "KLDiv", "SIM")


def summarize(summary: dict, per_image: pd.DataFrame, n_boot: int = 1000, level: float = 0.95,
              seed: int = 0) -> dict:
    """The run's metrics plus image-bootstrap intervals ``<m>_lo``, ``<m>_hi`` for every metric in
    the per-image table: LL and IG as per-fixation averages (images weighted by their fixation
    count), AUC, sAUC, NSS, CC, KLDiv, SIM as per-image averages, and explained IG (the ratio of
    summed IG to summed gold-standard IG, column ``IG_gold``) when the table has it.

    Returns a flat dict: every scalar entry of ``summary`` (the headline values win over the
    bootstrap's point estimates, which equal them up to rounding), plus the intervals.
    """
    out = {k: v for k, v in summary.items() if np.isscalar(v) or v is None}
    n = per_image["n_fix"].to_numpy(dtype=np.float64)
    for col in PER_FIXATION_METRICS + PER_IMAGE_METRICS:
        if col in per_image:
            w = n if col in PER_FIXATION_METRICS else None
            iv = bootstrap_mean(per_image[col].to_numpy(), w, n_boot, level, seed)
            out[f"{col}_lo"], out[f"{col}_hi"] = iv.low, iv.high
            out.setdefault(col, iv.estimate)
    if "IG_gold" in per_image and "IG" in per_image:
        iv = bootstrap_ratio(per_image["IG"].to_numpy() * n, per_image["IG_gold"].to_numpy() * n,
                             n_boot, level, seed)
        out["explained_IG_lo"], out["explained_IG_hi"] = iv.low, iv.high
        out.setdefault("explained_IG", iv.estimate)
    out["n_images"] = int(len(per_image))
    out["n_fixations"] = int(n.sum())
    return out


def ablation_table(results: dict, n_boot: int = 1000, level: float = 0.95, seed: int = 0,
                   describe: dict | None = None, reference: str | None = None,
                   evaluate_kw: dict | None = None) -> pd.DataFrame:
    """One row per condition: metrics with intervals.

    ``results``: {condition: run directory, or a (summary dict, per-image DataFrame) pair}.
    ``describe``: optional {condition: text} (e.g. the layers), put in column ``detail``.
    ``reference``: a condition; adds ``IG_diff`` (condition minus reference, bit/fix) with a
    *paired* interval (the same images resampled for both; images matched by ``image``).
    ``evaluate_kw``: passed to ``training.evaluate_run`` for runs not yet evaluated.
    The same ``seed`` is used for every condition, so the resampled image sets are identical
    across conditions.
    """
    loaded = {cond: (load_run_metrics(res, **(evaluate_kw or {})) if isinstance(res, (str, Path)) else res)
              for cond, res in results.items()}
    rows = []
    for cond, (summary, per_image) in loaded.items():
        row = {"condition": cond}
        if describe and cond in describe:
            row["detail"] = describe[cond]
        row.update(summarize(summary, per_image, n_boot, level, seed))
        if reference is not None:
            ref = loaded[reference][1][["image", "IG"]]
            both = per_image[["image", "n_fix", "IG"]].merge(ref, on="image", suffixes=("", "_ref"))
            d = bootstrap_paired_difference(both["IG"], both["IG_ref"], both["n_fix"], n_boot, level, seed)
            row.update(IG_diff=d.estimate, IG_diff_lo=d.low, IG_diff_hi=d.high)
        rows.append(row)
    return pd.DataFrame(rows)


def fold_parameters(run_dir: str | Path) -> pd.DataFrame:
    """Per finished fold: learned blur width (reduced-grid px and stimulus px), centre-bias weight,
    best epoch, epochs run, seconds (from ``fold_XX/config.json``)."""
    rows = []
    for d in sorted(Path(run_dir).glob("fold_*")):
        f = d / "config.json"
        if not f.exists():
            continue
        info = json.loads(f.read_text())
        factor = info.get("train_config", {}).get("saliency_map_factor", 1)
        rows.append({"fold": info.get("fold"), "sigma": info.get("sigma"),
                     "sigma_px": info.get("sigma", np.nan) * factor,
                     "center_bias_weight": info.get("center_bias_weight"),
                     "best_epoch": info.get("best_epoch"), "epochs_run": info.get("epochs_run"),
                     "seconds": info.get("seconds")})
    return pd.DataFrame(rows)


def example_images(per_image: pd.DataFrame, k: int = 3, min_fix: int = 1) -> list[int]:
    """``k`` images spread over the per-image IG range (best, ..., median, ..., worst)."""
    t = per_image[per_image["n_fix"] >= min_fix].sort_values("IG", ascending=False)
    pos = np.unique(np.linspace(0, len(t) - 1, num=min(k, len(t))).round().astype(int))
    return [int(i) for i in t["image"].to_numpy()[pos]]


# -- ablation grids ---------------------------------------------------------------------------
VGG19_GRID = {
    "pool3": ["pool3"], "relu4_2": ["relu4_2"], "relu4_4": ["relu4_4"],
    "relu5_1": ["relu5_1"], "relu5_2": ["relu5_2"], "relu5_4": ["relu5_4"], "pool5": ["pool5"],
    "block4": ["relu4_1", "relu4_2", "relu4_3", "relu4_4"],
    "block5": ["relu5_1", "relu5_2", "relu5_3", "relu5_4"],
    "paper5": list(PAPER_LAYERS),
}


def layer_grid(backbone, ablation_layers=None, tiny: bool = False) -> dict[str, list[str]]:
    """{condition name: layer list} for the layer ablation (see the module docstring).

    ``backbone``: an object with ``.name``, ``.layer_names``, ``.default_layers`` and ``.strides``.
    ``ablation_layers``: None (the documented default), a list of layer names (one single-layer
    condition each, plus ``default``), or a dict {name: [layers]} used as given.
    Every named layer is checked against ``backbone.layer_names``.
    """
    default = list(backbone.default_layers)
    if ablation_layers is not None:
        if isinstance(ablation_layers, dict):
            grid = {str(k): list(v) if isinstance(v, (list, tuple)) else [v] for k, v in ablation_layers.items()}
        else:
            grid = {str(layer): [layer] for layer in ablation_layers}
            grid["default"] = default
    elif tiny:
        grid = {"default": default, _deepest_single(backbone): [_deepest_single(backbone)]}
    elif backbone.name in ("vgg19", "vgg19_random"):
        grid = {k: list(v) for k, v in VGG19_GRID.items()}
    else:
        grid = _stride_grid(backbone)
    unknown = sorted({layer for ls in grid.values() for layer in ls} - set(backbone.layer_names))
    if unknown:
        raise ValueError(f"backbone {backbone.name!r} has no layers {unknown}; "
                         f"its layers are {list(backbone.layer_names)}")
    return grid


def _deepest_single(backbone) -> str:
    """The last of the default layers (the deepest one in network order)."""
    order = {name: k for k, name in enumerate(backbone.layer_names)}
    return max(backbone.default_layers, key=order.__getitem__)


def _stride_grid(backbone, min_stride: int = 8) -> dict[str, list[str]]:
    """The last layer of every stride group >= ``min_stride`` (the stage outputs), plus the default set."""
    groups: dict[int, list[str]] = {}
    for name in backbone.layer_names:
        s = int(backbone.strides[name])
        if s >= min_stride:
            groups.setdefault(s, []).append(name)
    grid = {layers[-1]: [layers[-1]] for _, layers in sorted(groups.items())}
    grid["default"] = list(backbone.default_layers)
    return grid


CENTER_BIAS_CONDITIONS = {
    # name: TrainConfig overrides ("main" = the main run's configuration)
    "none": {"center_bias": "none"},
    "fixed": {"center_bias": "fixed"},
    "learned": {},
    "deepgaze1": {"readout": "deepgaze1"},
}


def train_condition(cfg, run: str, **overrides) -> Path:
    """Train (or resume / reuse) the cross-validated run ``run``: ``cfg`` with ``overrides``."""
    from .training import train_crossval

    return Path(train_crossval(replace(cfg, run=run, **overrides)))


def run_layer_ablation(params: dict, grid: dict[str, list[str]], dataset=None, backbone=None) -> dict:
    """Train every condition of ``grid``; returns {condition: run directory}.

    Layers missing from the main feature store are extracted once into a store of their own
    (``features.default_store_path(..., layers=<those layers>)``, named by a hash of the layers);
    the condition whose layers equal the main run's reuses the main run.
    """
    from . import backbones, datasets, features
    from .training import TrainConfig

    cfg = TrainConfig.from_profile(params)
    main_layers = list(cfg.layers) if cfg.layers else None
    dataset = dataset or datasets.load(params["dataset"], n_images=params.get("n_images"),
                                       **(params.get("dataset_options") or {}))
    backbone = backbone or backbones.get(params["backbone"], device=params["device"])
    main_layers = main_layers or list(backbone.default_layers)
    main_store = Path(cfg.feature_path) if cfg.feature_path else features.default_store_path(
        dataset, backbone, params["downsample"], layers=params.get("layers"),
        dtype=params["feature_dtype"])
    if main_store.exists():
        with features.FeatureStore(main_store) as store:
            have = set(store.layers)
    else:   # training will say that the main store is missing
        have = set(main_layers)
    # every condition reads one store: the main one if it has all its layers, else the ablation
    # store, which holds all layers of all such conditions (so some layers may be stored twice)
    extra = sorted({layer for ls in grid.values() if not set(ls) <= have for layer in ls})
    extra_store = None
    if extra:
        extra_store = features.default_store_path(dataset, backbone, params["downsample"], layers=extra,
                                                  dtype=params["feature_dtype"])
        features.extract(dataset, backbone, layers=extra, downsample=params["downsample"],
                         dtype=params["feature_dtype"], device=params["device"], out=extra_store)
    runs = {}
    for cond, layers in grid.items():
        if list(layers) == list(main_layers):
            runs[cond] = train_condition(cfg, params["run"])
            continue
        store = main_store if set(layers) <= have else extra_store
        runs[cond] = train_condition(cfg, f"{params['run']}-layers-{cond}", layers=list(layers),
                                     feature_path=str(store))
    return runs


def run_center_bias_ablation(params: dict, conditions: dict | None = None) -> dict:
    """Train the centre-bias / readout conditions; returns {condition: run directory}.

    ``learned`` (no overrides) is the main run itself.
    """
    from .training import TrainConfig

    cfg = TrainConfig.from_profile(params)
    runs = {}
    for cond, overrides in (conditions or CENTER_BIAS_CONDITIONS).items():
        run = params["run"] if not overrides else f"{params['run']}-cb-{cond}"
        runs[cond] = train_condition(cfg, run, **overrides)
    return runs


def backbone_grid(params: dict) -> list[str]:
    """The backbones compared: the main one first, then the profile's ``ablation_backbones``."""
    others = [b for b in (params.get("ablation_backbones") or []) if b != params["backbone"]]
    return [params["backbone"], *others]


def fold_table(runs: dict) -> pd.DataFrame:
    """One row per (condition, test fold) of evaluated runs ({condition: run folder}): the fold's
    test IG (bit/fix over the centre bias) and its ratio to the run's median fold."""
    rows = []
    for cond, run in runs.items():
        folds = pd.DataFrame(json.loads((Path(run) / "metrics.json").read_text())["folds"])
        median = float(np.median(folds["IG"]))
        for r in folds.itertuples():
            rows.append({"condition": cond, "fold": int(r.fold), "IG": float(r.IG),
                         "explained_IG": float(getattr(r, "explained_IG", np.nan)),
                         "IG_over_median": float(r.IG) / median if median else np.nan})
    return pd.DataFrame(rows)


def backbone_run_name(params: dict, backbone: str) -> str:
    """The run of backbone ``backbone`` in the backbone ablation: the main run for the main
    backbone; else the main run's name with its backbone swapped (``osie-efficientnet_lite0`` ->
    ``osie-vgg19_random``, the run ``make reproduce BACKBONE=vgg19_random`` trains), or
    ``<run>-backbone-<backbone>`` when the main run's name does not end in its backbone."""
    if backbone == params["backbone"]:
        return params["run"]
    suffix = f"-{params['backbone']}"
    if params["run"].endswith(suffix):
        return params["run"][:-len(suffix)] + f"-{backbone}"
    return f"{params['run']}-backbone-{backbone}"


def run_backbone_ablation(params: dict, names, dataset=None) -> dict:
    """Extract (or reuse) the features and train (or reuse) one run per backbone in ``names``,
    each with its default layers and otherwise the main run's settings; returns {backbone: run
    directory}. The main backbone's condition is the main run itself (with its layers)."""
    from . import datasets, features
    from .training import TrainConfig

    dataset = dataset or datasets.load(params["dataset"], n_images=params.get("n_images"),
                                       **(params.get("dataset_options") or {}))
    runs = {}
    for name in names:
        is_main = name == params["backbone"]
        cfg = TrainConfig.from_profile({**params, "backbone": name, "run": backbone_run_name(params, name),
                                        "layers": params.get("layers") if is_main else None})
        if not cfg.feature_path:
            features.extract(dataset, name, layers=cfg.layers, downsample=cfg.downsample,
                             dtype=cfg.feature_dtype, device=params["device"])
        runs[name] = train_condition(cfg, cfg.run)
    return runs


def backbone_ensemble(params: dict, runs: dict, **evaluate_kw) -> Path:
    """The per-fold, validation-chosen ensemble over the backbone runs (``dgstudy.ensemble``),
    evaluated into ``results/<run>-backbone-ensemble/`` (reused if it holds the same members)."""
    from . import ensemble
    from .paths import results_dir

    out = results_dir() / f"{params['run']}-backbone-ensemble"
    members = {n: str(r) for n, r in runs.items()}
    if (out / "metrics.json").exists() and (out / "per_image.csv").exists():
        if json.loads((out / "metrics.json").read_text()).get("members") == members:
            return out
    ensemble.select_and_evaluate(runs, out, **evaluate_kw)
    return out


def center_bias_alone(dataset, baseline=None, gold=None, per_image: bool = True):
    """The centre bias itself as a model (leave-image-out), scored like every other model.

    ``baseline``: the fitted leave-image-out ``CenterBias`` (fitted here if None); it is both the
    model and the IG baseline, so its IG is 0 by construction and its LL (bit/fix over uniform)
    is the number to read. Returns what ``metrics.evaluate`` returns.
    """
    from .baselines import CenterBias
    from .metrics import evaluate

    cb = CenterBias.fit(dataset) if baseline is None else baseline
    return evaluate(cb, dataset, baseline=cb, gold=gold, per_image=per_image)


# -- the results table ------------------------------------------------------------------------
def setting_note(params: dict) -> tuple[bool, str]:
    """(comparable, explanation) of how this run's setting relates to the paper's MIT300 numbers."""
    same_model = (params.get("backbone") == "vgg19"
                  and list(params.get("layers") or PAPER_LAYERS) == PAPER_LAYERS)
    if params.get("dataset") == "mit1003" and same_model and not params.get("n_images"):
        return True, ("closest setting: VGG-19, the paper's five layers, MIT1003 10-fold image-wise "
                      "cross-validation (no SALICON pretraining; paper: MIT300 held-out test set, "
                      "10-model ensemble)")
    why = []
    if params.get("dataset") != "mit1003":
        why.append(f"dataset {params.get('dataset')} (paper: trained on MIT1003, tested on MIT300)")
    if params.get("n_images"):
        why.append(f"only the first {params['n_images']} images")
    if params.get("backbone") != "vgg19":
        why.append(f"backbone {params.get('backbone')} (paper: VGG-19)")
    elif not same_model:
        why.append(f"layers {params.get('layers')} (paper: {PAPER_LAYERS})")
    return False, "not the paper's setting: " + "; ".join(why)


def results_table(metrics: dict, params: dict, model: str = "deepgaze2") -> pd.DataFrame:
    """This run's metrics beside the paper's published figures.

    ``metrics``: a flat dict as from :func:`summarize` (``IG``, ``IG_lo``, ``IG_hi``, ...).
    ``model``: ``'deepgaze2'`` or ``'deepgaze1'`` (which published figures to put beside).
    Columns: model, metric, unit, this_run, ci_low, ci_high, paper, paper_source, comparable,
    setting.
    ``paper`` is NaN where the paper publishes no number for that metric.
    """
    comparable, note = setting_note(params)
    rows = []
    for m in METRICS:
        paper, source = PAPER_RESULTS.get(model, {}).get(m, (np.nan, ""))
        rows.append({
            "model": MODEL_NAMES.get(model, model), "metric": m, "unit": UNITS[m],
            "this_run": _float(metrics.get(m)),
            "ci_low": _float(metrics.get(f"{m}_lo")), "ci_high": _float(metrics.get(f"{m}_hi")),
            "paper": paper, "paper_source": source,
            "comparable": bool(comparable and np.isfinite(paper)),
            "setting": note,
        })
    return pd.DataFrame(rows)


def _float(x) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return float("nan")


def compare_prose(table: pd.DataFrame, params: dict) -> str:
    """Markdown paragraphs that explain how this run's numbers relate to the paper's."""
    comparable, note = setting_note(params)
    lines = [f"**Setting.** {note}."]
    t = table[table["model"] == MODEL_NAMES["deepgaze2"]] if "model" in table else table
    t = t.set_index("metric")
    ig, eig = t.loc["IG", "this_run"], t.loc["explained_IG", "this_run"]
    if np.isfinite(ig):
        lines.append(f"**This run.** The model gains {ig:.3f} bit/fixation over the centre bias "
                     f"(95% image-bootstrap interval {t.loc['IG', 'ci_low']:.3f} to "
                     f"{t.loc['IG', 'ci_high']:.3f})"
                     + (f" and explains {100 * eig:.0f}% of the gold standard's information gain."
                        if np.isfinite(eig) else "."))
    paper_eig = PAPER_RESULTS["deepgaze2"]["explained_IG"][0]
    lines.append(
        f"**Paper.** DeepGaze II explains about {100 * paper_eig:.0f}% of the explainable information "
        f"gain on MIT300 (DeepGaze I: {100 * PAPER_RESULTS['deepgaze1']['explained_IG'][0]:.0f}%) "
        "after SALICON pretraining and MIT1003 fine-tuning, as a 10-model ensemble (abstract of "
        "arXiv:1610.01563). The AUC/sAUC/NSS/CC/KL/SIM figures beside it are the MIT300 benchmark's "
        "entry for DeepGaze II, computed from one saliency map per image.")
    why = ["Differences to expect:",
           "- *Test set.* MIT300 is a separate held-out set with 39 observers per image; our numbers "
           "are cross-validated on the training data set, with fewer observers per image, so the gold "
           "standard (and the explainable information) is estimated from fewer fixations.",
           "- *No SALICON pretraining* here (10k images of mouse-tracking data in the paper), and "
           "single fold models rather than an ensemble of ten: both should cost us some IG.",
           "- *Metrics.* dgstudy scores every metric on the saliency map that is optimal for it under "
           "the predicted density (Kümmerer et al. 2018), while the MIT300 entries were computed by "
           "the benchmark's classic code on one map per image; NSS, CC, KL and SIM in particular "
           "change a lot between the two (KL is lower-is-better).",
           "- *Centre bias and gold standard* are this study's own fits (Gaussian KDE + uniform, "
           "leave-one-subject-out gold standard), so explained IG depends on that estimate."]
    if not comparable:
        why.append("- *Setting.* " + note + "; the paper column is shown for orientation only.")
    return "\n\n".join(lines) + "\n\n" + "\n".join(why)


# The columns a reader wants in an ablation table's markdown (CSV/JSON keep every column).
SUMMARY_COLUMNS = ["condition", "detail", "IG", "IG_lo", "IG_hi", "IG_diff", "IG_diff_lo", "IG_diff_hi",
                   "explained_IG", "LL", "AUC", "sAUC", "NSS", "CC", "KLDiv", "SIM", "n_images",
                   "n_fixations"]


def write_table(df: pd.DataFrame, out_dir: str | Path, stem: str, md_preamble: str = "",
                md_drop=(), md_columns=None) -> dict[str, Path]:
    """Write ``df`` as ``<stem>.md``, ``<stem>.csv`` and ``<stem>.json`` (records), atomically.

    The markdown file may start with ``md_preamble``, show only ``md_columns`` (those present, in
    that order; e.g. :data:`SUMMARY_COLUMNS`) and leave out the columns ``md_drop`` (e.g. a long
    note repeated on every row); CSV and JSON always hold every column.
    """
    out_dir = Path(out_dir)
    paths = {ext: out_dir / f"{stem}.{ext}" for ext in ("md", "csv", "json")}
    md_df = df if md_columns is None else df[[c for c in md_columns if c in df]]
    md = to_markdown(md_df.drop(columns=[c for c in md_drop if c in md_df]))
    with atomic_path(paths["md"]) as tmp:
        tmp.write_text((md_preamble.rstrip() + "\n\n" if md_preamble else "") + md + "\n")
    with atomic_path(paths["csv"]) as tmp:
        df.to_csv(tmp, index=False)
    write_json(paths["json"], json.loads(df.to_json(orient="records")))
    return paths


def to_markdown(df: pd.DataFrame, floatfmt: str = "{:.4g}") -> str:
    """A GitHub-style markdown table (no dependency on ``tabulate``)."""
    def cell(v):
        if isinstance(v, (float, np.floating)):
            return "" if not np.isfinite(v) else floatfmt.format(v)
        return str(v).replace("|", "\\|")
    head = "| " + " | ".join(map(str, df.columns)) + " |"
    sep = "|" + "|".join("---" for _ in df.columns) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([head, sep, *body])


# -- preflight --------------------------------------------------------------------------------
def preflight(profile: str, backbone: str | None = None, download: bool = False, **overrides) -> list[str]:
    """Check that the profile's data set and backbone weights are reachable; return the problems.

    Uses the loaders' own errors (which name the missing file and how to provide it); an empty
    list means ready. With ``download=False`` (default) the VGG-19 weights must already be on disk.
    """
    from . import backbones, datasets, profiles

    params = profiles.load(profile, backbone=backbone, **overrides)
    problems = []
    try:
        datasets.load(params["dataset"], n_images=params.get("n_images"),
                      **(params.get("dataset_options") or {}))
    except Exception as e:  # noqa: BLE001 -- reported, with the loader's message
        problems.append(f"dataset {params['dataset']!r}: {type(e).__name__}: {e}")
    try:
        try:
            backbones.get(params["backbone"], download=download)
        except TypeError:   # this backbone's builder has no download option
            backbones.get(params["backbone"])
    except Exception as e:  # noqa: BLE001
        problems.append(f"backbone {params['backbone']!r}: {type(e).__name__}: {e}")
    return problems


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dgstudy.study")
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("preflight", help="check data and weights for a profile, in seconds")
    p.add_argument("--profile", default="paper")
    p.add_argument("--backbone", default=None)
    p.add_argument("--download", action="store_true", help="allow downloading missing weights")
    args = ap.parse_args(argv)
    problems = preflight(args.profile, backbone=args.backbone or None, download=args.download)
    if problems:
        print(f"preflight for profile {args.profile!r} FAILED:", file=sys.stderr)
        for prob in problems:
            print(f"  - {prob}", file=sys.stderr)
        return 1
    print(f"preflight for profile {args.profile!r}: data and weights found")
    return 0


if __name__ == "__main__":
    sys.exit(main())
