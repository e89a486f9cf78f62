"""The ablations: layers, centre bias / readout, backbones, training choices and instances.

Each condition is one cross-validated run (``training.train_crossval``), a change to the profile's
reference configuration (``StudyConfig.train``), named ``<run>-layers-<condition>``,
``<run>-cb-<condition>``, ``<run>-train-<condition>`` or, for backbones, :func:`backbone_run_name`;
the condition equal to the reference *is* the reference run (and the training condition equal to
the profile's ``main`` changes the main run, ``StudyConfig.main_train``), and finished folds are
never retrained. The folds of all of a grid's conditions are submitted at once
(``training.train_runs``: one task per (condition, fold), :mod:`dgstudy.tasks`). :func:`ablation_table` scores conditions with bootstrap
intervals over images and paired differences to a reference. The default layer grids and their
storage costs are described in ``docs/ablations.md``.
"""
from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path

import numpy as np
import pandas as pd

from . import backbones, baselines, ensemble, features, grids, statistics
from .backbones.vgg19 import PAPER_LAYERS
from .config import StudyConfig, TrainConfig
from .evaluation import evaluate_runs, load_run_metrics
from .grids import backbone_grid, training_grid
from .io import DataError
from .metrics import evaluate
from .paths import results_dir
from . import runs as run_store
from .statistics import holm, paired_difference_test, summarize
from .training import train_runs


