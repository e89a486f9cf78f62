"""Does a large photo predict in about the time of an OSIE-sized image? Default vs native scale.

Uses a trained run as ``bench_predict.py`` does (``--run``, else ``results/osie-efficientnet_lite0``
or ``results/smoke-efficientnet_lite0``, else a tiny synthetic run trained here). Images: ``--n``
generated smooth JPEG photos of 800x600 and of 3264x2448 (camera size) px. Prints, measured side
by side in one process (every size seen once before the timing, so the per-size centre-bias maps
are cached as in a folder of same-sized photos):

* ``Predictor.log_density`` on the decoded image, ``scale='training'`` (the default: predicted at
  the run's training pixel area, mapped back) and ``scale='native'`` (at the image's own size);
* ``predict_images`` without PNGs (decode, predict, write ``.npy`` + ``.json``), the same two ways;
* the first image of a new size (the centre-bias maps of every fold computed for it);

as images/s and as the ratio of the 3264x2448 time to the 800x600 time.

    .venv/bin/python benchmarks/bench_scale.py [--run results/<run>] [--n 4] [--skip-native-large]
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
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_predict import _files_rate, build_tiny_run, find_run, rate  # noqa: E402
from dgstudy import imageio, predict  # noqa: E402

SIZES = {"800x600": (600, 800), "3264x2448": (2448, 3264)}


def make_photos(folder: Path, h: int, w: int, n: int, seed: int = 0) -> list[Path]:
    """``n`` smooth random JPEG photos of h x w px (blurred noise, cheap to make at any size)."""
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(n):
        small = torch.from_numpy(rng.random((1, 3, max(2, h // 40), max(2, w // 40)), dtype=np.float32))
        img = F.interpolate(small, size=(h, w), mode="bicubic", align_corners=False)[0].clamp(0, 1)
        arr = (img.permute(1, 2, 0).numpy() * 255).astype(np.uint8)
        p = folder / f"photo{k}.jpg"
        Image.fromarray(arr).save(p, quality=90)
        paths.append(p)
    return paths


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default=None)
    ap.add_argument("--n", type=int, default=4, help="photos per size (default 4)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--repeat", type=int, default=2, help="passes per measurement; the best counts")
    ap.add_argument("--skip-native-large", action="store_true",
                    help="leave out native prediction of the 3264x2448 photos (slow: minutes on 2 CPUs)")
    args = ap.parse_args(argv)

    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    tmp = tempfile.TemporaryDirectory(prefix="bench_scale-")
    root = Path(tmp.name)
    run_dir = find_run(args.run)
    if run_dir is None:
        print("no trained OSIE/smoke run under results/; training a tiny synthetic one ...", flush=True)
        run_dir = build_tiny_run(root)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = predict.load_model(run_dir, device=args.device)
    models = {"training": model,                        # the same folds and backbone, native scale
              "native": predict.Predictor(model.members, model.backbone, model.spec, device=args.device,
                                          run_dir=model.run_dir, scale="native", fold_dirs=model.fold_dirs)}
    print(f"run: {run_dir} ({len(model.members)} folds, {model.spec.backbone}); training scale "
          f"{model.pixel_area:.0f} px; device {args.device}; torch threads {torch.get_num_threads()}; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; best of {args.repeat}")
    photos = {name: make_photos(root / name, h, w, args.n, seed=k) for k, (name, (h, w)) in enumerate(SIZES.items())}
    rgbs = {name: [imageio.read_rgb(p) for p in ps] for name, ps in photos.items()}

    results = {}
    for name in SIZES:
        for scale in ("training", "native"):
            if scale == "native" and name == "3264x2448" and args.skip_native_large:
                continue
            m = models[scale]
            first = np.random.default_rng(9).integers(0, 256, size=(*SIZES[name], 3), dtype=np.uint8)
            m._cb_cache.clear()                              # the first image of a new size:
            for member in m.members:                         # every fold's centre-bias map computed
                member.center_bias._cache.clear()
            t0 = time.perf_counter()
            m.log_density(first)
            first_s = time.perf_counter() - t0
            ld_rate = rate(m.log_density, rgbs[name], args.repeat)
            files_rate = max(_files_rate(m, photos[name], root / f"out-{name}-{scale}-{k}", plot=False)
                             for k in range(args.repeat))
            results[(name, scale)] = (ld_rate, files_rate, first_s)
            print(f"  measured {name} {scale}", flush=True)

    print(f"\n{'images':<11} {'scale':<9} {'log_density img/s':>18} {'predict_images img/s':>21} "
          f"{'first of a size (s)':>20}")
    for (name, scale), (a, b, f) in results.items():
        print(f"{name:<11} {scale:<9} {a:18.2f} {b:21.2f} {f:20.2f}")
    for scale in ("training", "native"):
        if ("3264x2448", scale) in results:
            small, large = results[("800x600", scale)], results[("3264x2448", scale)]
            print(f"{scale}: a 3264x2448 photo takes {small[0] / large[0]:.1f}x the time of an 800x600 one "
                  f"(log_density), {small[1] / large[1]:.1f}x (predict_images)")
    tmp.cleanup()


if __name__ == "__main__":
    main()
