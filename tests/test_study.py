"""The study around the model: bootstrap intervals against closed forms (statistics), the results
table (report), grids and ablation tables (ablations), the config and its output tag, preflight (cli)."""
from __future__ import annotations

import dataclasses

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from conftest import REPO
from dgstudy import ablations, cli, figures, grids, report, runs, statistics
from dgstudy.backbones.vgg19 import PAPER_LAYERS
from dgstudy.config import StudyConfig
from dgstudy.io import DataError


# -- bootstrap --------------------------------------------------------------------------------
def test_bootstrap_mean_of_normals_matches_the_normal_interval():
    """Mean of n iid N(mu, s^2): the bootstrap interval ~ mean +- z * sd / sqrt(n)."""
    rng = np.random.default_rng(1)
    x = rng.normal(3.0, 2.0, size=2000)
    iv = statistics.bootstrap_mean(x, n_boot=4000, seed=2)
    half = stats.norm.ppf(0.975) * x.std(ddof=0) / np.sqrt(x.size)
    assert iv.estimate == pytest.approx(x.mean(), abs=1e-12)
    assert iv.low == pytest.approx(x.mean() - half, abs=0.08 * half)
    assert iv.high == pytest.approx(x.mean() + half, abs=0.08 * half)


def test_bootstrap_interval_covers_the_true_mean_about_95_percent_of_the_time():
    rng = np.random.default_rng(3)
    mu, hits, reps = 1.5, 0, 300
    for r in range(reps):
        x = rng.normal(mu, 1.0, size=60)
        iv = statistics.bootstrap_mean(x, n_boot=400, seed=r)
        hits += iv.low <= mu <= iv.high
    # binomial sd at p=0.95, n=300 is 1.3 points; small-sample percentile intervals undercover a bit
    assert 0.89 <= hits / reps <= 0.99


def test_weighted_bootstrap_is_the_per_fixation_average_and_resamples_images():
    # two kinds of images: 10 fixations with IG 1, 30 fixations with IG 0 -> per-fixation mean 0.25
    values = np.array([1.0, 0.0] * 50)
    weights = np.array([10.0, 30.0] * 50)
    iv = statistics.bootstrap_mean(values, weights, n_boot=3000, seed=0)
    assert iv.estimate == pytest.approx(0.25)
    # closed form by the delta method for the ratio sum(w v)/sum(w) over n images
    n = values.size
    r = iv.estimate
    resid = weights * (values - r)
    se = np.sqrt((resid ** 2).mean() / n) / weights.mean()
    half = stats.norm.ppf(0.975) * se
    assert iv.high - iv.low == pytest.approx(2 * half, rel=0.12)


def test_constant_values_give_a_zero_width_interval_and_bad_input_raises():
    iv = statistics.bootstrap_mean(np.full(30, 0.7), np.arange(1, 31), n_boot=200)
    assert iv.low == pytest.approx(0.7) and iv.high == pytest.approx(0.7)
    with pytest.raises(ValueError):
        statistics.bootstrap_mean([], n_boot=10)
    with pytest.raises(ValueError):
        statistics.bootstrap_mean([1.0, 2.0], [1.0], n_boot=10)


def test_paired_difference_is_narrower_than_unpaired_for_correlated_conditions():
    rng = np.random.default_rng(5)
    base = rng.normal(0, 1, 200)                 # image difficulty shared by both conditions
    a, b = base + 0.1 + rng.normal(0, 0.05, 200), base + rng.normal(0, 0.05, 200)
    w = np.ones(200)
    d = statistics.bootstrap_paired_difference(a, b, w, n_boot=2000, seed=0)
    assert d.estimate == pytest.approx((a - b).mean())
    assert d.low > 0  # the 0.1 shift is detected although a, b intervals overlap heavily
    ia, ib = statistics.bootstrap_mean(a, n_boot=2000), statistics.bootstrap_mean(b, n_boot=2000)
    assert ia.low < ib.high


