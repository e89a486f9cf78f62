"""The study's figures: one function per figure, one seaborn style, saved as PNG and PDF.

Every ``plot_*`` function takes plain data (arrays, DataFrames, a dataset and a model) and returns a
matplotlib ``Figure``; :func:`save` writes it to ``<folder>/<name>.png`` and ``.pdf`` atomically.
In a notebook the figure also shows inline, under the cell that drew it (the kernel's backend).
Densities are shown as the natural-log density a model returns (``log_density(i)``, (H, W), image
pixel grid); fixations are drawn at their continuous (x, y) positions, pixel centres at integer + 0.5,
so ``imshow`` uses ``extent=(0, W, H, 0)`` to put pixel (row i, column j) on [j, j+1) x [i, i+1).
Information gain and log-likelihood are in bit/fixation.
"""
from __future__ import annotations

import io
import sys
from pathlib import Path

import matplotlib

if "ipykernel" not in sys.modules:   # outside a notebook figures are files (no display is needed);
    matplotlib.use("Agg")            # in one (papermill's kernel too) they are also shown inline
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib import colormaps  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import FixedFormatter, FixedLocator, NullLocator  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from PIL import Image  # noqa: E402

from .io import atomic_path  # noqa: E402

PALETTE = "colorblind"
DENSITY_CMAP = "magma"
# axis and legend wording for the study's column names (dgstudy.transfer.scale_table)
METRIC_LABELS = {"IG_run_cb": "IG over the run's centre bias (bit/fix)",
                 "IG_own_cb": "IG over the data set's centre bias (bit/fix)"}
SCALE_LABELS = {"training": "rescaled to the training scale (default)",
                "native": "at the size shown (native)"}


def set_style() -> None:
    """The one style of every figure in the study."""
    sns.set_theme(context="paper", style="whitegrid", palette=PALETTE, font_scale=1.1,
                  rc={"figure.dpi": 110, "savefig.dpi": 200, "savefig.bbox": "tight",
                      "axes.titlesize": "medium"})


def save(fig, name: str, folder: str | Path) -> list[Path]:
    """Write ``fig`` as ``<folder>/<name>.png`` and ``.pdf`` (each via a temporary file + rename).

    The files carry no creation date, so the same figure gives the same bytes on every run.
    """
    folder = Path(folder)
    out = []
    for ext in ("png", "pdf"):
        path = folder / f"{name}.{ext}"
        with atomic_path(path, suffix=f".{ext}") as tmp:
            fig.savefig(tmp, format=ext, metadata={"CreationDate": None} if ext == "pdf" else None)
        out.append(path)
    return out


def _density_image(ax, log_density, title: str, log: bool = False, decades: float | None = None):
    """``log``: the log density itself; ``decades``: log10(p / max p), clipped at ``-decades``; else
    p / max p."""
    log_density = np.asarray(log_density, dtype=np.float64)
    h, w = log_density.shape
    if log:
        img, limits = log_density, {}
    elif decades:
        img = np.maximum((log_density - log_density.max()) / np.log(10), -decades)
        limits = {"vmin": -decades, "vmax": 0}
    else:
        img, limits = np.exp(log_density - log_density.max()), {}
    im = ax.imshow(img, cmap=DENSITY_CMAP, extent=(0, w, h, 0), interpolation="nearest", **limits)
    ax.set_title(title)
    ax.set_axis_off()
    return im


def _as_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def example_images(per_image: pd.DataFrame, k: int = 3, min_fix: int = 1, by: str = "IG") -> list[int]:
    """``k`` images spread over a per-image ranking, first to last: ``by='IG'``, the model's
    information gain (best, ..., median, ..., worst); ``by='gap'``, its gap to the gold standard
    on the same image, ``IG_gold - IG`` (most explained, ..., least explained)."""
    t = per_image[per_image["n_fix"] >= min_fix]
    if by == "IG":
        t = t.sort_values("IG", ascending=False, kind="stable")
    elif by == "gap":
        t = t.assign(gap=t["IG_gold"] - t["IG"]).sort_values("gap", kind="stable")
    else:
        raise ValueError(f"by must be 'IG' or 'gap', got {by!r}")
    pos = np.unique(np.linspace(0, len(t) - 1, num=min(k, len(t))).round().astype(int))
    return [int(i) for i in t["image"].to_numpy()[pos]]


