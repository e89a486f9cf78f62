"""Registration: every layer's cells placed where their receptive fields are (dgstudy.backbones.geometry).

The receptive-field centre of a cell is measured independently of dgstudy's padding arithmetic, by
a gradient-support probe: the rows of the input on which the cell's value depends (non-zero
gradient, summed over channels and a few random inputs) span its receptive field, whose midpoint
is the centre. The input is taller than every receptive field probed, so interior cells are not
clipped by the border. Then the stacked grid (what the readout sees) must put each cell's value
where that centre is, to within a quarter cell; the old mapping (each grid stretched over the
image, bilinear with ``align_corners=False``) fails the same check.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dgstudy import backbones, features
from dgstudy.backbones import geometry

WIDTH = 24          # the probed axis is the rows; a narrow input keeps the probe cheap


def probed_centres(bb, layer: str, height: int, cells, reps: int) -> np.ndarray:
    """Midpoint of the gradient support (rows, continuous input pixels) of cells ``cells`` of
    ``layer``'s middle column."""
    gen = torch.Generator().manual_seed(0)
    xs = [torch.rand(1, 3, height, WIDTH, generator=gen).requires_grad_(True) for _ in range(reps)]
    outs = [bb.features(x, [layer])[layer] for x in xs]
    centres = []
    for k in cells:
        support = torch.zeros(height)
        for x, f in zip(xs, outs):
            grad, = torch.autograd.grad(f[0, :, k, f.shape[-1] // 2].sum(), x, retain_graph=True)
            support += grad.abs().sum(dim=(0, 1, 3))
        rows = torch.nonzero(support > 0).ravel()
        centres.append((float(rows[0]) + float(rows[-1]) + 1) / 2)
    return np.array(centres)


def stretched(arr: np.ndarray, n: int) -> np.ndarray:
    """The old mapping: a (n_src,) profile stretched onto n cells (bilinear, align_corners=False)."""
    t = torch.from_numpy(arr.astype(np.float32))[None, None, :, None]
    return F.interpolate(t, size=(n, 1), mode="bilinear", align_corners=False)[0, 0, :, 0].numpy()


# (backbone, layers probed, input heights: one with every stride level even, one odd, reps)
CASES = [
    ("efficientnet_lite0", ["block3", "block4", "block5", "block6"], (1024, 1001), 1),
    ("efficientnet_lite1", ["block3", "block6"], (1600, 1569), 1),
    ("efficientnet_lite2", ["block3", "block6"], (1792, 1761), 1),
    ("vgg19_random", ["conv5_1", "relu5_2", "relu5_4"], (300, 301), 3),   # the architecture of vgg19
]


@pytest.fixture(scope="module")
def nets():
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = backbones.get(name)
        return cache[name]
    return get


@pytest.mark.slow
@pytest.mark.parametrize("name,layers,heights,reps", CASES, ids=[c[0] for c in CASES])
def test_cells_lie_where_their_receptive_fields_are(nets, name, layers, heights, reps):
    bb = nets(name)
    old_error = 0.0
    for height in heights:
        axes = bb.axes(height, WIDTH)
        stacked_axes = {l: axes[l] for l in layers}
        finest = max(layers, key=lambda l: axes[l][0].n)
        target = geometry.image_aligned(axes[finest][0].n, height)
        for layer in layers:
            a = axes[layer][0]
            cells = [a.n // 2 - 1, a.n // 2, a.n // 2 + 1]
            true = probed_centres(bb, layer, height, cells, reps)
            # 1. the traced centre of each probed cell is its receptive-field centre
            assert np.abs(true - (a.offset + a.step * np.array(cells))).max() <= a.step / 4, \
                (name, height, layer, true, a)
            # the probed centres are evenly spaced: the line through them gives every cell's centre
            slope, icpt = np.polyfit(cells, true, 1)
            assert np.allclose(true, icpt + slope * np.array(cells), atol=0.5)
            centre = icpt + slope * np.arange(a.n)
            # 2. after stacking, each cell carries the value found at its own position: stack a
            # layer whose value is its cells' receptive-field centre and read the position back
            value = np.broadcast_to(centre[None, :, None], (1, a.n, axes[layer][1].n)).astype(np.float32)
            feats = {l: (value if l == layer else np.zeros((1,) + (axes[l][0].n, axes[l][1].n), np.float32))
                     for l in layers}
            got = features.stack_layers(feats, stacked_axes, (height, WIDTH), layers)[layers.index(layer), :, 0]
            inside = (target.centres() >= centre[0]) & (target.centres() <= centre[-1])
            assert inside.sum() >= 3
            err = np.abs(got[inside] - target.centres()[inside]).max()
            assert err <= target.step / 4, (name, height, layer, err)
            old = stretched(centre, target.n)
            old_error = max(old_error, np.abs(old[inside] - target.centres()[inside]).max() / target.step)
    # the same check fails on the old mapping (grids stretched over the image)
    assert old_error > 1 / 4, (name, old_error)


def test_trace_matches_the_padding_rules():
    """Closed-form cases: TF 'same' padding at stride 2 on even and odd sizes, floor pooling."""
    bb = backbones.get("vgg19_random")
    a = bb.axes(300, 400)["conv5_1"][0]
    assert (a.n, a.step, a.offset) == (18, 16.0, 8.0)       # 18 cells cover 288 of 300 rows
    assert bb.axes(300, 400)["pool5"][0].offset == 16.0
    lite = backbones.get("efficientnet_lite0")
    even = lite.axes(512, 512)["block3"][0]                 # every stride level even: s (k + 1) - 1/2
    assert (even.n, even.step, even.offset) == (32, 16.0, 15.5)
    stem_odd = lite.axes(301, 301)["stem"][0]               # odd: one padding row on each side
    assert (stem_odd.n, stem_odd.offset) == (151, 0.5)
    stem_even = lite.axes(300, 300)["stem"][0]              # even: the extra row at the bottom
    assert (stem_even.n, stem_even.offset) == (150, 1.5)
    # pooled layers (feature stores with pool_stride) and the image-aligned grid
    assert geometry.Axis(10, 2.0, 1.5).pooled(4) == geometry.Axis(2, 8.0, 4.5)
    assert np.allclose(geometry.image_aligned(4, 10.0).centres(), [1.25, 3.75, 6.25, 8.75])


def test_resample_matrix_is_linear_interpolation():
    src = geometry.Axis(5, 4.0, 2.0)                          # centres 2, 6, 10, 14, 18
    m = geometry.resample_matrix(src, np.array([0.0, 2.0, 4.0, 7.0, 18.0, 25.0]))
    assert np.allclose(m.sum(1), 1.0)
    v = np.array([1.0, 3.0, 5.0, 7.0, 9.0])                   # linear in the centre position
    assert np.allclose(m @ v, [1.0, 1.0, 2.0, 3.5, 9.0, 9.0])  # edges keep the edge value
    assert np.allclose(geometry.resample_matrix(geometry.Axis(1, 1.0, 0.5), np.arange(3.0)), 1.0)


def test_store_and_prediction_agree(data_root, tmp_path):
    """A store's stacked features equal the same image's compute_stacked (the predictions' input),
    at an odd size; the store records each image's cell centres."""
    from dgstudy import datasets
    ds = datasets.load("synthetic", n_images=2, size=(67, 91))
    bb = backbones.get("efficientnet_lite0")
    st = features.FeatureStore(features.extract(ds, bb, out=tmp_path / "s.h5", progress=False))
    h, w = features.input_size(67, 91, 2)
    assert st.axes(0) == features.layer_axes(bb.axes(h, w), st.layers)
    assert np.array_equal(st.stacked(1), features.compute_stacked(bb, ds.image(1)))
