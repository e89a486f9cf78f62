"""Damaged inputs are detected and named, never read: a truncated or corrupt feature store, a
checkpoint cut short; a full disk during extraction keeps every finished image and half-writes
nothing. (Killed workers and killed runs: tests/test_tasks.py.)"""
from __future__ import annotations

import errno
import json
import shutil

import h5py
import numpy as np
import pytest

from dgstudy import datasets, features, runs, training
from dgstudy.io import DataError
from test_features import toy_backbone
from test_training import small_config, synthetic_features


@pytest.fixture
def store(data_root, tmp_path):
    ds = datasets.load("synthetic", n_images=6, size=(32, 48))
    return ds, features.extract(ds, toy_backbone(), downsample=1, out=tmp_path / "toy.h5", part_size=2,
                                progress=False)


def test_truncated_store_is_named_with_how_to_rebuild(store, tmp_path, monkeypatch):
    monkeypatch.setenv("DGSTUDY_RESULTS", str(tmp_path / "results"))
    ds, path = store
    cut = tmp_path / "cut.h5"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DataError, match=r"cut\.h5: not a readable HDF5 feature store, truncated or corrupt.*extract again"):
        features.FeatureStore(cut)
    with pytest.raises(DataError, match=r"cut\.h5: not a readable HDF5 store, truncated or corrupt"):
        features.extract(ds, toy_backbone(), downsample=1, out=cut, progress=False)   # no silent resume
    cfg = small_config(run="on-cut", feature_path=str(cut), folds=2, max_epochs=1)
    with pytest.raises(DataError, match=r"cut\.h5"):
        training.train_crossval(cfg, dataset=ds, progress=False)


def test_corrupt_chunk_fails_its_checksum(store, tmp_path):
    _, path = store
    bad = tmp_path / "bad.h5"
    shutil.copyfile(path, bad)
    with h5py.File(bad, "r") as f:
        d = f["images"]["00003"]["p1"]
        offset, size = d.id.get_chunk_info(0).byte_offset, d.id.get_chunk_info(0).size
    raw = bytearray(bad.read_bytes())
    raw[offset:offset + size // 2] = bytes(size // 2)            # zero half the chunk
    bad.write_bytes(bytes(raw))
    s = features.FeatureStore(bad)
    assert np.array_equal(s.read(2)["p1"], features.FeatureStore(path).read(2)["p1"])   # others intact
    with pytest.raises(DataError, match=r"bad\.h5: the features of image 3 are unreadable.*extract again"):
        s.read(3)


def test_checkpoint_cut_short_is_detected(data_root, tmp_path, monkeypatch):
    monkeypatch.setenv("DGSTUDY_RESULTS", str(tmp_path / "results"))
    ds = datasets.load("synthetic", n_images=12, size=(48, 64), seed=1)
    run = training.train_crossval(small_config(run="cut", folds=3, max_epochs=1), folds=[0], dataset=ds,
                                  features=synthetic_features(ds), progress=False)
    d = run / "fold_00"
    info = json.loads((d / "config.json").read_text())
    assert info["model_sha256"] and runs.load_fold(d)[0] is not None
    (d / "model.pt").write_bytes((d / "model.pt").read_bytes()[:-100])
    with pytest.raises(DataError, match=r"fold_00/model\.pt: checkpoint is corrupt or cut short.*delete the fold"):
        runs.load_fold(d)
    info.pop("model_sha256")                                    # a fold from before the checksum
    (d / "config.json").write_text(json.dumps(info))
    with pytest.raises(DataError, match=r"fold_00/model\.pt: not a readable checkpoint"):
        runs.load_fold(d)


def test_full_disk_keeps_the_finished_images(data_root, tmp_path, monkeypatch):
    ds = datasets.load("synthetic", n_images=8, size=(32, 48))
    out = tmp_path / "full.h5"
    real, calls = h5py.Group.create_dataset, []

    def disk_fills_up(self, *args, **kw):                       # the 4th shard's second layer
        calls.append(1)
        if len(calls) == 8:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, *args, **kw)

    monkeypatch.setattr(h5py.Group, "create_dataset", disk_fills_up)
    with pytest.raises(OSError, match="no space left on the device while writing features") as e:
        features.extract(ds, toy_backbone(), downsample=1, out=out, part_size=1, progress=False)
    assert e.value.errno == errno.ENOSPC
    monkeypatch.undo()
    pdir = features.parts_dir(out)
    assert not out.exists() and not list(tmp_path.rglob("*.tmp"))
    kept = sorted(pdir.glob("part-*.h5"))
    assert len(kept) == 3
    for k, part in enumerate(kept):                             # complete, readable shards
        with h5py.File(part, "r") as f:
            assert list(f["images"]) == [f"{k:05d}"] and set(f["images"][f"{k:05d}"]) == {"p1", "p2"}
    features.extract(ds, toy_backbone(), downsample=1, out=out, part_size=1, progress=False)   # resumes
    ref = features.extract(ds, toy_backbone(), downsample=1, out=tmp_path / "ref.h5", progress=False)
    a, b = features.FeatureStore(out), features.FeatureStore(ref)
    assert a.images == b.images == list(range(8))
    for i in range(8):
        assert all(np.array_equal(a.read(i)[l], b.read(i)[l]) for l in ("p1", "p2"))