def plot_examples(dataset, models: dict, images, max_fixations: int | None = None, labels=None,
                  decades: float | None = None):
    """Rows = images; columns = stimulus with its fixations, then each model's predicted density.

    ``models``: {column title: model with ``log_density(i)`` or a callable ``f(i)``}, e.g.
    ``{"gold standard": gold, "DeepGaze II": crossval_model}``. Densities are shown relative to their
    maximum on a linear scale (the way the paper shows them), or, with ``decades``, as
    log10(density / its maximum) over that many decades (where the tails put their mass), with one
    colour bar for all of them. ``labels``: one line per image, shown under its number (e.g. its IG).
    """
    set_style()
    images = list(images)
    ncols = 1 + len(models)
    fig, axes = plt.subplots(len(images), ncols, figsize=(2.8 * ncols + 0.6, 2.2 * len(images)), squeeze=False)
    im = None
    for r, i in enumerate(images):
        ax = axes[r, 0]
        img = dataset.image(i)
        h, w = img.shape[:2]
        ax.imshow(img, extent=(0, w, h, 0))
        fx = dataset.fixations_of(i)
        if max_fixations:
            fx = fx.iloc[:max_fixations]
        ax.scatter(fx["x"], fx["y"], s=8, c="#00e5ff", edgecolors="black", linewidths=0.4)
        ax.set_xlim(0, w)
        ax.set_ylim(h, 0)
        ax.set_axis_off()
        ax.set_title(f"image {i}: {len(fx)} fixations" + (f"\n{labels[r]}" if labels is not None else ""),
                     fontsize=9)
        for c, (title, model) in enumerate(models.items(), start=1):
            f = model.log_density if hasattr(model, "log_density") else model
            im = _density_image(axes[r, c], _as_numpy(f(i)), title if r == 0 else "", decades=decades)
    fig.tight_layout()
    if im is not None:
        fig.colorbar(im, ax=axes[:, 1:].ravel().tolist(), shrink=0.6, pad=0.02,
                     label="log10 (density / its maximum)" if decades else "density / its maximum")
    return fig


def plot_center_bias(log_density, fixations_xy=None, title: str = "centre bias"):
    """The centre-bias density (log scale, nats) with, optionally, all fixations in the same
    normalised frame (``fixations_xy``: (n, 2) of x/W, y/H in [0, 1])."""
    set_style()
    log_density = _as_numpy(log_density)
    h, w = log_density.shape
    fig, axes = plt.subplots(1, 2 if fixations_xy is not None else 1,
                             figsize=(9 if fixations_xy is not None else 4.8, 3.4), squeeze=False)
    im = _density_image(axes[0, 0], log_density, f"{title}: log density", log=True)
    fig.colorbar(im, ax=axes[0, 0], shrink=0.8, label="log p (nats)")
    if fixations_xy is not None:
        xy = np.asarray(fixations_xy)
        ax = axes[0, 1]
        ax.hist2d(xy[:, 0] * w, xy[:, 1] * h, bins=(32, max(1, round(32 * h / w))),
                  range=((0, w), (0, h)), cmap=DENSITY_CMAP)
        ax.set_xlim(0, w)
        ax.set_ylim(h, 0)
        ax.set_aspect("equal")
        ax.set_title(f"all fixations ({len(xy)})")
        ax.set_axis_off()
    fig.tight_layout()
    return fig


