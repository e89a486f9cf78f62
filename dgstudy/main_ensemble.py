"""The main ensemble (the DeepGaze IIE step): readouts on several backbones, chosen on validation data.

A profile with ``ensemble_backbones: [a, b, ...]`` makes its main result an ensemble. Each of
those backbones is trained in the main configuration (``StudyConfig.main_train`` with the backbone
swapped and that backbone's default layers) with ``ensemble_instances`` initial seeds: the
*members*, :func:`member_conditions`. In every fold the ensemble is the density average of one
*candidate*: for each backbone, its first ``k`` instances (``k`` from 0 to ``ensemble_instances``,
not all 0), :func:`candidates`. The candidate is chosen on that fold's validation images only
(``ensemble.select_and_evaluate``), so the choice says which backbones and how many instances
each. Every chosen run weighs the same (a backbone with two chosen instances counts twice).
"""
from __future__ import annotations

import itertools
import json
from pathlib import Path

import pandas as pd

from . import ablations, backbones
from .ablations import ensemble_member_conditions as member_conditions
from .ablations import ensure_features, evaluated_ensemble, train_conditions
from .config import StudyConfig
from .ensemble import SelectedEnsemble, load_choice
from .evaluation import evaluate_runs
from .paths import results_dir
from .report import main_note, run_results
from . import runs as run_store


def member_runs(cfg: StudyConfig) -> dict[str, Path]:
    """{run name: its folder} of every member (whether trained or not), backbone by backbone."""
    return {t.run: results_dir() / t.run for insts in member_conditions(cfg).values() for t in insts.values()}


def train_members(cfg: StudyConfig, dataset=None) -> dict[str, Path]:
    """Extract (or reuse) every member's features and train (or reuse) every member:
    :func:`member_runs`, trained."""
    members = member_conditions(cfg)
    if not members:
        raise ValueError(f"profile {cfg.profile!r} has no ensemble_backbones")
    flat = {t.run: t for insts in members.values() for t in insts.values()}
    dataset = dataset or run_store.load_dataset(next(iter(flat.values())))
    for t in flat.values():
        ensure_features(dataset, t)
    return train_conditions(flat, dataset=dataset)


def candidates(cfg: StudyConfig, max_instances: int | None = None) -> list[tuple[str, ...]]:
    """Every ensemble a fold may choose, as a tuple of member run names: for each backbone its
    first ``k`` instances, ``k = 0 .. ensemble_instances`` (or ``.. max_instances``), at least one
    run in all; fewest runs first."""
    n = cfg.ensemble_instances if max_instances is None else min(int(max_instances), cfg.ensemble_instances)
    per_backbone = [[tuple(t.run for t in list(insts.values())[:k]) for k in range(n + 1)]
                    for insts in member_conditions(cfg).values()]
    combos = [sum(parts, ()) for parts in itertools.product(*per_backbone)]
    return sorted((c for c in combos if c), key=len)


def ensemble_dir(cfg: StudyConfig) -> Path:
    """``results/<main run>-ensemble/``: the evaluated main ensemble."""
    return results_dir() / f"{cfg.main_train.run}-ensemble"


def evaluate_fewer_instances(cfg: StudyConfig, **evaluate_kw) -> dict[str, Path]:
    """How the ensemble grows with instances: for ``k = 1 .. ensemble_instances - 1``, the
    validation-chosen ensemble of the members' first ``k`` instances per backbone
    (:func:`candidates` with ``max_instances=k``), evaluated into ``results/<main run>-ensemble-max<k>/``:
    {``ensemble_max<k>``: folder}."""
    out = {}
    for k in range(1, cfg.ensemble_instances):
        runs = {t.run: results_dir() / t.run for insts in member_conditions(cfg).values()
                for t in list(insts.values())[:k]}
        out[f"ensemble_max{k}"] = evaluated_ensemble(results_dir() / f"{cfg.main_train.run}-ensemble-max{k}", runs,
                                                     candidates=candidates(cfg, max_instances=k), **evaluate_kw)
    return out


