"""The ``dgstudy`` command line (also ``python -m dgstudy``): one function per subcommand.

``dgstudy baselines --dataset osie``  uniform / centre bias / gold standard x all metrics
``dgstudy predict IMAGE... [--model RUN] --out DIR``  a trained run (default: the shipped model) on any images
``dgstudy preflight --profile osie``  are the profile's data and weights there? (make reproduce)
``dgstudy tag --profile osie``  the folder of the profile's tables and figures (the Makefile's)
``dgstudy clean-notebook NB...``  strip volatile content from executed notebooks (the Makefile's)
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from . import backbones, datasets, notebook_clean
from .baselines import CenterBias, GoldStandard, Uniform
from .config import StudyConfig
from .imageio import expand_image_args
from .io import DataError, atomic_path, write_json
from .metrics import MAIN_AVERAGE, evaluate
from .paths import results_dir
from .predict import load_model
from .predict_files import predict_images

TABLE_METRICS = tuple(MAIN_AVERAGE)


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


# -- predict ------------------------------------------------------------------------------------
PREDICT_HELP = """\
Predict fixation densities with a trained run (the average of its fold models' densities); without
--model, with the model shipped in the package (OSIE, EfficientNet-Lite2: dgstudy.pretrained).

For each IMAGE (a folder stands for the image files in it) writes into --out:
  <stem>.npy   natural-log density over the pixels, float32 (H, W); exp sums to 1
  <stem>.png   the image and the predicted density

Images of any size; grayscale is replicated to RGB, transparency is composited on white,
the EXIF orientation is applied first (coordinates refer to the image as displayed).

--fixations FILE.csv evaluates the predictions. Columns: image,x,y[,subject]
  image    the image as given on the command line, its file name, or its stem
  x, y     pixel coordinates: 0-based, x = column, y = row, pixel centres at +0.5
           (the top-left pixel spans 0 <= x < 1, 0 <= y < 1; a MATLAB 1-based
           coordinate c becomes c - 0.5); must lie inside the image
  subject  observer id (optional, default 0)
prints (dgstudy.metrics conventions) LL (bits/fixation relative to a uniform density), IG
(bits/fixation over the centre bias the model uses: the training one, or uniform with
--center-bias uniform), AUC, sAUC, NSS, CC, KLDiv, SIM, and writes evaluation.json and
evaluation_per_image.csv into --out.

Bad inputs (an image that does not decode, a CSV row outside its image) are reported with the
file and the CSV line; the other images still run and the exit status is 1.
"""


def add_predict_command(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("predict", help="predict fixation densities for images with a trained run",
                              description=PREDICT_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders of images")
    p.add_argument("--model", default=None, metavar="RUN",
                   help="training run folder (results/<run>/ or a run name), a fold folder, a model.pt or "
                        "a shipped model's name (default: the shipped OSIE model, dgstudy.pretrained)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created)")
    p.add_argument("--fold", type=int, default=None, metavar="K", help="use only fold K (default: all folds)")
    p.add_argument("--fixations", default=None, metavar="FILE.csv",
                   help="CSV image,x,y[,subject] to evaluate against (coordinates: see above)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--center-bias", default="training", choices=["training", "uniform"],
                   help="centre bias of the training data rescaled to each image (default) or uniform")
    p.add_argument("--kernel-size", type=float, default=None, metavar="PX",
                   help="sigma (px) of the empirical saliency map for CC, KLDiv, SIM "
                        "(default: 1/30 of the larger image side; about 1 degree of visual angle is usual)")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG figures")
    p.set_defaults(func=run_predict_command)
    return p


def run_predict_command(args: argparse.Namespace) -> int:
    """The ``dgstudy predict`` handler; returns the exit status."""
    images = expand_image_args(args.images)
    if not images:
        print("dgstudy predict: no images found", file=sys.stderr)
        return 1
    try:
        model = load_model(args.model, fold=args.fold, center_bias=args.center_bias, device=args.device)
    except (DataError, KeyError, ValueError, OSError) as e:
        print(f"dgstudy predict: cannot load the model {args.model or 'shipped with dgstudy'}: {e}",
              file=sys.stderr)
        return 1
    if getattr(model, "provenance", None):
        print(f"model: {model.run_dir.name}, shipped with dgstudy (trained as {model.provenance['source_run']}; "
              "dgstudy.pretrained)")
    report = predict_images(model, images, args.out, fixations=args.fixations, plot=not args.no_plot,
                            progress=len(images) > 1, kernel_size=args.kernel_size)
    print(f"wrote {len(report.outputs)} of {len(images)} predictions to {args.out}")
    if report.evaluation is not None:
        print(format_summary(report.evaluation))
        print(f"evaluation written to {Path(args.out) / 'evaluation.json'}")
    for n in report.notes:
        print(f"note: {n}", file=sys.stderr)
    for e in report.errors:
        print(f"error: {e}", file=sys.stderr)
    if report.errors:
        print(f"dgstudy predict: {len(report.errors)} problem(s); see above", file=sys.stderr)
    return 0 if report.ok else 1


SUMMARY_KEYS = ("n_images", "n_fixations", *(m for m in MAIN_AVERAGE if m != "explained_IG"))


def format_summary(summary: dict) -> str:
    """The headline metrics as a text table (LL, IG in bits/fixation; averages as in metrics.py)."""
    conv = summary.get("conventions", {}) if isinstance(summary.get("conventions"), dict) else {}
    lines = [f"  {'metric':<12} {'value':>10}  average"]
    for k in SUMMARY_KEYS:
        v = summary.get(k)
        if v is None or (isinstance(v, float) and not np.isfinite(v)):
            continue
        text = f"{int(v):d}" if k.startswith("n_") else f"{float(v):.4f}"
        unit = " bits/fix" if k in ("LL", "IG") else ""
        lines.append(f"  {k:<12} {text:>10}  {conv.get(k, '')}{unit}")
    return "\n".join(lines)




# -- preflight and tag (used by the Makefile) -------------------------------------------------------
def preflight(cfg: StudyConfig, download: bool = False) -> list[str]:
    """Check that the profile's data set and backbone weights are reachable; return the problems.

    Uses the loaders' own errors (which name the missing file and how to provide it); an empty
    list means ready. The data loaders download missing data (their default); with
    ``download=True`` (``make reproduce``: ``preflight --download``) missing backbone weights are
    downloaded too, each file verified (VGG-19's published hash prefix, MIT1003's MD5s) before it
    is renamed into place; where: ``$DGSTUDY_VGG19_URL``, ``$DGSTUDY_MIT1003_URL`` or the published
    addresses. With ``download=False`` (default) the VGG-19 weights must already be on disk.
    """
    t = cfg.train
    problems = []
    try:
        datasets.load(t.dataset, n_images=t.n_images, **(t.dataset_options or {}))
    except Exception as e:  # noqa: BLE001 -- reported, with the loader's message
        problems.append(f"dataset {t.dataset!r}: {type(e).__name__}: {e}")
    for name in dict.fromkeys([t.backbone, *cfg.ablation_backbones]):
        try:
            try:
                backbones.get(name, download=download)
            except TypeError:   # this backbone's builder has no download option
                backbones.get(name)
        except Exception as e:  # noqa: BLE001
            problems.append(f"backbone {name!r}: {type(e).__name__}: {e}")
    return problems


OFFLINE_PROFILES = ("osie", "osie_extended", "smoke")    # their data and weights are shipped offline
OFFLINE_STUDY = "make reproduce PROFILE=osie"


def _profile_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", default="paper", help="profile name (dgstudy/profiles/<name>.yaml)")
    p.add_argument("--backbone", default=None, help="another backbone than the profile's")


def add_preflight_command(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("preflight", help="check data and weights for a profile, in seconds")
    _profile_arguments(p)
    p.add_argument("--download", action="store_true",
                   help="download missing weights too (verified; $DGSTUDY_VGG19_URL overrides the address)")
    p.set_defaults(func=run_preflight_command)
    return p


def run_preflight_command(args: argparse.Namespace) -> int:
    problems = preflight(StudyConfig.load(args.profile, backbone=args.backbone or None), download=args.download)
    if problems:
        print(f"preflight for profile {args.profile!r} FAILED:", file=sys.stderr)
        for prob in problems:
            print(f"  - {prob}", file=sys.stderr)
        if args.profile not in OFFLINE_PROFILES:
            print(f"Without a network, the study that runs here is: {OFFLINE_STUDY}", file=sys.stderr)
        return 1
    print(f"preflight for profile {args.profile!r}: data and weights found")
    return 0


def add_tag_command(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("tag", help="print the folder name of a profile's tables and figures")
    _profile_arguments(p)
    p.set_defaults(func=run_tag_command)
    return p


def run_tag_command(args: argparse.Namespace) -> int:
    print(StudyConfig.load(args.profile, backbone=args.backbone or None).output_tag)
    return 0


def add_clean_notebook_command(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("clean-notebook", help="strip volatile content from executed notebooks",
                              description="Remove what changes between runs with the same results "
                                          "(timestamps, durations, stderr, absolute paths, memory "
                                          "addresses) from executed notebooks, in place "
                                          "(dgstudy.notebook_clean); make reproduce runs it.")
    p.add_argument("notebooks", nargs="+", type=Path, metavar="NOTEBOOK")
    p.set_defaults(func=run_clean_notebook_command)
    return p


def run_clean_notebook_command(args: argparse.Namespace) -> int:
    for path in args.notebooks:
        notebook_clean.clean_file(path)
    return 0


# -- entry point ------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dgstudy", description="DeepGaze II study tools")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (add_baselines_command, add_predict_command, add_preflight_command, add_tag_command,
                add_clean_notebook_command):
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
