"""DeepGaze II model pieces: exact gradients, normalisation, closed-form special cases."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter
from torch.func import functional_call

from dgstudy.model import CenterBiasTerm, DeepGazeI, DeepGazeII, Finalizer, GaussianBlur


def test_blur_gradcheck_float64():
    """Exact gradients of the blur with respect to its input and its learned width."""
    torch.manual_seed(0)
    blur = GaussianBlur(sigma=1.7).double()
    x = torch.randn(1, 1, 5, 6, dtype=torch.float64, requires_grad=True)
    for s in (0.6, 1.7):
        sigma = torch.tensor(s, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(
            lambda x, sigma: functional_call(blur, {"sigma": sigma}, (x,)), (x, sigma))


def test_center_bias_gradcheck_float64():
    term = CenterBiasTerm("learned", 0.7).double()
    x = torch.randn(2, 1, 5, 6, dtype=torch.float64, requires_grad=True)
    cb = torch.randn(2, 1, 5, 6, dtype=torch.float64, requires_grad=True)
    w = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, cb, w: functional_call(term, {"weight": w}, (x, cb)),
                                    (x, cb, w))
    torch.testing.assert_close(term(x, cb), x + 0.7 * cb)
    assert not CenterBiasTerm("fixed").weight.requires_grad
    assert torch.equal(CenterBiasTerm("none")(x, None), x)


def test_blur_matches_scipy_and_keeps_constants():
    rng = np.random.default_rng(0)
    img = rng.normal(size=(20, 31))
    for sigma in (0.8, 2.0, 3.5):
        ours = GaussianBlur(sigma).double()(torch.from_numpy(img)[None, None])[0, 0].detach().numpy()
        ref = gaussian_filter(img, sigma, mode="nearest", truncate=3.0)
        np.testing.assert_allclose(ours, ref, atol=1e-6)  # sigma is a float32 parameter
    const = torch.full((1, 1, 9, 13), 2.5)
    torch.testing.assert_close(GaussianBlur(4.0)(const), const)


@pytest.mark.parametrize("size", [(48, 64), (37, 53), (600, 800), (5, 3)])
@pytest.mark.parametrize("kind", ["deepgaze2", "deepgaze1", "softplus"])
def test_output_is_a_normalised_log_density(size, kind):
    torch.manual_seed(1)
    kw = {"deepgaze1": dict(readout="deepgaze1"), "deepgaze2": {},
          "softplus": dict(nonlinearity="softplus_layernorm")}[kind]
    model = DeepGazeII(12, blur_sigma=1.5, **kw)
    h, w = size
    feats = 3 * torch.randn(2, 12, max(1, h // 8), max(1, w // 8))
    cb = torch.log_softmax(torch.randn(2, h * w), 1).reshape(2, h, w)
    out = model(feats, cb)
    assert out.shape == (2, h, w)
    torch.testing.assert_close(torch.logsumexp(out.reshape(2, -1).double(), 1),
                               torch.zeros(2, dtype=torch.float64), atol=1e-5, rtol=0)
    assert torch.isfinite(out).all()


def test_constant_readout_returns_the_center_bias():
    """With a constant readout, weight 1 and no downscaling the output is the centre bias itself."""
    model = DeepGazeII(4, saliency_map_factor=1, blur_sigma=2.0)
    with torch.no_grad():
        for m in model.readout:
            if isinstance(m, torch.nn.Conv2d):
                m.weight.zero_()
                m.bias.fill_(0.3)
    h, w = 11, 17
    yy, xx = np.mgrid[0:h, 0:w]
    cb = -((yy - 5) ** 2 + (xx - 8) ** 2) / 20.0
    cb = cb - np.log(np.exp(cb).sum())
    out = model(torch.randn(1, 4, 3, 5), torch.from_numpy(cb)[None].float())[0]
    np.testing.assert_allclose(out.detach().numpy(), cb, atol=1e-5)
    # weight 0.5: the output is the normalised square root of the centre bias density
    model.center_bias.weight.data.fill_(0.5)
    out = model(torch.randn(1, 4, 3, 5), torch.from_numpy(cb)[None].float())[0].detach().numpy()
    half = 0.5 * cb - np.log(np.exp(0.5 * cb).sum())
    np.testing.assert_allclose(out, half, atol=1e-5)


def test_center_bias_modes_and_pieces():
    feats = torch.randn(1, 3, 4, 5)
    cb1 = torch.log_softmax(torch.randn(1, 40 * 50), 1).reshape(1, 40, 50)
    cb2 = torch.log_softmax(torch.randn(1, 40 * 50), 1).reshape(1, 40, 50)
    torch.manual_seed(0)
    none = DeepGazeII(3, center_bias="none")
    torch.testing.assert_close(none(feats, cb1), none(feats, cb2))           # ignores the centre bias
    torch.testing.assert_close(none(feats, None, out_size=(40, 50)), none(feats, cb1))
    torch.manual_seed(0)
    learned = DeepGazeII(3)
    assert not torch.allclose(learned(feats, cb1), learned(feats, cb2))
    fixed = DeepGazeII(3, center_bias="fixed", center_bias_weight=0.5)
    trainable = {n for n, p in fixed.named_parameters() if p.requires_grad}
    assert "center_bias.weight" not in trainable and "blur.sigma" in trainable
    assert "center_bias.weight" in {n for n, p in learned.named_parameters() if p.requires_grad}
    # the paper's readout: 1x1 convs with 16, 32, 2, 1 channels; DeepGaze I: one linear conv
    convs = [m for m in learned.readout if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [16, 32, 2, 1] and all(c.kernel_size == (1, 1) for c in convs)
    assert [type(m).__name__ for m in learned.readout].count("ReLU") == 3
    dg1 = DeepGazeI(3)
    assert len(dg1.readout) == 1 and isinstance(dg1.readout[0], torch.nn.Conv2d)
    assert dg1.readout[0].out_channels == 1
    # the pointwise convolutions compute exactly what torch's own 1x1 convolution computes
    x = torch.randn(2, 3, 4, 5)
    conv = learned.readout.conv0
    torch.testing.assert_close(conv(x), torch.nn.functional.conv2d(x, conv.weight, conv.bias))
    assert Finalizer(4).reduced_size(600, 800) == (150, 200)
    with pytest.raises(ValueError):
        DeepGazeII(3)(torch.randn(1, 4, 2, 2), cb1)
    # rebuildable from hparams
    again = DeepGazeII(**learned.hparams)
    again.load_state_dict(learned.state_dict())
    torch.testing.assert_close(again(feats, cb1), learned(feats, cb1))
