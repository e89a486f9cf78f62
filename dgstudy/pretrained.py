"""Models shipped inside the package: a trained run, small enough to install, with its provenance.

``load_model()`` (or ``load_model("osie")``) in :mod:`dgstudy.predict` and ``dgstudy predict``
without ``--model`` use :data:`DEFAULT`. A shipped model is a run folder in the layout of
:mod:`dgstudy.runs`, under ``dgstudy/models/<name>/``::

    provenance.json        source run, its configuration, data checksum, backbone and weights
                           hash, cross-validated metrics, why this run was chosen
    per_image.csv          the source run's cross-validated per-image metrics (image, fold, ...)
    fold_XX/model.pt       the fold's readout (copied)
    fold_XX/config.json    the fold's record (copied: train/val/test images, store attributes)
    fold_XX/center_bias_grid.npz   the fold's training centre bias as a small grid
                           (:class:`CenterBiasGrid`) instead of every training fixation

:func:`export` writes one from a trained run.
"""
from __future__ import annotations

import json
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ._version import __version__
from .baselines import CenterBias
from .rescale import TRAINING_SCALE_KEY, resample_log_density, training_pixel_area
from .io import DataError, atomic_path, write_json

MODELS_DIR = Path(__file__).resolve().parent / "models"
DEFAULT = "osie"
GRID_FILE = "center_bias_grid.npz"
GRID_FACTOR = 4        # grid cells of the centre bias, in training-image pixels per side


def names() -> list[str]:
    """The shipped models."""
    return sorted(p.parent.name for p in MODELS_DIR.glob("*/provenance.json"))


def model_dir(name: str = DEFAULT) -> Path:
    """The folder of shipped model ``name`` (DataError naming the shipped ones if there is none)."""
    d = MODELS_DIR / name
    if not (d / "provenance.json").exists():
        raise DataError(f"no shipped model {name!r} in {MODELS_DIR} (shipped: {', '.join(names()) or 'none'})")
    return d


def provenance(name: str = DEFAULT) -> dict:
    return json.loads((model_dir(name) / "provenance.json").read_text())


@dataclass
class CenterBiasGrid:
    """A centre bias stored as a log-density over the cells of a small grid covering the image.

    ``log_density_for_size(h, w)`` resamples it to any image size and renormalises it
    (:func:`dgstudy.rescale.resample_log_density`). Made from a fitted
    :class:`~dgstudy.baselines.CenterBias` evaluated at the training image size and area-averaged over cells of ``GRID_FACTOR`` x ``GRID_FACTOR`` pixels.
    """

    log_density: np.ndarray          # (gh, gw) natural log, exp sums to 1 over the cells
    image_size: tuple[int, int]      # (H, W) it was evaluated at
    bandwidth: float = float("nan")
    uniform_weight: float = float("nan")

    @classmethod
    def from_center_bias(cls, cb: CenterBias, image_size, factor: int = GRID_FACTOR) -> "CenterBiasGrid":
        h, w = (int(s) for s in image_size)
        d = torch.from_numpy(np.exp(cb.log_density_for_size(h, w)))[None, None]
        cells = F.interpolate(d, size=(max(1, round(h / factor)), max(1, round(w / factor))), mode="area")
        cells = cells[0, 0].numpy()
        return cls(np.log(cells) - np.log(cells.sum()), (h, w), cb.bandwidth, cb.uniform_weight)

    def log_density_for_size(self, h: int, w: int) -> np.ndarray:
        return resample_log_density(self.log_density, int(h), int(w))

    def save(self, path) -> None:
        with atomic_path(path, suffix=".npz") as tmp, open(tmp, "wb") as f:
            np.savez_compressed(f, log_density=self.log_density.astype(np.float32),
                                image_size=np.asarray(self.image_size, dtype=np.int64),
                                bandwidth=self.bandwidth, uniform_weight=self.uniform_weight)

    @classmethod
    def load(cls, path) -> "CenterBiasGrid":
        try:
            with np.load(path) as z:
                ld = z["log_density"].astype(np.float64)
                size = tuple(int(s) for s in z["image_size"])
                bw, uw = float(z["bandwidth"]), float(z["uniform_weight"])
        except (OSError, KeyError, ValueError, zipfile.BadZipFile) as e:
            raise DataError(f"{path}: not a readable centre-bias grid ({e})") from e
        if ld.ndim != 2 or not np.isfinite(ld).all():
            raise DataError(f"{path}: the centre-bias grid must be a finite 2-D array, got shape {ld.shape}")
        return cls(ld, size, bw, uw)