def test_holm_matches_the_step_down_rule_by_hand():
    # sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04 -> running max
    np.testing.assert_allclose(statistics.holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
    out = statistics.holm([0.5, np.nan, 0.2])                  # NaN is not a comparison: m = 2
    assert np.isnan(out[1]) and out[0] == pytest.approx(0.5) and out[2] == pytest.approx(0.4)
    np.testing.assert_array_equal(statistics.holm([0.9, 0.8]), [1.0, 1.0])   # capped at 1


def test_paired_p_value_is_the_level_where_the_interval_reaches_zero():
    rng = np.random.default_rng(7)
    base = rng.normal(0, 1, 300)
    w = rng.integers(1, 30, 300).astype(float)
    clear = base + 0.3 + rng.normal(0, 0.05, 300)
    iv, p = statistics.paired_difference_test(clear, base, w, n_boot=1000, seed=0)
    assert iv == statistics.bootstrap_paired_difference(clear, base, w, n_boot=1000, seed=0)
    assert p == pytest.approx(1 / 1000)                          # no resample reaches 0
    assert statistics.paired_difference_test(base, base, w, n_boot=200)[1] == 1.0
    # a shift of about two standard errors: p near 0.05, and the 95% interval just excludes 0
    # exactly when p < 0.05, at any level
    noisy = base + rng.normal(0, 1, 300)
    shifted = noisy + 2.0 * np.sqrt(np.sum(w ** 2)) / w.sum()
    for level in (0.8, 0.9, 0.95, 0.99):
        iv, p = statistics.paired_difference_test(shifted, base, w, n_boot=2000, level=level, seed=1)
        assert (iv.low > 0 or iv.high < 0) == (p < 1 - level) or abs(p - (1 - level)) < 2e-3, (level, p, iv)


def test_ablation_table_holm_adjusts_over_the_grid():
    rng = np.random.default_rng(3)
    ref = _per_image(rng, ig=0.5)
    conds = {"ref": ({}, ref)}
    for k, shift in enumerate([0.0, 0.01, 0.2]):
        pi = ref.copy()
        pi["IG"] = ref["IG"] + shift + rng.normal(0, 0.05, len(ref))
        conds[f"c{k}"] = ({}, pi)
    t = ablations.ablation_table(conds, n_boot=1000, reference="ref").set_index("condition")
    assert np.isnan(t.loc["ref", "IG_diff_p"]) and np.isnan(t.loc["ref", "IG_diff_p_holm"])
    np.testing.assert_allclose(t["IG_diff_p_holm"].drop("ref"), statistics.holm(t["IG_diff_p"].drop("ref")))
    assert t.loc["c2", "IG_diff_p_holm"] < 0.05 and t.loc["c0", "IG_diff_p_holm"] > 0.05
    assert (t["IG_diff_p_holm"].drop("ref") >= t["IG_diff_p"].drop("ref")).all()


def test_seed_spread_widens_the_interval_by_the_closed_form():
    # seed_sd 0: the bootstrap interval itself (symmetric here); p from the normal
    lo, hi, p = statistics.with_seed_spread(0.02, 0.0, 0.04, 0.0)
    assert (lo, hi) == pytest.approx((0.0, 0.04)) and p == pytest.approx(2 * stats.norm.sf(1.96), rel=1e-3)
    # se_boot = 0.02 / z, the seed part 0.01 * sqrt(2) for two single runs, 0.01 * sqrt(1/3 + 1) for an
    # average of three instances against one run
    z = stats.norm.ppf(0.975)
    for inst, seed_var in (((1, 1), 2e-4), ((3, 1), 1e-4 * (1 / 3 + 1))):
        se = np.sqrt((0.02 / z) ** 2 + seed_var)
        lo, hi, p = statistics.with_seed_spread(0.02, 0.0, 0.04, 0.01, instances=inst)
        assert (lo, hi) == pytest.approx((0.02 - z * se, 0.02 + z * se), rel=1e-12)
        assert p == pytest.approx(2 * stats.norm.sf(0.02 / se), rel=1e-12)
    with pytest.raises(ValueError, match="seed_sd"):
        statistics.with_seed_spread(0.02, 0.0, 0.04, -0.01)


def test_seed_aware_interval_covers_a_difference_that_the_image_bootstrap_alone_misses():
    """Two conditions trained once each: the difference on a data set moves with the images and
    with the two runs' seed effects. Simulated with a seed s.d. three times the image-sampling
    s.e.: the paired bootstrap interval (images only) covers the true difference about half the
    time; widened by the seed spread, about 95 % of the time."""
    rng = np.random.default_rng(0)
    true, n, seed_sd, reps = 0.05, 120, 0.05, 300
    covered = {"bootstrap": 0, "seed-aware": 0}
    for r in range(reps):
        w = rng.integers(5, 40, size=n).astype(float)
        base = rng.normal(1.0, 0.4, n)
        seed_a, seed_b = rng.normal(0, seed_sd, 2)
        a = base + true + seed_a + rng.normal(0, 0.15, n)
        b = base + seed_b
        iv, _ = statistics.paired_difference_test(a, b, w, n_boot=300, seed=r)
        lo, hi, _ = statistics.with_seed_spread(iv.estimate, iv.low, iv.high, seed_sd)
        covered["bootstrap"] += iv.low <= true <= iv.high
        covered["seed-aware"] += lo <= true <= hi
    assert covered["bootstrap"] / reps < 0.6
    assert 0.91 <= covered["seed-aware"] / reps <= 0.98


def test_ablation_table_with_seed_spread():
    rng = np.random.default_rng(4)
    ref = _per_image(rng, ig=0.5)
    conds = {"ref": ({}, ref)}
    for k, shift in enumerate([0.01, 0.2]):
        conds[f"c{k}"] = ({}, ref.assign(IG=ref["IG"] + shift + rng.normal(0, 0.05, len(ref))))
    t = ablations.ablation_table(conds, n_boot=500, reference="ref")
    s = ablations.with_seed_spread(t, 0.02, instances={"c1": 3}).set_index("condition")
    for cond, n in (("c0", 1), ("c1", 3)):
        row = s.loc[cond]
        lo, hi, p = statistics.with_seed_spread(row.IG_diff, row.IG_diff_lo, row.IG_diff_hi, 0.02,
                                                instances=(n, 1))
        assert (row.IG_diff_lo_seed, row.IG_diff_hi_seed, row.IG_diff_p_seed) == pytest.approx((lo, hi, p))
        assert row.IG_diff_hi_seed - row.IG_diff_lo_seed > row.IG_diff_hi - row.IG_diff_lo
    assert np.isnan(s.loc["ref", "IG_diff_p_seed"]) and np.isnan(s.loc["ref", "IG_diff_p_seed_holm"])
    assert s.loc["ref", "IG_diff_lo_seed"] == s.loc["ref", "IG_diff_hi_seed"] == 0
    # a condition no training produces (instances inf) carries only the reference's seed spread
    fixed = ablations.with_seed_spread(t, 0.02, instances={"c0": float("inf")}).set_index("condition").loc["c0"]
    lo, hi, _ = statistics.with_seed_spread(fixed.IG_diff, fixed.IG_diff_lo, fixed.IG_diff_hi, 0.02,
                                            instances=(10 ** 9, 1))
    assert (fixed.IG_diff_lo_seed, fixed.IG_diff_hi_seed) == pytest.approx((lo, hi), rel=1e-6)
    np.testing.assert_allclose(s["IG_diff_p_seed_holm"].drop("ref"), statistics.holm(s["IG_diff_p_seed"].drop("ref")))
    assert list(s.columns[list(s.columns).index("IG_diff_p_holm") + 1:][:4]) == [
        "IG_diff_lo_seed", "IG_diff_hi_seed", "IG_diff_p_seed", "IG_diff_p_seed_holm"]
    with pytest.raises(ValueError, match="no IG_diff column"):
        ablations.with_seed_spread(t.drop(columns="IG_diff"), 0.02)


def _per_image(rng, n=40, ig=0.5, gold=1.0):
    n_fix = rng.integers(5, 40, size=n)
    return pd.DataFrame({"image": np.arange(n), "n_fix": n_fix,
                         "LL": rng.normal(1.0, 0.3, n), "IG": rng.normal(ig, 0.2, n),
                         "IG_gold": rng.normal(gold, 0.1, n)})


def test_summarize_and_ablation_table():
    rng = np.random.default_rng(0)
    pa, pb = _per_image(rng, ig=0.5), _per_image(rng, ig=0.1)
    summ_a = {"IG": float((pa.IG * pa.n_fix).sum() / pa.n_fix.sum()), "AUC": 0.8}
    table = ablations.ablation_table({"a": (summ_a, pa), "b": ({}, pb)}, n_boot=500,
                                 describe={"a": "layers A"})
    assert list(table.condition) == ["a", "b"]
    assert table.loc[0, "detail"] == "layers A" and table.loc[0, "AUC"] == 0.8
    for _, row in table.iterrows():
        assert row.IG_lo < row.IG < row.IG_hi
        assert row.explained_IG_lo < row.explained_IG < row.explained_IG_hi
    b = table.iloc[1]
    assert b.IG == pytest.approx((pb.IG * pb.n_fix).sum() / pb.n_fix.sum())
    assert b.explained_IG == pytest.approx((pb.IG * pb.n_fix).sum() / (pb.IG_gold * pb.n_fix).sum())
    assert b.n_fixations == pb.n_fix.sum() and b.n_images == 40


def test_ablation_table_reads_run_directories(tmp_path):
    rng = np.random.default_rng(1)
    pi = _per_image(rng)
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps({"run": "r", "config": {},
                                                  "summary": {"IG": 0.42, "AUC": 0.81, "note": {"x": 1}}}))
    pi.to_csv(run / "per_image.csv", index=False)
    t = ablations.ablation_table({"r": run}, n_boot=100)
    assert t.loc[0, "IG"] == 0.42 and t.loc[0, "AUC"] == 0.81 and "note" not in t


