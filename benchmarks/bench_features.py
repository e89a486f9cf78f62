"""Feature extraction speed next to the machine's float32 matmul rate, measured in one run.

Prints
* float32 matmul GFLOP/s (square matrices, best of several runs) -- the reference rate;
* VGG-19 (random weights; speed does not depend on the values) up to relu5_4 on one OSIE-sized
  input (600x800 downsampled by 2 -> 300x400): images/s and achieved GFLOP/s, counting the conv
  FLOPs analytically (2 * C_in * C_out * 9 * H * W per conv), for a few execution variants
  (contiguous vs channels_last memory format, torch.no_grad vs torch.inference_mode, bf16
  autocast), each as a ratio to the matmul rate (goal on CPU: >= 0.9);
* MB stored per image (float16, the paper's five layers; without and with gzip);
* HDF5 read throughput of FeatureStore.stacked (how training reads features), images/s.

Usage: python benchmarks/bench_features.py [--repeats 3] [--size 600 800] [--images 4] [--threads N]

The variants and the matmul are timed in interleaved rounds (best of each), so a busy machine
slows them alike and the ratios stay meaningful.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch


def vgg_conv_flops(bb, layers, h: int, w: int) -> float:
    """Multiply-add FLOPs (x2) of every conv up to the deepest of ``layers`` for an h x w input."""
    last = max(bb.layer_names.index(l) for l in layers)
    flops = 0.0
    for name, m in list(bb.stages.named_children())[:last + 1]:
        if isinstance(m, torch.nn.Conv2d):
            flops += 2 * m.in_channels * m.out_channels * m.kernel_size[0] * m.kernel_size[1] * h * w
        elif isinstance(m, torch.nn.MaxPool2d):
            h, w = h // 2, w // 2
    return flops


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--size", type=int, nargs=2, default=(600, 800), help="stimulus height width")
    ap.add_argument("--images", type=int, default=4, help="images for the storage/read part")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from dgstudy import backbones, datasets, features

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"device cpu (mkldnn: {torch.backends.mkldnn.is_available()})")
    import copy

    bb = backbones.get("vgg19_random")
    bb_cl = copy.deepcopy(bb).to(memory_format=torch.channels_last)
    layers = bb.default_layers
    h, w = features.input_size(*args.size, 2)
    flops = vgg_conv_flops(bb, layers, h, w)
    x = torch.rand(1, 3, h, w)
    n = 2048
    a, b = torch.randn(n, n), torch.randn(n, n)

    def vgg(ctx, model, fmt, autocast=False):
        xin = x.contiguous(memory_format=fmt)

        def f():
            with ctx(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                model.features(xin, layers)
        return f

    variants = {
        "matmul": lambda: a @ b,
        "no_grad, contiguous": vgg(torch.no_grad, bb, torch.contiguous_format),
        "inference_mode, contiguous": vgg(torch.inference_mode, bb, torch.contiguous_format),
        "inference_mode, channels_last": vgg(torch.inference_mode, bb_cl, torch.channels_last),
        "inference_mode, bf16 autocast": vgg(torch.inference_mode, bb, torch.contiguous_format, True),
    }
    # interleaved rounds, best time of each: a busy machine slows every variant alike
    best = {k: float("inf") for k in variants}
    for r in range(args.repeats + 1):                  # round 0 is the warm-up
        for k, f in variants.items():
            for _ in range(3 if k == "matmul" else 1):
                t = time.perf_counter()
                f()
                if r:
                    best[k] = min(best[k], time.perf_counter() - t)
    mm = 2 * n ** 3 / best.pop("matmul") / 1e9
    print(f"float32 matmul {n}^3 (reference): {mm:8.1f} GFLOP/s")
    print(f"VGG-19 to relu5_4 on {h}x{w} (a {args.size[0]}x{args.size[1]} stimulus downsampled by 2): "
          f"{flops / 1e9:.1f} GFLOP per image (convs, 2 x multiply-adds)")
    for k, t in best.items():
        print(f"  {k:32s} {1 / t:6.2f} img/s  {flops / t / 1e9:8.1f} GFLOP/s  "
              f"= {flops / t / 1e9 / mm:5.2f} x matmul")

    with tempfile.TemporaryDirectory() as tmp:
        ds = datasets.load("synthetic", n_images=args.images, size=tuple(args.size), folder=Path(tmp) / "img")
        for comp in (None, "gzip"):
            t = time.perf_counter()
            out = features.extract(ds, bb, out=Path(tmp) / f"f-{comp}.h5", compression=comp, progress=False)
            dt = time.perf_counter() - t
            mb = out.stat().st_size / 1e6 / len(ds)
            store = features.FeatureStore(out)
            n_pass = 5
            t = time.perf_counter()
            for _ in range(n_pass):
                for i in range(len(ds)):
                    store.stacked(i)
            rd = n_pass * len(ds) / (time.perf_counter() - t)
            shape = store.stacked(0).shape
            store.close()
            print(f"store compression={comp!s:5s}: {mb:6.2f} MB/image, extract {len(ds) / dt:5.2f} img/s, "
                  f"FeatureStore.stacked {rd:7.1f} img/s (array {shape}, float32)")


if __name__ == "__main__":
    main()
