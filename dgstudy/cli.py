"""The ``dgstudy`` command line (also ``python -m dgstudy``): one function per subcommand.

``dgstudy baselines --dataset osie``  uniform / centre bias / gold standard x all metrics
  (``--images DIR --fixations CSV``: on a folder data set, :mod:`dgstudy.datasets.folder`)
``dgstudy predict IMAGE... [--model RUN] --out DIR``  a trained run (default: the shipped model) on any images
``dgstudy evaluate [--model RUN] --images DIR --fixations CSV``  a run on another data set
  (:mod:`dgstudy.transfer`); ``--maps DIR``: a folder of any model's saliency maps, benchmarked
  (:mod:`dgstudy.map_benchmark`); ``--dataset NAME`` instead of a folder data set
``dgstudy serve [--model RUN]``  the web service: a page and an HTTP API for one image at a time
``dgstudy preflight --profile osie``  are the profile's data and weights there, are its stores and folds
  intact (damaged ones moved aside to be rebuilt)? (make reproduce)
``dgstudy tag --profile osie``  the folder of the profile's tables and figures (the Makefile's; ``--files``: its YAML files)
``dgstudy clean-notebook NB...``  strip volatile content from executed notebooks (the Makefile's)
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import yaml

from . import notebook_clean
from .config import StudyConfig
from .grids import backbone_grid
from .io import DataError, atomic_path, write_json
from .paths import results_dir

# The prediction stack, the backbones and scipy are imported by the commands that use them, so that
# the Makefile's `dgstudy tag` reads a profile in about 2 s rather than 8 (torch itself still loads:
# TrainConfig resolves device 'auto').


def load_model(*args, **kwargs):
    """:func:`dgstudy.predict.load_model` (imported when first called)."""
    from .predict import load_model as load
    return load(*args, **kwargs)


def parse_scale(text: str):
    """:func:`dgstudy.predict.parse_scale` (imported when first called)."""
    from .predict import parse_scale as parse
    return parse(text)


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
    _folder_arguments(p, required=False)
    p.add_argument("--n-images", type=int, default=None, metavar="N", help="first N images only")
    p.add_argument("--kernel-size", type=float, default=None, metavar="PX",
                   help="sigma (px) of the empirical saliency map (default: about 1 degree)")
    p.add_argument("--out", default=None, metavar="DIR", help="output folder (default results/baselines/...)")
    p.set_defaults(func=run_baselines_command)
    return p


def _folder_arguments(p: argparse.ArgumentParser, required: bool) -> None:
    p.add_argument("--images", default=None, required=required, metavar="DIR",
                   help="a folder of images (a folder data set, with --fixations)")
    p.add_argument("--fixations", default=None, required=required, metavar="CSV",
                   help="its fixations: image,x,y[,subject] (as dgstudy predict --fixations)")
    p.add_argument("--unknown-images", default="error", choices=["error", "skip"],
                   help="CSV rows naming no image of the folder: an error (default) or skipped and counted")


def _load_folder(args: argparse.Namespace, n_images=None):
    """The folder data set of --images/--fixations; DataError if only one is given."""
    if bool(args.images) != bool(args.fixations):
        raise DataError("give both --images DIR and --fixations CSV (a folder data set)")
    from . import datasets
    return datasets.load("folder", n_images=n_images, images=args.images, fixations=args.fixations,
                         unknown_images=args.unknown_images)


def run_baselines_command(args: argparse.Namespace) -> int:
    import pandas as pd

    from . import datasets
    from .baselines import CenterBias, GoldStandard, Uniform
    from .metrics import MAIN_AVERAGE, evaluate

    t0 = time.perf_counter()
    if args.images or args.fixations:
        try:
            ds = _load_folder(args, args.n_images)
        except DataError as e:
            print(f"dgstudy baselines: {e}", file=sys.stderr)
            return 1
        tag = f"folder-{Path(args.images).resolve().name}"
    else:
        ds = datasets.load(args.dataset, n_images=args.n_images)
        tag = args.dataset
    print(ds)
    out = Path(args.out) if args.out else results_dir() / "baselines" / (
        tag + (f"-n{args.n_images}" if args.n_images else ""))
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
        rows.append({"model": name, **{m: summary[m] for m in MAIN_AVERAGE}})
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
--model, with the model shipped in the package (OSIE main run, EfficientNet-Lite0: dgstudy.pretrained).

For each IMAGE (a folder stands for the image files in it) writes into --out:
  <stem>.npy   natural-log density over the pixels, float32 (H, W); exp sums to 1
  <stem>.json  the scale used and the size the image was predicted at
  <stem>.png   the image and the predicted density

--scale training (default) predicts each image at the run's training scale: resampled to the
pixel area of the training images (same aspect ratio), predicted there, and the density mapped
back to the image's own pixels. --scale native predicts at the image's own size; a number is a
pixel area to predict at (e.g. 480000 for 800x600).

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
    _model_argument(p)
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
    _scale_argument(p)
    p.set_defaults(func=run_predict_command)
    return p


def _model_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, metavar="RUN",
                   help="training run folder (results/<run>/ or a run name), a fold folder, a model.pt or "
                        "a shipped model's name (default: the shipped OSIE model, dgstudy.pretrained)")


def _scale_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scale", default="training", type=parse_scale, metavar="training|native|AREA",
                   help="predict each image at the run's training scale (default), at its own size "
                        "(native), or at a pixel area AREA (e.g. 480000)")


def run_predict_command(args: argparse.Namespace) -> int:
    """The ``dgstudy predict`` handler; returns the exit status."""
    from .imageio import expand_image_args
    from .predict_files import predict_images

    images = expand_image_args(args.images)
    if not images:
        print("dgstudy predict: no images found", file=sys.stderr)
        return 1
    try:
        model = load_model(args.model, fold=args.fold, center_bias=args.center_bias, device=args.device,
                           scale=args.scale)
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


def format_summary(summary: dict, keys: Sequence[str] | None = None) -> str:
    """The headline metrics as a text table (LL, IG in bits/fixation; averages as in metrics.py);
    ``keys`` default: the counts and :data:`dgstudy.metrics.MAIN_AVERAGE` without explained IG."""
    from .metrics import MAIN_AVERAGE

    if keys is None:
        keys = ("n_images", "n_fixations", *(m for m in MAIN_AVERAGE if m != "explained_IG"))
    conv = summary.get("conventions", {}) if isinstance(summary.get("conventions"), dict) else {}
    lines = [f"  {'metric':<12} {'value':>10}  average"]
    for k in keys:
        v = summary.get(k)
        if v is None or (isinstance(v, float) and not np.isfinite(v)):
            continue
        text = f"{int(v):d}" if k.startswith("n_") else f"{float(v):.4f}"
        unit = " bits/fix" if k in ("LL", "IG") else ""
        lines.append(f"  {k:<12} {text:>10}  {conv.get(k, '')}{unit}")
    for k, why in (summary.get("not_computable") or {}).items():
        lines.append(f"  {k:<12} {'n/a':>10}  not computable: {why}")
    return "\n".join(lines)




# -- evaluate ---------------------------------------------------------------------------------------
EVALUATE_HELP = """\
Evaluate a trained run, or any saliency model's maps, on a fixation data set: a folder of images
(--images) and a CSV of fixations (--fixations; columns image,x,y[,subject] as for dgstudy predict
--fixations), or a data set dgstudy loads (--dataset osie, mit1003).

