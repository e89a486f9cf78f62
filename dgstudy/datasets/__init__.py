"""Fixation data sets by name: ``datasets.load(name, n_images=None, **options)``, ``name`` one of
``'osie'``, ``'mit1003'``, ``'synthetic'``, ``'folder'``.

A data set is a :class:`FixationDataset`: stimuli (absolute paths, ``sizes`` as (height, width))
and one fixation table with the columns :data:`COLUMNS` (``image``, ``subject``, ``x``, ``y``,
``fix_index``, ``onset``, ``duration``). ``x`` is the column and ``y`` the row in stimulus pixels,
0-based and continuous, **pixel centres at integer + 0.5**: a fixation falls in pixel
``(floor(y), floor(x))``; a MATLAB 1-based pixel coordinate ``c`` becomes ``c - 0.5``. Only
fixations inside the image are kept (the loaders count the dropped ones in ``dataset.notes``).

Modules: :mod:`.core` (the dataset class, table, checksum, image reading), :mod:`.cache` (the
parsed-dataset cache), :mod:`.splits` (:func:`kfold`, :func:`fold_split`), :mod:`.pixels` (the pixel convention: a fixation's
pixel or grid cell, the one rounding rule), one module per data
set (:mod:`.osie`, :mod:`.mit1003` with its detector :mod:`.mit1003_detector`,
:mod:`.synthetic`, :mod:`.folder`: any folder of images with a fixation CSV). Everything public is
re-exported here. Importing this package does not import torch. Reference and the loaders'
decisions: docs/datasets.md.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from . import folder, mit1003, osie, synthetic
from .cache import cache_file, load_cache, save_cache
from .core import (COLUMNS, FixationDataset, content_checksum, image_sizes, make_fixation_table,
                   read_image)
from .pixels import cells, fixation_cells, flat_index, image_fixation_index, round_half_up
from .splits import fold_split, kfold
from .synthetic import SyntheticDataset, load_synthetic, synthetic_log_density

__all__ = ["COLUMNS", "FixationDataset", "SyntheticDataset", "available", "cache_file", "cells",
           "fixation_cells", "flat_index", "image_fixation_index", "round_half_up",
           "content_checksum", "fold_split", "image_sizes", "kfold", "load", "load_cache",
           "load_synthetic", "loader", "make_fixation_table", "read_image", "register", "save_cache",
           "synthetic_log_density"]

_LOADERS: dict[str, Callable[..., FixationDataset]] = {}


def register(name: str):
    """Decorator: make ``fn(**options) -> FixationDataset`` loadable as ``load(name, ...)``."""
    def deco(fn):
        _LOADERS[name] = fn
        return fn
    return deco


def loader(name: str) -> Callable[..., FixationDataset]:
    """The function registered as ``name`` (its signature lists the data set's options)."""
    if name not in _LOADERS:
        raise KeyError(f"unknown dataset {name!r}; available: {', '.join(available())}")
    return _LOADERS[name]


def available() -> list[str]:
    return sorted(_LOADERS)


def load(name: str, n_images: int | None = None, **options) -> FixationDataset:
    """Load a dataset by name: ``'osie'``, ``'mit1003'``, ``'synthetic'`` or ``'folder'``.

    ``n_images`` keeps only the first N images (in the dataset's order), for quick runs; the
    subset keeps the name but has its own ``checksum``. Other options are passed to the loader:
    :func:`dgstudy.datasets.osie.load_osie` (``local_dir``, ``download``, ``initial_fixation``,
    ...), :func:`dgstudy.datasets.mit1003.load_mit1003` (same, plus ``params`` of the fixation
    detector), :func:`dgstudy.datasets.synthetic.load_synthetic` and
    :func:`dgstudy.datasets.folder.load_folder` (``images``, ``fixations``, ...). Real datasets are
    parsed once and then read from ``cache_dir()``.
    """
    if name not in _LOADERS:
        raise KeyError(f"unknown dataset {name!r}; available: {', '.join(available())}")
    ds = _LOADERS[name](**options)
    if n_images is not None and n_images < len(ds):
        ds = ds.subset(np.arange(n_images))
    return ds


register("osie")(osie.load_osie)
register("mit1003")(mit1003.load_mit1003)
register("synthetic")(synthetic.load_synthetic)
register("folder")(folder.load_folder)
