"""The whole notebook chain 01-09 at toy scale (the ``smoke`` profile), through papermill, from
scratch as on a fresh clone: an empty data root (no feature stores), results and figures in a
temporary folder (``DGSTUDY_DATA``, ``DGSTUDY_RESULTS``, ``DGSTUDY_FIGURES``). Then the damage
repair of ``dgstudy preflight`` on the chain's own stores and folds.
"""
from __future__ import annotations

import json
import math
import os
import re
import shlex
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import REPO

NOTEBOOK_DIR = REPO / "notebooks"


def smoke_chain(out_root):
    """The notebooks in the order `make reproduce` runs them with one job (its graph: notebook 10,
    the main ensemble, before 06, 07 and 08), all out of date under ``out_root``."""
    import re
    import subprocess

    dry = subprocess.run(["make", "-n", "-j1", "--no-print-directory", "notebooks", "PROFILE=smoke", "OUT_TAG=smoke",
                          f"DGSTUDY_RESULTS={out_root}"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    names = list(dict.fromkeys(re.findall(r"papermill (notebooks/[0-9][0-9]_\w+\.ipynb)", dry)))
    return [REPO / n for n in names]


@pytest.mark.slow
def test_smoke_chain_runs_and_writes_sane_numbers(tmp_path, monkeypatch):
    import papermill

    notebooks = smoke_chain(tmp_path / "order")
    assert sorted(p.name for p in notebooks) == sorted(p.name for p in NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
    order = [p.name[:2] for p in notebooks]
    assert order[0] == "01" and all(order.index("10") < order.index(n) for n in ("06", "07", "08")), order
    params = {"profile": "smoke", "overrides": {}}
    extra = {"08_transfer.ipynb": {"max_images": 4},       # keeps the transfer notebook to ~40 s
             "10_main_ensemble.ipynb": {"max_images": 2}}  # and the ensemble's scale test
    results, figures = tmp_path / "results", tmp_path / "figures"
    monkeypatch.setenv("DGSTUDY_RESULTS", str(results))
    monkeypatch.setenv("DGSTUDY_FIGURES", str(figures))
    monkeypatch.setenv("DGSTUDY_DATA", str(tmp_path / "data"))   # no store left by an earlier run
    monkeypatch.setenv("PYTHONHASHSEED", "0")
    out = results / "smoke"
    out.mkdir(parents=True)
    timings = {}
    for nb in notebooks:
        t0 = time.perf_counter()
        papermill.execute_notebook(str(nb), str(out / nb.name), parameters={**params, **extra.get(nb.name, {})},
                                   cwd=str(REPO),
                                   kernel_name="python3", progress_bar=False)
        timings[nb.name] = round(time.perf_counter() - t0, 1)
    print("notebook seconds:", timings)

    # every executed notebook is there, with no error output
    for nb in notebooks:
        executed = json.loads((out / nb.name).read_text())
        errors = [o for c in executed["cells"] if c["cell_type"] == "code"
                  for o in c.get("outputs", []) if o.get("output_type") == "error"]
        assert not errors, f"{nb.name}: {errors[:1]}"
        # every figure it saves is also shown inline, in the cell that draws it (issue 26)
        for c in executed["cells"]:
            if c["cell_type"] == "code" and "figures.save(" in "".join(c["source"]):
                shown = [o for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
                assert shown, f"{nb.name}: a cell saves a figure but shows none: {''.join(c['source'])[:80]}"

    # notebook 01 extracted every store of the one rule, the main run's ds1 store among them
    from dgstudy import ablations, main_ensemble, report, statistics
    from dgstudy.config import StudyConfig

    cfg = StudyConfig.load("smoke")
    ds = ablations.load_dataset(cfg)
    stores = ablations.feature_stores(cfg, ds)
    main_store = next(p for p, (spec, used) in stores.items() if cfg.main_train.run in used)
    assert main_store.name.endswith("-ds1.h5") and len(stores) >= 5
    assert all(p.exists() and p.with_name(p.name + ".sha256").exists() for p in stores)

    # the report table: every metric, the paper's column, finite IG within its interval; the main
    # result (smoke: the ensemble over backbones of notebook 10), its first member the single main
    # run (the reference at full resolution), then the reference and DeepGaze I
    table = pd.read_csv(out / "results.csv")
    single = main_ensemble.SINGLE_LABEL
    assert list(dict.fromkeys(table.model)) == [main_ensemble.ENSEMBLE_LABEL, single, "DeepGaze II (reference)",
                                                "DeepGaze I (reference)"]
    assert {"model", "metric", "unit", "this_run", "ci_low", "ci_high", "paper", "paper_source",
            "comparable", "setting"} <= set(table.columns)
    dg2 = table[table.model == single].set_index("metric")
    assert list(dg2.index) == ["LL", "IG", "explained_IG", "AUC", "sAUC", "NSS", "CC", "KLDiv", "SIM"]
    ig = dg2.loc["IG"]
    assert math.isfinite(ig.this_run) and ig.ci_low <= ig.this_run <= ig.ci_high
    assert 0.5 < dg2.loc["AUC", "this_run"] < 1.0
    assert dg2.loc["AUC", "paper"] == 0.88 and not dg2["comparable"].any()  # smoke is not the paper's setting
    md = (out / "results.md").read_text()
    assert md.startswith("# Results") and "\n| model | metric | unit | this_run |" in md
    assert len(json.loads((out / "results.json").read_text())) == len(table)

    # the model comparison (notebook 07): the centre bias (IG 0), the two classic models made
    # densities (with their raw-map scores), DeepGaze I and II as in the results table, the ceiling
    models = pd.read_csv(out / "models.csv").set_index("model")
    assert list(models.kind.unique()) == ["baseline", "classic: maps made a density", "DeepGaze", "ceiling"]
    assert models.loc["Centre bias (leave-image-out)", "IG"] == pytest.approx(0.0, abs=1e-9)
    classic = models[models.kind == "classic: maps made a density"]
    assert len(classic) == 2 and np.isfinite(classic[["IG", "LL", "AUC", "raw_AUC", "raw_NSS"]].to_numpy()).all()
    by_metric = table.set_index(["model", "metric"])["this_run"]
    assert models.loc["DeepGaze II (main run)", "IG"] == pytest.approx(by_metric[(single, "IG")], rel=1e-9)
    assert models.loc[main_ensemble.ENSEMBLE_LABEL, "IG"] == \
        pytest.approx(by_metric[(main_ensemble.ENSEMBLE_LABEL, "IG")], rel=1e-9)
    # the ceiling: the main result (the ensemble) and its single main run against each ceiling
    ceil = pd.read_csv(out / "ceiling.csv")
    assert list(dict.fromkeys(ceil.model)) == [main_ensemble.ENSEMBLE_LABEL, single] and len(ceil) == 6
    assert ceil.explained_IG.iloc[0] / ceil.explained_IG.iloc[3] == \
        pytest.approx(by_metric[(main_ensemble.ENSEMBLE_LABEL, "IG")] / by_metric[(single, "IG")], rel=1e-9)
    assert models.loc["DeepGaze I (reference)", "IG"] == pytest.approx(by_metric[("DeepGaze I (reference)", "IG")], rel=1e-9)
    assert models.loc["Gold standard (leave one subject out)", "explained_IG"] == pytest.approx(1.0)
    assert (figures / "smoke" / "models.png").exists()

    # ablations (of the reference run): finite IG with intervals; the centre bias alone has IG 0
    layers = pd.read_csv(out / "ablation_layers.csv")
    assert len(layers) >= 2 and np.isfinite(layers.IG).all()
    assert (layers.IG_lo <= layers.IG + 1e-12).all() and (layers.IG <= layers.IG_hi + 1e-12).all()
    cb = pd.read_csv(out / "ablation_centerbias.csv").set_index("condition")
    assert list(cb.index) == ["centre bias alone", "none", "fixed", "learned", "deepgaze1"]
    assert cb.loc["centre bias alone", "IG"] == pytest.approx(0.0, abs=1e-9)
    assert cb.loc["centre bias alone", "LL"] > 0          # the centre bias beats a uniform density
    # the reference's two instances (smoke) widen every paired interval by their seed spread
    sd = pd.read_csv(out / "seed_spread_reference.csv").set_index("metric").loc["IG", "sd"]
    for t in (layers.set_index("condition"), cb):
        ref = t.index[t["IG_diff_p"].isna()][0]
        assert t.loc[ref, "IG_diff_lo_seed"] == t.loc[ref, "IG_diff_hi_seed"] == 0
        others = t.drop(index=ref)
        assert (others.IG_diff_hi_seed - others.IG_diff_lo_seed >= others.IG_diff_hi - others.IG_diff_lo - 1e-12).all()
        row = others.iloc[-1]
        expected = statistics.with_seed_spread(row.IG_diff, row.IG_diff_lo, row.IG_diff_hi, sd,
                                               instances=(10 ** 12 if row.name == "centre bias alone" else 1, 1))
        assert (row.IG_diff_lo_seed, row.IG_diff_hi_seed, row.IG_diff_p_seed) == pytest.approx(expected, rel=1e-6)
    assert np.isfinite(cb.IG).all()
    # the reference run is both the "learned" condition and the layer ablation's default condition
    main = layers.set_index("condition").loc["default", "IG"]     # (the reference's IG)
    assert cb.loc["learned", "IG"] == pytest.approx(main, rel=1e-9)
    assert table.set_index(["model", "metric"]).loc[("DeepGaze II (reference)", "IG"), "this_run"] == \
        pytest.approx(main, rel=1e-9)

    # backbones: the main run, the other backbone and the validation-chosen ensemble; every fold
    # of each is in the fold table, and the ensemble's choice is one of the subsets
    bb = pd.read_csv(out / "ablation_backbones.csv").set_index("condition")
    assert list(bb.index) == ["efficientnet_lite0", "efficientnet_lite1", "ensemble"]
    assert bb.loc["efficientnet_lite0", "IG"] == pytest.approx(main, rel=1e-9)
    assert bb.loc["efficientnet_lite0", "IG_diff"] == pytest.approx(0.0, abs=1e-12)
    assert np.isfinite(bb.IG).all() and (bb.IG_lo <= bb.IG + 1e-12).all()
    folds = pd.read_csv(out / "ablation_backbones_folds.csv")
    assert sorted(folds.groupby("condition").size()) == [3, 3, 3]
    choice = json.loads((results / "smoke-efficientnet_lite0-backbone-ensemble" / "ensemble.json").read_text())
    assert set(choice["choice"]) == {"0", "1", "2"}
    for fold, members in choice["choice"].items():
        scores = choice["validation_LL"][fold]
        assert scores["+".join(members)] == max(scores.values())

    # the ensemble's control: its best member on validation, trained with `instances` (2) seeds
    # and averaged; the ensemble's IG_diff is paired against that average
    best = ablations.best_backbone({b: results / ablations.backbone_run_name(cfg, b) for b in bb.index[:2]})
    ctrl = pd.read_csv(out / "ablation_backbones_control.csv").set_index("condition")
    assert list(ctrl.index) == [f"{best}_instances2", "ensemble"]
    assert ctrl.loc["ensemble", "IG"] == pytest.approx(bb.loc["ensemble", "IG"], rel=1e-9)
    assert ctrl.loc["ensemble", "IG_diff"] == pytest.approx(bb.loc["ensemble", "IG"] - ctrl.iloc[0]["IG"])
    spread = pd.read_csv(out / "seed_spread_backbone.csv").set_index("metric")
    assert spread.loc["IG", "init0"] == pytest.approx(bb.loc[best, "IG"], rel=1e-9)

    # the VGG-19 layer grid beside the backbone's (smoke: the five-layer set and the pooled conv1_2)
    vgg = pd.read_csv(out / "ablation_layers_vgg.csv").set_index("condition")
    assert list(vgg.index) == ["default", "conv1_2"] and np.isfinite(vgg.IG).all()
    assert vgg.loc["default", "IG_diff"] == pytest.approx(0.0, abs=1e-12)

    # training choices: the smoke grid and the instances' averages; the default row is the
    # reference run, ds1 (= the profile's main changes) the main run; val_diff is relative
    # to the reference; each spread is over two seeds, of the main run and of the reference
    tc = pd.read_csv(out / "ablation_training.csv").set_index("condition")
    assert list(tc.index) == ["default", "flip", "ds1", "main_instances2", "instances2"]
    assert tc.loc["default", "IG"] == pytest.approx(main, rel=1e-9)
    main_run = table.set_index(["model", "metric"]).loc[(single, "IG"), "this_run"]
    assert tc.loc["ds1", "IG"] == pytest.approx(main_run, rel=1e-9) and main_run != pytest.approx(main)
    assert tc.loc["default", "val_diff"] == 0
    assert np.isfinite(tc.val_LL.drop(index=["main_instances2", "instances2"])).all()
    for name, init0 in (("seed_spread", main_run), ("seed_spread_reference", main)):
        spread = pd.read_csv(out / f"{name}.csv").set_index("metric")
        assert spread.loc["IG", "init0"] == pytest.approx(init0, rel=1e-9)
        assert spread.loc["IG", "range"] == pytest.approx(abs(spread.loc["IG", "init0"] - spread.loc["IG", "init1"]))

    # transfer: three widths x two scales; the original size predicts the same either way, and the
    # default keeps more of it at 256 px wide than native prediction does
    tr = pd.read_csv(out / "transfer.csv").set_index(["width", "scale"])
    assert sorted(tr.index) == [(256, "native"), (256, "training"), (800, "native"), (800, "training"),
                                (1600, "native"), (1600, "training")]
    assert tr.loc[(800, "training"), "IG_ratio"] == pytest.approx(1.0)
    assert tr.loc[(800, "native"), "IG_run_cb"] == pytest.approx(tr.loc[(800, "training"), "IG_run_cb"])
    assert tr.loc[(256, "training"), "predicted_width"] == 800 and tr.loc[(256, "native"), "predicted_width"] == 256
    assert tr.loc[(256, "training"), "IG_run_cb"] > tr.loc[(256, "native"), "IG_run_cb"]
    assert (out / "transfer.md").read_text().startswith("# Transfer across image scales")

    # the main ensemble (notebook 10; smoke: Lite0 and Lite1 in the main configuration, 2 seeds each):
    # each backbone alone (Lite0's is the main run), the best one's two instances averaged, notebook
    # 05's half-resolution ensemble and the ensemble; each fold's choice is one of the candidates
    me = pd.read_csv(out / "main_ensemble.csv").set_index("condition")
    first = {b: results / insts["init0"].run for b, insts in main_ensemble.member_conditions(cfg).items()}
    best_full = ablations.best_backbone(first)
    assert list(me.index) == ["efficientnet_lite0", "efficientnet_lite1", f"{best_full}_instances2",
                              "ensemble_half_resolution", "ensemble_max1", "ensemble"]
    assert me.loc["efficientnet_lite0", "IG"] == pytest.approx(main_run, rel=1e-9)
    assert me.loc["ensemble_half_resolution", "IG"] == pytest.approx(bb.loc["ensemble", "IG"], rel=1e-9)
    assert np.isfinite(me.IG).all() and me.loc["efficientnet_lite0", "IG_diff_lo_seed"] == 0
    record = json.loads((main_ensemble.ensemble_dir(cfg) / "ensemble.json").read_text())
    cands = {"+".join(c) for c in main_ensemble.candidates(cfg)}
    assert len(cands) == 8 and set(record["validation_LL"]["0"]) == cands
    for fold, members in record["choice"].items():
        assert "+".join(members) in cands
        assert record["validation_LL"][fold]["+".join(members)] == max(record["validation_LL"][fold].values())
    assert list(pd.read_csv(out / "main_ensemble_control.csv").condition) == [f"{best_full}_instances2", "ensemble"]
    sc = pd.read_csv(out / "main_ensemble_transfer.csv").set_index(["model", "width", "scale"])
    assert len(sc) == 6 and sc.loc[("ensemble", 800, "training"), "IG_ratio"] == pytest.approx(1.0)
    assert sc.loc[("main run", 800, "training"), "IG_run_cb"] != pytest.approx(sc.loc[("ensemble", 800, "training"), "IG_run_cb"])
    # the main result's table: the ensemble's nine metrics, then the single main run's, each the
    # same figure as in the tables above (the ensemble's from its evaluation, the run's as notebook 07)
    mr = pd.read_csv(out / "main_results.csv").set_index(["model", "metric"])
    assert list(mr.index.get_level_values(0).unique()) == [main_ensemble.ENSEMBLE_LABEL, main_ensemble.SINGLE_LABEL]
    assert len(mr) == 2 * len(report.METRICS)
    assert mr.loc[(main_ensemble.ENSEMBLE_LABEL, "IG"), "this_run"] == pytest.approx(me.loc["ensemble", "IG"], rel=1e-9)
    assert mr.loc[(main_ensemble.ENSEMBLE_LABEL, "AUC"), "this_run"] == pytest.approx(me.loc["ensemble", "AUC"], rel=1e-9)
    assert mr.loc[(main_ensemble.SINGLE_LABEL, "IG"), "this_run"] == pytest.approx(main_run, rel=1e-9)
    assert ((mr.ci_low <= mr.this_run) & (mr.this_run <= mr.ci_high)).all()

    # figures: PNG and PDF of each
    for name in ("examples", "examples_log", "center_bias", "ablation_layers", "ablation_centerbias",
                 "ablation_backbones", "ablation_backbones_folds",
                 "per_image_ig", "blur", "training_curves", "transfer", "ablation_layers_vgg",
                 "ablation_training", "main_ensemble", "main_ensemble_examples"):
        for ext in ("png", "pdf"):
            f = figures / "smoke" / f"{name}.{ext}"
            assert f.exists() and f.stat().st_size > 1000, f

    # a rerun that changes no result changes no byte of the cleaned notebook (figures included):
    # what make reproduce commits for OSIE churns only where a result changed
    from dgstudy.notebook_clean import clean

    figures_nb = next(nb for nb in notebooks if nb.name.startswith("06_"))
    again = tmp_path / "again.ipynb"
    papermill.execute_notebook(str(figures_nb), str(again), parameters=params, cwd=str(REPO),
                               kernel_name="python3", progress_bar=False)
    first, second = (clean(json.loads(p.read_text())) for p in (out / figures_nb.name, again))
    assert first == second
    text = json.dumps(first)
    assert str(REPO) not in text and "start_time" not in text and "stderr" not in text

    check_damage_is_repaired(cfg, stores, main_store, out, params)
    check_worked_examples(tmp_path, results, figures)


def check_damage_is_repaired(cfg, stores, store, out, params):
    """On the finished chain: preflight finds everything intact and touches nothing; then a truncated
    store (the main run's) and a truncated fold (of the main run) are moved aside with a line each,
    notebook 01 is marked out of date for make, and rerunning 01 and 02 rebuilds exactly those two,
    bit for bit."""
    import contextlib
    import io
    import subprocess

    import papermill

    from dgstudy import cli, repair
    from dgstudy.paths import results_dir

    executed = sorted(out.glob("[0-9][0-9]_*.ipynb"))
    mtimes = {p: p.stat().st_mtime_ns for p in executed}
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        assert cli.main(["preflight", "--profile", "smoke"]) == 0
    text = log.getvalue()
    assert f"feature stores of profile 'smoke' ({len(stores)};" in text and "DAMAGED" not in text
    assert all(f"  ok        {p.name}" in text for p in stores), text
    assert {p: p.stat().st_mtime_ns for p in executed} == mtimes          # nothing touched

    run_dir = results_dir() / cfg.main_train.run
    fold = run_dir / "fold_01"
    digest = store.with_name(store.name + ".sha256").read_text().split()[0]
    model_sha = json.loads((fold / "config.json").read_text())["model_sha256"]
    others = {d: (d / "config.json").stat().st_mtime_ns for d in (run_dir / "fold_00", run_dir / "fold_02")}
    store.write_bytes(store.read_bytes()[: store.stat().st_size // 3])
    (fold / "model.pt").write_bytes((fold / "model.pt").read_bytes()[:-64])
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        assert cli.main(["preflight", "--profile", "smoke"]) == 0
    text = log.getvalue()
    assert f"DAMAGED   {store}: SHA-256" in text and f"moved aside to {store.name}.damaged" in text, text
    assert f"DAMAGED   {fold}: checkpoint is corrupt or cut short" in text and "notebook 02 trains the fold again" in text
    assert not store.exists() and store.with_name(store.name + ".damaged").exists()
    assert (fold / "model.pt.damaged").exists() and not (fold / "config.json").exists()
    assert not (run_dir / "metrics.json").exists()                        # scored again after retraining
    first = out / "01_extract_features.ipynb"
    assert first.stat().st_mtime == repair.OUT_OF_DATE and f"{first}: marked out of date" in text
    # make reruns notebook 01 (and so every notebook after it)
    dry = subprocess.run(["make", "-n", "--no-print-directory", "notebooks", "PROFILE=smoke", "OUT_TAG=smoke"],
                         cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert "papermill notebooks/01_extract_features.ipynb" in dry

    for name in ("01_extract_features", "02_train_readout"):                # what make runs first
        papermill.execute_notebook(str(NOTEBOOK_DIR / f"{name}.ipynb"), str(out / f"{name}.ipynb"),
                                   parameters=params, cwd=str(REPO), kernel_name="python3", progress_bar=False)
    assert store.with_name(store.name + ".sha256").read_text().split()[0] == digest    # the same store
    assert json.loads((fold / "config.json").read_text())["model_sha256"] == model_sha  # the same fold
    assert {d: (d / "config.json").stat().st_mtime_ns for d in others} == others        # only that fold
    assert (run_dir / "metrics.json").exists()

# docs/ablations.md "Add a condition": (table, new condition, its run) of each worked example
WORKED_EXAMPLES = [("ablation_layers", "block5", "smoke-efficientnet_lite0-layers-block5"),
                   ("ablation_centerbias", "dg1_none", "smoke-efficientnet_lite0-cb-dg1_none"),
                   ("ablation_training", "l1_strong", "smoke-efficientnet_lite0-train-l1_strong")]


def _files(*folders):
    return {p: p.read_bytes() for d in folders for p in sorted(d.rglob("*")) if p.is_file()}


def check_worked_examples(tmp_path, results, figures):
    """On the finished smoke chain, each worked example of docs/ablations.md "Add a condition" is run
    as its command is written there: it trains only its new condition (every other fold of every
    run untouched), the condition is in its table with a paired interval, the table and figure go
    to results/ and figures/ smoke+<hash>/, the profile's own outputs stay byte for byte, and the
    other conditions' numbers are the profile's. The doc's parameters cell gives the same
    parameters as its command."""
    from dgstudy.config import StudyConfig

    section = (REPO / "docs" / "ablations.md").read_text().split("## Add a condition", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```bash\n(papermill [^\n]+)\n```", section)
    cells = re.findall(r"```python\n(.+?)\n```", section, re.S)
    assert len(commands) == len(cells) == len(WORKED_EXAMPLES), section
    work = tmp_path / "work"            # the commands' cwd: a checkout's notebooks/ and results/
    (work / "results").mkdir(parents=True)
    (work / "notebooks").symlink_to(NOTEBOOK_DIR)
    env = {**os.environ, "PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}"}
    profile_outputs = _files(results / "smoke", figures / "smoke")
    timings = {}
    smoke_tables = {t: pd.read_csv(results / "smoke" / f"{t}.csv").set_index("condition") for t, _, _ in WORKED_EXAMPLES}
    for command, cell, (table, condition, run) in zip(commands, cells, WORKED_EXAMPLES):
        params = {}
        exec(cell, {}, params)
        argv = shlex.split(command)
        assert argv[argv.index("-p") + 1:argv.index("-p") + 3] == ["profile", params["profile"]]
        assert yaml.safe_load(argv[argv.index("-y") + 1]) == {"overrides": params["overrides"]}

        folds = {p: p.stat().st_mtime_ns for p in results.glob("*/fold_*/model.pt")}
        t0 = time.perf_counter()
        done = subprocess.run(command, shell=True, cwd=work, env=env, capture_output=True, text=True)
        timings[condition] = round(time.perf_counter() - t0, 1)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        trained = {p for p in results.glob("*/fold_*/model.pt") if folds.get(p) != p.stat().st_mtime_ns}
        assert {p.parent.parent.name for p in trained} == {run} and len(trained) == 3, sorted(trained)

        cfg = StudyConfig.load(params["profile"], **params["overrides"])
        assert re.fullmatch(r"smoke\+[0-9a-f]{8}", cfg.output_tag)
        out = results / cfg.output_tag
        assert yaml.safe_load((out / "overrides.yaml").read_text()) == {"profile": "smoke",
                                                                       "overrides": params["overrides"]}
        assert (figures / cfg.output_tag / f"{table}.png").stat().st_size > 1000
        got = pd.read_csv(out / f"{table}.csv").set_index("condition")
        row = got.loc[condition]
        assert np.isfinite(row[["IG", "IG_diff", "IG_diff_lo", "IG_diff_hi"]].astype(float)).all()
        assert row.IG_diff_lo < row.IG_diff_hi and row.IG_diff_lo <= row.IG_diff <= row.IG_diff_hi
        # every other condition is the profile's, with the profile's numbers (reused, not retrained)
        before = smoke_tables[table]
        assert set(got.index) == set(before.index) | {condition}
        same = [c for c in before.columns if not c.endswith("_holm")]    # Holm counts the grid's comparisons
        pd.testing.assert_frame_equal(got.loc[before.index, same], before[same], rtol=1e-12)
        for holm in [c for c in before.columns if c.endswith("_holm")]:   # one comparison more never
            p_before, p_got = before[holm], got.loc[before.index, holm]     # lowers an adjusted p-value
            assert ((p_got >= p_before - 1e-15) | p_before.isna()).all(), (holm, p_before, p_got)
        assert json.loads((work / argv[2]).read_text())["cells"]          # the executed copy is there
    print("worked examples seconds:", timings)
    assert _files(results / "smoke", figures / "smoke") == profile_outputs


@pytest.mark.slow
def test_chain_on_a_folder_data_set_of_mixed_sizes(tmp_path, monkeypatch):
    """Your own data: a folder of generated images of three sizes and a fixation CSV, given as the
    profile's ``dataset: folder`` (here as overrides of smoke): features, training with evaluation
    and the transfer notebook run on it (the ablations 03-05 train more runs of the same code and
    the report reads their tables: left to the smoke chain, to keep this test short)."""
    import papermill

    from test_transfer import make_folder

    folder, csv = make_folder(tmp_path / "mydata", n_subjects=4, per_subject=8)
    overrides = {"dataset": "folder", "dataset_options": {"images": str(folder), "fixations": str(csv)},
                 "max_epochs": 2, "bootstrap": 50,
                 "ensemble_backbones": []}    # no main ensemble: notebook 08 reads notebook 10's, not run here
    results, figures = tmp_path / "results", tmp_path / "figures"
    monkeypatch.setenv("DGSTUDY_RESULTS", str(results))
    monkeypatch.setenv("DGSTUDY_FIGURES", str(figures))
    monkeypatch.setenv("DGSTUDY_DATA", str(tmp_path / "data"))
    out = results / "smoke"
    out.mkdir(parents=True)
    for name in ("01_extract_features", "02_train_readout", "08_transfer"):
        params = {"profile": "smoke", "overrides": overrides, **({"max_images": 3} if name == "08_transfer" else {})}
        papermill.execute_notebook(str(NOTEBOOK_DIR / f"{name}.ipynb"), str(out / f"{name}.ipynb"),
                                   parameters=params, cwd=str(REPO), kernel_name="python3", progress_bar=False)
    main = results / "smoke-efficientnet_lite0-main"          # the profile's main run
    metrics = json.loads((main / "metrics.json").read_text())
    assert metrics["config"]["dataset"] == "folder" and metrics["summary"]["n_images"] == 9
    info = json.loads((main / "fold_00" / "config.json").read_text())
    assert info["training_pixel_area"] in (6144.0, 6400.0)   # the median area of its training images
    # overrides of smoke: the tables go under a tag of their own, never results/smoke/
    from dgstudy.config import StudyConfig

    tag = StudyConfig.load("smoke", **overrides).output_tag
    assert tag.startswith("smoke+") and not (out / "transfer.csv").exists()
    tr = pd.read_csv(results / tag / "transfer.csv")
    assert len(tr) == 6 and np.isfinite(tr["IG_run_cb"]).all()
