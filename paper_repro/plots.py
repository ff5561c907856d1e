"""Figures and display tables the notebooks share; every one reads only what the pipeline wrote."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from .data import KINDS, class_colours
from .settings import BASELINE, LossSettings

# The only figures the paper's abstract gives: PALS minus cross-entropy mIoU (points) on the
# Cityscapes *test* set at 10/30/50/100% of the training labels.
PAPER_CITYSCAPES_TEST_DELTAS = {10: 0.076, 30: 1.848, 50: 1.137, 100: 1.063}
METHOD_ORDER = [BASELINE, "ls", "pals"]
FIGURE_BACKGROUND = (225, 225, 225)  # VOC's background class in figures, light grey: its dark classes (cat 64,0,0) vanish on black

# Sanity bands for a real preset's `ce`: the supervised-only DeepLabV3+ ResNet-101 baselines that
# two semi-supervised segmentation papers report (U2PL, Wang et al. CVPR 2022, "SupOnly";
# UniMatch, Yang et al. CVPR 2023, "SupBaseline"), by dataset kind, as (labelled images, images
# in the training split, mIoU). Other papers' numbers with their own schedules, not this artifact's.
PUBLISHED_SUPERVISED = {
    ("cityscapes", "U2PL SupOnly"): [(186, 2975, 65.7), (372, 2975, 72.5), (744, 2975, 74.4), (1488, 2975, 77.8)],
    ("cityscapes", "UniMatch SupBaseline"): [(186, 2975, 66.3), (372, 2975, 72.8), (744, 2975, 75.0), (1488, 2975, 78.0)],
    ("voc", "U2PL SupOnly"): [(1464, 1464, 72.5)],
    ("voc", "UniMatch SupBaseline"): [(1464, 1464, 73.5)],
}


def describe_method(params: dict, method: str) -> str:
    """A method of ``params`` as a legend writes it: its loss and the parameters it reads (``pals: alpha 0.9, tau 0.1, T 1``)."""
    options = params["methods"][method]
    return LossSettings.of(options["loss"], {key: value for key, value in options.items() if key != "loss"}).describe()


def mean_std_table(table: pd.DataFrame, column: str, index: str = "method", columns: str = "percent") -> pd.DataFrame:
    """A pivot of ``"mean ± std"`` strings (2 decimals) from a report table with ``<column>_mean`` / ``_std``."""
    cells = table.assign(cell=table[f"{column}_mean"].map("{:.2f}".format) + " ± " + table[f"{column}_std"].map("{:.2f}".format))
    pivot = cells.pivot(index=index, columns=columns, values="cell")
    return pivot.reindex([m for m in METHOD_ORDER if m in pivot.index] + [m for m in pivot.index if m not in METHOD_ORDER])


def paired_delta_table(table: pd.DataFrame, column: str, index: str = "method", columns: str = "percent") -> pd.DataFrame:
    """A pivot of ``"difference [95% interval]"`` strings: each method's mean per-seed difference to
    ``ce`` with its paired t-interval (report columns ``<column>_delta_vs_ce``, ``_ci_low``, ``_ci_high``),
    marked ``*`` where the interval excludes 0."""
    rows = table[table["method"] != BASELINE]
    signed = "{:+.2f}".format
    cells = rows.assign(cell=rows[f"{column}_delta_vs_ce"].map(signed) + " [" + rows[f"{column}_ci_low"].map(signed) + ", "
                        + rows[f"{column}_ci_high"].map(signed) + "]" + rows[f"{column}_resolved"].map({True: " *", False: ""}))
    pivot = cells.pivot(index=index, columns=columns, values="cell")
    return pivot.reindex([m for m in METHOD_ORDER if m in pivot.index] + [m for m in pivot.index if m not in METHOD_ORDER])


def miou_vs_percent(runs: pd.DataFrame, dataset: str, ax: plt.Axes) -> None:
    """mIoU against the labelled percent per method: mean over seeds with a +-1 std band and the seeds as dots."""
    data = runs[runs["dataset"] == dataset]
    sns.lineplot(data=data, x="percent", y="miou", hue="method", hue_order=METHOD_ORDER, errorbar="sd", marker="o", ax=ax)
    sns.stripplot(data=data, x="percent", y="miou", hue="method", hue_order=METHOD_ORDER, native_scale=True,
                  dodge=False, jitter=False, alpha=0.4, size=3, legend=False, ax=ax)
    ax.set(title=dataset, xlabel="labelled training images (%)", ylabel="mIoU (%)", xticks=sorted(data["percent"].unique()))


def per_class_heatmap(per_class: pd.DataFrame, dataset: str, ax: plt.Axes) -> None:
    """Per-class IoU (mean over seeds) with methods x percents as rows and classes as columns."""
    data = per_class[(per_class["dataset"] == dataset) & per_class["iou_mean"].notna()]
    grid = data.pivot_table(index=["percent", "method"], columns="class", values="iou_mean", sort=False)
    sns.heatmap(grid, annot=True, fmt=".0f", cmap="viridis", vmin=0, vmax=100, cbar_kws={"label": "IoU (%)"}, ax=ax)
    ax.set(title=dataset, xlabel="", ylabel="labelled percent, method")


def reliability(metrics_files: list[Path]) -> pd.DataFrame:
    """Accuracy and mean confidence per confidence bin, summed over the given runs' ``metrics.json``."""
    counts = confidence = correct = 0
    for path in metrics_files:
        bins = json.loads(Path(path).read_text())["reliability"]
        counts = counts + np.asarray(bins["count"])
        confidence = confidence + np.asarray(bins["confidence_sum"])
        correct = correct + np.asarray(bins["correct"])
    with np.errstate(invalid="ignore", divide="ignore"):
        return pd.DataFrame({"bin_upper": np.arange(1, len(counts) + 1) / len(counts), "pixels": counts,
                             "confidence": confidence / counts, "accuracy": correct / counts})