def plot_ablation(table: pd.DataFrame, metric: str = "IG", title: str = "", order=None,
                  highlight: str | None = None):
    """Bar chart of ``metric`` per condition with its bootstrap interval as error bar and, where
    the table has paired differences to a reference (``<metric>_diff``, ``_diff_lo``, ``_diff_hi``),
    a second panel with those differences on their own scale: the comparisons the text makes.

    ``table``: from :func:`dgstudy.ablations.ablation_table` (columns ``condition``, ``<metric>``,
    ``<metric>_lo``, ``<metric>_hi``). ``highlight``: a condition drawn in the accent colour (the
    reference of the differences). A condition whose value is exactly 0 with no interval (the
    baseline itself, e.g. "centre bias alone" for IG) is labelled "0: the baseline", and left out
    of the differences, whose scale it would set.
    """
    set_style()
    t = table.set_index("condition").loc[list(order) if order is not None else list(table["condition"])]
    y = t[metric].to_numpy(dtype=float)
    lo = t.get(f"{metric}_lo", pd.Series(np.nan, index=t.index)).to_numpy(dtype=float)
    hi = t.get(f"{metric}_hi", pd.Series(np.nan, index=t.index)).to_numpy(dtype=float)
    yerr = np.vstack([y - lo, hi - y])
    colors = sns.color_palette(PALETTE)
    bar_colors = [colors[1] if c == highlight else colors[0] for c in t.index]
    baseline = (y == 0) & (lo == 0) & (hi == 0)
    diff = f"{metric}_diff"
    show_diff = diff in t and np.isfinite(t[diff].to_numpy(dtype=float)[~baseline]).sum() > 1
    width = max(4.0, 0.7 * len(t) + 1.5)
    fig, axes = plt.subplots(1, 2 if show_diff else 1, figsize=(2 * width if show_diff else width, 3.6),
                             squeeze=False)
    ax = axes[0, 0]
    x = np.arange(len(t))
    ax.bar(x, y, color=bar_colors)
    ax.errorbar(x, y, yerr=np.where(np.isfinite(yerr), yerr, 0), fmt="none", ecolor="black",
                capsize=3, lw=1)
    for k in np.flatnonzero(baseline):
        ax.annotate("0: the baseline", (x[k], 0), xytext=(0, 4), textcoords="offset points",
                    ha="center", va="bottom", fontsize=8, rotation=90)
    rotate = dict(rotation=30, ha="right") if len(t) > 4 else {}
    ax.set_xticks(x, list(t.index), **rotate)
    ax.axhline(0, color="black", lw=0.8)
    unit = " (bit/fix)" if metric in ("IG", "LL") else ""
    ax.set_ylabel(f"{metric}{unit}")
    ax.set_title(f"{metric} per condition (95% image-bootstrap intervals)", fontsize=10)
    if show_diff:
        ax = axes[0, 1]
        d = t[~baseline]
        dy = d[diff].to_numpy(dtype=float)
        derr = np.vstack([dy - d[f"{diff}_lo"].to_numpy(dtype=float), d[f"{diff}_hi"].to_numpy(dtype=float) - dy])
        dx = np.arange(len(d))
        for k, c in enumerate(d.index):
            ax.errorbar(dx[k], dy[k], yerr=np.where(np.isfinite(derr[:, k:k + 1]), derr[:, k:k + 1], 0),
                        fmt="D" if c == highlight else "o", ms=6, capsize=3, lw=1,
                        color=colors[1] if c == highlight else colors[0])
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xticks(dx, list(d.index), **rotate)
        ax.set_xlim(-0.5, len(d) - 0.5)
        ax.set_ylabel(f"{metric} difference{unit}")
        ref = f" to {highlight}" if highlight is not None else ""
        ax.set_title(f"paired difference{ref} (95% intervals over images)", fontsize=10)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_layer_ablations(tables: dict, metric: str = "IG", highlight: dict | None = None, title: str = ""):
    """The layer ablations of several backbones side by side, one panel each on one y axis
    (``tables``: {panel title: :func:`dgstudy.ablations.ablation_table`}, conditions in table
    order; ``highlight``: {panel title: condition drawn in the accent colour})."""
    set_style()
    colors = sns.color_palette(PALETTE)
    widths = [max(2.0, 0.45 * len(t) + 0.8) for t in tables.values()]
    fig, axes = plt.subplots(1, len(tables), figsize=(sum(widths) + 0.8, 3.6), sharey=True,
                             gridspec_kw={"width_ratios": widths}, squeeze=False)
    for ax, (name, t) in zip(axes[0], tables.items()):
        y = t[metric].to_numpy(dtype=float)
        err = np.vstack([y - t[f"{metric}_lo"].to_numpy(dtype=float), t[f"{metric}_hi"].to_numpy(dtype=float) - y])
        x = np.arange(len(t))
        mark = (highlight or {}).get(name)
        ax.bar(x, y, color=[colors[1] if c == mark else colors[0] for c in t["condition"]])
        ax.errorbar(x, y, yerr=err, fmt="none", ecolor="black", capsize=2, lw=1)
        ax.set_xticks(x, list(t["condition"]), rotation=45, ha="right")
        ax.axhline(0, color="black", lw=0.8)
        ax.set_title(name, fontsize=10)
    axes[0][0].set_ylabel(f"{metric}{' (bit/fix)' if metric in ('IG', 'LL') else ''}")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_calibration(tables: dict, title: str = "calibration: fixation mass in density deciles"):
    """Observed against predicted fixation mass per density decile, one line per model
    (``tables``: {name: :func:`dgstudy.calibration.calibration_table`}), log-log with the
    diagonal of a calibrated model; the densest decile is labelled."""
    set_style()
    fig, ax = plt.subplots(figsize=(5.2, 4.2))
    lo, hi = np.inf, 0.0
    for name, t in tables.items():
        pred, obs = t["predicted"].to_numpy(float), t["observed"].to_numpy(float)
        keep = (pred > 0) & (obs > 0)
        line, = ax.plot(pred[keep], obs[keep], "o-", ms=4, lw=1, label=name)
        ax.annotate("decile 1", (pred[0], obs[0]), xytext=(4, -10), textcoords="offset points",
                    fontsize=7, color=line.get_color())
        lo, hi = min(lo, pred[keep].min(), obs[keep].min()), max(hi, pred[keep].max(), obs[keep].max())
    ax.plot([lo, hi], [lo, hi], color="black", lw=0.8, ls="--", label="calibrated")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set(xlabel="predicted mass in the decile", ylabel="observed share of fixations", title=title)
    ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def plot_observer_curve(curve: pd.DataFrame, fit: dict, model_ig: float | None = None,
                        title: str = "the ceiling: gold standard against the number of observers"):
    """The gold standard's IG with k other observers (``curve``: :func:`dgstudy.ceiling.gold_by_observers`),
    the fitted saturating curves of ``fit`` (:func:`dgstudy.ceiling.extrapolate`) with their
    asymptotes dashed, and, if given, the model's IG as a horizontal line."""
    set_style()
    colors = sns.color_palette(PALETTE)
    fig, ax = plt.subplots(figsize=(5.6, 3.8))
    k = curve["k"].to_numpy(float)
    ax.plot(k, curve["IG"], "o", color=colors[0], label="gold standard (leave one out)")
    kk = np.geomspace(1, 10 * k.max(), 200)
    for (inf, a, b), name, c in (((fit["IG_inf"], fit["a"], fit["b"]), f"fit, b = {fit['b']:.2f}", colors[1]),
                                 ((fit["IG_inf_b1"], fit["a_b1"], 1.0), "fit, b = 1", colors[2])):
        ax.plot(kk, inf - a * kk ** -b, lw=1, color=c, label=f"{name}: {inf:.2f} bit/fix as k -> inf")
        ax.axhline(inf, color=c, lw=0.8, ls="--")
    if model_ig is not None:
        ax.axhline(model_ig, color="black", lw=1, label=f"the model: {model_ig:.2f} bit/fix")
    ax.set_xscale("log")
    ax.set(xlabel="other observers k", ylabel="IG over the centre bias (bit/fix)", title=title)
    ax.title.set_fontsize(10)
    ax.legend(fontsize="x-small", loc="lower right")
    fig.tight_layout()
    return fig


