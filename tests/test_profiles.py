"""Profiles and their grids (issue 27): every grid a profile key that ``_extra`` adds to; every value
of every condition checked when the profile loads, the error naming the key and the condition;
profiles given as paths, with ``extends``; an explicit null; overrides writing under a tag of their
own (never the committed ``results/osie*/``), in the library and in the Makefile; ``make lab`` and
an environment it did not build."""
from __future__ import annotations

import os
import subprocess
from types import SimpleNamespace

import pytest
import yaml

from conftest import REPO
from dgstudy import ablations, cli, grids
from dgstudy.config import StudyConfig, TrainConfig, changes_hash, profile_names

COMMITTED = ("osie", "osie_extended")      # the profiles whose outputs are committed


def _backbone(name, layers, strides, default):
    return SimpleNamespace(name=name, layer_names=layers, strides=dict(zip(layers, strides)),
                           default_layers=default)


LITE = _backbone("efficientnet_lite0", ["stem", "block0", "block1", "block2", "block3", "block4", "block5",
                                        "block6", "head"], [2, 2, 4, 8, 16, 16, 32, 32, 32],
                 ["block3", "block4", "block5", "block6"])


def _vgg():
    from dgstudy.backbones import vgg19
    stages, _, strides = vgg19.named_layers()
    return _backbone("vgg19_random", list(stages), [strides[n] for n in stages], vgg19.PAPER_LAYERS)


FAKES = {"efficientnet_lite0": LITE, "efficientnet_lite1": LITE, "efficientnet_lite2": LITE, "vgg19_random": _vgg()}


@pytest.fixture(scope="module")
def smoke_dataset():
    return ablations.load_dataset(StudyConfig.load("smoke"))


# -- grids: replace, add, size ----------------------------------------------------------------
def test_every_grid_is_a_key_that_extra_adds_to():
    smoke = StudyConfig.load("smoke")
    assert ablations.profile_layer_grid(smoke, LITE) == {"default": LITE.default_layers, "block6": ["block6"]}
    more = StudyConfig.load("smoke", ablation_layers_extra={"block5": ["block5"], "b45": ["block4", "block5"]})
    assert ablations.profile_layer_grid(more, LITE) == {"default": LITE.default_layers, "block6": ["block6"],
                                                        "block5": ["block5"], "b45": ["block4", "block5"]}
    # a list of extra layers adds one single-layer condition each; the full default grid is the stages
    full = StudyConfig.load("smoke", ablation_size="full", ablation_layers_extra=["block5"])
    assert ablations.profile_layer_grid(full, LITE) == {"block2": ["block2"], "block4": ["block4"],
                                                        "head": ["head"], "default": LITE.default_layers,
                                                        "block5": ["block5"]}
    # replacing a grid is ablation_<grid>; _extra adds to the replacement
    only = StudyConfig.load("smoke", ablation_layers={"b3": ["block3"]}, ablation_layers_extra={"b4": "block4"})
    assert ablations.profile_layer_grid(only, LITE) == {"b3": ["block3"], "b4": ["block4"]}

    cb = grids.center_bias_grid(StudyConfig.load(
        "smoke", ablation_centerbias_extra={"dg1_none": {"readout": "deepgaze1", "center_bias": "none"}}))
    assert cb == {**grids.CENTER_BIAS_CONDITIONS, "dg1_none": {"readout": "deepgaze1", "center_bias": "none"}}
    assert grids.reference_condition(cb) == "learned"
    # a grid without the reference gets one, as its table is read against it
    own = grids.center_bias_grid(StudyConfig.load("smoke", ablation_centerbias={"fixed": {"center_bias": "fixed"}}))
    assert own == {"reference": {}, "fixed": {"center_bias": "fixed"}} and grids.reference_condition(own) == "reference"

    tr = grids.training_grid(StudyConfig.load("smoke", ablation_training_extra={"l1_strong": {"l1": 0.001}}))
    assert list(tr) == ["default", "flip", "ds1", "l1_strong"] and tr["l1_strong"] == {"l1": 0.001}
    assert list(grids.training_grid(StudyConfig.load("osie"))) == ["default", "main"]  # osie: no grid, its main
    bb = grids.backbone_grid(StudyConfig.load("smoke", ablation_backbones_extra=["efficientnet_lite2", "efficientnet_lite1"]))
    assert bb == ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]
    # the runs the extras add are exactly the new conditions' (nothing else of the profile changes)
    for extra, new in ((dict(ablation_centerbias_extra={"dg1_none": {"readout": "deepgaze1", "center_bias": "none"}}),
                        "smoke-efficientnet_lite0-cb-dg1_none"),
                       (dict(ablation_training_extra={"l1_strong": {"l1": 0.001}}),
                        "smoke-efficientnet_lite0-train-l1_strong")):
        before = {t.run: t for t in ablations.center_bias_conditions(StudyConfig.load("smoke")).values()}
        grid_cfgs = (ablations.center_bias_conditions if "ablation_centerbias_extra" in extra
                     else ablations.training_conditions)
        after = {t.run: t for t in grid_cfgs(StudyConfig.load("smoke", **extra)).values()}
        assert new in after and all(after[r] == t for r, t in before.items() if r in after)


