"""Damage repaired, not only named: ``dgstudy preflight`` (the first step of ``make reproduce``)
checks every feature store and every finished fold the profile's chain will use, and moves a damaged
one aside so that the chain rebuilds exactly that.

What is checked:

* every store of :func:`dgstudy.ablations.feature_stores` that exists: its SHA-256 against the
  ``<store>.sha256`` that extraction writes beside it, or, for a store without one, every dataset read
  back (:func:`dgstudy.feature_shards.verify`);
* every finished fold of every run of :func:`dgstudy.ablations.profile_runs`: its ``model.pt``
  against the ``model_sha256`` its ``config.json`` records, and readable
  (:func:`dgstudy.runs.load_checkpoint`).

What happens to a damaged one, each with a line saying so:

* a store ``x.h5`` becomes ``x.h5.damaged`` (its checksum ``x.h5.sha256.damaged``); notebook 01
  extracts it again (an unmerged ``.parts`` folder beside it is kept and resumed from);
* a fold's ``model.pt`` and ``config.json`` become ``model.pt.damaged`` and ``config.json.damaged``
  in the same folder, so the fold counts as unfinished and is trained again (the same seed, the same
  split); the run's evaluation (``metrics.json``, ``per_image.csv``) is removed, so it is scored again.
* the executed notebook that makes the item (``results/<tag>/NN_*.ipynb``: 01 for a store, the
  first notebook that trains the run for a fold) is marked out of date: its modification time is
  set to :data:`OUT_OF_DATE` (1970), older than every file ``make`` compares it with, so that
  ``make reproduce`` reruns it and, since each notebook depends on the one before, the notebooks
  after it. The library skips every finished store and fold, so only the damaged ones are rebuilt.

Nothing is touched when nothing is damaged, so a rerun of ``make reproduce`` stays a no-op.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from . import ablations
from .config import StudyConfig
from .feature_shards import checksum_path, verify
from .io import DataError
from .paths import REPO_ROOT, results_dir
from .runs import fold_done, load_checkpoint

SUFFIX = ".damaged"
OUT_OF_DATE = 86400          # seconds after the epoch: the mtime of an executed notebook to rerun
NOTEBOOK_DIR = REPO_ROOT / "notebooks"
STORE_NOTEBOOK = "01"        # the notebook that extracts every store


@dataclass
class Report:
    """What :func:`check` found: ``stores`` {path: 'ok' | 'missing' | 'given, missing' | 'damaged'},
    ``folds`` (number of finished folds checked), ``damaged`` [(item, why, where it was moved)],
    ``stale`` (executed notebooks marked out of date) and ``lines`` (what was printed)."""

    stores: dict[Path, str] = field(default_factory=dict)
    folds: int = 0
    damaged: list[tuple[Path, str, Path]] = field(default_factory=list)
    stale: list[Path] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)


def move_aside(path: Path) -> Path:
    """Rename ``path`` to ``<path>.damaged`` (``.damaged.1``, ... if taken); the new path."""
    target = path.with_name(path.name + SUFFIX)
    k = 0
    while target.exists():
        k += 1
        target = path.with_name(f"{path.name}{SUFFIX}.{k}")
    os.replace(path, target)
    return target


def fold_problem(d: Path) -> str | None:
    """None if finished fold ``d`` is intact, else what is wrong (its record unreadable, its
    checkpoint cut short, corrupt or not the one its ``config.json`` records)."""
    try:
        info = json.loads((d / "config.json").read_text())
    except (OSError, ValueError) as e:
        return f"config.json is unreadable ({type(e).__name__}: {e})"
    try:
        load_checkpoint(d / "model.pt", info.get("model_sha256"))
    except DataError as e:
        return str(e).split(": ", 1)[-1].split("; delete")[0]
    return None


def check(cfg: StudyConfig, dataset, get_backbone: Callable | None = None, log: Callable[[str], None] = print,
          repair: bool = True) -> Report:
    """Check the stores and finished folds the profile's chain uses (module docstring); with
    ``repair`` (default) move the damaged ones aside and mark their notebooks out of date."""
    rep = Report()

    def say(line: str) -> None:
        rep.lines.append(line)
        log(line)

    stale: set[str] = set()
    stores = ablations.feature_stores(cfg, dataset, get_backbone)
    say(f"feature stores of profile {cfg.profile!r} ({len(stores)}; notebook {STORE_NOTEBOOK} extracts them):")
    for path, (spec, used_by) in stores.items():
        readers = f"{used_by[0]}" + (f" and {len(used_by) - 1} more runs" if len(used_by) > 1 else "")
        if not path.exists():
            rep.stores[path] = "given, missing" if spec.given else "missing"
            say(f"  missing   {path.name} (read by {readers})" +
                (": given by the profile (feature_path), not extracted here" if spec.given else
                 f": notebook {STORE_NOTEBOOK} extracts it"))
            continue
        why = verify(path)
        if why is None:
            rep.stores[path] = "ok"
            say(f"  ok        {path.name} (read by {readers})")
            continue
        rep.stores[path] = "damaged"
        if not repair:
            say(f"  DAMAGED   {path}: {why}")
            continue
        moved = move_aside(path)
        if checksum_path(path).exists():
            move_aside(checksum_path(path))
        rep.damaged.append((path, why, moved))
        stale.add(STORE_NOTEBOOK)
        say(f"  DAMAGED   {path}: {why}; moved aside to {moved.name}; notebook {STORE_NOTEBOOK} "
            "extracts it again")

    runs = ablations.profile_runs(cfg, dataset, get_backbone)
    damaged_folds = []
    for nb, cfgs in runs.items():
        for run, _ in cfgs.items():
            run_dir = results_dir() / run
            for d in sorted(run_dir.glob("fold_*")):
                if not (d.is_dir() and fold_done(d)):
                    continue
                rep.folds += 1
                why = fold_problem(d)
                if why is None:
                    continue
                if not repair:
                    say(f"  DAMAGED   {d}: {why}")
                    continue
                moved = [move_aside(d / name) for name in ("model.pt", "config.json")]
                for derived in ("metrics.json", "per_image.csv"):
                    (run_dir / derived).unlink(missing_ok=True)
                rep.damaged.append((d, why, moved[0]))
                damaged_folds.append((d, why, nb))
                stale.add(nb)
    n_runs = sum(len(c) for c in runs.values())
    say(f"finished folds of profile {cfg.profile!r}: {rep.folds} folds of {n_runs} runs checked, "
        f"{len(damaged_folds)} damaged")
    for d, why, nb in damaged_folds:
        say(f"  DAMAGED   {d}: {why}; moved aside (model.pt{SUFFIX}, config.json{SUFFIX}) and the run's "
            f"evaluation removed; notebook {nb} trains the fold again")

    for nb in sorted(stale):
        for template in sorted(NOTEBOOK_DIR.glob(f"{nb}_*.ipynb")):
            executed = results_dir() / cfg.output_tag / template.name
            if executed.exists():
                os.utime(executed, (OUT_OF_DATE, OUT_OF_DATE))
                rep.stale.append(executed)
                say(f"  {executed}: marked out of date; make reproduce reruns it and the notebooks after it")
    return rep