def evaluate_ensemble(cfg: StudyConfig, **evaluate_kw) -> Path:
    """The trained members' per-fold, validation-chosen ensemble (:func:`candidates`), evaluated into
    :func:`ensemble_dir` (reused while its members' folds are the same). ``evaluate_kw``:
    ``dataset``, ``baseline``, ``gold``, ``progress`` (``ensemble.select_and_evaluate``)."""
    return evaluated_ensemble(ensemble_dir(cfg), member_runs(cfg), candidates=candidates(cfg), **evaluate_kw)


def half_resolution_ensemble(cfg: StudyConfig) -> Path | None:
    """The backbone ablation's ensemble (notebook 05: the reference's settings, half resolution),
    if it was evaluated (``results/<reference run>-backbone-ensemble/``), else None."""
    d = results_dir() / f"{cfg.train.run}-backbone-ensemble"
    return d if (d / "metrics.json").exists() and (d / "per_image.csv").exists() else None


def fewest_chosen(ensemble_dir: Path) -> int:
    """The fewest runs any fold of an evaluated ensemble averages (its seed noise is at most that of
    an average of this many instances)."""
    choice = json.loads((Path(ensemble_dir) / "ensemble.json").read_text())["choice"]
    return min(len(c) for c in choice.values())


def step_conditions(cfg: StudyConfig, **evaluate_kw) -> tuple[dict[str, Path], dict[str, float], str]:
    """The conditions that show where the ensemble's gain comes from, evaluated: each backbone's
    first member alone (the reference backbone's is the main run), the instance average of the best
    backbone on validation (``ablations.best_backbone``), the half-resolution ensemble of notebook 05
    where it exists, the ensembles of fewer instances per backbone (:func:`evaluate_fewer_instances`)
    and the main ensemble. Returns ({condition: folder}, {condition: runs averaged
    (for the seed spread)}, the best backbone)."""
    members = member_conditions(cfg)
    folders = {b: {k: results_dir() / t.run for k, t in insts.items()} for b, insts in members.items()}
    evaluate_runs([d for insts in folders.values() for d in insts.values()], **evaluate_kw)
    conds = {b: insts["init0"] for b, insts in folders.items()}
    best = ablations.best_backbone(conds)
    n = cfg.ensemble_instances
    instances: dict[str, float] = {}
    if n > 1:
        name = f"{best}_instances{n}"
        conds[name] = ablations.instance_ensemble(folders[best], **evaluate_kw)
        instances[name] = n
    half = half_resolution_ensemble(cfg)
    if half is not None:
        conds["ensemble_half_resolution"] = half
        instances["ensemble_half_resolution"] = fewest_chosen(half)
    for name, folder in evaluate_fewer_instances(cfg, **evaluate_kw).items():
        conds[name], instances[name] = folder, fewest_chosen(folder)
    conds["ensemble"] = evaluate_ensemble(cfg, **evaluate_kw)
    instances["ensemble"] = fewest_chosen(conds["ensemble"])
    return conds, instances, best