def reliability_diagram(bins: pd.DataFrame, ax: plt.Axes, label: str) -> None:
    """Accuracy against confidence per bin; the diagonal is perfect calibration."""
    shown = bins[bins["pixels"] > 0]
    ax.plot(shown["confidence"], shown["accuracy"], marker="o", label=label)
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy")


def figure_colours(kind: str) -> np.ndarray:
    """``[256, 3]`` uint8 colours of a dataset kind's train ids in figures: the dataset's own palette (ignored pixels
    black), but VOC's background light grey, so that its darkest classes stand out."""
    colours = class_colours(kind).copy()
    if kind == "voc":
        colours[0] = FIGURE_BACKGROUND
    return colours


def colourise(label: np.ndarray, kind: str) -> np.ndarray:
    """Train-id labels ``[H, W]`` as the figure colours ``[H, W, 3]`` (:func:`figure_colours`)."""
    return figure_colours(kind)[label]


def class_handles(kind: str, labels: list[np.ndarray]) -> list[plt.Rectangle]:
    """Legend handles naming the figure colour of every class present in ``labels`` (train-id maps), and of
    ignored pixels if any."""
    present = sorted(set(np.concatenate([np.unique(label) for label in labels]).tolist()))
    colours, names = figure_colours(kind), KINDS[kind].classes
    return [plt.Rectangle((0, 0), 1, 1, facecolor=colours[k] / 255, edgecolor="grey", linewidth=0.5,
                          label=names[k] if k < len(names) else "ignored") for k in present]


