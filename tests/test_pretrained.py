"""The model shipped inside the package (dgstudy.pretrained): its centre-bias grid, its provenance,
and that it reproduces its own committed cross-validated metrics on real OSIE images."""
from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from scipy.special import logsumexp

from dgstudy import backbones, datasets, pretrained
from dgstudy.baselines import CenterBias
from dgstudy.io import DataError
from dgstudy.predict import load_model

SHIPPED = pretrained.model_dir()


# -- the centre-bias grid ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cb_synthetic():
    ds = datasets.load("synthetic", n_images=12, n_subjects=4, size=(60, 80), seed=3)
    return ds, CenterBias.fit(ds)


def test_grid_matches_the_kde_it_was_made_from(cb_synthetic):
    _, cb = cb_synthetic
    exact = cb.log_density_for_size(60, 80)
    grid = pretrained.CenterBiasGrid.from_center_bias(cb, (60, 80), factor=4)
    assert grid.log_density.shape == (15, 20)
    assert logsumexp(grid.log_density) == pytest.approx(0.0, abs=1e-12)
    approx = grid.log_density_for_size(60, 80)
    assert logsumexp(approx) == pytest.approx(0.0, abs=1e-6)      # upsampled in float32
    # the expected log-likelihood of a fixation under the KDE, through the grid, within 1e-3 nats
    p = np.exp(exact)
    assert abs(np.sum(p * (approx - exact))) < 1e-3
    # a very different size is still a normalised density with the mass in the same place
    big = grid.log_density_for_size(300, 200)
    assert logsumexp(big) == pytest.approx(0.0, abs=1e-6)
    com = lambda ld: np.array([np.sum(np.exp(ld) * (np.arange(ld.shape[0])[:, None] + 0.5)) / ld.shape[0],
                               np.sum(np.exp(ld) * (np.arange(ld.shape[1])[None] + 0.5)) / ld.shape[1]])
    np.testing.assert_allclose(com(big), com(exact), atol=0.01)


def test_grid_round_trip_and_damaged_file(cb_synthetic, tmp_path):
    _, cb = cb_synthetic
    grid = pretrained.CenterBiasGrid.from_center_bias(cb, (60, 80))
    grid.save(tmp_path / "g.npz")
    back = pretrained.CenterBiasGrid.load(tmp_path / "g.npz")
    np.testing.assert_allclose(back.log_density, grid.log_density, rtol=1e-6)   # stored as float32
    assert back.image_size == (60, 80) and back.bandwidth == cb.bandwidth
    (tmp_path / "bad.npz").write_bytes((tmp_path / "g.npz").read_bytes()[:100])
    with pytest.raises(DataError, match="bad.npz"):
        pretrained.CenterBiasGrid.load(tmp_path / "bad.npz")


# -- the shipped model ------------------------------------------------------------------------------
def test_shipped_model_is_small_and_documented():
    size = sum(p.stat().st_size for p in SHIPPED.rglob("*") if p.is_file())
    assert size < 4 * 2**20, f"the shipped model is {size / 2**20:.1f} MiB"
    prov = pretrained.provenance()
    assert prov["dataset"]["name"] == "osie" and prov["why"]
    folds = sorted(SHIPPED.glob("fold_*"))
    assert len(folds) == prov["train_config"]["folds"] == 10
    for d in folds:
        assert {p.name for p in d.iterdir()} == {"model.pt", "config.json", pretrained.GRID_FILE}
        # the training scale is recorded, so scale-aware prediction never needs OSIE itself
        assert json.loads((d / "config.json").read_text())["training_pixel_area"] == 800 * 600
    # the headline metrics are the fixation-weighted means of the per-image table it ships
    pi = pd.read_csv(SHIPPED / "per_image.csv")
    w = pi["n_fix"].to_numpy(float)
    for k in ("LL", "IG"):
        assert np.sum(pi[k] * w) / w.sum() == pytest.approx(prov["cross_validated_metrics"][k], abs=1e-9)
    # the backbone it records is the one dgstudy builds from the installed weights
    bb = backbones.get(prov["backbone"]["backbone"])
    assert bb.weights_sha256 == prov["backbone"]["weights_sha256"]
    assert bb.architecture == prov["backbone"]["architecture"]


