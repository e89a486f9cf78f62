"""MIT1003 (Judd et al. 2009), the data set of DeepGaze II: 1003 images, 15 observers, 3 s free viewing.

:func:`load_mit1003` (``datasets.load('mit1003', ...)``) reads ``ALLSTIMULI.zip`` (the ``.jpeg``
stimuli) and ``DATA.zip`` (raw eye-tracking samples, ``DATA/<subject>/<image>.mat``) from
``local_dir`` / ``$DGSTUDY_MIT1003_DIR`` (the zips or their extracted folders), else downloads
them from :data:`BASE_URL` (or ``$DGSTUDY_MIT1003_URL``) into ``data_dir()/mit1003/`` (checked
against pysaliency's MD5 sums before they are renamed into place) and extracts them there atomically. Fixations come from the raw samples through
:func:`~dgstudy.datasets.mit1003_detector.check_fixations` (``params``); the parse is cached.

Conventions a caller sees: ``x = median_x - 0.5`` (MATLAB 1-based -> dgstudy); ``onset =
(start - 1) * 1000 / 240`` ms from the first sample; ``duration`` in ms; the first (forced central)
fixation of each trial is dropped unless ``initial_fixation=True``, then fixations outside the
image (``notes['dropped_outside']``); ``fix_index`` = position in the trial as detected (0 = the
initial fixation). Images in natural sort order of their names, subjects in sorted order of
their folder names (as pysaliency). Details: docs/datasets.md.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import zipfile
from pathlib import Path

import numpy as np
from scipy.io import loadmat
from tqdm.auto import tqdm

from ..io import DataError, atomic_path, fetch
from ..paths import data_dir
from .cache import cache_file, load_cache, save_cache
from .core import FixationDataset, image_sizes, make_fixation_table
from .mit1003_detector import FixationParams, check_fixations

BASE_URL = "http://people.csail.mit.edu/tjudd/WherePeopleLook"
FILES = {  # local name -> (path below BASE_URL, published MD5 as used by pysaliency)
    "ALLSTIMULI.zip": ("ALLSTIMULI.zip", "0d7df8b954ecba69b6796e77b9afe4b6"),
    "DATA.zip": ("DATA.zip", "ea19d74ad0a0144428c53e9d75c2d71c"),
    "DatabaseCode.zip": ("Code/DatabaseCode.zip", "d8e5e2b6ec827f4115ddbff59b0bdf1d"),
}
REQUIRED = ("ALLSTIMULI", "DATA")   # DatabaseCode is only the reference MATLAB code
ENV_VAR = "DGSTUDY_MIT1003_DIR"
URL_ENV = "DGSTUDY_MIT1003_URL"      # another download location (a mirror; the tests' local server)
PARSER_VERSION = 1


# -- reading the raw files -------------------------------------------------------------------
def natural_key(name: str):
    """Sort key treating digit runs as numbers (like natsort, which pysaliency uses)."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def read_eye_data(path: Path) -> np.ndarray:
    """``DATA(1).eyeData`` of one subject/image ``.mat`` file, as an (n, 2) float array."""
    if not path.exists():
        raise DataError(f"{path}: file is missing")
    try:
        mat = loadmat(path, squeeze_me=False, struct_as_record=False)   # keep (n, 2) shapes
    except Exception as e:
        raise DataError(f"{path}: could not be read as a MATLAB file (truncated or corrupt: {e})") from e
    names = [k for k in mat if not k.startswith("__")]
    stem = path.stem[:63]   # MATLAB truncates variable names to 63 characters
    var = stem if stem in names else (names[0] if len(names) == 1 else None)
    if var is None:
        raise DataError(f"{path}: no variable {stem!r} (found {names})")
    try:
        data = np.asarray(mat[var]).flat[0].DATA             # struct -> DATA (1 x k struct array)
        eye = np.asarray(np.asarray(data).flat[0].eyeData, dtype=np.float64)   # DATA(1).eyeData
    except (AttributeError, IndexError, TypeError, ValueError) as e:
        raise DataError(f"{path}: {var}.DATA(1).eyeData not found ({e})") from e
    if eye.ndim != 2 or eye.shape[1] < 2 or eye.shape[0] < 1:
        raise DataError(f"{path}: eyeData has the wrong shape {eye.shape}, expected (n_samples, 2)")
    return eye[:, :2]


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _missing_message(where: str) -> str:
    files = ", ".join(f"{n} ({BASE_URL}/{u})" for n, (u, _) in FILES.items())
    return (f"MIT1003 source files not found {where}: need {files}. Download them on a machine with "
            f"internet access and pass local_dir=<folder with the zips or their extracted folders> "
            f"or set ${ENV_VAR}.")


