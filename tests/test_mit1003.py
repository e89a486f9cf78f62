"""MIT1003: the port of checkFixations.m on traces with hand-derived answers, and the loader on
generated zips of the published format."""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
import scipy.io as sio
from PIL import Image

from dgstudy import datasets
from dgstudy.io import DataError
from dgstudy.datasets.mit1003 import natural_key, read_eye_data
from dgstudy.datasets.mit1003_detector import FixationParams, check_fixations


def trace(points, durs, sac_len=8):
    """Samples at 240 Hz: fixation k holds ``points[k]`` for ``durs[k]`` samples, then a
    constant-speed saccade of ``sac_len`` intermediate samples to the next point."""
    xy = []
    for k, (p, d) in enumerate(zip(points, durs)):
        xy += [p] * d
        if k + 1 < len(points):
            q = points[k + 1]
            xy += [(p[0] + (q[0] - p[0]) * t / (sac_len + 1), p[1] + (q[1] - p[1]) * t / (sac_len + 1))
                   for t in range(1, sac_len + 1)]
    return np.array(xy, dtype=np.float64)


# Hand derivation for THREE = trace([(512,384),(800,200),(300,600)], [100,200,400]), n = 716:
# the first saccade's intermediate samples are 101..108 (1-based), each step s = |q-p|/9 ~ 38 px.
# sm(j) (4-sample causal mean of the steps) is s/4, s/2, 3s/4 at j = 101..103, s at 104..109,
# then 3s/4, s/2, s/4, 0 at 110..113; accel(k) = (sum sm(k+1:k+5) - sum sm(k:k+4)) * 240/4
# = 60 (sm(k+5) - sm(k)). So accel > 204 for k = 96..103 (onset 96, end of acceleration 103).
# The deceleration search starts at [104, 105] and stops at the first pair (accel < -204,
# accel >= -204): accel(112) = -60 s/4 < -204 and accel(113) = 0, so the saccade ends at 112.
# Fixation 1 = samples 1..95, fixation 2 starts at 113. The second saccade (intermediate
# samples 309..316) likewise gives 304..320: fixation 2 = 113..303, fixation 3 = 321..716.
THREE = dict(points=[(512, 384), (800, 200), (300, 600)], durs=[100, 200, 400])


def test_check_fixations_hand_derived():
    f = check_fixations(trace(**THREE))
    assert f.start.tolist() == [1, 113, 321]
    assert f.end.tolist() == [95, 303, 716]
    np.testing.assert_allclose(f.duration, np.array([95, 191, 396]) * 1000 / 240)
    np.testing.assert_array_equal(f.median_xy, [[512, 384], [800, 200], [300, 600]])
    sacc = np.flatnonzero(f.labels) + 1
    assert sacc.tolist() == list(range(96, 113)) + list(range(304, 321))
    assert f.labels[95] == 3 and f.labels[111] == 2      # samples 96 (start) and 112 (end)


def test_check_fixations_merges_short_fixations_and_handles_still_trials():
    # a 15-sample stop between two saccades leaves 7 samples <= 12 (50 ms) between the detected
    # saccades: merged into one saccade; a 40-sample stop is a fixation of its own
    f15 = check_fixations(trace([(512, 384), (800, 200), (300, 600)], [100, 15, 300]))
    np.testing.assert_array_equal(f15.median_xy, [[512, 384], [300, 600]])
    f40 = check_fixations(trace([(512, 384), (800, 200), (300, 600)], [100, 40, 300]))
    np.testing.assert_array_equal(f40.median_xy, [[512, 384], [800, 200], [300, 600]])
    # no saccade at all: one fixation over the whole trial, median position, n/240 s
    still = np.column_stack([np.r_[np.full(150, 100.0), np.full(151, 101.0)], np.full(301, 50.0)])
    f = check_fixations(still)
    assert f.start.tolist() == [1] and f.end.tolist() == [301]
    np.testing.assert_allclose(f.median_xy, [[101.0, 50.0]])
    np.testing.assert_allclose(f.duration, [301 * 1000 / 240])
    # a slow drift (below 204 px/s^2-equivalent) is not a saccade
    assert len(check_fixations(trace([(100, 100), (110, 100)], [200, 200])).start) == 1
    # a stricter criterion misses saccades the default finds
    assert len(check_fixations(trace(**THREE), FixationParams(deg_per_s=100)).start) == 1


