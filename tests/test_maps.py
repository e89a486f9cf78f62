"""Saliency maps benchmarked: reading a folder of maps, making them densities (dgstudy.map_density),
the classic metrics on raw maps against pysaliency, and ``dgstudy evaluate --maps``."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from dgstudy import baselines, datasets, evaluation, metrics
from dgstudy.io import DataError
from dgstudy.map_benchmark import evaluate_maps, write
from dgstudy.map_density import MonotoneNonlinearity, density_from_maps
from dgstudy.saliency_maps import SaliencyMaps, read_map

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    """40 generated images whose true density is known, 80 fixations each; beta=8 puts about 0.7
    bit/fix of information in the images beyond the centre bias (beta=4: about 0.19, so that
    the fitting noise of 3200 fixations is a larger fraction of it)."""
    root = tmp_path_factory.mktemp("maps")
    return datasets.load("synthetic", n_images=40, size=(48, 64), n_subjects=8, fixations_per_subject=10,
                         seed=1, beta=8.0, folder=root / "images")


def write_maps(ds, folder: Path, transform, suffix=".npy", size=None) -> Path:
    """``transform(true density)`` of every image as a map file named by the image's stem."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, stim in enumerate(ds.stimuli):
        m = transform(np.exp(ds.log_density(i)))
        if size is not None:
            m = np.asarray(Image.fromarray(m.astype(np.float32)).resize(size[::-1], Image.BILINEAR))
        path = folder / (Path(stim).stem + suffix)
        if suffix == ".npy":
            np.save(path, m)
        else:
            m = np.round(255 * (m - m.min()) / np.ptp(m)).astype(np.uint8)
            Image.fromarray(m).save(path)
    return folder


class TrueDensity:
    """The generating density of a synthetic data set, as a cross-validated model over ``images``."""

    def __init__(self, ds, like):
        self.dataset, self.images, self.fold_of = ds, like.images, like.fold_of

    def log_density(self, i):
        return self.dataset.log_density(i)


def test_nonlinearity_is_increasing_and_piecewise_linear():
    f = MonotoneNonlinearity(n_nodes=6)
    with torch.no_grad():
        f.steps.copy_(torch.tensor([3.0, -4.0, 0.5, -20.0, 1.0]))
    y = f.values().detach()
    assert (torch.diff(y) >= 0).all() and (torch.diff(y)[[0, 1, 2, 4]] > 0).all()
    nodes = torch.linspace(0, 1, 6, dtype=torch.float64)
    assert torch.allclose(f(nodes), y.double(), atol=1e-6)
    x = torch.rand(1000, dtype=torch.float64)
    f.requires_grad_(False)
    out = f(x)
    assert (torch.diff(out[torch.argsort(x)]) >= -1e-12).all()
    k = 2                                      # midpoint of the third piece: the mean of its ends
    assert float(f(torch.tensor([(k + 0.5) / 5], dtype=torch.float64))) == pytest.approx(float(y[k] + y[k + 1]) / 2)
    assert float(f(torch.tensor([-1.0, 2.0])).diff()) == pytest.approx(float(y[-1]))   # clamped outside [0, 1]


def test_a_monotone_transform_of_the_true_density_recovers_its_information_gain(synth, tmp_path, data_root):
    cb, gold = baselines.fitted(synth)
    for transform in (lambda p: p ** 0.3, lambda p: np.log(p)):
        maps = write_maps(synth, tmp_path / "maps", transform)
        model = density_from_maps(maps, synth, k=5)
        fitted, _, _ = evaluation.score_cross_validated(model, cb, gold, progress=False)
        true, _, _ = evaluation.score_cross_validated(TrueDensity(synth, model), cb, gold, progress=False)
        assert true["IG"] > 0.5
        assert fitted["IG"] >= 0.95 * true["IG"], (fitted["IG"], true["IG"])
        assert fitted["IG"] <= true["IG"] + 0.02          # held-out: no better than the truth (noise aside)
        for f in model.summary()["folds"]:                # the fitted nonlinearity rises
            assert np.all(np.diff(f["nonlinearity"]) >= 0) and f["nonlinearity"][-1] > 1
        for p in maps.iterdir():
            p.unlink()


