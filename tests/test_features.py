"""Feature store: exact content, attributes, resume after kill -9, mismatch errors, reading back."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import OrderedDict

import h5py
import numpy as np
import pytest
import torch
from torch import nn

from dgstudy import backbones, datasets, features
from dgstudy.backbones import SequentialBackbone
from dgstudy.io import DataError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def toy_backbone(scale: float = 1.0) -> SequentialBackbone:
    """A tiny seeded conv net with two strides, for fast store tests."""
    g = torch.Generator().manual_seed(0)
    c1, c2 = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 6, 3, padding=1)
    with torch.no_grad():
        for m in (c1, c2):
            m.weight.copy_(torch.randn(m.weight.shape, generator=g) * scale)
            m.bias.zero_()
    stages = OrderedDict(c1=c1, p1=nn.MaxPool2d(2), c2=c2, p2=nn.MaxPool2d(2))
    return SequentialBackbone("toy", stages, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), ["p1", "p2"],
                              {"c1": 1, "p1": 2, "c2": 2, "p2": 4}, "toy-weights", "test",
                              architecture="toy conv-pool stack").eval()


@pytest.fixture(scope="module")
def vgg_random():
    return backbones.get("vgg19_random")


@pytest.fixture
def ds(data_root):
    return datasets.load("synthetic", n_images=5, size=(30, 44))


def test_prepare_matches_pil_bilinear():
    from PIL import Image

    img = (np.random.default_rng(1).uniform(size=(37, 50, 3)) * 255).astype(np.uint8)
    x = features.prepare(img, 2).numpy()
    assert x.shape == (3, 19, 25)             # 18.5 -> 19, 25
    ref = np.stack([np.asarray(Image.fromarray(img[..., c].astype(np.float32) / 255, mode="F")
                               .resize((25, 19), Image.BILINEAR)) for c in range(3)])
    assert np.abs(x - ref).max() < 1e-5
    assert np.array_equal(features.prepare(img, 1).numpy(), img.transpose(2, 0, 1) / np.float32(255))
    assert features.input_size(600, 800, 2) == (300, 400)


def test_extract_stores_exactly_compute(ds, tmp_path):
    bb = toy_backbone()
    out = features.extract(ds, bb, out=tmp_path / "f.h5", part_size=2, progress=False)
    st = features.FeatureStore(out)
    assert st.images == list(range(5)) and st.complete and st.layers == ["p1", "p2"]
    for i in range(5):
        got, ref = st.read(i), features.compute(bb, ds.image(i), downsample=2)
        for l in st.layers:
            assert got[l].dtype == np.float16 and np.array_equal(got[l], ref[l])
    # independent check of one layer: conv -> max-pool on the normalised, downsampled image
    x = (features.prepare(ds.image(3), 2)[None] - 0.5) / 0.25
    p1 = torch.nn.functional.max_pool2d(bb.stages.c1(x), 2)[0].detach().numpy()
    assert np.array_equal(st.read(3)["p1"], p1.astype(np.float16))
    assert st.read(3)["p1"].shape == (4, 7, 11) and st.read(3)["p2"].shape == (6, 3, 5)
    assert not features.parts_dir(out).exists()
    with h5py.File(out) as f:
        assert list(f["images/00003"].attrs["image_size"]) == [30, 44]
        assert list(f["images/00003"].attrs["input_size"]) == [15, 22]


def test_mixed_sizes_batched(data_root, tmp_path):
    import pandas as pd

    a = datasets.load("synthetic", n_images=3, size=(30, 44))
    b = datasets.load("synthetic", n_images=2, size=(41, 23), seed=2)
    mixed = datasets.FixationDataset(
        name="mixed", stimuli=[a.stimuli[0], b.stimuli[0], a.stimuli[1], b.stimuli[1], a.stimuli[2]],
        sizes=[(30, 44), (41, 23), (30, 44), (41, 23), (30, 44)],
        fixations=pd.DataFrame({c: [] for c in datasets.COLUMNS}))
    bb = toy_backbone()
    st = features.FeatureStore(features.extract(mixed, bb, out=tmp_path / "m.h5", batch_size=2,
                                                compression="lzf", progress=False))
    assert st.complete
    for i in range(5):
        ref = features.compute(bb, mixed.image(i), downsample=2)
        got = st.read(i)
        h, w = features.input_size(*mixed.sizes[i], 2)
        assert got["p1"].shape == (4, h // 2, w // 2)
        for l in ref:   # batching may change the float32 rounding, not more
            assert np.allclose(got[l].astype(np.float32), ref[l].astype(np.float32), rtol=2e-3, atol=1e-3)


def test_attributes(ds, tmp_path, vgg_random):
    out = features.extract(ds, vgg_random, layers=["conv1_1", "relu2_1"], downsample=3,
                           dtype="float32", out=tmp_path / "f.h5", images=[1, 3], progress=False)
    st = features.FeatureStore(out)
    a = st.attrs
    assert a["backbone"] == "vgg19_random" and a["weights_sha256"].startswith("random-seed0:")
    assert a["layers"] == ["conv1_1", "relu2_1"] and a["downsample"] == 3 and a["dtype"] == "float32"
    assert a["dataset"] == "synthetic" and a["dataset_checksum"] == ds.checksum
    assert a["n_images"] == 5 and a["dgstudy_version"] and a["autocast_bf16"] is False
    assert set(features.ATTR_KEYS) - set(features.OPTIONAL_KEYS) <= set(a)
    assert st.images == [1, 3] and st.has(3) and not st.has(0) and not st.complete
    assert st.read(1)["conv1_1"].shape == (64, 10, 15) and st.read(1)["conv1_1"].dtype == np.float32
    with pytest.raises(DataError, match="image 0 is not in the store"):
        st.read(0)
    # the rest is added later; the store is completed without recomputing 1 and 3
    features.extract(ds, vgg_random, layers=["conv1_1", "relu2_1"], downsample=3, dtype="float32",
                     out=out, progress=False)
    assert features.FeatureStore(out).complete


def test_mismatching_store_is_refused(ds, tmp_path):
    out = features.extract(ds, toy_backbone(), out=tmp_path / "f.h5", progress=False)
    with pytest.raises(DataError, match=r"layers: file has \['p1', 'p2'\], requested \['p2'\]"):
        features.extract(ds, toy_backbone(), layers=["p2"], out=out, progress=False)
    with pytest.raises(DataError, match="downsample"):
        features.extract(ds, toy_backbone(), downsample=1, out=out, progress=False)
    other = datasets.load("synthetic", n_images=5, size=(30, 44), seed=1)
    with pytest.raises(DataError, match="dataset_checksum"):
        features.extract(other, toy_backbone(), out=out, progress=False)


def test_store_of_another_architecture_is_never_reused(ds, tmp_path, data_root):
    """Same backbone name and weights, another architecture variant (e.g. EfficientNet-Lite0 with
    symmetric instead of TF padding): another default file, and an explicit path is refused."""
    import h5py

    old, new = toy_backbone(), toy_backbone()
    old.architecture = "toy conv-pool stack, symmetric padding"
    assert old.name == new.name and old.weights_sha256 == new.weights_sha256
    assert old.network_id != new.network_id
    assert features.default_store_path(ds, old) != features.default_store_path(ds, new)
    out = features.extract(ds, old, out=tmp_path / "f.h5", progress=False)
    with pytest.raises(DataError, match="architecture: file has 'toy conv-pool stack, symmetric padding'"):
        features.extract(ds, new, out=out, progress=False)
    # a store as dgstudy 0.2 wrote it (format 2: layers stretched over the image) is refused
    with h5py.File(out, "a") as f:
        del f.attrs["geometry_version"]
        f.attrs["format_version"] = 2
    with pytest.raises(DataError, match="written before dgstudy placed each layer's cells"):
        features.FeatureStore(out)
    with pytest.raises(DataError, match="format_version: file has 2.*outdated"):
        features.extract(ds, new, out=out, progress=False)
    # as dgstudy 0.1 wrote it: no architecture, no network id, format 1
    with h5py.File(out, "a") as f:
        for k in ("architecture", "network_id"):
            del f.attrs[k]
        f.attrs["format_version"] = 1
    with pytest.raises(DataError, match="format 1.*outdated"):
        features.FeatureStore(out)


def test_default_store_path(ds, data_root):
    p = features.default_store_path(ds, "vgg19", 2)
    assert p.parent == data_root / "features" and ds.checksum[:12] in p.name and "vgg19" in p.name
    assert f"-a{backbones.architecture_id('vgg19')}-" in p.name
    assert features.default_store_path(ds, "efficientnet_lite0", 2).name != \
        p.name.replace("vgg19", "efficientnet_lite0")
    assert features.default_store_path(ds.subset([0, 1]), "vgg19", 2) != p
    assert features.default_store_path(ds, "vgg19", 2, layers=backbones.default_layers("vgg19")) == p
    assert features.default_store_path(ds, "vgg19", 2, layers=["conv1_1"]) != p
    assert features.default_store_path(ds, "vgg19", 2, dtype="float32") != p
    assert features.default_store_path(ds, "vgg19", 1) != p


def test_stack_layers():
    """Layers resampled by their cell centres onto the image-aligned grid of the finest layer."""
    from dgstudy.backbones.geometry import Axis, image_aligned
    rng = np.random.default_rng(0)
    feats = {"a": rng.normal(size=(2, 4, 6)).astype(np.float16), "b": rng.normal(size=(3, 2, 3)),
             "c": np.full((1, 2, 3), 7.0)}
    input_hw = (16, 24)
    aligned = (image_aligned(4, 16), image_aligned(6, 24))          # a: centres 2, 6, 10, 14 (rows)
    axes = {"a": aligned, "b": (Axis(2, 8.0, 6.0), Axis(3, 8.0, 6.0)),   # b: centres 6, 14
            "c": (Axis(2, 8.0, 4.0), Axis(3, 8.0, 4.0))}
    st = features.stack_layers(feats, axes, input_hw, ["b", "a", "c"])
    assert st.shape == (6, 4, 6) and st.dtype == np.float32
    assert np.array_equal(st[3:5], feats["a"].astype(np.float32))     # an image-aligned grid is untouched
    assert np.allclose(st[5], 7.0)                                      # constants stay constant
    b = feats["b"][0]
    # target row 1 (centre 6) is b's row 0; row 2 (centre 10) halfway between b's rows 0 and 1;
    # target column 3 (centre 14) is b's column 1; edges keep the edge value
    assert np.isclose(st[0, 1, 3], b[0, 1]) and np.isclose(st[0, 2, 3], (b[0, 1] + b[1, 1]) / 2)
    assert np.isclose(st[0, 0, 0], b[0, 0]) and np.isclose(st[0, 3, 5], b[1, 2])
    with pytest.raises(ValueError, match="layer b"):
        features.stack_layers({"b": feats["b"]}, {"b": aligned}, input_hw)


def test_stacked_and_compression(ds, tmp_path):
    bb = toy_backbone()
    plain = features.FeatureStore(features.extract(ds, bb, out=tmp_path / "a.h5", progress=False))
    packed = features.FeatureStore(features.extract(ds, bb, out=tmp_path / "b.h5", compression="gzip",
                                                    progress=False))
    with h5py.File(packed.path) as f:
        assert f["images/00000/p1"].compression == "gzip"
    for i in range(5):
        s = packed.stacked(i)
        assert s.shape == (10, 7, 11) and s.dtype == np.float32
        assert np.array_equal(s, plain.stacked(i))
        assert np.array_equal(s, features.stack_layers(plain.read(i), plain.axes(i), plain.input_size(i),
                                                       ["p1", "p2"]))


def test_float16_overflow_raises(ds, tmp_path):
    with pytest.raises(FloatingPointError, match="float16"):
        features.extract(ds, toy_backbone(scale=1e5), out=tmp_path / "f.h5", progress=False)
    assert not (tmp_path / "f.h5").exists()


def test_bf16_autocast_changes_little(ds, vgg_random):
    bb = vgg_random
    img = ds.image(0)
    ref = features.compute(bb, img, ["relu3_1"], 1, "float32")["relu3_1"]
    bf = features.compute(bb, img, ["relu3_1"], 1, "float32", autocast_bf16=True)["relu3_1"]
    rel = np.abs(bf - ref).max() / np.abs(ref).max()
    assert 0 < rel < 0.05


def test_second_writer_waits(ds, tmp_path, capsys):
    import fcntl
    import threading

    out = tmp_path / "f.h5"
    with open(tmp_path / "f.h5.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)           # another writer holds the store
        t = threading.Thread(target=features.extract, args=(ds, toy_backbone()),
                             kwargs=dict(out=out, progress=False))
        t.start()
        t.join(timeout=1.0)
        assert t.is_alive() and not out.exists()
        fcntl.flock(fh, fcntl.LOCK_UN)
    t.join(timeout=60)
    assert not t.is_alive() and features.FeatureStore(out).complete
    assert "waiting for another process" in capsys.readouterr().out


def test_missing_store():
    with pytest.raises(DataError, match="feature store is missing"):
        features.FeatureStore("/nonexistent/f.h5")


KILL_SCRIPT = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, sys.argv[2])
    from test_features import toy_backbone
    from dgstudy import datasets, features
    ds = datasets.load("synthetic", n_images=8, size=(64, 96))
    read = ds.image
    def slow_image(i):          # a slow disk: gives the test a wide window to kill the run
        time.sleep(0.25)
        return read(i)
    ds.image = slow_image
    features.extract(ds, toy_backbone(), downsample=1, out=sys.argv[1], part_size=1, progress=False)
""")


