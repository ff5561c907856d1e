"""The ``report`` stage: runs -> tables of mean, standard deviation and number of seeds per
dataset, method, label percent and schedule, with the difference of the means to ``ce`` and the
paired statistics of the per-seed differences to ``ce`` (95% t-interval, number of pairs, the
paired t-test's p-value, whether the interval excludes 0).

Reads the ``metrics.json`` of every run of the study, the ablation, the schedule and the scale
checks and writes CSV tables; the notebooks read these tables, nothing downstream recomputes them. The
ablation's table compares every variant with ``ce`` and with ``pals`` and adjusts the p-values of
all those comparisons together by Holm's step-down method. ``margins.csv`` averages what each
method's target asks of each class (docs/method.md, section 7) beside the class's IoU difference to ``ce``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from .atomic import write_table
from .layout import Layout, Run
from .settings import ABLATED, BASELINE, EvaluateSettings, Settings

log = logging.getLogger(__name__)
GROUP = ["dataset", "method", "percent", "schedule"]
CELL = ["dataset", "percent", "schedule"]  # where methods are compared
PAIRING = [*CELL, "seed"]  # what a method's run shares with its reference's run
LEVEL = 0.95


def read_metrics(run: Run, layout: Layout) -> dict:
    path = layout.metrics(run)
    if not path.is_file():
        raise FileNotFoundError(f"missing metrics {path}; run its dataset's runs stage (train, then evaluate) first")
    return json.loads(path.read_text())


def load_runs(runs: list[Run], layout: Layout) -> pd.DataFrame:
    """One row per run: dataset, method, percent, schedule, seed, miou, pixel_accuracy, ece, the mIoU and
    accuracy of the boundary band and of the interior, iou_<class>..."""
    records = []
    for run in runs:
        metrics = read_metrics(run, layout)
        records.append({"dataset": run.dataset, "method": run.method, "percent": run.percent, "schedule": run.schedule, "seed": run.seed,
                        "miou": metrics["miou"], "pixel_accuracy": metrics["pixel_accuracy"], "ece": metrics["ece"]}
                       | {f"{region}_{score}": metrics[region][score] for region in EvaluateSettings.REGIONS for score in ("miou", "pixel_accuracy")}
                       | {f"iou_{name}": value for name, value in metrics["iou"].items()})
    return pd.DataFrame.from_records(records)


def summarise(runs: pd.DataFrame, column: str) -> pd.DataFrame:
    """Mean, sample standard deviation and n over seeds, plus the mean's difference to ``ce``."""
    if BASELINE not in set(runs["method"]):
        raise ValueError(f"the runs hold no {BASELINE} baseline to measure differences against (methods: {sorted(set(runs['method']))})")
    table = runs.groupby(GROUP, sort=False)[column].agg(["mean", "std", "count"]).reset_index()
    table.columns = GROUP + [f"{column}_mean", f"{column}_std", "n"]
    baseline = table[table["method"] == BASELINE].set_index(CELL)[f"{column}_mean"]
    keys = pd.MultiIndex.from_frame(table[CELL])
    table[f"{column}_delta_vs_ce"] = table[f"{column}_mean"].to_numpy() - baseline.reindex(keys).to_numpy()
    return table.round(4)


def paired_differences(runs: pd.DataFrame, column: str, reference: str = BASELINE) -> pd.DataFrame:
    """Per dataset, method, percent and schedule: the mean of the per-seed differences to ``reference``
    of ``column`` (within a seed every method shares subset, initialisation and data order,
    docs/method.md section 5), its 95% t-interval, the number of pairs, the two-sided paired
    t-test's p-value, and ``resolved`` when the interval excludes 0."""
    base = runs[runs["method"] == reference].set_index(PAIRING)[column]
    keys = pd.MultiIndex.from_frame(runs[PAIRING])
    pairs = runs.assign(difference=runs[column].to_numpy() - base.reindex(keys).to_numpy()).dropna(subset=["difference"])
    rows = [dict(zip(GROUP, key)) | {f"{column}_{name}": value for name, value in t_interval(group["difference"].to_numpy()).items()}
            for key, group in pairs.groupby(GROUP, sort=False)]
    return pd.DataFrame.from_records(rows)