def plot_fold_ig(folds: pd.DataFrame, title: str = "test IG per fold"):
    """Test IG of every fold, one line per condition (``folds``: :func:`dgstudy.ablations.fold_table`);
    a collapsed fold shows as a dip towards 0."""
    set_style()
    fig, ax = plt.subplots(figsize=(6.0, 3.4))
    for cond, g in folds.groupby("condition", sort=False):
        ax.plot(g["fold"], g["IG"], "o-", ms=4, lw=1, label=cond)
    ax.axhline(0, color="black", lw=0.8)
    ax.set(xlabel="test fold", ylabel="IG (bit/fix)", title=title)
    ax.set_xticks(sorted(folds["fold"].unique()))
    ax.legend(fontsize="x-small")
    fig.tight_layout()
    return fig


def plot_per_image_ig(per_image: pd.DataFrame, title: str = ""):
    """Per image: the model's log-likelihood against the centre bias's (bit/fix), the sorted IG,
    and, where ``per_image`` has ``IG_gold``, the model's IG against the gold standard's.

    ``per_image``: columns ``LL`` (model) and ``IG`` (model minus centre bias), as in a run's
    ``per_image.csv``; the centre bias's LL is ``LL - IG``; ``IG_gold``: the leave-one-subject-out
    gold standard's IG over the same centre bias.
    """
    set_style()
    ll_model = per_image["LL"].to_numpy(dtype=float)
    ig = per_image["IG"].to_numpy(dtype=float)
    ll_cb = ll_model - ig
    gold = per_image["IG_gold"].to_numpy(dtype=float) if "IG_gold" in per_image else None
    fig, axes = plt.subplots(1, 3 if gold is not None else 2, figsize=(13.5 if gold is not None else 9, 3.8))
    a, b = axes[0], axes[1]
    a.scatter(ll_cb, ll_model, s=10, alpha=0.7)
    lim = [np.nanmin([ll_cb, ll_model]), np.nanmax([ll_cb, ll_model])]
    a.plot(lim, lim, color="black", lw=0.8, ls="--")
    a.set_xlabel("centre bias LL (bit/fix)")
    a.set_ylabel("model LL (bit/fix)")
    a.set_title(f"model better on {int(np.sum(ig > 0))} of {len(ig)} images", fontsize=10)
    order = np.argsort(ig)
    x = np.arange(len(ig))
    b.fill_between(x, 0, ig[order], step="mid", linewidth=0, alpha=0.8)   # 700 bars would not show
    b.axhline(0, color="black", lw=0.8)
    b.axhline(float(np.median(ig)), color="black", lw=0.8, ls=":", label=f"median {np.median(ig):.2f}")
    b.legend(loc="upper left", fontsize="small")
    b.set_xlabel("image (sorted by IG)")
    b.set_ylabel("IG over centre bias (bit/fix)")
    b.set_title(title or "information gain per image", fontsize=10)
    if gold is not None:
        c = axes[2]
        c.scatter(gold, ig, s=10, alpha=0.7)
        lim = [min(0.0, np.nanmin([gold, ig])), np.nanmax([gold, ig])]
        c.plot(lim, lim, color="black", lw=0.8, ls="--", label="model = gold standard")
        c.axhline(0, color="black", lw=0.8)
        c.set_xlabel("gold standard IG (bit/fix, leave one subject out)")
        c.set_ylabel("model IG (bit/fix)")
        r = float(np.corrcoef(gold, ig)[0, 1])
        c.set_title(f"model against gold standard per image (r = {r:.2f})", fontsize=10)
        c.legend(loc="upper left", fontsize="small")
    fig.tight_layout()
    return fig


