"""An ensemble of runs as a model for any image: :class:`EnsemblePredictor`, :func:`load_ensemble`.

An evaluated ensemble (``dgstudy.ensemble.select_and_evaluate``: ``ensemble.json`` with its
members and, per fold, the members chosen on that fold's validation images) predicts a new image
as the average of its folds' ensembles, as a run averages its folds (:mod:`dgstudy.predict`):

    p = (1/K) sum_k (1/|C_k|) sum_{m in C_k} p_{m,k}

over the K folds, ``C_k`` being fold k's chosen members and ``p_{m,k}`` member m's fold-k model.
Restricted to one fold (:meth:`EnsemblePredictor.single_folds`) it is exactly the density the
cross-validated evaluation scored for the images fold k held out.

Shared work: the image is read and resampled once, and each backbone computes its features once
for all of its (member, fold) readouts: the members are grouped into one
:class:`~dgstudy.predict.Predictor` per feature configuration (backbone, weights, layers,
downsample, dtype). The ensemble's centre bias (the baseline of its information gain) is the same
weighted average of the members' training centre biases.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from .ensemble import average_log_densities
from .io import DataError
from .predict import FoldMember, Predictor, check_backbone, check_channels, parse_scale, _backbone_options
from .rescale import resample_log_density
from .runs import feature_spec, find_fold_dirs, load_fold, training_scale
from . import backbones, pretrained

ENSEMBLE_FILE = "ensemble.json"


class EnsemblePredictor:
    """Weighted (member, fold) readouts over one or more backbones, as one model for any image.

    ``parts``: one :class:`~dgstudy.predict.Predictor` per feature configuration, sharing scale and
    centre-bias choice; ``weights``: per part, one positive weight per member (readout). Same
    interface as a Predictor where the study uses one: ``log_density``, ``__call__``,
    ``center_bias_log_density``, ``working_size``, ``scale_record``, ``single_folds``.
    """

    def __init__(self, parts: list[Predictor], weights: list[list[float]], run_dir: Path | None = None,
                 choice: dict[int, list[str]] | None = None):
        if not parts or len(parts) != len(weights):
            raise ValueError("an EnsemblePredictor needs one weight list per part, and at least one part")
        for p, w in zip(parts, weights):
            if len(w) != len(p.members) or min(w) <= 0:
                raise ValueError(f"part {p.spec.backbone}: {len(p.members)} members need as many positive weights")
        first = parts[0]
        for p in parts[1:]:
            if (p.scale, p.pixel_area) != (first.scale, first.pixel_area):
                raise DataError(f"{run_dir}: the members predict at different scales "
                                f"({first.scale} {first.pixel_area} and {p.scale} {p.pixel_area})")
        self.parts, self.weights, self.run_dir, self.choice = parts, weights, run_dir, choice or {}
        for p in parts[1:]:                   # one centre-bias cache: a fold's map is made once
            p._cb_cache = parts[0]._cb_cache
        self.scale, self.pixel_area = first.scale, first.pixel_area
        self.center_bias = first.center_bias
        self.provenance = None
        self.spec = None                                        # several backbones: see ``specs``

    @property
    def specs(self):
        return [p.spec for p in self.parts]

    @property
    def members(self) -> list[FoldMember]:
        return [m for p in self.parts for m in p.members]

    def __repr__(self) -> str:
        return (f"EnsemblePredictor({self.run_dir}, backbones={[s.backbone for s in self.specs]}, "
                f"readouts={len(self.members)}, scale={self.scale})")

    def working_size(self, h: int, w: int, scale=None) -> tuple[int, int]:
        return self.parts[0].working_size(h, w, scale)

    def scale_record(self, h: int, w: int, scale=None) -> dict:
        return self.parts[0].scale_record(h, w, scale)

    def _iter_working(self, rgb: np.ndarray):
        """Every readout's log-density over ``rgb`` (each backbone's features computed once)."""
        for part in self.parts:
            yield from part._iter_working(rgb)

    @property
    def _flat_weights(self) -> list[float]:
        return [w for ws in self.weights for w in ws]

    def log_density(self, image, scale=None) -> np.ndarray:
        """(H, W) float32 natural-log density: the weighted average of every readout's density at
        the working size (each backbone's features computed once), mapped to (H, W)."""
        rgb, (h, w) = self.parts[0]._working_image(image, scale)
        ld = average_log_densities(self._iter_working(rgb), self._flat_weights)
        return resample_log_density(ld, h, w, ld.dtype)

    __call__ = log_density

    def center_bias_log_density(self, h: int, w: int, scale=None) -> np.ndarray:
        """The weighted average of the members' centre biases at the working size, mapped to (h, w)."""
        size = self.working_size(h, w, scale)
        cbs = (p._member_center_bias(m, *size).astype(np.float64) for p in self.parts for m in p.members)
        return resample_log_density(average_log_densities(cbs, self._flat_weights), h, w)

    def single_folds(self) -> dict[int, "EnsemblePredictor"]:
        """{fold: the ensemble of that fold's chosen members alone, equally weighted}."""
        out = {}
        for fold in sorted({fold_number(m) for m in self.members}):
            parts, weights = [], []
            for p in self.parts:
                keep = [k for k, m in enumerate(p.members) if fold_number(m) == fold]
                if keep:
                    parts.append(Predictor([p.members[k] for k in keep], p.backbone, p.spec,
                                           center_bias=p.center_bias, device=p.device, run_dir=p.run_dir,
                                           scale=_scale_arg(p), fold_dirs=[p.fold_dirs[k] for k in keep]))
                    weights.append([1.0] * len(keep))
            out[fold] = EnsemblePredictor(parts, weights, self.run_dir, {fold: self.choice.get(fold, [])})
        return out


def fold_number(member: FoldMember) -> int:
    """The fold of a member named ``<run>/fold_XX``."""
    return int(member.name.rsplit("fold_", 1)[1])


def _scale_arg(p: Predictor):
    return p.scale if p.scale in ("training", "native") else p.pixel_area


def read_ensemble(folder) -> tuple[dict[str, Path], dict[int, list[str]]]:
    """({member: its run folder}, {fold: chosen members}) from ``folder/ensemble.json``; relative
    member folders are taken from ``folder`` (a shipped ensemble), absolute ones as written (an
    evaluated ensemble under ``results/``)."""
    folder = Path(folder)
    path = folder / ENSEMBLE_FILE
    try:
        rec = json.loads(path.read_text())
        members = {name: folder / d for name, d in rec["members"].items()}
        choice = {int(f): list(c) for f, c in rec["choice"].items()}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"{path}: not a readable ensemble record ({e})") from None
    unknown = sorted({n for c in choice.values() for n in c} - set(members))
    if unknown or not choice:
        raise DataError(f"{path}: the choice names members {unknown} it does not list, or is empty")
    return members, choice


