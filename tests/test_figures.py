"""dgstudy.figures: every figure renders from real (generated) data, shows the numbers it is
given, and is saved as a valid PNG and PDF without leftovers."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dgstudy import ablations, datasets, figures


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return datasets.load("synthetic", n_images=4, size=(24, 32), folder=tmp_path_factory.mktemp("syn"))


def _check_saved(paths):
    png, pdf = paths
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000
    assert pdf.read_bytes()[:5] == b"%PDF-" and pdf.stat().st_size > 1000
    assert not list(png.parent.glob(".*tmp"))


def test_examples_show_the_stimulus_fixations_and_each_density(synthetic, tmp_path):
    import matplotlib.pyplot as plt
    uniform = lambda i: np.full(tuple(synthetic.sizes[i]), -np.log(synthetic.sizes[i].prod()))  # noqa: E731
    fig = figures.plot_examples(synthetic, {"truth": synthetic, "uniform": uniform}, images=[0, 2])
    axes = np.array(fig.axes[:6]).reshape(2, 3)
    assert fig.axes[6].get_ylabel() == "density / its maximum"       # one colour bar for the densities
    # the fixation scatter holds exactly image 2's fixations at their (x, y)
    offsets = axes[1, 0].collections[0].get_offsets()
    fx = synthetic.fixations_of(2)
    np.testing.assert_allclose(offsets, fx[["x", "y"]].to_numpy())
    # the density panel is exp(log p - max): peak 1 where the true density peaks
    shown = axes[0, 1].images[0].get_array()
    truth = synthetic.log_density(0)
    np.testing.assert_allclose(shown, np.exp(truth - truth.max()))
    assert axes[0, 1].images[0].get_extent() == [0, 32, 24, 0]
    _check_saved(figures.save(fig, "examples", tmp_path))
    plt.close(fig)
    # on a log scale: log10(p / max p), clipped at three decades below the peak, one colour bar
    fig = figures.plot_examples(synthetic, {"truth": synthetic, "uniform": uniform}, images=[0, 2], decades=3)
    assert fig.axes[6].get_ylabel() == "log10 (density / its maximum)"
    shown = np.asarray(np.array(fig.axes[:6]).reshape(2, 3)[0, 1].images[0].get_array())
    np.testing.assert_allclose(shown, np.maximum((truth - truth.max()) / np.log(10), -3))
    assert shown.max() == 0 and fig.axes[1].images[0].get_clim() == (-3, 0)
    flat = np.array(fig.axes[:6]).reshape(2, 3)[0, 2].images[0].get_array()
    assert np.all(np.asarray(flat) == 0)                 # a uniform density is its maximum everywhere
    plt.close(fig)


def test_ablation_bars_have_the_table_heights_and_intervals(tmp_path):
    import matplotlib.pyplot as plt
    table = pd.DataFrame({"condition": ["a", "b", "c"], "IG": [0.5, 0.2, -0.1],
                          "IG_lo": [0.4, 0.15, -0.2], "IG_hi": [0.7, 0.3, 0.0]})
    fig = figures.plot_ablation(table, order=["c", "a", "b"], highlight="a")
    ax = fig.axes[0]
    heights = [p.get_height() for p in ax.patches]
    assert heights == pytest.approx([-0.1, 0.5, 0.2])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["c", "a", "b"]
    segs = ax.collections[0].get_segments()           # one vertical error bar per bar
    spans = [(s[:, 1].min(), s[:, 1].max()) for s in segs]
    assert spans == [pytest.approx((-0.2, 0.0)), pytest.approx((0.4, 0.7)), pytest.approx((0.15, 0.3))]
    assert ax.patches[1].get_facecolor() != ax.patches[0].get_facecolor()  # highlighted
    _check_saved(figures.save(fig, "ablation", tmp_path))
    plt.close(fig)


def test_ablation_plot_reads_a_study_table(tmp_path):
    import matplotlib.pyplot as plt
    rng = np.random.default_rng(0)
    per_image = pd.DataFrame({"image": range(30), "n_fix": rng.integers(5, 20, 30),
                              "LL": rng.normal(1, 0.2, 30), "IG": rng.normal(0.3, 0.1, 30)})
    table = ablations.ablation_table({"x": ({}, per_image)}, n_boot=200)
    fig = figures.plot_ablation(table)
    assert fig.axes[0].patches[0].get_height() == pytest.approx(table.IG[0])
    plt.close(fig)


def test_center_bias_per_image_blur_and_curves(synthetic, tmp_path):
    import matplotlib.pyplot as plt
    logd = synthetic.log_density(0)
    xy = np.column_stack([synthetic.fixations.x / 32, synthetic.fixations.y / 24])
    fig = figures.plot_center_bias(logd, xy)
    np.testing.assert_allclose(fig.axes[0].images[0].get_array(), logd)  # log scale, unchanged
    _check_saved(figures.save(fig, "center_bias", tmp_path))
    plt.close(fig)

    per_image = pd.DataFrame({"LL": [1.0, 2.0, 0.5], "IG": [0.5, -0.2, 0.1]})
    fig = figures.plot_per_image_ig(per_image)
    scatter = fig.axes[0].collections[0].get_offsets()
    np.testing.assert_allclose(scatter, [[0.5, 1.0], [2.2, 2.0], [0.4, 0.5]])  # (LL - IG, LL)
    # the sorted IG as a filled step curve (0 and the three values), the median as a dotted line
    verts = fig.axes[1].collections[0].get_paths()[0].vertices
    assert sorted(set(np.round(verts[:, 1], 9))) == pytest.approx([-0.2, 0.0, 0.1, 0.5])
    assert fig.axes[1].lines[-1].get_ydata()[0] == pytest.approx(0.1)
    assert "2 of 3 images" in fig.axes[0].get_title()
    assert len(fig.axes) == 2                                           # no IG_gold column, no third panel
    plt.close(fig)
    fig = figures.plot_per_image_ig(per_image.assign(IG_gold=[0.9, 0.1, 0.6]))
    np.testing.assert_allclose(fig.axes[2].collections[0].get_offsets(), [[0.9, 0.5], [0.1, -0.2], [0.6, 0.1]])
    assert f"r = {np.corrcoef([0.9, 0.1, 0.6], [0.5, -0.2, 0.1])[0, 1]:.2f}" in fig.axes[2].get_title()
    plt.close(fig)

    fig = figures.plot_blur([30.0, 34.0])
    assert [p.get_height() for p in fig.axes[0].patches] == pytest.approx([30.0, 34.0])
    line = fig.axes[1].lines[0].get_xydata()
    at_sigma = np.interp(30.0, line[:, 0], line[:, 1])
    assert at_sigma == pytest.approx(np.exp(-0.5), abs=2e-3)   # Gaussian profile of width sigma
    _check_saved(figures.save(fig, "blur", tmp_path))
    plt.close(fig)

    logs = {"fold 0": pd.DataFrame({"epoch": [1, 2, 3], "val_LL": [0.1, 0.3, 0.2], "val_ig": [0.0, 0.2, 0.1]})}
    fig = figures.plot_training_curves(logs, y="val_ig")
    np.testing.assert_allclose(fig.axes[0].lines[0].get_xydata(), [[1, 0.0], [2, 0.2], [3, 0.1]])
    np.testing.assert_allclose(fig.axes[0].lines[1].get_xydata(), [[2, 0.2]])    # the epoch kept
    plt.close(fig)


def test_ablation_differences_panel_leaves_the_baseline_out(tmp_path):
    import matplotlib.pyplot as plt
    table = pd.DataFrame({"condition": ["centre bias alone", "none", "learned", "linear"],
                          "IG": [0.0, 1.79, 1.80, 1.69], "IG_lo": [0.0, 1.74, 1.75, 1.64],
                          "IG_hi": [0.0, 1.84, 1.85, 1.74],
                          "IG_diff": [-1.80, -0.01, 0.0, -0.11], "IG_diff_lo": [-1.84, -0.02, 0.0, -0.13],
                          "IG_diff_hi": [-1.75, 0.005, 0.0, -0.09]})
    fig = figures.plot_ablation(table, highlight="learned")
    bars, diffs = fig.axes
    assert [p.get_height() for p in bars.patches] == pytest.approx([0.0, 1.79, 1.80, 1.69])
    assert any("baseline" in t.get_text() for t in bars.texts)          # the empty bar is explained
    assert [t.get_text() for t in diffs.get_xticklabels()] == ["none", "learned", "linear"]
    points = [line.get_ydata()[0] for line in diffs.lines if line.get_marker() in ("o", "D")]
    assert points == pytest.approx([-0.01, 0.0, -0.11])
    spans = [(s[:, 1].min(), s[:, 1].max()) for c in diffs.collections for s in c.get_segments()]
    assert spans == [pytest.approx((-0.02, 0.005)), pytest.approx((0.0, 0.0)), pytest.approx((-0.13, -0.09))]
    assert diffs.get_ylim()[0] > -0.5                                   # the baseline does not set the scale
    plt.close(fig)


def test_scale_transfer_ticks_are_the_widths_shown():
    import matplotlib.pyplot as plt
    rows = [dict(width=w, scale=s, IG_run_cb=v, IG_run_cb_lo=v - 0.1, IG_run_cb_hi=v + 0.1)
            for w, s, v in [(256, "training", 1.8), (256, "native", 0.7), (800, "training", 1.9),
                            (800, "native", 1.9), (1600, "training", 1.9), (1600, "native", 1.6)]]
    fig = figures.plot_scale_transfer(pd.DataFrame(rows), reference_width=800)
    ax = fig.axes[0]
    fig.canvas.draw()
    assert [t.get_text() for t in ax.get_xticklabels()] == ["256", "800", "1600"]
    assert not [t.get_text() for t in ax.get_xticklabels(minor=True) if t.get_text()]
    assert ax.get_ylabel() == "IG over the run's centre bias (bit/fix)"
    assert "default" in " ".join(t.get_text() for t in ax.get_legend().get_texts())
    plt.close(fig)