def test_a_merged_store_has_its_checksum_and_verify_names_damage(store, tmp_path):
    """consolidate writes <store>.sha256 (sha256sum format) beside the store; feature_shards.verify
    checks against it, and a store without one by reading every dataset back."""
    from dgstudy import feature_shards
    from dgstudy.io import sha256_file

    _, path = store
    sidecar = feature_shards.checksum_path(path)
    assert sidecar.read_text() == f"{sha256_file(path)}  {path.name}\n"
    assert feature_shards.verify(path) is None
    cut = tmp_path / "cut.h5"
    cut.write_bytes(path.read_bytes()[:-1000])
    feature_shards.checksum_path(cut).write_text(sidecar.read_text().replace(path.name, cut.name))
    assert "differs from the" in feature_shards.verify(cut)
    feature_shards.checksum_path(cut).unlink()                   # a store from before the checksum
    assert "not a readable HDF5 store" in feature_shards.verify(cut)
    bad = tmp_path / "bad.h5"
    shutil.copyfile(path, bad)
    with h5py.File(bad, "r") as f:
        d = f["images"]["00003"]["p1"]
        offset, size = d.id.get_chunk_info(0).byte_offset, d.id.get_chunk_info(0).size
    raw = bytearray(bad.read_bytes())
    raw[offset:offset + size // 2] = bytes(size // 2)
    bad.write_bytes(bytes(raw))
    assert "datasets fail to read" in feature_shards.verify(bad)   # found by fletcher32 alone
    shutil.copyfile(path, tmp_path / "good.h5")
    assert feature_shards.verify(tmp_path / "good.h5") is None


def test_a_damaged_fold_is_moved_aside_and_retrained_alone(data_root, tmp_path, monkeypatch):
    """repair.fold_problem names a checkpoint that fails its recorded SHA-256; moved aside, the
    fold is unfinished and training redoes exactly it, to the same bytes."""
    from dgstudy import repair

    monkeypatch.setenv("DGSTUDY_RESULTS", str(tmp_path / "results"))
    ds = datasets.load("synthetic", n_images=12, size=(48, 64), seed=1)
    cfg = small_config(run="repair", folds=3, max_epochs=1)
    feats = synthetic_features(ds)
    run = training.train_crossval(cfg, dataset=ds, features=feats, progress=False)
    assert all(repair.fold_problem(run / f"fold_{k:02d}") is None for k in range(3))
    d = run / "fold_01"
    sha = json.loads((d / "config.json").read_text())["model_sha256"]
    other = (run / "fold_00" / "config.json").stat().st_mtime_ns
    (d / "model.pt").write_bytes((d / "model.pt").read_bytes()[:-10])
    assert "checkpoint is corrupt or cut short" in repair.fold_problem(d)
    for name in ("model.pt", "config.json"):
        assert repair.move_aside(d / name) == d / f"{name}.damaged"
    assert not runs.fold_done(d)
    training.train_crossval(cfg, dataset=ds, features=feats, progress=False)
    assert json.loads((d / "config.json").read_text())["model_sha256"] == sha
    assert (run / "fold_00" / "config.json").stat().st_mtime_ns == other
    assert repair.move_aside(d / "model.pt") == d / "model.pt.damaged.1"    # an earlier one is kept
