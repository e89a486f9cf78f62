"""A trained run on other data: any fixation data set, and its own images shown at other scales.

- :func:`evaluate`: predict every image of a data set with a :class:`~dgstudy.predict.Predictor`
  (or, per image, the one a function names: e.g. the fold that held the image out) and score it
  the way the paper scores: LL, IG and explained IG over **that data set's own** leave-image-out
  centre bias and leave-one-subject-out gold standard (:class:`~dgstudy.baselines.CenterBias`,
  :class:`~dgstudy.baselines.GoldStandard`, fitted here), every other metric of
  :func:`dgstudy.metrics.evaluate`, and the IG over the centre bias the **run** uses
  (``IG_training_center_bias``). What cannot be computed (one image: no leave-image-out centre bias
  and no sAUC; one observer: no gold standard) is NaN and named with the reason in
  ``not_computable``. :func:`write` writes ``evaluation.json``, ``evaluation_per_image.csv`` and the
  figure ``evaluation.png``/``.pdf``, each atomically (``dgstudy evaluate``).
- :func:`rescaled`: a data set's images shown at another width (resampled on the fly,
  :func:`dgstudy.rescale.resize_image`), fixations scaled with them; :func:`scale_table` compares
  evaluations of one run on such copies (notebook 08).

LL and IG in bit/fixation; averages as :data:`dgstudy.metrics.MAIN_AVERAGE`.
"""
from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from . import metrics, statistics
from .baselines import CenterBias, GoldStandard
from .datasets import FixationDataset
from .datasets.pixels import round_half_up
from .io import DataError, atomic_path, write_json
from .predict_files import SavedPredictions
from .rescale import resize_image

REASONS = {
    "center_bias": "the fixations fall on a single image; the data set's own centre bias is fitted "
                   "leave-image-out and needs at least 2 images",
    "gold_standard": "the fixations come from a single observer (or the CSV has no subject column); "
                     "the leave-one-subject-out gold standard needs at least 2",
}


@dataclass
class TransferEvaluation:
    """The result of :func:`evaluate`: ``summary`` (metric -> value, as
    :func:`dgstudy.metrics.evaluate`, plus ``IG_training_center_bias``), ``per_image`` (one row per
    image), ``not_computable`` ({metric: reason}), the fitted baselines (None if not computable)."""

    summary: dict
    per_image: pd.DataFrame
    not_computable: dict = field(default_factory=dict)
    center_bias: CenterBias | None = None
    gold: GoldStandard | None = None
    dataset: FixationDataset | None = None
    model: str = ""


def _model_for(model):
    """``image index -> Predictor`` for a Predictor or a function."""
    if hasattr(model, "log_density"):
        return lambda i: model
    if callable(model):
        return model
    raise TypeError(f"model must be a Predictor or a function image -> Predictor, got {type(model).__name__}")


def _with_fixations(dataset, images) -> np.ndarray:
    images = np.arange(len(dataset)) if images is None else np.asarray(images, dtype=np.int64)
    counts = np.bincount(dataset.fixations["image"].to_numpy(), minlength=len(dataset))
    images = images[counts[images] > 0]
    if not len(images):
        raise DataError(f"{dataset.name}: no fixations on the images to evaluate")
    return images


def fit_baselines(dataset: FixationDataset, images=None) -> tuple[CenterBias | None, GoldStandard | None, dict]:
    """(the leave-image-out centre bias, the leave-one-subject-out gold standard, {metric: reason})
    of ``images`` (default all) of ``dataset``; None where not computable (:data:`REASONS`)."""
    images = _with_fixations(dataset, images)
    not_computable: dict[str, str] = {}
    center_bias = gold = None
    try:
        center_bias = CenterBias.fit(dataset, images=images)
    except DataError:
        not_computable.update(IG=REASONS["center_bias"], explained_IG=REASONS["center_bias"])
    n_subjects = dataset.fixations[np.isin(dataset.fixations["image"], images)]["subject"].nunique()
    if center_bias is not None and n_subjects >= 2:
        gold = GoldStandard.fit(dataset, center_bias, images=images)
    elif "explained_IG" not in not_computable:
        not_computable.update(explained_IG=REASONS["gold_standard"], IG_gold=REASONS["gold_standard"])
    return center_bias, gold, not_computable


