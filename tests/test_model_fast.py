"""dgstudy.model_fast (what the model runs) equals the plain definitions it replaces."""
from __future__ import annotations

import pytest
import torch

from dgstudy.model import DeepGazeII, GaussianBlur
from dgstudy.model_fast import PointwiseConv


@pytest.mark.parametrize("h, w", [(20, 31), (5, 3), (1, 7), (2, 2), (64, 48)])
@pytest.mark.parametrize("sigma", [0.3, 1.7, 4.0, 30.0])       # 30: radius clamped to the side
def test_blur_forward_equals_the_padded_separable_convolution(h, w, sigma):
    torch.manual_seed(0)
    blur = GaussianBlur(sigma).double()
    x = torch.randn(2, 3, h, w, dtype=torch.float64, requires_grad=True)
    fast, plain = blur(x), blur.reference(x)
    torch.testing.assert_close(fast, plain, rtol=1e-9, atol=1e-9)
    g = torch.randn_like(fast)
    fast_grads = torch.autograd.grad(fast, (x, blur.sigma), g)
    plain_grads = torch.autograd.grad(plain, (x, blur.sigma), g)
    for a, b in zip(fast_grads, plain_grads):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_pointwise_conv_is_a_1x1_conv():
    torch.manual_seed(1)
    fast = PointwiseConv(5, 7).double()
    plain = torch.nn.Conv2d(5, 7, 1).double()
    plain.load_state_dict(fast.state_dict())
    assert list(fast.state_dict()) == list(plain.state_dict()) == ["weight", "bias"]
    x = torch.randn(3, 5, 4, 6, dtype=torch.float64, requires_grad=True)
    a, b = fast(x), plain(x)
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    ga = torch.autograd.grad(a.square().sum(), (x, fast.weight, fast.bias))
    gb = torch.autograd.grad(b.square().sum(), (x, plain.weight, plain.bias))
    for u, v in zip(ga, gb):
        torch.testing.assert_close(u, v, rtol=1e-9, atol=1e-9)


def test_state_dict_keys_of_saved_runs():
    """The keys saved runs hold (model.pt): the fast pieces must not rename anything."""
    readout = [f"readout.conv{k}.{p}" for k in range(4) for p in ("weight", "bias")]
    expected = ["feature_mean", "feature_std", *readout, "blur.sigma", "center_bias.weight"]
    assert list(DeepGazeII(8).state_dict()) == expected
    soft = list(DeepGazeII(8, nonlinearity="softplus_layernorm").state_dict())
    assert [k for k in soft if "norm" not in k] == expected
    assert list(DeepGazeII(8, readout="deepgaze1").state_dict()) == [
        "feature_mean", "feature_std", "readout.conv0.weight", "readout.conv0.bias", "blur.sigma",
        "center_bias.weight"]



def test_pointwise_conv_on_a_channels_last_view_makes_no_copy():
    """Features held (B, h, w, C), as training holds them, viewed as (B, C, h, w): the 1x1 conv
    reads them in place (no transpose copy), gives the same bits as on contiguous features, and
    its output is again such a view, so the next conv reads it in place too."""
    torch.manual_seed(3)
    conv, conv2 = PointwiseConv(6, 4), PointwiseConv(4, 2)
    held = torch.randn(2, 3, 5, 6)
    view = held.permute(0, 3, 1, 2)
    rows = view.permute(0, 2, 3, 1).contiguous().view(-1, 6)
    assert rows.data_ptr() == held.data_ptr()                   # what F.linear multiplies: no copy
    out = conv(view)
    assert out.permute(0, 2, 3, 1).is_contiguous()
    assert torch.equal(out, conv(view.contiguous()))
    assert torch.equal(conv2(out), conv2(out.contiguous()))


@pytest.mark.parametrize("c_in, c_out", [(704, 16), (9, 16), (16, 32), (32, 2), (2, 1), (6, 4)])
def test_pointwise_conv_rows_in_blocks_give_the_same_bits(c_in, c_out):
    """``forward`` computes one product per image (what the training's fast path computes on
    each image's rows, read in place from the fold's tensor); on all rows at once the products
    are the same bits."""
    torch.manual_seed(4)
    conv = PointwiseConv(c_in, c_out)
    x = torch.randn(5, c_in, 7, 9)
    whole = conv(x).permute(0, 2, 3, 1).reshape(-1, c_out)
    held = x.permute(0, 2, 3, 1).contiguous().view(-1, c_in)
    blocks = conv.rows([held[k * 63:(k + 1) * 63] for k in range(5)])
    assert torch.equal(blocks, whole)


@pytest.mark.parametrize("size_in, size_out", [((38, 50), (150, 200)), ((19, 25), (150, 200)),
                                               ((7, 5), (7, 11)), ((40, 30), (13, 9)), ((1, 4), (3, 4))])
@pytest.mark.parametrize("sigma", [0.7, 8.0])
def test_density_resize_and_blur_as_one_product_per_axis(size_in, size_out, sigma):
    """``DeepGazeII.density`` resizes and blurs with one product per axis (bilinear and blur
    matrices multiplied first): equal to the definitions it replaces, ``F.interpolate`` then
    ``GaussianBlur.reference``, in value and gradient (float64 to 1e-10; float32 to rounding:
    2e-6 in value, 1e-3 of the largest gradient, summed over 60,000 cells for the scalars)."""
    for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 2e-6)):
        torch.manual_seed(5)
        model = DeepGazeII(3, blur_sigma=sigma, saliency_map_factor=1).to(dtype)
        logits = torch.randn(2, 1, *size_in, dtype=dtype, requires_grad=True)
        cb = torch.randn(1, *size_out, dtype=dtype).log_softmax(-1).expand(2, *size_out)
        fast = model.density(logits, cb, size_out)
        x = model.blur.reference(model.finalizer.resize(logits, size_out))
        plain = model.finalizer(model.center_bias(x, model.finalizer.downscale(cb, size_out)), size_out)
        torch.testing.assert_close(fast, plain, rtol=tol, atol=tol)
        g = torch.randn_like(fast)
        params = (logits, model.blur.sigma, model.center_bias.weight)
        for a, b in zip(torch.autograd.grad(fast, params, g), torch.autograd.grad(plain, params, g)):
            gtol = tol * 10 if dtype == torch.float64 else 1e-3 * float(b.abs().max())
            torch.testing.assert_close(a, b, rtol=gtol, atol=gtol)
