"""Any fixation data set from a folder of images and a CSV of fixations.

:func:`load_folder` (``datasets.load('folder', images=DIR, fixations=CSV)``) reads the image
files in ``DIR`` (not recursive; :data:`dgstudy.imageio.IMAGE_SUFFIXES`; any sizes, sorted by
name) and the CSV of ``dgstudy predict --fixations`` (:mod:`dgstudy.fixation_csv`): columns
``image,x,y[,subject]``, other columns ignored; ``image`` is a file name in ``DIR`` or its stem;
``x``, ``y`` are 0-based pixel coordinates of the stored image, pixel centres at +0.5 (a MATLAB
1-based coordinate ``c`` is ``c - 0.5``); ``subject`` an integer observer id. ``fix_index`` is the
order of a subject's rows on an image in the file.

Bad input is an error naming the file (and the CSV line): a missing folder, a folder without
images, an image that does not decode or carries an EXIF rotation (stored and displayed pixels
would differ), a missing, unreadable or empty CSV, a missing column, a
row naming no image of the folder (``unknown_images='skip'``: skipped and counted in ``notes``
instead), a non-numeric ``x``/``y``/``subject``, a position outside its image. Documented, not an
error: no ``subject`` column (all fixations are one observer, ``notes['subjects']`` says so: the
gold standard needs two) and images without fixations (counted in ``notes``).

Provenance: every image file and the CSV are hashed (SHA-256) into the data set's ``checksum``;
the parse is cached (:mod:`.cache`) and reused while no file (nor the folder listing) changed.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from ..fixation_csv import AMBIGUOUS, UNKNOWN, check_fixations, read_fixation_csv
from ..imageio import IMAGE_SUFFIXES
from ..io import DataError, sha256_file
from .cache import cache_file, load_cache, save_cache
from .core import FixationDataset, image_sizes, make_fixation_table

PARSER_VERSION = 1
MAX_LISTED = 5          # bad rows quoted in one error message


def image_files(folder: Path) -> list[Path]:
    """The image files of ``folder`` (not recursive), sorted by name; DataError if none."""
    if not folder.is_dir():
        raise DataError(f"{folder}: image folder does not exist")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"{folder}: no image files ({', '.join(IMAGE_SUFFIXES)})")
    return files


def _fail(path, problems: list[str], what: str):
    """DataError: ``path: <n> <what>:`` and the first problems, one a line (without the path)."""
    problems = [p[len(f"{path}: "):] if p.startswith(f"{path}: ") else p for p in problems]
    more = f" (and {len(problems) - MAX_LISTED} more)" if len(problems) > MAX_LISTED else ""
    raise DataError(f"{path}: {len(problems)} {what}:\n  " + "\n  ".join(problems[:MAX_LISTED]) + more)


def load_folder(images: str | os.PathLike, fixations: str | os.PathLike, unknown_images: str = "error",
                name: str = "folder", pixels_per_degree: float | None = None,
                cache: bool = True) -> FixationDataset:
    """A :class:`FixationDataset` from an image folder and a fixation CSV (see the module docstring).

    ``unknown_images``: ``'error'`` (default) or ``'skip'`` rows whose image is not in the folder.
    ``name``: the data set's name (feature stores and default run names start with it).
    ``pixels_per_degree``: recorded in ``notes`` (the metrics' default kernel size is 1 degree).
    Relative paths are taken from the working directory.
    """
    if unknown_images not in ("error", "skip"):
        raise ValueError(f"unknown_images must be 'error' or 'skip', got {unknown_images!r}")
    folder, csv = Path(images).resolve(), Path(fixations).resolve()
    files = image_files(folder)
    if not csv.is_file():
        raise DataError(f"{csv}: fixation file is missing")
    key = cache_file("folder", (PARSER_VERSION, str(folder), str(csv), unknown_images, name, pixels_per_degree))
    if cache and (ds := load_cache(key)) is not None:
        return ds
    rows = read_fixation_csv(csv, files)
    if not len(rows):
        raise DataError(f"{csv}: no fixation rows (an empty CSV, or a header only)")
    unknown = rows["image"].to_numpy() == UNKNOWN
    if unknown.any() and unknown_images == "error":
        _fail(csv, [f"line {r.line}: image {r.name!r} is not in {folder}" for r in rows[unknown].itertuples()],
              "rows name images not in the folder (unknown_images='skip' skips them)")
    ambiguous = rows["image"].to_numpy() == AMBIGUOUS
    if ambiguous.any():
        _fail(csv, [f"line {r.line}: image {r.name!r} fits several files (write the file name)"
                    for r in rows[ambiguous].itertuples()], "rows name an image ambiguously")
    sizes = image_sizes([str(p) for p in files])
    _check_upright(files)
    table = check_fixations(rows, {i: tuple(s) for i, s in enumerate(sizes)}, csv)
    if table.errors:
        _fail(csv, table.errors, "bad rows")
    fx = table.fixations
    if not len(fx):
        raise DataError(f"{csv}: no fixation on any image of {folder}")
    has_subject = "subject" in _header(csv)
    table_, _ = make_fixation_table(fx["image"], fx["subject"], fx["x"], fx["y"], fx["fix_index"],
                                    sizes=sizes, origin=str(csv))
    counts = np.bincount(table_["image"].to_numpy(), minlength=len(files))
    notes = {
        "images": str(folder), "fixations": str(csv),
        "coordinates": "0-based pixels of the stored image, pixel centres at +0.5 (as the CSV gives them)",
        "images_without_fixations": int((counts == 0).sum()),
        "skipped_unknown_image_rows": int(unknown.sum()),
        "subjects": ("from the subject column" if has_subject else
                     "no subject column: all fixations are one observer (the gold standard needs two)"),
    }
    if pixels_per_degree:
        notes["pixels_per_degree"] = float(pixels_per_degree)
    ds = FixationDataset(name=name, stimuli=[str(p) for p in files], sizes=sizes, fixations=table_,
                         source=f"folder {folder} + {csv.name}",
                         checksum=_checksum(files, csv, table_), notes=notes)
    if cache:
        save_cache(key, ds, [folder, csv, *files])
    return ds


def _check_upright(files) -> None:
    """DataError for an image whose EXIF orientation tag says it is shown rotated: the CSV's pixel
    coordinates would be ambiguous (stored vs displayed pixels)."""
    from PIL import Image

    for p in files:
        with Image.open(p) as im:
            orientation = im.getexif().get(0x0112, 1)
        if orientation not in (0, 1):
            raise DataError(f"{p}: has an EXIF orientation tag ({orientation}): viewers show it rotated, "
                            "so its fixation coordinates are ambiguous; save the image upright (as it was "
                            "shown to the observers) without the tag")


def _header(csv: Path) -> list[str]:
    with open(csv, encoding="utf-8-sig", errors="replace") as f:
        return [c.strip() for c in f.readline().strip().split(",")]


def _checksum(files, csv: Path, fixations) -> str:
    """SHA-256 over every image file's name and content hash, the CSV's hash and the parsed table."""
    h = hashlib.sha256()
    for p in files:
        h.update(Path(p).name.encode() + b"\0" + sha256_file(p).encode())
    h.update(sha256_file(csv).encode())
    h.update(np.ascontiguousarray(fixations.to_numpy(dtype=np.float64)).tobytes())
    return h.hexdigest()