def evaluate(model, dataset: FixationDataset, scale=None, images=None, kernel_size: float | None = None,
             progress: bool = False, baselines=None) -> TransferEvaluation:
    """Predict ``images`` (default all; those without fixations are skipped) of ``dataset`` and score
    them (module docstring). ``model``: a Predictor or ``i -> Predictor``; ``scale``: passed to its
    ``log_density`` (None: the Predictor's own); ``kernel_size``: sigma (px) of the empirical map;
    ``baselines``: :func:`fit_baselines` of these images, if already fitted."""
    model_for = _model_for(model)
    images = _with_fixations(dataset, images)
    center_bias, gold, not_computable = baselines if baselines is not None else fit_baselines(dataset, images)
    not_computable = dict(not_computable)
    with tempfile.TemporaryDirectory(prefix="dgstudy-transfer-") as tmp:
        files = [Path(tmp) / f"{i}.npy" for i in range(len(dataset))]
        extra = []
        for i in tqdm(images, desc="predict", unit="img", disable=not progress, leave=False):
            extra.append(_predict_one(model_for(int(i)), dataset, int(i), scale, files[int(i)]))
        summary, per_image = metrics.evaluate(SavedPredictions(files), dataset, baseline=center_bias, gold=gold,
                                              images=images, per_image=True, kernel_size=kernel_size)
    not_computable.update(summary.pop("not_computable", {}))
    per_image = per_image.merge(pd.DataFrame(extra), on="image")
    per_image.insert(1, "file", [dataset.stimuli[int(i)] for i in per_image["image"]])
    n = per_image["n_fix"].to_numpy(dtype=np.float64)
    summary["IG_training_center_bias"] = float(np.sum(per_image["IG_training_center_bias"] * n) / n.sum())
    if center_bias is None:                      # metrics.evaluate fell back to a uniform baseline
        summary.update({k: math.nan for k in summary if k.startswith("IG") and k != "IG_training_center_bias"})
        per_image["IG"] = math.nan
    summary["baseline"] = "the data set's own leave-image-out centre bias (IG, explained_IG, sAUC)"
    summary["conventions"]["IG_training_center_bias"] = ("mean over fixations; bit/fix over the centre "
                                                          "bias the run uses (its training images')")
    return TransferEvaluation(summary=summary, per_image=per_image, not_computable=not_computable,
                              center_bias=center_bias, gold=gold, dataset=dataset,
                              model=str(getattr(model, "run_dir", "") or ""))


def evaluate_at_scales(model, dataset: FixationDataset, scales=("training", "native"), images=None,
                       **kw) -> dict:
    """{scale: :func:`evaluate` at that scale} with the baselines fitted once; a scale under which
    every image is predicted at the same size as under an earlier one (e.g. ``native`` for images
    already at the training scale) reuses that evaluation instead of predicting again."""
    model_for = _model_for(model)
    images = _with_fixations(dataset, images)
    baselines = fit_baselines(dataset, images)
    out, sizes = {}, {}
    for scale in scales:
        sizes[scale] = [model_for(int(i)).working_size(*dataset.sizes[i], scale) for i in images]
        same = next((s for s in out if sizes[s] == sizes[scale]), None)
        out[scale] = out[same] if same is not None else evaluate(model, dataset, scale, images,
                                                                 baselines=baselines, **kw)
    return out


