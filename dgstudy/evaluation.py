"""Scoring a trained run: its cross-validated predictions through :func:`dgstudy.metrics.evaluate`.

:func:`evaluate_run` writes ``metrics.json`` (overall metrics, per-fold summaries, flagged folds)
and ``per_image.csv`` into the run folder; :func:`evaluate_runs` does so for several runs at once,
one task each (:mod:`dgstudy.tasks`); :func:`load_run_metrics` reads them back (evaluating first
if needed). LL and IG in bits per fixation; IG over the leave-image-out centre bias unless
another baseline is given; explained IG against the leave-one-subject-out gold standard.
"""
from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from . import baselines, metrics, tasks
from .baselines import GoldStandard
from .io import atomic_path, write_json
from .runs import CrossValModel, fold_done

def per_fold_summary(per_image: pd.DataFrame, fold_of: np.ndarray) -> pd.DataFrame:
    """Per-fold fixation-weighted means of the per-image per-fixation metrics (LL, IG, ...)."""
    df = per_image.copy()
    df["fold"] = fold_of[df["image"].to_numpy()]
    cols = [c for c in ("LL", "IG", "IG_gold", "LL_baseline") if c in df.columns]
    rows = []
    for f, g in df.groupby("fold"):
        w = g["n_fix"].to_numpy(dtype=np.float64)
        row = {"fold": int(f), "n_images": len(g), "n_fix": int(w.sum())}
        for c in cols:
            row[c] = float(np.sum(g[c].to_numpy() * w) / w.sum())
        if "IG" in row and "IG_gold" in row and row["IG_gold"] != 0:
            row["explained_IG"] = row["IG"] / row["IG_gold"]
        rows.append(row)
    return pd.DataFrame(rows)


LOW_FOLD_FRACTION = 0.5   # a fold whose test IG is below this fraction of the median fold is flagged


def fold_health(run_dir, folds: pd.DataFrame) -> dict:
    """What could have gone wrong in a run's folds, for ``metrics.json``:

    ``folds_not_above_center_bias`` (best validation IG <= 0), ``folds_low_test_ig`` (test IG below
    ``LOW_FOLD_FRACTION`` x the median fold's, or <= 0), ``folds_restarted`` ({fold: abandoned seeds}
    of dead readouts) and ``problems`` (one sentence for each flagged fold; empty if none).
    """
    not_above, restarted = [], {}
    for d in sorted(Path(run_dir).glob("fold_*")):
        if not fold_done(d):
            continue
        info = json.loads((d / "config.json").read_text())
        if "best_val_ig" in info and not info["best_val_ig"] > 0:
            not_above.append(int(info["fold"]))
        if info.get("dead_seeds"):
            restarted[int(info["fold"])] = list(info["dead_seeds"])
    low = []
    if "IG" in folds and len(folds):
        median = float(np.median(folds["IG"]))
        low = [int(r.fold) for r in folds.itertuples() if r.IG <= 0 or r.IG < LOW_FOLD_FRACTION * median]
    problems = [f"fold {f}: best validation IG not above the centre bias" for f in not_above]
    problems += [f"fold {f}: test IG below {LOW_FOLD_FRACTION} x the median fold's" for f in low]
    return {"folds_not_above_center_bias": not_above, "folds_low_test_ig": low,
            "folds_restarted": restarted, "problems": problems}


def score_cross_validated(model, baseline=None, gold=None, progress: bool = True
                          ) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    """(summary, per-image table with ``fold``, per-fold table) of a cross-validated ``model``: an
    object with ``.dataset``, ``.images``, ``.fold_of`` and ``log_density(i)`` (a
    :class:`~dgstudy.runs.CrossValModel`, or an ensemble of them). ``baseline``/``gold``: the
    leave-image-out centre bias and the gold standard (if None: the data set's own,
    :func:`dgstudy.baselines.fitted`)."""
    ds = model.dataset
    if baseline is None:
        baseline, fitted_gold = baselines.fitted(ds)
        gold = fitted_gold if gold is None else gold
    gold = GoldStandard.fit(ds, baseline) if gold is None else gold
    summary, per_image = metrics.evaluate(model.log_density, ds, baseline=baseline, gold=gold,
                                          images=model.images, per_image=True, progress=progress)
    per_image = per_image.copy()
    per_image["fold"] = model.fold_of[per_image["image"].to_numpy()]
    return summary, per_image, per_fold_summary(per_image, model.fold_of)


