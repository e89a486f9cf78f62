"""The parsed-dataset cache: a loader parses its source files once, later loads read one ``.npz``.

- :func:`cache_file` ``(name, key_parts)``: where the cache of a loader's options lives (in
  ``dgstudy.paths.cache_dir()``; the file name carries a hash of ``repr(key_parts)``, so the key
  should hold the parser version, the options and the source location).
- :func:`save_cache` ``(path, dataset, source_files)`` (atomic) and :func:`load_cache` ``(path)``:
  the latter returns None when the file is absent or damaged or when the size or mtime of any
  recorded source file changed (files are only ``stat``-ed, not hashed).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from ..io import atomic_path, json_default
from ..paths import cache_dir
from .core import COLUMNS, FixationDataset


def cache_file(name: str, key_parts) -> Path:
    """Where the parsed cache of dataset ``name`` for ``key_parts`` (any repr-able value) lives."""
    key = hashlib.sha256(repr(key_parts).encode()).hexdigest()[:16]
    return cache_dir() / f"{name}-{key}.npz"


def _stat_signature(files) -> np.ndarray:
    out = np.zeros((len(files), 2), dtype=np.int64)
    for k, f in enumerate(files):
        st = os.stat(f)
        out[k] = st.st_size, st.st_mtime_ns
    return out


def save_cache(path: str | os.PathLike, ds: FixationDataset, source_files) -> None:
    """Store ``ds`` (table, sizes, stimulus paths, notes) and the stat of ``source_files``."""
    source_files = [str(f) for f in source_files]
    arrays = {f"fx_{c}": ds.fixations[c].to_numpy() for c in COLUMNS}
    with atomic_path(path, suffix=".npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, sizes=ds.sizes, stimuli=np.array(ds.stimuli, dtype=str),
                     meta=np.array(json.dumps({"name": ds.name, "source": ds.source,
                                               "checksum": ds.checksum, "notes": ds.notes},
                                              default=json_default)),
                     source_files=np.array(source_files, dtype=str),
                     source_stat=_stat_signature(source_files), **arrays)


def load_cache(path: str | os.PathLike) -> FixationDataset | None:
    """The cached dataset at ``path``, or None if absent, unreadable or any source file changed."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            files = [str(f) for f in z["source_files"]]
            try:
                if not np.array_equal(_stat_signature(files), z["source_stat"]):
                    return None
            except OSError:
                return None
            meta = json.loads(str(z["meta"]))
            fx = pd.DataFrame({c: z[f"fx_{c}"] for c in COLUMNS})
            sizes = z["sizes"]
            stimuli = [str(s) for s in z["stimuli"]]
    except (OSError, ValueError, KeyError):
        return None  # a damaged cache is simply rebuilt
    return FixationDataset(name=meta["name"], stimuli=stimuli, sizes=sizes, fixations=fx,
                           source=meta["source"], checksum=meta["checksum"], notes=meta["notes"])