def test_an_extra_condition_may_not_silently_change_one_of_the_grid():
    with pytest.raises(ValueError, match=r"ablation_training_extra: condition 'flip' is already in the grid"):
        StudyConfig.load("smoke", ablation_training_extra={"flip": {"flip": False}})
    assert "flip" in grids.training_grid(StudyConfig.load("smoke", ablation_training_extra={"flip": {"flip": True}}))
    with pytest.raises(ValueError, match="ablation_layers_extra: condition 'default'"):
        ablations.profile_layer_grid(StudyConfig.load("smoke", ablation_layers_extra={"default": ["block3"]}), LITE)
    with pytest.raises(ValueError, match="condition name 'my run'"):
        StudyConfig.load("smoke", ablation_centerbias_extra={"my run": {"center_bias": "none"}})


def test_the_grid_size_is_a_key_not_the_profile_name(tmp_path):
    # a copy of smoke under another name keeps smoke's small grids (it used to get the full one)
    copy = tmp_path / "my_copy.yaml"
    copy.write_text((REPO / "dgstudy" / "profiles" / "smoke.yaml").read_text().replace("profile: smoke", "profile: mine"))
    mine = StudyConfig.load(copy)
    assert mine.profile == "mine" and mine.ablation_size == "small"
    assert ablations.profile_layer_grid(mine, LITE) == ablations.profile_layer_grid(StudyConfig.load("smoke"), LITE)
    with pytest.raises(ValueError, match="ablation_size: 'tiny'"):
        StudyConfig.load("smoke", ablation_size="tiny")


