"""OSIE (Xu et al. 2014): 700 images of 800x600 px, 15 observers, 3 s free viewing.

:func:`load_osie` (``datasets.load('osie', ...)``) reads ``fixations.mat`` + ``stimuli/<name>.jpg``
from the first of: ``local_dir``, ``$DGSTUDY_OSIE_DIR``, the workplace mirror :data:`MIRROR`, else
a download from :data:`BASE_URL` into ``data_dir()/osie/`` (``download=False``: an error instead).
Every file is verified once against ``dgstudy/checksums/osie.sha256``; the parse is cached.

Conventions a caller sees: ``x = fix_x - 0.5``, ``y = fix_y - 0.5`` (MATLAB 1-based -> dgstudy);
``duration`` in ms, ``onset`` NaN (unknown); subject = position in the file (0-based); the first
fixation of each trial is dropped unless ``initial_fixation=True``, and ``fix_index`` keeps the
recorded position (so by default the kept ones start at 1). Why, with the measurements:
docs/datasets.md.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from scipy.io import loadmat
from tqdm.auto import tqdm

from ..io import DataError, fetch, read_sha256sums, sha256_file
from ..paths import REPO_ROOT, data_dir
from .cache import cache_file, load_cache, save_cache
from .core import FixationDataset, image_sizes, make_fixation_table

BASE_URL = "https://raw.githubusercontent.com/NUS-VIP/predicting-human-gaze-beyond-pixels/master/data"
CHECKSUMS = Path(__file__).resolve().parents[1] / "checksums" / "osie.sha256"
MIRROR = REPO_ROOT.parent / "shared" / "datasets" / "osie"
ENV_VAR = "DGSTUDY_OSIE_DIR"
FIXATIONS_FILE = "fixations.mat"
PARSER_VERSION = 2


def upstream_url(name: str, base_url: str = BASE_URL) -> str:
    """URL of local file ``name`` (``fixations.mat`` or ``stimuli/<x>.jpg``) upstream."""
    rel = "eye/fixations.mat" if name == FIXATIONS_FILE else name
    return f"{base_url.rstrip('/')}/{rel}"


def find_source(local_dir=None, use_mirror: bool = True) -> tuple[Path | None, str]:
    """The local folder to read (or None: download) and a description of where it came from."""
    if local_dir is not None:
        return Path(local_dir), f"local folder {local_dir} (argument)"
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]), f"local folder {os.environ[ENV_VAR]} (${ENV_VAR})"
    if use_mirror and (MIRROR / FIXATIONS_FILE).exists():
        return MIRROR, f"workplace mirror {MIRROR}"
    return None, ""


def verify_folder(folder: Path, sums: dict[str, str]) -> None:
    """Raise DataError naming every missing file or checksum mismatch in ``folder``."""
    if not folder.is_dir():
        raise DataError(f"{folder}: OSIE folder does not exist")
    missing = [n for n in sums if not (folder / n).exists()]
    if missing:
        raise DataError(f"{folder / missing[0]}: file is missing ({len(missing)} of {len(sums)} "
                        f"OSIE files missing, e.g. {', '.join(missing[:3])})")
    bad = [n for n, d in sums.items() if sha256_file(folder / n) != d]
    if bad:
        raise DataError(f"{folder / bad[0]}: SHA-256 mismatch with the published checksum "
                        f"({len(bad)} file(s) differ: {', '.join(bad[:3])}); the file is corrupt "
                        "or not the published one")


def download_files(folder: Path, sums: dict[str, str], base_url: str = BASE_URL) -> None:
    """Fetch every file of ``sums`` that is not yet in ``folder`` with the right checksum."""
    for name, digest in tqdm(sums.items(), desc="OSIE download", unit="file", leave=False):
        fetch(upstream_url(name, base_url), folder / name, sha256=digest)


def _cells(a) -> list:
    """A MATLAB cell/struct array loaded with squeeze_me=True, as a flat list."""
    if isinstance(a, np.ndarray):
        return list(a.ravel())
    return [a]


def parse_fixations_mat(path: Path, sizes_of: dict[str, tuple[int, int]] | None = None,
                        initial_fixation: bool = False):
    """Parse OSIE ``fixations.mat`` into arrays.

    Returns ``(image_names, columns)``: the image file names in file order, and a dict of
    equal-length arrays ``image`` (index into image_names), ``subject``, ``x``, ``y`` (dgstudy
    convention), ``fix_index``, ``duration``, plus ``n_trials`` (non-empty trials). Raises
    DataError naming ``path`` on any structural problem.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file is missing")
    try:
        mat = loadmat(path, squeeze_me=True, struct_as_record=False)
    except Exception as e:  # scipy raises ValueError, TypeError, OSError... on damaged files
        raise DataError(f"{path}: could not be read as a MATLAB file (truncated or corrupt: {e})") from e
    if "fixations" not in mat:
        raise DataError(f"{path}: no variable 'fixations' (found {sorted(k for k in mat if not k.startswith('__'))})")
    names, cols = [], {k: [] for k in ("image", "subject", "x", "y", "fix_index", "duration")}
    n_trials = 0
    for i, entry in enumerate(_cells(mat["fixations"])):
        if not (hasattr(entry, "img") and hasattr(entry, "subjects")):
            raise DataError(f"{path}: entry {i} of 'fixations' lacks the fields img/subjects")
        name = str(entry.img)
        names.append(name)
        for s, subj in enumerate(_cells(entry.subjects)):
            try:
                fx, fy, fd = (np.atleast_1d(np.asarray(getattr(subj, f), dtype=np.float64))
                              for f in ("fix_x", "fix_y", "fix_duration"))
            except (AttributeError, TypeError, ValueError) as e:
                raise DataError(f"{path}: image {name}, subject {s}: bad fixation fields ({e})") from e
            if not (fx.ndim == fy.ndim == fd.ndim == 1 and fx.shape == fy.shape == fd.shape):
                raise DataError(f"{path}: image {name}, subject {s}: fixations of the wrong shape "
                                f"(fix_x {fx.shape}, fix_y {fy.shape}, fix_duration {fd.shape})")
            k = np.arange(fx.size)
            n_trials += fx.size > 0
            keep = k >= (0 if initial_fixation else 1)
            n = int(keep.sum())
            cols["image"].append(np.full(n, i))
            cols["subject"].append(np.full(n, s))
            cols["x"].append(fx[keep] - 0.5)
            cols["y"].append(fy[keep] - 0.5)
            cols["fix_index"].append(k[keep])
            cols["duration"].append(fd[keep])
    if not names:
        raise DataError(f"{path}: 'fixations' is empty")
    out = {k: np.concatenate(v) if v else np.zeros(0) for k, v in cols.items()}
    out["n_trials"] = n_trials
    return names, out


