"""The ``report`` stage: runs -> tables of mean, standard deviation and number of seeds per
dataset, method and label percent, with the difference of the means to ``ce`` and the paired
statistics of the per-seed differences to ``ce`` (mean, 95% t-interval, number of pairs,
whether the interval excludes 0).

Reads the ``metrics.json`` of every run of the study (and of the ablation) and writes CSV
tables; the notebooks read these tables, nothing downstream recomputes them.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from .atomic import write_table
from .layout import Layout, Run
from .settings import ABLATED, BASELINE, Settings

log = logging.getLogger(__name__)
GROUP = ["dataset", "method", "percent"]


def read_metrics(run: Run, layout: Layout) -> dict:
    path = layout.metrics(run)
    if not path.is_file():
        raise FileNotFoundError(f"missing metrics {path}; run its run stage (train, then evaluate) first")
    return json.loads(path.read_text())


def load_runs(runs: list[Run], layout: Layout) -> pd.DataFrame:
    """One row per run: dataset, method, percent, seed, miou, pixel_accuracy, ece, iou_<class>..."""
    records = []
    for run in runs:
        metrics = read_metrics(run, layout)
        records.append({"dataset": run.dataset, "method": run.method, "percent": run.percent, "seed": run.seed,
                        "miou": metrics["miou"], "pixel_accuracy": metrics["pixel_accuracy"], "ece": metrics["ece"]}
                       | {f"iou_{name}": value for name, value in metrics["iou"].items()})
    return pd.DataFrame.from_records(records)


def summarise(runs: pd.DataFrame, column: str) -> pd.DataFrame:
    """Mean, sample standard deviation and n over seeds, plus the mean's difference to ``ce``."""
    if BASELINE not in set(runs["method"]):
        raise ValueError(f"the runs hold no {BASELINE} baseline to measure differences against (methods: {sorted(set(runs['method']))})")
    table = runs.groupby(GROUP, sort=False)[column].agg(["mean", "std", "count"]).reset_index()
    table.columns = GROUP + [f"{column}_mean", f"{column}_std", "n"]
    baseline = table[table["method"] == BASELINE].set_index(["dataset", "percent"])[f"{column}_mean"]
    keys = pd.MultiIndex.from_frame(table[["dataset", "percent"]])
    table[f"{column}_delta_vs_ce"] = table[f"{column}_mean"].to_numpy() - baseline.reindex(keys).to_numpy()
    return table.round(4)


def paired_differences(runs: pd.DataFrame, column: str) -> pd.DataFrame:
    """Per dataset, method and percent: a 95% t-interval for the mean of the per-seed differences
    to ``ce`` of ``column`` (within a seed every method shares subset, initialisation and data
    order, docs/method.md section 5; that mean is :func:`summarise`'s ``<column>_delta_vs_ce``),
    the number of pairs, and ``resolved`` when the interval excludes 0."""
    baseline = runs[runs["method"] == BASELINE].set_index(["dataset", "percent", "seed"])[column]
    keys = pd.MultiIndex.from_frame(runs[["dataset", "percent", "seed"]])
    pairs = runs.assign(difference=runs[column].to_numpy() - baseline.reindex(keys).to_numpy()).dropna(subset=["difference"])
    rows = []
    for (dataset, method, percent), group in pairs.groupby(GROUP, sort=False):
        differences = group["difference"].to_numpy()
        n, mean = len(differences), differences.mean()
        if n > 1 and differences.std(ddof=1) > 0:
            low, high = stats.t.interval(0.95, n - 1, loc=mean, scale=differences.std(ddof=1) / np.sqrt(n))
        elif n > 1:  # identical differences in every seed: the interval is that value
            low = high = mean
        else:
            low = high = np.nan
        rows.append({"dataset": dataset, "method": method, "percent": percent, f"{column}_ci_low": low,
                     f"{column}_ci_high": high, f"{column}_pairs": n, f"{column}_resolved": bool(low > 0 or high < 0)})
    return pd.DataFrame.from_records(rows)


def with_paired(runs: pd.DataFrame, column: str) -> pd.DataFrame:
    """:func:`summarise` beside :func:`paired_differences` of ``column``."""
    return summarise(runs, column).merge(paired_differences(runs, column).round(4), on=GROUP)


def per_class(runs: list[Run], layout: Layout) -> pd.DataFrame:
    """Long table: dataset, method, percent, class (each dataset's own classes, in its order), IoU mean,
    std and n over the seeds where the class occurs in the evaluation split (its IoU is defined)."""
    long = pd.DataFrame.from_records(
        [{"dataset": run.dataset, "method": run.method, "percent": run.percent, "class": name, "iou": iou}
         for run in runs for name, iou in read_metrics(run, layout)["iou"].items()]).astype({"iou": float})
    table = long.groupby(GROUP + ["class"], sort=False)["iou"].agg(["mean", "std", "count"]).reset_index()
    table.columns = GROUP + ["class", "iou_mean", "iou_std", "n"]
    return table.round(4)


def report(settings: Settings, layout: Layout = Layout()) -> dict[str, Path]:
    """Write the study's tables; returns their paths by name."""
    study = settings.study.runs()
    runs = load_runs(study, layout)
    tables = {
        "runs": runs.round(4),
        "main": with_paired(runs, "miou"),
        "calibration": with_paired(runs, "ece").merge(summarise(runs, "pixel_accuracy").drop(columns="n"), on=GROUP),
        "per_class": per_class(study, layout),
    }
    if settings.ablation:  # the ablation's variants beside the study's ce and pals runs of the same percents and seeds
        ablation = load_runs(settings.ablation.runs((BASELINE, ABLATED, *settings.ablation.methods)), layout)
        tables["ablation"] = with_paired(ablation, "miou").merge(with_paired(ablation, "ece").drop(columns="n"), on=GROUP)
    paths = {}
    for name, table in tables.items():
        paths[name] = layout.table(name)
        write_table(table, paths[name])
        log.info("wrote %s table %s", name, paths[name])
    return paths
