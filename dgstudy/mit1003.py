"""MIT1003 loader: 1003 images (original sizes, longest side 1024 px), 15 observers, 3 s free viewing.

Judd, Ehinger, Durand & Torralba (2009), "Learning to predict where humans look", ICCV.
The dataset of DeepGaze II (Kümmerer, Wallis & Bethge 2016).

Source files (from http://people.csail.mit.edu/tjudd/WherePeopleLook/):
``ALLSTIMULI.zip`` (the ``.jpeg`` stimuli), ``DATA.zip`` (raw eye-tracking samples,
``DATA/<subject>/<image name>.mat``) and ``DatabaseCode.zip`` (the authors' MATLAB code,
``checkFixations.m``, kept for reference; this module ports it to Python). They are taken
from ``local_dir`` / ``$DGSTUDY_MIT1003_DIR`` (the three zips, or their extracted folders
``ALLSTIMULI/`` ``DATA/`` ``DatabaseCode/``), else downloaded into ``data_dir()/mit1003/``
and checked against the MD5 sums pysaliency publishes. Zips are extracted into
``data_dir()/mit1003/`` (into a temporary folder first, renamed when complete).

From raw samples to fixations: :func:`check_fixations`
-----------------------------------------------------
A faithful port of the acceleration-based branch (``algo = 'A'``) of ``checkFixations.m``
(Barbara Hidalgo-Sotelo 2005/2006), the code Judd et al. and pysaliency (through Octave) use:

- eye tracker at 240 Hz; ``eyeData`` = ``DATA(1).eyeData``, columns x, y in image pixels
  (negative values are blinks; they are *not* removed, as in the original).
- sample-to-sample displacement (px; 0 for the first sample), smoothed by a causal
  moving average over ``win_size = 4`` samples (MATLAB ``filter``);
- for k = 2 .. n - win - step (1-based; the first sample and the last 5 can never start a
  saccade) two window "velocities" ``v1 = sum(sm[k : k+4]) / (4/240)`` and
  ``v2 = sum(sm[k+1 : k+5]) / (4/240)`` (5 samples each, as in the original) and
  ``accel = v2 - v1``;
- samples with ``accel > 34 px/deg * 6 deg/s = 204`` are saccade candidates; runs of
  consecutive candidates are saccade onsets (isolated points are discarded); the end of each
  saccade is the first later sample where ``accel < -204`` while the next one is not, searched
  for at most 25 samples (a saccade without deceleration is discarded unless the trial ends
  in it);
- a fixation between two saccades that is ``<= round(50 ms * 240 Hz) = 12`` samples long is
  merged away (the two saccades become one); the final fixation may be shorter;
- every non-saccade stretch is a fixation: position = median of its x and y samples (NaN
  ignored), ``start`` sample (1-based), ``duration = 1000 * n_samples / 240`` ms. With fewer
  than 3 saccade samples the whole trial is one fixation.

Then, as in Judd et al. and pysaliency's ``get_mit1003``: the **first fixation** of each
trial (the forced central fixation: observers looked at a central cross before each image)
is dropped unless ``initial_fixation=True``; then fixations outside the image are dropped
(counted in ``notes['dropped_outside']``). Coordinates: the medians are MATLAB 1-based pixel
coordinates, ``x = median_x - 0.5`` (dgstudy convention). ``onset = (start - 1) * 1000/240``
ms from the first recorded sample. ``fix_index`` = position in the trial as detected (0 =
the initial fixation). Images are in natural sort order of their file names (as pysaliency)
and subjects in sorted order of their folder names.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .datasets import (FixationDataset, cache_file, image_sizes, load_cache, make_fixation_table,
                       save_cache)
from .io import DataError, atomic_path, fetch
from .paths import data_dir

BASE_URL = "http://people.csail.mit.edu/tjudd/WherePeopleLook"
FILES = {  # local name -> (path below BASE_URL, published MD5 as used by pysaliency)
    "ALLSTIMULI.zip": ("ALLSTIMULI.zip", "0d7df8b954ecba69b6796e77b9afe4b6"),
    "DATA.zip": ("DATA.zip", "ea19d74ad0a0144428c53e9d75c2d71c"),
    "DatabaseCode.zip": ("Code/DatabaseCode.zip", "d8e5e2b6ec827f4115ddbff59b0bdf1d"),
}
REQUIRED = ("ALLSTIMULI", "DATA")   # DatabaseCode is only the reference MATLAB code
ENV_VAR = "DGSTUDY_MIT1003_DIR"
PARSER_VERSION = 1


# -- the fixation detector --------------------------------------------------------------------
@dataclass(frozen=True)
class FixationParams:
    """Parameters of ``checkFixations.m`` (defaults = the original's)."""
    deg_per_s: float = 6.0        # acceleration criterion, deg/s per step
    px_per_deg: float = 34.0      # 1024x768 px on 40.5x30 cm at 75 cm
    win_size: int = 4             # samples per velocity window (16.7 ms)
    step_size: int = 1            # offset of the second window
    sampling_rate: float = 240.0  # Hz
    min_fix_ms: float = 50.0      # shortest fixation between two saccades
    decel_search: int = 25        # samples searched for the deceleration

    @property
    def accel_crit(self) -> float:
        return self.px_per_deg * self.deg_per_s

    @property
    def min_fix_pts(self) -> int:
        return int(np.floor(self.min_fix_ms * self.sampling_rate / 1000 + 0.5))  # MATLAB round


@dataclass
class Fixations:
    """Output of :func:`check_fixations` (1-based sample indices, like the original)."""
    median_xy: np.ndarray   # (k, 2) x, y
    start: np.ndarray       # (k,) first sample (1-based)
    end: np.ndarray         # (k,) last sample (1-based)
    duration: np.ndarray    # (k,) ms
    labels: np.ndarray      # (n,) per sample: 0 fixation, 3 saccade start, 1 inside, 2 end


def _acceleration(xy: np.ndarray, p: FixationParams) -> np.ndarray:
    from scipy.signal import lfilter

    n = len(xy)
    pos = np.zeros(n)
    pos[1:] = np.hypot(np.diff(xy[:, 0]), np.diff(xy[:, 1]))
    sm = lfilter(np.ones(p.win_size) / p.win_size, 1.0, pos)
    w, s = p.win_size, p.step_size
    vel = np.zeros((n, 2))
    csum = np.concatenate([[0.0], np.cumsum(sm)])     # csum[j] = sum(sm[:j])
    k = np.arange(2, n - w - s + 1)                   # 1-based k = 2 .. n-w-s
    if k.size:
        # MATLAB sum(sm(k:k+w)) = 0-based sm[k-1 : k+w]
        vel[k - 1, 0] = (csum[k + w] - csum[k - 1]) / (w / p.sampling_rate)
        vel[k - 1, 1] = (csum[k + w + s] - csum[k - 1 + s]) / (w / p.sampling_rate)
    return vel[:, 1] - vel[:, 0]


def _single_fixation(xy, n, p):
    med = [np.median(c[~np.isnan(c)]) if (~np.isnan(c)).any() else np.nan for c in (xy[:, 0], xy[:, 1])]
    return Fixations(np.array([med]), np.array([1]), np.array([n]),
                     np.array([1000.0 * n / p.sampling_rate]), np.zeros(n, dtype=np.int64))


def check_fixations(eye_xy, params: FixationParams = FixationParams()) -> Fixations:
    """Fixations from raw eye-tracker samples, a port of ``checkFixations.m`` (see module doc).

    ``eye_xy``: (n, >=2) array of x, y samples at ``params.sampling_rate``. Indices in the
    comments below are MATLAB's (1-based); the variable names follow the original.
    """
    p = params
    xy = np.asarray(eye_xy, dtype=np.float64)
    if xy.ndim != 2 or xy.shape[1] < 2 or len(xy) < 1:
        raise ValueError(f"eye data must be (n, 2+), got shape {xy.shape}")
    xy = xy[:, :2]
    n = len(xy)
    crit = p.accel_crit
    accel = _acceleration(xy, p)

    # candidate saccade samples (1-based sample numbers)
    check = np.flatnonzero(accel > crit) + 1
    if len(check) < 3:
        return _single_fixation(xy, n, p)
    L = len(check)
    d = np.diff(check)
    es1 = list(np.flatnonzero(d == 1) + 1)           # positions (1-based) followed by a neighbour
    es2 = list(np.flatnonzero(d > 1) + 1)            # positions followed by a jump
    es3 = [es2[q + 1] for q in np.flatnonzero(np.diff(es2) == 1)] if len(es2) > 1 else []
    if check[-1] - check[-2] == 1:
        es1.append(L)
    else:
        es3.append(L)
    mark = np.zeros(L + 1, dtype=np.int64)           # mark[pos], 1-based positions
    mark[es1] = 1
    mark[es2] = 2
    mark[es3] = 3
    nrow = L
    if check[-1] - check[-2] == 1:
        mark[L] = 2
    else:
        nrow = L - 1
        es2 = es2[:-1]
    for q in es2:
        mark[q + 1] = 3
    if mark[1] == 1:
        mark[1] = 3
    n_idx = check[:nrow]                             # n(:,1)
    n_mark = mark[1:nrow + 1]                        # n(:,2)

    # keep contiguous saccades, discard isolated points above the criterion
    kept = []                                        # rows of nn as (sample, mark)
    if n_mark[0] == 3 and n_mark[1] == 1:
        kept.append((n_idx[0], n_mark[0]))
    length_n = max(nrow, 2)
    for i in range(2, length_n):                     # MATLAB i = 2 .. length(n)-1
        m = n_mark[i - 1]
        if m == 3:
            if n_mark[i] == 1:
                kept.append((n_idx[i - 1], m))
        elif m == 1:
            kept.append((n_idx[i - 1], m))
        elif m == 2:
            if n_mark[i - 2] == 1 and n_mark[i] == 3:
                kept.append((n_idx[i - 1], m))
        if i == length_n - 1:
            last = kept[-1][0] if kept else 0
            if n_idx[nrow - 1] - last == 1:
                kept.append((n_idx[nrow - 1], n_mark[nrow - 1]))
    if max(len(kept), 2) < 3:
        return _single_fixation(xy, n, p)
    cs = np.array(kept, dtype=np.int64)              # checkSac = nn

    # deceleration: the end of each saccade
    rows2 = np.flatnonzero(cs[:, 1] == 2)
    rows3 = np.flatnonzero(cs[:, 1] == 3)
    acc = lambda idx: accel[np.asarray(idx) - 1] < -crit      # noqa: E731  (1-based)
    last_nonzero = np.flatnonzero(accel != 0)
    last_nonzero = last_nonzero[-1] + 1 if last_nonzero.size else None
    good, blah = [], []
    for sac, r in enumerate(rows2):
        chk = np.array([cs[r, 0] + 1, cs[r, 0] + 2])
        cross = acc(chk)
        stopafter, time_ok = p.decel_search, True
        while not (cross[0] and not cross[1]) and time_ok:
            chk = chk + 1
            cross = acc(chk)
            stopafter -= 1
            time_ok = (chk.max() < n) and (stopafter > 0)
        if not time_ok:
            # "unless trial ends in saccade": MATLAB's `if vector == scalar` is true only if
            # every saccade-end sample equals the last non-zero acceleration sample
            if last_nonzero is not None and np.all(cs[rows2, 0] == last_nonzero):
                good.append(sac)
                blah.append(n)                       # length(accel)
        else:
            good.append(sac)
            blah.append(int(chk[0]))
    if not good:
        return _single_fixation(xy, n, p)            # startSac = []: no saccade labels
    good = np.array(good)
    g2, g3 = rows2[good], rows3[good]
    decel = np.column_stack([cs[g2, 0], np.array(blah)])
    if len(blah) > 1:
        too_short = np.flatnonzero(cs[g3[1:], 0] - decel[:-1, 1] <= p.min_fix_pts)  # 0-based j
        keep_start = np.setdiff1d(np.arange(len(blah)), too_short + 1)
        keep_end = np.setdiff1d(np.arange(len(blah)), too_short)
        start_sac = cs[g3[keep_start], 0]
        end_sac = decel[keep_end].copy()
    else:
        start_sac = cs[g3, 0]
        end_sac = decel[-1:].copy()
    if n - decel[-1, 1] <= p.min_fix_pts:
        end_sac[-1, 1] = n

    # label samples: 3 saccade start, 2 saccade end, 1 inside, 0 fixation
    labels = np.zeros(n + 1, dtype=np.int64)
    inside = [np.arange(a + 1, b) for a, b in zip(start_sac, end_sac[:, 1])]
    labels[start_sac] = 3
    labels[end_sac[:, 1]] = 2
    if inside:
        labels[np.concatenate(inside).astype(np.int64)] = 1
    labels = labels[1:]
    es3 = np.flatnonzero(labels == 3) + 1
    es2 = np.flatnonzero(labels == 2) + 1
    fixs = np.flatnonzero(labels == 0) + 1
    if n - len(fixs) < 3:
        return _single_fixation(xy, n, p)
    if len(es3) == 1:
        fix_start = np.concatenate([[fixs[0]], es2 + 1]) if es2[-1] != n else np.array([fixs[0]])
    else:
        fix_start = np.concatenate([[fixs[0]], es2[:-1] + 1])
        if es2[-1] != n:
            fix_start = np.append(fix_start, es2[-1] + 1)
    case1, case2 = es3[0] == 1, es2[-1] == n
    head = es3[1:] if case1 else es3
    fix_end = head - 1 if case2 else np.append(head - 1, n)
    if len(fix_end) < len(fix_start):
        raise ValueError("checkFixations: more fixation starts than ends (the MATLAB code fails here too)")
    med = np.full((len(fix_start), 2), np.nan)
    for i, (a, b) in enumerate(zip(fix_start, fix_end)):
        for c in range(2):
            v = xy[a - 1:b, c]
            v = v[~np.isnan(v)]
            if v.size:
                med[i, c] = np.median(v)
    fix_end = fix_end[:len(fix_start)]
    return Fixations(med, fix_start.astype(np.int64), fix_end.astype(np.int64),
                     1000.0 * (fix_end - fix_start + 1) / p.sampling_rate, labels)


# -- reading the raw files -------------------------------------------------------------------
def natural_key(name: str):
    """Sort key treating digit runs as numbers (like natsort, which pysaliency uses)."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def read_eye_data(path: Path) -> np.ndarray:
    """``DATA(1).eyeData`` of one subject/image ``.mat`` file, as an (n, 2) float array."""
    from scipy.io import loadmat

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


def prepare_source(local_dir=None, download: bool = True, base_url: str = BASE_URL,
                   md5: bool | None = None) -> tuple[Path, str]:
    """A folder holding extracted ``ALLSTIMULI/`` and ``DATA/``, and where it came from.

    ``md5``: check zips against the published MD5 sums (default: only downloaded ones).
    """
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
            try:
                fetch(f"{base_url.rstrip('/')}/{url}", dest)
            except DataError as e:
                raise DataError(f"{e}. " + _missing_message(f"in {target}")) from e
            if check_md5 and _md5(dest) != digest:
                dest.unlink()     # a wrong download never counts as done
                raise DataError(f"{name}: downloaded from {base_url}/{url} but its MD5 is not the "
                                f"published {digest}")
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
                 base_url: str = BASE_URL, md5: bool | None = None,
                 cache: bool = True) -> FixationDataset:
    """Load MIT1003 (see the module docstring for sources, the detector and every decision)."""
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

    from tqdm.auto import tqdm

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
