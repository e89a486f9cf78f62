"""Fixation datasets: stimuli plus one table of fixations.

Coordinate convention (used everywhere in dgstudy)
--------------------------------------------------
``x`` is the column and ``y`` the row, in pixels of the stimulus file, 0-based and
continuous, with **pixel centres at integer + 0.5**: pixel ``(row i, column j)``
covers ``j <= x < j + 1`` and ``i <= y < i + 1``. The pixel a fixation falls in is
therefore ``(floor(y), floor(x))``. A MATLAB/1-based pixel coordinate ``c`` (whose
pixel centre is at ``c``) becomes ``c - 0.5``.

A dataset keeps only fixations inside the image; the loaders count and report the
ones they drop (``dataset.notes``).

The fixation table (a pandas DataFrame, one row per fixation) has the columns

=============  ==============================================================
``image``      index into ``dataset.stimuli`` (int)
``subject``    observer id (int, 0-based)
``x``, ``y``   position (float, convention above)
``fix_index``  position of the fixation within its trial (0-based, int)
``onset``      onset time in ms from stimulus onset (float, NaN if unknown)
``duration``   duration in ms (float, NaN if unknown)
=============  ==============================================================
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from .io import DataError

COLUMNS = ["image", "subject", "x", "y", "fix_index", "onset", "duration"]


@dataclass
class FixationDataset:
    """Stimuli (image files and sizes) and their fixation table."""

    name: str
    stimuli: list[str]          # absolute paths of the image files
    sizes: np.ndarray           # (n_images, 2) int: height, width
    fixations: pd.DataFrame     # columns COLUMNS, sorted by image, subject, fix_index
    source: str = ""            # where the files came from
    checksum: str = ""          # content hash of stimuli + fixations (provenance)
    notes: dict = field(default_factory=dict)   # loader decisions, e.g. dropped fixations

    def __post_init__(self):
        self.sizes = np.asarray(self.sizes, dtype=np.int64).reshape(-1, 2)
        if len(self.sizes) != len(self.stimuli):
            raise DataError(f"{self.name}: {len(self.stimuli)} stimuli but {len(self.sizes)} sizes")
        missing = [c for c in COLUMNS if c not in self.fixations.columns]
        if missing:
            raise DataError(f"{self.name}: fixation table lacks columns {missing}")
        self.fixations = self.fixations[COLUMNS].reset_index(drop=True)
        if not self.checksum:
            self.checksum = content_checksum(self.stimuli, self.fixations)

    # -- summaries -------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.stimuli)

    @property
    def n_images(self) -> int:
        return len(self.stimuli)

    @property
    def n_fixations(self) -> int:
        return len(self.fixations)

    @property
    def subjects(self) -> np.ndarray:
        return np.unique(self.fixations["subject"].to_numpy())

    def __repr__(self) -> str:
        h, w = self.sizes[:, 0], self.sizes[:, 1]
        size = (f"{w[0]}x{h[0]}" if len(self) and (h == h[0]).all() and (w == w[0]).all()
                else f"{w.min()}-{w.max()} x {h.min()}-{h.max()}")
        lines = [f"FixationDataset {self.name!r}: {self.n_images} images ({size} px), "
                 f"{len(self.subjects)} subjects, {self.n_fixations} fixations "
                 f"({self.n_fixations / max(self.n_images, 1):.1f} per image)"]
        if self.source:
            lines.append(f"  source: {self.source}")
        for k, v in self.notes.items():
            if np.isscalar(v) or isinstance(v, str):
                lines.append(f"  {k}: {v}")
        return "\n".join(lines)

    __str__ = __repr__

    # -- access ----------------------------------------------------------------
    def image(self, i: int) -> np.ndarray:
        """Image ``i`` as an (H, W, 3) uint8 RGB array."""
        return read_image(self.stimuli[i], expected_size=tuple(self.sizes[i]))

    def fixations_of(self, i: int) -> pd.DataFrame:
        fx = self.fixations
        return fx[fx["image"].to_numpy() == i]

    def xy_int(self) -> tuple[np.ndarray, np.ndarray]:
        """Pixel indices (column, row) of every fixation, per the convention above."""
        return (np.floor(self.fixations["x"].to_numpy()).astype(np.int64),
                np.floor(self.fixations["y"].to_numpy()).astype(np.int64))

    def subset(self, images) -> "FixationDataset":
        """A dataset of only ``images`` (in that order), re-indexed 0..len-1.

        ``notes['parent_images']`` records the original indices.
        """
        images = np.asarray(images, dtype=np.int64)
        remap = np.full(len(self), -1, dtype=np.int64)
        remap[images] = np.arange(len(images))
        fx = self.fixations
        new_index = remap[fx["image"].to_numpy()]
        fx = fx[new_index >= 0].copy()
        fx["image"] = new_index[new_index >= 0]
        fx = fx.sort_values(["image", "subject", "fix_index"], kind="stable")
        parent = np.asarray(self.notes.get("parent_images", np.arange(len(self))))[images]
        return replace(self, stimuli=[self.stimuli[i] for i in images], sizes=self.sizes[images],
                       fixations=fx, checksum="",
                       notes={**self.notes, "parent_images": parent})


def content_checksum(stimuli, fixations: pd.DataFrame) -> str:
    """SHA-256 over the stimulus file names, sizes on disk and the fixation table."""
    h = hashlib.sha256()
    for p in stimuli:
        h.update(os.path.basename(p).encode())
        try:
            h.update(str(os.path.getsize(p)).encode())
        except OSError:
            pass
    h.update(np.ascontiguousarray(fixations[COLUMNS].to_numpy(dtype=np.float64)).tobytes())
    return h.hexdigest()


def read_image(path: str | os.PathLike, expected_size: tuple[int, int] | None = None) -> np.ndarray:
    """Decode a stimulus to (H, W, 3) uint8 RGB as stored (no EXIF rotation: the eye trackers
    showed the stored pixels), with a clear error naming the file; see :func:`dgstudy.imageio.read_rgb`."""
    from .imageio import read_rgb

    arr = read_rgb(path, exif_transpose=False)
    if expected_size is not None and arr.shape[:2] != tuple(expected_size):
        raise DataError(f"{path}: image is {arr.shape[1]}x{arr.shape[0]} px, "
                        f"expected {expected_size[1]}x{expected_size[0]}")
    return arr


def make_fixation_table(image, subject, x, y, fix_index, onset=None, duration=None,
                        sizes=None, origin: str = "") -> tuple[pd.DataFrame, int]:
    """Build a validated fixation table; drop fixations outside the image.

    Returns the table and the number of fixations dropped for lying outside.
    Raises DataError (naming ``origin``) for mismatched lengths or non-finite positions.
    """
    cols = {"image": image, "subject": subject, "x": x, "y": y, "fix_index": fix_index}
    n = len(np.asarray(x))
    for k, v in cols.items():
        if np.asarray(v).shape != (n,):
            raise DataError(f"{origin}: fixation column {k!r} has shape {np.asarray(v).shape}, expected ({n},)")
    df = pd.DataFrame({
        "image": np.asarray(image, dtype=np.int64),
        "subject": np.asarray(subject, dtype=np.int64),
        "x": np.asarray(x, dtype=np.float64),
        "y": np.asarray(y, dtype=np.float64),
        "fix_index": np.asarray(fix_index, dtype=np.int64),
        "onset": np.full(n, np.nan) if onset is None else np.asarray(onset, dtype=np.float64),
        "duration": np.full(n, np.nan) if duration is None else np.asarray(duration, dtype=np.float64),
    })
    if not np.isfinite(df[["x", "y"]].to_numpy()).all():
        bad = int((~np.isfinite(df[["x", "y"]].to_numpy())).any(axis=1).sum())
        raise DataError(f"{origin}: {bad} fixations have non-finite coordinates")
    dropped = 0
    if sizes is not None:
        sizes = np.asarray(sizes)
        h = sizes[df["image"].to_numpy(), 0]
        w = sizes[df["image"].to_numpy(), 1]
        inside = (df["x"] >= 0) & (df["x"] < w) & (df["y"] >= 0) & (df["y"] < h)
        dropped = int((~inside).sum())
        df = df[inside.to_numpy()]
    df = df.sort_values(["image", "subject", "fix_index"], kind="stable").reset_index(drop=True)
    return df, dropped


# -- registry --------------------------------------------------------------------
_LOADERS: dict[str, Callable[..., FixationDataset]] = {}


def register(name: str):
    def deco(fn):
        _LOADERS[name] = fn
        return fn
    return deco


def available() -> list[str]:
    return sorted(_LOADERS)


def load(name: str, n_images: int | None = None, **options) -> FixationDataset:
    """Load a dataset by name: ``'osie'``, ``'mit1003'`` or ``'synthetic'``.

    ``n_images`` keeps only the first N images (in the dataset's order), for quick runs; the
    subset keeps the name but has its own ``checksum``. Other options are passed to the loader:
    :func:`dgstudy.osie.load_osie` (``local_dir``, ``download``, ``initial_fixation``, ...),
    :func:`dgstudy.mit1003.load_mit1003` (same, plus ``params`` of the fixation detector) and
    :func:`load_synthetic`. Real datasets are parsed once and then read from ``cache_dir()``.
    """
    if name not in _LOADERS:
        raise KeyError(f"unknown dataset {name!r}; available: {', '.join(available())}")
    ds = _LOADERS[name](**options)
    if n_images is not None and n_images < len(ds):
        ds = ds.subset(np.arange(n_images))
    return ds


@register("osie")
def _load_osie(**options) -> FixationDataset:
    """OSIE (700 images, 15 observers); see :func:`dgstudy.osie.load_osie` for the options."""
    from .osie import load_osie
    return load_osie(**options)


@register("mit1003")
def _load_mit1003(**options) -> FixationDataset:
    """MIT1003 (1003 images, 15 observers); see :func:`dgstudy.mit1003.load_mit1003`."""
    from .mit1003 import load_mit1003
    return load_mit1003(**options)


# -- parsed-dataset cache ----------------------------------------------------------
# A loader parses its source files once and stores the result in ``cache_dir()`` as one
# ``.npz`` (written atomically). The cache file name carries a key over the loader
# version, the options and the source location; inside, the size and mtime of every
# source file are recorded, so a later load only ``stat``s the files (no re-hashing) and
# falls back to a full parse if any of them changed.

def cache_file(name: str, key_parts) -> Path:
    """Where the parsed cache of dataset ``name`` for ``key_parts`` (any repr-able value) lives."""
    from .paths import cache_dir

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
    import json

    from .io import _json_default, atomic_path

    source_files = [str(f) for f in source_files]
    arrays = {f"fx_{c}": ds.fixations[c].to_numpy() for c in COLUMNS}
    with atomic_path(path, suffix=".npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, sizes=ds.sizes, stimuli=np.array(ds.stimuli, dtype=str),
                     meta=np.array(json.dumps({"name": ds.name, "source": ds.source,
                                               "checksum": ds.checksum, "notes": ds.notes},
                                              default=_json_default)),
                     source_files=np.array(source_files, dtype=str),
                     source_stat=_stat_signature(source_files), **arrays)


def load_cache(path: str | os.PathLike) -> FixationDataset | None:
    """The cached dataset at ``path``, or None if absent, unreadable or any source file changed."""
    import json

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


def image_sizes(paths) -> np.ndarray:
    """(n, 2) int array of (height, width) read from the image headers (fast; no decoding)."""
    from PIL import Image, UnidentifiedImageError

    sizes = np.zeros((len(paths), 2), dtype=np.int64)
    for k, p in enumerate(paths):
        try:
            with Image.open(p) as im:
                w, h = im.size
        except FileNotFoundError as e:
            raise DataError(f"{p}: image file is missing") from e
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
            raise DataError(f"{p}: image does not decode ({e})") from e
        sizes[k] = h, w
    return sizes


# -- splits ------------------------------------------------------------------------
def kfold(n_images: int, k: int = 10, seed: int = 0) -> list[np.ndarray]:
    """Deterministic image-wise K-fold split: the sorted test images of each fold.

    The folds partition ``range(n_images)``; sizes differ by at most one.
    """
    if not 2 <= k <= n_images:
        raise ValueError(f"need 2 <= k <= n_images, got k={k}, n_images={n_images}")
    perm = np.random.default_rng(seed).permutation(n_images)
    return [np.sort(part) for part in np.array_split(perm, k)]


def fold_split(n_images: int, fold: int, k: int = 10, seed: int = 0
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train, validation, test) images for cross-validation fold ``fold``.

    Test is fold ``fold``; validation (for early stopping) is fold ``(fold + 1) % k``;
    training is every other fold. The three are disjoint and cover all images.
    """
    folds = kfold(n_images, k, seed)
    test, val = folds[fold], folds[(fold + 1) % k]
    train = np.sort(np.concatenate([f for j, f in enumerate(folds) if j not in (fold, (fold + 1) % k)]))
    return train, val, test


# -- synthetic ---------------------------------------------------------------------
class SyntheticDataset(FixationDataset):
    """A generated dataset whose true fixation density is known.

    ``log_density(i)`` returns the natural-log density (sums to 1 over pixels) from
    which the fixations of image ``i`` were drawn, so it is also a perfect model.
    """

    true_log_densities: list[np.ndarray]

    def log_density(self, i: int) -> np.ndarray:
        return self.true_log_densities[i]

    def subset(self, images):
        sub = super().subset(images)  # dataclasses.replace keeps the subclass
        sub.true_log_densities = [self.true_log_densities[i] for i in np.asarray(images)]
        return sub


def synthetic_log_density(img: np.ndarray, beta: float = 4.0, center_sigma: float = 0.3) -> np.ndarray:
    """The generating density of the synthetic set: brighter red = more fixations, times a centre bias."""
    h, w = img.shape[:2]
    red = img[..., 0].astype(np.float64) / 255.0
    yy, xx = np.mgrid[0:h, 0:w]
    cb = -0.5 * (((xx + 0.5) / w - 0.5) ** 2 + ((yy + 0.5) / h - 0.5) ** 2) / center_sigma ** 2
    logit = beta * red + cb
    logit -= logit.max()
    return logit - np.log(np.exp(logit).sum())


@register("synthetic")
def load_synthetic(n_images: int = 20, size: tuple[int, int] = (48, 64), n_subjects: int = 5,
                   fixations_per_subject: int = 8, seed: int = 0, beta: float = 4.0,
                   folder: str | os.PathLike | None = None) -> SyntheticDataset:
    """Seeded generated images (smooth colour blobs) with fixations drawn from a known density.

    Images are written as PNG to ``folder`` (default: ``data/cache/synthetic-<hash>/``) so that
    they behave like any other stimuli. ``size`` is (height, width).
    """
    from PIL import Image
    from scipy.ndimage import gaussian_filter

    from .paths import cache_dir

    h, w = size
    key = hashlib.sha256(repr((n_images, size, n_subjects, fixations_per_subject, seed, beta)).encode()).hexdigest()[:12]
    folder = Path(folder) if folder else cache_dir() / f"synthetic-{key}"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    stimuli, logds, rows = [], [], []
    for i in range(n_images):
        noise = rng.normal(size=(h, w, 3))
        img = np.stack([gaussian_filter(noise[..., c], sigma=max(h, w) / 10) for c in range(3)], -1)
        img = (img - img.min()) / (np.ptp(img) + 1e-12)
        img = (255 * img).astype(np.uint8)
        path = folder / f"{i:04d}.png"
        if not path.exists():
            from .io import atomic_path
            with atomic_path(path, suffix=".png") as tmp:
                Image.fromarray(img).save(tmp, format="PNG")
        stimuli.append(str(path))
        logd = synthetic_log_density(img, beta=beta)
        logds.append(logd)
        p = np.exp(logd).ravel()
        for s in range(n_subjects):
            idx = rng.choice(p.size, size=fixations_per_subject, p=p / p.sum())
            r, c = np.divmod(idx, w)
            jitter = rng.uniform(0, 1, size=(2, fixations_per_subject))
            for k in range(fixations_per_subject):
                rows.append((i, s, c[k] + jitter[0, k], r[k] + jitter[1, k], k))
    arr = np.array(rows, dtype=np.float64).reshape(-1, 5)
    sizes = np.tile([h, w], (n_images, 1))
    fx, _ = make_fixation_table(arr[:, 0], arr[:, 1], arr[:, 2], arr[:, 3], arr[:, 4], sizes=sizes,
                                origin="synthetic")
    ds = SyntheticDataset(name="synthetic", stimuli=stimuli, sizes=sizes, fixations=fx,
                          source=f"generated (seed={seed})",
                          notes={"generator": "red-channel saliency x centre bias", "beta": beta})
    ds.true_log_densities = logds
    return ds
