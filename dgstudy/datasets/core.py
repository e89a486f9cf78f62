"""The shared pieces of every data set: :class:`FixationDataset` and its fixation table.

- :class:`FixationDataset`: stimuli (absolute paths, ``sizes`` as (height, width)), one fixation
  table, a content ``checksum`` and the loader's ``notes``.
- :func:`make_fixation_table` (validated table, fixations outside the image dropped and counted),
  :func:`content_checksum`, :func:`read_image` (stimuli decoded as stored), :func:`image_sizes`.

Coordinates: ``x`` is the column and ``y`` the row in stimulus pixels, 0-based and continuous,
pixel centres at integer + 0.5; a fixation falls in pixel ``(floor(y), floor(x))``. The table has
the columns :data:`COLUMNS`: ``image`` (index into ``stimuli``), ``subject`` (0-based), ``x``,
``y``, ``fix_index`` (0-based position in its trial), ``onset`` and ``duration`` (ms, NaN if
unknown), sorted by image, subject, fix_index. See docs/datasets.md.
"""
from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from ..imageio import read_rgb
from ..io import DataError

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
            lines.append(f"  source: {_without_machine_paths(self.source)}")
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


def _without_machine_paths(text: str) -> str:
    """``text`` with each absolute path cut to its last two parts (``.../datasets/osie``): a summary
    printed in a committed notebook names no folder of the machine that ran it."""
    return re.sub(r"(?<![\w.:/])/(?:[^\s/]+/)*([^\s/]+/[^\s/]+)", r".../\1", text)


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


def image_sizes(paths) -> np.ndarray:
    """(n, 2) int array of (height, width) read from the image headers (fast; no decoding)."""
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