def step_table(cfg: StudyConfig, reference: str | None = None, **evaluate_kw) -> pd.DataFrame:
    """:func:`step_conditions` as an ablation table: metrics with intervals, ``IG_diff`` paired
    against ``reference`` (default the main run: the reference backbone's first member), and, when
    the reference backbone has several members, intervals widened by its seed spread
    (``ablations.with_seed_spread``; a condition averaging n runs counts as n instances)."""
    conds, instances, best = step_conditions(cfg, **evaluate_kw)
    main = cfg.train.backbone if cfg.train.backbone in conds else next(iter(conds))
    reference = reference or main
    describe = {b: f"{backbones.architecture(b)}; the main configuration (downsample {cfg.main_train.downsample})"
                for b in member_conditions(cfg)}
    describe.update({c: f"{best}: {instances[c]} instances averaged" for c in conds if c.startswith(f"{best}_instances")})
    if "ensemble_half_resolution" in conds:
        describe["ensemble_half_resolution"] = "notebook 05's ensemble over backbones, the reference's settings"
    describe.update({c: f"chosen as the ensemble is, from at most {c.removeprefix('ensemble_max')} instances per backbone"
                     for c in conds if c.startswith("ensemble_max")})
    describe["ensemble"] = "per fold: backbones and instances chosen on validation images"
    table = ablations.ablation_table(conds, n_boot=cfg.bootstrap, seed=cfg.train.seed, describe=describe,
                                     reference=reference, evaluate_kw=evaluate_kw)
    spread_members = {k: results_dir() / t.run for k, t in member_conditions(cfg).get(main, {}).items()}
    if len(spread_members) > 1:
        sd = float(ablations.spread_table(spread_members).set_index("metric").loc["IG", "sd"])
        table = ablations.with_seed_spread(table, sd, instances=instances, reference=reference)
    return table


TABLE = "main_ensemble"          # results/<tag>/main_ensemble.csv: :func:`step_table`, as notebook 10 writes it
RESULTS = "main_results"         # results/<tag>/main_results.csv: :func:`results_table`, as notebook 10 writes it
ENSEMBLE_LABEL = "DeepGaze II ensemble (main result)"
SINGLE_LABEL = "DeepGaze II (single main run)"


def results_table(cfg: StudyConfig) -> pd.DataFrame:
    """The main result as notebook 07's results table (:func:`dgstudy.report.results_table`): the
    evaluated main ensemble's metrics with 95 % bootstrap intervals over images, beside the paper's
    figures, then the same for the single main run (the ensemble's first member)."""
    return pd.concat([run_results(ensemble_dir(cfg), cfg, label=ENSEMBLE_LABEL),
                      run_results(results_dir() / cfg.main_train.run, cfg, label=SINGLE_LABEL)],
                     ignore_index=True)


def selected_ensemble(cfg: StudyConfig):
    """The evaluated main ensemble as a model of the data set's images (``log_density(i)``: image
    ``i`` predicted by the members its test fold chose, as it was scored), e.g. for
    ``figures.plot_examples``."""
    choice = {int(f): tuple(c) for f, c in load_choice(ensemble_dir(cfg))["choice"].items()}
    used = sorted({r for c in choice.values() for r in c})
    return SelectedEnsemble({r: run_store.CrossValModel(results_dir() / r) for r in used}, choice)


def committed_table(profile: str, stem: str = TABLE) -> pd.DataFrame:
    """A main-ensemble table (``stem``: :data:`TABLE` or :data:`RESULTS`) that profile ``profile``
    wrote (notebook 10), for a profile that shows it without training the members
    (``ensemble_from``)."""
    source = StudyConfig.load(profile)
    if not source.ensemble_backbones:
        raise ValueError(f"profile {profile!r} trains no main ensemble (its ensemble_backbones is empty)")
    path = source.output_dir() / f"{stem}.csv"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no main-ensemble table; run `make reproduce PROFILE={profile}` first")
    return pd.read_csv(path)


# -- the main result in notebooks 06-08 ------------------------------------------------------------
def made_by(cfg: StudyConfig) -> StudyConfig | None:
    """The profile whose notebook 10 makes ``cfg``'s main result: ``cfg`` itself when it trains a
    main ensemble (``ensemble_backbones``), the profile ``ensemble_from`` names (its committed
    outputs), or None when the main result is the single main run."""
    if cfg.ensemble_backbones:
        return cfg
    if cfg.ensemble_from:
        source = StudyConfig.load(cfg.ensemble_from)
        if not source.ensemble_backbones:
            raise ValueError(f"ensemble_from: profile {cfg.ensemble_from!r} trains no main ensemble")
        return source
    return None


