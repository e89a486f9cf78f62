"""Fixations given as CSV to ``dgstudy predict --fixations``: reading and checking.

Columns ``image,x,y[,subject]``; ``image`` is a file name as given on the command line or its stem;
``x``, ``y`` follow :mod:`dgstudy.datasets` (0-based pixels, pixel centres at integer + 0.5).
Every problem is reported with the file and CSV line; valid rows are kept.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from .io import DataError

# ----------------------------------------------------------------------------------------------
# Fixation CSV
# ----------------------------------------------------------------------------------------------
REQUIRED_CSV_COLUMNS = ("image", "x", "y")


@dataclass
class FixationTable:
    """Valid fixations (``image`` = index into the image list) and the problems found."""

    fixations: pd.DataFrame                    # columns image (int), subject, x, y, fix_index
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


UNKNOWN, AMBIGUOUS = -2, -1


def read_fixation_csv(path, images: Sequence[Path], given: Sequence[str] | None = None) -> pd.DataFrame:
    """Read an ``image,x,y[,subject]`` CSV and match each row to one of ``images``.

    ``image`` may be the image argument as given, its file name or its stem. Returns one row per CSV
    row: ``line`` (1-based line in the file), ``name``, ``image`` (index into ``images``;
    ``UNKNOWN`` = -2 if no image has that name, ``AMBIGUOUS`` = -1 if several have), ``x``, ``y``,
    ``subject`` (floats, NaN where not a number) and ``x_text``, ``y_text`` as written. A file that
    is missing, unreadable or lacks a column raises :class:`DataError` naming it.
    """
    path = Path(path)
    try:
        df = pd.read_csv(path, dtype=str, skipinitialspace=True, keep_default_na=False)
    except FileNotFoundError as e:
        raise DataError(f"{path}: fixation file is missing") from e
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not a readable CSV ({e})") from e
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in REQUIRED_CSV_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; need image,x,y[,subject] "
                        f"(found {list(df.columns)})")
    lookup = _name_lookup(images, given)
    names = df["image"].str.strip()
    subject = df["subject"] if "subject" in df.columns else pd.Series(["0"] * len(df))
    return pd.DataFrame({
        "line": np.arange(len(df)) + 2,               # the header is line 1
        "name": names.to_numpy(),
        "image": np.array([lookup.get(n, UNKNOWN) for n in names], dtype=np.int64),
        "x": pd.to_numeric(df["x"], errors="coerce").to_numpy(np.float64),
        "y": pd.to_numeric(df["y"], errors="coerce").to_numpy(np.float64),
        "subject": pd.to_numeric(subject, errors="coerce").to_numpy(np.float64),
        "x_text": df["x"].to_numpy(), "y_text": df["y"].to_numpy(),
    })


def check_fixations(rows: pd.DataFrame, sizes: dict[int, tuple[int, int]], path="fixations") -> FixationTable:
    """The valid fixations among ``rows`` (from :func:`read_fixation_csv`) and one error per bad row.

    ``sizes`` maps image index -> (height, width) of the images that decoded; rows of other images
    are skipped silently (their image is reported on its own). Rows naming no given image are
    counted in ``notes``. Bad rows: an ambiguous name, a non-numeric x/y/subject, a position
    outside the image (need ``0 <= x < width``, ``0 <= y < height``).
    """
    table = FixationTable(fixations=pd.DataFrame())
    keep = np.zeros(len(rows), dtype=bool)
    unknown: dict[str, int] = {}
    for r, row in enumerate(rows.itertuples(index=False)):
        where = f"{path}: line {row.line} (image {row.name!r}, x={row.x_text!r}, y={row.y_text!r})"
        if row.image == UNKNOWN:
            unknown[row.name] = unknown.get(row.name, 0) + 1
        elif row.image == AMBIGUOUS:
            table.errors.append(f"{where}: the name fits several of the images given; write the path as given")
        elif row.image not in sizes:
            pass
        elif not (np.isfinite(row.x) and np.isfinite(row.y)):
            table.errors.append(f"{where}: x and y must be numbers")
        elif not np.isfinite(row.subject):
            table.errors.append(f"{where}: subject must be a number")
        else:
            h, w = sizes[row.image]
            if 0 <= row.x < w and 0 <= row.y < h:
                keep[r] = True
            else:
                table.errors.append(f"{where}: outside the {w}x{h} image (need 0 <= x < {w} and 0 <= y < {h}; "
                                    "0-based pixel coordinates, pixel centres at +0.5)")
    if unknown:
        names = sorted(unknown)
        table.notes.append(f"{path}: {sum(unknown.values())} rows name images not given here, ignored "
                           f"({', '.join(names[:5])}{' ...' if len(names) > 5 else ''})")
    fx = rows.loc[keep, ["image", "subject", "x", "y"]].reset_index(drop=True)
    fx["subject"] = fx["subject"].astype(np.int64)
    fx["fix_index"] = fx.groupby(["image", "subject"]).cumcount().astype(np.int64)
    table.fixations = fx
    return table


def _name_lookup(images: Sequence[Path], given: Sequence[str] | None) -> dict[str, int]:
    """{name: image index}; -1 marks a name shared by several images."""
    given = list(given) if given is not None else [str(p) for p in images]
    lookup: dict[str, int] = {}
    for i, (p, g) in enumerate(zip(images, given)):
        for name in {str(g), str(p), Path(p).name, Path(p).stem}:
            if lookup.get(name, i) != i:
                lookup[name] = -1
            else:
                lookup[name] = i
    return lookup


