"""The results table beside the paper's published numbers, and the table writers.

:func:`results_table` puts a run's metrics (a flat dict from ``statistics.summarize``) beside the
DeepGaze II figures the paper and the MIT300 benchmark published (:data:`PAPER_RESULTS`, each with
what it measured), flagged ``comparable`` only in the paper's own setting (:func:`setting_note`).
:func:`comparison_table` sets models of every kind side by side (notebook 07's model comparison).
:func:`write_table` writes any table as Markdown, CSV and JSON, atomically.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from .backbones.vgg19 import PAPER_LAYERS
from .config import describe_changes
from .evaluation import load_run_metrics
from .statistics import summarize
from .io import atomic_path, write_json
from .metrics import MAIN_AVERAGE

METRICS = list(MAIN_AVERAGE)
UNITS = {m: "" for m in METRICS} | {"LL": "bit/fix", "IG": "bit/fix", "explained_IG": "fraction"}

# The published figures, each labelled with what it measured, on which data and how.
# ``explained_IG`` of DeepGaze II: the abstract of arXiv:1610.01563, "after conservative
# cross-validation, DeepGaze II explains about 87% of the explainable information gain", measured
# by cross-validation on MIT1003 (the data set it was trained on, 15 observers per image, like
# OSIE); the abstract's MIT300 clause is about AUC. The other metrics: the MIT Saliency
# Benchmark's MIT300 entry for DeepGaze II (held-out images, 39 observers), computed by the
# benchmark from one saliency map per image (classic evaluation), not from the metric-specific
# maps dgstudy derives from the density (Kümmerer et al. 2018). Caveat: the paper's own text and
# the benchmark site were not reachable from the workplace this table was written in; the six
# benchmark values are the widely reproduced MIT300 listing and are labelled as recalled.
# DeepGaze I's "56%" (the same abstract) belongs to DeepGaze I itself: AlexNet features with a
# linear readout (Kümmerer, Theis & Bethge 2015). A linear readout on this study's features is a
# different model, so that number is not put in the ``paper`` column of any row; the row says so
# in its source (:data:`NOT_COMPARABLE`).
PAPER_SOURCE_ABSTRACT = ("arXiv:1610.01563, abstract: 'after conservative cross-validation', on MIT1003 "
                         "(the training data set, 15 observers per image); not MIT300")
PAPER_SOURCE_MIT300 = ("MIT Saliency Benchmark, MIT300 entry 'DeepGaze II' (held-out images, 39 observers; "
                       "classic single-map evaluation), the benchmark cited in arXiv:1610.01563; recalled "
                       "listing, not re-checked against the benchmark site in this study")
MODEL_NAMES = {"deepgaze2": "DeepGaze II", "deepgaze1": "DeepGaze I"}
PAPER_RESULTS = {
    "deepgaze2": {
        "explained_IG": (0.87, PAPER_SOURCE_ABSTRACT),
        "AUC": (0.88, PAPER_SOURCE_MIT300),
        "sAUC": (0.72, PAPER_SOURCE_MIT300),
        "NSS": (1.29, PAPER_SOURCE_MIT300),
        "CC": (0.52, PAPER_SOURCE_MIT300),
        "KLDiv": (0.96, PAPER_SOURCE_MIT300),
        "SIM": (0.46, PAPER_SOURCE_MIT300),
    },
    "deepgaze1": {},
}
# Published numbers of another model than the row's, kept out of the ``paper`` column: the source
# column says what they are.
NOT_COMPARABLE = {
    ("deepgaze1", "explained_IG"): ("DeepGaze I explained 56% (arXiv:1610.01563, abstract): AlexNet "
                                    "features with a linear readout, another network than this row's; "
                                    "no paper number for a linear readout on these features"),
}


def setting_note(cfg) -> tuple[bool, str]:
    """(comparable, explanation) of how the setting of ``cfg`` (a StudyConfig) relates to the
    paper's MIT300 numbers (those of its main run)."""
    t = cfg.main_train
    same_model = t.backbone == "vgg19" and list(t.layers or PAPER_LAYERS) == PAPER_LAYERS
    if t.dataset == "mit1003" and same_model and not t.n_images:
        return True, ("closest setting: VGG-19, the paper's five layers, MIT1003 10-fold image-wise "
                      "cross-validation (no SALICON pretraining; paper: MIT300 held-out test set, "
                      "10-model ensemble)")
    why = []
    if t.dataset != "mit1003":
        why.append(f"dataset {t.dataset} (paper: trained on MIT1003, tested on MIT300)")
    if t.n_images:
        why.append(f"only the first {t.n_images} images")
    if t.backbone != "vgg19":
        why.append(f"backbone {t.backbone} (paper: VGG-19)")
    elif not same_model:
        why.append(f"layers {t.layers} (paper: {PAPER_LAYERS})")
    return False, "not the paper's setting: " + "; ".join(why)


