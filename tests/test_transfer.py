"""Predictions that transfer: rescaling (dgstudy.rescale), the training scale of a run, scale-aware
prediction, the folder data set and its bad inputs, dgstudy evaluate / baselines on a folder.

The end-to-end tests train a tiny 3-fold run on a generated folder data set of mixed image sizes
(efficientnet_lite0 features, two epochs) once per module.
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

from conftest import isolated_study
from dgstudy import cli, datasets, predict, rescale, runs, transfer
from dgstudy.io import DataError


# ------------------------------------------------------------------------------------------------
# a generated folder data set: smooth images, fixations from a centre-biased density
# ------------------------------------------------------------------------------------------------
def make_folder(root, sizes=((64, 96), (96, 64), (80, 80)) * 3, n_subjects=4, per_subject=6, seed=0,
                subject_column=True):
    """Images ``root/images/im<k>.png`` of ``sizes`` and ``root/fix.csv``; returns (folder, csv)."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    folder = root / "images"
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for k, (h, w) in enumerate(sizes):
        img = np.stack([gaussian_filter(rng.normal(size=(h, w)), 6) for _ in range(3)], -1)
        img = (255 * (img - img.min()) / np.ptp(img)).astype(np.uint8)
        Image.fromarray(img).save(folder / f"im{k}.png")
        for s in range(n_subjects):
            x = np.clip(rng.normal(w / 2, w / 6, per_subject), 0, w - 1e-6)
            y = np.clip(rng.normal(h / 2, h / 6, per_subject), 0, h - 1e-6)
            rows += [{"image": f"im{k}.png", "x": a, "y": b, "subject": s, "duration": 200} for a, b in zip(x, y)]
    df = pd.DataFrame(rows)
    if not subject_column:
        df = df.drop(columns="subject")
    df.to_csv(root / "fix.csv", index=False)
    return folder, root / "fix.csv"


def _smooth_log_density(h, w, cy=0.3, cx=0.7, s=0.15):
    yy, xx = np.mgrid[0:h, 0:w]
    z = -0.5 * (((yy + 0.5) / h - cy) ** 2 + ((xx + 0.5) / w - cx) ** 2) / s ** 2
    return z - logsumexp(z)


# ------------------------------------------------------------------------------------------------
# rescaling
# ------------------------------------------------------------------------------------------------
def test_working_size_keeps_the_aspect_ratio_at_the_pixel_area():
    assert rescale.working_size(2448, 3264, 480000) == (600, 800)
    assert rescale.working_size(600, 800, 480000) == (600, 800)
    assert rescale.working_size(192, 256, 480000) == (600, 800)
    assert rescale.working_size(693, 693, 480000) == (693, 693)
    h, w = rescale.working_size(1000, 250, 480000)
    assert (h, w) == (1386, 346) and abs(h * w - 480000) / 480000 < 0.002
    assert rescale.working_size(37, 51, None) == (37, 51)
    with pytest.raises(ValueError):
        rescale.working_size(10, 10, 0)
    for bad in ("big", -1, float("nan")):
        with pytest.raises(ValueError, match="scale"):
            predict.parse_scale(bad)
    assert predict.parse_scale("480000") == 480000.0 and predict.parse_scale("native") == "native"


def test_resampled_density_is_normalised_at_the_original_size_and_round_trips():
    ld = _smooth_log_density(60, 80)
    for size in [(150, 200), (61, 79), (24, 32), (7, 9)]:
        r = rescale.resample_log_density(ld, *size)
        assert r.shape == size
        tol = 1e-6 if size[0] * size[1] >= 60 * 80 else 1e-12      # float32 up, float64 down
        assert abs(logsumexp(r)) < tol
    # up then down (and down then up) returns the density it started from, closely
    back = rescale.resample_log_density(rescale.resample_log_density(ld, 240, 320), 60, 80)
    np.testing.assert_allclose(np.exp(back), np.exp(ld), rtol=0, atol=1e-2 * np.exp(ld).max())
    # the same function of normalised position, sampled at another size: the resampled map agrees
    np.testing.assert_allclose(np.exp(rescale.resample_log_density(ld, 30, 40)),
                               np.exp(_smooth_log_density(30, 40)), rtol=0, atol=0.02 * np.exp(ld).max() * 4)