def _extract(zip_path: Path, dest_root: Path) -> None:
    """Unzip ``zip_path`` into ``dest_root`` atomically (temp folder, then rename each top folder)."""
    try:
        with zipfile.ZipFile(zip_path) as z:
            bad = z.testzip()
            if bad is not None:
                raise DataError(f"{zip_path}: member {bad} is corrupt")
            names = [m for m in z.namelist() if not any(t in m for t in ("__MACOSX", ".svn", ".DS_Store"))]
            dest_root.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{zip_path.stem}.", dir=dest_root))
            try:
                z.extractall(tmp, names)
                for top in tmp.iterdir():
                    target = dest_root / top.name
                    if not target.exists():
                        os.replace(top, target)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    except zipfile.BadZipFile as e:
        raise DataError(f"{zip_path}: not a valid zip file (truncated or corrupt: {e})") from e


def prepare_source(local_dir=None, download: bool = True, base_url: str | None = None,
                   md5: bool | None = None) -> tuple[Path, str]:
    """A folder holding extracted ``ALLSTIMULI/`` and ``DATA/``, and where it came from.

    ``base_url``: default ``$DGSTUDY_MIT1003_URL``, else :data:`BASE_URL`.
    ``md5``: check zips against the published MD5 sums (default: only downloaded ones).
    """
    base_url = base_url or os.environ.get(URL_ENV) or BASE_URL
    src = local_dir if local_dir is not None else os.environ.get(ENV_VAR)
    target = data_dir() / "mit1003"
    if src is not None:
        src = Path(src)
        if not src.is_dir():
            raise DataError(f"{src}: MIT1003 folder does not exist. " + _missing_message(f"in {src}"))
        if all((src / r).is_dir() for r in REQUIRED):
            return src, f"local folder {src}"
        origin = f"local zips in {src}"
        check_md5 = bool(md5)
    else:
        src = target
        origin = f"downloaded from {base_url} into {target}"
        check_md5 = md5 is not False
        if all((target / r).is_dir() and (target / f".{r}.extracted").exists() for r in REQUIRED):
            return target, origin
        if not download and any(not (src / f"{r}.zip").exists() for r in REQUIRED):
            raise DataError(_missing_message(f"in {target} (download=False)"))
        for name, (url, digest) in FILES.items():
            dest = target / name
            if dest.exists():
                continue
            full = f"{base_url.rstrip('/')}/{url}"

            def check(tmp, name=name, full=full, digest=digest):   # before the rename: never done if wrong
                if check_md5 and _md5(tmp) != digest:
                    raise DataError(f"{name}: downloaded from {full} but its MD5 is not the published {digest}")

            try:
                fetch(full, dest, verify=check)
            except DataError as e:
                raise DataError(f"{e}. " + _missing_message(f"in {target}")) from e
    for r in REQUIRED:
        z, stamp = src / f"{r}.zip", target / f".{r}.extracted"
        if z.exists():
            st = z.stat()
            signature = f"{z.resolve()} {st.st_size} {st.st_mtime_ns}"
            if (target / r).is_dir() and stamp.exists() and stamp.read_text() == signature:
                continue                      # extracted from this very zip before
            if check_md5 and _md5(z) != FILES[z.name][1]:
                raise DataError(f"{z}: MD5 mismatch with the published {FILES[z.name][1]}; the file is "
                                "corrupt or not the published one")
            if (target / r).exists():
                shutil.rmtree(target / r)     # from another zip: replace
            _extract(z, target)
            if not (target / r).is_dir():
                raise DataError(f"{z}: does not contain a top-level folder {r}/")
            with atomic_path(stamp) as tmp:
                tmp.write_text(signature)
        elif not ((target / r).is_dir() and stamp.exists()):
            raise DataError(f"{z}: file is missing. " + _missing_message(f"in {src}"))
    return target, origin


