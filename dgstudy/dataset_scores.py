"""What notebook 07 scores from the data set alone, defined once, so that it can be computed beside
the trainings (``dgstudy dataset-scores``, which ``make reproduce`` runs next to notebooks 02-06).

- :func:`classic_models`: the classic saliency models of :mod:`dgstudy.classic`, their maps made a
  density by the cross-validated fit of :func:`dgstudy.map_benchmark.classic_scores`, on the
  profile's folds (``folds``, ``seed``);
- :func:`observers`: the gold standard's information gain by number of observers and its
  extrapolation (:func:`dgstudy.ceiling.observer_curve`).

Both are cached per data set (beside the classic maps, and in the baselines cache), so that they
are computed once, wherever first asked; nothing here depends on a trained run.
"""
from __future__ import annotations

import pandas as pd

from . import baselines, ceiling, classic, datasets, map_benchmark


def classic_models(cfg, dataset, center_bias, gold) -> dict[str, tuple[dict, pd.DataFrame]]:
    """{model name: (summary, per-image table)} of every classic model (:data:`dgstudy.classic.MODELS`)
    on ``dataset``, with the profile ``cfg``'s folds, against its ``center_bias`` and ``gold``."""
    return {name: map_benchmark.classic_scores(name, dataset, (center_bias, gold, {}), k=cfg.train.folds,
                                               seed=cfg.train.seed)
            for name in classic.MODELS}


def observers(cfg, dataset, gold) -> tuple[pd.DataFrame, dict]:
    """The observer curve of ``dataset``'s gold standard and its fit (:func:`dgstudy.ceiling.observer_curve`),
    drawn with the profile's seed."""
    return ceiling.observer_curve(dataset, gold, seed=cfg.train.seed)


def compute(cfg) -> None:
    """Fit the data set's centre bias and gold standard and compute both scores above for profile
    ``cfg``, each only if not cached yet."""
    t = cfg.train
    dataset = datasets.load(t.dataset, n_images=t.n_images, **(t.dataset_options or {}))
    center_bias, gold = baselines.fitted(dataset)
    classic_models(cfg, dataset, center_bias, gold)
    observers(cfg, dataset, gold)