def plot_blur(sigmas_px, labels=None, title: str = "learned blur"):
    """The learned Gaussian blur of each fold model: its width (stimulus pixels) and kernel profile."""
    set_style()
    s = np.asarray(sigmas_px, dtype=float)
    labels = list(labels) if labels is not None else [f"fold {k}" for k in range(len(s))]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.4))
    a.bar(np.arange(len(s)), s)
    a.set_xticks(np.arange(len(s)), labels, rotation=30 if len(s) > 4 else 0)
    a.set_ylabel("sigma (stimulus px)")
    a.set_title(f"{title}: mean sigma {s.mean():.1f} px")
    r = np.linspace(-3 * s.max(), 3 * s.max(), 401)
    for sk, lab in zip(s, labels):
        b.plot(r, np.exp(-0.5 * (r / sk) ** 2), lw=1, label=lab)
    b.set_xlabel("offset (stimulus px)")
    b.set_ylabel("kernel (peak = 1)")
    if len(s) <= 10:
        b.legend(fontsize="x-small")
    fig.tight_layout()
    return fig


def plot_training_curves(logs: dict, y: str = "val_ig", x: str = "epoch", title: str = "training",
                         best: str | None = "val_LL"):
    """One line per fold: ``y`` against ``x`` from each fold's ``log.csv`` ({label: DataFrame}),
    each fold's kept epoch (the maximum of ``best``, the early-stopping criterion) marked with a
    dot; the legend sits outside the axes, beside them."""
    set_style()
    fig, ax = plt.subplots(figsize=(6.2, 3.4))
    for label, df in logs.items():
        if y in df and x in df:
            line, = ax.plot(df[x], df[y], lw=1, label=label)
            if best and best in df:
                k = df[best].idxmax()
                ax.plot(df.loc[k, x], df.loc[k, y], "o", ms=4, color=line.get_color())
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.set_title(title + (" (dots: the epoch kept)" if best else ""), fontsize=10)
    if len(logs) <= 10:
        ax.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.tight_layout()
    return fig