def t_interval(differences: np.ndarray) -> dict:
    """The mean of paired ``differences``, its 95% t-interval, the number of pairs, the two-sided t-test's
    p-value, and ``resolved`` when the interval excludes 0."""
    n, mean = len(differences), differences.mean()
    spread = differences.std(ddof=1) if n > 1 else np.nan
    if n > 1 and spread > 0:
        low, high = stats.t.interval(LEVEL, n - 1, loc=mean, scale=spread / np.sqrt(n))
        p = stats.ttest_1samp(differences, 0.0).pvalue
    elif n > 1:  # identical differences in every seed: the interval is that value
        low = high = mean
        p = 1.0 if mean == 0 else 0.0
    else:
        low = high = p = np.nan
    return {"difference": mean, "ci_low": low, "ci_high": high, "pairs": n, "p": p, "resolved": bool(low > 0 or high < 0)}


def holm(p_values) -> np.ndarray:
    """Holm's step-down adjustment of a family of p-values (same order; NaN stays NaN, outside the family):
    the k-th smallest of m is multiplied by m - k + 1, then made non-decreasing in that order, capped at 1."""
    p = np.asarray(p_values, dtype=float)
    adjusted = np.full_like(p, np.nan)
    present = np.flatnonzero(~np.isnan(p))
    order = present[np.argsort(p[present], kind="stable")]
    scaled = p[order] * (len(order) - np.arange(len(order)))
    adjusted[order] = np.minimum(np.maximum.accumulate(scaled), 1.0)
    return adjusted


def with_paired(runs: pd.DataFrame, column: str) -> pd.DataFrame:
    """:func:`summarise` beside :func:`paired_differences` of ``column`` to ``ce`` (whose mean difference
    is the summary's ``<column>_delta_vs_ce`` where every seed is paired)."""
    paired = paired_differences(runs, column).drop(columns=f"{column}_difference")
    return summarise(runs, column).merge(paired.round(4), on=GROUP)


def comparisons(runs: pd.DataFrame, columns: tuple[str, ...], references: tuple[str, ...]) -> pd.DataFrame:
    """Long table: every method that is not a reference against each reference, for each column
    (``metric``): the paired statistics of :func:`paired_differences`, and the p-values adjusted by
    :func:`holm` over the whole family of one metric (every variant, reference, dataset and percent),
    with ``resolved_holm`` when the adjusted p-value is below 1 - 0.95."""
    tables = []
    for column in columns:
        family = []
        for reference in references:
            paired = paired_differences(runs, column, reference)
            paired = paired[~paired["method"].isin(references)].rename(columns=lambda name: name.removeprefix(f"{column}_"))
            family.append(paired.assign(metric=column, reference=reference))
        family = pd.concat(family, ignore_index=True)
        family["p_holm"] = holm(family["p"])
        family["resolved_holm"] = family["p_holm"] < 1 - LEVEL
        family["comparisons"] = int(family["p"].notna().sum())
        tables.append(family)
    order = ["metric", "reference", *GROUP, "difference", "ci_low", "ci_high", "pairs", "p", "p_holm", "resolved", "resolved_holm", "comparisons"]
    return pd.concat(tables, ignore_index=True)[order].round(4)