def load_ensemble(folder, center_bias="training", device: str = "cpu", scale="training",
                  weights_files: dict | None = None) -> EnsemblePredictor:
    """The ensemble recorded in ``folder/ensemble.json`` as a model for any image.

    Every (member, fold) pair the choice uses is loaded once; fold ``k``'s members weigh
    ``1 / (K |C_k|)``. A shipped ensemble (``dgstudy.pretrained``) stores each fold's training
    centre bias once, as ``fold_XX/center_bias_grid.npz`` beside ``ensemble.json``; it stands for
    the members' own (the same training images). ``weights_files``: {backbone: local weights file}
    for ``dgstudy.backbones.get``. Each backbone is checked against the recorded weights hash."""
    folder = Path(folder)
    members, choice = read_ensemble(folder)
    groups: dict[tuple, dict] = {}
    same_cb: dict = {}                        # one object per distinct fold centre bias
    for fold, chosen in sorted(choice.items()):
        shared_cb = folder / f"fold_{fold:02d}" / pretrained.GRID_FILE
        for name in chosen:
            _, dirs = find_fold_dirs(members[name], fold)
            model, cfg, cb = load_fold(dirs[0])
            own = dirs[0] / "center_bias.json"
            if cb is None and shared_cb.exists():
                if shared_cb not in same_cb:
                    same_cb[shared_cb] = pretrained.CenterBiasGrid.load(shared_cb)
                cb = same_cb[shared_cb]
            elif own.exists():                # the same fit (same training images) in each member
                cb = same_cb.setdefault(hashlib.sha256(own.read_bytes()).hexdigest(), cb)
            spec = feature_spec(dirs[0], cfg, backbones.default_layers(cfg.backbone))
            g = groups.setdefault(spec.key(), {"spec": spec, "members": [], "weights": [], "dirs": []})
            g["members"].append(FoldMember(name=f"{name}/fold_{fold:02d}", model=model.to(device).eval(),
                                           center_bias=cb))
            g["weights"].append(1.0 / (len(choice) * len(chosen)))
            g["dirs"].append(dirs[0])
    all_dirs = [d for g in groups.values() for d in g["dirs"]]
    area = training_scale(all_dirs) if parse_scale(scale) == "training" else None
    parts = []
    for g in groups.values():
        spec = g["spec"]
        bb = backbones.get(spec.backbone, weights=(weights_files or {}).get(spec.backbone), device=device,
                           **_backbone_options(spec))
        check_backbone(bb, spec, g["dirs"])
        p = Predictor(g["members"], bb, spec, center_bias=center_bias, device=device, run_dir=folder,
                      scale=scale, fold_dirs=g["dirs"])
        if area is not None:                 # one training scale for all: the median over every readout
            p.pixel_area = area
        check_channels(p, g["dirs"])
        parts.append(p)
    ens = EnsemblePredictor(parts, [g["weights"] for g in groups.values()], folder, choice)
    prov = folder / "provenance.json"
    ens.provenance = json.loads(prov.read_text()) if prov.exists() else None
    return ens