# -- one prediction as a PNG (dgstudy predict) -------------------------------------------------
def density_overlay(rgb: np.ndarray, log_density: np.ndarray, alpha: float = 0.7) -> np.ndarray:
    """(H, W, 3) float RGB in [0, 1]: the grey image under the density in the :data:`DENSITY_CMAP` colour map.

    The density is scaled to its maximum; ``alpha`` is the weight of the colour map.
    """
    gray = rgb.astype(np.float32).mean(axis=2, keepdims=True) / 255.0
    dens = np.exp(log_density.astype(np.float64) - np.max(log_density))
    colour = colormaps[DENSITY_CMAP](dens)[..., :3]
    return (1 - alpha) * gray + alpha * colour


def overlay_png(rgb: np.ndarray, log_density: np.ndarray) -> bytes:
    """:func:`density_overlay` at the image's own resolution, encoded as PNG bytes (8-bit RGB)."""
    arr = np.clip(np.round(density_overlay(rgb, log_density) * 255.0), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="png", compress_level=1)   # speed over size, as below
    return buf.getvalue()


def colour_bar_png(width: int = 256, height: int = 12) -> bytes:
    """The :data:`DENSITY_CMAP` colour bar of :func:`density_overlay` as PNG bytes: left = 0,
    right = the density's maximum (overlays are scaled to their maximum)."""
    ramp = colormaps[DENSITY_CMAP](np.linspace(0, 1, width))[None, :, :3]
    arr = np.repeat(np.round(ramp * 255).astype(np.uint8), height, axis=0)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="png")
    return buf.getvalue()