# -- results table ----------------------------------------------------------------------------
def test_results_table_puts_paper_numbers_beside_ours_and_flags_the_setting(tmp_path):
    metrics = {"IG": 0.9, "IG_lo": 0.8, "IG_hi": 1.0, "explained_IG": 0.7, "AUC": 0.86, "LL": 2.0}
    paper = StudyConfig.load("paper", device="cpu")
    t = report.results_table(metrics, paper)
    assert list(t.metric) == report.METRICS
    t = t.set_index("metric")
    assert t.loc["explained_IG", "paper"] == 0.87 and "abstract" in t.loc["explained_IG", "paper_source"]
    assert "MIT1003" in t.loc["explained_IG", "paper_source"] and "MIT300" in t.loc["AUC", "paper_source"]
    # DeepGaze I's 56 % is an AlexNet model's: named in the source, never in the paper column
    dg1 = report.results_table(metrics, paper, "deepgaze1").set_index("metric")
    assert dg1["paper"].isna().all() and "AlexNet" in dg1.loc["explained_IG", "paper_source"]
    assert not dg1["comparable"].any()
    assert t.loc["AUC", "paper"] == 0.88 and t.loc["AUC", "this_run"] == 0.86
    assert t.loc["IG", "ci_low"] == 0.8 and np.isnan(t.loc["IG", "paper"])
    assert t.loc["AUC", "comparable"] and not t.loc["IG", "comparable"]   # no paper number for IG
    assert np.isnan(t.loc["SIM", "this_run"])

    osie = StudyConfig.load("osie", device="cpu")
    t2 = report.results_table(metrics, osie).set_index("metric")
    assert not t2["comparable"].any()
    assert "osie" in t2.loc["AUC", "setting"] and "efficientnet_lite0" in t2.loc["AUC", "setting"]
    prose = report.compare_prose(t2.reset_index(), osie)
    assert "0.900 bit/fixation" in prose and "70%" in prose and "87%" in prose

    paths = report.write_table(report.results_table(metrics, osie), tmp_path, "results")
    md = paths["md"].read_text().splitlines()
    assert "setting" in md[0]
    assert md[0].startswith("| model | metric | unit | this_run") and len(md) == 2 + len(report.METRICS)
    back = pd.read_csv(paths["csv"])
    assert back.loc[back.metric == "AUC", "paper"].item() == 0.88
    records = json.loads(paths["json"].read_text())
    assert records[1]["metric"] == "IG" and records[1]["this_run"] == 0.9
    assert not list(tmp_path.glob(".*tmp"))   # nothing half-written left behind
    paths = report.write_table(report.results_table(metrics, osie), tmp_path, "r2", md_preamble="# R",
                              md_drop=["setting"])
    md = paths["md"].read_text().splitlines()
    assert md[0] == "# R" and md[2].startswith("| model |") and "setting" not in md[2]
    assert "setting" in pd.read_csv(paths["csv"]).columns
    wide = pd.DataFrame({"condition": ["a"], "IG": [0.5], "IG_per_image": [0.4], "detail": ["x"]})
    paths = report.write_table(wide, tmp_path, "abl", md_columns=report.SUMMARY_COLUMNS)
    assert paths["md"].read_text().splitlines()[0] == "| condition | detail | IG |"
    assert list(pd.read_csv(paths["csv"]).columns) == ["condition", "IG", "IG_per_image", "detail"]