def label_points(ax: plt.Axes, xs, ys, names, fontsize: int = 7) -> None:
    """Name each point beside it, choosing for each label (in order of x) the first of a few offsets whose text
    overlaps neither a label placed before nor a point."""
    figure = ax.figure
    renderer = figure.canvas.get_renderer()
    points = ax.transData.transform(np.column_stack([xs, ys]))
    placed = []
    offsets = [(4, 2, "left"), (4, -9, "left"), (-4, 2, "right"), (-4, -9, "right"), (4, 9, "left"), (4, -16, "left"),
               (-4, 9, "right"), (-4, -16, "right"), (4, 16, "left"), (-4, 16, "right")]
    for index in np.argsort(xs, kind="stable"):
        for dx, dy, align in offsets:
            text = ax.annotate(names[index], (xs[index], ys[index]), xytext=(dx, dy), textcoords="offset points",
                               fontsize=fontsize, ha=align, va="bottom")
            box = text.get_window_extent(renderer).expanded(1.05, 1.1)
            clear = not any(box.overlaps(other) for other in placed) and not any(
                box.contains(*point) for point in points)
            if clear or (dx, dy, align) == offsets[-1]:
                placed.append(box)
                break
            text.remove()


AGGREGATION_VARIANTS = {  # bench variant -> (its name in figures, colour, marker)
    "naive": ("materialised N x N affinity", "tab:red", "o"),
    "fused": ("fused attention (the method)", "tab:blue", "s"),
    "fused_pooled": ("fused, keys pooled", "tab:green", "^"),
}


def bench_scaling(aggregation: pd.DataFrame, time_ax: plt.Axes, memory_ax: plt.Axes) -> None:
    """Median time and peak memory of the PALS aggregation against N, log-log: a colour and marker per variant,
    a line style per class count (solid K = the first, dashed the next, with hollow markers, so that lines that
    coincide stay visible). Peaks under 1 MB, below the resident-set measurement's resolution, are left out of the
    memory plot, which says so."""
    styles = dict(zip(sorted(aggregation["classes"].unique()), (("-", "full"), ("--", "none"), (":", "none"))))
    for (variant, classes), rows in aggregation.groupby(["variant", "classes"], sort=False):
        rows = rows.sort_values("n")
        name, colour, marker = AGGREGATION_VARIANTS[variant]
        line, fill = styles[classes]
        style = {"color": colour, "marker": marker, "linestyle": line, "fillstyle": fill, "label": f"{name}, K = {classes}"}
        time_ax.plot(rows["n"], rows["median_s"], **style)
        measured = rows[rows["peak_mb"] >= 1]
        memory_ax.plot(measured["n"], measured["peak_mb"], **style)
    if (aggregation["peak_mb"] < 1).any():
        memory_ax.text(0.98, 0.02, "peaks under 1 MB not shown\n(below the measurement's resolution)", transform=memory_ax.transAxes,
                       ha="right", va="bottom", fontsize=7, color="grey")
    for ax, label in ((time_ax, "median time (s)"), (memory_ax, "peak memory (MB)")):
        ax.set(xscale="log", yscale="log", xlabel="N = h x w feature pixels per image", ylabel=label)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)


def margin_correlations(margins: pd.DataFrame) -> pd.DataFrame:
    """Per dataset, label percent and method but ``ce`` (and per dataset and percent over all those methods
    together, method ``all``): Pearson's r between the classes' mean target margin and their IoU difference to
    ``ce`` (``report.target_margins``), its 95% interval (Fisher's z: ``tanh(atanh(r) +- 1.96 / sqrt(n - 3))``)
    and the number of (method, class) points; r is empty for a method whose margin is the same for every class (``ls``)."""
    from scipy import stats

    rows = []
    points = margins[(margins["method"] != BASELINE) & margins["iou_minus_ce"].notna() & (margins["schedule"] == 1)]
    for (dataset, percent), group in points.groupby(["dataset", "percent"], sort=False):
        for method, part in [*group.groupby("method", sort=False), ("all", group)]:
            if len(part) < 4:
                continue
            if part["margin"].nunique() < 2:  # the same margin for every class (ls: 1 - eps): r is not defined
                rows.append({"dataset": dataset, "percent": percent, "method": method, "r": np.nan, "ci_low": np.nan, "ci_high": np.nan,
                             "points": len(part)})
                continue
            result = stats.pearsonr(part["margin"], part["iou_minus_ce"])
            interval = result.confidence_interval(0.95)
            rows.append({"dataset": dataset, "percent": percent, "method": method, "r": result.statistic,
                         "ci_low": interval.low, "ci_high": interval.high, "points": len(part)})
    return pd.DataFrame(rows, columns=["dataset", "percent", "method", "r", "ci_low", "ci_high", "points"]).round(3)


