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

Usage: python benchmarks/bench_features.py [--repeats 3] [--size 600 800] [--images 8]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def best_time(fn, repeats: int) -> float:
    fn()                                   # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n ** 3 / best_time(lambda: a @ b, repeats) / 1e9


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
    ap.add_argument("--images", type=int, default=8, help="images for the storage/read part")
    args = ap.parse_args()

    from dgstudy import backbones, datasets, features

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"device cpu (mkldnn: {torch.backends.mkldnn.is_available()})")
    mm = matmul_gflops()
    print(f"float32 matmul 2048^3:            {mm:8.1f} GFLOP/s  (reference)")

    bb = backbones.get("vgg19_random")
    layers = bb.default_layers
    h, w = features.input_size(*args.size, 2)
    flops = vgg_conv_flops(bb, layers, h, w)
    x = torch.rand(1, 3, h, w)
    print(f"VGG-19 to relu5_4 on {h}x{w}: {flops / 1e9:.1f} GFLOP per image (convs)")

    def run(ctx, fmt, autocast=False):
        model = bb.to(memory_format=fmt)
        xin = x.contiguous(memory_format=fmt)

        def f():
            with ctx(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                model.features(xin, layers)
        return f

    variants = {
        "no_grad, contiguous": run(torch.no_grad, torch.contiguous_format),
        "inference_mode, contiguous": run(torch.inference_mode, torch.contiguous_format),
        "inference_mode, channels_last": run(torch.inference_mode, torch.channels_last),
        "inference_mode, bf16 autocast": run(torch.inference_mode, torch.contiguous_format, True),
    }
    for name, f in variants.items():
        t = best_time(f, args.repeats)
        print(f"  {name:32s} {1 / t:6.2f} img/s  {flops / t / 1e9:8.1f} GFLOP/s  "
              f"= {flops / t / 1e9 / mm:5.2f} x matmul")
    bb.to(memory_format=torch.contiguous_format)

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