# -- every value checked at load, naming the condition ----------------------------------------
@pytest.mark.parametrize("override, expected", [
    (dict(nonlinearity="rleu"), r"nonlinearity: expected one of 'relu', 'softplus_layernorm', got 'rleu'"),
    (dict(ablation_training_extra={"relu2": {"nonlinearity": "rleu"}}),
     r"ablation_training: condition 'relu2': nonlinearity: expected one of"),
    (dict(ablation_training={"wide": {"readout_channels": [32, 64, 4, 2]}}),
     r"ablation_training: condition 'wide': readout_channels"),
    (dict(ablation_training={"steps": {"lr_milestones": [6, 3]}}), r"condition 'steps': lr_milestones"),
    (dict(ablation_training={"few": {"folds": 1}}), r"condition 'few': folds: expected an integer >= 2"),
    (dict(ablation_training={"half": {"max_epochs": 2.5}}), r"condition 'half': max_epochs: expected an integer"),
    (dict(ablation_training={"neg": {"l1": -1e-4}}), r"condition 'neg': l1: expected a number >= 0"),
    (dict(ablation_training={"typo": {"flipp": True}}), r"condition 'typo': \['flipp'\] are not TrainConfig keys"),
    (dict(ablation_training={"named": {"run": "x"}}), r"condition 'named': \['run'\] are not TrainConfig keys"),
    (dict(ablation_centerbias_extra={"dg1": {"readout": "dg1"}}),
     r"ablation_centerbias: condition 'dg1': readout: expected one of 'deepgaze2', 'deepgaze1'"),
    (dict(ablation_centerbias={"weak": {"center_bias": "learnt"}}), r"condition 'weak': center_bias"),
    (dict(ablation_centerbias={"x": {"train_resolution": "half"}}), r"condition 'x': train_resolution"),
    (dict(main={"downsample": 0}), r"main: downsample: expected a number > 0"),
    (dict(instances=0), r"instances: expected an integer >= 1"),
    (dict(ablation_backbones_extra="efficientnet_lite1"), r"ablation_backbones_extra: expected a list"),
    (dict(ablation_layers_extra={"b": []}), r"ablation_layers_extra: condition 'b': expected a non-empty list"),
])
def test_a_bad_value_in_any_condition_fails_at_load_naming_it(override, expected):
    with pytest.raises(ValueError, match=expected) as e:
        StudyConfig.load("smoke", **override)
    assert "smoke.yaml (or its overrides)" in str(e.value)


def test_layer_and_backbone_names_fail_before_anything_is_extracted(smoke_dataset):
    # profile_runs (notebook 01's first call; every ablation checks its own conditions the same way)
    # checks them against the backbones before a store is opened; here the backbones are stand-ins
    # with the real layer names
    from dgstudy import backbones
    cases = [(dict(ablation_layers_extra={"b5": ["blok5"]}),
              r"condition 'b5': backbone 'efficientnet_lite0' has no layers \['blok5'\]"),
             (dict(ablation_vgg_layers_extra={"c": ["conv9_1"]}),
              r"ablation_vgg_layers: condition 'c': backbone 'vgg19_random' has no layers"),
             (dict(layers=["block9"]), r"condition 'reference'.*has no layers \['block9'\]"),
             (dict(ablation_backbones_extra=["efficientnet_lite9"]),
              r"condition 'ablation_backbones: efficientnet_lite9'.*'efficientnet_lite9' is not one of"),
             (dict(ensemble_backbones=["efficientnet_lite0", "efficientnet_lite9"]),
              r"condition 'notebook 10: smoke-efficientnet_lite9-main'.*'efficientnet_lite9' is not one of")]
    for override, expected in cases:
        with pytest.raises(ValueError, match=expected):
            ablations.profile_runs(StudyConfig.load("smoke", **override), smoke_dataset, FAKES.__getitem__)
    assert set(backbones.available()) >= set(FAKES)


