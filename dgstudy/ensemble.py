"""Ensembles of cross-validated runs (e.g. one run per backbone), chosen on validation data.

An ensemble's density is the average of its members' densities (:func:`average_log_densities`;
as the paper's MIT300 submission averages its 10 fold models, and DeepGaze IIE its readouts over
backbones): ``log p = logsumexp_m log p_m - log M``.

:func:`select_and_evaluate` makes the choice the way every other choice in the study is made,
inside each fold: for fold ``k`` every non-empty subset of the runs is scored by its mean
log-likelihood on fold ``k``'s *validation* images (all runs must share the fold split), the
best subset is kept, and fold ``k``'s *test* images are predicted by that subset's fold-``k``
models. No test fixation takes part in the choice that is applied to it. The result is written
like a run's evaluation (``metrics.json``, ``per_image.csv``) plus ``ensemble.json`` (per fold:
the chosen members and every subset's validation log-likelihood).
"""
from __future__ import annotations

import itertools
import json
import math
import time
from pathlib import Path

import numpy as np

from .datasets import image_fixation_index
from .evaluation import fold_health, score_cross_validated, write_scores
from .io import DataError, write_json
from .runs import CrossValModel
from .training_fast import LN2


def average_log_densities(log_densities, weights=None) -> np.ndarray:
    """Log of the average of the densities: ``log(sum_k exp(l_k) / K)`` (equal weights), or with
    ``weights`` (positive, one per input, relative) ``log(sum_k w_k exp(l_k) / sum_k w_k)``.

    ``log_densities``: any iterable of arrays of one shape (e.g. a generator, one fold at a time);
    they are accumulated one by one in float64, so memory does not grow with K. The accumulation
    is the streaming log-sum-exp: per element the largest input so far, ``s``, and
    ``sum_k w_k exp(l_k - s)``, rescaled when a larger input arrives (one ``exp`` per input and
    element, every exponent <= 0: no overflow, and no underflow of the largest term). Equal to
    ``scipy.special.logsumexp`` over the stacked inputs up to float64 rounding (tested).
    Without weights one input is returned unchanged (a one-member ensemble is exactly that member);
    otherwise the result has the dtype of the first input.
    """
    pairs = ((ld, 1.0) for ld in log_densities) if weights is None else zip(log_densities, weights, strict=True)
    ld = shift = acc = dtype = None
    total = 0.0
    for ld, w in pairs:
        if not w > 0:
            raise ValueError(f"weights must be positive, got {w!r}")
        total += w
        if acc is None:
            shift, acc, dtype = np.array(ld, dtype=np.float64), np.full(np.shape(ld), float(w)), np.asarray(ld).dtype
            d, up, spare = np.empty_like(acc), np.empty_like(acc), np.empty_like(acc)   # reused buffers
            continue
        if np.shape(ld) != acc.shape:
            raise ValueError(f"log-densities of shapes {acc.shape} and {np.shape(ld)} cannot be averaged")
        np.copyto(d, ld)
        np.maximum(shift, d, out=spare)                  # the new per-element maximum
        d -= shift
        np.fmax(d, 0.0, out=up)                          # > 0 where the input is the new maximum:
        shift, spare = spare, shift                      # the sum is rescaled by exp(-up) there
        np.fmin(d, 0.0, out=d)                           # (NaN, from -inf - -inf, gives 0: the sum
        np.negative(up, out=up)                          # only matters once the shift is finite)
        acc *= np.exp(up, out=up)
        d = np.exp(d, out=d)
        d *= w
        acc += d
    if acc is None:
        raise ValueError("no log-densities to average")
    if weights is None and total == 1.0:                # one input, unchanged
        return ld
    return (shift + np.log(acc / total)).astype(dtype, copy=False)


def subsets(names) -> list[tuple[str, ...]]:
    """Every non-empty subset of ``names``, smallest first, in the order given."""
    names = list(names)
    return [c for r in range(1, len(names) + 1) for c in itertools.combinations(names, r)]


def _check_same_split(models: dict[str, CrossValModel]) -> None:
    first_name, first = next(iter(models.items()))
    for name, m in models.items():
        if len(m.dataset) != len(first.dataset) or m.dataset.checksum != first.dataset.checksum:
            raise DataError(f"{m.run_dir}: another dataset than {first.run_dir}")
        if set(m.folds) != set(first.folds):
            raise DataError(f"{m.run_dir}: finished folds {sorted(m.folds)} differ from "
                            f"{first.run_dir}'s {sorted(first.folds)}")
        for f in m.folds:
            for which in ("val", "test"):
                if not np.array_equal(m.fold_images(f, which), first.fold_images(f, which)):
                    raise DataError(f"{m.run_dir}: fold {f} {which} images differ from those of "
                                    f"{first.run_dir}; an ensemble needs one fold split")


