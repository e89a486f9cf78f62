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
    reads them in place (no transpose copy) and gives the same bits as on contiguous features."""
    torch.manual_seed(3)
    conv = PointwiseConv(6, 4)
    held = torch.randn(2, 3, 5, 6)
    view = held.permute(0, 3, 1, 2)
    assert view.reshape(2, 6, 15).mT.is_contiguous()          # what matmul multiplies: no copy
    assert view.reshape(2, 6, 15).mT.data_ptr() == held.data_ptr()
    assert torch.equal(conv(view), conv(view.contiguous()))
