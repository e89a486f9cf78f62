"""Seconds per readout-training epoch, the old per-batch path against the fast path, measured in
one run, next to the machine's single-thread matmul rate (issue 24).

Two configurations of the osie profile, synthetic data of the right shapes (random features,
uniformly placed fixations, a Gaussian centre bias: speed does not depend on the values):

* main: EfficientNet-Lite0 blocks 3-6, 704 channels on a 38 x 50 grid (``downsample: 1``);
* reference: the same at ``downsample: 2``, a 19 x 25 grid;

600 x 800 images, 560 training and 70 validation images, batches of 8, the paper's readout, the
reduced-grid likelihood (150 x 200 cells), one torch thread. Each epoch is one pass over the
training images (one Adam step per batch) and the validation pass.

* old: the loop of dgstudy before the fast path, and its model's forward (both reproduced below
  from commit d36c378: ``np.stack`` of the batch's float32 features, standardised every batch,
  each 1x1 conv one ``torch.matmul`` on (B, C, h*w), resize and blur as separate steps, each
  batch's loss the mean over its fixations);
* new: ``training.train_epoch`` and ``training.mean_log_likelihood`` on a
  ``training_fast.FoldData`` (built once per fold; its time is printed on its own).

Prints, per configuration: s/epoch old and new (best of ``--epochs`` interleaved rounds), the
ratio, the epoch's FLOP count (counted analytically: the readout's 1x1 convs forward and
backward, the blur's dense matrix products forward and backward, the validation forward), the
measured single-thread ``torch.mm`` GFLOP/s, the resulting FLOP limit in s/epoch and each path's
multiple of it.

Usage: python benchmarks/bench_training.py [--epochs 3] [--configs main reference]
       [--train 560] [--val 70] [--fixations 140]
"""
from __future__ import annotations

import argparse
import math
import resource
import time

import numpy as np
import pandas as pd
import torch

from dgstudy import training
from dgstudy.config import TrainConfig
from dgstudy.training_fast import LN2, FoldData

CONFIGS = {"main": (704, 38, 50), "reference": (704, 19, 25)}   # channels, feature grid
IMAGE = (600, 800)