def test_natural_order():
    assert sorted(["i10.jpeg", "i2.jpeg", "I1.jpeg"], key=natural_key) == ["I1.jpeg", "i2.jpeg", "i10.jpeg"]


# -- generated MIT1003 source files --------------------------------------------------------
LONG = "i" + "x" * 69           # a 70-character stem: MATLAB stores the variable as stem[:63]
IMAGES = {"img_b2": (300, 400), "img_b10": (260, 500), LONG: (300, 400)}   # (h, w)
SUBJECTS = ["ajs", "CNG"]        # sorted: CNG, ajs


def eye_trial(image, subject):
    if subject == "CNG" and image == "img_b2":      # the last fixation lies outside (x > 400)
        return trace([(200, 150), (100, 50), (450, 100)], [100, 200, 400])
    if subject == "ajs" and image == "img_b10":     # no saccade: only the initial fixation
        return np.tile([[250.0, 100.0]], (700, 1))
    return trace([(200, 150), (100, 50), (300, 250)], [100, 200, 400])


def make_zips(root: Path, bad_mat=None):
    root.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(root / "ALLSTIMULI.zip", "w") as z:
        for stem, (h, w) in IMAGES.items():
            tmp = root / f"{stem}.jpeg"
            Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(tmp)
            z.write(tmp, f"ALLSTIMULI/{stem}.jpeg")
            tmp.unlink()
        z.writestr("ALLSTIMULI/Thumbs.db", b"ignored")
    with zipfile.ZipFile(root / "DATA.zip", "w") as z:
        for subj in SUBJECTS:
            z.writestr(f"DATA/{subj}/CalibrationData.mat", b"")   # a file, not a stimulus
            for stem in IMAGES:
                tmp = root / "tmp.mat"
                sio.savemat(tmp, {stem[:63]: {"DATA": {"eyeData": eye_trial(stem, subj)},
                                              "imgName": f"{stem}.jpeg"}})
                data = tmp.read_bytes()
                if bad_mat == (stem, subj):
                    data = data[:200]
                z.writestr(f"DATA/{subj}/{stem}.mat", data)
                tmp.unlink()
    with zipfile.ZipFile(root / "DatabaseCode.zip", "w") as z:
        z.writestr("DatabaseCode/checkFixations.m", "% reference code\n")
    return root


def test_loader_on_generated_zips(tmp_path, data_root):
    src = make_zips(tmp_path / "src")
    ds = datasets.load("mit1003", local_dir=src)
    assert [Path(s).name for s in ds.stimuli] == ["img_b2.jpeg", "img_b10.jpeg", f"{LONG}.jpeg"]
    assert ds.sizes.tolist() == [[300, 400], [260, 500], [300, 400]]
    assert ds.notes["subject_names"] == ["CNG", "ajs"]
    fx = ds.fixations
    cols = ["image", "subject", "x", "y", "fix_index", "onset", "duration"]
    # fixations 2 and 3 of the hand-derived trace (the initial one dropped), x,y = median - 0.5,
    # onset = (start - 1) / 240 s, duration = n_samples / 240 s
    f2 = [99.5, 49.5, 1, 112 * 1000 / 240, 191 * 1000 / 240]
    f3 = [299.5, 249.5, 2, 320 * 1000 / 240, 396 * 1000 / 240]
    expected = [
        [0, 0, *f2],                       # img_b2, CNG: third fixation (x=449.5) outside
        [0, 1, *f2], [0, 1, *f3],          # img_b2, ajs
        [1, 0, *f2], [1, 0, *f3],          # img_b10, CNG; ajs has only the initial fixation
        [2, 0, *f2], [2, 0, *f3], [2, 1, *f2], [2, 1, *f3],
    ]
    np.testing.assert_allclose(fx[cols].to_numpy(float), np.array(expected, float))
    assert ds.notes["dropped_outside"] == 1
    with_first = datasets.load("mit1003", local_dir=src, initial_fixation=True)
    first = with_first.fixations[with_first.fixations.fix_index == 0]
    assert len(first) == 6                              # one per trial
    np.testing.assert_allclose(first[["x", "y", "onset"]].to_numpy()[:2], [[199.5, 149.5, 0]] * 2)
    assert first.iloc[3][["x", "y"]].tolist() == [249.5, 99.5]   # the saccade-free trial
    # cached: same table without touching the zips again
    (src / "DATA.zip").unlink()
    again = datasets.load("mit1003", local_dir=src)
    assert again.fixations.equals(ds.fixations)