def test_maps_of_another_size_and_8_bit_png_give_nearly_the_same_density(synth, tmp_path, data_root):
    cb, gold = baselines.fitted(synth)
    full = density_from_maps(write_maps(synth, tmp_path / "a", lambda p: p ** 0.5), synth, k=5)
    small = density_from_maps(write_maps(synth, tmp_path / "b", lambda p: p ** 0.5, suffix=".png", size=(24, 32)),
                              synth, k=5, per="image")
    ig = [evaluation.score_cross_validated(m, cb, gold, progress=False)[0]["IG"] for m in (full, small)]
    assert ig[1] == pytest.approx(ig[0], rel=0.08), ig


def test_a_map_without_centre_bias_gets_it_from_the_fitted_weight(synth, tmp_path, data_root):
    """Maps of the red channel alone (the synthetic density without its centre bias): the fit gives
    the data set's centre bias a clearly positive weight, and the density explains more than the
    centre bias alone."""
    folder = tmp_path / "red"
    folder.mkdir()
    for stim in synth.stimuli:
        np.save(folder / (Path(stim).stem + ".npy"), np.asarray(Image.open(stim))[..., 0].astype(float))
    model = density_from_maps(folder, synth, k=5)
    weights = [f["center_bias_weight"] for f in model.summary()["folds"]]
    assert min(weights) > 0.3, weights
    cb, gold = baselines.fitted(synth)
    s, _, _ = evaluation.score_cross_validated(model, cb, gold, progress=False)
    assert s["IG"] > 0.05


# -- bad input ---------------------------------------------------------------------------------------
def test_bad_maps_are_errors_naming_the_file(synth, tmp_path):
    folder = write_maps(synth, tmp_path / "m", lambda p: p)
    first = folder / (Path(synth.stimuli[0]).stem + ".npy")
    first.unlink()
    with pytest.raises(DataError, match=f"no saliency map for image {Path(synth.stimuli[0]).name}"):
        SaliencyMaps(folder, synth)
    cases = {
        "unreadable": (".png", lambda p: p.write_bytes(b"not an image"), "does not read"),
        "constant": (".npy", lambda p: np.save(p, np.ones((48, 64))), "constant"),
        "shape": (".npy", lambda p: np.save(p, np.random.rand(48, 64, 5)), "2-D array"),
        "aspect": (".npy", lambda p: np.save(p, np.random.rand(48, 48)), "aspect ratio"),
        "nan": (".npy", lambda p: np.save(p, np.full((48, 64), np.nan)), "non-finite"),
        "colour": (".png", lambda p: Image.fromarray((np.random.rand(48, 64, 3) * 255).astype(np.uint8)).save(p),
                   "colour image"),
    }
    for name, (suffix, make, message) in cases.items():
        for p in folder.glob(Path(synth.stimuli[0]).stem + ".*"):
            p.unlink()
        bad = folder / (Path(synth.stimuli[0]).stem + suffix)
        make(bad)
        with pytest.raises(DataError, match=message) as e:
            SaliencyMaps(folder, synth).check()
        assert str(bad) in str(e.value), name


def test_read_map_accepts_gray_rgb_palette_and_16_bit(tmp_path):
    a = (np.arange(48 * 64).reshape(48, 64) % 251).astype(np.uint8)
    Image.fromarray(np.repeat(a[..., None], 3, axis=2)).save(tmp_path / "rgb.png")
    assert np.array_equal(read_map(tmp_path / "rgb.png"), a.astype(float))
    for mode in ("P", "LA"):                       # a palette's values, not its indices
        Image.fromarray(a).convert(mode).save(tmp_path / f"{mode}.png")
        assert np.array_equal(read_map(tmp_path / f"{mode}.png"), a.astype(float)), mode
    b = (np.arange(48 * 64).reshape(48, 64) * 20).astype(np.uint16)
    Image.fromarray(b).save(tmp_path / "deep.png")
    assert np.array_equal(read_map(tmp_path / "deep.png"), b.astype(float))


