"""The fixation-data layer: OSIE (real mirror and a generated fake), the cache, bad input, splits."""
from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np
import pytest
import scipy.io as sio
from PIL import Image

from dgstudy import datasets
from dgstudy.datasets import osie
from dgstudy.io import DataError

W, H = 64, 48   # size of the fake OSIE images


# -- a fake OSIE with hand-made fixations ----------------------------------------------------
def _trial(xs, ys, ds):
    a = lambda v: np.array([v], dtype=np.float64).reshape(1, -1)  # noqa: E731  (MATLAB 1xn)
    return {"fix_x": a(xs), "fix_y": a(ys), "fix_duration": a(ds).astype(np.uint16)}


def fake_trials():
    """Per image, per subject (fix_x, fix_y, fix_duration) in MATLAB 1-based coordinates."""
    return [
        [([32.5, 10.5, 70.0, 64.5], [24.5, 20.5, 5.0, 48.5], [100, 200, 300, 400]),  # 2 outside
         ([], [], []),                                                              # empty trial
         ([5.5], [6.5], [50])],                                                     # one fixation
        [([1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [10, 20, 30])] * 3,
        [([30.0, 40.0], [20.0, 30.0], [111, 222])] * 3,
    ]


def write_fixations_mat(path, names, trials, bad_shape=False):
    cells = np.empty((len(names), 1), dtype=object)
    for i, (name, subj) in enumerate(zip(names, trials)):
        sc = np.empty((len(subj), 1), dtype=object)
        for s, t in enumerate(subj):
            sc[s, 0] = _trial(*t)
        if bad_shape:
            sc[0, 0]["fix_y"] = sc[0, 0]["fix_y"][:, :-1]
        cells[i, 0] = {"img": name, "subjects": sc}
    path.parent.mkdir(parents=True, exist_ok=True)
    sio.savemat(path, {"fixations": cells})


def make_fake_osie(root: Path, bad_shape=False, n_images=3) -> Path:
    """A local OSIE folder (fixations.mat + stimuli/) and its SHA256SUMS; returns the sums path."""
    names = [f"{1001 + i}.jpg" for i in range(n_images)]
    rng = np.random.default_rng(0)
    for n in names:
        (root / "stimuli").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(root / "stimuli" / n)
    write_fixations_mat(root / "fixations.mat", names, fake_trials()[:n_images], bad_shape)
    return write_sums(root)


def write_sums(root: Path) -> Path:
    files = ["fixations.mat"] + sorted(f"stimuli/{p.name}" for p in (root / "stimuli").iterdir())
    lines = [f"{hashlib.sha256((root / f).read_bytes()).hexdigest()}  {f}" for f in files]
    sums = root.parent / f"{root.name}.sha256"
    sums.write_text("\n".join(lines) + "\n")
    return sums


def load_fake(root, sums, **kw):
    return datasets.load("osie", local_dir=root, checksums=sums, **kw)


# -- parsing the fake: hand-computed answers ----------------------------------------------------
def test_fake_osie_parsed_by_hand(tmp_path, data_root):
    sums = make_fake_osie(tmp_path / "osie")
    ds = load_fake(tmp_path / "osie", sums)
    assert ds.n_images == 3 and ds.sizes.tolist() == [[H, W]] * 3
    fx = ds.fixations_of(0)
    # subject 0: first fixation dropped; (70.0,5.0)->(69.5,4.5) and (64.5,48.5)->(64,48) lie outside
    assert fx[["subject", "x", "y", "fix_index", "duration"]].to_numpy().tolist() == [[0, 10.0, 20.0, 1, 200]]
    assert ds.notes["dropped_outside"] == 2
    # images 1, 2: 3 subjects x (n-1) fixations each
    assert len(ds.fixations_of(1)) == 6 and len(ds.fixations_of(2)) == 3
    np.testing.assert_allclose(ds.fixations_of(2)[["x", "y"]].to_numpy(), [[39.5, 29.5]] * 3)
    assert ds.fixations["onset"].isna().all()
    with_first = load_fake(tmp_path / "osie", sums, initial_fixation=True)
    fx = with_first.fixations_of(0)
    assert fx[["subject", "x", "y", "fix_index"]].to_numpy().tolist() == [
        [0, 32.0, 24.0, 0], [0, 10.0, 20.0, 1], [2, 5.0, 6.0, 0]]
    assert with_first.n_fixations == ds.n_fixations + 2 + 3 + 3   # one first fixation per non-empty trial
    assert with_first.checksum != ds.checksum


def test_download_path_verifies_and_rejects_corruption(tmp_path, data_root, monkeypatch):
    monkeypatch.delenv("DGSTUDY_OSIE_DIR", raising=False)
    local = tmp_path / "osie"
    sums = make_fake_osie(local)
    upstream = tmp_path / "upstream"          # upstream layout: eye/fixations.mat, stimuli/*.jpg
    (upstream / "eye").mkdir(parents=True)
    (upstream / "eye" / "fixations.mat").write_bytes((local / "fixations.mat").read_bytes())
    (upstream / "stimuli").mkdir()
    for p in (local / "stimuli").iterdir():
        (upstream / "stimuli" / p.name).write_bytes(p.read_bytes())
    url = upstream.as_uri()
    ds = datasets.load("osie", base_url=url, checksums=sums, use_mirror=False)
    assert ds.n_images == 3 and ds.source.startswith("downloaded")
    assert Path(ds.stimuli[0]).parent == data_root / "osie" / "stimuli"
    assert (data_root / "osie" / "fixations.mat").exists()
    assert not list((data_root / "osie").rglob("*.tmp"))
    # a corrupted upstream file: mismatch error, nothing left under the final name
    (data_root / "osie" / "stimuli" / "1002.jpg").unlink()
    (upstream / "stimuli" / "1002.jpg").write_bytes(b"not the published bytes")
    with pytest.raises(DataError, match=r"1002\.jpg.*SHA-256"):
        datasets.load("osie", base_url=url, checksums=sums, use_mirror=False, cache=False)
    assert not (data_root / "osie" / "stimuli" / "1002.jpg").exists()
    with pytest.raises(DataError, match="download=False"):
        datasets.load("osie", base_url=url, checksums=sums, use_mirror=False, download=False, cache=False)


# -- bad input -------------------------------------------------------------------------------
def test_missing_and_corrupt_local_files(tmp_path, data_root):
    root = tmp_path / "osie"
    sums = make_fake_osie(root)
    (root / "stimuli" / "1003.jpg").unlink()
    with pytest.raises(DataError, match=r"1003\.jpg: file is missing"):
        load_fake(root, sums)
    sums = make_fake_osie(root)
    with open(root / "stimuli" / "1001.jpg", "ab") as f:
        f.write(b"x")
    with pytest.raises(DataError, match=r"1001\.jpg: SHA-256 mismatch"):
        load_fake(root, sums)
    with pytest.raises(DataError, match="does not exist"):
        load_fake(tmp_path / "nowhere", sums)


def test_truncated_mat_and_wrong_shapes(tmp_path, data_root):
    root = tmp_path / "osie"
    make_fake_osie(root)
    mat = root / "fixations.mat"
    mat.write_bytes(mat.read_bytes()[:300])
    with pytest.raises(DataError, match=r"fixations\.mat: could not be read.*truncated"):
        load_fake(root, write_sums(root))
    make_fake_osie(root, bad_shape=True)
    with pytest.raises(DataError, match=r"fixations\.mat: image 1001\.jpg, subject 0: fixations of the wrong shape"):
        load_fake(root, write_sums(root))
    sio.savemat(mat, {"something_else": np.zeros(3)})
    with pytest.raises(DataError, match="no variable 'fixations'"):
        load_fake(root, write_sums(root))


def test_image_that_does_not_decode(tmp_path, data_root):
    root = tmp_path / "osie"
    make_fake_osie(root)
    (root / "stimuli" / "1002.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")
    with pytest.raises(DataError, match=r"1002\.jpg: image does not decode"):
        load_fake(root, write_sums(root))   # checksums match the broken file: decoding must catch it
    with pytest.raises(DataError, match=r"1002\.jpg: image does not decode"):
        datasets.read_image(root / "stimuli" / "1002.jpg")


def test_fixation_table_rejects_wrong_shapes():
    with pytest.raises(DataError, match=r"src: fixation column 'y' has shape \(2,\)"):
        datasets.make_fixation_table([0, 0, 0], [0, 0, 0], [1, 2, 3], [1, 2], [0, 1, 2], origin="src")
    with pytest.raises(DataError, match="src: 1 fixations have non-finite"):
        datasets.make_fixation_table([0], [0], [np.nan], [1.0], [0], origin="src")


# -- cache -----------------------------------------------------------------------------------
def test_cache_is_used_without_rehashing_and_invalidated_by_changes(tmp_path, data_root, monkeypatch):
    root = tmp_path / "osie"
    sums = make_fake_osie(root)
    first = load_fake(root, sums)
    assert len(list((data_root / "cache").glob("osie-*.npz"))) == 1

    def no_hashing(*a, **k):
        raise AssertionError("a cached load must not hash files")
    monkeypatch.setattr(osie, "sha256_file", no_hashing)
    again = load_fake(root, sums)
    assert again.fixations.equals(first.fixations) and again.checksum == first.checksum
    assert again.stimuli == first.stimuli and (again.sizes == first.sizes).all()
    assert again.notes["dropped_outside"] == 2
    # touching a source file invalidates the cache: the full path (hashing) runs again
    (root / "stimuli" / "1001.jpg").write_bytes((root / "stimuli" / "1001.jpg").read_bytes())
    with pytest.raises(AssertionError, match="must not hash"):
        load_fake(root, sums)


def test_real_osie_from_mirror(osie_dir, data_root):
    t0 = time.perf_counter()
    ds = datasets.load("osie", local_dir=osie_dir)
    t_first = time.perf_counter() - t0
    t0 = time.perf_counter()
    cached = datasets.load("osie", local_dir=osie_dir)
    t_cached = time.perf_counter() - t0
    assert t_cached < max(0.5, t_first / 2)
    assert cached.fixations.equals(ds.fixations)
    assert ds.n_images == 700 and len(ds.subjects) == 15
    assert (ds.sizes == [600, 800]).all()
    assert ds.n_fixations == 87821 and ds.notes["dropped_outside"] == 0
    assert ds.fixations["fix_index"].min() == 1
    assert "700 images (800x600 px), 15 subjects, 87821 fixations" in str(ds)
    full = datasets.load("osie", local_dir=osie_dir, initial_fixation=True)
    assert full.n_fixations == 98321 == 87821 + 700 * 15     # no empty trials in OSIE
    # the first fixation is pulled to the centre (the reason it is dropped by default)
    first = full.fixations[full.fixations.fix_index == 0]
    later = full.fixations[full.fixations.fix_index > 0]
    dist = lambda f: np.median(np.hypot(f.x - 400, f.y - 300))  # noqa: E731
    assert dist(first) < 0.7 * dist(later)
    # first fixation of image 1001, subject 0 in fixations.mat is (395.5, 265.7), 246 ms
    np.testing.assert_allclose(full.fixations.iloc[0][["x", "y", "duration"]].to_numpy(float),
                               [395.0, 265.2, 246.0])
    assert ds.notes["initial_fixation"] == "dropped (10500 first fixations)"
    # independent route (as pysaliency reads it: no squeezing, explicit [0, 0] indexing)
    raw = sio.loadmat(osie_dir / "fixations.mat")["fixations"].ravel()
    ref = []
    for i, e in enumerate(raw):
        for s, subj in enumerate(e[0, 0]["subjects"].ravel()):
            t = subj[0, 0]
            for k, (x, y) in enumerate(zip(t["fix_x"].ravel(), t["fix_y"].ravel())):
                ref.append((i, s, x - 0.5, y - 0.5, k))
    np.testing.assert_allclose(full.fixations[["image", "subject", "x", "y", "fix_index"]].to_numpy(float),
                               np.array(ref, float))
    sub = datasets.load("osie", local_dir=osie_dir, n_images=10)
    assert sub.name == "osie" and sub.n_images == 10 and sub.checksum != ds.checksum
    assert sub.image(0).shape == (600, 800, 3)


# -- splits ----------------------------------------------------------------------------------
@pytest.mark.parametrize("n,k", [(10, 2), (23, 5), (700, 10), (1003, 10)])
def test_kfold_partition(n, k):
    folds = datasets.kfold(n, k, seed=3)
    assert len(folds) == k
    allidx = np.concatenate(folds)
    assert sorted(allidx.tolist()) == list(range(n))          # partition: disjoint and complete
    sizes = [len(f) for f in folds]
    assert max(sizes) - min(sizes) <= 1
    assert all((np.diff(f) > 0).all() for f in folds)
    again = datasets.kfold(n, k, seed=3)
    assert all((a == b).all() for a, b in zip(folds, again))  # deterministic per seed
    other = datasets.kfold(n, k, seed=4)
    assert any(not np.array_equal(a, b) for a, b in zip(folds, other))


def test_fold_split():
    n, k = 103, 10
    tests = []
    for fold in range(k):
        train, val, test = datasets.fold_split(n, fold, k, seed=0)
        assert len(set(train) & set(val)) == len(set(train) & set(test)) == len(set(val) & set(test)) == 0
        assert sorted(np.concatenate([train, val, test]).tolist()) == list(range(n))
        assert np.array_equal(val, datasets.kfold(n, k, 0)[(fold + 1) % k])
        tests.append(test)
    assert sorted(np.concatenate(tests).tolist()) == list(range(n))   # every image tested once
    with pytest.raises(ValueError):
        datasets.kfold(5, 6)


def test_stimuli_are_read_as_stored_but_user_images_follow_exif(tmp_path):
    from PIL import Image

    from dgstudy.datasets import read_image
    from dgstudy.imageio import read_rgb

    img = np.zeros((20, 30, 3), np.uint8)
    img[:, :10] = 255                                  # a white band on the left
    exif = Image.Exif()
    exif[0x0112] = 6                                   # "rotate 90° clockwise to display"
    path = tmp_path / "rot.jpg"
    Image.fromarray(img).save(path, exif=exif, quality=100)
    stored = read_image(path, expected_size=(20, 30))
    shown = read_rgb(path)
    assert stored.shape == (20, 30, 3) and shown.shape == (30, 20, 3)
    assert stored[:, :10].mean() > 200 and shown[:10].mean() > 200   # band moved to the top
    with pytest.raises(DataError, match="rot.jpg: image is 30x20 px, expected 20x30"):
        read_image(path, expected_size=(30, 20))


def test_summary_names_no_folder_of_the_machine():
    from dgstudy.datasets.core import _without_machine_paths
    assert _without_machine_paths("workplace mirror /work/shared/datasets/osie") == "workplace mirror .../datasets/osie"
    assert _without_machine_paths("https://github.com/a/b and /x") == "https://github.com/a/b and /x"
    ds = datasets.load("synthetic", n_images=3)
    ds.source = "folder /home/someone/photos/set + fix.csv"
    assert "/home" not in repr(ds) and ".../photos/set" in repr(ds)