def _predict_one(model, dataset, i: int, scale, path: Path) -> dict:
    """Predict image ``i`` into ``path``; its IG over the model's centre bias and scale record."""
    rgb = dataset.image(i)
    h, w = rgb.shape[:2]
    ld = np.asarray(model.log_density(rgb, scale=scale), dtype=np.float32)
    np.save(path, ld)
    g = dataset.fixations_of(i)
    rows, cols = metrics.fixation_pixels(g["x"].to_numpy(), g["y"].to_numpy(), (h, w), i)
    cb = model.center_bias_log_density(h, w, scale)
    ig = metrics.information_gain_bits(ld.astype(np.float64)[rows, cols], cb[rows, cols])
    rec = model.scale_record(h, w, scale)
    return {"image": i, "IG_training_center_bias": float(ig.mean()), "scale": rec["scale"],
            "predicted_height": rec["predicted_at"][0], "predicted_width": rec["predicted_at"][1]}


def write(result: TransferEvaluation, out) -> dict[str, Path]:
    """``evaluation.json``, ``evaluation_per_image.csv`` and ``evaluation.png``/``.pdf`` into ``out``
    (each atomically: an interrupted write leaves no partial file)."""
    from . import figures

    out = Path(out)
    ds = result.dataset
    paths = {"json": out / "evaluation.json", "csv": out / "evaluation_per_image.csv"}
    with atomic_path(paths["csv"], suffix=".csv") as tmp:
        result.per_image.to_csv(tmp, index=False)
    cb = result.center_bias
    write_json(paths["json"], {
        "model": result.model,
        "dataset": None if ds is None else {"name": ds.name, "checksum": ds.checksum, "source": ds.source,
                                            "n_images": ds.n_images, "n_fixations": ds.n_fixations,
                                            "n_subjects": int(len(ds.subjects))},
        "scale": sorted(set(result.per_image["scale"])),
        "summary": result.summary, "not_computable": result.not_computable,
        "center_bias": None if cb is None else {k: v for k, v in cb.to_dict().items() if k not in ("u", "v")},
        "gold_standard": None if result.gold is None else result.gold.to_dict(),
    })
    fig = figures.plot_transfer_evaluation(result.per_image, result.summary)
    for p in figures.save(fig, "evaluation", out):
        paths[p.suffix.lstrip(".")] = p
    return paths


# -- the same images at other scales ---------------------------------------------------------------
class RescaledDataset(FixationDataset):
    """``parent``'s images ``parent_images`` shown at other sizes: ``image(i)`` resamples the parent
    image to ``sizes[i]`` on the fly; the fixations are scaled with it (``x * w / W``, ``y * h / H``)."""

    parent: FixationDataset
    parent_images: np.ndarray

    def image(self, i: int) -> np.ndarray:
        return resize_image(self.parent.image(int(self.parent_images[i])), tuple(int(s) for s in self.sizes[i]))

    def subset(self, images):
        sub = super().subset(images)
        sub.parent, sub.parent_images = self.parent, self.parent_images[np.asarray(images)]
        return sub


def rescaled(dataset: FixationDataset, width: int | None, images=None) -> RescaledDataset:
    """``images`` (default all) of ``dataset`` shown ``width`` px wide (height keeps the aspect
    ratio, rounded; ``None``: each at its own size), the fixations scaled with them; image ``k`` is
    ``images[k]`` of ``dataset``. ``notes['pixels_per_degree']`` (the metrics' kernel size) is the
    parent's (:func:`dgstudy.metrics.default_kernel_size`) scaled with the median width."""
    images = np.arange(len(dataset)) if images is None else np.asarray(images, dtype=np.int64)
    sub = dataset.subset(images)
    H, W = sub.sizes[:, 0].astype(np.float64), sub.sizes[:, 1].astype(np.float64)
    if width is None:
        sizes = sub.sizes.copy()
    else:
        sizes = np.array([[round_half_up(h * width / w), width] for h, w in zip(H, W)], dtype=np.int64)
    fx = sub.fixations.copy()
    img = fx["image"].to_numpy()
    sy, sx = sizes[img, 0] / H[img], sizes[img, 1] / W[img]
    fx["x"] = np.minimum(fx["x"].to_numpy() * sx, np.nextafter(sizes[img, 1], 0))
    fx["y"] = np.minimum(fx["y"].to_numpy() * sy, np.nextafter(sizes[img, 0], 0))
    ppd = metrics.default_kernel_size(dataset) * float(np.median(sizes[:, 1] / W))
    ds = RescaledDataset(name=f"{dataset.name}-w{width or 'original'}", stimuli=sub.stimuli, sizes=sizes,
                         fixations=fx, source=f"{dataset.name} images shown {width or 'at their own'} px wide",
                         notes={"rescaled_from": dataset.name, "width": width, "pixels_per_degree": ppd})
    ds.parent, ds.parent_images = dataset, images
    return ds