def load_mit1003(local_dir: str | os.PathLike | None = None, download: bool = True,
                 initial_fixation: bool = False, params: FixationParams = FixationParams(),
                 base_url: str | None = None, md5: bool | None = None,
                 cache: bool = True) -> FixationDataset:
    """Load MIT1003 (sources: the module docstring; the detector and every decision: docs/datasets.md)."""
    folder, origin = prepare_source(local_dir, download, base_url, md5)
    stim_dir, data_root = folder / "ALLSTIMULI", folder / "DATA"
    names = sorted((p.name for p in stim_dir.iterdir() if p.suffix.lower() == ".jpeg"), key=natural_key)
    subjects = sorted(p.name for p in data_root.iterdir() if p.is_dir())
    if not names:
        raise DataError(f"{stim_dir}: no .jpeg stimuli")
    if not subjects:
        raise DataError(f"{data_root}: no subject folders")
    stimuli = [str((stim_dir / n).resolve()) for n in names]
    eye_files = [data_root / s / (Path(n).stem + ".mat") for n in names for s in subjects]
    key = cache_file("mit1003", (PARSER_VERSION, str(folder.resolve()), initial_fixation, params))
    if cache:
        try:
            if (ds := load_cache(key)) is not None:
                return ds
        except OSError:
            pass

    sizes = image_sizes(stimuli)
    cols = {k: [] for k in ("image", "subject", "x", "y", "fix_index", "onset", "duration")}
    n_initial = 0
    for i, n in enumerate(tqdm(names, desc="MIT1003 fixations", unit="image", leave=False)):
        for s, subj in enumerate(subjects):
            path = data_root / subj / (Path(n).stem + ".mat")
            eye = read_eye_data(path)
            try:
                fx = check_fixations(eye, params)
            except (ValueError, IndexError) as e:
                raise DataError(f"{path}: fixation detection failed ({e})") from e
            k = np.arange(len(fx.start))
            keep = k >= (0 if initial_fixation else 1)
            n_initial += int((~keep).sum())
            m = int(keep.sum())
            cols["image"].append(np.full(m, i))
            cols["subject"].append(np.full(m, s))
            cols["x"].append(fx.median_xy[keep, 0] - 0.5)
            cols["y"].append(fx.median_xy[keep, 1] - 0.5)
            cols["fix_index"].append(k[keep])
            cols["onset"].append((fx.start[keep] - 1) * 1000.0 / params.sampling_rate)
            cols["duration"].append(fx.duration[keep])
    c = {k: np.concatenate(v) for k, v in cols.items()}
    finite = np.isfinite(c["x"]) & np.isfinite(c["y"])   # all-NaN fixations count as outside
    table, dropped = make_fixation_table(c["image"][finite], c["subject"][finite], c["x"][finite],
                                         c["y"][finite], c["fix_index"][finite], c["onset"][finite],
                                         c["duration"][finite], sizes=sizes, origin=str(data_root))
    notes = {
        "initial_fixation": "kept" if initial_fixation else f"dropped ({n_initial} initial central fixations)",
        "dropped_outside": int(dropped + (~finite).sum()),
        "detector": "checkFixations.m (acceleration-based, 240 Hz), ported to Python",
        "subject_names": subjects,
    }
    ds = FixationDataset(name="mit1003", stimuli=stimuli, sizes=sizes, fixations=table,
                         source=origin, notes=notes)
    if cache:
        save_cache(key, ds, [*stimuli, *eye_files])
    return ds
