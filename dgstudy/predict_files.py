"""Predicting a list of image files (the work of ``dgstudy predict``) and scoring them.

:func:`predict_images` writes ``<stem>.npy`` (float32 natural-log density), ``<stem>.json`` (what
the prediction used: the image, its size, the scale and the size it was predicted at, from
``model.scale_record``) and ``<stem>.png`` per image; with a fixation CSV (:mod:`dgstudy.fixation_csv`) it evaluates the written predictions
with :func:`dgstudy.metrics.evaluate` (IG over the centre bias the model uses) and writes
``evaluation.json`` and ``evaluation_per_image.csv``. An image that fails is reported and the
others still run.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from . import metrics
from .datasets import FixationDataset
from .figures import save_density_plot
from .fixation_csv import check_fixations, read_fixation_csv
from .imageio import read_rgb
from .io import DataError, atomic_path, write_json
from .baselines import uniform_log_density


@dataclass
class PredictReport:
    outputs: dict[str, Path]                 # image as given -> .npy written
    errors: list[str]
    evaluation: dict | None = None
    per_image: pd.DataFrame | None = None
    notes: list[str] = field(default_factory=list)     # e.g. CSV rows naming images not given

    @property
    def ok(self) -> bool:
        return not self.errors


def output_stems(images: Sequence[Path]) -> list[str]:
    """Unique file stems for the outputs (``name``, ``name-2``, ... when stems collide)."""
    seen: dict[str, int] = {}
    stems = []
    for p in images:
        s = Path(p).stem
        seen[s] = seen.get(s, 0) + 1
        stems.append(s if seen[s] == 1 else f"{s}-{seen[s]}")
    return stems


def predict_one(model, image) -> tuple[np.ndarray, np.ndarray]:
    """One image's prediction, as every ``dgstudy predict`` and ``dgstudy serve`` output is made.

    ``image``: anything :func:`read_rgb` reads (a path, encoded bytes, a file object, an array).
    Returns ``(rgb, log_density)``: the (H, W, 3) uint8 image as read and the model's (H, W)
    float32 natural-log density for it. Raises :class:`DataError` if the image does not decode or
    the model answers another shape.
    """
    rgb = read_rgb(image)
    logd = np.asarray(model.log_density(rgb), dtype=np.float32)
    if logd.shape != rgb.shape[:2]:
        what = image if isinstance(image, (str, os.PathLike)) else "image"
        raise DataError(f"{what}: model returned shape {logd.shape} for a {rgb.shape[1]}x{rgb.shape[0]} image")
    return rgb, logd


def predict_images(model, images: Sequence[str | os.PathLike], out, fixations=None,
                   plot: bool = True, progress: bool | None = None,
                   kernel_size: float | None = None) -> PredictReport:
    """Write ``<stem>.npy`` (float32 log-density) and ``<stem>.png`` for each image into ``out``.

    ``model`` needs ``log_density(rgb_array)`` and, for an evaluation, ``center_bias_log_density(h, w)``
    (a :class:`Predictor` has both). ``fixations``: a CSV (see :func:`read_fixation_csv`); then the
    images with fixations are evaluated with :func:`dgstudy.metrics.evaluate` — LL and IG (over the
    model's centre bias) in bits/fixation, AUC, NSS, ... — and ``evaluation.json`` and
    ``evaluation_per_image.csv`` are written to ``out``. ``kernel_size``: sigma (px) of the empirical
    saliency map for CC, KLDiv, SIM (default: ``metrics.default_kernel_size``, 1/30 of the larger
    side of the first image). An image that fails is reported in ``errors`` and the others still run.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    given = [str(p) for p in images]
    paths = [Path(p) for p in images]
    stems = output_stems(paths)
    errors: list[str] = []
    outputs: dict[str, Path] = {}
    sizes: dict[int, tuple[int, int]] = {}
    records: dict[int, dict] = {}
    rows = None
    if fixations is not None:
        try:                                           # check the CSV before the long loop
            rows = read_fixation_csv(fixations, paths, given)
        except DataError as e:
            errors.append(str(e))
    disable = (len(paths) < 2) if progress is None else not progress
    for i, (p, stem) in enumerate(tqdm(list(zip(paths, stems)), desc="predict", unit="img", disable=disable)):
        try:
            rgb, logd = predict_one(model, p)
            npy = out / f"{stem}.npy"
            with atomic_path(npy, suffix=".npy") as tmp:
                with open(tmp, "wb") as f:
                    np.save(f, logd)
            record = scale_record(model, *rgb.shape[:2])
            write_json(out / f"{stem}.json", {"image": str(p), "npy": npy.name, **record})
            outputs[str(p)] = npy
            sizes[i] = rgb.shape[:2]
            records[i] = record
        except DataError as e:
            errors.append(str(e))
            continue
        except Exception as e:                       # noqa: BLE001 - keep going, report at the end
            errors.append(f"{p}: prediction failed ({type(e).__name__}: {e})")
            continue
        if plot:
            try:
                fx = None
                if rows is not None:
                    fx = check_fixations(rows[rows["image"] == i], {i: rgb.shape[:2]}, fixations).fixations
                save_density_plot(out / f"{stem}.png", rgb, logd, fx, title=p.name)
            except Exception as e:                   # noqa: BLE001
                errors.append(f"{p}: the figure failed ({type(e).__name__}: {e}); {npy.name} was written")
    report = PredictReport(outputs=outputs, errors=errors)
    if rows is not None:
        table = check_fixations(rows, sizes, fixations)
        errors.extend(table.errors)
        report.notes.extend(table.notes)
        if not len(table.fixations):
            errors.append(f"{fixations}: no valid fixation on any image given; nothing evaluated")
            return report
        try:
            report.evaluation, report.per_image = evaluate_predictions(
                model, paths, stems, sizes, table.fixations, out, kernel_size=kernel_size, records=records)
        except (DataError, ValueError) as e:
            errors.append(f"{fixations}: evaluation failed: {e}")
    return report


class SavedPredictions:
    """Written .npy log-densities as a dgstudy model: ``log_density(i)`` reads ``files[i]``
    (memory-mapped, float64), so an evaluation holds one image's map at a time."""

    def __init__(self, files: list[Path]):
        self.files = files

    def log_density(self, i: int) -> np.ndarray:
        return np.load(self.files[i], mmap_mode="r").astype(np.float64)

    __call__ = log_density


class _SizeModel:
    """A model whose log-density depends only on image size (the centre-bias baseline)."""

    def __init__(self, fn: Callable[[int, int], np.ndarray], sizes: np.ndarray):
        self.fn, self.sizes, self._cache = fn, sizes, {}

    def log_density(self, i: int) -> np.ndarray:
        key = tuple(int(s) for s in self.sizes[i])
        if key not in self._cache:
            self._cache[key] = np.asarray(self.fn(*key), dtype=np.float64)
        return self._cache[key]

    __call__ = log_density


def scale_record(model, h: int, w: int) -> dict:
    """``model.scale_record(h, w)`` (a :class:`~dgstudy.predict.Predictor`), else: native."""
    if hasattr(model, "scale_record"):
        return dict(model.scale_record(h, w))
    return {"scale": "native", "pixel_area": None, "size": [int(h), int(w)], "predicted_at": [int(h), int(w)]}


def evaluate_predictions(model, paths: Sequence[Path], stems: Sequence[str], sizes: dict[int, tuple[int, int]],
                         fixations: pd.DataFrame, out: Path, kernel_size: float | None = None,
                         records: dict[int, dict] | None = None) -> tuple[dict, pd.DataFrame]:
    """Evaluate the written predictions on ``fixations`` with :func:`dgstudy.metrics.evaluate`;
    ``records`` ({image: :func:`scale_record`}) add the scale columns to the per-image table."""
    used = sorted(int(i) for i in fixations["image"].unique())
    remap = {old: new for new, old in enumerate(used)}
    fx = fixations.copy()
    fx["image"] = fx["image"].map(remap).astype(np.int64)
    fx["onset"] = np.nan
    fx["duration"] = np.nan
    fx = fx.sort_values(["image", "subject", "fix_index"], kind="stable").reset_index(drop=True)
    ds = FixationDataset(name="predict", stimuli=[str(paths[i]) for i in used],
                         sizes=np.array([sizes[i] for i in used]), fixations=fx, source="dgstudy predict")
    preds = SavedPredictions([out / f"{stems[i]}.npy" for i in used])
    cb_fn = getattr(model, "center_bias_log_density", None)
    baseline = _SizeModel(cb_fn or uniform_log_density, ds.sizes)
    summary, per_image = metrics.evaluate(preds, ds, baseline=baseline, per_image=True, kernel_size=kernel_size)
    per_image = per_image.copy()
    per_image.insert(0, "file", [str(paths[used[int(j)]]) for j in per_image["image"]])
    recs = [(records or {}).get(used[int(j)]) or scale_record(model, *sizes[used[int(j)]])
            for j in per_image["image"]]
    per_image["scale"] = [r["scale"] for r in recs]
    per_image["predicted_height"] = [r["predicted_at"][0] for r in recs]
    per_image["predicted_width"] = [r["predicted_at"][1] for r in recs]
    scales = sorted({r["scale"] for r in recs})
    summary = {"n_images": len(used), "n_fixations": int(len(fx)), **dict(summary),
               "baseline": ("the centre bias the model uses" if cb_fn else "uniform") + " (for IG and sAUC)",
               "scale": scales[0] if len(scales) == 1 else scales,
               "pixel_area": recs[0]["pixel_area"] if recs else None}
    write_json(out / "evaluation.json", {"summary": summary, "per_image": per_image.to_dict(orient="records")})
    with atomic_path(out / "evaluation_per_image.csv", suffix=".csv") as tmp:
        per_image.to_csv(tmp, index=False)
    return summary, per_image