def save_density_plot(path, rgb: np.ndarray, log_density: np.ndarray, fixations: pd.DataFrame | None = None,
                      title: str = "") -> None:
    """PNG (matplotlib, Agg): the image, and the predicted density over the greyed image with the
    fixations (if any) as dots. Written atomically."""
    h, w = log_density.shape
    scale = 6.0 / max(h, w)
    pw, ph = max(w * scale, 1.5), max(h * scale, 1.5)
    fig = Figure(figsize=(2 * pw + 0.3, ph + 0.4), dpi=100)
    FigureCanvasAgg(fig)
    ax0, ax1 = fig.subplots(1, 2)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - 0.35 / (ph + 0.4), wspace=0.04)
    ax0.imshow(rgb)
    ax0.set_title(title or "image", fontsize=9)
    ax1.imshow(density_overlay(rgb, log_density))
    ax1.set_title("predicted fixation density", fontsize=9)
    if fixations is not None and len(fixations):
        # imshow puts pixel (r, c) at [c-0.5, c+0.5]; dgstudy's pixel (r, c) spans [c, c+1).
        ax1.scatter(fixations["x"] - 0.5, fixations["y"] - 0.5, s=14, c="cyan", edgecolors="k", linewidths=0.3)
    for ax in (ax0, ax1):
        ax.set_axis_off()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", pil_kwargs={"compress_level": 1})   # speed over file size


def plot_transfer_evaluation(per_image: pd.DataFrame, summary: dict):
    """A run on another data set (``dgstudy evaluate``): per image, the IG over the data set's own
    centre bias against the IG over the run's training centre bias, and the sorted IG over the
    run's centre bias (bit/fix)."""
    set_style()
    own = per_image["IG"].to_numpy(dtype=float)
    run = per_image["IG_training_center_bias"].to_numpy(dtype=float)
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.8))
    if np.isfinite(own).any():
        a.scatter(run, own, s=10, alpha=0.7)
        lim = [np.nanmin([run, own]), np.nanmax([run, own])]
        a.plot(lim, lim, color="black", lw=0.8, ls="--")
    else:
        a.text(0.5, 0.5, "own centre bias not computable", ha="center", va="center", transform=a.transAxes)
    a.set(xlabel="IG over the run's centre bias (bit/fix)", ylabel="IG over the data set's centre bias",
          title=f"IG {summary.get('IG', float('nan')):.3f}, over run's cb "
                f"{summary.get('IG_training_center_bias', float('nan')):.3f} bit/fix")
    order = np.argsort(run)
    b.bar(np.arange(len(run)), run[order], width=1.0)
    b.axhline(0, color="black", lw=0.8)
    b.set(xlabel="image (sorted)", ylabel="IG over the run's centre bias (bit/fix)",
          title=f"{len(run)} images, {int(per_image['n_fix'].sum())} fixations")
    fig.tight_layout()
    return fig


def plot_model_comparison(table: pd.DataFrame):
    """Information gain over the centre bias (bit/fix, 95% image-bootstrap interval) of every model
    of the comparison (``table``: :func:`dgstudy.report.comparison_table`), one bar per model,
    coloured by kind, with the explained fraction written beside each bar."""
    set_style()
    t = table.iloc[::-1].reset_index(drop=True)
    kinds = list(dict.fromkeys(table["kind"]))
    colours = dict(zip(kinds, sns.color_palette(PALETTE, len(kinds))))
    fig, ax = plt.subplots(figsize=(7.5, 0.45 * len(t) + 1.2))
    y = np.arange(len(t))
    ig = t["IG"].to_numpy(float)
    err = np.vstack([ig - t["IG_lo"].to_numpy(float), t["IG_hi"].to_numpy(float) - ig])
    ax.barh(y, ig, xerr=np.nan_to_num(err), color=[colours[k] for k in t["kind"]], capsize=3)
    right = np.nanmax(np.r_[ig, t["IG_hi"].to_numpy(float)])
    for k, (hi, v, e) in enumerate(zip(t["IG_hi"].to_numpy(float), ig, t["explained_IG"].to_numpy(float))):
        if np.isfinite(e):
            ax.text(np.nanmax([hi, v, 0]) + 0.02 * right, k, f"{e:.0%}", va="center", fontsize=9)
    ax.set_yticks(y, t["model"])
    ax.set_xlim(min(0.0, float(np.nanmin(ig))) - 0.02 * right, 1.12 * right)
    ax.axvline(0, color="black", lw=0.8)
    ax.set(xlabel="IG over the centre bias (bit/fix; 95 % interval); explained fraction beside each bar")
    handles = [plt.Rectangle((0, 0), 1, 1, color=colours[k]) for k in kinds]
    ax.legend(handles, kinds, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=min(len(kinds), 4),
              fontsize=8, frameon=False)
    fig.tight_layout()
    return fig