PATH_KEYS = ("feature_path", "mirror_feature_path")    # kept as file names only in a shipped fold
SUMMARY_KEYS = ["LL", "IG", "explained_IG", "IG_gold", "AUC", "sAUC", "NSS", "CC", "KLDiv", "SIM",
                "n_images", "n_fixations"]                        # the metrics a provenance records
BACKBONE_KEYS = ("backbone", "architecture", "weights_sha256", "layers", "downsample", "dtype")


def _save_center_bias_grid(fold_dir: Path, image_size, out: Path) -> None:
    """Fold ``fold_dir``'s training centre bias (``center_bias.json``) as a :class:`CenterBiasGrid`
    at ``image_size``, written to ``out``."""
    cb = CenterBias.from_dict(json.loads((fold_dir / "center_bias.json").read_text()))
    CenterBiasGrid.from_center_bias(cb, image_size).save(out)


def _export_fold(d: Path, out: Path, dataset, center_bias: bool) -> tuple[dict, tuple[int, int]]:
    """Copy fold folder ``d`` into ``out`` as a shipped fold: its readout, its record (with its
    training scale, feature paths cut to file names) and, with ``center_bias``, its training centre
    bias as a :class:`CenterBiasGrid` at its most common training image size. Returns (the record,
    that size)."""
    info = json.loads((d / "config.json").read_text())
    if info.get("store_attrs", {}).get("dataset_checksum") not in (None, dataset.checksum):
        raise DataError(f"{d}: trained on another version of {dataset.name} than the one given")
    sizes, counts = np.unique(dataset.sizes[np.asarray(info["train_images"])], axis=0, return_counts=True)
    image_size = tuple(int(s) for s in sizes[np.argmax(counts)])
    out.mkdir(parents=True)
    shutil.copy2(d / "model.pt", out / "model.pt")
    # the fold's record, with its training scale (scale-aware prediction must not need the data set)
    info.setdefault(TRAINING_SCALE_KEY, training_pixel_area(dataset.sizes[np.asarray(info["train_images"])]))
    for key in PATH_KEYS:          # no path of the machine that trained it ships
        if info.get(key):
            info[key] = Path(info[key]).name
    write_json(out / "config.json", info)
    if center_bias:
        _save_center_bias_grid(d, image_size, out / GRID_FILE)
    return info, image_size