def test_train_config_checks_its_own_values():
    TrainConfig()                                   # the defaults are valid
    for bad in (dict(readout="dg2"), dict(batch_size=0), dict(n_images=0), dict(lr=0), dict(lr_gamma=1.5),
                dict(blur_sigma=-1.0), dict(readout_channels=[8, 2]), dict(lr_milestones=[2, 2]),
                dict(init_seed=-1), dict(downsample=True)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            TrainConfig(**bad)
    assert TrainConfig(n_images=None, lr_milestones=[3, 6], readout_channels=[8, 1]).readout_channels == [8, 1]


def test_an_explicit_null_means_null():
    osie, ext = StudyConfig.load("osie"), StudyConfig.load("osie_extended")
    assert osie.ablation_training == {} and osie.ablation_vgg_from == "osie_extended"
    off = StudyConfig.load("osie", ablation_training=None, ablation_vgg_from=None)
    assert off.ablation_vgg_from is None                                         # not "keep"
    assert list(grids.training_grid(off)) == ["default", *grids.TRAINING_CONDITIONS]   # null: the default grid
    assert ext.ablation_vgg == "vgg19_random"
    no_vgg = StudyConfig.load("osie_extended", ablation_vgg=None, ablation_backbones=None)
    assert no_vgg.ablation_vgg is None and grids.backbone_grid(no_vgg) == ["efficientnet_lite0"]
    with pytest.raises(KeyError, match="'profile' is not an override"):
        StudyConfig.load("smoke", profile="osie")


# -- profiles of your own -----------------------------------------------------------------------
def test_a_profile_given_as_a_path_extends_another(tmp_path, monkeypatch):
    (tmp_path / "sub").mkdir()
    base = tmp_path / "sub" / "base.yaml"
    base.write_text("extends: smoke\nseed: 3\nmax_epochs: 6\n")
    mine = tmp_path / "my_smoke.yaml"
    mine.write_text("extends: sub/base.yaml\nmax_epochs: 8\nablation_layers_extra: {block5: [block5]}\n"
                    "ablation_training: {}\n")
    cfg = StudyConfig.load(mine)
    smoke = StudyConfig.load("smoke")
    # the name is the file's (smoke's `profile:` key is not inherited); only what it names changes
    assert cfg.profile == "my_smoke" and cfg.output_tag == "my_smoke"
    assert cfg.train.run == "my_smoke-efficientnet_lite0"
    assert (cfg.train.seed, cfg.train.max_epochs) == (3, 8)
    assert cfg.ablation_training == {} and cfg.ablation_layers_extra == {"block5": ["block5"]}
    assert StudyConfig.load(mine, run_prefix="smoke", seed=0, max_epochs=4).train == smoke.train
    assert (cfg.main, cfg.ablation_size, cfg.instances, cfg.ablation_backbones) == \
        (smoke.main, smoke.ablation_size, smoke.instances, smoke.ablation_backbones)
    monkeypatch.chdir(tmp_path)                              # a relative path, as in a notebook's cwd
    assert StudyConfig.load("my_smoke.yaml").train == cfg.train
    assert cfg.files == (mine, base, REPO / "dgstudy" / "profiles" / "smoke.yaml")     # this file first
    # the profile's own `profile:` key names it
    named = tmp_path / "x.yaml"
    named.write_text("profile: pilot\nextends: osie\nfolds: 5\n")
    assert StudyConfig.load(named).profile == "pilot" and StudyConfig.load(named).train.folds == 5
    # bad files: each error names the file
    loop = tmp_path / "loop.yaml"
    loop.write_text("extends: loop2.yaml\n")
    (tmp_path / "loop2.yaml").write_text("extends: loop.yaml\n")
    with pytest.raises(ValueError, match="extend each other in a circle"):
        StudyConfig.load(loop)
    with pytest.raises(KeyError, match="does not exist"):
        StudyConfig.load(tmp_path / "missing.yaml")
    (tmp_path / "typo.yaml").write_text("extends: smoke\nmax_epoch: 3\n")
    with pytest.raises(KeyError, match=r"typo.yaml: unknown keys \['max_epoch'\]"):
        StudyConfig.load(tmp_path / "typo.yaml")
    (tmp_path / "list.yaml").write_text("- a\n")
    with pytest.raises(ValueError, match="list.yaml: a profile is a mapping"):
        StudyConfig.load(tmp_path / "list.yaml")


# -- outputs of your own ----------------------------------------------------------------------
@pytest.mark.parametrize("name", profile_names())
def test_overrides_write_under_a_tag_of_their_own(name, tmp_path, monkeypatch):
    monkeypatch.setenv("DGSTUDY_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("DGSTUDY_FIGURES", str(tmp_path / "figures"))
    cfg = StudyConfig.load(name)
    assert cfg.output_tag == name and not cfg.changes
    # an override that changes nothing is the profile itself
    assert StudyConfig.load(name, seed=cfg.train.seed, bootstrap=cfg.bootstrap).output_tag == name
    changed = StudyConfig.load(name, seed=cfg.train.seed + 1, ablation_training_extra={"l1_strong": {"l1": 0.001}})
    assert changed.changes == {"seed": cfg.train.seed + 1, "ablation_training_extra": {"l1_strong": {"l1": 0.001}}}
    tag = f"{name}+{changes_hash(changed.changes)}"
    assert changed.output_tag == tag and len(tag) == len(name) + 9
    assert changed.output_dir() == tmp_path / "results" / tag and changed.figure_dir() == tmp_path / "figures" / tag
    assert yaml.safe_load((changed.output_dir() / "overrides.yaml").read_text()) == \
        {"profile": name, "overrides": changed.changes}
    assert not (tmp_path / "results" / name).exists() and not (tmp_path / "figures" / name).exists()
    # the same overrides in another order: the same tag; other values: another
    assert StudyConfig.load(name, ablation_training_extra={"l1_strong": {"l1": 0.001}},
                            seed=cfg.train.seed + 1).output_tag == tag
    assert StudyConfig.load(name, seed=cfg.train.seed + 2).output_tag != tag
    other = next(b for b in ("efficientnet_lite1", "vgg19_random") if b != cfg.train.backbone)
    assert StudyConfig.load(name, backbone=other).output_tag == f"{name}-{other}"
    assert StudyConfig.load(name, backbone=other, seed=cfg.train.seed + 1).output_tag.startswith(f"{name}-{other}+")


def test_the_cli_tag_reads_overrides_and_paths(tmp_path, capsys):
    def tag(*args):
        assert cli.main(["tag", *args]) == 0
        return capsys.readouterr().out.strip()

    assert tag("--profile", "smoke") == "smoke"
    assert tag("--profile", "smoke", "--overrides", "{}") == "smoke"
    assert tag("--profile", "smoke", "--overrides", "{seed: 1}") == f"smoke+{changes_hash({'seed': 1})}"
    assert tag("--profile", "osie", "--overrides", "{backbone: vgg19_random}") == "osie-vgg19_random"
    mine = tmp_path / "mine.yaml"
    mine.write_text("extends: smoke\nseed: 2\n")
    assert tag("--profile", str(mine)) == "mine"
    assert tag("--profile", str(mine), "--files").split() == [str(mine), str(REPO / "dgstudy/profiles/smoke.yaml")]
    with pytest.raises(SystemExit) as e:
        cli.main(["tag", "--profile", "smoke", "--overrides", "{ablation_training_extra: {x: {nonlinearity: rleu}}}"])
    assert e.value.code == 2
    assert "ablation_training: condition 'x': nonlinearity" in capsys.readouterr().err


def _make(*args, env=None):
    return subprocess.run(["make", "-n", "--no-print-directory", *args], cwd=REPO, capture_output=True,
                          text=True, env={**os.environ, **(env or {})})


@pytest.mark.slow
def test_make_reproduce_with_overrides_never_targets_the_committed_outputs(tmp_path):
    # make -n prints the recipe; the sub-make that runs the notebooks is run (dry) with the tag
    # `dgstudy tag` gave, so its papermill lines name the folders the notebooks would write
    env = {"DGSTUDY_RESULTS": str(tmp_path / "r")}
    for profile in COMMITTED:
        out = _make("reproduce", f"PROFILE={profile}", "OVERRIDES=seed: 1, ablation_size: small", env=env)
        assert out.returncode == 0, out.stderr
        tag = f"{profile}+{changes_hash({'seed': 1, 'ablation_size': 'small'})}"
        lines = [l for l in out.stdout.splitlines() if "papermill notebooks/" in l]
        assert len(lines) == 10 and all(f"{tmp_path}/r/{tag}/" in l for l in lines), out.stdout[-2000:]
        assert all("-y \"overrides: {seed: 1, ablation_size: small}\"" in l for l in lines)
        assert f"/{profile}/" not in "".join(lines)
        # the profile as it is: its own folder
        plain = _make("reproduce", f"PROFILE={profile}", env=env)
        assert f"{tmp_path}/r/{profile}/09_training_choices.ipynb" in plain.stdout
    # a profile file: the chain under its name, depending on the files it extends
    mine = tmp_path / "my_smoke.yaml"
    mine.write_text("extends: smoke\nseed: 5\n")
    out = _make("reproduce", f"PROFILE={mine}", env=env)
    assert out.returncode == 0, out.stderr
    assert f"-p profile {mine}" in out.stdout and f"{tmp_path}/r/my_smoke/01_extract_features.ipynb" in out.stdout
    deps = subprocess.run(["make", "-pn", "--no-print-directory", "notebooks", f"PROFILE={mine}", "OUT_TAG=my_smoke",
                           f"PROFILE_FILES={mine} {REPO}/dgstudy/profiles/smoke.yaml"], cwd=REPO,
                          capture_output=True, text=True, env={**os.environ, **env}).stdout
    rule = next(l for l in deps.splitlines() if l.startswith(f"{tmp_path}/r/my_smoke/01_extract_features.ipynb:"))
    assert str(mine) in rule and "dgstudy/profiles/smoke.yaml" in rule
    bad = _make("reproduce", f"PROFILE={tmp_path}/nope.yaml", env=env)
    assert bad.returncode != 0 and "no file" in bad.stdout


def test_make_lab_installs_nothing_into_an_environment_it_did_not_build(tmp_path):
    # a stand-in environment: its python and jupyter record how they were called
    env_dir = tmp_path / "their-env"
    (env_dir / "bin").mkdir(parents=True)
    log = tmp_path / "calls.log"
    for tool in ("python", "jupyter"):
        script = env_dir / "bin" / tool
        script.write_text(f"#!/bin/sh\necho {tool} \"$@\" >> {log}\n")
        script.chmod(0o755)
    run = lambda: subprocess.run(["make", "--no-print-directory", "lab", f"VENV={env_dir}"], cwd=REPO,
                                 capture_output=True, text=True)
    out = run()
    assert out.returncode == 0, out.stdout + out.stderr
    assert "was not built by this Makefile, so nothing is installed into it" in out.stdout
    assert log.read_text().splitlines() == ["jupyter lab --notebook-dir=notebooks"]     # no pip
    # without a JupyterLab it says how to start one, and still installs nothing
    (env_dir / "bin" / "jupyter").unlink()
    log.unlink()
    out = run()
    assert out.returncode != 0 and "bin/jupyter lab --notebook-dir=notebooks" in out.stdout
    assert not log.exists()
    # the environment make builds is marked, so make lab keeps it up to date
    text = (REPO / "Makefile").read_text()
    assert "$(PYTHON) -m venv $(VENV) && touch $(MADE)" in text


def test_make_reproduce_defaults_to_the_study_that_runs_anywhere(tmp_path):
    """No PROFILE: the OSIE study (its data and weights can be had anywhere), into results/osie/."""
    out = _make("reproduce", env={"DGSTUDY_RESULTS": str(tmp_path / "r")})
    assert out.returncode == 0, out.stderr
    assert "--profile osie " in out.stdout
    assert f"{tmp_path}/r/osie/01_extract_features.ipynb" in out.stdout


def test_make_clean_keeps_the_committed_study(tmp_path):
    """make clean removes the runs and the outputs git does not track; the committed folders stay."""
    import shutil

    shutil.copy(REPO / "Makefile", tmp_path / "Makefile")
    for d in ("results/osie", "figures/osie", "results/osie-efficientnet_lite0/fold_00", "results/osie+1234abcd",
              "figures/smoke"):
        (tmp_path / d).mkdir(parents=True)
        (tmp_path / d / "x.txt").write_text("x")
    git = lambda *a: subprocess.run(["git", *a], cwd=tmp_path, check=True, capture_output=True)
    git("init", "-q")
    git("add", "Makefile", "results/osie/x.txt", "figures/osie/x.txt")
    out = subprocess.run(["make", "--no-print-directory", "clean"], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    left = sorted(str(p.relative_to(tmp_path)) for p in [*tmp_path.glob("results/*"), *tmp_path.glob("figures/*")])
    assert left == ["figures/osie", "results/osie"], left
    assert "keeping results/osie/ (committed)" in out.stdout
