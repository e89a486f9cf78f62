"""The DeepGaze II model (Kümmerer, Wallis & Bethge 2016) on precomputed features.

:class:`DeepGazeII` ``(in_channels, readout, nonlinearity, center_bias, center_bias_weight,
blur_sigma, saliency_map_factor, learn_sigma, readout_channels)``: ``forward(features (B, C, h, w), log_center_bias
(B, H, W)) -> (B, H, W)``, a natural-log density over the stimulus pixels (``logsumexp(out[b]) ==
0``). The pipeline, each a named submodule: standardise the channels (``feature_mean`` /
``feature_std`` buffers) -> ``readout`` (1x1 convolutions, :func:`make_readout`) -> bilinear to the
reduced grid H/f x W/f (f = ``saliency_map_factor``) -> ``blur`` (:class:`GaussianBlur`, sigma in
pixels of the reduced grid) -> ``center_bias`` (+ weight x log centre bias, area-averaged to the
reduced grid) -> ``finalizer`` (bilinear up to H x W, log-softmax over all pixels).
:func:`DeepGazeI` is the same with a linear readout; ``hparams`` rebuilds a saved model.

Pixel convention: ``out[b, i, j]`` is the log-probability of pixel (row i, column j), i.e. of a
fixation with ``floor(y) == i`` and ``floor(x) == j``. Two exact CPU speed-ups (the 1x1
convolution as a matrix product, the blur as matrix products) are in :mod:`dgstudy.model_fast`.
Reference: docs/model.md.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from .datasets.pixels import round_half_up
from .model_fast import PointwiseConv, bilinear_matrix, replicate_blur_matrix  # as matmuls

READOUT_CHANNELS = (16, 32, 2, 1)   # the paper's readout network


class LayerNorm(nn.Module):
    """Layer norm of (B, C, h, w) over the channels, height and width of each image together (as
    the authors' later code, deepgaze_pytorch's ``LayerNorm``), then a per-channel scale and shift."""

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x):
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        var = x.var(dim=(1, 2, 3), unbiased=False, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return x * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


def make_readout(in_channels: int, readout: str = "deepgaze2", nonlinearity: str = "relu",
                 channels=None) -> nn.Sequential:
    """The readout network as a named ``nn.Sequential`` (``conv0``, ``act0``, ... ``conv3``).

    ``readout='deepgaze2'``: 1x1 convs with ``channels`` output channels (default the paper's
    16, 32, 2, 1; the last must be 1); after each but the last, ``nonlinearity``:
    ``'relu'`` (paper: ``conv -> ReLU``) or ``'softplus_layernorm'`` (the authors' later readout:
    ``norm -> conv -> softplus`` for every conv but the last, ``norm`` = :class:`LayerNorm`
    over each image's channels, height and width). The last conv is linear.
    ``readout='deepgaze1'``: a single linear 1x1 conv to one channel (DeepGaze I). The convs are
    :class:`~dgstudy.model_fast.PointwiseConv`: ``nn.Conv2d(c_in, c_out, 1)`` computed as a matmul.
    """
    layers: list[tuple[str, nn.Module]] = []
    if readout == "deepgaze1":
        layers.append(("conv0", PointwiseConv(in_channels, 1)))
        return nn.Sequential(OrderedDict(layers))
    if readout != "deepgaze2":
        raise ValueError(f"readout must be 'deepgaze2' or 'deepgaze1', got {readout!r}")
    if nonlinearity not in ("relu", "softplus_layernorm"):
        raise ValueError(f"nonlinearity must be 'relu' or 'softplus_layernorm', got {nonlinearity!r}")
    channels = tuple(READOUT_CHANNELS if channels is None else (int(c) for c in channels))
    if channels[-1] != 1 or min(channels) < 1:
        raise ValueError(f"readout channels must be positive and end in 1, got {list(channels)}")
    c_in = in_channels
    for k, c_out in enumerate(channels):
        last = k == len(channels) - 1
        if nonlinearity == "softplus_layernorm" and not last:
            layers.append((f"norm{k}", LayerNorm(c_in)))
        layers.append((f"conv{k}", PointwiseConv(c_in, c_out)))
        if not last:
            layers.append((f"act{k}", nn.ReLU() if nonlinearity == "relu" else nn.Softplus()))
        c_in = c_out
    return nn.Sequential(OrderedDict(layers))


class GaussianBlur(nn.Module):
    """Separable Gaussian blur of (B, C, h, w) with a learnable width ``sigma`` (pixels).

    Definition (:meth:`reference`): each axis is convolved with :meth:`kernel` after padding the
    borders by replication (no darkening towards the edges). The kernel is sampled at integer
    offsets up to ``radius = int(truncate * sigma + 0.5)`` (as ``scipy.ndimage.gaussian_filter``;
    at least 1, at most the map's side) and normalised to sum 1, so constant maps are unchanged.
    The gradient with respect to ``sigma`` is exact for the sampled kernel (the radius is
    piecewise constant). ``forward`` computes the same as two matrix products (faster on CPU).
    """

    def __init__(self, sigma: float = 8.0, learn_sigma: bool = True, truncate: float = 3.0,
                 min_sigma: float = 1e-2):
        super().__init__()
        self.sigma = nn.Parameter(torch.tensor(float(sigma)), requires_grad=learn_sigma)
        self.truncate = truncate
        self.min_sigma = min_sigma

    def kernel(self, size_limit: int, dtype, device) -> torch.Tensor:
        sigma = self.sigma.to(dtype).clamp(min=self.min_sigma)
        radius = int(self.truncate * float(sigma.detach()) + 0.5)   # as scipy.ndimage
        radius = max(1, min(radius, size_limit))
        t = torch.arange(-radius, radius + 1, dtype=dtype, device=device)
        k = torch.exp(-0.5 * (t / sigma) ** 2)
        return k / k.sum()

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        """The blur as defined: replicate padding, then a 1-D convolution along each axis."""
        b, c, h, w = x.shape
        y = x.reshape(b * c, 1, h, w)
        kw, kh = self.kernel(w, x.dtype, x.device), self.kernel(h, x.dtype, x.device)
        rw, rh = (len(kw) - 1) // 2, (len(kh) - 1) // 2
        y = F.conv2d(F.pad(y, (rw, rw, 0, 0), mode="replicate"), kw.view(1, 1, 1, -1))
        y = F.conv2d(F.pad(y, (0, 0, rh, rh), mode="replicate"), kh.view(1, 1, -1, 1))
        return y.reshape(b, c, h, w)

    def matrix(self, n: int, dtype, device) -> torch.Tensor:
        """(n, n) matrix M with ``blur_1d(v) = v @ M`` for a length-n signal, borders replicated."""
        return replicate_blur_matrix(self.kernel(n, dtype, device), n)

    def forward(self, x: torch.Tensor, resize: tuple | None = None) -> torch.Tensor:
        """:meth:`reference` as two small matrix products (rows, then columns): much faster on
        CPU than convolutions, in particular their backward pass (equal to rounding, tested).

        ``resize=(r_h, r_w)``: the blur of ``r_h @ x @ r_w.T`` (e.g. the bilinear resize of
        :func:`~dgstudy.model_fast.bilinear_matrix`; None for an axis left as it is), computed as
        one product per axis with the resize and blur matrices multiplied first."""
        r_h, r_w = resize or (None, None)
        h = x.shape[-2] if r_h is None else r_h.shape[0]
        w = x.shape[-1] if r_w is None else r_w.shape[0]
        m_w = self.matrix(w, x.dtype, x.device)
        m_h = self.matrix(h, x.dtype, x.device).transpose(0, 1)
        x = x @ (m_w if r_w is None else r_w.transpose(0, 1) @ m_w)
        return (m_h if r_h is None else m_h @ r_h) @ x

    def extra_repr(self) -> str:
        return f"sigma={float(self.sigma):.3f}, learn_sigma={self.sigma.requires_grad}"


class CenterBiasTerm(nn.Module):
    """Adds ``weight * log_center_bias`` to a map.

    ``mode='learned'``: ``weight`` is trained; ``'fixed'``: kept at its initial value;
    ``'none'``: nothing is added (the model ignores the centre bias).
    """

    def __init__(self, mode: str = "learned", weight: float = 1.0):
        super().__init__()
        if mode not in ("learned", "fixed", "none"):
            raise ValueError(f"center_bias must be 'learned', 'fixed' or 'none', got {mode!r}")
        self.mode = mode
        self.weight = nn.Parameter(torch.tensor(float(weight)), requires_grad=mode == "learned")

    def forward(self, x: torch.Tensor, log_center_bias: torch.Tensor | None) -> torch.Tensor:
        """``x``: (B, 1, h, w); ``log_center_bias``: (B, 1, h, w) (or broadcastable)."""
        if self.mode == "none":
            return x
        if log_center_bias is None:
            raise ValueError(f"center_bias={self.mode!r} needs a log centre bias")
        return x + self.weight.to(x.dtype) * log_center_bias

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, weight={float(self.weight):.3f}"


class Finalizer(nn.Module):
    """Resolution handling and normalisation: reduced grid size, resizing, log-softmax.

    The reduced grid is ``(round_half_up(H / f), round_half_up(W / f))`` for ``f =
    saliency_map_factor`` (:func:`dgstudy.datasets.pixels.round_half_up`); maps are resized bilinearly (``align_corners=False``), the log centre
    bias is area-averaged onto it. ``forward`` upsamples a (B, 1, h', w') map to (H, W) and
    returns its log-softmax over all pixels, shape (B, H, W).
    """

    def __init__(self, saliency_map_factor: int = 4):
        super().__init__()
        if saliency_map_factor < 1:
            raise ValueError(f"saliency_map_factor must be >= 1, got {saliency_map_factor}")
        self.saliency_map_factor = saliency_map_factor

    def reduced_size(self, height: int, width: int) -> tuple[int, int]:
        f = self.saliency_map_factor
        return round_half_up(height / f), round_half_up(width / f)

    @staticmethod
    def resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        if tuple(x.shape[-2:]) == tuple(size):
            return x
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)

    @staticmethod
    def resize_matrices(size_in, size_out, dtype=torch.float32, device="cpu"):
        """(r_h, r_w): the matrices of :meth:`resize` from ``size_in`` to ``size_out`` along each
        axis (``r_h @ x @ r_w.T``; :func:`~dgstudy.model_fast.bilinear_matrix`), None where the
        axis keeps its size."""
        return tuple(None if a == b else bilinear_matrix(int(a), int(b), dtype, str(device))
                     for a, b in zip(size_in, size_out))

    @staticmethod
    def downscale(log_center_bias: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """(B, H, W) -> (B, 1, h', w') by area averaging (of the log values); one map expanded
        over the batch (stride 0) gives (1, 1, h', w'), which the centre-bias term broadcasts."""
        x = log_center_bias[:, None]
        if tuple(x.shape[-2:]) == tuple(size):
            return x
        if x.shape[0] > 1 and x.stride(0) == 0:    # one map expanded over the batch: pool it once,
            return F.interpolate(x[:1], size=size, mode="area")   # (1, 1, h', w'), broadcast by the sum
        return F.interpolate(x, size=size, mode="area")

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        x = self.resize(x, size)[:, 0]
        b = x.shape[0]
        return torch.log_softmax(x.reshape(b, -1), dim=1).reshape(b, *size)

    def extra_repr(self) -> str:
        return f"saliency_map_factor={self.saliency_map_factor}"


class DeepGazeII(nn.Module):
    """DeepGaze II on precomputed features (see the module docstring for the pipeline).

    ``forward(features (B, C, h, w), log_center_bias (B, H, W)) -> (B, H, W)`` natural-log density
    over the stimulus pixels. ``log_center_bias`` fixes the output size; with
    ``center_bias='none'`` it may be ``None`` only if ``out_size=(H, W)`` is given.

    ``hparams`` holds the constructor arguments (JSON-able) so a saved state dict can be
    rebuilt with ``DeepGazeII(**hparams)``.
    """

    def __init__(self, in_channels: int, readout: str = "deepgaze2", nonlinearity: str = "relu",
                 center_bias: str = "learned", center_bias_weight: float = 1.0,
                 blur_sigma: float = 8.0, saliency_map_factor: int = 4, learn_sigma: bool = True,
                 readout_channels=None):
        super().__init__()
        self.hparams = dict(in_channels=in_channels, readout=readout, nonlinearity=nonlinearity,
                            center_bias=center_bias, center_bias_weight=center_bias_weight,
                            blur_sigma=blur_sigma, saliency_map_factor=saliency_map_factor,
                            learn_sigma=learn_sigma)
        if readout_channels is not None:      # absent from the hparams of the paper's widths
            self.hparams["readout_channels"] = [int(c) for c in readout_channels]
        self.register_buffer("feature_mean", torch.zeros(in_channels))
        self.register_buffer("feature_std", torch.ones(in_channels))
        self.readout = make_readout(in_channels, readout, nonlinearity, readout_channels)
        self.blur = GaussianBlur(blur_sigma, learn_sigma=learn_sigma)
        self.center_bias = CenterBiasTerm(center_bias, center_bias_weight)
        self.finalizer = Finalizer(saliency_map_factor)

    def set_feature_normalization(self, mean, std) -> None:
        """Standardise each input channel as (x - mean) / std (std floored at 1e-6)."""
        mean = torch.as_tensor(mean, dtype=torch.float32).reshape(-1)
        std = torch.as_tensor(std, dtype=torch.float32).reshape(-1).clamp(min=1e-6)
        self.feature_mean.copy_(mean)
        self.feature_std.copy_(std)

    def readout_weights(self) -> list[torch.Tensor]:
        """The readout's convolution weights (the L1 penalty's target; biases excluded)."""
        return [m.weight for m in self.readout if isinstance(m, nn.Conv2d)]

    def saliency_logits(self, features: torch.Tensor) -> torch.Tensor:
        """Standardised features through the readout: (B, 1, h, w)."""
        x = (features - self.feature_mean.view(1, -1, 1, 1)) / self.feature_std.view(1, -1, 1, 1)
        return self.readout(x)

    def forward(self, features: torch.Tensor, log_center_bias: torch.Tensor | None,
                out_size: tuple[int, int] | None = None, reduced: bool = False) -> torch.Tensor:
        """Log-density over the H x W stimulus pixels, (B, H, W).

        ``reduced=True`` returns instead the log-density over the cells of the reduced grid
        (B, h', w') (each cell covers about ``(H/h') x (W/w')`` pixels): the same map before the
        final upsampling, normalised over the cells. Training uses it because it is ~f^2 times
        cheaper; for maps that are smooth on the scale of a cell (the blur sees to that)
        ``p(pixel) ~= p(cell) / pixels per cell``.
        """
        if features.dim() != 4 or features.shape[1] != self.hparams["in_channels"]:
            raise ValueError(f"features must be (B, {self.hparams['in_channels']}, h, w), "
                             f"got {tuple(features.shape)}")
        features = features.to(self.feature_mean.dtype)
        if log_center_bias is not None:
            log_center_bias = log_center_bias.to(features.dtype)
            if log_center_bias.dim() == 2:
                log_center_bias = log_center_bias.expand(features.shape[0], *log_center_bias.shape)
            size = tuple(log_center_bias.shape[-2:])
        elif out_size is not None:
            size = tuple(out_size)
        else:
            raise ValueError("give log_center_bias (B, H, W) or out_size=(H, W)")
        return self.density(self.saliency_logits(features), log_center_bias, size, reduced)

    def density(self, logits: torch.Tensor, log_center_bias: torch.Tensor | None,
                size: tuple[int, int], reduced: bool = False) -> torch.Tensor:
        """The readout's map ``logits`` (B, 1, h, w) -> log-density over the (H, W) = ``size``
        pixels (or, ``reduced``, over the reduced grid's cells): bilinear to the reduced grid,
        blur, centre bias, finalizer (:meth:`forward` after the readout). The resize and the blur
        are one product per axis (``GaussianBlur.forward(resize=...)``), equal to
        ``blur.reference(finalizer.resize(logits))`` up to float rounding (tested)."""
        small = self.finalizer.reduced_size(*size)
        x = self.blur(logits, resize=self.finalizer.resize_matrices(tuple(logits.shape[-2:]), small,
                                                                     logits.dtype, logits.device))
        cb = None if log_center_bias is None or self.center_bias.mode == "none" \
            else self.finalizer.downscale(log_center_bias.to(logits.dtype), small)
        x = self.center_bias(x, cb)
        if reduced:
            return self.finalizer(x, small)
        return self.finalizer(x, size)


def DeepGazeI(in_channels: int, **kw) -> DeepGazeII:
    """DeepGaze I: the same machinery as :class:`DeepGazeII` with a linear readout."""
    kw.setdefault("readout", "deepgaze1")
    return DeepGazeII(in_channels, **kw)

