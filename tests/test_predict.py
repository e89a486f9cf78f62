"""dgstudy.predict / predict_files / cli predict: reading any image, combining folds, the fixation
CSV, the CLI and load_model.

The end-to-end tests train a tiny 3-fold run on a synthetic dataset (vgg19_random features, two
epochs) once per session and check that ``load_model`` reproduces the training evaluation exactly.
"""
from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy.special import logsumexp

from dgstudy import cli, imageio, predict, predict_files, rescale, runs
from dgstudy.ensemble import average_log_densities
from dgstudy import fixation_csv
from dgstudy.config import TrainConfig
from conftest import isolated_study
from dgstudy.io import DataError


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------
def _rng_image(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


class FixedModel:
    """A model that gives the same log-density to every image of a size (for known answers)."""

    def __init__(self, make, center_bias=None):
        self.make, self.cb = make, center_bias

    def log_density(self, image):
        rgb = imageio.read_rgb(image)
        return self.make(*rgb.shape[:2])

    def center_bias_log_density(self, h, w):
        return self.cb(h, w) if self.cb else predict.uniform_log_density(h, w)


def _random_log_density(h, w, seed=1):
    z = np.random.default_rng(seed).normal(size=(h, w)) * 2
    return z - logsumexp(z)


# ------------------------------------------------------------------------------------------------
# reading images
# ------------------------------------------------------------------------------------------------
def test_grayscale_rgba_and_16bit_files_become_rgb(tmp_path):
    g = np.arange(12 * 7, dtype=np.uint8).reshape(7, 12) * 3
    Image.fromarray(g, mode="L").save(tmp_path / "g.png")
    got = imageio.read_rgb(tmp_path / "g.png")
    assert got.shape == (7, 12, 3) and got.dtype == np.uint8
    assert (got == g[..., None]).all()

    rgba = np.zeros((5, 6, 4), dtype=np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = 0            # fully transparent -> white
    rgba[2, 3, 3] = 255         # one opaque red-ish pixel keeps its colour
    rgba[4, 5, 3] = 128         # half transparent: halfway to white
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    got = imageio.read_rgb(tmp_path / "a.png")
    assert got.shape == (5, 6, 3)
    assert tuple(got[0, 0]) == (255, 255, 255)
    assert tuple(got[2, 3]) == (200, 0, 0)
    assert tuple(got[4, 5]) == (round(200 * 128 / 255 + 255 * 127 / 255), round(255 * 127 / 255),
                                round(255 * 127 / 255))
    # the same compositing for arrays
    assert (imageio.read_rgb(rgba) == got).all()

    g16 = (np.arange(20, dtype=np.uint16).reshape(4, 5) * 3000)
    Image.fromarray(g16).save(tmp_path / "g16.png")
    got = imageio.read_rgb(tmp_path / "g16.png")
    assert (got[..., 0] == np.round(g16 / 257)).all() and (got[..., 2] == got[..., 0]).all()

    # arrays: (H, W), (H, W, 1), floats in [0, 1]
    assert (imageio.read_rgb(g) == np.repeat(g[..., None], 3, 2)).all()
    assert (imageio.read_rgb(g[..., None]) == np.repeat(g[..., None], 3, 2)).all()
    assert (imageio.read_rgb(g / 255.0) == np.repeat(g[..., None], 3, 2)).all()
    with pytest.raises(DataError, match="shape"):
        imageio.read_rgb(np.zeros((4, 4, 2), dtype=np.uint8))
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        imageio.read_rgb(np.full((4, 4), 3.0))


def test_exif_orientation_is_applied(tmp_path):
    # a 3 (high) x 5 (wide) image stored with orientation 6 ("rotate 90 CW to display")
    a = _rng_image(3, 5)
    im = Image.fromarray(a)
    exif = Image.Exif()
    exif[0x0112] = 6
    im.save(tmp_path / "rot.jpg", exif=exif.tobytes(), quality=100, subsampling=0)
    stored = np.asarray(Image.open(tmp_path / "rot.jpg").convert("RGB"))
    got = imageio.read_rgb(tmp_path / "rot.jpg")
    assert got.shape == (5, 3, 3)                       # displayed: 5 high, 3 wide
    assert (got == np.rot90(stored, k=-1)).all()        # rotated 90 degrees clockwise


def test_undecodable_and_missing_images_name_the_file(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nthis is not a png")
    with pytest.raises(DataError, match="broken.png.*does not decode"):
        imageio.read_rgb(bad)
    with pytest.raises(DataError, match="nothere.jpg.*missing"):
        imageio.read_rgb(tmp_path / "nothere.jpg")


def test_folders_expand_to_their_images(tmp_path):
    for name in ["b.png", "a.jpg", "notes.txt"]:
        (tmp_path / name).write_bytes(b"x")
    got = imageio.expand_image_args([tmp_path, tmp_path / "notes.txt"])
    assert [p.name for p in got] == ["a.jpg", "b.png", "notes.txt"]
    assert predict_files.output_stems([tmp_path / "x/a.png", tmp_path / "y/a.jpg", tmp_path / "b.png"]) == \
        ["a", "a-2", "b"]


# ------------------------------------------------------------------------------------------------
# combining folds and centre biases
# ------------------------------------------------------------------------------------------------
def test_average_of_densities_is_normalised_and_matches_hand_computation():
    lds = [_random_log_density(6, 9, seed=s) for s in range(3)]
    got = average_log_densities(lds)
    by_hand = np.log(sum(np.exp(l) for l in lds) / 3)
    np.testing.assert_allclose(got, by_hand, rtol=0, atol=1e-12)
    assert abs(np.exp(got).sum() - 1) < 1e-12
    # it is not the average of the log-densities (the geometric mean would not be normalised)
    assert np.abs(got - np.mean(lds, axis=0)).max() > 0.1
    # one input: returned unchanged, bit for bit
    one = lds[0].astype(np.float32)
    assert average_log_densities([one]) is one
    # float32 in, float32 out
    assert average_log_densities([l.astype(np.float32) for l in lds]).dtype == np.float32


def test_resized_log_density_stays_normalised():
    ld = _random_log_density(8, 10)
    r = rescale.resample_log_density(ld, 16, 20)          # upsampling: in float32
    assert r.shape == (16, 20) and abs(np.exp(r).sum() - 1) < 1e-6
    r = rescale.resample_log_density(ld, 4, 5)            # shrinking: in float64
    assert r.shape == (4, 5) and abs(np.exp(r).sum() - 1) < 1e-12
    # a uniform density stays uniform at any size; the same size is returned unchanged
    np.testing.assert_allclose(rescale.resample_log_density(predict.uniform_log_density(8, 10), 5, 7),
                               predict.uniform_log_density(5, 7), atol=1e-12)
    np.testing.assert_allclose(rescale.resample_log_density(predict.uniform_log_density(8, 10), 15, 17),
                               predict.uniform_log_density(15, 17), atol=1e-6)
    np.testing.assert_array_equal(rescale.resample_log_density(ld, 8, 10), ld)


# ------------------------------------------------------------------------------------------------
# fixation CSV
# ------------------------------------------------------------------------------------------------
def _write_images(folder, n=3, h=20, w=30):
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = folder / f"img{i}.png"
        Image.fromarray(_rng_image(h, w, seed=i)).save(p)
        paths.append(p)
    return paths


def test_csv_rows_match_names_and_bad_rows_are_reported(tmp_path):
    paths = _write_images(tmp_path / "im", n=2, h=20, w=30)
    csv = tmp_path / "fix.csv"
    csv.write_text("image,x,y,subject\n"
                   f"{paths[0]},0.0,0.0,1\n"          # path as given
                   "img0.png,29.99,19.99,1\n"         # file name; last pixel
                   "img1,15,10,2\n"                   # stem
                   "img1,30,5,2\n"                    # x == width: outside
                   "img1,-0.1,5,2\n"                  # negative: outside
                   "img1,abc,5,2\n"                   # not a number
                   "other.png,1,1,0\n")               # not given: ignored, noted
    rows = fixation_csv.read_fixation_csv(csv, paths)
    assert list(rows["image"]) == [0, 0, 1, 1, 1, 1, fixation_csv.UNKNOWN]
    table = fixation_csv.check_fixations(rows, {0: (20, 30), 1: (20, 30)}, csv)
    assert len(table.fixations) == 3
    assert table.fixations["fix_index"].tolist() == [0, 1, 0]
    assert len(table.errors) == 3
    assert "fix.csv: line 5" in table.errors[0] and "outside the 30x20 image" in table.errors[0]
    assert "line 6" in table.errors[1] and "line 7" in table.errors[2] and "numbers" in table.errors[2]
    assert table.notes and "other.png" in table.notes[0]


def test_csv_missing_column_is_an_error_naming_the_file(tmp_path):
    paths = _write_images(tmp_path / "im", n=1)
    csv = tmp_path / "nox.csv"
    csv.write_text("image,y\nimg0.png,3\n")
    with pytest.raises(DataError, match=r"nox.csv: missing column\(s\) \['x'\]"):
        fixation_csv.read_fixation_csv(csv, paths)


# ------------------------------------------------------------------------------------------------
# predict_images / CLI with models whose answer is known
# ------------------------------------------------------------------------------------------------
def test_uniform_model_scores_zero_information_gain_and_chance_auc(tmp_path):
    paths = _write_images(tmp_path / "im", n=3, h=20, w=30)
    rng = np.random.default_rng(0)
    csv = tmp_path / "fix.csv"
    pd.DataFrame({"image": [p.name for p in paths for _ in range(10)],
                  "x": rng.uniform(0, 30, 30), "y": rng.uniform(0, 20, 30),
                  "subject": np.tile(np.arange(5), 6)}).to_csv(csv, index=False)
    model = FixedModel(predict.uniform_log_density)
    rep = predict_files.predict_images(model, paths, tmp_path / "out", fixations=csv, plot=False)
    assert rep.ok, rep.errors
    s = rep.evaluation
    assert s["n_fixations"] == 30
    assert abs(s["IG"]) < 1e-9 and abs(s["LL"]) < 1e-9
    assert abs(s["AUC"] - 0.5) < 1e-9
    saved = json.loads((tmp_path / "out" / "evaluation.json").read_text())
    assert abs(saved["summary"]["IG"]) < 1e-9
    ld = np.load(tmp_path / "out" / "img1.npy")
    assert ld.dtype == np.float32 and ld.shape == (20, 30)


def test_information_gain_uses_the_pixel_of_each_fixation(tmp_path):
    """IG of a fixed density against uniform = mean of log2(p(pixel) * H * W) over fixations."""
    h, w = 12, 16
    paths = _write_images(tmp_path / "im", n=2, h=h, w=w)
    ld = _random_log_density(h, w, seed=3)
    rng = np.random.default_rng(1)
    x, y = rng.uniform(0, w, 40), rng.uniform(0, h, 40)
    names = [paths[i % 2].stem for i in range(40)]
    csv = tmp_path / "fix.csv"
    pd.DataFrame({"image": names, "x": x, "y": y}).to_csv(csv, index=False)
    rep = predict_files.predict_images(FixedModel(lambda hh, ww: ld), paths, tmp_path / "out", fixations=csv,
                                 plot=True)
    assert rep.ok, rep.errors
    ll = ld.astype(np.float32).astype(np.float64)[np.floor(y).astype(int), np.floor(x).astype(int)]
    expected_ig = np.mean(ll + math.log(h * w)) / math.log(2)
    assert rep.evaluation["IG"] == pytest.approx(expected_ig, abs=1e-6)
    # NSS of the density map, by hand, per fixation
    d = np.exp(ld.astype(np.float32).astype(np.float64))
    nss = (d - d.mean()) / d.std()
    assert rep.evaluation["NSS"] == pytest.approx(nss[np.floor(y).astype(int), np.floor(x).astype(int)].mean(),
                                                  rel=1e-4)
    assert (tmp_path / "out" / "img0.png").stat().st_size > 1000


def test_bad_images_and_rows_fail_alone_with_nonzero_exit(tmp_path, monkeypatch, capsys):
    paths = _write_images(tmp_path / "im", n=2, h=10, w=10)
    (tmp_path / "im" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff garbage")
    csv = tmp_path / "fix.csv"
    csv.write_text("image,x,y\nimg0,5,5\nimg1,11,5\ncorrupt,1,1\nimg1,2,2\nelsewhere.png,1,1\n")
    monkeypatch.setattr(cli, "load_model", lambda *a, **k: FixedModel(predict.uniform_log_density))
    code = cli.main(["predict", str(tmp_path / "im"), "--model", "whatever", "--out", str(tmp_path / "out"),
                         "--fixations", str(csv), "--no-plot", "--kernel-size", "1.5"])
    err = capsys.readouterr().err
    assert code == 1
    assert "corrupt.jpg: image does not decode" in err
    assert "fix.csv: line 3" in err and "outside the 10x10 image" in err
    assert "note:" in err and "elsewhere.png" in err and "line 6" not in err     # not an error
    assert err.count("error:") == 2
    assert (tmp_path / "out" / "img0.npy").exists() and (tmp_path / "out" / "img1.npy").exists()
    summary = json.loads((tmp_path / "out" / "evaluation.json").read_text())["summary"]
    assert summary["n_fixations"] == 2 and summary["kernel_size"] == 1.5


def test_cli_registers_on_subparsers():
    import argparse

    parser = argparse.ArgumentParser(prog="dgstudy")
    sub = parser.add_subparsers(dest="command")
    cli.add_predict_command(sub)
    args = parser.parse_args(["predict", "a.png", "b", "--model", "results/x", "--out", "o", "--fold", "2",
                              "--center-bias", "uniform", "--device", "cuda"])
    assert args.func is cli.run_predict_command
    assert (args.images, args.model, args.fold, args.center_bias, args.device) == \
        (["a.png", "b"], "results/x", 2, "uniform", "cuda")
    assert "pixel centres at +0.5" in sub.choices["predict"].format_help()


# ------------------------------------------------------------------------------------------------
# a real trained run: load_model reproduces the training evaluation; the ensemble
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A 3-fold run on 9 synthetic 96x128 images, efficientnet_lite0 features, 2 epochs."""
    from dgstudy import features, training

    with isolated_study(tmp_path_factory.mktemp("predict_run")):
        cfg = TrainConfig(dataset="synthetic", n_images=9, backbone="efficientnet_lite0",
                          dataset_options={"size": [96, 128], "seed": 3, "n_subjects": 4,
                                           "fixations_per_subject": 6},
                          folds=3, max_epochs=2, patience=2, batch_size=4, run="tiny")
        ds = runs.load_dataset(cfg)
        features.extract(ds, cfg.backbone, downsample=cfg.downsample, out=runs.feature_path(cfg, ds),
                         progress=False)
        run_dir = training.train_crossval(cfg, progress=False)
        yield run_dir, ds, runs.CrossValModel(run_dir)


@pytest.fixture(scope="module")
def ensemble(tiny_run):
    """The run at its images' own size (the default scale is tested in test_transfer.py)."""
    return predict.load_model(tiny_run[0], scale="native")


def test_one_fold_reproduces_the_training_evaluation_exactly(tiny_run, ensemble):
    run_dir, ds, cvm = tiny_run
    # every way of naming one fold: run + fold, the fold folder, its checkpoint file
    for k, how in [(0, dict(run=run_dir, fold=0)), (1, dict(run=run_dir / "fold_01")),
                   (2, dict(run=run_dir / "fold_02" / "model.pt"))]:
        one = predict.load_model(**how)
        assert [m.name for m in one.members] == [f"fold_{k:02d}"]
        for i in np.flatnonzero(cvm.fold_of == k):
            got = one.log_density(ds.stimuli[i])             # from the file, features recomputed
            np.testing.assert_array_equal(got.astype(np.float64), cvm.log_density(i))
    # the ensemble's per-fold predictions are those single folds
    i = int(np.flatnonzero(cvm.fold_of == 1)[0])
    np.testing.assert_array_equal(ensemble.log_densities_per_fold(ds.stimuli[i])[1].astype(np.float64),
                                  cvm.log_density(i))


def test_ensemble_is_the_average_of_fold_densities(tiny_run, ensemble, tmp_path):
    run_dir, ds, cvm = tiny_run
    assert len(ensemble.members) == 3
    # a new image of another size and aspect ratio, given as an array
    img = np.random.default_rng(5).integers(0, 256, size=(70, 45, 3), dtype=np.uint8)
    per_fold = ensemble.log_densities_per_fold(img)
    by_hand = logsumexp(np.stack([p.astype(np.float64) for p in per_fold]), axis=0) - math.log(3)
    got = ensemble.log_density(img)
    assert got.shape == (70, 45)
    np.testing.assert_allclose(got, by_hand, rtol=0, atol=1e-6)
    assert abs(np.exp(got.astype(np.float64)).sum() - 1) < 1e-5
    assert np.abs(per_fold[0] - per_fold[1]).max() > 1e-4          # the folds do differ
    # the centre bias: each fold's own training centre bias, rescaled; uniform on request
    from dgstudy.baselines import CenterBias
    cb0 = CenterBias.from_dict(json.loads((run_dir / "fold_00" / "center_bias.json").read_text()))
    np.testing.assert_allclose(ensemble._member_center_bias(ensemble.members[0], 70, 45),
                               cb0.log_density_for_size(70, 45))
    uni = predict.Predictor(ensemble.members, ensemble.backbone, ensemble.spec, center_bias="uniform")
    assert np.abs(uni.log_density(img) - got).max() > 1e-4
    given = predict.Predictor(ensemble.members, ensemble.backbone, ensemble.spec,
                              center_bias=lambda h, w: predict.uniform_log_density(h, w))
    np.testing.assert_array_equal(given.log_density(img), uni.log_density(img))
    # a CenterBias object given by the user: fold 0 with its own centre bias is fold 0 as trained
    own = predict.Predictor(ensemble.members[:1], ensemble.backbone, ensemble.spec, center_bias=cb0)
    np.testing.assert_array_equal(own.log_density(img), per_fold[0])


def test_grayscale_and_rgba_files_predict_like_their_rgb(ensemble, tmp_path):
    g = np.random.default_rng(2).integers(0, 256, size=(40, 60), dtype=np.uint8)
    Image.fromarray(g, mode="L").save(tmp_path / "g.png")
    rgba = np.dstack([np.repeat(g[..., None], 3, 2), np.full_like(g, 255)])
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    ref = ensemble.log_density(np.repeat(g[..., None], 3, 2))
    np.testing.assert_array_equal(ensemble.log_density(tmp_path / "g.png"), ref)
    np.testing.assert_array_equal(ensemble.log_density(str(tmp_path / "a.png")), ref)


def test_weights_hash_mismatch_is_a_clear_error(tiny_run, tmp_path):
    import shutil

    run_dir = tiny_run[0]
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    cfg_path = copy / "fold_00" / "config.json"
    info = json.loads(cfg_path.read_text())
    info["store_attrs"]["weights_sha256"] = "0" * 64
    cfg_path.write_text(json.dumps(info))
    with pytest.raises(DataError, match="sha256 0000000000"):
        predict.load_model(copy / "fold_00")
    with pytest.raises(DataError, match="differ"):
        predict.load_model(copy)                                  # folds disagree on the weights
    with pytest.raises(DataError, match="not trained"):
        predict.load_model(copy, fold=7)
    # fold 1 records fewer layers than its readout was trained on, and no weights hash
    info = json.loads((copy / "fold_01" / "config.json").read_text())
    info["store_attrs"]["layers"] = ["block5", "block6"]
    info["store_attrs"].pop("weights_sha256")
    (copy / "fold_01" / "config.json").write_text(json.dumps(info))
    with pytest.warns(UserWarning, match="no backbone weights hash"), \
            pytest.raises(DataError, match="feature channels"):
        predict.load_model(copy / "fold_01")


def test_run_of_another_network_is_refused(tiny_run, tmp_path, monkeypatch):
    """A run trained on the features of another architecture variant (or before dgstudy 0.2, when
    none was recorded) is neither resumed, nor evaluated, nor used to predict."""
    import shutil

    from dgstudy import training

    run_dir = tiny_run[0]
    results = tmp_path / "results"
    copy = results / "tiny"
    shutil.copytree(run_dir, copy)
    monkeypatch.setenv("DGSTUDY_RESULTS", str(results))
    for fold in range(3):
        path = copy / f"fold_{fold:02d}" / "config.json"
        info = json.loads(path.read_text())
        assert info["store_attrs"]["architecture"] == "timm tf_efficientnet_lite0 (TF 'same' padding, batch-norm eps 1e-3)"
        info["store_attrs"]["architecture"] = "timm efficientnet_lite0"
        path.write_text(json.dumps(info))
    with pytest.raises(DataError, match="another network"):
        predict.load_model(copy)
    cfg = TrainConfig.from_dict(json.loads((copy / "config.json").read_text()))
    with pytest.raises(DataError, match="another network than the one"):
        training.train_crossval(cfg, progress=False)
    with pytest.raises(DataError, match="delete the run folder"):
        runs.CrossValModel(copy).log_density(0)
    for fold in range(3):                                     # as dgstudy 0.1 recorded it
        path = copy / f"fold_{fold:02d}" / "config.json"
        info = json.loads(path.read_text())
        del info["store_attrs"]["architecture"], info["store_attrs"]["network_id"]
        path.write_text(json.dumps(info))
    with pytest.raises(DataError, match="dgstudy < 0.2"):
        predict.load_model(copy / "fold_00")
    with pytest.raises(DataError, match="architecture: fold has None"):
        training.train_crossval(cfg, progress=False)


def test_cli_on_a_trained_run(tiny_run, tmp_path, capsys):
    import dgstudy

    run_dir, ds, cvm = tiny_run
    assert dgstudy.load_model is predict.load_model
    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        (images / f"s{i}.png").write_bytes(open(ds.stimuli[i], "rb").read())
    fx = ds.fixations[ds.fixations["image"] < 3]
    csv = tmp_path / "fix.csv"
    pd.DataFrame({"image": [f"s{i}.png" for i in fx["image"]], "x": fx["x"], "y": fx["y"],
                  "subject": fx["subject"]}).to_csv(csv, index=False)
    out = tmp_path / "out"
    from dgstudy import cli

    code = cli.main(["predict", str(images), "--model", str(run_dir), "--fold", "0", "--out", str(out),
                     "--fixations", str(csv)])
    printed = capsys.readouterr().out
    assert code == 0
    assert "IG" in printed and "AUC" in printed
    for i in range(3):
        saved = np.load(out / f"s{i}.npy")
        assert saved.dtype == np.float32 and saved.shape == tuple(ds.sizes[i])
        if cvm.fold_of[i] == 0:
            np.testing.assert_array_equal(saved.astype(np.float64), cvm.log_density(i))
        assert (out / f"s{i}.png").exists()
    ev = json.loads((out / "evaluation.json").read_text())
    assert ev["summary"]["n_fixations"] == len(fx) and np.isfinite(ev["summary"]["IG"])
