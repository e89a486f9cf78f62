"""The ``dgstudy`` command line: one function per subcommand.

``dgstudy baselines --dataset osie``  uniform / centre bias / gold standard x all metrics
``dgstudy predict IMAGE... --model RUN --out DIR``  (see :mod:`dgstudy.predict`)

Also runnable as ``python -m dgstudy.cli ...``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Sequence

TABLE_METRICS = ("LL", "IG", "explained_IG", "AUC", "sAUC", "NSS", "CC", "KLDiv", "SIM")


# -- baselines ------------------------------------------------------------------------------------
def add_baselines_command(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "baselines", help="score uniform, centre bias and gold standard on a dataset",
        description="Fit the centre bias (leave-image-out) and the leave-one-subject-out gold "
                    "standard on a dataset and print uniform / centre bias / gold standard x all "
                    "metrics (LL, IG over the centre bias and explained IG in bits/fixation; AUC, "
                    "sAUC, NSS, CC, KLDiv, SIM as in dgstudy.metrics). Writes table.csv, table.json "
                    "and per-image CSVs to results/baselines/<dataset>[-n<N>]/.")
    p.add_argument("--dataset", default="osie", help="dataset name (default osie)")
    p.add_argument("--n-images", type=int, default=None, metavar="N", help="first N images only")
    p.add_argument("--kernel-size", type=float, default=None, metavar="PX",
                   help="sigma (px) of the empirical saliency map (default: about 1 degree)")
    p.add_argument("--out", default=None, metavar="DIR", help="output folder (default results/baselines/...)")
    p.set_defaults(func=run_baselines_command)
    return p


def run_baselines_command(args: argparse.Namespace) -> int:
    import pandas as pd

    from . import datasets
    from .baselines import CenterBias, GoldStandard, Uniform
    from .io import write_json, atomic_path
    from .metrics import evaluate
    from .paths import results_dir

    t0 = time.perf_counter()
    ds = datasets.load(args.dataset, n_images=args.n_images)
    print(ds)
    out = Path(args.out) if args.out else results_dir() / "baselines" / (
        args.dataset + (f"-n{args.n_images}" if args.n_images else ""))
    timings = {}

    t = time.perf_counter()
    cb = CenterBias.fit(ds)
    timings["fit_center_bias_s"] = time.perf_counter() - t
    print(f"centre bias: bandwidth {cb.bandwidth:.4f} (of image size), uniform weight {cb.uniform_weight:.3g}, "
          f"leave-image-out LL {cb.heldout_ll:.4f} bits/fix  [{timings['fit_center_bias_s']:.1f} s]")
    t = time.perf_counter()
    gold = GoldStandard.fit(ds, cb)
    timings["fit_gold_standard_s"] = time.perf_counter() - t
    w = gold.weights
    print(f"gold standard: bandwidth {gold.bandwidth:.4f} (of max side), weights kde {w[0]:.3f} / "
          f"centre bias {w[1]:.3f} / uniform {w[2]:.4f}, LOSO LL {gold.heldout_ll:.4f} bits/fix  "
          f"[{timings['fit_gold_standard_s']:.1f} s]")

    rows, results = [], {}
    for name, model in [("uniform", Uniform()), ("center_bias", cb), ("gold_standard", gold)]:
        t = time.perf_counter()
        summary, per_image = evaluate(model, ds, baseline=cb, gold=gold, per_image=True,
                                      kernel_size=args.kernel_size, progress=True)
        timings[f"evaluate_{name}_s"] = time.perf_counter() - t
        results[name] = summary
        rows.append({"model": name, **{m: summary[m] for m in TABLE_METRICS}})
        with atomic_path(out / f"per_image_{name}.csv") as tmp:
            per_image.to_csv(tmp, index=False)
        print(f"  evaluated {name} [{timings[f'evaluate_{name}_s']:.1f} s]")
    timings["total_s"] = time.perf_counter() - t0

    table = pd.DataFrame(rows).set_index("model")
    with atomic_path(out / "table.csv") as tmp:
        table.to_csv(tmp)
    write_json(out / "table.json", {
        "dataset": ds.name, "dataset_checksum": ds.checksum, "n_images": ds.n_images,
        "n_fixations": ds.n_fixations, "table": rows, "summaries": results,
        "center_bias": {k: v for k, v in cb.to_dict().items() if k not in ("u", "v")},
        "gold_standard": gold.to_dict(), "timings": timings,
        "notes": "IG and explained_IG over the leave-image-out centre bias; the gold standard's "
                 "LL/IG/AUC/sAUC/NSS are leave-one-subject-out, its CC/KLDiv/SIM use all subjects "
                 "(in-sample upper bound)."})
    print()
    print(format_table(table, results["uniform"]))
    print(f"\nwall time {timings['total_s']:.1f} s; written to {out}")
    return 0


def format_table(table, summary) -> str:
    """The baselines table as fixed-width text, with each metric's averaging."""
    conv = summary.get("conventions", {})
    head = f"{'model':<15}" + "".join(f"{m:>13}" for m in table.columns)
    lines = [head, "-" * len(head)]
    for name, row in table.iterrows():
        lines.append(f"{name:<15}" + "".join(f"{v:>13.4f}" for v in row.to_numpy()))
    lines.append("averages: " + ", ".join(f"{m} {conv.get(m, '?').replace('mean over ', 'per ').rstrip('s')}"
                                          for m in table.columns))
    lines.append("LL, IG in bits/fixation; IG, explained_IG and sAUC relative to the centre bias")
    return "\n".join(lines)


# -- predict (implemented in dgstudy.predict) -------------------------------------------------------
def add_predict_command(subparsers) -> argparse.ArgumentParser:
    from .predict import add_predict_command as add
    return add(subparsers)


# -- entry point ------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dgstudy", description="DeepGaze II study tools")
    sub = parser.add_subparsers(dest="command", required=True)
    add_baselines_command(sub)
    add_predict_command(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