# -- raw maps: the classic metrics against pysaliency -----------------------------------------------
def test_raw_map_metrics_match_pysaliency(synth):
    from dgstudy.pysaliency_bridge import import_pysaliency, to_pysaliency

    ps = import_pysaliency()
    ds = synth.subset(np.arange(8))
    rng = np.random.default_rng(0)
    raw = {i: rng.gamma(2.0, size=tuple(ds.sizes[i])) + 3 * np.exp(ds.log_density(i)) * ds.sizes[i].prod()
           for i in range(len(ds))}
    ours, _ = metrics.evaluate_saliency_maps(lambda i: raw[i], ds, kernel_size=3.0)

    class Maps(ps.SaliencyMapModel):
        def __init__(self, data):
            super().__init__(caching=False)
            self.data = {ps.datasets.get_image_hash(np.asarray(Image.open(s))): m
                         for s, m in zip(ds.stimuli, data.values())}

        def _saliency_map(self, stimulus):
            return self.data[ps.datasets.get_image_hash(stimulus)]

    stimuli, fixations = to_pysaliency(ds)
    model = Maps(raw)
    empirical = ps.FixationMap(stimuli, fixations, kernel_size=3.0, caching=False)
    theirs = {"AUC": model.AUC(stimuli, fixations, average="image"),
              "sAUC": model.AUC(stimuli, fixations, nonfixations="shuffled", average="image"),
              "NSS": model.NSS(stimuli, fixations, average="image"),
              "CC": model.CC(stimuli, empirical), "SIM": model.SIM(stimuli, empirical)}
    for k, v in theirs.items():
        assert ours[k] == pytest.approx(v, abs=1e-6), k


# -- the command -------------------------------------------------------------------------------------
def test_evaluate_maps_command_on_a_folder_data_set(synth, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    rows = []
    for i, stim in enumerate(synth.stimuli[:12]):
        (folder / Path(stim).name).write_bytes(Path(stim).read_bytes())
        g = synth.fixations_of(i)
        rows += [{"image": Path(stim).name, "x": x, "y": y, "subject": s}
                 for x, y, s in zip(g["x"], g["y"], g["subject"])]
    pd.DataFrame(rows).to_csv(tmp_path / "fix.csv", index=False)
    maps = write_maps(synth.subset(np.arange(12)), tmp_path / "maps", lambda p: p ** 0.5, suffix=".png", size=(96, 128))
    cmd = [sys.executable, "-m", "dgstudy", "evaluate", "--maps", str(maps), "--images", str(folder),
           "--fixations", str(tmp_path / "fix.csv"), "--out", str(tmp_path / "out")]
    env = {"DGSTUDY_DATA": str(tmp_path / "data"), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env)
    assert r.returncode == 0, r.stderr
    out = json.loads((tmp_path / "out" / "evaluation.json").read_text())
    assert out["density"]["n_images"] == 12 and len(out["conversion"]["folds"]) == 10
    assert out["density"]["IG"] > 0 and 0.5 < out["raw_maps"]["AUC"] < 1
    table = pd.read_csv(tmp_path / "out" / "evaluation_per_image.csv")
    assert {"IG", "AUC", "raw_AUC", "raw_NSS", "fold", "map"} <= set(table.columns) and len(table) == 12
    assert (tmp_path / "out" / "evaluation.png").exists()
    assert "the raw maps" in r.stdout

    next(maps.glob("*.png")).unlink()                      # a missing map: exit 1, the image named
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env)
    assert r.returncode == 1 and "no saliency map for image" in r.stderr
