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
from dgstudy.predict import Predictor, load_model
from dgstudy.predict_ensemble import EnsemblePredictor

SHIPPED = pretrained.model_dir()                 # the default: the main ensemble
SINGLE = pretrained.model_dir("osie-lite0")      # the single-backbone model


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


# -- the shipped models -----------------------------------------------------------------------------
def _size_mib(d) -> float:
    return sum(p.stat().st_size for p in d.rglob("*") if p.is_file()) / 2**20


def _check_headline_metrics(d, prov):
    """The headline metrics are the fixation-weighted means of the per-image table it ships."""
    pi = pd.read_csv(d / "per_image.csv")
    w = pi["n_fix"].to_numpy(float)
    for k in ("LL", "IG"):
        assert np.sum(pi[k] * w) / w.sum() == pytest.approx(prov["cross_validated_metrics"][k], abs=1e-9)


def test_single_model_is_small_and_documented():
    assert _size_mib(SINGLE) < 4, f"the single model is {_size_mib(SINGLE):.1f} MiB"
    prov = pretrained.provenance("osie-lite0")
    assert prov["name"] == "osie-lite0" and prov["dataset"]["name"] == "osie" and prov["why"]
    folds = sorted(SINGLE.glob("fold_*"))
    assert len(folds) == prov["train_config"]["folds"] == 10
    for d in folds:
        assert {p.name for p in d.iterdir()} == {"model.pt", "config.json", pretrained.GRID_FILE}
        # the training scale is recorded, so scale-aware prediction never needs OSIE itself
        assert json.loads((d / "config.json").read_text())["training_pixel_area"] == 800 * 600
    _check_headline_metrics(SINGLE, prov)
    # the backbone it records is the one dgstudy builds from the installed weights
    bb = backbones.get(prov["backbone"]["backbone"])
    assert bb.weights_sha256 == prov["backbone"]["weights_sha256"]
    assert bb.architecture == prov["backbone"]["architecture"]


def test_shipped_ensemble_is_documented_and_ships_only_what_it_uses():
    assert _size_mib(SHIPPED) < 8, f"the shipped ensemble is {_size_mib(SHIPPED):.1f} MiB"
    prov = pretrained.provenance()
    assert prov["kind"] == "ensemble" and prov["dataset"]["name"] == "osie" and prov["why"]
    record = json.loads((SHIPPED / "ensemble.json").read_text())
    assert record["choice"] == prov["choice"] and sorted(record["choice"], key=int) == [str(k) for k in range(10)]
    # each fold's centre bias once; the readouts of the chosen (member, fold) pairs, nothing else
    assert sorted(d.name for d in SHIPPED.glob("fold_*")) == [f"fold_{k:02d}" for k in range(10)]
    assert all({p.name for p in d.iterdir()} == {pretrained.GRID_FILE} for d in SHIPPED.glob("fold_*"))
    pairs = {(d.parent.name, d.name) for d in (SHIPPED / "members").glob("*/fold_*")}
    assert pairs == {(m, f"fold_{int(f):02d}") for f, c in record["choice"].items() for m in c}
    for m, f in pairs:
        d = SHIPPED / "members" / m / f
        assert {p.name for p in d.iterdir()} == {"model.pt", "config.json"}
        assert json.loads((d / "config.json").read_text())["training_pixel_area"] == 800 * 600
    _check_headline_metrics(SHIPPED, prov)
    # at least two backbones, and each member's recorded backbone is the one built from the installed weights
    recorded = {m["backbone"]["backbone"]: m["backbone"] for m in prov["members"].values()}
    assert len(recorded) >= 2
    for name, rec in recorded.items():
        bb = backbones.get(name)
        assert (bb.weights_sha256, bb.architecture) == (rec["weights_sha256"], rec["architecture"])
    # the ensemble is the best model: above the single model it ships beside
    single = pretrained.provenance("osie-lite0")["cross_validated_metrics"]
    assert prov["cross_validated_metrics"]["IG"] > single["IG"]


def test_load_model_defaults_to_the_shipped_ensemble():
    m = load_model()
    assert isinstance(m, EnsemblePredictor) and m.run_dir == SHIPPED
    assert len(m.specs) == len({s.backbone for s in m.specs}) >= 2          # one part per backbone
    assert m.provenance["source_run"] == pretrained.provenance()["source_run"]
    assert load_model("osie").run_dir == SHIPPED
    one = load_model("osie-lite0")
    assert isinstance(one, Predictor) and one.run_dir == SINGLE and len(one.members) == 10


@pytest.fixture(scope="module")
def osie(osie_dir):
    return datasets.load("osie")


def _image_ll(ld, fx) -> float:
    return float(np.mean(ld[np.floor(fx["y"]).astype(int), np.floor(fx["x"]).astype(int)] + math.log(ld.size)) / math.log(2))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["osie", "osie-lite0"])
def test_shipped_model_reproduces_its_cross_validated_metrics(osie, name):
    """OSIE images, each predicted by the fold that held it out (the ensemble: that fold's chosen
    members), give the per-image log-likelihood the source's evaluation recorded (float16 features,
    centre-bias grid); another fold's model is measurably different."""
    d = pretrained.model_dir(name)
    prov = pretrained.provenance(name)
    assert prov["dataset"]["checksum"] == osie.checksum
    pi = pd.read_csv(d / "per_image.csv").set_index("image")
    chosen = ([int(pi.index[pi["fold"] == f][0]) for f in (0, 3, 7)] + [int(pi["IG"].idxmin())]
              if name == "osie-lite0" else [int(pi.index[pi["fold"] == 4][0]), int(pi["IG"].idxmin())])
    for i in chosen:
        k = int(pi.loc[i, "fold"])
        if name == "osie-lite0":
            info = json.loads((d / f"fold_{k:02d}" / "config.json").read_text())
        else:
            member = prov["choice"][str(k)][0]
            info = json.loads((d / "members" / member / f"fold_{k:02d}" / "config.json").read_text())
        assert i in info["test_images"] and i not in info["train_images"] and i not in info["val_images"]
        ld = load_model(name, fold=k).log_density(osie.stimuli[i])
        assert ld.shape == tuple(osie.sizes[i]) and logsumexp(ld) == pytest.approx(0.0, abs=1e-4)
        fx = osie.fixations_of(i)
        assert _image_ll(ld, fx) == pytest.approx(pi.loc[i, "LL"], abs=2e-3), f"image {i} (fold {k})"
        other = load_model(name, fold=(k + 1) % 10).log_density(osie.stimuli[i])
        assert abs(_image_ll(other, fx) - pi.loc[i, "LL"]) > 2e-3


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