class SyntheticData:
    """What training reads of a dataset: ``sizes``, ``fixations_of(i)``, ``name``."""

    def __init__(self, n: int, fixations: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.name = "bench"
        self.sizes = np.tile(np.array(IMAGE), (n, 1))
        self._fix = [pd.DataFrame({"x": rng.uniform(0, IMAGE[1], k), "y": rng.uniform(0, IMAGE[0], k)})
                     for k in rng.poisson(fixations, n)]

    def fixations_of(self, i):
        return self._fix[i]


def gaussian_center_bias(h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    logp = -0.5 * (((yy + 0.5) / h - 0.5) ** 2 + ((xx + 0.5) / w - 0.5) ** 2) / 0.2 ** 2
    return logp - np.logaddexp.reduce(logp.ravel())


# -- the old path (dgstudy at d36c378), for comparison -------------------------------------------
class OldBatcher:
    def __init__(self, features, data: FoldData):
        self.features, self.data = features, data

    def __call__(self, batch):
        size = tuple(int(v) for v in self.data.dataset.sizes[batch[0]])
        x = torch.from_numpy(np.stack([self.features[int(i)] for i in batch])).to(torch.float32)
        cb = self.data.center_bias(size).expand(len(batch), *size)
        fix = [self.data.fixations(int(i)) for i in batch]
        b_idx = torch.from_numpy(np.repeat(np.arange(len(batch)), [len(f) for f in fix]))
        p_idx = torch.from_numpy(np.concatenate(fix))
        return x, cb, b_idx, p_idx, self.data.grid(size)


def old_forward(model, x, cb):
    """``DeepGazeII.forward(x, cb, reduced=True)`` as dgstudy computed it at d36c378, with the
    model's parameters: standardised per batch, each 1x1 conv ``torch.matmul(W, x.reshape(B, C,
    h*w))``, bilinear resize (``F.interpolate``), then the blur's two dense products, the centre
    bias pooled and added per image, log-softmax over the reduced grid."""
    x = (x - model.feature_mean.view(1, -1, 1, 1)) / model.feature_std.view(1, -1, 1, 1)
    for m in model.readout:
        if isinstance(m, torch.nn.Conv2d):
            b, c, h, w = x.shape
            x = (torch.matmul(m.weight[:, :, 0, 0], x.reshape(b, c, h * w)) + m.bias[:, None]).reshape(b, -1, h, w)
        else:
            x = m(x)
    small = model.finalizer.reduced_size(*cb.shape[-2:])
    x = torch.nn.functional.interpolate(x, size=small, mode="bilinear", align_corners=False)
    x = x @ model.blur.matrix(small[1], x.dtype, x.device)
    x = model.blur.matrix(small[0], x.dtype, x.device).transpose(0, 1) @ x
    pooled = torch.nn.functional.interpolate(cb[:1, None], size=small, mode="area").expand(x.shape[0], -1, -1, -1)
    x = x + model.center_bias.weight * pooled
    return torch.log_softmax(x.reshape(x.shape[0], -1), dim=1)


def old_epoch(model, opt, batcher, batches, val_batches, cfg):
    model.train()
    for batch in batches:
        x, cb, b_idx, p_idx, grid = batcher(batch)
        logd = old_forward(model, x, cb)
        ll = logd.reshape(logd.shape[0], -1)[b_idx, p_idx]
        loss = -ll.mean() / LN2 + cfg.l1 * sum(w.abs().sum() for w in training.l1_weights(model))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        for batch in val_batches:
            x, cb, b_idx, p_idx, grid = batcher(batch)
            old_forward(model, x, cb)[b_idx, p_idx].sum()


# -- measurement ----------------------------------------------------------------------------------
def matmul_gflops(n: int = 1024, repeats: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = math.inf
    for _ in range(repeats):
        t = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best / 1e9


def first_conv_gflops(c: int, h: int, w: int, repeats: int = 5) -> float:
    """GFLOP/s of torch's product at the readout's first 1x1 conv of one image, (h*w, c) @ (c, 16):
    what a narrow matrix product reaches here (the rate the epoch's main cost can run at)."""
    x, wt = torch.randn(h * w, c), torch.randn(c, 16)
    torch.mm(x, wt)
    best = math.inf
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(8):
            torch.mm(x, wt)
        best = min(best, time.perf_counter() - t)
    return 8 * 2 * h * w * c * 16 / best / 1e9


def epoch_flops(c: int, h: int, w: int, cfg: TrainConfig, n_train: int, n_val: int) -> float:
    """Readout: 2 * h * w * sum(c_in * c_out) forward; backward the weight gradients of every conv
    and the input gradients of all but the first (the features need none). Blur (reduced grid
    h' x w'): the row and column products with dense (w' x w') and (h' x h') matrices, 2 * h' * w'
    * (w' + h') forward, twice that backward."""
    widths = [c, 16, 32, 2, 1]
    pairs = list(zip(widths[:-1], widths[1:]))
    fwd = 2 * h * w * sum(a * b for a, b in pairs)
    bwd = fwd + 2 * h * w * sum(a * b for a, b in pairs[1:])
    hs, ws = (max(1, round(v / cfg.saliency_map_factor)) for v in IMAGE)
    blur = 2 * hs * ws * (ws + hs)
    return n_train * (fwd + bwd + 3 * blur) + n_val * (fwd + blur)


def readout_flops(c: int, h: int, w: int, n_train: int, n_val: int) -> float:
    """The 1x1 convs alone (forward; backward as in :func:`epoch_flops`), without the blur."""
    widths = [c, 16, 32, 2, 1]
    pairs = list(zip(widths[:-1], widths[1:]))
    fwd = 2 * h * w * sum(a * b for a, b in pairs)
    bwd = fwd + 2 * h * w * sum(a * b for a, b in pairs[1:])
    return n_train * (fwd + bwd) + n_val * fwd


def bench(name: str, args, gflops: float):
    c, h, w = CONFIGS[name]
    n = args.train + args.val
    cfg = TrainConfig(dataset="bench", device="cpu")
    ds = SyntheticData(n, args.fixations)
    rng = np.random.default_rng(1)
    block = rng.standard_normal((n, c, h, w), dtype=np.float32)
    np.maximum(block, -0.5, out=block)             # a little like post-activation features
    features = {i: block[i] for i in range(n)}
    train, val = np.arange(args.train), np.arange(args.train, n)
    t = time.perf_counter()
    mean, std = training.feature_normalization(features, train)
    t_norm = time.perf_counter() - t
    torch.manual_seed(0)
    models = {k: training.build_model(cfg, c) for k in ("old", "new")}
    models["new"].load_state_dict(models["old"].state_dict())
    for m in models.values():
        m.set_feature_normalization(mean, std)
    t = time.perf_counter()
    data = FoldData(features, ds, np.concatenate([train, val]), models["new"].feature_mean,
                    models["new"].feature_std, gaussian_center_bias, "cpu",
                    grid_of=models["new"].finalizer.reduced_size, batch_size=cfg.batch_size)
    t_fold = time.perf_counter() - t
    opts = {k: torch.optim.Adam(m.parameters(), lr=cfg.lr) for k, m in models.items()}
    batcher = OldBatcher(features, data)
    val_batches = training.make_batches(val, ds.sizes, cfg.batch_size, None)
    times = {"old": [], "new": []}
    shuffle = np.random.default_rng(2)
    for epoch in range(1, args.epochs + 1):
        batches = training.make_batches(train, ds.sizes, cfg.batch_size, shuffle)
        for k in ("old", "new"):
            ru = resource.getrusage(resource.RUSAGE_SELF)
            t = time.perf_counter()
            if k == "old":
                old_epoch(models[k], opts[k], batcher, batches, val_batches, cfg)
            else:
                training.train_epoch(models[k], opts[k], data, batches, cfg, epoch)
                training.mean_log_likelihood(models[k], data, val, cfg.batch_size)
            wall = time.perf_counter() - t
            ru2 = resource.getrusage(resource.RUSAGE_SELF)
            times[k].append((wall, ru2.ru_stime - ru.ru_stime, ru2.ru_minflt - ru.ru_minflt))
    flops = epoch_flops(c, h, w, cfg, args.train, args.val)
    limit = flops / (gflops * 1e9)
    readout = readout_flops(c, h, w, args.train, args.val)
    narrow = first_conv_gflops(c, h, w)
    best = {k: min(v) for k, v in times.items()}
    print(f"\n== {name}: {c} channels on {h} x {w}, {IMAGE[0]} x {IMAGE[1]} images, "
          f"{args.train} + {args.val} images, batch {cfg.batch_size}")
    print(f"   epoch FLOPs {flops / 1e9:.1f} G; at {gflops:.1f} GFLOP/s the limit is {limit:.2f} s/epoch")
    print(f"   of which the readout's 1x1 convs {readout / 1e9:.1f} G; torch.mm at the first conv's shape "
          f"({h * w} x {c} @ {c} x 16) runs at {narrow:.1f} GFLOP/s here, so the convs alone take at "
          f"least {readout / (narrow * 1e9):.2f} s/epoch at that rate")
    print(f"   once per fold: feature_normalization {t_norm:.1f} s, FoldData (standardise + lay out) {t_fold:.1f} s")
    for k in ("old", "new"):
        wall, sys_t, faults = best[k]
        print(f"   {k}: {wall:6.2f} s/epoch (best of {args.epochs}; all: "
              f"{', '.join(f'{x[0]:.2f}' for x in times[k])}), system {sys_t:.2f} s, "
              f"{faults} minor page faults; {wall / limit:.2f}x the FLOP limit, "
              f"{flops / wall / 1e9:.1f} GFLOP/s")
    print(f"   ratio old / new: {best['old'][0] / best['new'][0]:.2f}x")
    del features, block, data


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--train", type=int, default=560)
    ap.add_argument("--val", type=int, default=70)
    ap.add_argument("--fixations", type=float, default=140.0, help="mean fixations per image")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    gflops = matmul_gflops()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); "
          f"torch.mm 1024^3 float32: {gflops:.1f} GFLOP/s")
    for name in args.configs:
        bench(name, args, gflops)
    print(f"\ntorch.mm again: {matmul_gflops():.1f} GFLOP/s")


if __name__ == "__main__":
    main()