def plot_map_evaluation(per_image: pd.DataFrame, fit: dict, summary: dict):
    """A folder of saliency maps benchmarked (``dgstudy evaluate --maps``): the fitted nonlinearity
    of every fold (log density added against the normalised map value), each image's AUC on its
    raw map against the same on the fitted density, and the sorted per-image IG (bit/fix)."""
    set_style()
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(12, 3.8))
    for f in fit["folds"]:
        y = np.asarray(f["nonlinearity"], dtype=float)
        a.plot(np.linspace(0, 1, len(y)), y, color="C0", alpha=0.6, lw=1)
    sig = np.median([f["blur_sigma_px"] for f in fit["folds"]])
    w = np.median([f["center_bias_weight"] for f in fit["folds"]])
    a.set(xlabel="map value (scaled to [0, 1])", ylabel="log density added (nats)",
          title=f"{len(fit['folds'])} folds; blur {sig:.1f} px, cb weight {w:.2f}")
    b.scatter(per_image["raw_AUC"], per_image["AUC"], s=10, alpha=0.7)
    lim = [float(np.nanmin(per_image[["raw_AUC", "AUC"]])), float(np.nanmax(per_image[["raw_AUC", "AUC"]]))]
    b.plot(lim, lim, color="black", lw=0.8, ls="--")
    b.set(xlabel="AUC of the raw map", ylabel="AUC of the fitted density", title="per image")
    ig = np.sort(per_image["IG"].to_numpy(dtype=float))
    c.bar(np.arange(len(ig)), ig, width=1.0)
    c.axhline(0, color="black", lw=0.8)
    c.set(xlabel="image (sorted)", ylabel="IG over the centre bias (bit/fix)",
          title=f"IG {summary.get('IG', float('nan')):.3f} bit/fix, explained "
                f"{summary.get('explained_IG', float('nan')):.0%}")
    fig.tight_layout()
    return fig


def plot_scale_transfer(table: pd.DataFrame, metric: str = "IG_run_cb", reference_width=None):
    """A run's ``metric`` (bit/fix, with its interval) on the same images shown at several widths,
    one line per prediction scale (``table``: :func:`dgstudy.transfer.scale_table`)."""
    set_style()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for k, (scale, g) in enumerate(table.groupby("scale", sort=False)):
        g = g.sort_values("width")
        y = g[metric].to_numpy(float)
        err = np.vstack([y - g[f"{metric}_lo"].to_numpy(float), g[f"{metric}_hi"].to_numpy(float) - y])
        ax.errorbar(g["width"] * (1 + 0.02 * k), y, yerr=err, fmt="o-", ms=5, capsize=3, label=scale)
    if reference_width is not None:
        ax.axvline(reference_width, color="grey", lw=0.8, ls=":", label="original width")
    ax.set_xscale("log")
    widths = sorted(table["width"].unique())
    ax.xaxis.set_major_locator(FixedLocator(widths))
    ax.xaxis.set_major_formatter(FixedFormatter([str(w) for w in widths]))
    ax.xaxis.set_minor_locator(NullLocator())          # no 3x10^2-style minor labels among them
    ax.axhline(0, color="black", lw=0.8)
    ax.set(xlabel="image width shown (px)", ylabel=METRIC_LABELS.get(metric, f"{metric} (bit/fix)"),
           title="the same images at other scales (95% image-bootstrap intervals)")
    handles, names = ax.get_legend_handles_labels()
    ax.legend(handles, [SCALE_LABELS.get(n, n) for n in names], title="prediction", fontsize="small")
    fig.tight_layout()
    return fig