# -- grids ------------------------------------------------------------------------------------
def _fake_backbone(name, layer_names, strides, default):
    return SimpleNamespace(name=name, layer_names=layer_names, strides=dict(zip(layer_names, strides)),
                           default_layers=default)


def test_layer_grids():
    from dgstudy.backbones import vgg19
    stages, _, strides = vgg19.named_layers()
    vgg = _fake_backbone("vgg19", list(stages), [strides[n] for n in stages], vgg19.PAPER_LAYERS)
    g = ablations.layer_grid(vgg)
    # the paper's five singly, the last conv of every block, the five together
    assert g["paper5"] == PAPER_LAYERS and all(g[layer] == [layer] for layer in PAPER_LAYERS)
    blocks = ["conv1_2", "conv2_2", "conv3_4", "conv4_4", "conv5_4"]
    assert all(g[b] == [b] for b in blocks) and len(g) == 11
    assert [vgg.strides[b] for b in blocks] == [1, 2, 4, 8, 16]
    assert all(vgg.strides[layer] <= ablations.VGG_POOL_STRIDE for ls in g.values() for layer in ls)
    assert ablations.layer_grid(vgg, size="small") == {"default": PAPER_LAYERS, "conv1_2": ["conv1_2"]}
    vs = ablations.vgg_layer_study(StudyConfig.load("osie_extended"), "vgg19_random")
    assert vs.train.run == "osie-vgg19_random" and vs.train.backbone == "vgg19_random" and vs.train.layers is None
    with pytest.raises(ValueError, match="not a VGG"):
        ablations.vgg_layer_study(StudyConfig.load("osie"), "efficientnet_lite0")
    assert ablations.layer_grid(vgg, ["relu4_4", "pool5"]) == {
        "relu4_4": ["relu4_4"], "pool5": ["pool5"], "default": PAPER_LAYERS}
    with pytest.raises(ValueError, match="conv9_9"):
        ablations.layer_grid(vgg, {"x": ["conv9_9"]})

    other = _fake_backbone("net", ["a", "b", "c", "d", "e"], [2, 8, 8, 16, 16], ["c", "e"])
    assert ablations.layer_grid(other) == {"c": ["c"], "e": ["e"], "default": ["c", "e"]}