def test_extracted_folders_and_download_path(tmp_path, data_root, monkeypatch):
    src = make_zips(tmp_path / "src")
    monkeypatch.delenv("DGSTUDY_MIT1003_DIR", raising=False)
    (src / "Code").mkdir()
    (src / "Code" / "DatabaseCode.zip").write_bytes((src / "DatabaseCode.zip").read_bytes())
    with pytest.raises(DataError, match=r"ALLSTIMULI\.zip: downloaded .* MD5"):
        datasets.load("mit1003", base_url=src.as_uri(), cache=False)
    assert not (data_root / "mit1003" / "ALLSTIMULI.zip").exists()
    ds = datasets.load("mit1003", base_url=src.as_uri(), md5=False, cache=False)
    assert ds.source.startswith("downloaded") and ds.n_images == 3
    assert (data_root / "mit1003" / "DatabaseCode.zip").exists()
    monkeypatch.setenv("DGSTUDY_MIT1003_DIR", str(data_root / "mit1003"))  # extracted folders
    assert datasets.load("mit1003", cache=False).fixations.equals(ds.fixations)


def test_bad_sources(tmp_path, data_root, monkeypatch):
    monkeypatch.delenv("DGSTUDY_MIT1003_DIR", raising=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=r"ALLSTIMULI\.zip: file is missing.*DATA\.zip.*DatabaseCode\.zip.*local_dir="):
        datasets.load("mit1003", local_dir=empty)
    with pytest.raises(DataError, match=r"download=False.*ALLSTIMULI\.zip.*people\.csail\.mit\.edu"):
        datasets.load("mit1003", download=False)
    src = make_zips(tmp_path / "src")
    with pytest.raises(DataError, match=r"ALLSTIMULI\.zip: MD5 mismatch"):
        datasets.load("mit1003", local_dir=src, md5=True)
    (src / "DATA.zip").write_bytes((src / "DATA.zip").read_bytes()[:100])
    with pytest.raises(DataError, match=r"DATA\.zip: not a valid zip"):
        datasets.load("mit1003", local_dir=src)


def test_truncated_mat_and_wrong_eye_data(tmp_path, data_root):
    src = make_zips(tmp_path / "src", bad_mat=("img_b10", "ajs"))
    with pytest.raises(DataError, match=r"ajs/img_b10\.mat: could not be read.*truncated"):
        datasets.load("mit1003", local_dir=src)
    bad = tmp_path / "bad.mat"
    sio.savemat(bad, {"bad": {"DATA": {"eyeData": np.zeros((5, 1))}}})
    with pytest.raises(DataError, match=r"bad\.mat: eyeData has the wrong shape \(5, 1\)"):
        read_eye_data(bad)
    sio.savemat(bad, {"bad": {"other": 1}})
    with pytest.raises(DataError, match=r"bad\.mat: bad\.DATA\(1\)\.eyeData not found"):
        read_eye_data(bad)
    with pytest.raises(DataError, match=r"nothere\.mat: file is missing"):
        read_eye_data(tmp_path / "nothere.mat")


def test_unreachable_download_says_how_to_provide_the_files(tmp_path, data_root, monkeypatch):
    monkeypatch.delenv("DGSTUDY_MIT1003_DIR", raising=False)
    unreachable = (tmp_path / "no-such-server").as_uri()
    with pytest.raises(DataError, match=r"ALLSTIMULI\.zip: could not download.*DGSTUDY_MIT1003_DIR"):
        datasets.load("mit1003", base_url=unreachable)