def write_scores(out_dir, result: dict, per_image: pd.DataFrame) -> None:
    """``metrics.json`` (``result``) and ``per_image.csv`` into ``out_dir``, atomically."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "metrics.json", result)
    with atomic_path(out_dir / "per_image.csv") as tmp:
        per_image.to_csv(tmp, index=False)


def evaluate_run(run_dir, *, dataset=None, features=None, baseline=None, gold=None,
                 progress: bool = True, allow_partial: bool = False) -> dict:
    """Evaluate a run's cross-validated predictions; writes ``metrics.json`` and ``per_image.csv``.

    Baseline and gold standard: the data set's leave-image-out centre bias and leave-one-subject-out
    gold standard (:func:`dgstudy.baselines.fitted`) unless given. ``metrics.json`` holds the overall metrics
    (``dgstudy.metrics.evaluate``) and, per fold, the fixation-weighted test IG over the baseline.
    ``allow_partial=True`` evaluates only the test images of finished folds (``folds_missing``
    in metrics.json says which are not). Flagged folds (:func:`fold_health`) are warned about and
    listed in metrics.json.
    """
    t0 = time.perf_counter()
    cvm = CrossValModel(run_dir, dataset=dataset, features=features, allow_partial=allow_partial)
    summary, per_image, folds = score_cross_validated(cvm, baseline, gold, progress)
    health = fold_health(cvm.run_dir, folds)
    for problem in health["problems"]:
        warnings.warn(f"{run_dir}: {problem}")
    result = {"run": cvm.cfg.run, "config": cvm.cfg.to_dict(), "summary": summary,
              "folds": folds.to_dict(orient="records"), "folds_missing": cvm.missing_folds,
              **health, "seconds": time.perf_counter() - t0}
    write_scores(run_dir, result, per_image)
    return result


def evaluated(run_dir) -> bool:
    """True if the run has its ``metrics.json`` and ``per_image.csv``."""
    return (Path(run_dir) / "metrics.json").exists() and (Path(run_dir) / "per_image.csv").exists()


def evaluate_runs(run_dirs, *, scheduler: str | None = None, progress: bool = True, **evaluate_kw) -> None:
    """:func:`evaluate_run` for every run of ``run_dirs`` not yet :func:`evaluated`, all submitted at
    once, one task per run, executed where ``scheduler`` says (:func:`dgstudy.tasks.resolve_scheduler`;
    the runs' recorded ``scheduler`` is the configured default). ``evaluate_kw`` (e.g. a shared
    ``dataset``, ``baseline`` and ``gold``) go to every run, sent to a cluster once."""
    todo = list(dict.fromkeys(Path(r).resolve() for r in run_dirs if not evaluated(r)))
    if not todo:
        return
    configured = json.loads((todo[0] / "config.json").read_text()).get("scheduler") \
        if (todo[0] / "config.json").exists() else None
    where = tasks.resolve_scheduler(scheduler, configured)
    tasks.run(evaluate_run, [dict(run_dir=r, progress=progress and where == "sync", **evaluate_kw) for r in todo],
              scheduler=where, scatter=("dataset", "features", "baseline", "gold"), desc="evaluations",
              labels=[f"evaluate {r.name}" for r in todo], progress=progress and where != "sync")


def load_run_metrics(run_dir: str | Path, **evaluate_kw) -> tuple[dict, pd.DataFrame]:
    """(metrics dict, per-image DataFrame) of a training run, from ``metrics.json`` (its ``summary``)
    and ``per_image.csv``; evaluates the run first (``evaluation.evaluate_run(run_dir,
    **evaluate_kw)``, e.g. with a shared ``dataset``, ``baseline`` and ``gold``) if they are missing.
    """
    run_dir = Path(run_dir)
    if not evaluated(run_dir):
        evaluate_run(run_dir, **evaluate_kw)
    summary = json.loads((run_dir / "metrics.json").read_text())
    summary = summary.get("summary", summary)   # evaluate_run nests the metrics under "summary"
    per_image = pd.read_csv(run_dir / "per_image.csv")
    return summary, per_image