def test_mass_at_a_border_pixel_stays_at_that_border():
    """All mass in the last column (or the first row) of the working grid maps onto the pixels that
    cover the same part of the original image: the last W/w columns (the first H/h rows)."""
    h, w = 30, 40
    ld = np.full((h, w), -60.0)
    ld[:, -1] = 0.0
    ld -= logsumexp(ld)
    up = np.exp(rescale.resample_log_density(ld, 3 * h, 3 * w).astype(np.float64))
    assert up[:, -3:].sum() > 0.99 and up[:, :-4].sum() < 1e-6
    down = np.exp(rescale.resample_log_density(ld, h // 2, w // 2))
    assert down[:, -1].sum() > 0.99
    ld = np.full((h, w), -60.0)
    ld[0, :] = 0.0
    ld -= logsumexp(ld)
    up = np.exp(rescale.resample_log_density(ld, 2 * h, 2 * w).astype(np.float64))
    assert up[:2].sum() > 0.99


def test_rescaled_copy_scales_fixations_with_the_image(tmp_path, data_root):
    ds = datasets.load("synthetic", n_images=3, size=(48, 64), n_subjects=3, fixations_per_subject=5, seed=1)
    # a fixation at the very border of the last pixel stays in the last pixel at every width
    ds.fixations.loc[0, "x"] = 64 - 1e-9
    ds.fixations.loc[0, "y"] = 0.0
    for width in (16, 64, 200):
        r = transfer.rescaled(ds, width, images=[2, 0])
        h = round(48 * width / 64)
        assert r.sizes.tolist() == [[h, width], [h, width]] and r.parent_images.tolist() == [2, 0]
        assert r.image(1).shape == (h, width, 3)
        src = ds.fixations_of(0)
        got = r.fixations_of(1)
        np.testing.assert_allclose(got["x"].to_numpy(), np.minimum(src["x"].to_numpy() * width / 64,
                                                                   np.nextafter(width, 0)))
        np.testing.assert_allclose(got["y"].to_numpy(), src["y"].to_numpy() * h / 48)
        first = got.iloc[0]
        assert math.floor(first.x) == width - 1 and math.floor(first.y) == 0
        assert r.n_fixations == ds.fixations_of(0).shape[0] + ds.fixations_of(2).shape[0]


class TrueDensity:
    """A 'Predictor' that knows the synthetic set's true density (a function of normalised
    position and colour) and, like a scale-aware Predictor, maps it from its working size."""

    def __init__(self, parent):
        self.parent = parent

    def log_density(self, rgb, scale=None):
        ld = datasets.synthetic_log_density(np.asarray(rgb))
        return ld

    def center_bias_log_density(self, h, w, scale=None):
        return predict.uniform_log_density(h, w)

    def working_size(self, h, w, scale=None):
        return (int(h), int(w))

    def scale_record(self, h, w, scale=None):
        return {"scale": "native", "pixel_area": None, "size": [h, w], "predicted_at": [h, w]}


def test_a_known_density_scores_the_same_at_every_size(data_root):
    """The synthetic set's generating density, shown at 32, 64 (its own) and 160 px wide with the
    fixations scaled along: its log-likelihood over uniform (bit/fix) stays put. A fixation mapped
    to the wrong pixel (x and y swapped, unscaled, ...) would lose most of it."""
    ds = datasets.load("synthetic", n_images=6, size=(48, 64), n_subjects=4, fixations_per_subject=25, seed=4)
    model = TrueDensity(ds)
    ll = {}
    for width in (32, None, 160):
        data = transfer.rescaled(ds, width)
        res = transfer.evaluate(model, data)
        ll[width] = res.summary["LL"]
        assert res.summary["IG_training_center_bias"] == pytest.approx(res.summary["LL"], rel=1e-6)
    assert ll[None] > 0.3
    assert ll[32] == pytest.approx(ll[None], abs=0.03) and ll[160] == pytest.approx(ll[None], abs=0.03)
    # the wrong mapping loses it: fixations of the 160-wide copy scored on the unscaled positions
    data = transfer.rescaled(ds, 160)
    data.fixations["x"] = data.fixations["x"] * 64 / 160
    assert transfer.evaluate(model, data).summary["LL"] < ll[None] - 0.3


# ------------------------------------------------------------------------------------------------
# the folder data set and its bad inputs
# ------------------------------------------------------------------------------------------------
def test_folder_dataset_reads_mixed_sizes_and_is_cached(tmp_path, data_root):
    folder, csv = make_folder(tmp_path)
    ds = datasets.load("folder", images=folder, fixations=csv)
    assert len(ds) == 9 and sorted({tuple(s) for s in ds.sizes.tolist()}) == [(64, 96), (80, 80), (96, 64)]
    assert ds.n_fixations == 9 * 4 * 6 and list(ds.subjects) == [0, 1, 2, 3]
    assert ds.notes["images_without_fixations"] == 0 and "subject column" in ds.notes["subjects"]
    src = pd.read_csv(csv)
    got = ds.fixations_of(1)
    want = src[src.image == "im1.png"].sort_values(["subject"], kind="stable")
    np.testing.assert_allclose(got["x"].to_numpy(), want["x"].to_numpy())
    assert got["fix_index"].tolist() == list(range(6)) * 4
    assert (ds.image(1).shape == (96, 64, 3))
    # cached: the same checksum without re-reading; changed content: another checksum
    again = datasets.load("folder", images=folder, fixations=csv)
    assert again.checksum == ds.checksum and len(again.checksum) == 64
    img = np.asarray(Image.open(folder / "im0.png")).copy()
    img[0, 0] = 255 - img[0, 0]
    Image.fromarray(img).save(folder / "im0.png")
    assert datasets.load("folder", images=folder, fixations=csv).checksum != ds.checksum


@pytest.mark.parametrize("case, match", [
    ("missing image", r"fix\.csv: 1 rows name images not in the folder.*\n  line 2: image 'gone\.png'"),
    ("outside", r"fix\.csv: 1 bad rows:\n  line 3 \(image 'im0.png', x='70.0', y='5.0'\): outside the 64x96 image"),
    ("non-numeric", r"fix\.csv: 1 bad rows:\n  line 2 \(image 'im0.png', x='left'.*x and y must be numbers"),
    ("bad subject", r"fix\.csv: 1 bad rows:\n  line 3 .*subject must be a number"),
    ("empty", r"fix\.csv: not a readable CSV"),
    ("header only", r"fix\.csv: no fixation rows"),
    ("no x column", r"fix\.csv: missing column\(s\) \['x'\]"),
    ("no folder", r"nowhere: image folder does not exist"),
    ("broken image", r"im9\.png: image does not decode"),
    ("rotated image", r"im8\.jpg: has an EXIF orientation tag \(6\)"),
])
def test_folder_bad_inputs_are_errors_naming_file_and_line(tmp_path, data_root, case, match):
    folder, csv = make_folder(tmp_path, sizes=((96, 64), (64, 96)), n_subjects=2, per_subject=2)
    df = pd.read_csv(csv)
    if case == "missing image":
        df.loc[0, "image"] = "gone.png"
    elif case == "outside":
        df.loc[1, ["x", "y"]] = [70.0, 5.0]             # x beyond the 64 px wide image
    elif case == "non-numeric":
        df["x"] = df["x"].astype(object)
        df.loc[0, "x"] = "left"
    elif case == "bad subject":
        df["subject"] = df["subject"].astype(object)
        df.loc[1, "subject"] = "anna"
    elif case == "no x column":
        df = df.drop(columns="x")
    elif case == "broken image":
        (folder / "im9.png").write_bytes(b"\x89PNG\r\n\x1a\nnot an image")
    elif case == "rotated image":
        exif = Image.Exif()
        exif[0x0112] = 6
        Image.open(folder / "im0.png").convert("RGB").save(folder / "im8.jpg", exif=exif.tobytes())
    df.to_csv(csv, index=False)
    if case == "empty":
        csv.write_text("")
    elif case == "header only":
        csv.write_text("image,x,y,subject\n")
    where = tmp_path / "nowhere" if case == "no folder" else folder
    with pytest.raises(DataError, match=match):
        datasets.load("folder", images=where, fixations=csv)


def test_folder_unknown_images_can_be_skipped_and_no_subject_column_is_one_observer(tmp_path, data_root):
    folder, csv = make_folder(tmp_path, sizes=((96, 64), (64, 96)), n_subjects=2, per_subject=3,
                              subject_column=False)
    df = pd.read_csv(csv)
    df.loc[0, "image"] = "other.png"
    df.to_csv(csv, index=False)
    ds = datasets.load("folder", images=folder, fixations=csv, unknown_images="skip")
    assert ds.notes["skipped_unknown_image_rows"] == 1 and ds.n_fixations == len(df) - 1
    assert list(ds.subjects) == [0] and "no subject column" in ds.notes["subjects"]


# ------------------------------------------------------------------------------------------------
# a trained run on a folder data set of mixed sizes
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    from dgstudy import features, training
    from dgstudy.config import TrainConfig

    root = tmp_path_factory.mktemp("transfer_run")
    with isolated_study(root):
        folder, csv = make_folder(root)
        cfg = TrainConfig(dataset="folder", dataset_options={"images": str(folder), "fixations": str(csv)},
                          backbone="efficientnet_lite0", folds=3, max_epochs=2, patience=2, batch_size=4,
                          run="tiny-folder")
        ds = runs.load_dataset(cfg)
        features.extract(ds, cfg.backbone, downsample=cfg.downsample, out=runs.feature_path(cfg, ds),
                         progress=False)
        with warnings.catch_warnings():          # two epochs on 9 images: folds below their centre bias
            warnings.simplefilter("ignore", UserWarning)
            run_dir = training.train_crossval(cfg, progress=False)
        yield run_dir, ds, root


def test_training_records_its_scale_and_older_runs_derive_or_explain_it(folder_run, tmp_path):
    import shutil

    run_dir, ds, root = folder_run
    info = json.loads((run_dir / "fold_00" / "config.json").read_text())
    train = np.asarray(info["train_images"])
    want = float(np.median(ds.sizes[train, 0] * ds.sizes[train, 1]))
    assert info["training_pixel_area"] == want
    areas = [json.loads((run_dir / f"fold_{k:02d}" / "config.json").read_text())["training_pixel_area"]
             for k in range(3)]
    assert runs.training_scale([run_dir / f"fold_{k:02d}" for k in range(3)]) == float(np.median(areas))
    # a run from before the key: derived from its recorded data set (it loads here) ...
    copy = tmp_path / "old"
    shutil.copytree(run_dir, copy)
    for k in range(3):
        p = copy / f"fold_{k:02d}" / "config.json"
        d = json.loads(p.read_text())
        del d["training_pixel_area"]
        p.write_text(json.dumps(d))
    assert runs.training_scale(copy / "fold_00") == want
    # ... else a clear error that says how to give the scale; recording it fixes that for good
    for k in range(3):
        p = copy / f"fold_{k:02d}" / "config.json"
        d = json.loads(p.read_text())
        d["train_config"]["dataset_options"]["images"] = str(tmp_path / "moved")
        p.write_text(json.dumps(d))
    runs._DATASETS.clear()
    with pytest.raises(DataError, match=r"does not load here.*scale='native'.*record_training_scale"):
        predict.load_model(copy)
    assert predict.load_model(copy, scale="native").pixel_area is None
    assert runs.record_training_scale(copy, 6000.0) == 6000.0
    assert predict.load_model(copy).pixel_area == 6000.0


def test_default_prediction_is_at_the_training_scale_normalised_at_the_original_size(folder_run):
    run_dir, ds, _ = folder_run
    model = predict.load_model(run_dir)
    native = predict.load_model(run_dir, scale="native")
    area = model.pixel_area
    assert model.scale == "training" and area == runs.training_scale(model.fold_dirs)
    h, w = (int(v) for v in ds.sizes[0])
    rgb = ds.image(0)
    # an image at the training scale predicts exactly as native
    at = rescale.working_size(h, w, area)
    rgb_at = rescale.resize_image(rgb, at)
    np.testing.assert_array_equal(model.log_density(rgb_at), native.log_density(rgb_at))
    # a 6x larger image: predicted at the working size, mapped back, normalised over its own pixels
    big = rescale.resize_image(rgb, (6 * h, 6 * w))
    got = model.log_density(big)
    assert got.shape == (6 * h, 6 * w) and got.dtype == np.float32
    assert abs(logsumexp(got.astype(np.float64))) < 1e-5
    assert model.scale_record(6 * h, 6 * w)["predicted_at"] == list(rescale.working_size(6 * h, 6 * w, area))
    # ... which is the prediction at the working size, resampled
    ref = rescale.resample_log_density(native.log_density(rescale.resize_image(big, model.working_size(6 * h, 6 * w))),
                                       6 * h, 6 * w)
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5)
    # native prediction of the large image is another map
    assert np.abs(native.log_density(big) - got).max() > 0.1
    # a per-call scale, and a number
    np.testing.assert_array_equal(model.log_density(big, scale="native"), native.log_density(big))
    assert model.working_size(6 * h, 6 * w, scale=4 * h * w) == rescale.working_size(6 * h, 6 * w, 4 * h * w)
    # single folds share the backbone and keep the scale
    folds = model.single_folds()
    assert sorted(folds) == [0, 1, 2] and folds[1].backbone is model.backbone and folds[1].scale == "training"


def test_evaluate_command_on_a_folder_writes_everything(folder_run, tmp_path, capsys):
    run_dir, ds, root = folder_run
    out = tmp_path / "ev"
    code = cli.main(["evaluate", "--model", str(run_dir), "--images", str(root / "images"),
                     "--fixations", str(root / "fix.csv"), "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0 and "explained_IG" in printed and "IG (run cb)" in printed
    ev = json.loads((out / "evaluation.json").read_text())
    s = ev["summary"]
    assert ev["scale"] == ["training"] and ev["not_computable"] == {}
    assert s["n_images"] == 9 and s["n_fixations"] == ds.n_fixations
    assert all(np.isfinite(s[k]) for k in ("LL", "IG", "explained_IG", "sAUC", "IG_training_center_bias"))
    per = pd.read_csv(out / "evaluation_per_image.csv")
    assert len(per) == 9 and {"file", "IG", "IG_gold", "IG_training_center_bias", "scale",
                              "predicted_height"} <= set(per.columns)
    n = per["n_fix"].to_numpy()
    assert s["IG_training_center_bias"] == pytest.approx(np.sum(per["IG_training_center_bias"] * n) / n.sum())
    assert s["explained_IG"] == pytest.approx(s["IG"] / s["IG_gold"])
    assert (out / "evaluation.png").stat().st_size > 1000 and (out / "evaluation.pdf").exists()
    # bad input: an error naming the file and line, nothing written
    bad = tmp_path / "bad.csv"
    pd.read_csv(root / "fix.csv").assign(x=lambda d: d.x + 500).to_csv(bad, index=False)
    code = cli.main(["evaluate", "--model", str(run_dir), "--images", str(root / "images"),
                     "--fixations", str(bad), "--out", str(tmp_path / "ev2")])
    assert code == 1 and "bad.csv: 216 bad rows" in capsys.readouterr().err
    assert not (tmp_path / "ev2").exists()


def test_one_image_or_one_observer_reports_what_it_can(folder_run, tmp_path, capsys, data_root):
    run_dir, ds, root = folder_run
    model = predict.load_model(run_dir, fold=0)
    one = transfer.evaluate(model, ds.subset([4]))
    assert np.isfinite(one.summary["LL"]) and np.isfinite(one.summary["IG_training_center_bias"])
    assert math.isnan(one.summary["IG"]) and math.isnan(one.summary["sAUC"])
    assert set(one.not_computable) == {"IG", "explained_IG", "sAUC"}
    assert "single image" in one.not_computable["sAUC"]
    # one observer: no gold standard, the rest is there
    folder, csv = make_folder(tmp_path / "solo", sizes=((64, 96), (80, 80), (96, 64)), n_subjects=1)
    solo = transfer.evaluate(model, datasets.load("folder", images=folder, fixations=csv))
    assert np.isfinite(solo.summary["IG"]) and math.isnan(solo.summary["explained_IG"])
    assert "single observer" in solo.not_computable["explained_IG"]
    # dgstudy predict --fixations on one image: evaluated, sAUC marked (it used to fail outright)
    csv1 = tmp_path / "one.csv"
    pd.read_csv(root / "fix.csv").query("image == 'im2.png'").to_csv(csv1, index=False)
    code = cli.main(["predict", str(root / "images" / "im2.png"), "--model", str(run_dir), "--out",
                     str(tmp_path / "p"), "--fixations", str(csv1), "--no-plot"])
    printed = capsys.readouterr().out
    assert code == 0 and "sAUC" in printed and "not computable" in printed
    ev = json.loads((tmp_path / "p" / "evaluation.json").read_text())["summary"]
    assert ev["n_images"] == 1 and np.isfinite(ev["IG"]) and ev["scale"] == "training"
    side = json.loads((tmp_path / "p" / "im2.json").read_text())
    assert side["scale"] == "training" and side["size"] == [80, 80] and side["pixel_area"] == model.pixel_area


def test_baselines_command_on_a_folder_of_mixed_sizes(tmp_path, data_root, capsys):
    folder, csv = make_folder(tmp_path, n_subjects=5, per_subject=8)
    out = tmp_path / "b"
    assert cli.main(["baselines", "--images", str(folder), "--fixations", str(csv), "--out", str(out)]) == 0
    table = pd.read_csv(out / "table.csv").set_index("model")
    # fixations drawn around the centre: the centre bias beats uniform, the gold standard beats both
    assert table.loc["uniform", "LL"] == pytest.approx(0.0, abs=1e-9)
    assert table.loc["center_bias", "LL"] > 0.3 and table.loc["center_bias", "IG"] == pytest.approx(0.0, abs=1e-9)
    assert table.loc["gold_standard", "LL"] > table.loc["center_bias", "LL"] - 0.2
    assert json.loads((out / "table.json").read_text())["n_images"] == 9
    assert cli.main(["baselines", "--images", str(folder)]) == 1
    assert "give both --images DIR and --fixations CSV" in capsys.readouterr().err
