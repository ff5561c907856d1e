"""The settings of the two commands that are not pipeline stages, ``bench`` and ``launch``: read from the
same parameter file, under ``bench:`` and ``launch:``, by the rules of ``settings.py``.

No stage loads this module (``dvc.yaml`` lists none as a dependency), so editing a tool's schema
makes no run of the study stale.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .config import read_params
from .errors import ParamsError
from .settings import MODELS, NON_EMPTY_STRING, NON_NEGATIVE_INTEGER, POSITIVE_INTEGER, Rule, Section, non_empty_list

EXECUTORS = ("local", "slurm")


@dataclass(frozen=True)
class BenchSettings:
    """``python -m paper_repro bench`` (``paper_repro/bench.py``)."""

    tokens: tuple[int, ...]  # N = h*w feature pixels per image of the aggregation cases
    naive_max_tokens: int
    token_budget: int
    dim: int
    classes: tuple[int, ...]
    batch: int
    repeats: int
    step_repeats: int
    models: tuple[dict, ...]  # {name, dataset} or {name, size, batch, classes}
    loader_datasets: tuple[str, ...]
    loader_batches: int


@dataclass(frozen=True)
class SlurmSettings:
    partition: str | None
    time_minutes: int
    cpus_per_job: int
    mem_gb: int
    setup: tuple[str, ...]


@dataclass(frozen=True)
class LaunchSettings:
    """``python -m paper_repro launch`` (``paper_repro/launch.py``)."""

    executor: str  # one of EXECUTORS
    workers: int | str  # local jobs at once, or "auto"
    gpus_per_job: int
    attempts: int
    folder: str
    slurm: SlurmSettings


def tool_section(path: str | Path, overrides: list[str] | tuple[str, ...], name: str) -> tuple[Section, dict]:
    """``(section name of the parameters, the whole tree)``; a one-line error if the file has no such section."""
    params = read_params(path, overrides)
    if name not in params:
        raise ParamsError(f"{path}: no {name}: section (see params.yaml)")
    top = Section(params, "", str(path))
    return top.section(name), params


def load_bench(path: str | Path = "params.yaml", overrides: list[str] | tuple[str, ...] = ()) -> BenchSettings:
    bench, params = tool_section(path, overrides, "bench")
    datasets = params.get("datasets", {})
    positive = {key: bench.get(key, POSITIVE_INTEGER) for key in ("naive_max_tokens", "dim", "batch", "repeats", "step_repeats", "loader_batches")}
    lists = {key: tuple(bench.get(key, non_empty_list())) for key in ("tokens", "classes", "models")}
    for index, entry in enumerate(lists["models"]):
        prefix = f"bench.models[{index}]"
        if not isinstance(entry, dict) or entry.get("name") not in MODELS:
            bench.fail(f"{prefix} must name a model ({', '.join(MODELS)}), got {entry!r}")
        if "dataset" in entry:
            if entry["dataset"] not in datasets:
                bench.fail(f"{prefix}.dataset names {entry['dataset']!r}, which is not under datasets")
        elif not all(key in entry for key in ("size", "batch", "classes")):
            bench.fail(f"{prefix} must give a dataset, or size, batch and classes, got {entry!r}")
    return BenchSettings(**positive, **lists, token_budget=bench.get("token_budget", NON_NEGATIVE_INTEGER),
                         loader_datasets=bench.names("loader_datasets", datasets, "datasets"))


def load_launch(path: str | Path = "params.yaml", overrides: list[str] | tuple[str, ...] = ()) -> LaunchSettings:
    """How ``python -m paper_repro launch`` runs the runs' stages (``paper_repro/launch.py``)."""
    launch, _ = tool_section(path, overrides, "launch")
    slurm = launch.section("slurm")
    return LaunchSettings(
        executor=launch.get("executor", Rule(lambda v: v in EXECUTORS, " or ".join(EXECUTORS))),
        workers=launch.get("workers", Rule(lambda v: v == "auto" or POSITIVE_INTEGER(v), "auto (one per visible GPU, else 1) or a positive integer")),
        gpus_per_job=launch.get("gpus_per_job", NON_NEGATIVE_INTEGER),
        attempts=launch.get("attempts", POSITIVE_INTEGER),
        folder=launch.get("folder", NON_EMPTY_STRING),
        slurm=SlurmSettings(
            partition=slurm.get("partition", Rule(lambda v: v is None or NON_EMPTY_STRING(v), "a partition name or null")),
            **{key: slurm.get(key, POSITIVE_INTEGER) for key in ("time_minutes", "cpus_per_job", "mem_gb")},
            setup=tuple(slurm.get("setup", Rule(lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
                                                "a list of shell lines run before each job")))))
