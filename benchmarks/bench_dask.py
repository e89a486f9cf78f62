"""Folds as Dask tasks: a training grid in this process (``sync``) next to the local Dask cluster,
measured side by side in one run, and optionally ``make reproduce`` from scratch both ways.

Prints, for the grid: the number of (condition, fold) tasks, the sequential wall time, the local
cluster's start-up and wall time, the speed-up (sequential / cluster, with and without the start-up)
and whether every fold's checkpoint and log are equal between the two (they should be: same seeds).

* default: the osie profile's layer and centre-bias grids (notebooks 03 and 04: every condition,
  10 folds, 60 epochs), on the OSIE feature stores under ``$DGSTUDY_DATA`` (extracted if missing:
  notebooks 01/03 do the same). Tens of minutes sequentially on 2 cores.
* ``--small``: a quick run on generated data (a toy backbone's feature store of the synthetic data
  set; 2 conditions x 4 folds of a few seconds each).
* ``--reproduce`` (instead of the grid): ``make reproduce PROFILE=osie`` from scratch, sequential
  (``DGSTUDY_SCHEDULER=sync``) and with the default local cluster, each with empty results, figures
  and feature folders (``--data`` keeps the dataset caches; OSIE is read from its mirror): about an
  hour sequentially on 2 cores. Run it on an idle machine.

Usage: python benchmarks/bench_dask.py [--small] [--workers N] [--seq-threads N] [--reproduce [--data DIR]] [--keep DIR]

The sequential run uses torch's default threads (one per core), as ``make reproduce`` with
``DGSTUDY_SCHEDULER=sync`` does; ``--seq-threads 1`` separates the gain of parallel folds from the
cost of intra-op threads contending on a busy machine.

Both variants run in this one invocation, one after the other, on the same machine, so their ratio
is meaningful even where the absolute times are not.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def small_grid(root: Path):
    """(dataset, [TrainConfig]) of the --small grid: a toy conv net's features of generated images."""
    from collections import OrderedDict

    import torch
    from torch import nn

    from dgstudy import datasets, features
    from dgstudy.backbones import SequentialBackbone
    from dgstudy.config import TrainConfig

    g = torch.Generator().manual_seed(0)
    c1, c2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 16, 3, padding=1)
    with torch.no_grad():
        for m in (c1, c2):
            m.weight.copy_(torch.randn(m.weight.shape, generator=g))
            m.bias.zero_()
    toy = SequentialBackbone("toy", OrderedDict(c1=c1, p1=nn.MaxPool2d(2), c2=c2, p2=nn.MaxPool2d(2)),
                             (0.5,) * 3, (0.25,) * 3, ["p1", "p2"], {"c1": 1, "p1": 2, "c2": 2, "p2": 4},
                             "toy-weights", "bench", architecture="toy conv-pool stack").eval()
    options = {"size": [96, 128], "seed": 1, "n_subjects": 10, "fixations_per_subject": 10}
    ds = datasets.load("synthetic", **options)
    store = features.extract(ds, toy, downsample=1, out=root / "toy.h5", progress=False)
    base = dict(dataset="synthetic", dataset_options=options, backbone="toy", feature_path=str(store),
                folds=4, max_epochs=30, patience=30, lr=0.01, batch_size=4, blur_sigma=1.0,
                saliency_map_factor=2)
    return ds, [TrainConfig(run="bench-learned", **base), TrainConfig(run="bench-fixed", center_bias="fixed", **base)]


def osie_grid():
    """(dataset, [TrainConfig]) of the osie profile's trainings: the main run (notebook 02) and the
    layer and centre-bias grids around the reference (notebooks 03, 04), their stores extracted."""
    from dgstudy import ablations
    from dgstudy.config import StudyConfig

    cfg = StudyConfig.load("osie")
    ds = ablations.load_dataset(cfg)
    ablations.extract_stores(cfg, ds)
    runs = ablations.profile_runs(cfg, ds)
    return ds, [t for nb in ("02", "03", "04") for t in runs[nb].values()]


def same_folds(a_dirs, b_dirs) -> bool:
    for a, b in zip(a_dirs, b_dirs):
        for d in sorted(Path(a).glob("fold_*")):
            if (d / "model.pt").read_bytes() != (Path(b) / d.name / "model.pt").read_bytes():
                return False
    return True