def test_resume_after_kill(data_root, tmp_path):
    out = tmp_path / "killed.h5"
    env = {**os.environ, "DGSTUDY_DATA": str(data_root), "PYTHONPATH": REPO}
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(out), os.path.dirname(__file__)], env=env)
    pdir = features.parts_dir(out)
    try:
        deadline = time.time() + 120
        while len(list(pdir.glob("part-*.h5"))) < 2:
            assert proc.poll() is None, "extraction ended before it could be killed"
            assert time.time() < deadline
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists()
    n_parts = len(list(pdir.glob("part-*.h5")))
    assert 2 <= n_parts < 8
    ds = datasets.load("synthetic", n_images=8, size=(64, 96))
    bb = toy_backbone()
    features.extract(ds, bb, downsample=1, out=out, part_size=1, progress=False)
    ref = features.extract(ds, bb, downsample=1, out=tmp_path / "ref.h5", progress=False)
    a, b = features.FeatureStore(out), features.FeatureStore(ref)
    assert a.images == b.images == list(range(8))
    for i in range(8):
        for layer in ("p1", "p2"):
            assert np.array_equal(a.read(i)[layer], b.read(i)[layer]), (i, layer)
    assert not pdir.exists() and not list(tmp_path.glob(".*.tmp"))


def test_pooled_store_holds_layers_averaged_onto_the_coarser_grid(ds, tmp_path):
    """``pool_stride``: a layer finer than the stride is the mean of its (k x k) windows (the last
    partial row/column dropped); coarser layers are unchanged; the store says it was pooled and is
    never mistaken for an unpooled one."""
    bb = toy_backbone()
    out = features.extract(ds, bb, layers=["c1", "p1", "p2"], out=tmp_path / "p.h5", pool_stride=4,
                           progress=False)
    st = features.FeatureStore(out)
    assert st.attrs["pool_stride"] == 4
    full = features.compute(bb, ds.image(2), layers=["c1", "p1", "p2"], downsample=2, dtype="float32")
    got = st.read(2)
    c1 = full["c1"]                                     # (4, 15, 22) at stride 1 -> windows of 4
    h, w = c1.shape[1] // 4, c1.shape[2] // 4
    ref = c1[:, :h * 4, :w * 4].reshape(4, h, 4, w, 4).mean(axis=(2, 4))
    assert got["c1"].shape == (4, h, w) == (4, 3, 5)
    np.testing.assert_allclose(got["c1"].astype(np.float32), ref, rtol=2e-3, atol=2e-3)
    assert got["p1"].shape == (4, 3, 5)                 # stride 2 -> windows of 2
    assert np.array_equal(got["p2"], full["p2"].astype(np.float16))          # stride 4: as it is
    for i in range(len(ds)):                            # the store holds exactly what compute gives
        ref_i = features.compute(bb, ds.image(i), layers=["c1", "p1", "p2"], pool_stride=4)
        assert all(np.array_equal(st.read(i)[l], ref_i[l]) for l in ref_i)
    with pytest.raises(DataError, match="pool_stride"):
        features.extract(ds, bb, layers=["c1", "p1", "p2"], out=out, progress=False)
    plain = features.extract(ds, bb, out=tmp_path / "u.h5", progress=False)
    assert "pool_stride" not in h5py.File(plain).attrs     # absent = not pooled; opens as before
    assert features.FeatureStore(plain).attrs.get("pool_stride") is None
    p = features.default_store_path(ds, "vgg19", 2, layers=["conv1_2"])
    assert features.default_store_path(ds, "vgg19", 2, layers=["conv1_2"], pool_stride=16).name == \
        p.name.replace(".h5", "-p16.h5")
    with pytest.raises(ValueError, match="multiple"):
        features.pool_layer(torch.zeros(1, 1, 8, 8), 3, 4)