def gains_over_baseline(main: pd.DataFrame, comparisons: pd.DataFrame | None = None) -> pd.DataFrame:
    """Every method the study ran against ``ce`` at its own schedule: the main grid's (``main.csv``) and the sweep's
    variants (``ablation_comparisons.csv``, against ``ce``), each with its paired mIoU difference, 95% interval and
    p-value, and the p-values adjusted by Holm over all of them together (one family: every claim that some variant
    beats or trails ``ce`` somewhere; without a sweep, the main grid's alone); ``gain`` where the adjusted p-value is below
    0.05 and the difference positive."""
    from .report import LEVEL, holm

    grid = main[(main["method"] != BASELINE) & (main["schedule"] == 1)].rename(
        columns={"miou_delta_vs_ce": "difference", "miou_ci_low": "ci_low", "miou_ci_high": "ci_high", "miou_p": "p"})
    columns = ["dataset", "method", "percent", "difference", "ci_low", "ci_high", "p"]
    parts = [grid[columns]]
    if comparisons is not None:
        parts.append(comparisons[(comparisons["metric"] == "miou") & (comparisons["reference"] == BASELINE)][columns])
    family = pd.concat(parts, ignore_index=True)
    family["p_holm"] = holm(family["p"])
    family["gain"] = (family["p_holm"] < 1 - LEVEL) & (family["difference"] > 0)
    family["comparisons"] = int(family["p"].notna().sum())
    return family.round(4)


def published_supervised() -> pd.DataFrame:
    """:data:`PUBLISHED_SUPERVISED` as a table: kind, source, labelled, images, percent, miou."""
    return pd.DataFrame([{"kind": kind, "source": source, "labelled": labelled, "images": images,
                          "percent": round(100 * labelled / images, 2), "miou": miou}
                         for (kind, source), points in PUBLISHED_SUPERVISED.items() for labelled, images, miou in points])


def sanity_bands(main: pd.DataFrame, params: dict) -> pd.DataFrame:
    """The study's ``ce`` mean on each *real* dataset (no ``generate:``) beside the published
    supervised baselines at the same labelled percent: each source's value interpolated linearly in
    log(percent) between its published splits (none outside them), the band is their [min, max],
    and ``outside`` the points by which the mean misses the band (0 inside it)."""
    published, rows = published_supervised(), []
    for (dataset, percent), ce in main[main["method"] == BASELINE].set_index(["dataset", "percent"]).iterrows():
        spec = params["datasets"][dataset]
        if spec.get("generate") is not None:
            continue
        values = []
        for _, points in published[published["kind"] == spec["kind"]].groupby("source"):
            points = points.sort_values("percent")
            if points["percent"].min() <= percent <= points["percent"].max():
                values.append(float(np.interp(np.log(percent), np.log(points["percent"]), points["miou"])))
        low, high = (min(values), max(values)) if values else (np.nan, np.nan)
        outside = max(low - ce["miou_mean"], ce["miou_mean"] - high, 0.0) if values else np.nan
        rows.append({"dataset": dataset, "percent": percent, "ce_mean": ce["miou_mean"], "ce_std": ce["miou_std"],
                     "band_low": low, "band_high": high, "outside": outside})
    return pd.DataFrame(rows, columns=["dataset", "percent", "ce_mean", "ce_std", "band_low", "band_high", "outside"])
