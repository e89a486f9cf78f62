"""How fast does ``dgstudy predict`` process a folder of images on this machine?

Uses a trained run: ``--run`` if given, else ``results/osie-efficientnet_lite0`` (or
``results/smoke-efficientnet_lite0``) if it exists, else a tiny run trained here on a synthetic
dataset (3 folds, efficientnet_lite0 features, 2 epochs; in a temporary folder). Images: ``--images``
(a folder), else the first ``--n`` images of the run's dataset.

Prints, measured side by side in one process on the same images:

* backbone features only (``dgstudy.features.compute``) — the floor;
* ``Predictor.log_density`` with one fold and with all folds (features are computed once, so the
  extra folds cost only their readouts);
* ``predict_images`` without and with the PNG figures (decode, predict, write ``.npy``/``.png``);

each as images/s and as a ratio to the features-only time.

    .venv/bin/python benchmarks/bench_predict.py [--run results/<run>] [--images DIR] [--n 20]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import json  # noqa: E402

from dgstudy import features, imageio, predict, predict_files, runs, training  # noqa: E402
from dgstudy.config import TrainConfig  # noqa: E402


def find_run(explicit: str | None) -> Path | None:
    if explicit:
        return Path(explicit)
    for name in ("osie-efficientnet_lite0", "smoke-efficientnet_lite0"):
        d = REPO / "results" / name
        if any(d.glob("fold_*/model.pt")):
            return d
    return None


def build_tiny_run(root: Path) -> Path:
    """Train a 3-fold run on 12 synthetic 240x320 images (efficientnet_lite0 features) under ``root``."""
    os.environ["DGSTUDY_DATA"] = str(root / "data")
    os.environ["DGSTUDY_RESULTS"] = str(root / "results")
    cfg = TrainConfig(dataset="synthetic", dataset_options={"size": [240, 320], "seed": 0},
                     n_images=12, backbone="efficientnet_lite0", folds=3, max_epochs=2,
                     run="bench-predict", patience=2)
    ds = runs.load_dataset(cfg)
    features.extract(ds, cfg.backbone, downsample=cfg.downsample, out=runs.feature_path(cfg, ds),
                     progress=False)
    return training.train_crossval(cfg, progress=False)


def run_images(run_dir: Path, n: int) -> list[Path]:
    cfg = TrainConfig.from_dict(json.loads((run_dir / "config.json").read_text()))
    ds = runs.load_dataset(cfg)
    return [Path(p) for p in ds.stimuli[:n]]


def rate(fn, items, repeat: int = 1) -> float:
    """Images per second: the best of ``repeat`` passes over ``items``."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for it in items:
            fn(it)
        best = min(best, time.perf_counter() - t0)
    return len(items) / best


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default=None)
    ap.add_argument("--images", default=None, help="a folder of images (default: the run's dataset)")
    ap.add_argument("--n", type=int, default=20, help="number of images (default 20)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--repeat", type=int, default=2, help="passes per measurement; the best counts")
    args = ap.parse_args(argv)

    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    tmp = tempfile.TemporaryDirectory(prefix="bench_predict-")
    run_dir = find_run(args.run)
    if run_dir is None:
        print("no trained OSIE/smoke run under results/; training a tiny synthetic one ...", flush=True)
        run_dir = build_tiny_run(Path(tmp.name))
    images = (imageio.expand_image_args([args.images])[: args.n] if args.images
              else run_images(run_dir, args.n))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = predict.load_model(run_dir, device=args.device)
        one = predict.load_model(run_dir, fold=int(model.members[0].name.split("_")[1]), device=args.device)
    rgbs = [imageio.read_rgb(p) for p in images]
    sizes = sorted({f"{r.shape[1]}x{r.shape[0]}" for r in rgbs})
    print(f"run: {run_dir} ({len(model.members)} folds, {model.spec.backbone}, layers {model.spec.layers}, "
          f"downsample {model.spec.downsample}, {model.spec.dtype})")
    print(f"images: {len(images)} ({', '.join(sizes)} px); device {args.device}; "
          f"torch threads {torch.get_num_threads()}; load average {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} CPUs; best of {args.repeat}")

    model.log_density(rgbs[0])                      # warm-up (allocations, lazy imports)
    out = Path(tmp.name) / "out"
    r = args.repeat
    results = [
        ("backbone features only", rate(model.features, rgbs, r)),
        ("log_density, 1 fold", rate(one.log_density, rgbs, r)),
        (f"log_density, {len(model.members)} folds", rate(model.log_density, rgbs, r)),
        ("predict_images, no PNG", max(_files_rate(model, images, out / f"a{k}", False) for k in range(r))),
        ("predict_images, with PNG", max(_files_rate(model, images, out / f"b{k}", True) for k in range(r))),
    ]
    base = results[0][1]
    print(f"{'step':<28} {'images/s':>9} {'s/image':>8} {'time vs features':>17}")
    for name, r in results:
        print(f"{name:<28} {r:9.2f} {1 / r:8.3f} {base / r:16.2f}x")
    tmp.cleanup()


def _files_rate(model, images, out, plot) -> float:
    t0 = time.perf_counter()
    rep = predict_files.predict_images(model, images, out, plot=plot, progress=False)
    dt = time.perf_counter() - t0
    if rep.errors:
        raise RuntimeError("; ".join(rep.errors))
    return len(images) / dt


if __name__ == "__main__":
    main()