def export(run_dir, out_dir, dataset, why: str, summary_keys=None) -> Path:
    """Write run ``run_dir`` (trained and evaluated: ``metrics.json``) as a shipped model folder.

    ``dataset``: the run's data set (the training image size of each fold's centre bias, the
    checksum in the provenance). ``why``: one paragraph on why this run is the shipped one.
    Nothing written names a path of this machine (the feature stores by file name only, the data
    set by name and checksum)."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    metrics_path = run_dir / "metrics.json"
    if not metrics_path.exists():
        raise DataError(f"{run_dir}: evaluate the run first (no metrics.json)")
    metrics = json.loads(metrics_path.read_text())
    run_cfg = json.loads((run_dir / "config.json").read_text())
    if run_cfg.get("dataset") != dataset.name:
        raise DataError(f"{run_dir} was trained on {run_cfg.get('dataset')!r}, not on {dataset.name!r}")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    folds, store_attrs = [], None
    for d in sorted(run_dir.glob("fold_*")):
        info, image_size = _export_fold(d, out_dir / d.name, dataset, center_bias=True)
        store_attrs = info.get("store_attrs", store_attrs)
        folds.append({"fold": int(info["fold"]), "image_size": list(image_size), "best_epoch": info.get("best_epoch"),
                      "test_images": len(info.get("test_images", []))})
    shutil.copy2(run_dir / "per_image.csv", out_dir / "per_image.csv")
    summary = metrics["summary"]
    keys = summary_keys or SUMMARY_KEYS
    write_json(out_dir / "provenance.json", {
        "name": out_dir.name, "dgstudy_version": __version__, "source_run": run_dir.name, "why": why,
        "dataset": {"name": dataset.name, "checksum": dataset.checksum, "n_images": len(dataset)},
        "backbone": {k: (store_attrs or {}).get(k) for k in BACKBONE_KEYS},
        "train_config": run_cfg,
        "cross_validated_metrics": {k: summary[k] for k in keys if k in summary},
        "folds": metrics.get("folds"), "fold_files": folds,
        "center_bias": f"per fold: the training images' centre bias on a grid of {GRID_FACTOR}x{GRID_FACTOR}-pixel "
                       "cells of the training image size (CenterBiasGrid)",
    })
    return out_dir



def export_ensemble(ensemble_dir, out_dir, dataset, why: str) -> Path:
    """Write an evaluated ensemble (``dgstudy.ensemble.select_and_evaluate``: ``ensemble.json``,
    ``metrics.json``, ``per_image.csv``) as a shipped model folder::

        provenance.json      kind "ensemble", the members (their backbones, settings and own
                             cross-validated metrics), each fold's choice, the ensemble's metrics
        ensemble.json        {"members": {run: "members/<run>"}, "choice": {fold: [runs]}}
        per_image.csv        the ensemble's cross-validated per-image metrics
        fold_XX/center_bias_grid.npz   fold XX's training centre bias, once for all its members
        members/<run>/fold_XX/{model.pt, config.json}   only the (member, fold) pairs chosen

    ``dgstudy.predict.load_model`` loads it as an ``EnsemblePredictor``."""
    ensemble_dir, out_dir = Path(ensemble_dir), Path(out_dir)
    for name in ("ensemble.json", "metrics.json", "per_image.csv"):
        if not (ensemble_dir / name).exists():
            raise DataError(f"{ensemble_dir}: no {name}; evaluate the ensemble first (ensemble.select_and_evaluate)")
    record = json.loads((ensemble_dir / "ensemble.json").read_text())
    metrics = json.loads((ensemble_dir / "metrics.json").read_text())
    members = {name: Path(d) for name, d in record["members"].items()}
    choice = {int(f): list(c) for f, c in record["choice"].items()}
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    used = [n for n in members if any(n in c for c in choice.values())]
    member_info, fold_files = {}, []
    for fold, chosen in sorted(choice.items()):
        for k, name in enumerate(chosen):
            info, image_size = _export_fold(members[name] / f"fold_{fold:02d}",
                                            out_dir / "members" / name / f"fold_{fold:02d}", dataset,
                                            center_bias=False)
            if k == 0:        # every member of a fold was trained on the same images: one centre bias
                (out_dir / f"fold_{fold:02d}").mkdir()
                _save_center_bias_grid(members[name] / f"fold_{fold:02d}", image_size,
                                       out_dir / f"fold_{fold:02d}" / GRID_FILE)
                fold_files.append({"fold": fold, "image_size": list(image_size), "members": chosen})
            member_info.setdefault(name, {"backbone": {k2: info.get("store_attrs", {}).get(k2) for k2 in BACKBONE_KEYS},
                                          "train_config": info.get("train_config")})
    for name in used:               # a member's own cross-validated metrics, where it was evaluated
        if (members[name] / "metrics.json").exists():
            m = json.loads((members[name] / "metrics.json").read_text())["summary"]
            member_info[name]["cross_validated_metrics"] = {k: m[k] for k in SUMMARY_KEYS if k in m}
    write_json(out_dir / "ensemble.json", {"members": {n: f"members/{n}" for n in used},
                                           "choice": {str(f): c for f, c in sorted(choice.items())}})
    shutil.copy2(ensemble_dir / "per_image.csv", out_dir / "per_image.csv")
    summary = metrics["summary"]
    write_json(out_dir / "provenance.json", {
        "name": out_dir.name, "kind": "ensemble", "dgstudy_version": __version__,
        "source_run": ensemble_dir.name, "why": why,
        "dataset": {"name": dataset.name, "checksum": dataset.checksum, "n_images": len(dataset)},
        "members": member_info,
        "choice": {str(f): c for f, c in sorted(choice.items())},
        "choice_rule": "per fold, the candidate with the best mean log-likelihood on that fold's validation "
                       "images (dgstudy.main_ensemble.candidates, dgstudy.ensemble.select_and_evaluate)",
        "validation_LL": record.get("validation_LL"),
        "cross_validated_metrics": {k: summary[k] for k in SUMMARY_KEYS if k in summary},
        "folds": metrics.get("folds"), "fold_files": fold_files,
        "prediction": "the average over folds of each fold's chosen members' average density "
                      "(dgstudy.predict_ensemble)",
        "center_bias": f"per fold, shared by its members: the training images' centre bias on a grid of "
                       f"{GRID_FACTOR}x{GRID_FACTOR}-pixel cells of the training image size (CenterBiasGrid)",
    })
    return out_dir