def validation_log_likelihoods(models: dict[str, CrossValModel], fold: int, candidates=None
                               ) -> dict[tuple, float]:
    """{candidate: mean log-likelihood in bit/fix relative to uniform} on fold ``fold``'s validation
    images, for every candidate (a tuple of names in ``models``; default: every non-empty subset)."""
    first = next(iter(models.values()))
    ds = first.dataset
    per_member = {name: [] for name in models}        # log p at each validation fixation
    log_area = []
    for i in first.fold_images(fold, "val"):
        pix = image_fixation_index(ds, int(i))
        if not len(pix):
            continue
        for name, m in models.items():
            per_member[name].append(m.fold_log_density(fold, int(i)).reshape(-1)[pix])
        log_area.append(np.full(len(pix), math.log(int(ds.sizes[i][0]) * int(ds.sizes[i][1]))))
    log_area = np.concatenate(log_area)
    at_fix = {name: np.concatenate(v) for name, v in per_member.items()}
    out = {}
    for combo in (subsets(models) if candidates is None else candidates):
        ll = average_log_densities(at_fix[n] for n in combo)
        out[combo] = float(np.mean(ll + log_area) / LN2)
    return out


def fingerprint(runs: dict) -> dict:
    """{name: [[fold, seed, best validation LL], ...]} of the runs' finished folds: changes when a
    member is retrained, so a stored ensemble is reused only for the very same members."""
    out = {}
    for name, run in runs.items():
        run_dir = run.run_dir if isinstance(run, CrossValModel) else Path(run)
        rows = []
        for d in sorted(run_dir.glob("fold_*")):
            if (d / "config.json").exists():
                info = json.loads((d / "config.json").read_text())
                rows.append([info["fold"], info.get("seed"), info.get("best_val_LL")])
        out[name] = rows
    return out


class SelectedEnsemble:
    """Image ``i``'s density: the average over the members chosen for the fold that held it out."""

    def __init__(self, models: dict[str, CrossValModel], choice: dict[int, tuple[str, ...]]):
        self.models, self.choice = models, choice
        first = next(iter(models.values()))
        self.dataset, self.fold_of = first.dataset, first.fold_of
        self.images = first.images

    def log_density(self, i: int) -> np.ndarray:
        fold = int(self.fold_of[i])
        return average_log_densities([self.models[n].fold_log_density(fold, i) for n in self.choice[fold]])

    __call__ = log_density


def select_and_evaluate(runs: dict, out_dir: str | Path, *, dataset=None, baseline=None, gold=None,
                        progress: bool = True, members: str = "validation", candidates=None) -> dict:
    """Choose, per fold, the subset of ``runs`` ({name: run folder, or a ``CrossValModel``}) with the
    best validation log-likelihood; evaluate the chosen ensembles on the test folds; write ``out_dir``.

    ``candidates``: the subsets to choose from (tuples of names; default every non-empty subset;
    ``dgstudy.main_ensemble.candidates`` offers each backbone's first k instances).

    ``baseline``/``gold``: as for ``evaluation.evaluate_run`` (fitted here if None). Returns what
    is written to ``metrics.json``. ``members='all'``: no choice, every fold averages all runs
    (instances of one configuration); the validation log-likelihoods are recorded all the same.
    Returns ``summary`` (``dgstudy.metrics.evaluate``), ``folds``,
    ``choice`` ({fold: members}) and ``validation_LL`` ({fold: {"a+b": bit/fix}}).
    """
    t0 = time.perf_counter()
    if members not in ("validation", "all"):
        raise ValueError(f"members must be 'validation' or 'all', got {members!r}")
    models = {name: run if isinstance(run, CrossValModel) else CrossValModel(run, dataset=dataset)
              for name, run in runs.items()}
    if len(models) < 1:
        raise ValueError("an ensemble needs at least one run")
    _check_same_split(models)
    if candidates is not None:
        candidates = [tuple(c) for c in candidates]
        unknown = sorted({n for c in candidates for n in c} - set(models))
        if unknown or not candidates or not all(candidates):
            raise ValueError(f"candidates must be non-empty tuples of the runs' names {list(models)}; "
                             f"got {candidates!r}")
    first = next(iter(models.values()))
    choice, val_ll = {}, {}
    for fold in sorted(first.folds):
        scores = validation_log_likelihoods(models, fold, candidates)
        choice[fold] = tuple(models) if members == "all" else max(scores, key=scores.get)
        val_ll[fold] = {"+".join(c): v for c, v in scores.items()}
    summary, per_image, folds = score_cross_validated(SelectedEnsemble(models, choice), baseline, gold,
                                                      progress)
    out_dir = Path(out_dir)
    result = {"run": out_dir.name, "members": {n: str(m.run_dir) for n, m in models.items()},
              "fingerprint": fingerprint(models),
              **({"candidates": [list(c) for c in candidates]} if candidates is not None else {}),
              "summary": summary, "folds": folds.to_dict(orient="records"),
              "choice": {str(f): list(c) for f, c in choice.items()},
              "validation_LL": {str(f): v for f, v in val_ll.items()},
              "folds_low_test_ig": fold_health(out_dir, folds)["folds_low_test_ig"],
              "seconds": time.perf_counter() - t0}
    write_scores(out_dir, result, per_image)
    write_json(out_dir / "ensemble.json",
               {k: result[k] for k in ("members", "fingerprint", "candidates", "choice", "validation_LL")
                if k in result})
    return result


def load_choice(out_dir: str | Path) -> dict:
    """``ensemble.json`` of an evaluated ensemble (members, per-fold choice, validation LLs)."""
    path = Path(out_dir) / "ensemble.json"
    if not path.exists():
        raise DataError(f"{path}: no ensemble was evaluated here (run ensemble.select_and_evaluate)")
    return json.loads(path.read_text())