def main_output(cfg: StudyConfig, name: str) -> Path | None:
    """The file ``name`` (e.g. ``main_results.csv``, ``main_ensemble_examples.png``) that notebook 10
    wrote for ``cfg``'s main ensemble (:func:`made_by`; tables in its output folder, ``.png`` in
    its figure folder), for notebooks 06, 07 and 08, which report the ensemble as the main result;
    None when the profile has no main ensemble. FileNotFoundError when notebook 10 has not written it."""
    source = made_by(cfg)
    if source is None:
        return None
    path = (source.figure_dir() if name.endswith(".png") else source.output_dir()) / name
    if not path.exists():
        raise FileNotFoundError(f"{path}: notebook 10 of profile {source.profile!r} writes it "
                                "(make reproduce runs notebook 10 before notebooks 06, 07 and 08)")
    return path


def main_result(cfg: StudyConfig) -> pd.DataFrame | None:
    """``cfg``'s main results table (:data:`RESULTS`, notebook 10's :func:`results_table`: the
    ensemble, then its first member, the single main run), or None without a main ensemble."""
    path = main_output(cfg, f"{RESULTS}.csv")
    return None if path is None else pd.read_csv(path)


def result_note(cfg: StudyConfig) -> str:
    """One line on what ``cfg``'s main result is (notebook 07's results preamble): the ensemble of
    :func:`made_by` and its first member, the single main run, or the main run alone."""
    source = made_by(cfg)
    if source is None:
        return main_note(cfg)
    drawn = "" if source.profile == cfg.profile else f" of profile {source.profile}, its committed table"
    return (f"the main result is the ensemble over {', '.join(source.ensemble_backbones)} in the main "
            f"configuration, chosen per fold on validation images (notebook 10{drawn}); below it its "
            f"first member, the single {main_note(cfg)}")


def choice_table(cfg: StudyConfig, ensemble_dir: Path) -> pd.DataFrame:
    """One row per fold of an evaluated main ensemble: the chosen members (``"<backbone> xN"`` per
    backbone), the chosen candidate's validation log-likelihood (bit/fix over uniform), and each
    backbone's first instance's alone."""
    record = load_choice(ensemble_dir)
    members = member_conditions(cfg)
    backbone_of = {t.run: b for b, insts in members.items() for t in insts.values()}
    first = {insts["init0"].run: b for b, insts in members.items()}
    rows = []
    for fold, chosen in sorted(record["choice"].items(), key=lambda kv: int(kv[0])):
        val = record["validation_LL"][fold]
        counts = pd.Series([backbone_of[r] for r in chosen]).value_counts(sort=False)
        rows.append({"fold": int(fold), "chosen": " + ".join(f"{b} x{n}" for b, n in counts.items()),
                     "val_LL chosen": val["+".join(chosen)],
                     **{f"val_LL {b}": val[run] for run, b in first.items() if run in val}})
    return pd.DataFrame(rows).set_index("fold")


def scale_transfer(cfg: StudyConfig, max_images: int | None = 100) -> pd.DataFrame:
    """The main run and the main ensemble in notebook 08's scale test, on the same test-fold images
    (``transfer.spread_images`` of ``max_images``), each image predicted by the fold that held it
    out (the ensemble: that fold's chosen members) at the training scale, the default of both
    (native prediction of the 1600 px copy, which costs four times as much, is notebook 08's):
    :func:`dgstudy.transfer.scale_test` of each, one table with a ``model`` column."""
    from . import predict, transfer
    from .runs import CrossValModel

    cvm = CrossValModel(results_dir() / cfg.main_train.run)
    images = transfer.spread_images(cvm.images, max_images)
    models = {"main run": predict.load_model(cvm.run_dir).single_folds(),
              "ensemble": predict.load_model(ensemble_dir(cfg)).single_folds()}
    tables = []
    for name, folds in models.items():
        t = transfer.scale_test(folds, cvm.fold_of, cvm.dataset, images, n_boot=cfg.bootstrap, seed=cfg.train.seed,
                                scales=("training",))
        t.insert(0, "model", name)
        tables.append(t)
    return pd.concat(tables, ignore_index=True)
