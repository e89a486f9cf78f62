"""Retrain one fold of a finished run on the plain path and compare it with the run's own fold
(issue 24: the committed results, trained on the fast path, against a plain-path run of one fold).

The plain path is the model's ``forward`` on each batch's raw float32 features (``np.stack`` of the
images' arrays from the store, standardised inside the model on every batch, resize and blur as
``forward`` does them): no ``FoldData`` layout, no in-place rows. Everything else is the library's
own ``training.run_fold`` (seeds, batches, early stopping, the saved files), so the two folds
differ only in how each batch's log-likelihoods are computed.

Prints the largest differences of the per-epoch log (train and validation LL, bit/fix), whether
the two ``model.pt`` state dicts are equal bit for bit, and the largest parameter difference.

Usage: python benchmarks/check_plain_fold.py RUN_DIR [--fold 0]
       (features and data from $DGSTUDY_DATA, as the run was trained)
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from dgstudy import training, training_fast
from dgstudy.config import TrainConfig
from dgstudy.training_fast import flip_batch


def plain_log_likelihoods(self, model, batch, reduced: bool, flip: bool = False):
    """``FoldData.log_likelihoods`` as the plain model computes it: raw features through ``forward``."""
    size = self.size(int(batch[0]))
    grid = self.grid(size)
    feats = self._raw
    x = torch.from_numpy(np.stack([np.asarray(feats[int(i)], dtype=np.float32) for i in batch])).to(self.device)
    cb = self.center_bias(size).expand(len(batch), *size)
    fix = [self.fixations(int(i)) for i in batch]
    b_idx = torch.from_numpy(np.repeat(np.arange(len(batch)), [len(f) for f in fix]))
    p_idx = torch.from_numpy(np.concatenate(fix))
    if flip:
        x, cb, p_idx = flip_batch(x, cb, p_idx, grid)
    logd = model(x, cb, reduced=reduced)
    return logd.reshape(len(batch), -1)[b_idx, p_idx], grid


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--fold", type=int, default=0)
    args = ap.parse_args()
    fold_dir = args.run_dir / f"fold_{args.fold:02d}"
    record = json.loads((fold_dir / "config.json").read_text())
    cfg = TrainConfig.from_dict(record["train_config"])
    if cfg.flip and cfg.flip_source == "images":
        raise SystemExit("flip_source='images' is not covered by this check")

    real_init = training_fast.FoldData.__init__

    def init(self, features, *a, **kw):        # keep the raw features for the plain forward
        real_init(self, features, *a, **kw)
        self._raw = features

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["DGSTUDY_RESULTS"] = tmp
        training_fast.FoldData.__init__ = init
        training_fast.FoldData.log_likelihoods = plain_log_likelihoods
        t = time.perf_counter()
        run_dir, jobs = training.plan_folds(cfg, [args.fold])
        training.run_fold(**jobs[0])
        seconds = time.perf_counter() - t
        plain_dir = run_dir / fold_dir.name
        ours, theirs = pd.read_csv(plain_dir / "log.csv"), pd.read_csv(fold_dir / "log.csv")
        a = torch.load(plain_dir / "model.pt", weights_only=False)["state_dict"]
        b = torch.load(fold_dir / "model.pt", weights_only=False)["state_dict"]
    same_epochs = len(ours) == len(theirs)
    n = min(len(ours), len(theirs))
    print(f"{args.run_dir.name} fold {args.fold}: plain path {seconds:.0f} s, {len(ours)} epochs "
          f"(the run's fold: {len(theirs)})")
    for col in ("train_LL", "val_LL", "val_ig"):
        d = np.abs(ours[col].to_numpy()[:n] - theirs[col].to_numpy()[:n]).max()
        print(f"  max |{col} plain - run| over the epochs: {d:.3g} bit/fix")
    equal = same_epochs and a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    worst = max(float((a[k].double() - b[k].double()).abs().max()) for k in a if k in b)
    print(f"  model.pt state dicts equal bit for bit: {equal}; largest parameter difference {worst:.3g}")


if __name__ == "__main__":
    main()
