"""The MIT1003 fixation detector: a Python port of the authors' ``checkFixations.m``.

:func:`check_fixations` ``(eye_xy, params)`` turns raw eye-tracker samples (an (n, >=2) array of
x, y in image pixels, MATLAB 1-based; blinks are negative and are not removed, as in the
original) into :class:`Fixations`: per fixation the median position (1-based, NaN ignored), the
first and last sample (1-based) and the duration in ms. :class:`FixationParams` holds the
original's parameters (240 Hz, acceleration criterion 34 px/deg x 6 deg/s, windows of 4 samples,
fixations between saccades of at most 50 ms merged away). It is the acceleration-based branch
(``algo = 'A'``) step by step, including the original's quirks; the algorithm is described in
docs/datasets.md. Raises ValueError where the MATLAB code fails too.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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
    from scipy.signal import lfilter   # here: scipy.signal costs ~0.5 s to import

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
    """Fixations from raw eye-tracker samples, a port of ``checkFixations.m`` (docs/datasets.md).

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