def results_table(metrics: dict, cfg, model: str = "deepgaze2", label: str | None = None) -> pd.DataFrame:
    """This run's metrics beside the paper's published figures.

    ``metrics``: a flat dict as from :func:`summarize` (``IG``, ``IG_lo``, ``IG_hi``, ...).
    ``model``: ``'deepgaze2'`` or ``'deepgaze1'`` (which published figures to put beside).
    ``label``: the ``model`` column's text (default: the model's name, e.g. ``DeepGaze II``).
    Columns: model, metric, unit, this_run, ci_low, ci_high, paper, paper_source, comparable,
    setting.
    ``paper`` is NaN where the paper publishes no number for that metric.
    """
    comparable, note = setting_note(cfg)
    rows = []
    for m in METRICS:
        paper, source = PAPER_RESULTS.get(model, {}).get(m, (np.nan, NOT_COMPARABLE.get((model, m), "")))
        rows.append({
            "model": label or MODEL_NAMES.get(model, model), "metric": m, "unit": UNITS[m],
            "this_run": _float(metrics.get(m)),
            "ci_low": _float(metrics.get(f"{m}_lo")), "ci_high": _float(metrics.get(f"{m}_hi")),
            "paper": paper, "paper_source": source,
            "comparable": bool(comparable and np.isfinite(paper)),
            "setting": note,
        })
    return pd.DataFrame(rows)


def run_results(run_dir, cfg, model: str = "deepgaze2", label: str | None = None) -> pd.DataFrame:
    """:func:`results_table` of the evaluated run ``run_dir`` (its ``metrics.json`` and
    ``per_image.csv``), intervals from ``cfg.bootstrap`` resamples."""
    summary, per_image = load_run_metrics(run_dir)
    return results_table(summarize(summary, per_image, n_boot=cfg.bootstrap, seed=cfg.train.seed), cfg, model, label)


def main_note(cfg) -> str:
    """One line on how the main run relates to the reference configuration the ablations vary."""
    if not cfg.main:
        return f"main run `{cfg.train.run}`: the reference configuration, which the ablations vary"
    changes = describe_changes(cfg.main)
    return (f"main run `{cfg.main_train.run}`: the reference configuration (run `{cfg.train.run}`, which "
            f"the ablations vary) with {changes}, chosen on validation folds (notebook 09)")


def _float(x) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return float("nan")


def compare_prose(table: pd.DataFrame, cfg) -> str:
    """Markdown: the setting, the main result's headline numbers and the paper's, from ``table``
    (:func:`results_table`, or several of them; the main result is its first ``model``). Why they
    may differ is the report notebook's own text."""
    comparable, note = setting_note(cfg)
    lines = [f"**Setting.** {note}."]
    first = table["model"].iloc[0] if "model" in table and len(table) else None
    t = table[table["model"] == first] if first is not None else table
    t = t.set_index("metric")
    ig, eig = t.loc["IG", "this_run"], t.loc["explained_IG", "this_run"]
    if np.isfinite(ig):
        lines.append(f"**Main result** ({first or 'this run'}). It gains {ig:.3f} bit/fixation over the centre bias "
                     f"(95% image-bootstrap interval {t.loc['IG', 'ci_low']:.3f} to "
                     f"{t.loc['IG', 'ci_high']:.3f})"
                     + (f" and explains {100 * eig:.0f}% of the gold standard's information gain."
                        if np.isfinite(eig) else "."))
    lines.append(f"**Paper.** DeepGaze II explains about {100 * PAPER_RESULTS['deepgaze2']['explained_IG'][0]:.0f}% "
                 "of the explainable information gain after cross-validation on MIT1003 (the paper's "
                 "abstract); its AUC and the other classic metrics are the MIT300 benchmark's"
                 + ("." if comparable else "; shown for orientation only, since this is not the paper's setting."))
    return "\n\n".join(lines)