def per_class(runs: list[Run], layout: Layout) -> pd.DataFrame:
    """Long table: dataset, method, percent, class (each dataset's own classes, in its order), IoU mean,
    std and n over the seeds where the class occurs in the evaluation split (its IoU is defined)."""
    long = pd.DataFrame.from_records(
        [{"dataset": run.dataset, "method": run.method, "percent": run.percent, "schedule": run.schedule, "class": name, "iou": iou}
         for run in runs for name, iou in read_metrics(run, layout)["iou"].items()]).astype({"iou": float})
    table = long.groupby(GROUP + ["class"], sort=False)["iou"].agg(["mean", "std", "count"]).reset_index()
    table.columns = GROUP + ["class", "iou_mean", "iou_std", "n"]
    return table.round(4)


def timing(runs: list[Run], layout: Layout) -> pd.DataFrame:
    """Per run group (dataset, method, percent, schedule), means over seeds of what each run's training log
    measured: the median seconds per iteration (data loading and step, ``seconds_per_iteration``), the
    training's seconds in all (``training_seconds``) and its threads (the most frequent per run). A run without
    a log (metrics written by hand) adds no row."""
    records = []
    for run in runs:
        if not layout.log(run).is_file():
            continue
        log_table = pd.read_csv(layout.log(run))
        seconds = log_table["data_seconds"] + log_table["step_seconds"]
        records.append({"dataset": run.dataset, "method": run.method, "percent": run.percent, "schedule": run.schedule,
                        "seconds_per_iteration": seconds.median(), "training_seconds": seconds.sum(),
                        "iterations": len(log_table), "threads": int(log_table["threads"].mode().iloc[0])})
    columns = [*GROUP, "seconds_per_iteration", "training_seconds", "iterations", "threads", "seeds"]
    if not records:
        return pd.DataFrame(columns=columns)
    table = pd.DataFrame.from_records(records).groupby(GROUP, sort=False)
    summary = table[["seconds_per_iteration", "training_seconds", "iterations", "threads"]].mean()
    summary["seeds"] = table.size()
    return summary.reset_index().round(4)


def target_margins(runs: list[Run], layout: Layout) -> pd.DataFrame:
    """Long table: per run group (dataset, method, percent, schedule) and class, the means over seeds of what the
    method's target asks at the class's labelled pixels of the runs' training images (``paper_repro/margins.py``:
    ``label_mass``, ``rival_mass``, ``margin``, ``q_elsewhere``), the rival class most runs name, the number of
    seeds, and the mean over seeds of the class's IoU minus ``ce``'s on the same seed (``iou_minus_ce``; empty
    where ``ce`` was not run alike). Runs whose metrics hold no ``targets`` (written before they were recorded)
    add no rows."""
    named = set(runs)
    records = []
    for run in runs:
        metrics = read_metrics(run, layout)
        baseline = replace(run, method=BASELINE)
        baseline_iou = read_metrics(baseline, layout)["iou"] if baseline in named else {}
        for name, row in metrics.get("targets", {}).items():
            iou, reference = metrics["iou"].get(name), baseline_iou.get(name)
            difference = iou - reference if iou is not None and reference is not None else np.nan
            records.append({"dataset": run.dataset, "method": run.method, "percent": run.percent, "schedule": run.schedule, "class": name,
                            **{key: row[key] for key in ("label_mass", "rival_mass", "margin", "rival")},
                            "q_elsewhere": np.nan if row["q_elsewhere"] is None else row["q_elsewhere"], "iou_minus_ce": difference})
    columns = [*GROUP, "class", "label_mass", "rival_mass", "margin", "q_elsewhere", "rival", "seeds", "iou_minus_ce"]
    if not records:
        return pd.DataFrame(columns=columns)
    long = pd.DataFrame.from_records(records)
    grouped = long.groupby(GROUP + ["class"], sort=False)
    table = grouped[["label_mass", "rival_mass", "margin", "q_elsewhere", "iou_minus_ce"]].mean()
    table["rival"] = grouped["rival"].agg(lambda names: names.mode().iloc[0])
    table["seeds"] = grouped.size()
    return table.reset_index()[columns].round(4)


