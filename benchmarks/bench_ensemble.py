"""How much does the ensemble cost per image, against the single model, on one core?

Loads the shipped ensemble (``--ensemble``, default the default shipped model ``osie``) and the
single-backbone model (``--single``, default ``osie-lite0``), both at their default scale, and
predicts the same 800x600 images (OSIE's first ``--n`` if the data set is here, else random
800x600 RGB) with one torch thread, measured side by side in one process, round-robin per image:

* ``single``: the single model's ``log_density`` (one backbone, its fold readouts);
* ``ensemble``: the ensemble's ``log_density`` (the image decoded and resampled once, each backbone
  run once for all of its readouts);
* ``per run``: the same readouts as one Predictor per member run, each computing its own features
  (what averaging separately loaded runs would cost), summed;
* ``features``: each backbone's features alone, and the single model's: their ratio is the floor
  of the ensemble's ratio (what no sharing of the readouts' work can go below).

Prints seconds per image and each as a ratio to ``single``; the ensemble's goal is <= 3x.

    .venv/bin/python benchmarks/bench_ensemble.py [--ensemble osie] [--single osie-lite0] [--n 5]
"""
from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dgstudy import datasets, imageio, predict  # noqa: E402
from dgstudy.predict_ensemble import EnsemblePredictor  # noqa: E402


def images(n: int) -> list[np.ndarray]:
    try:
        ds = datasets.load("osie")
        return [imageio.read_rgb(ds.stimuli[i]) for i in range(n)]
    except Exception as e:      # noqa: BLE001 - any reason the data set is not here
        print(f"OSIE not available ({e}); random 800x600 images")
        rng = np.random.default_rng(0)
        return [(rng.random((600, 800, 3)) * 255).astype(np.uint8) for _ in range(n)]


def per_run_predictors(ens: EnsemblePredictor) -> list[predict.Predictor]:
    """One Predictor per member run (its chosen folds), each computing its own features."""
    out = []
    for part in ens.parts:
        by_run = defaultdict(list)
        for k, m in enumerate(part.members):
            by_run[m.name.rsplit("/fold_", 1)[0]].append(k)
        for ks in by_run.values():
            out.append(predict.Predictor([part.members[k] for k in ks], part.backbone, part.spec,
                                         center_bias=part.center_bias, run_dir=part.run_dir,
                                         scale=part.pixel_area, fold_dirs=[part.fold_dirs[k] for k in ks]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ensemble", default=None, help="shipped ensemble or evaluated ensemble folder")
    ap.add_argument("--single", default="osie-lite0")
    ap.add_argument("--n", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(1)
    ens = predict.load_model(args.ensemble)
    single = predict.load_model(args.single)
    if not isinstance(ens, EnsemblePredictor):
        raise SystemExit(f"{args.ensemble or 'the default model'} is not an ensemble")
    runs = per_run_predictors(ens)
    print(f"ensemble: {ens}\n  {len(runs)} member runs, {len(ens.members)} readouts; single: {single}")
    imgs = images(args.n)
    for f in (single.log_density, ens.log_density):    # warm-up (allocations, first-call setup)
        f(imgs[0])
    t = defaultdict(float)
    for rgb in imgs:
        s = time.perf_counter(); single.log_density(rgb); t["single"] += time.perf_counter() - s
        s = time.perf_counter(); ens.log_density(rgb); t["ensemble"] += time.perf_counter() - s
        s = time.perf_counter()
        for r in runs:
            r.log_density(rgb)
        t["per run"] += time.perf_counter() - s
        for part in ens.parts:
            work, _ = part._working_image(rgb, None)
            s = time.perf_counter(); part.features(work); t[f"features {part.spec.backbone}"] += time.perf_counter() - s
        work, _ = single._working_image(rgb, None)
        s = time.perf_counter(); single.features(work); t["features (single)"] += time.perf_counter() - s
    base = t["single"] / len(imgs)
    print(f"\n{len(imgs)} images of {imgs[0].shape[1]}x{imgs[0].shape[0]}, 1 torch thread, "
          f"{torch.__version__}")
    print(f"{'':<32} {'s/image':>8} {'x single':>9}")
    for k, v in t.items():
        print(f"{k:<32} {v / len(imgs):>8.3f} {v / len(imgs) / base:>9.2f}")
    ratio = t["ensemble"] / t["single"]
    floor = sum(v for k, v in t.items() if k.startswith("features ") and k != "features (single)") \
        / t["features (single)"]
    print(f"\nensemble / single = {ratio:.2f} (goal <= 3); per run / ensemble = {t['per run'] / t['ensemble']:.2f}")
    print(f"the ensemble's backbones / the single model's backbone = {floor:.2f} (features alone: "
          "no sharing of the readouts' work goes below it)")


if __name__ == "__main__":
    main()