def test_config_and_output_tag(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("DGSTUDY_RESULTS", str(tmp_path))
    osie = StudyConfig.load("osie")
    assert osie.output_tag == "osie" and osie.train.run == "osie-efficientnet_lite0"
    other = StudyConfig.load("osie", backbone="vgg19")
    assert other.output_tag == "osie-vgg19" and other.train.run == "osie-vgg19"
    assert StudyConfig.load("smoke").output_dir() == tmp_path / "smoke"
    # osie_extended shares the runs of osie; a readout override names its run
    ext = StudyConfig.load("osie_extended")
    assert ext.train.run == "osie-efficientnet_lite0" and ext.output_tag == "osie_extended"
    assert ext.ablation_backbones == ["efficientnet_lite1", "efficientnet_lite2", "vgg19_random",
                                      "efficientnet_lite0_random"]
    assert StudyConfig.load("smoke", readout="deepgaze1").train.run == "smoke-efficientnet_lite0-deepgaze1"
    with pytest.raises(KeyError, match="max_epoch"):
        StudyConfig.load("smoke", max_epoch=3)                 # a typo is an error, not ignored
    # the main run: the reference with the profile's `main` changes, a run of its own; the
    # reference is what the ablations vary; without changes the two are one run
    smoke = StudyConfig.load("smoke")
    assert smoke.main == {"downsample": 1}          # features of its own, as osie's main run
    m = smoke.main_train
    assert m.run == "smoke-efficientnet_lite0-main" and m.downsample == 1
    assert smoke.train.downsample == 2 and smoke.train.run == "smoke-efficientnet_lite0"
    assert dataclasses.replace(m, run=smoke.train.run, downsample=2) == smoke.train
    plain = StudyConfig.load("smoke", main={})
    assert plain.main_train is plain.train
    scaled = StudyConfig.load("smoke", feature_path="/elsewhere.h5", main={"downsample": 1})
    assert scaled.main_train.feature_path is None and scaled.main_train.downsample == 1   # not the ds2 store
    assert StudyConfig.load("smoke", feature_path="/x.h5", main={"lr": 0.01}).main_train.feature_path == "/x.h5"
    for bad in ({"lrate": 0.1}, {"run": "other"}):
        with pytest.raises(KeyError, match="main"):
            StudyConfig.load("smoke", main=bad)
    # the training grid holds the main changes as a condition (named `main` unless one has them)
    assert grids.training_grid(smoke)["ds1"] == smoke.main and "main" not in grids.training_grid(smoke)
    other_main = StudyConfig.load("smoke", main={"l1": 0.001})
    assert grids.training_grid(other_main)["main"] == {"l1": 0.001}
    # instances: the main run's, and the reference's when it is another run (their own count)
    sets = ablations.instance_sets(StudyConfig.load("smoke", reference_instances=3))
    assert [(name, stem, t.run, n) for name, stem, t, n in sets] == [
        ("main_instances2", "seed_spread", "smoke-efficientnet_lite0-main", 2),
        ("instances3", "seed_spread_reference", "smoke-efficientnet_lite0", 3)]
    assert [(name, t.run) for name, _, t, _ in ablations.instance_sets(plain)] == [("instances2", plain.train.run)]
    # osie: one main run, the reference with three seeds (its spread widens the ablation intervals)
    assert [(name, stem, t.run, n) for name, stem, t, n in ablations.instance_sets(StudyConfig.load("osie"))] == [
        ("instances3", "seed_spread_reference", "osie-efficientnet_lite0", 3)]
    # the Makefile asks the library
    assert cli.main(["tag", "--profile", "osie", "--backbone", "vgg19_random"]) == 0
    assert capsys.readouterr().out.strip() == "osie-vgg19_random"
    # backbone runs: the main run's name with the backbone swapped
    assert ablations.backbone_run_name(osie, "vgg19_random") == "osie-vgg19_random"
    assert ablations.backbone_run_name(osie, "efficientnet_lite0") == "osie-efficientnet_lite0"
    assert grids.backbone_grid(ext) == ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2",
                                            "vgg19_random", "efficientnet_lite0_random"]


# -- preflight --------------------------------------------------------------------------------
def test_preflight_reports_the_loaders_own_messages(monkeypatch):
    from dgstudy import backbones, datasets

    def no_data(name, **kw):
        raise DataError(f"{name}: /nowhere/DATA.zip is missing; set DGSTUDY_MIT1003_DIR")

    def no_weights(name, **kw):
        raise DataError(f"{name}: vgg19-dcbb9e9d.pth not found; set DGSTUDY_VGG19_WEIGHTS")

    monkeypatch.setattr(datasets, "load", no_data)
    monkeypatch.setattr(backbones, "get", no_weights)
    problems = cli.preflight(StudyConfig.load("paper"))
    assert len(problems) == 3                  # the data, the main backbone, the ablation's backbone
    assert problems[0].startswith("dataset 'mit1003': DataError") and "DGSTUDY_MIT1003_DIR" in problems[0]
    assert problems[1].startswith("backbone 'vgg19'") and "DGSTUDY_VGG19_WEIGHTS" in problems[1]
    assert problems[2].startswith("backbone 'vgg19_random'")

    monkeypatch.setattr(datasets, "load", lambda name, **kw: None)
    monkeypatch.setattr(backbones, "get", lambda name, **kw: None)
    assert cli.preflight(StudyConfig.load("paper")) == []
    assert cli.main(["preflight", "--profile", "paper"]) == 0