# The model comparison (notebook 07): every model scored on the same images the same way.
COMPARISON_COLUMNS = ["model", "kind", "IG", "IG_lo", "IG_hi", "explained_IG", "explained_IG_lo",
                      "explained_IG_hi", "LL", "AUC", "sAUC", "NSS", "CC", "KLDiv", "SIM", "raw_AUC",
                      "raw_sAUC", "raw_NSS", "n_images", "n_fixations"]
COMPARISON_MD_COLUMNS = ["model", "kind", "IG", "IG_lo", "IG_hi", "explained_IG", "LL", "AUC", "sAUC", "NSS",
                         "raw_AUC", "raw_sAUC", "raw_NSS"]      # the markdown's (CSV/JSON: all)


def comparison_table(entries: dict, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """One row per model of ``entries`` ({name: (kind, summary, per-image table)}), with
    image-bootstrap intervals (:func:`~dgstudy.statistics.summarize`) on IG and explained IG,
    columns :data:`COMPARISON_COLUMNS`; ``raw_*`` (the classic metrics on a model's
    raw maps) where the summary has them. A per-image table with only ``IG`` and ``n_fix`` (the
    gold standard's) gives IG and explained IG = 1 and leaves the map metrics empty."""
    rows = []
    for name, (kind, summary, per_image) in entries.items():
        flat = summarize(summary, per_image, n_boot=n_boot, seed=seed)
        rows.append({"model": name, "kind": kind, **{c: _float(flat.get(c)) for c in COMPARISON_COLUMNS[2:]}})
    df = pd.DataFrame(rows, columns=COMPARISON_COLUMNS)
    return df.astype({"n_images": "Int64", "n_fixations": "Int64"})


# The columns a reader wants in an ablation table's markdown (CSV/JSON keep every column).
SUMMARY_COLUMNS = ["condition", "detail", "IG", "IG_lo", "IG_hi", "IG_diff", "IG_diff_lo", "IG_diff_hi", "IG_diff_p_holm",
                   "IG_diff_lo_seed", "IG_diff_hi_seed", "IG_diff_p_seed_holm", "explained_IG", "LL", "AUC",
                   "sAUC", "NSS", "CC", "KLDiv", "SIM", "n_images", "n_fixations"]


def write_table(df: pd.DataFrame, out_dir: str | Path, stem: str, md_preamble: str = "",
                md_drop=(), md_columns=None) -> dict[str, Path]:
    """Write ``df`` as ``<stem>.md``, ``<stem>.csv`` and ``<stem>.json`` (records), atomically.

    The markdown file may start with ``md_preamble``, show only ``md_columns`` (those present, in
    that order; e.g. :data:`SUMMARY_COLUMNS`) and leave out the columns ``md_drop`` (e.g. a long
    note repeated on every row); CSV and JSON always hold every column.
    """
    out_dir = Path(out_dir)
    paths = {ext: out_dir / f"{stem}.{ext}" for ext in ("md", "csv", "json")}
    md_df = df if md_columns is None else df[[c for c in md_columns if c in df]]
    md = to_markdown(md_df.drop(columns=[c for c in md_drop if c in md_df]))
    with atomic_path(paths["md"]) as tmp:
        tmp.write_text((md_preamble.rstrip() + "\n\n" if md_preamble else "") + md + "\n")
    with atomic_path(paths["csv"]) as tmp:
        df.to_csv(tmp, index=False)
    write_json(paths["json"], json.loads(df.to_json(orient="records")))
    return paths


def to_markdown(df: pd.DataFrame, floatfmt: str = "{:.4g}") -> str:
    """A GitHub-style markdown table (no dependency on ``tabulate``)."""
    def cell(v):
        if isinstance(v, (float, np.floating)):
            return "" if not np.isfinite(v) else floatfmt.format(v)
        return str(v).replace("|", "\\|")
    head = "| " + " | ".join(map(str, df.columns)) + " |"
    sep = "|" + "|".join("---" for _ in df.columns) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([head, sep, *body])
