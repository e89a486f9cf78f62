"""Any saliency model's maps benchmarked on a fixation data set (``dgstudy evaluate --maps``).

:func:`evaluate_maps` takes a folder of maps (:class:`~dgstudy.saliency_maps.SaliencyMaps`) and
scores it twice:

- **as a density**, the benchmark's way (Kümmerer et al. 2018): the maps made a cross-validated
  density (:func:`dgstudy.map_density.density_from_maps`) and scored like any dgstudy model
  (:func:`dgstudy.evaluation.score_cross_validated`): LL, IG over the data set's own
  leave-image-out centre bias, explained IG against its leave-one-subject-out gold standard, and
  AUC, sAUC, NSS, CC, KLDiv, SIM on the maps that are optimal for each under that density;
- **as raw maps**, the classic way (:func:`dgstudy.metrics.evaluate_saliency_maps`): AUC, sAUC,
  NSS, CC, KLDiv, SIM on the maps as they are, columns prefixed ``raw_``.

What cannot be computed is NaN with its reason in ``not_computable`` (one observer: no gold
standard). :func:`classic_scores` does this once for a classic model's maps
(:mod:`dgstudy.classic`) of a data set and keeps the result (beside the maps in the data cache)
for the study's model comparison.
:func:`write` writes ``evaluation.json``, ``evaluation_per_image.csv`` and the figure
``evaluation.png``/``.pdf`` (atomically). LL and IG in bit/fixation.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from . import evaluation, metrics
from .io import DataError, atomic_path, write_json
from .map_density import CrossValidatedMaps, density_from_maps
from .saliency_maps import SaliencyMaps
from .transfer import fit_baselines

RAW_METRICS = ("AUC", "sAUC", "NSS", "CC", "KLDiv", "SIM")
MAX_FOLDS = 10
SCORES_VERSION = 1      # of the conversion and its scoring: raise it when either changes (classic_scores)


@dataclass
class MapEvaluation:
    """The result of :func:`evaluate_maps`: ``summary`` (the density's metrics, as
    :func:`dgstudy.metrics.evaluate`), ``raw`` (the raw maps' metrics), ``per_image`` (both, one row
    per image, with its fold), ``fit`` (per fold the fitted conversion), ``not_computable``."""

    summary: dict
    raw: dict
    per_image: pd.DataFrame
    fit: dict
    not_computable: dict = field(default_factory=dict)
    dataset: object = None
    maps: str = ""
    model: CrossValidatedMaps | None = None


def evaluate_maps(maps, dataset=None, k: int = MAX_FOLDS, seed: int = 0, kernel_size: float | None = None,
                  baselines=None, progress: bool = False, **fit_kw) -> MapEvaluation:
    """Benchmark ``maps`` (a folder for ``dataset``, or a :class:`SaliencyMaps`) on its data set
    (module docstring). ``k`` folds (at most the number of images; the study's folds for
    ``seed``); ``baselines``: (centre bias, gold standard, not_computable) if already fitted
    (:func:`dgstudy.transfer.fit_baselines`); ``fit_kw`` go to
    :func:`~dgstudy.map_density.density_from_maps`."""
    maps = maps if isinstance(maps, SaliencyMaps) else SaliencyMaps(maps, dataset)
    ds = maps.dataset
    if len(ds) < 2:
        raise DataError(f"{ds.name}: the maps are made a density by cross-validation over images, "
                        "which needs at least 2 images")
    center_bias, gold, not_computable = baselines if baselines is not None else fit_baselines(ds)
    not_computable = dict(not_computable)
    model = density_from_maps(maps, k=min(k, len(ds)), seed=seed, progress=progress, **fit_kw)
    summary, per_image, _ = evaluation.score_cross_validated(model, center_bias, gold, progress=progress)
    not_computable.update(summary.pop("not_computable", {}))
    if center_bias is None:          # scored over a uniform baseline: IG is not the benchmark's
        summary.update({k_: math.nan for k_ in summary if k_.startswith(("IG", "explained_IG"))})
        per_image["IG"] = math.nan
    raw, raw_table = metrics.evaluate_saliency_maps(maps.at_size, ds, images=model.images,
                                                    kernel_size=kernel_size, progress=progress)
    per_image = per_image.merge(raw_table.drop(columns="n_fix").rename(columns={m: f"raw_{m}" for m in RAW_METRICS}),
                                on="image")
    per_image.insert(1, "file", [Path(ds.stimuli[int(i)]).name for i in per_image["image"]])
    per_image.insert(2, "map", [maps.paths[int(i)].name for i in per_image["image"]])
    return MapEvaluation(summary=summary, raw=raw, per_image=per_image, fit=model.summary(),
                         not_computable=not_computable, dataset=ds, maps=str(maps.folder), model=model)


def write(result: MapEvaluation, out) -> dict[str, Path]:
    """``evaluation.json``, ``evaluation_per_image.csv`` and ``evaluation.png``/``.pdf`` into
    ``out`` (each atomically; the JSON last, so that its presence means all are there)."""
    from . import figures

    out = Path(out)
    ds = result.dataset
    paths = {"json": out / "evaluation.json", "csv": out / "evaluation_per_image.csv"}
    with atomic_path(paths["csv"], suffix=".csv") as tmp:
        result.per_image.to_csv(tmp, index=False)
    fig = figures.plot_map_evaluation(result.per_image, result.fit, result.summary)
    for p in figures.save(fig, "evaluation", out):
        paths[p.suffix.lstrip(".")] = p
    figures.plt.close(fig)
    write_json(paths["json"], {
        "maps": result.maps,
        "dataset": None if ds is None else {"name": ds.name, "checksum": ds.checksum, "n_images": ds.n_images,
                                            "n_fixations": ds.n_fixations, "n_subjects": int(len(ds.subjects))},
        "density": result.summary, "raw_maps": result.raw, "not_computable": result.not_computable,
        "conversion": result.fit,
        "notes": {"density": "the maps made a density by a cross-validated fit (monotone nonlinearity, "
                             "blur, centre-bias weight); every metric on the map optimal for it",
                  "raw_maps": "the classic metrics on the maps as they are"},
    })
    return paths


def classic_scores(model: str, dataset, baselines=None, k: int = MAX_FOLDS, seed: int = 0,
                   progress: bool = False) -> tuple[dict, pd.DataFrame]:
    """(summary, per-image table) of classic ``model``'s maps (:func:`dgstudy.classic.write_maps`)
    benchmarked on ``dataset`` by :func:`evaluate_maps` with the study's folds (``k``, ``seed``).

    Computed once and kept beside the maps, in
    ``<maps folder>-scores-k<k>-seed<seed>-v<SCORES_VERSION>/`` (:func:`write`'s files; the maps
    folder is keyed on the data set's checksum). The summary holds the density's metrics and the
    raw maps' as ``raw_<metric>``."""
    from . import classic

    folder = classic.maps_folder(model, dataset)
    out = folder.with_name(f"{folder.name}-scores-k{k}-seed{seed}-v{SCORES_VERSION}")
    if not ((out / "evaluation.json").exists() and (out / "evaluation_per_image.csv").exists()):
        result = evaluate_maps(classic.write_maps(model, dataset, folder, progress=progress), dataset, k=k,
                               seed=seed, baselines=baselines, progress=progress)
        write(result, out)
    kept = json.loads((out / "evaluation.json").read_text())
    return ({**kept["density"], **{f"raw_{m}": kept["raw_maps"][m] for m in RAW_METRICS}},
            pd.read_csv(out / "evaluation_per_image.csv"))