def ablation_table(results: dict, n_boot: int = 1000, level: float = 0.95, seed: int = 0,
                   describe: dict | None = None, reference: str | None = None,
                   evaluate_kw: dict | None = None) -> pd.DataFrame:
    """One row per condition: metrics with intervals.

    ``results``: {condition: run directory, or a (summary dict, per-image DataFrame) pair}.
    ``describe``: optional {condition: text} (e.g. the layers), put in column ``detail``.
    ``reference``: a condition; adds ``IG_diff`` (condition minus reference, bit/fix) with a
    *paired* interval (the same images resampled for both; images matched by ``image``), its
    bootstrap p-value ``IG_diff_p`` and ``IG_diff_p_holm``, Holm-adjusted over the table's
    comparisons (every condition but the reference): a difference holds for the grid as a whole
    at level alpha where ``IG_diff_p_holm < alpha`` (:func:`dgstudy.statistics.holm`).
    ``evaluate_kw``: passed to ``evaluation.evaluate_runs`` for the runs not yet evaluated (one
    task each, all at once).
    The same ``seed`` is used for every condition, so the resampled image sets are identical
    across conditions.
    """
    evaluate_runs([res for res in results.values() if isinstance(res, (str, Path))], **(evaluate_kw or {}))
    loaded = {cond: (load_run_metrics(res) if isinstance(res, (str, Path)) else res)
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
            d, p = paired_difference_test(both["IG"], both["IG_ref"], both["n_fix"], n_boot, level, seed)
            row.update(IG_diff=d.estimate, IG_diff_lo=d.low, IG_diff_hi=d.high,
                       IG_diff_p=p if cond != reference else float("nan"))
        rows.append(row)
    table = pd.DataFrame(rows)
    if reference is not None:
        table["IG_diff_p_holm"] = holm(table["IG_diff_p"])
    return table


def with_seed_spread(table: pd.DataFrame, seed_sd: float, level: float = 0.95,
                     instances: dict | None = None, reference: str | None = None) -> pd.DataFrame:
    """``table`` (:func:`ablation_table` with a reference) with the paired differences' intervals
    widened for run-to-run noise (:func:`dgstudy.statistics.with_seed_spread`): ``IG_diff_lo_seed``,
    ``IG_diff_hi_seed``, ``IG_diff_p_seed`` and its Holm adjustment over the table's comparisons,
    ``IG_diff_p_seed_holm``. ``seed_sd``: the spread of one configuration's IG over initial seeds
    (:func:`spread_table`'s ``sd``); ``instances``: {condition: n} for conditions that average n
    instances (default 1; ``inf`` for a condition that no training produces); the ``reference`` row
    (default: the one row without a p-value) keeps the interval 0 and gets NaN p-values."""
    if "IG_diff" not in table:
        raise ValueError("the table has no IG_diff column: build it with ablation_table(reference=...)")
    instances = instances or {}
    if reference is None:
        refs = table.loc[table["IG_diff_p"].isna(), "condition"]
        if len(refs) != 1:
            raise ValueError(f"cannot tell the reference condition ({len(refs)} rows without IG_diff_p); name it")
        reference = str(refs.iloc[0])
    n_ref = instances.get(reference, 1)
    out = table.copy()
    cols = {"IG_diff_lo_seed": [], "IG_diff_hi_seed": [], "IG_diff_p_seed": []}
    for r in out.itertuples():
        if r.condition == reference:            # the reference against itself: 0, whatever its seed
            lo, hi, p = 0.0, 0.0, np.nan
        else:
            lo, hi, p = statistics.with_seed_spread(r.IG_diff, r.IG_diff_lo, r.IG_diff_hi, seed_sd, level,
                                                    (instances.get(r.condition, 1), n_ref))
        cols["IG_diff_lo_seed"].append(lo)
        cols["IG_diff_hi_seed"].append(hi)
        cols["IG_diff_p_seed"].append(p)
    at = out.columns.get_loc("IG_diff_p_holm") + 1 if "IG_diff_p_holm" in out else len(out.columns)
    for k, (name, values) in enumerate(cols.items()):
        out.insert(at + k, name, values)
    out.insert(at + 3, "IG_diff_p_seed_holm", holm(out["IG_diff_p_seed"]))
    return out


UNTRAINED_CONDITIONS = ("centre bias alone",)   # conditions that no training produces: no seed spread


# -- layer grids -------------------------------------------------------------------------------
VGG19_GRID = {
    # the paper's five conv5 layers singly, the last conv of every block, the paper's set
    **{layer: [layer] for layer in PAPER_LAYERS},
    **{layer: [layer] for layer in ("conv1_2", "conv2_2", "conv3_4", "conv4_4", "conv5_4")},
    "paper5": list(PAPER_LAYERS),
}
VGG_POOL_STRIDE = 16   # VGG layers finer than conv5 are stored average-pooled onto its grid
STAGE_POOL_STRIDE = 8  # another backbone's added layer conditions finer than its default grid's finest
                       # stride (_stride_grid) are stored average-pooled onto that grid


def layer_grid(backbone, ablation_layers=None, size: str = "full", extra=None) -> dict[str, list[str]]:
    """{condition name: layer list} for the layer ablation (the default grids: ``docs/ablations.md``).

    ``backbone``: an object with ``.name``, ``.layer_names``, ``.default_layers`` and ``.strides``.
    ``ablation_layers``: None (the documented default grid of ``size``: ``full``, or ``small``:
    the default set and one other layer), a list of layer names (one single-layer condition each,
    plus ``default``), or a dict {name: [layers]} used as given. ``extra``: conditions added to
    the grid, in the same forms (:func:`dgstudy.grids.layer_conditions`). Every named layer is
    checked against ``backbone.layer_names``.
    """
    default = list(backbone.default_layers)
    given = grids.layer_conditions("ablation_layers", ablation_layers)
    if given is not None:
        grid = given if isinstance(ablation_layers, dict) else {**given, "default": default}
    elif size == "small":   # for VGG-19 a layer outside the default set, so the pooled store is made too
        single = "conv1_2" if is_vgg(backbone) else _deepest_single(backbone)
        grid = {"default": default, single: [single]}
    elif is_vgg(backbone):
        grid = {k: list(v) for k, v in VGG19_GRID.items()}
    else:
        grid = _stride_grid(backbone)
    grid = grids.with_extra("ablation_layers", grid, grids.layer_conditions("ablation_layers_extra", extra))
    unknown = {name: sorted(set(ls) - set(backbone.layer_names)) for name, ls in grid.items()}
    unknown = {name: bad for name, bad in unknown.items() if bad}
    if unknown:
        raise ValueError("; ".join(f"condition {name!r}: backbone {backbone.name!r} has no layers {bad}"
                                   for name, bad in unknown.items())
                         + f"; its layers are {list(backbone.layer_names)}")
    return grid


def is_vgg(backbone) -> bool:
    name = backbone if isinstance(backbone, str) else backbone.name
    return name in ("vgg19", "vgg19_random")


def _deepest_single(backbone) -> str:
    """The last of the default layers (the deepest one in network order)."""
    order = {name: k for k, name in enumerate(backbone.layer_names)}
    return max(backbone.default_layers, key=order.__getitem__)


def _stride_grid(backbone, min_stride: int = STAGE_POOL_STRIDE) -> dict[str, list[str]]:
    """The last layer of every stride group >= ``min_stride`` (the stage outputs), plus the default set."""
    groups: dict[int, list[str]] = {}
    for name in backbone.layer_names:
        s = int(backbone.strides[name])
        if s >= min_stride:
            groups.setdefault(s, []).append(name)
    grid = {layers[-1]: [layers[-1]] for _, layers in sorted(groups.items())}
    grid["default"] = list(backbone.default_layers)
    return grid


def depth_order(grid: dict[str, list[str]], layer_names) -> list[str]:
    """A layer grid's conditions from the input up, for tables and figures: the single layers in
    network order (``layer_names``, a backbone's ``.layer_names``), then the sets, the one whose
    shallowest layer is deepest first (sets cumulated downward: blocks 5-6, then 4-6, ...)."""
    pos = {name: k for k, name in enumerate(layer_names)}
    single = sorted((c for c, ls in grid.items() if len(ls) == 1), key=lambda c: pos[grid[c][0]])
    sets = sorted((c for c, ls in grid.items() if len(ls) > 1),
                  key=lambda c: (-min(pos[name] for name in grid[c]), len(grid[c])))
    return single + sets


def in_depth_order(table: pd.DataFrame, grid: dict[str, list[str]], layer_names) -> pd.DataFrame:
    """``table`` (one row per condition of ``grid``) with its rows in :func:`depth_order`."""
    return table.set_index("condition").loc[depth_order(grid, layer_names)].reset_index()


def vgg_layer_names() -> list[str]:
    """VGG-19's named layers in network order (no weights needed)."""
    from .backbones.vgg19 import named_layers

    return list(named_layers()[0])


@dataclasses.dataclass(frozen=True)
class StoreSpec:
    """A feature store a run reads: where it is and how :func:`dgstudy.features.extract` makes it
    (``layers`` None: the backbone's default set). ``given``: a store the profile names itself
    (``feature_path``), read but never extracted here."""

    path: Path
    backbone: str
    layers: tuple[str, ...] | None
    downsample: float
    dtype: str
    pool_stride: int | None = None
    mirror: bool = False
    given: bool = False

    def extract(self, dataset, device: str = "cpu", backbone=None, progress: bool = True) -> Path:
        """Extract (or complete, or find complete: ``features.extract`` resumes) this store."""
        if self.given:
            return self.path
        bb = backbone if backbone is not None and backbone.name == self.backbone else \
            _backbone(self.backbone, device)
        return features.extract(dataset, bb, layers=list(self.layers) if self.layers else None,
                                downsample=self.downsample, dtype=self.dtype, device=device,
                                out=self.path, pool_stride=self.pool_stride, mirror=self.mirror,
                                progress=progress)


@functools.lru_cache(maxsize=2)
def _backbone(name: str, device: str):
    return backbones.get(name, device=device)


def run_stores(t: TrainConfig, dataset) -> list[StoreSpec]:
    """The stores run ``t`` reads (``runs.feature_path``): its own and, for ``flip_source='images'``,
    the mirrored images' beside it."""
    mirrors = (False, True) if t.flip and t.flip_source == "images" else (False,)
    return [StoreSpec(run_store.feature_path(t, dataset, mirror=m), t.backbone,
                      tuple(t.layers) if t.layers else None, t.downsample, t.feature_dtype, mirror=m,
                      given=bool(t.feature_path)) for m in mirrors]


def ensure_features(dataset, t: TrainConfig, backbone=None) -> None:
    """Extract what run ``t`` reads, or find it complete (``features.extract`` resumes and returns
    at once for a finished store): its store, and for ``flip_source='images'`` the mirrored
    images' store beside it (:func:`run_stores`). Nothing for a run given an explicit ``feature_path``."""
    for spec in run_stores(t, dataset):
        spec.extract(dataset, device=t.device, backbone=backbone)


# -- what a profile trains and reads: one rule for notebook 01, the ablations and preflight ------
def profile_runs(cfg: StudyConfig, dataset, get_backbone=None) -> dict[str, dict[str, TrainConfig]]:
    """Every run the profile's chain trains, by the notebook that trains it first: {notebook number
    ("02", "03", ...): {run name: configuration}}, each run under the first notebook that trains it
    (the main run under 02, the reference under 03, ...). ``get_backbone(name)``: a backbone
    object (default ``backbones.get``; the layer grids need its layers and strides)."""
    get_backbone = get_backbone or (lambda name: _backbone(name, cfg.train.device))
    check_conditions({"reference": cfg.train, "main": cfg.main_train,
                      **{f"ablation_backbones: {n}": t for n, t in backbone_conditions(cfg, backbone_grid(cfg)).items()},
                      **({"ablation_vgg": vgg_layer_study(cfg, cfg.ablation_vgg).train} if cfg.ablation_vgg else {}),
                      **{f"notebook 10: {t.run}": t for insts in ensemble_member_conditions(cfg).values()
                         for t in insts.values()}},
                     get_backbone)
    layer_runs = []
    for c, vgg in layer_studies(cfg):
        bb = get_backbone(c.train.backbone)
        layer_runs += list(layer_conditions(c, profile_layer_grid(c, bb, vgg), dataset, bb, vgg)[0].values())
    names = backbone_grid(cfg)
    grid = training_grid(cfg)
    by_notebook = {
        "02": [cfg.main_train],
        "03": layer_runs,
        "04": list(center_bias_conditions(cfg).values()),
        "05": list(backbone_conditions(cfg, names).values()) if len(names) > 1 else [],
        "09": [*(training_conditions(cfg, grid).values() if len(grid) > 1 else []),
               *(t for _, _, inst, n in instance_sets(cfg) for t in instance_conditions(inst, n).values())],
        "10": [t for insts in ensemble_member_conditions(cfg).values() for t in insts.values()],
    }
    for nb, cfgs in by_notebook.items():
        check_conditions({f"notebook {nb}: {t.run}": t for t in cfgs}, get_backbone)
    seen, out = set(), {}
    for nb, cfgs in by_notebook.items():
        out[nb] = {}
        for t in cfgs:
            if t.run not in seen:
                seen.add(t.run)
                out[nb][t.run] = t
    return out


def layer_studies(cfg: StudyConfig) -> list[tuple[StudyConfig, bool]]:
    """The layer grids notebook 03 trains for ``cfg``, as (study, is it the VGG-19 grid): the
    profile's own unless it draws another profile's table (:func:`layer_table_from`), and the
    VGG-19 grid beside it (``ablation_vgg``, :func:`vgg_layer_study`)."""
    own = [] if layer_table_from(cfg) else [(cfg, False)]
    return own + ([(vgg_layer_study(cfg, cfg.ablation_vgg), True)] if cfg.ablation_vgg else [])


def feature_stores(cfg: StudyConfig, dataset, get_backbone=None) -> dict[Path, tuple[StoreSpec, list[str]]]:
    """Every feature store the profile's chain reads, the one rule for which stores a profile needs:
    {path: (its :class:`StoreSpec`, the runs that read it)}, in order: the reference's, the main
    run's, then every ablation condition's (:func:`profile_runs`), the mirrored images' stores of
    ``flip_source='images'`` runs and the layer ablations' stores of layers the reference's store
    lacks. Notebook 01 extracts them all; ``dgstudy preflight`` lists and checks them."""
    get_backbone = get_backbone or (lambda name: _backbone(name, cfg.train.device))
    runs = profile_runs(cfg, dataset, get_backbone)
    extra = []
    for c, vgg in layer_studies(cfg):
        bb = get_backbone(c.train.backbone)
        extra += layer_conditions(c, profile_layer_grid(c, bb, vgg), dataset, bb, vgg)[1]
    out: dict[Path, tuple[StoreSpec, list[str]]] = {}
    ordered = [cfg.train, cfg.main_train, *(t for r in runs.values() for t in r.values())]
    specs = [spec for t in ordered for spec in run_stores(t, dataset)]
    # a store extracted here first (a layer condition names its store as its feature_path: given)
    for spec in [*(s for s in specs if not s.given), *extra, *(s for s in specs if s.given)]:
        out.setdefault(spec.path, (spec, []))
    for t in ordered:
        for path in (s.path for s in run_stores(t, dataset)):
            if t.run not in out[path][1]:
                out[path][1].append(t.run)
    return out


def extract_stores(cfg: StudyConfig, dataset, stores=None, progress: bool = True) -> list[Path]:
    """Extract (or find complete) every store of :func:`feature_stores` (or of ``stores``), one
    backbone at a time; the paths."""
    stores = feature_stores(cfg, dataset) if stores is None else stores
    specs = [spec for spec, _ in stores.values()] if isinstance(stores, dict) else list(stores)
    first = {}
    for spec in specs:
        first.setdefault(spec.backbone, len(first))
    return [spec.extract(dataset, device=cfg.train.device, progress=progress)
            for spec in sorted(specs, key=lambda s: first[s.backbone])]   # stable: one backbone at a time


def check_conditions(cfgs: dict[str, TrainConfig], get_backbone=None) -> None:
    """GridError naming the condition and its run unless every condition's backbone is registered
    and its layers (if given) are layers of that backbone; the values themselves were checked when
    the profile was loaded (``StudyConfig.load``). ``get_backbone(name)``: default ``backbones.get``
    (cached)."""
    known = backbones.available()
    for cond, t in cfgs.items():
        if t.backbone not in known:
            raise grids.GridError(f"condition {cond!r} (run {t.run!r}): backbone {t.backbone!r} is not one of "
                                  f"{', '.join(known)}")
    for cond, t in cfgs.items():
        if t.layers:
            names = (get_backbone or (lambda n: _backbone(n, t.device)))(t.backbone).layer_names
            unknown = sorted(set(t.layers) - set(names))
            if unknown:
                raise grids.GridError(f"condition {cond!r} (run {t.run!r}): backbone {t.backbone!r} has no "
                                      f"layers {unknown}; its layers are {list(names)}")


def train_conditions(cfgs: dict[str, TrainConfig], dataset=None) -> dict[str, Path]:
    """Train (or resume / reuse) every condition's run, all folds submitted at once
    (``training.train_runs``); {condition: run folder}. Conditions sharing a run train it once."""
    unique = list({c.run: c for c in cfgs.values()}.values())
    folders = dict(zip((c.run for c in unique), train_runs(unique, dataset=dataset)))
    return {cond: Path(folders[c.run]) for cond, c in cfgs.items()}


def load_dataset(cfg: StudyConfig):
    """The profile's dataset."""
    return run_store.load_dataset(cfg.train)


def profile_layer_grid(cfg: StudyConfig, backbone, vgg: bool = False) -> dict[str, list[str]]:
    """Notebook 03's layer grid for ``cfg`` on ``backbone``: the profile's ``ablation_layers`` and
    ``ablation_layers_extra`` (for the VGG-19 grid beside it, ``vgg=True``: ``ablation_vgg_layers``
    and ``ablation_vgg_layers_extra``), the default grids as large as ``ablation_size``."""
    key = "ablation_vgg_layers" if vgg else "ablation_layers"
    try:
        return layer_grid(backbone, getattr(cfg, key), cfg.ablation_size, getattr(cfg, f"{key}_extra"))
    except ValueError as e:
        raise grids.GridError(f"{key}: {e}") from None


def layer_conditions(cfg: StudyConfig, grid: dict[str, list[str]], dataset, backbone, vgg: bool = False
                     ) -> tuple[dict[str, TrainConfig], list[StoreSpec]]:
    """({condition: its run's configuration}, the ablation stores to extract) of :func:`run_layer_ablation`.

    Every condition reads one store: the reference's if it holds all the condition's layers, else
    the ablation store, which holds all layers of all such conditions of the profile's grid (so some
    layers may be stored twice; for VGG-19 pooled onto the conv5 grid, :data:`VGG_POOL_STRIDE`).
    A condition added by the profile's ``_extra`` key (``ablation_layers_extra``, with ``vgg=True``
    ``ablation_vgg_layers_extra``) that neither store holds reads a store of its own layers (finer
    layers average-pooled onto stride :data:`STAGE_POOL_STRIDE`, for VGG-19 :data:`VGG_POOL_STRIDE`):
    adding a condition never changes the store, and so the run, of a condition already in the grid.
    """
    t = cfg.train
    ref_layers = list(t.layers) if t.layers else list(backbone.default_layers)
    ref_store = run_store.feature_path(t, dataset)
    if ref_store.exists():
        try:
            with features.FeatureStore(ref_store) as store:
                have = set(store.layers)
        except DataError:       # damaged: preflight moves it aside; extraction makes it again
            have = set(ref_layers)
    else:                       # not extracted yet: it will hold the reference's layers
        have = set(ref_layers)
    key = "ablation_vgg_layers_extra" if vgg else "ablation_layers_extra"
    added = set(grids.layer_conditions(key, getattr(cfg, key)) or {})
    vgg_pool = VGG_POOL_STRIDE if is_vgg(backbone) else None

    def store_of(layers, pool) -> StoreSpec:
        return StoreSpec(features.default_store_path(dataset, backbone, t.downsample, layers=layers,
                                                     dtype=t.feature_dtype, pool_stride=pool),
                         backbone.name, tuple(layers), t.downsample, t.feature_dtype, pool_stride=pool)

    shared = sorted({layer for c, ls in grid.items() if c not in added and not set(ls) <= have for layer in ls})
    stores = {c: ref_store if set(ls) <= have else None for c, ls in grid.items()}
    specs = [store_of(shared, vgg_pool)] if shared else []
    for c, ls in grid.items():
        if stores[c] is None and set(ls) <= set(shared):
            stores[c] = specs[0].path
        elif stores[c] is None:                    # an added condition: a store of its own layers,
            fine = min(int(backbone.strides[name]) for name in ls) < STAGE_POOL_STRIDE   # pooled if finer
            specs.append(store_of(sorted(set(ls)), vgg_pool or (STAGE_POOL_STRIDE if fine else None)))
            stores[c] = specs[-1].path
    cfgs = {}
    for cond, layers in grid.items():
        if list(layers) == ref_layers:
            cfgs[cond] = t
            continue
        cfgs[cond] = cfg.with_train(run=f"{t.run}-layers-{cond}", layers=list(layers),
                                    feature_path=run_store.recorded_store(stores[cond]))
    return cfgs, list({s.path: s for s in specs}.values())


def run_layer_ablation(cfg: StudyConfig, grid: dict[str, list[str]], dataset=None, backbone=None,
                       vgg: bool = False) -> dict:
    """Train every condition of ``grid``; returns {condition: run directory}.

    Layers missing from the reference run's feature store are extracted once into a store of their own
    (``features.default_store_path(..., layers=<those layers>)``, named by a hash of the layers;
    for VGG-19 pooled onto the conv5 grid, :data:`VGG_POOL_STRIDE`, so that every condition is
    read out at the paper's resolution and conv1_2 does not take gigabytes): :func:`layer_conditions`;
    the condition whose layers equal the reference run's reuses the reference run.
    """
    t = cfg.train
    dataset = dataset or load_dataset(cfg)
    backbone = backbone or backbones.get(t.backbone, device=t.device)
    ensure_features(dataset, t, backbone)
    cfgs, stores = layer_conditions(cfg, grid, dataset, backbone, vgg)
    for store in stores:
        store.extract(dataset, device=t.device, backbone=backbone)
    return train_conditions(cfgs, dataset=dataset)


def center_bias_conditions(cfg: StudyConfig, conditions: dict | None = None) -> dict[str, TrainConfig]:
    """{condition: its run's configuration} of :func:`run_center_bias_ablation` (``conditions``:
    {condition: TrainConfig changes}, default the profile's grid, :func:`dgstudy.grids.center_bias_grid`);
    the condition without changes is the reference run, the others ``<run>-cb-<condition>``."""
    cfgs = {}
    for cond, overrides in (grids.center_bias_grid(cfg) if conditions is None else conditions).items():
        run = cfg.train.run if not overrides else f"{cfg.train.run}-cb-{cond}"
        cfgs[cond] = cfg.with_train(run=run, **overrides)
    return cfgs


def run_center_bias_ablation(cfg: StudyConfig, conditions: dict | None = None) -> dict:
    """Train the centre-bias / readout conditions (:func:`center_bias_conditions`); returns
    {condition: run directory}. The condition without changes is the reference run itself."""
    dataset = load_dataset(cfg)
    cfgs = center_bias_conditions(cfg, conditions)
    check_conditions(cfgs)
    for t in cfgs.values():
        ensure_features(dataset, t)
    return train_conditions(cfgs, dataset=dataset)


def vgg_layer_study(cfg: StudyConfig, backbone: str = "vgg19_random") -> StudyConfig:
    """``cfg`` with ``backbone`` (a VGG-19) as its reference network and run (:func:`backbone_run_name`,
    the backbone ablation's run), so that :func:`run_layer_ablation` runs the VGG grid beside
    the profile's own backbone; with ``vgg19`` the same grid on the ImageNet weights."""
    if not is_vgg(backbone):
        raise ValueError(f"{backbone!r} is not a VGG-19 backbone")
    train = cfg.with_train(backbone=backbone, run=backbone_run_name(cfg, backbone), layers=None,
                           feature_path=None)
    return dataclasses.replace(cfg, train=train)


def layer_table_from(cfg: StudyConfig) -> str | None:
    """The profile whose committed layer table notebook 03 draws for ``cfg`` (``ablation_layers_from``),
    or None when ``cfg`` trains its own grid: always when it names a grid or adds to one
    (``ablation_layers``, ``ablation_layers_extra``), so that extending the grid trains it."""
    if cfg.ablation_layers is not None or cfg.ablation_layers_extra is not None:
        return None
    return cfg.ablation_layers_from


def committed_layer_table(profile: str, backbone) -> tuple[pd.DataFrame, dict[str, list[str]], str]:
    """The layer table that profile ``profile`` wrote (notebook 03, ``results/<its tag>/ablation_layers.csv``),
    for a profile that draws it instead of training a grid (``ablation_layers_from``): (table, that
    profile's grid, the condition that is its reference). ``backbone``: the backbone object of the
    profile that draws it; the two profiles must share it."""
    source = StudyConfig.load(profile)
    if drawn := layer_table_from(source):
        raise ValueError(f"profile {profile!r} trains no layer grid (it draws profile {drawn!r}'s)")
    if source.train.backbone != backbone.name:
        raise ValueError(f"profile {profile!r}'s layer grid is on {source.train.backbone!r}, not {backbone.name!r}")
    path = source.output_dir() / "ablation_layers.csv"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no layer table; run `make reproduce PROFILE={profile}` first")
    table = pd.read_csv(path)
    grid = profile_layer_grid(source, backbone)
    reference = list(source.train.layers) if source.train.layers else list(backbone.default_layers)
    return table, grid, next(c for c, layers in grid.items() if list(layers) == reference)


def committed_vgg_table(profile: str) -> tuple[pd.DataFrame, str, str]:
    """The VGG-19 layer table that profile ``profile`` wrote (notebook 03,
    ``results/<its tag>/ablation_layers_vgg.csv``), for a profile that draws it beside its own
    stages without training the grid (``ablation_vgg_from``): (table, the VGG backbone's name,
    the condition that is its reference, i.e. its default layer set)."""
    source = StudyConfig.load(profile)
    if not source.ablation_vgg:
        raise ValueError(f"profile {profile!r} runs no VGG-19 layer grid (its ablation_vgg is null)")
    path = source.output_dir() / "ablation_layers_vgg.csv"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no VGG-19 layer table; run `make reproduce PROFILE={profile}` first")
    table = pd.read_csv(path)
    default = list(backbones.default_layers(source.ablation_vgg))
    reference = next(c for c, layers in VGG19_GRID.items() if layers == default)
    return table, source.ablation_vgg, reference


# -- training choices ------------------------------------------------------------------------
def run_training_ablation(cfg: StudyConfig, grid: dict[str, dict] | None = None, dataset=None) -> dict:
    """Train every condition of ``grid`` (default :func:`training_grid`) as ``<run>-train-<name>``
    (``default`` is the reference run; the condition equal to the profile's ``main`` overrides is
    the main run), extracting what a condition reads first (:func:`ensure_features`: e.g. another
    ``downsample``, or the mirrored images' features); returns {condition: run directory}."""
    dataset = dataset or load_dataset(cfg)
    cfgs = training_conditions(cfg, grid)
    check_conditions(cfgs)
    for t in cfgs.values():
        ensure_features(dataset, t)
    return train_conditions(cfgs, dataset=dataset)


def training_conditions(cfg: StudyConfig, grid: dict[str, dict] | None = None) -> dict[str, TrainConfig]:
    """{condition: its run's configuration} of :func:`run_training_ablation`."""
    grid = training_grid(cfg) if grid is None else grid
    cfgs = {}
    for cond, overrides in grid.items():
        if not overrides:
            cfgs[cond] = cfg.train
        elif cfg.main and overrides == dict(cfg.main):
            cfgs[cond] = cfg.main_train
        else:
            cfgs[cond] = cfg.with_train(run=f"{cfg.train.run}-train-{cond}", **overrides)
    return cfgs


def instance_conditions(t: TrainConfig, n: int) -> dict[str, TrainConfig]:
    """{"init0": ``t``, "init1": ``<run>-init1`` with ``init_seed=1``, ...}: :func:`run_instances`."""
    return {f"init{k}": t if k == 0 else dataclasses.replace(t, run=f"{t.run}-init{k}", init_seed=k)
            for k in range(int(n))}


def run_instances(t: TrainConfig, n: int, dataset=None) -> dict:
    """Run ``t`` trained ``n`` times, instance ``k`` with ``init_seed=k`` (another initialisation
    and batch order, the same fold split): {"init0": ``t``'s run, "init1": ``<run>-init1``, ...}.
    Their spread is the run-to-run noise every difference is read against."""
    cfgs = instance_conditions(t, n)
    dataset = dataset or run_store.load_dataset(t)
    ensure_features(dataset, t)
    return train_conditions(cfgs, dataset=dataset)


def instance_sets(cfg: StudyConfig) -> list[tuple[str, str, TrainConfig, int]]:
    """The configurations notebook 09 trains with several initial seeds, as (name of their average
    in the training table, stem of their spread table, configuration, number of seeds): the main
    run with ``instances`` seeds (``instances<n>``, ``seed_spread``) and, when the main run is not
    the reference, the reference with ``reference_instances`` (default: as many; its average is
    then ``instances<n>`` and the main run's ``main_instances<n>``). Only those with n > 1."""
    n_ref = cfg.instances if cfg.reference_instances is None else cfg.reference_instances
    sets = [("main_" if cfg.main else "", "seed_spread", cfg.main_train, cfg.instances)]
    if cfg.main:
        sets.append(("", "seed_spread_reference", cfg.train, n_ref))
    return [(f"{prefix}instances{n}", stem, t, int(n)) for prefix, stem, t, n in sets if n > 1]


def reference_seed_spread(cfg: StudyConfig, **evaluate_kw) -> pd.DataFrame | None:
    """The reference run's run-to-run spread: :func:`spread_table` of its instances as notebook 09
    trains them (:func:`instance_sets`; trained here when they are not yet, the same runs), or None
    when the profile trains the reference once. ``evaluate_kw``: ``evaluation.evaluate_runs``'s
    keywords (``dataset``, ``baseline``, ``gold``), for the instances not yet evaluated."""
    n = next((n for _, _, t, n in instance_sets(cfg) if t.run == cfg.train.run), 1)
    if n < 2:
        return None
    members = run_instances(cfg.train, n, dataset=evaluate_kw.get("dataset"))
    evaluate_runs(list(members.values()), **evaluate_kw)
    return spread_table(members)


def with_reference_seed_spread(table: pd.DataFrame, cfg: StudyConfig, instances: dict | None = None,
                               level: float = 0.95, **evaluate_kw) -> pd.DataFrame:
    """``table`` with :func:`with_seed_spread` columns for the reference's seed spread
    (:func:`reference_seed_spread`, its IG ``sd``; :data:`UNTRAINED_CONDITIONS` carry none), or
    ``table`` as it is when the profile trains the reference once or the table has no reference.
    One seed spread stands for every condition of the table: a measured approximation
    (docs/ablations.md)."""
    if "IG_diff" not in table or table["IG_diff_p"].isna().sum() != 1:
        return table
    spread = reference_seed_spread(cfg, **evaluate_kw)
    if spread is None:
        return table
    seed_sd = float(spread.set_index("metric").loc["IG", "sd"])
    untrained = {c: float("inf") for c in UNTRAINED_CONDITIONS}
    return with_seed_spread(table, seed_sd, level, instances={**untrained, **(instances or {})})


def with_validation_scores(table: pd.DataFrame, runs: dict, reference: str = "default") -> pd.DataFrame:
    """``table`` (:func:`ablation_table` of ``runs``) with ``val_LL`` (:func:`validation_scores`,
    mean over folds) and ``val_diff`` (minus the ``reference`` condition's) after ``detail``."""
    val = validation_scores(runs).groupby("condition", sort=False)["val_LL"].mean()
    table = table.copy()
    table.insert(2, "val_LL", table["condition"].map(val))
    table.insert(3, "val_diff", table["val_LL"] - float(val[reference]))
    return table


def instance_ensemble(runs: dict, **evaluate_kw) -> Path:
    """The average of all instances' densities (``runs``: :func:`run_instances`) in every fold
    (DeepGaze IIE averages its instances; no choice is made, so none is made on validation data
    either), evaluated into ``results/<run>-instances<n>/`` (reused while its members are the same)."""
    return evaluated_ensemble(results_dir() / f"{Path(runs['init0']).name}-instances{len(runs)}", runs, "all",
                              **evaluate_kw)


def evaluated_ensemble(out: Path, runs: dict, members: str = "validation", candidates=None,
                       **evaluate_kw) -> Path:
    """``ensemble.select_and_evaluate(runs, out, members=..., candidates=...)``, or ``out`` as it is
    when it holds the evaluation of the very same members (``ensemble.fingerprint``) and candidates."""
    if (out / "metrics.json").exists() and (out / "per_image.csv").exists():
        done = json.loads((out / "metrics.json").read_text())
        same_candidates = candidates is None or done.get("candidates") == [list(c) for c in candidates]
        if done.get("fingerprint") == ensemble.fingerprint(runs) and same_candidates:
            return out
    ensemble.select_and_evaluate(runs, out, members=members, candidates=candidates, **evaluate_kw)
    return out


def spread_table(runs: dict, metrics=("IG", "explained_IG", "LL", "AUC", "NSS")) -> pd.DataFrame:
    """Run-to-run spread of evaluated runs ({name: run folder}, e.g. :func:`run_instances`): one
    row per metric with the runs' values, mean, sample standard deviation and range."""
    values = {name: load_run_metrics(run)[0] for name, run in runs.items()}
    rows = []
    for m in metrics:
        v = np.array([float(values[name][m]) for name in runs])
        rows.append({"metric": m, **{name: float(x) for name, x in zip(runs, v)}, "mean": float(v.mean()),
                     "sd": float(v.std(ddof=1)) if len(v) > 1 else np.nan,
                     "range": float(v.max() - v.min())})
    return pd.DataFrame(rows)


def validation_scores(runs: dict) -> pd.DataFrame:
    """Every run's validation log-likelihood, the score every choice is made on: one row per
    (condition, fold) with ``val_LL``, the fold's best validation log-likelihood as training
    recorded it (``best_val_LL``: bit/fix over uniform on the reduced grid the likelihood is fitted
    on, the score early stopping chose the epoch by; the fold's validation images, never its
    test images). Ensembles ({condition: folder with ``ensemble.json``}) are left out: averaging
    is a recipe, not a setting chosen on these scores."""
    rows = []
    for cond, run in runs.items():
        run = Path(run)
        if (run / "ensemble.json").exists():
            continue
        for d in sorted(run.glob("fold_*")):
            if (d / "config.json").exists():
                info = json.loads((d / "config.json").read_text())
                rows.append({"condition": cond, "fold": int(info["fold"]), "val_LL": float(info["best_val_LL"])})
    return pd.DataFrame(rows, columns=["condition", "fold", "val_LL"])


# -- backbones -------------------------------------------------------------------------------------
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


def backbone_run_name(cfg: StudyConfig, backbone: str) -> str:
    """The run of backbone ``backbone`` in the backbone ablation: the reference run for the
    reference backbone; else the reference run's name with its backbone swapped (``osie-efficientnet_lite0`` ->
    ``osie-vgg19_random``, the run ``make reproduce BACKBONE=vgg19_random`` trains), or
    ``<run>-backbone-<backbone>`` when the reference run's name does not end in its backbone."""
    run, main = cfg.train.run, cfg.train.backbone
    if backbone == main:
        return run
    if run.endswith(f"-{main}"):
        return run[:-len(main)] + backbone
    return f"{run}-backbone-{backbone}"


def run_backbone_ablation(cfg: StudyConfig, names, dataset=None) -> dict:
    """Extract (or reuse) the features and train (or reuse) one run per backbone in ``names``,
    each with its default layers and otherwise the reference run's settings; returns {backbone: run
    directory}. The reference backbone's condition is the reference run itself (with its layers)."""
    dataset = dataset or load_dataset(cfg)
    cfgs = backbone_conditions(cfg, names)
    check_conditions(cfgs)
    for t in cfgs.values():
        ensure_features(dataset, t)
    return train_conditions(cfgs, dataset=dataset)


def backbone_conditions(cfg: StudyConfig, names) -> dict[str, TrainConfig]:
    """{backbone: its run's configuration} of :func:`run_backbone_ablation`."""
    cfgs = {}
    for name in names:
        is_main = name == cfg.train.backbone
        cfgs[name] = cfg.with_train(backbone=name, run=backbone_run_name(cfg, name),
                                    layers=cfg.train.layers if is_main else None,
                                    feature_path=cfg.train.feature_path if is_main else None)
    return cfgs


def ensemble_member_conditions(cfg: StudyConfig) -> dict[str, dict[str, TrainConfig]]:
    """The main ensemble's members (notebook 10, :mod:`dgstudy.main_ensemble`): {backbone: {"init0":
    configuration, "init1": ...}} of the profile's ``ensemble_backbones``
    ({} when it has none). The reference backbone's members are the main run and its instances
    (``<main run>-init<k>``); another backbone's are ``<its backbone run>-main`` and its instances,
    with that backbone's default layers and feature store."""
    out = {}
    for b in cfg.ensemble_backbones or []:
        if b == cfg.train.backbone:
            t = cfg.main_train
        else:
            t = dataclasses.replace(cfg.main_train, backbone=b, layers=None, feature_path=None,
                                    run=backbone_run_name(cfg, b) + ("-main" if cfg.main else ""))
        out[b] = instance_conditions(t, cfg.ensemble_instances)
    return out


def backbone_ensemble(cfg: StudyConfig, runs: dict, **evaluate_kw) -> Path:
    """The per-fold, validation-chosen ensemble over the backbone runs (``dgstudy.ensemble``),
    evaluated into ``results/<run>-backbone-ensemble/`` (reused while its members' folds are the
    same: ``ensemble.fingerprint``)."""
    return evaluated_ensemble(results_dir() / f"{cfg.train.run}-backbone-ensemble", runs, **evaluate_kw)


def best_backbone(runs: dict) -> str:
    """The backbone ({backbone: run}) whose run has the highest validation log-likelihood
    (:func:`validation_scores`, mean over folds): chosen on validation images, as the ensemble's
    members are, so that the control below makes no choice on test fixations either."""
    val = validation_scores(runs).groupby("condition", sort=False)["val_LL"].mean()
    if val.empty:
        raise ValueError("no run in the backbone ablation has validation scores (config.json with best_val_LL)")
    return str(val.idxmax())


def best_backbone_instances(cfg: StudyConfig, runs: dict, n: int, dataset=None) -> tuple[str, dict]:
    """The control for the backbone ensemble: its best member (:func:`best_backbone`) trained with
    ``n`` initial seeds (:func:`run_instances`; instance 0 is that backbone's run in ``runs``).
    The ensemble averages several backbones; the average of ``n`` instances of the best one
    (:func:`instance_ensemble`) averages as many densities with one backbone, so the difference
    between the two is what backbone diversity adds beyond averaging. Returns (backbone,
    {"init0": run, ...})."""
    best = best_backbone(runs)
    t = backbone_conditions(cfg, [best])[best]
    return best, run_instances(t, n, dataset=dataset)


def center_bias_alone(dataset, baseline=None, gold=None, per_image: bool = True):
    """The centre bias itself as a model (leave-image-out), scored like every other model.

    ``baseline``: the fitted leave-image-out ``CenterBias`` (the data set's own,
    :func:`dgstudy.baselines.fitted`, if None); it is both the
    model and the IG baseline, so its IG is 0 by construction and its LL (bit/fix over uniform)
    is the number to read. Returns what ``metrics.evaluate`` returns.
    """
    if baseline is None:
        baseline, fitted_gold = baselines.fitted(dataset)
        gold = fitted_gold if gold is None else gold
    return evaluate(baseline, dataset, baseline=baseline, gold=gold, per_image=per_image)