def spread_images(images, n: int | None) -> np.ndarray:
    """At most ``n`` of ``images``, evenly spread over the sorted list (all if ``n`` is None)."""
    images = np.sort(np.asarray(images, dtype=np.int64))
    if n is None or n >= len(images):
        return images
    return images[np.unique(np.linspace(0, len(images) - 1, n).round().astype(np.int64))]


def scale_table(results: dict, reference, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """One row per evaluation in ``results`` ({(width, scale): TransferEvaluation} of the same
    images): IG over the run's centre bias and over the data set's own, explained IG, LL, AUC, NSS,
    with image-bootstrap intervals (:mod:`dgstudy.statistics`), and ``IG_ratio`` = IG over the run's
    centre bias relative to ``results[reference]``'s (a ratio of fixation-weighted sums over the
    same images, resampled jointly; 1 = no loss)."""
    ref = results[reference].per_image.set_index("image")
    rows = []
    for (width, scale), r in results.items():
        t = r.per_image.set_index("image").loc[ref.index]
        n = t["n_fix"].to_numpy(dtype=np.float64)
        row = {"width": width, "scale": scale, "predicted_width": int(np.median(t["predicted_width"]))}
        for col, name in (("IG_training_center_bias", "IG_run_cb"), ("IG", "IG_own_cb"), ("LL", "LL")):
            if t[col].notna().all():
                row.update(statistics.bootstrap_mean(t[col].to_numpy(), n, n_boot, seed=seed).as_dict(name))
        ratio = statistics.bootstrap_ratio(t["IG_training_center_bias"].to_numpy() * n,
                                           ref["IG_training_center_bias"].to_numpy() * n, n_boot, seed=seed)
        row.update(ratio.as_dict("IG_ratio"))
        if "IG_gold" in t and t["IG_gold"].notna().all() and t["IG"].notna().all():
            row.update(statistics.bootstrap_ratio(t["IG"].to_numpy() * n, t["IG_gold"].to_numpy() * n,
                                                  n_boot, seed=seed).as_dict("explained_IG"))
        for col in ("AUC", "NSS"):
            row.update(statistics.bootstrap_mean(t[col].to_numpy(), None, n_boot, seed=seed).as_dict(col))
        row.update(n_images=int(len(t)), n_fixations=int(n.sum()))
        rows.append(row)
    return pd.DataFrame(rows)


def scale_test(folds: dict, fold_of, dataset: FixationDataset, images, n_boot: int = 1000, seed: int = 0,
               widths=(256, None, 1600), scales=("training", "native")) -> pd.DataFrame:
    """Notebook 08's scale test of a cross-validated model: ``images`` of ``dataset`` shown at each
    of ``widths`` (None: as they are; :func:`rescaled`), each predicted by the fold that held it
    out (``folds``: {fold: model}, e.g. ``Predictor.single_folds()``; ``fold_of[i]``: image i's
    fold) at each of ``scales`` (default: the training scale and natively); :func:`scale_table` with the original size's
    default prediction as reference. ``width`` of the original rows: the images' median width."""
    images = np.asarray(images)
    original = int(np.median(dataset.sizes[images, 1]))
    results = {}
    for width in widths:
        data = rescaled(dataset, width, images)
        model_for = lambda k: folds[int(fold_of[images[k]])]      # noqa: E731 - image k of the copy
        for scale, result in evaluate_at_scales(model_for, data, scales).items():
            results[(original if width is None else width, scale)] = result
    return scale_table(results, reference=(original, "training"), n_boot=n_boot, seed=seed)