def load_osie(local_dir: str | os.PathLike | None = None, download: bool = True,
              initial_fixation: bool = False, base_url: str = BASE_URL,
              checksums: str | os.PathLike = CHECKSUMS, use_mirror: bool = True,
              cache: bool = True) -> FixationDataset:
    """Load OSIE (source order: the module docstring; every parsing decision: docs/datasets.md).

    ``initial_fixation=True`` keeps the first fixation of each trial. ``base_url`` and
    ``checksums`` exist so the download path can be tested on a local ``file://`` copy;
    ``use_mirror=False`` skips the workplace mirror; ``cache=False`` always re-parses.
    """
    checksums = Path(checksums)
    if not checksums.exists():
        raise DataError(f"{checksums}: the OSIE checksum list is missing (broken installation)")
    sums = read_sha256sums(checksums)
    folder, origin = find_source(local_dir, use_mirror)
    if folder is None:
        folder = data_dir() / "osie"
        origin = f"downloaded from {base_url} into {folder}"
    folder = folder.resolve()
    key = cache_file("osie", (PARSER_VERSION, str(folder), initial_fixation, sorted(sums.items())))
    if cache and (ds := load_cache(key)) is not None:
        return ds

    if origin.startswith("downloaded"):
        if not download and any(not (folder / n).exists() for n in sums):
            raise DataError(f"{folder}: OSIE is not there and download=False; pass local_dir=, set "
                            f"${ENV_VAR}, or allow the download from {base_url}")
        download_files(folder, sums, base_url)
    verify_folder(folder, sums)

    mat_path = folder / FIXATIONS_FILE
    names, cols = parse_fixations_mat(mat_path, initial_fixation=initial_fixation)
    stimuli = [str(folder / "stimuli" / n) for n in names]
    unknown = [n for n in names if f"stimuli/{n}" not in sums]
    if unknown:
        raise DataError(f"{mat_path}: refers to images not in the published list: {unknown[:3]}")
    sizes = image_sizes(stimuli)
    fx, dropped = make_fixation_table(cols["image"], cols["subject"], cols["x"], cols["y"],
                                      cols["fix_index"], duration=cols["duration"], sizes=sizes,
                                      origin=str(mat_path))
    notes = {
        "initial_fixation": "kept" if initial_fixation else f"dropped ({cols['n_trials']} first fixations)",
        "dropped_outside": dropped,
        "onset": "unknown (fixations.mat has durations only)",
        "coordinates": "x = fix_x - 0.5, y = fix_y - 0.5 (MATLAB 1-based -> dgstudy)",
    }
    ds = FixationDataset(name="osie", stimuli=stimuli, sizes=sizes, fixations=fx,
                         source=origin, notes=notes)
    if cache:
        save_cache(key, ds, [mat_path, *stimuli])
    return ds