def test_preflight_cli_fails_fast_on_a_machine_without_mit1003(tmp_path, monkeypatch, capsys):
    """The real loaders, an empty data root and no weights: fails, naming both, in seconds."""
    import time
    monkeypatch.setenv("DGSTUDY_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("DGSTUDY_MIT1003_DIR", str(tmp_path / "no-mit"))
    monkeypatch.delenv("DGSTUDY_VGG19_WEIGHTS", raising=False)
    t0 = time.perf_counter()
    rc = cli.main(["preflight", "--profile", "paper"])
    err = capsys.readouterr().err
    assert rc == 1 and time.perf_counter() - t0 < 30
    assert "dataset 'mit1003'" in err and "backbone 'vgg19'" in err


def test_per_image_metrics_average_over_images_and_paired_reference():
    rng = np.random.default_rng(2)
    pa = _per_image(rng, ig=0.5)
    pa["AUC"] = rng.uniform(0.7, 0.9, len(pa))
    pb = pa.assign(IG=pa.IG - 0.05 + rng.normal(0, 0.01, len(pa)))
    t = ablations.ablation_table({"a": ({}, pa), "b": ({}, pb.sample(frac=1, random_state=0))},
                             n_boot=800, reference="a")
    a, b = t.iloc[0], t.iloc[1]
    assert a.AUC == pytest.approx(pa.AUC.mean())              # unweighted: mean over images
    assert a.IG == pytest.approx((pa.IG * pa.n_fix).sum() / pa.n_fix.sum())   # over fixations
    assert a.AUC_lo < a.AUC < a.AUC_hi
    assert a.IG_diff == 0 and a.IG_diff_lo == 0 and a.IG_diff_hi == 0
    w = pa.n_fix
    assert b.IG_diff == pytest.approx(((pb.IG - pa.IG) * w).sum() / w.sum())   # matched by image
    assert b.IG_diff_hi < 0 < b.IG_hi - b.IG_lo      # paired: the small loss is resolved


def test_fold_parameters_and_example_images(tmp_path):
    for k, (sigma, w) in enumerate([(7.5, 0.9), (8.5, 1.1)]):
        d = tmp_path / f"fold_{k:02d}"
        d.mkdir()
        (d / "config.json").write_text(json.dumps({
            "fold": k, "sigma": sigma, "center_bias_weight": w, "best_epoch": 3, "epochs_run": 8,
            "seconds": 1.0, "train_config": {"saliency_map_factor": 4}}))
    (tmp_path / "fold_02").mkdir()   # unfinished fold: skipped
    fp = runs.fold_parameters(tmp_path)
    assert list(fp.fold) == [0, 1] and list(fp.sigma_px) == [30.0, 34.0]
    assert list(fp.center_bias_weight) == [0.9, 1.1]
    for d in (tmp_path / "fold_00", tmp_path / "fold_01"):       # a run without a centre-bias term
        info = json.loads((d / "config.json").read_text())
        info["train_config"]["center_bias"] = "none"
        (d / "config.json").write_text(json.dumps(info))
    assert runs.fold_parameters(tmp_path).center_bias_weight.isna().all()

    per_image = pd.DataFrame({"image": [10, 11, 12, 13, 14, 15], "n_fix": [5, 5, 5, 5, 5, 0],
                              "IG": [0.1, 0.9, 2.0, -0.3, 0.4, 9.0]})
    # by IG: 12, 11, 14, 10, 13 (15 has no fixations) -> best, median, worst
    assert figures.example_images(per_image, k=3) == [12, 14, 13]
    # by the gap to the gold standard, IG_gold - IG: 11 (0.1), 12 (0.5), 14 (1.0), 10 (1.4), 13 (2.3)
    per_image["IG_gold"] = [1.5, 1.0, 2.5, 2.0, 1.4, 9.0]
    assert figures.example_images(per_image, k=3, by="gap") == [11, 14, 13]
    with pytest.raises(ValueError, match="by must be"):
        figures.example_images(per_image, by="LL")


def test_a_profile_draws_the_committed_vgg_table_of_another():
    """osie trains no VGG-19 grid; notebook 03 draws osie_extended's committed table beside its
    stages: the rows are that file's, the reference is the paper's five-layer set."""
    osie = StudyConfig.load("osie")
    assert osie.ablation_vgg is None and osie.ablation_vgg_from == "osie_extended"
    table, name, reference = ablations.committed_vgg_table(osie.ablation_vgg_from)
    committed = pd.read_csv(REPO / "results" / "osie_extended" / "ablation_layers_vgg.csv")
    assert name == "vgg19_random" and reference == "paper5"
    assert list(table["condition"]) == list(committed["condition"]) == list(ablations.VGG19_GRID)
    assert table.set_index("condition").loc[reference, "IG_diff"] == 0
    with pytest.raises(ValueError, match="runs no VGG-19 layer grid"):
        ablations.committed_vgg_table("osie")


def test_one_rule_for_the_stores_a_profile_reads():
    """ablations.feature_stores: the reference's store, the main run's (osie: ds1, a store of its
    own), every condition's (osie_extended: the mirrored images', the other backbones', the layer
    grids' stores of layers the reference's store lacks); the runs that read each; notebook 01
    extracts exactly these and preflight lists them."""
    from dgstudy import datasets

    ds = datasets.load("osie")
    osie = StudyConfig.load("osie")
    stores = ablations.feature_stores(osie, ds)
    names = [p.name for p in stores]
    assert names[0].endswith("-efficientnet_lite0-a4f370e07-ds2.h5") and names[1].endswith("-ds1.h5")
    assert stores[next(iter(stores))][1][0] == osie.train.run
    assert list(stores.values())[1][1] == [osie.main_train.run]
    assert len(stores) == 2           # osie draws its layer table (ablation_layers_from): no layer store
    assert not any(spec.given for spec, _ in stores.values())
    runs_by_nb = ablations.profile_runs(osie, ds)
    assert list(runs_by_nb["02"]) == [osie.main_train.run] and runs_by_nb["03"] == {}
    assert osie.train.run in runs_by_nb["04"]                    # the reference, first trained by 04
    assert {r for rs in runs_by_nb.values() for r in rs} == {r for _, used in stores.values() for r in used}
    # naming or adding layer conditions trains the profile's own grid, with its store of block2 and head
    grown = StudyConfig.load("osie", ablation_layers_extra={"block5": ["block5"]})
    assert ablations.layer_table_from(grown) is None
    grown_stores = [p.name for p in ablations.feature_stores(grown, ds)]
    assert len(grown_stores) == 3 and "-ds2-L" in grown_stores[2]   # block5 is in the reference's store
    assert osie.train.run in ablations.profile_runs(grown, ds)["03"]

    ext = ablations.feature_stores(StudyConfig.load("osie_extended"), ds)
    specs = [spec for spec, _ in ext.values()]
    assert [s.mirror for s in specs].count(True) == 1
    assert {s.backbone for s in specs} == {"efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2",
                                           "vgg19_random", "efficientnet_lite0_random"}
    assert [s.pool_stride for s in specs if s.backbone == "vgg19_random"] == [None, 16]
    assert set(stores) < set(ext)                                # osie's runs are shared


def test_a_profile_draws_the_committed_layer_table_of_another():
    """osie trains no layer grid (ablation_layers_from: osie_extended): notebook 03 shows
    osie_extended's committed table, whose grid holds the default stage grid, with its reference."""
    from dgstudy import backbones

    bb = backbones.get("efficientnet_lite0", device="cpu")
    osie = StudyConfig.load("osie")
    assert ablations.layer_table_from(osie) == "osie_extended"
    table, grid, reference = ablations.committed_layer_table("osie_extended", bb)
    committed = pd.read_csv(REPO / "results" / "osie_extended" / "ablation_layers.csv")
    assert list(table["condition"]) == list(committed["condition"]) == list(grid)
    assert reference == "default" and grid[reference] == list(bb.default_layers)
    assert table.set_index("condition").loc[reference, "IG_diff"] == 0
    assert set(ablations.layer_grid(bb)) <= set(grid)         # the default grid is part of it
    with pytest.raises(ValueError, match="trains no layer grid"):
        ablations.committed_layer_table("osie", bb)
    with pytest.raises(ValueError, match="is on 'efficientnet_lite0', not 'efficientnet_lite2'"):
        ablations.committed_layer_table("osie_extended", backbones.get("efficientnet_lite2", device="cpu"))


def test_an_added_layer_condition_leaves_the_others_stores_alone():
    """ablations.layer_conditions: a condition added by ``ablation_layers_extra`` whose layers
    neither the reference's store nor the grid's shared ablation store holds reads a store of its
    own layers; every condition of the grid keeps the store (and so the run) it had without it."""
    from dgstudy import backbones, datasets

    ds = datasets.load("osie")
    bb = backbones.get("efficientnet_lite0", device="cpu")
    base = StudyConfig.load("osie")
    cfgs, stores = ablations.layer_conditions(base, ablations.profile_layer_grid(base, bb), ds, bb)
    assert len(stores) == 1 and sorted(stores[0].layers) == ["block2", "head"]

    added = {"block0": ["block0"], "block5": ["block5"], "blocks2_6": ["block2", "block3", "block4", "block5", "block6"],
             "block2_head": ["head", "block2"]}
    ext = StudyConfig.load("osie", ablation_layers_extra=added)
    cfgs2, stores2 = ablations.layer_conditions(ext, ablations.profile_layer_grid(ext, bb), ds, bb)
    assert {c: t.to_dict() for c, t in cfgs2.items() if c in cfgs} == {c: t.to_dict() for c, t in cfgs.items()}
    assert stores2[0].path == stores[0].path
    assert [sorted(s.layers) for s in stores2[1:]] == [["block0"], sorted(added["blocks2_6"])]
    assert [s.pool_stride for s in stores2] == [None, ablations.STAGE_POOL_STRIDE, None]   # block0: stride 2
    by_name = {s.path.name: s for s in stores2}      # a condition records its store's name (runs.store_location)
    assert by_name[cfgs2["block0"].feature_path].layers == ("block0",)
    assert cfgs2["block5"].feature_path == ablations.run_store.feature_path(base.train, ds).name
    assert cfgs2["block2_head"].feature_path == stores[0].path.name     # the shared store holds it
    assert ablations.run_store.feature_path(cfgs2["block0"], ds) == stores2[1].path


def test_a_run_made_in_another_data_folder_finds_its_store_by_name(tmp_path, monkeypatch):
    """runs.store_location / check_run_config: a run records its store's path; copied with its
    results into another checkout (another data folder), the same store is found there by its name
    (the content key), and a finished run is not refused for the folder its store was in."""
    import json

    from dgstudy import runs
    from dgstudy.config import TrainConfig

    monkeypatch.setenv("DGSTUDY_DATA", str(tmp_path / "data"))
    here = tmp_path / "data" / "features" / "osie-abc-efficientnet_lite0-ds2-L1234.h5"
    here.parent.mkdir(parents=True)
    here.write_bytes(b"")
    elsewhere = "/another/checkout/data/features/" + here.name
    assert runs.store_location(here.name) == here                          # a bare name: this data folder
    assert runs.store_location(elsewhere) == here                          # missing there, present here
    assert runs.store_location("/another/checkout/other.h5") == Path("/another/checkout/other.h5")
    assert runs.feature_path(TrainConfig(run="r", feature_path=elsewhere), None, mirror=True) == \
        here.with_name(here.stem + "-mirror.h5")

    run_dir = tmp_path / "results" / "r"
    (run_dir / "fold_00").mkdir(parents=True)
    (run_dir / "fold_00" / "config.json").write_text("{}")
    (run_dir / "fold_00" / "model.pt").write_bytes(b"")
    (run_dir / "config.json").write_text(json.dumps(TrainConfig(run="r", feature_path=elsewhere).to_dict()))
    runs.check_run_config(run_dir, TrainConfig(run="r", feature_path=here.name))     # the same store: accepted
    with pytest.raises(ValueError, match="feature_path"):
        runs.check_run_config(run_dir, TrainConfig(run="r", feature_path="other.h5"))


def test_layer_grids_are_drawn_from_the_input_up():
    """ablations.depth_order: single layers in network order, then the sets cumulated downward;
    the VGG-19 grid's conv1_2 comes before its conv5 layers and the paper's set last."""
    names = ["stem", "block0", "block1", "block2", "block3", "block4", "block5", "block6", "head"]
    grid = {"block2": ["block2"], "head": ["head"], "default": ["block3", "block4", "block5", "block6"],
            "block0": ["block0"], "blocks5_6": ["block5", "block6"], "blocks2_6": names[3:8],
            "blocks4_6": ["block4", "block5", "block6"], "block6": ["block6"]}
    assert ablations.depth_order(grid, names) == ["block0", "block2", "block6", "head", "blocks5_6",
                                                  "blocks4_6", "default", "blocks2_6"]
    vgg = ablations.depth_order(ablations.VGG19_GRID, ablations.vgg_layer_names())
    assert vgg == ["conv1_2", "conv2_2", "conv3_4", "conv4_4", "conv5_1", "relu5_1", "relu5_2", "conv5_3",
                   "conv5_4", "relu5_4", "paper5"]
    table = pd.DataFrame({"condition": list(grid), "IG": np.arange(len(grid), dtype=float)})
    assert list(ablations.in_depth_order(table, grid, names)["IG"]) == [3, 0, 7, 1, 4, 6, 2, 5]


def test_a_layer_condition_records_a_store_outside_the_data_folder_by_path(tmp_path):
    """A profile whose reference reads a store it names (``feature_path``) outside the data folder:
    a layer condition that store holds records its full path, not a name that would be looked up
    in the data folder."""
    from dgstudy import backbones, datasets

    ds = datasets.load("osie")
    bb = backbones.get("efficientnet_lite0", device="cpu")
    elsewhere = tmp_path / "my_store.h5"
    cfg = StudyConfig.load("osie", feature_path=str(elsewhere))
    cfgs, _ = ablations.layer_conditions(cfg, {"block4": ["block4"], "default": list(bb.default_layers)}, ds, bb)
    assert cfgs["block4"].feature_path == str(elsewhere)
    assert ablations.run_store.feature_path(cfgs["block4"], ds) == elsewhere


def test_the_main_result_is_named_for_the_profile_that_makes_it():
    """main_ensemble.made_by / result_note (notebook 07's results preamble): a profile that trains
    the ensemble makes it itself; osie draws osie_extended's; without either it is the main run."""
    from dgstudy import main_ensemble

    smoke, osie, ext = (StudyConfig.load(p) for p in ("smoke", "osie", "osie_extended"))
    assert main_ensemble.made_by(smoke).profile == "smoke" and main_ensemble.made_by(osie).profile == "osie_extended"
    note = main_ensemble.result_note(osie)
    assert note.startswith("the main result is the ensemble over efficientnet_lite0, efficientnet_lite1, "
                           "efficientnet_lite2") and "(notebook 10 of profile osie_extended, its committed table)" in note
    assert note.endswith("the single " + report.main_note(osie))
    assert "of profile" not in main_ensemble.result_note(ext)
    single = StudyConfig.load("smoke", ensemble_backbones=[])
    assert main_ensemble.made_by(single) is None and main_ensemble.result_note(single) == report.main_note(single)
    with pytest.raises(ValueError, match="trains no main ensemble"):
        main_ensemble.made_by(StudyConfig.load("osie", ensemble_from="osie"))
