"""dgstudy and pysaliency (Kümmerer's benchmark library), both ways.

pysaliency is optional: ``make env`` installs it with the test extra (``pysaliency==0.2.22``, which
needs ``setuptools<81`` for ``pkg_resources``). It still calls ``np.trapz``, which numpy 2.4
removed; :func:`import_pysaliency` aliases it to ``np.trapezoid`` (the same function) before the
import, and nothing else is changed.

- :func:`as_pysaliency_model` ``(model, dataset=None)``: a dgstudy model as a ``pysaliency.Model``,
  so pysaliency's own code scores it. A predictor (:func:`dgstudy.predict.load_model`, or anything
  with ``log_density(rgb)``) predicts whatever stimulus pysaliency hands it. A model bound to a
  data set (``log_density(i)``: a run's cross-validated predictions, maps made densities, a
  baseline) answers for that data set's images, recognised by their pixels, and for no other.
- :func:`to_pysaliency` ``(dataset)``: ``(pysaliency.FileStimuli, pysaliency.Fixations)``.
- :func:`from_pysaliency` ``(stimuli, fixations, name)``: a
  :class:`~dgstudy.datasets.FixationDataset`, so a pysaliency data set flows into the whole chain.

Coordinates agree: both put a fixation at ``(x, y)`` in pixel ``(int(y), int(x))`` of the stored
image (pysaliency's ``x_int``/``y_int``, dgstudy's ``floor``), so the same model gets the same
log-likelihood from both (tests/test_pysaliency.py).
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from PIL import Image

from .datasets.core import FixationDataset, image_sizes, make_fixation_table
from .io import DataError, atomic_path
from .paths import cache_dir


def import_pysaliency():
    """``import pysaliency`` with numpy 2's ``trapz`` alias restored (module docstring); an
    ImportError that says how to install it."""
    if not hasattr(np, "trapz"):
        np.trapz = np.trapezoid
    try:
        import pysaliency
    except ImportError as e:
        raise ImportError("pysaliency is not installed: pip install 'pysaliency==0.2.22' 'setuptools<81' "
                          "(make env installs it with the test extra)") from e
    return pysaliency


def to_pysaliency(dataset: FixationDataset):
    """``(pysaliency.FileStimuli, pysaliency.Fixations)`` of ``dataset``: its image files, and its
    fixations (``n`` = image, ``subjects`` = subject; positions unchanged)."""
    ps = import_pysaliency()
    stimuli = ps.FileStimuli([str(p) for p in dataset.stimuli])
    fx = dataset.fixations
    fixations = ps.Fixations.create_without_history(fx["x"].to_numpy(), fx["y"].to_numpy(),
                                                    fx["image"].to_numpy(), subjects=fx["subject"].to_numpy())
    return stimuli, fixations


def from_pysaliency(stimuli, fixations, name: str = "pysaliency", folder=None) -> FixationDataset:
    """A :class:`~dgstudy.datasets.FixationDataset` of pysaliency ``stimuli`` and ``fixations``.

    ``FileStimuli`` keep their files; other stimuli (arrays in memory) are written as PNG to
    ``folder`` (default ``cache_dir()/pysaliency-<hash of the stimuli>/``). ``fix_index`` is a
    fixation's position among its subject's fixations on the image, in the table's order;
    ``onset`` is pysaliency's ``t`` (unknown, NaN, where all are 0, pysaliency's default). Fixations outside their image are dropped and counted
    (``notes['dropped_outside']``), as every loader does.
    """
    if hasattr(stimuli, "filenames"):
        paths = [str(Path(p).resolve()) for p in stimuli.filenames]
    else:
        ids = "".join(str(s) for s in stimuli.stimulus_ids)
        folder = Path(folder) if folder else cache_dir() / f"pysaliency-{hashlib.sha256(ids.encode()).hexdigest()[:16]}"
        paths = []
        for k in range(len(stimuli)):
            path = folder / f"{k:05d}.png"
            if not path.exists():
                a = np.asarray(stimuli.stimuli[k])
                if a.dtype != np.uint8:
                    raise DataError(f"{name}: stimulus {k} is {a.dtype}; only 8-bit images can be written as PNG")
                with atomic_path(path, suffix=".png") as tmp:
                    Image.fromarray(a).save(tmp, format="PNG")
            paths.append(str(path))
    sizes = image_sizes(paths)
    image = np.asarray(fixations.n, dtype=np.int64)
    if len(image) and (image.min() < 0 or image.max() >= len(paths)):
        raise DataError(f"{name}: fixations name image {image.max()} but there are {len(paths)} stimuli")
    subject = np.asarray(getattr(fixations, "subjects", np.zeros(len(image))), dtype=np.int64)
    order = np.lexsort((np.arange(len(image)), subject, image))
    fix_index = np.empty(len(image), dtype=np.int64)
    key = image[order] * (subject.max(initial=0) + 1) + subject[order]
    starts = np.r_[0, np.flatnonzero(np.diff(key)) + 1]
    counts = np.diff(np.r_[starts, len(key)])
    fix_index[order] = np.arange(len(key)) - np.repeat(starts, counts)
    onset = np.asarray(fixations.t, dtype=np.float64) if hasattr(fixations, "t") else None
    if onset is not None and not onset.any():      # pysaliency's default t: unknown, not 0 ms
        onset = None
    table, dropped = make_fixation_table(image, subject, np.asarray(fixations.x, dtype=np.float64),
                                         np.asarray(fixations.y, dtype=np.float64), fix_index, onset=onset,
                                         sizes=sizes, origin=name)
    return FixationDataset(name=name, stimuli=paths, sizes=sizes, fixations=table, source="pysaliency",
                           notes={"dropped_outside": dropped})


def as_pysaliency_model(model, dataset: FixationDataset | None = None, caching: bool = True):
    """``model`` as a ``pysaliency.Model`` (module docstring): with ``dataset`` (a model with
    ``log_density(i)``) the stimulus is looked up among the data set's images by its pixels
    (pysaliency's ``get_image_hash`` of the image as pysaliency reads it); without, ``model`` must
    predict an image: ``log_density(rgb)``. ``caching``: pysaliency's (each stimulus's log density
    kept in memory after its first use)."""
    ps = import_pysaliency()
    from pysaliency.datasets import get_image_hash

    from .imageio import read_rgb

    index = None
    if dataset is not None:
        stimuli = ps.FileStimuli([str(p) for p in dataset.stimuli])
        index = {sid: k for k, sid in enumerate(stimuli.stimulus_ids)}

    class DgstudyModel(ps.Model):
        def _log_density(self, stimulus):
            if index is None:
                return np.asarray(model.log_density(read_rgb(np.asarray(stimulus))), dtype=np.float64)
            k = index.get(get_image_hash(stimulus))
            if k is None:
                raise ValueError(f"this model is {dataset.name}'s cross-validated predictions; the "
                                 f"stimulus ({np.shape(stimulus)}) is not one of its images")
            return np.asarray(model.log_density(k), dtype=np.float64)

    return DgstudyModel(caching=caching)