def bench_grid(small: bool, root: Path) -> None:
    from dgstudy import tasks, training

    ds, cfgs = small_grid(root) if small else osie_grid()
    n = sum(c.folds for c in cfgs)
    print(f"grid: {len(cfgs)} conditions x folds = {n} trainings ({'synthetic, toy backbone' if small else 'OSIE'})")

    os.environ["DGSTUDY_RESULTS"] = str(root / "sync")
    t0 = time.perf_counter()
    seq = training.train_runs(cfgs, dataset=ds, scheduler="sync", progress=False)
    t_seq = time.perf_counter() - t0
    print(f"  sequential (sync): {t_seq:8.1f} s  ({t_seq / n:.2f} s per training)")

    os.environ["DGSTUDY_RESULTS"] = str(root / "local")
    t0 = time.perf_counter()
    c = tasks.client("local")
    c.run(lambda: __import__("dgstudy.training"))          # imports on every worker, counted as start-up
    t_start = time.perf_counter() - t0
    t1 = time.perf_counter()
    par = training.train_runs(cfgs, dataset=ds, scheduler="local", progress=False)
    t_par = time.perf_counter() - t1
    workers = len(c.scheduler_info()["workers"])
    tasks.close()
    print(f"  local cluster ({workers} workers): start-up {t_start:.1f} s, grid {t_par:.1f} s")
    print(f"  speed-up sequential / cluster: {t_seq / t_par:.2f}x (grid alone), "
          f"{t_seq / (t_par + t_start):.2f}x (with start-up)")
    print(f"  every fold's model.pt equal between the two: {same_folds(seq, par)}")


def bench_reproduce(root: Path, data: Path | None) -> None:
    times = {}
    for scheduler in ("sync", "local"):
        d = root / f"reproduce-{scheduler}"
        d.mkdir(parents=True)
        env = {**os.environ, "DGSTUDY_SCHEDULER": scheduler, "DGSTUDY_RESULTS": str(d / "results"),
               "DGSTUDY_FIGURES": str(d / "figures"), "PYTHONPATH": str(REPO)}
        if data is not None:            # dataset caches kept, features extracted afresh
            fresh = d / "data"
            fresh.mkdir()
            for sub in ("cache", "osie"):
                if (data / sub).exists():
                    os.symlink(data / sub, fresh / sub)
            env["DGSTUDY_DATA"] = str(fresh)
        else:
            env["DGSTUDY_DATA"] = str(d / "data")
        log = d.with_suffix(".log")
        t0 = time.perf_counter()
        with open(log, "w") as fh:
            subprocess.run(["make", "-C", str(REPO), "reproduce", "PROFILE=osie"], env=env, check=True,
                           stdout=fh, stderr=subprocess.STDOUT)
        times[scheduler] = time.perf_counter() - t0
        print(f"  make reproduce PROFILE=osie, DGSTUDY_SCHEDULER={scheduler}: {times[scheduler] / 60:.1f} min "
              f"(log: {log})")
    print(f"  speed-up sequential / local cluster: {times['sync'] / times['local']:.2f}x")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--small", action="store_true", help="a quick grid on generated data")
    ap.add_argument("--workers", type=int, default=None, help="local cluster workers (default: one per core)")
    ap.add_argument("--seq-threads", type=int, default=None,
                    help="torch threads of the sequential run (default: torch's, as make reproduce with sync)")
    ap.add_argument("--reproduce", action="store_true",
                    help="instead of the grid: make reproduce PROFILE=osie from scratch, both ways")
    ap.add_argument("--data", type=Path, default=None,
                    help="with --reproduce: a data root whose dataset caches (cache/, osie/) are reused")
    ap.add_argument("--keep", type=Path, default=None, help="write results here (default: a temporary folder)")
    args = ap.parse_args()
    if args.workers:
        os.environ["DGSTUDY_WORKERS"] = str(args.workers)
    root = args.keep or Path(tempfile.mkdtemp(prefix="bench_dask-"))
    root.mkdir(parents=True, exist_ok=True)
    if args.small:
        os.environ["DGSTUDY_DATA"] = str(root / "data")
    import torch

    if args.seq_threads:
        torch.set_num_threads(args.seq_threads)
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, CUDA: {torch.cuda.is_available()}, "
          f"sequential run with {torch.get_num_threads()} torch threads")
    try:
        if args.reproduce:
            bench_reproduce(root, args.data)
        else:
            bench_grid(args.small, root)
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