def test_load_model_defaults_to_the_shipped_model():
    m = load_model()
    assert m.run_dir == SHIPPED and len(m.members) == 10
    assert m.provenance["source_run"] == pretrained.provenance()["source_run"]
    assert load_model("osie").run_dir == SHIPPED


@pytest.fixture(scope="module")
def osie(osie_dir):
    return datasets.load("osie")


@pytest.mark.slow
def test_shipped_model_reproduces_its_cross_validated_metrics(osie):
    """A handful of OSIE images, each predicted by the one fold that held it out, give the per-image
    log-likelihood the source run's evaluation recorded (float16 features, centre-bias grid)."""
    prov = pretrained.provenance()
    assert prov["dataset"]["checksum"] == osie.checksum
    pi = pd.read_csv(SHIPPED / "per_image.csv").set_index("image")
    chosen = [int(pi.index[pi["fold"] == f][0]) for f in (0, 3, 7)] + [int(pi["IG"].idxmin())]
    for i in chosen:
        k = int(pi.loc[i, "fold"])
        info = json.loads((SHIPPED / f"fold_{k:02d}" / "config.json").read_text())
        assert i in info["test_images"] and i not in info["train_images"] and i not in info["val_images"]
        ld = load_model("osie", fold=k).log_density(osie.stimuli[i])
        assert ld.shape == tuple(osie.sizes[i]) and logsumexp(ld) == pytest.approx(0.0, abs=1e-4)
        fx = osie.fixations_of(i)
        ll = np.mean(ld[np.floor(fx["y"]).astype(int), np.floor(fx["x"]).astype(int)] + math.log(ld.size)) / math.log(2)
        assert ll == pytest.approx(pi.loc[i, "LL"], abs=2e-3), f"image {i} (fold {k})"
        # another fold's model is measurably different: the test can tell folds apart
        other = load_model("osie", fold=(k + 1) % 10).log_density(osie.stimuli[i])
        ll_other = np.mean(other[np.floor(fx["y"]).astype(int), np.floor(fx["x"]).astype(int)]
                           + math.log(ld.size)) / math.log(2)
        assert abs(ll_other - pi.loc[i, "LL"]) > 2e-3


def test_predict_command_without_a_model_uses_the_shipped_one(tmp_path, osie):
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "dgstudy", "predict", osie.stimuli[5], "--out", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "shipped with dgstudy" in r.stdout
    stem = osie.stimuli[5].rsplit("/", 1)[-1].rsplit(".", 1)[0]
    ld = np.load(out / f"{stem}.npy")
    assert ld.shape == tuple(osie.sizes[5]) and logsumexp(ld.astype(np.float64)) == pytest.approx(0.0, abs=1e-4)
    assert (out / f"{stem}.png").stat().st_size > 1000


def test_an_array_centre_bias_is_resampled_to_the_image():
    """center_bias given as an (H, W) log-density array: resampled to each image, normalised."""
    flat = np.full((6, 8), -math.log(48))
    m = load_model("osie", fold=0, center_bias=flat)
    cb = m.center_bias_log_density(30, 40)
    assert cb.shape == (30, 40) and logsumexp(cb) == pytest.approx(0.0, abs=1e-6)
    np.testing.assert_allclose(cb, -math.log(1200), atol=1e-5)
    rgb = (np.random.default_rng(1).random((30, 40, 3)) * 255).astype(np.uint8)
    assert logsumexp(m.log_density(rgb).astype(np.float64)) == pytest.approx(0.0, abs=1e-4)