A run (--model, default the shipped model) is scored the way the paper scores: LL, IG and explained
IG over the data set's OWN leave-image-out centre bias and leave-one-subject-out gold standard
(fitted here), AUC, sAUC, NSS, CC, KLDiv, SIM (dgstudy.metrics), and the IG over the run's
training centre bias.

A folder of saliency maps (--maps DIR: one map per image, named by the image's file stem, .npy,
.png or .jpg, any size with the image's aspect ratio) is scored the benchmark's way: the maps are
made a density by a cross-validated fit (a monotone nonlinearity, a blur and a centre-bias weight
fitted on the other folds' images), whose LL, IG, explained IG and metrics on the metric-optimal
maps are reported, beside the classic metrics on the raw maps (raw_AUC, ...). docs/evaluate.md.

What cannot be computed (one image: no own centre bias and no sAUC; one observer: no gold standard)
is marked with the reason. Writes into --out: evaluation.json, evaluation_per_image.csv,
evaluation.png/.pdf.
"""


def add_evaluate_command(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("evaluate", help="evaluate a trained run or a folder of saliency maps on a data set",
                              description=EVALUATE_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    _model_argument(p)
    p.add_argument("--maps", default=None, metavar="DIR",
                   help="a folder of saliency maps to benchmark instead of a run (one per image)")
    _folder_arguments(p, required=False)
    p.add_argument("--dataset", default=None, metavar="NAME",
                   help="a data set dgstudy loads (osie, mit1003), instead of --images/--fixations")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="output folder (default results/evaluate/<run or maps>-on-<data set>)")
    p.add_argument("--fold", type=int, default=None, metavar="K", help="use only fold K of the run (default: all folds)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--kernel-size", type=float, default=None, metavar="PX",
                   help="sigma (px) of the empirical saliency map (default: about one degree, else "
                        "1/30 of the larger image side)")
    _scale_argument(p)
    p.set_defaults(func=run_evaluate_command)
    return p


def _evaluation_dataset(args: argparse.Namespace):
    """(data set, its name for the output folder) of --dataset or --images/--fixations."""
    if args.dataset and (args.images or args.fixations):
        raise DataError("give either --dataset NAME or --images DIR with --fixations CSV, not both")
    if args.dataset:
        from . import datasets
        return datasets.load(args.dataset), args.dataset
    if not (args.images or args.fixations):
        raise DataError("give the data set: --images DIR and --fixations CSV, or --dataset NAME")
    return _load_folder(args), Path(args.images).resolve().name


def run_evaluate_command(args: argparse.Namespace) -> int:
    """The ``dgstudy evaluate`` handler; returns the exit status."""
    from .metrics import MAIN_AVERAGE

    if args.maps:
        return _evaluate_maps(args)
    from . import transfer
    try:
        ds, ds_name = _evaluation_dataset(args)
        model = load_model(args.model, fold=args.fold, device=args.device, scale=args.scale)
        result = transfer.evaluate(model, ds, kernel_size=args.kernel_size, progress=True)
    except (DataError, KeyError, ValueError, OSError) as e:
        print(f"dgstudy evaluate: {e}", file=sys.stderr)
        return 1
    out = Path(args.out) if args.out else results_dir() / "evaluate" / f"{model.run_dir.name}-on-{ds_name}"
    paths = transfer.write(result, out)
    print(ds)
    print(format_summary({**result.summary, "not_computable": result.not_computable},
                         ("n_images", "n_fixations", *MAIN_AVERAGE)))
    print(f"  {'IG (run cb)':<12} {result.summary['IG_training_center_bias']:>10.4f}  "
          "mean over fixations bits/fix, over the run's training centre bias")
    print(f"IG and explained_IG over the data set's own leave-image-out centre bias; scale: "
          f"{', '.join(sorted(set(result.per_image['scale'])))}")
    print(f"written: {', '.join(str(p) for p in paths.values())}")
    return 0


def _evaluate_maps(args: argparse.Namespace) -> int:
    """``dgstudy evaluate --maps DIR``: a folder of saliency maps benchmarked (dgstudy.map_benchmark)."""
    from . import map_benchmark
    from .metrics import MAIN_AVERAGE

    if args.model or args.fold is not None:
        print("dgstudy evaluate: --maps scores a folder of maps; --model and --fold are for a run", file=sys.stderr)
        return 2
    try:
        ds, ds_name = _evaluation_dataset(args)
        result = map_benchmark.evaluate_maps(args.maps, ds, kernel_size=args.kernel_size, progress=True)
    except (DataError, ValueError, OSError) as e:
        print(f"dgstudy evaluate: {e}", file=sys.stderr)
        return 1
    out = Path(args.out) if args.out else results_dir() / "evaluate" / (
        f"maps-{Path(args.maps).resolve().name}-on-{ds_name}")
    paths = map_benchmark.write(result, out)
    print(ds)
    print(f"the maps as a density (fitted on the other folds' images, {len(result.fit['folds'])} folds):")
    print(format_summary({**result.summary, "not_computable": result.not_computable},
                         ("n_images", "n_fixations", *MAIN_AVERAGE)))
    print("the raw maps, classic metrics (AUC over all pixels, sAUC over other images' fixations, "
          "NSS, CC/KLDiv/SIM against the empirical map):")
    for m in map_benchmark.RAW_METRICS:
        print(f"  {m:<12} {result.raw[m]:>10.4f}  mean over images")
    print(f"written: {', '.join(str(p) for p in paths.values())}")
    return 0


# -- serve ----------------------------------------------------------------------------------------
def add_serve_command(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "serve", help="the web service: upload an image, see the predicted density",
        description="Serve a model over HTTP (dgstudy.serve): a page at http://HOST:PORT/ to upload an "
                    "image and see its predicted fixation density, POST /predict (multipart field "
                    "'image') -> JSON with URLs of the log-density .npy and the overlay .png, GET "
                    "/health, and the OpenAPI page at /docs. The model is loaded once, at start.")
    _model_argument(p)
    p.add_argument("--fold", type=int, default=None, metavar="K", help="use only fold K (default: all folds)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--center-bias", default="training", choices=["training", "uniform"],
                   help="centre bias of the training data rescaled to each image (default) or uniform")
    p.add_argument("--max-megapixels", type=float, default=None, metavar="MP",
                   help="largest image accepted, in megapixels (default: dgstudy.serve.Limits, 4; the "
                        "server's memory peaks at about 0.4 GB per megapixel above its base)")
    _scale_argument(p)
    p.set_defaults(func=run_serve_command)
    return p


def run_serve_command(args: argparse.Namespace) -> int:
    """The ``dgstudy serve`` handler: load the model, then serve until interrupted."""
    from . import serve   # here, not at the top: the web framework loads only for this command

    options = {"device": args.device, "center_bias": args.center_bias, "scale": args.scale}
    if args.fold is not None:
        options["fold"] = args.fold
    try:
        model = load_model(args.model, **options)
    except (DataError, KeyError, ValueError, OSError) as e:
        print(f"dgstudy serve: cannot load the model {args.model or 'shipped with dgstudy'}: {e}", file=sys.stderr)
        return 1
    print(f"dgstudy serve: {model!r}\n  page http://{args.host}:{args.port}/  API docs "
          f"http://{args.host}:{args.port}/docs", flush=True)
    limits = serve.Limits() if args.max_megapixels is None else serve.Limits(max_pixels=int(args.max_megapixels * 1e6))
    serve.serve(model, host=args.host, port=args.port, limits=limits)
    return 0


# -- preflight and tag (used by the Makefile) -------------------------------------------------------
def preflight(cfg: StudyConfig, download: bool = False, check: bool = False, log=print) -> list[str]:
    """Check that the profile's data set and backbone weights are reachable; return the problems.

    Uses the loaders' own errors (which name the missing file and how to provide it); an empty
    list means ready. The data loaders download missing data (their default); with
    ``download=True`` (``make reproduce``: ``preflight --download``) missing backbone weights are
    downloaded too, each file verified (VGG-19's published hash prefix, MIT1003's MD5s) before it
    is renamed into place; where: ``$DGSTUDY_VGG19_URL``, ``$DGSTUDY_MIT1003_URL`` or the published
    addresses. With ``download=False`` (default) the VGG-19 weights must already be on disk.

    ``check=True`` (the command line's default) then lists the feature stores the chain reads
    (:func:`dgstudy.ablations.feature_stores`) and checks them and the finished folds it uses,
    moving damaged ones aside so that the chain rebuilds them (:func:`dgstudy.repair.check`; each
    with a line through ``log``).
    """
    from . import backbones, datasets

    t = cfg.train
    problems = []
    dataset = None
    try:
        dataset = datasets.load(t.dataset, n_images=t.n_images, **(t.dataset_options or {}))
    except Exception as e:  # noqa: BLE001 -- reported, with the loader's message
        problems.append(f"dataset {t.dataset!r}: {type(e).__name__}: {e}")
    built = {}
    for name in dict.fromkeys([*backbone_grid(cfg), *([cfg.ablation_vgg] if cfg.ablation_vgg else [])]):
        try:
            try:
                built[name] = backbones.get(name, download=download)
            except TypeError:   # this backbone's builder has no download option
                built[name] = backbones.get(name)
        except Exception as e:  # noqa: BLE001
            problems.append(f"backbone {name!r}: {type(e).__name__}: {e}")
    if check and not problems and dataset is not None:
        from . import repair

        def get_backbone(name):
            if built.get(name) is None:
                built[name] = backbones.get(name)
            return built[name]

        try:
            repair.check(cfg, dataset, get_backbone, log=log)
        except Exception as e:  # noqa: BLE001 -- reported; the chain would fail on it too
            problems.append(f"checking the feature stores and folds: {type(e).__name__}: {e}")
    return problems


OFFLINE_PROFILES = ("osie", "osie_extended", "smoke")    # their data and weights are shipped offline
OFFLINE_STUDY = "make reproduce PROFILE=osie"


def _profile_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", default="paper",
                   help="a profile's name (dgstudy/profiles/<name>.yaml) or a YAML file's path")
    p.add_argument("--backbone", default=None, help="another backbone than the profile's")
    p.add_argument("--overrides", default=None, metavar="YAML",
                   help="other profile keys to change, as a YAML mapping (the notebooks' `overrides` "
                        "parameter), e.g. '{seed: 1, ablation_layers_extra: {block5: [block5]}}'")


def _load_profile(args: argparse.Namespace) -> StudyConfig:
    """The profile of ``--profile`` with ``--overrides`` and ``--backbone``; SystemExit(2) with the
    loader's message (which names the file, key and condition) when it does not load."""
    try:
        overrides = yaml.safe_load(args.overrides) if args.overrides else {}
        if overrides is None:
            overrides = {}
        if not isinstance(overrides, dict):
            raise ValueError(f"--overrides: expected a YAML mapping, got {args.overrides!r}")
        if args.backbone:
            overrides["backbone"] = args.backbone
        return StudyConfig.load(args.profile, **overrides)
    except (KeyError, ValueError, yaml.YAMLError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"dgstudy {args.command}: {msg}", file=sys.stderr)
        raise SystemExit(2) from None


def add_preflight_command(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "preflight", help="check data, weights, feature stores and finished folds for a profile",
        description="Check that the profile's data set and backbone weights are there, list the feature "
                    "stores its notebook chain reads, and check them and every finished fold it uses: "
                    "a damaged store or fold (failing its SHA-256 or unreadable) is moved aside to "
                    "*.damaged and the executed notebook that makes it marked out of date, so that "
                    "make reproduce rebuilds exactly that (dgstudy.repair).")
    _profile_arguments(p)
    p.add_argument("--no-check", action="store_true",
                   help="only data and weights: neither list nor check the stores and folds")
    p.add_argument("--download", action="store_true",
                   help="download missing weights too (verified; $DGSTUDY_VGG19_URL overrides the address)")
    p.set_defaults(func=run_preflight_command)
    return p


def run_preflight_command(args: argparse.Namespace) -> int:
    cfg = _load_profile(args)
    problems = preflight(cfg, download=args.download, check=not args.no_check)
    if problems:
        print(f"preflight for profile {args.profile!r} FAILED:", file=sys.stderr)
        for prob in problems:
            print(f"  - {prob}", file=sys.stderr)
        if cfg.profile not in OFFLINE_PROFILES:
            print(f"Without a network, the study that runs here is: {OFFLINE_STUDY}", file=sys.stderr)
        return 1
    print(f"preflight for profile {args.profile!r}: data and weights found")
    return 0


def add_dataset_scores_command(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "dataset-scores", help="compute what notebook 07 scores from the data set alone (cached)",
        description="Fit the profile's data set's centre bias and gold standard, benchmark the classic "
                    "saliency models on its folds and measure its observer curve "
                    "(dgstudy.dataset_scores), each only if not cached yet. Needs no trained run: "
                    "make reproduce runs it beside the trainings, and notebook 07 reads the caches.")
    _profile_arguments(p)
    p.set_defaults(func=run_dataset_scores_command)
    return p


def run_dataset_scores_command(args: argparse.Namespace) -> int:
    from . import dataset_scores

    cfg = _load_profile(args)
    t0 = time.perf_counter()
    dataset_scores.compute(cfg)
    print(f"dataset-scores for profile {args.profile!r}: done in {time.perf_counter() - t0:.0f} s")
    return 0


def add_tag_command(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("tag", help="print the folder name of a profile's tables and figures")
    _profile_arguments(p)
    p.add_argument("--files", action="store_true",
                   help="print the profile's YAML files instead (itself, then those it extends)")
    p.set_defaults(func=run_tag_command)
    return p


def run_tag_command(args: argparse.Namespace) -> int:
    cfg = _load_profile(args)
    print(" ".join(map(str, cfg.files)) if args.files else cfg.output_tag)
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
    for add in (add_baselines_command, add_predict_command, add_evaluate_command, add_serve_command,
                add_preflight_command, add_dataset_scores_command, add_tag_command, add_clean_notebook_command):
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
