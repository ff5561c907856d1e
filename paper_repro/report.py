"""Runs -> tables: mean, standard deviation and number of seeds per dataset, method and fraction.

Reads the ``metrics.json`` of every run of the study and writes CSV tables to
``results/tables/``; the notebooks read these tables, nothing downstream recomputes them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from .atomic import atomic_file
from .config import RESULTS_DIR, metrics_path, run_name

GROUP = ["dataset", "method", "percent"]


def load_runs(params: dict, section: str = "study", extra_methods: tuple[str, ...] = ()) -> pd.DataFrame:
    """One row per run of ``params[section]`` (plus ``extra_methods``): dataset, method, percent, seed, miou, ..."""
    records = []
    runs = params[section]
    for dataset in runs["datasets"]:
        for method in [*extra_methods, *runs["methods"]]:
            for percent in runs["fractions"]:
                for seed in runs["seeds"]:
                    path = metrics_path(dataset, run_name(method, percent, seed))
                    if not path.is_file():
                        raise FileNotFoundError(f"missing metrics {path}; run the evaluate stage for it first")
                    metrics = json.loads(path.read_text())
                    records.append({"dataset": dataset, "method": method, "percent": percent, "seed": seed,
                                    "miou": metrics["miou"], "pixel_accuracy": metrics["pixel_accuracy"], "ece": metrics["ece"]}
                                   | {f"iou_{name}": value for name, value in metrics["iou"].items()})
    return pd.DataFrame.from_records(records)


def summarise(runs: pd.DataFrame, column: str) -> pd.DataFrame:
    """Mean, sample standard deviation and n over seeds, plus the mean's difference to ``ce``."""
    table = runs.groupby(GROUP, sort=False)[column].agg(["mean", "std", "count"]).reset_index()
    table.columns = GROUP + [f"{column}_mean", f"{column}_std", "n"]
    baseline = table[table["method"] == "ce"].set_index(["dataset", "percent"])[f"{column}_mean"]
    keys = pd.MultiIndex.from_frame(table[["dataset", "percent"]])
    table[f"{column}_delta_vs_ce"] = table[f"{column}_mean"].to_numpy() - baseline.reindex(keys).to_numpy()
    return table.round(4)


def per_class(runs: pd.DataFrame) -> pd.DataFrame:
    """Long table: dataset, method, percent, class, IoU mean and std over seeds."""
    long = runs.melt(id_vars=GROUP + ["seed"], value_vars=[c for c in runs if c.startswith("iou_")], var_name="class", value_name="iou")
    long["class"] = long["class"].str.removeprefix("iou_")
    table = long.groupby(GROUP + ["class"], sort=False)["iou"].agg(["mean", "std", "count"]).reset_index()
    table.columns = GROUP + ["class", "iou_mean", "iou_std", "n"]
    return table.round(4)


def write_csv(table: pd.DataFrame, path: Path) -> None:
    with atomic_file(path) as temporary:
        table.to_csv(temporary, index=False)


def report(params: dict) -> dict[str, Path]:
    """Write the study's tables; returns their paths by name."""
    runs = load_runs(params)
    tables = {
        "runs": runs.round(4),
        "main": summarise(runs, "miou"),
        "calibration": summarise(runs, "ece").merge(summarise(runs, "pixel_accuracy").drop(columns="n"), on=GROUP),
        "per_class": per_class(runs),
    }
    if "ablation" in params:  # the ablation's variants beside ce and pals of the same runs' fractions and seeds
        ablation = load_runs(params, "ablation", extra_methods=("ce", "pals"))
        tables["ablation"] = summarise(ablation, "miou").merge(summarise(ablation, "ece").drop(columns="n"), on=GROUP)
    paths = {}
    for name, table in tables.items():
        paths[name] = RESULTS_DIR / "tables" / f"{name}.csv"
        write_csv(table, paths[name])
    return paths