def scale_check(settings: Settings, layout: Layout) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The scale check's runs beside the same runs at 1x. ``scale``: per dataset (the one drawn larger is a dataset
    of its own, ``scale`` times the size of ``drawn_from``), method and percent, :func:`with_paired` of mIoU and ECE.
    ``scale_change``: per method but ``ce`` and percent, the change of its paired mIoU difference to ``ce`` from 1x
    to the larger scale, seed by seed (:func:`t_interval`)."""
    larger = settings.scale.runs()
    runs = load_runs([replace(run, dataset=settings.dataset(run.dataset).scaled_from) for run in larger] + larger, layout)
    runs.insert(1, "drawn_from", [settings.dataset(name).scaled_from or name for name in runs["dataset"]])
    runs.insert(2, "scale", [settings.dataset(name).scale for name in runs["dataset"]])
    table = with_paired(runs, "miou").merge(with_paired(runs, "ece").drop(columns="n"), on=GROUP)
    table = runs[["dataset", "drawn_from", "scale"]].drop_duplicates().merge(table, on="dataset")
    baseline = runs[runs["method"] == BASELINE].set_index(["dataset", "percent", "seed"])["miou"]
    runs["vs_ce"] = runs["miou"].to_numpy() - baseline.reindex(pd.MultiIndex.from_frame(runs[["dataset", "percent", "seed"]])).to_numpy()
    wide = runs[runs["method"] != BASELINE].pivot_table(index=["drawn_from", "method", "percent", "seed"], columns="scale", values="vs_ce")
    factor = settings.dataset(larger[0].dataset).scale
    change = (wide[factor] - wide[1]).dropna().rename("change").reset_index()
    rows = [{"drawn_from": drawn_from, "scale": factor, "method": method, "percent": percent}
            | {f"miou_{name}": value for name, value in t_interval(group["change"].to_numpy()).items()}
            for (drawn_from, method, percent), group in change.groupby(["drawn_from", "method", "percent"], sort=False)]
    return table, pd.DataFrame.from_records(rows).round(4)


def report(settings: Settings, layout: Layout = Layout()) -> dict[str, Path]:
    """Write the study's tables; returns their paths by name."""
    study_runs = settings.study.runs()
    runs = load_runs(study_runs, layout)
    tables = {
        "runs": runs.round(4),
        "main": with_paired(runs, "miou"),
        "calibration": with_paired(runs, "ece").merge(summarise(runs, "pixel_accuracy").drop(columns="n"), on=GROUP),
        "boundary": with_paired(runs, "boundary_miou").merge(with_paired(runs, "interior_miou").drop(columns="n"), on=GROUP),
        "per_class": per_class(study_runs, layout),
        "margins": target_margins(settings.runs(), layout),
        "timing": timing(settings.runs(), layout),
    }
    if settings.ablation:  # the ablation's variants beside the study's ce and pals runs of the same percents and seeds
        ablation = load_runs(settings.ablation.runs((BASELINE, ABLATED, *settings.ablation.methods)), layout)
        tables["ablation"] = summarise(ablation, "miou").merge(summarise(ablation, "ece").drop(columns="n"), on=GROUP)
        tables["ablation_comparisons"] = comparisons(ablation, ("miou", "ece"), (BASELINE, ABLATED))
    if settings.schedule:  # the longer runs beside the study's runs of the same methods, percents and seeds
        longer = settings.schedule
        same = replace(longer, schedule=1)
        both = load_runs(same.runs() + longer.runs(), layout)
        tables["schedule"] = with_paired(both, "miou").merge(with_paired(both, "ece").drop(columns="n"), on=GROUP)
    if settings.scale:  # the runs on the datasets drawn larger beside the same runs at 1x
        tables["scale"], tables["scale_change"] = scale_check(settings, layout)
    paths = {}
    for name, table in tables.items():
        paths[name] = layout.table(name)
        write_table(table, paths[name])
        log.info("wrote %s table %s", name, paths[name])
    return paths
