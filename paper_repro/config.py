"""Parameters: ``params.yaml`` (or a preset file) plus ``--set dotted.key=value`` overrides.

``params.yaml`` is the single source of every parameter; each stage reads the sections it
needs through :func:`load_params` and names the run it works on with :func:`run_name`.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

DATASET_KINDS = ("cityscapes", "voc")


class ParamsError(ValueError):
    """A parameter file or override that cannot be used; the message names the key."""


def apply_override(params: dict, assignment: str) -> None:
    """Apply ``dotted.key=value`` in place; the value is parsed as YAML (``0.5``, ``[1, 2]``, ``true``)."""
    if "=" not in assignment:
        raise ParamsError(f"--set expects dotted.key=value, got {assignment!r}")
    key, raw = assignment.split("=", 1)
    parts = key.strip().split(".")
    node = params
    for depth, part in enumerate(parts[:-1]):
        if not isinstance(node.get(part), dict):
            raise ParamsError(f"--set {key}: {'.'.join(parts[: depth + 1])} is not a section of the parameters")
        node = node[part]
    if parts[-1] not in node:
        raise ParamsError(f"--set {key}: unknown parameter (known here: {', '.join(node)})")
    node[parts[-1]] = yaml.safe_load(raw)


def load_params(path: str | Path = "params.yaml", overrides: list[str] | tuple[str, ...] = ()) -> dict:
    """Read the parameter file, apply overrides and validate what every stage relies on."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"parameter file {path} does not exist")
    try:
        params = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ParamsError(f"{path}: not valid YAML ({error})") from error
    if not isinstance(params, dict):
        raise ParamsError(f"{path}: expected a mapping of sections")
    params = copy.deepcopy(params)
    for assignment in overrides:
        apply_override(params, assignment)
    validate(params, path)
    return params


def _require(params: dict, dotted: str, source: Path, kind: type | tuple[type, ...], check=None, expected: str = "") -> Any:
    node: Any = params
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise ParamsError(f"{source}: missing parameter {dotted}")
        node = node[part]
    if (isinstance(node, bool) and kind is not bool) or not isinstance(node, kind):
        raise ParamsError(f"{source}: {dotted} must be {expected or kind}, got {node!r}")
    if check is not None and not check(node):
        raise ParamsError(f"{source}: {dotted} must be {expected}, got {node!r}")
    return node


def validate(params: dict, source: Path) -> None:
    """Check types and ranges of the parameters the stages read; raise :class:`ParamsError`."""
    number = (int, float)
    datasets = _require(params, "datasets", source, dict)
    for name in _require(params, "study.datasets", source, list, lambda v: len(v) > 0, "a non-empty list"):
        if name not in datasets:
            raise ParamsError(f"{source}: study.datasets names {name!r}, which is not under datasets ({', '.join(datasets)})")
    for name, spec in datasets.items():
        prefix = f"datasets.{name}"
        _require(params, f"{prefix}.kind", source, str, lambda v: v in DATASET_KINDS, f"one of {DATASET_KINDS}")
        _require(params, f"{prefix}.root", source, str)
        _require(params, f"{prefix}.num_classes", source, int, lambda v: v >= 2, "an integer >= 2")
        _require(params, f"{prefix}.crop", source, list, lambda v: len(v) == 2 and all(isinstance(x, int) and x > 0 for x in v), "[height, width] of positive integers")
        _require(params, f"{prefix}.base_size", source, int, lambda v: v > 0, "a positive integer")
        if spec.get("generate") is not None:
            for field in ("n_train", "n_val", "height", "width", "seed"):
                _require(params, f"{prefix}.generate.{field}", source, int, lambda v: v >= 0, "a non-negative integer")
    fractions = _require(params, "study.fractions", source, list, lambda v: len(v) > 0, "a non-empty list")
    for percent in fractions:
        if not isinstance(percent, int) or isinstance(percent, bool) or not 0 < percent <= 100:
            raise ParamsError(f"{source}: study.fractions must hold integer percents in (0, 100], got {percent!r}")
    _require(params, "study.seeds", source, list, lambda v: len(v) > 0 and all(isinstance(s, int) for s in v), "a non-empty list of integers")
    methods = _require(params, "methods", source, dict)
    for method in _require(params, "study.methods", source, list, lambda v: len(v) > 0, "a non-empty list"):
        if method not in methods:
            raise ParamsError(f"{source}: study.methods names {method!r}, which is not under methods ({', '.join(methods)})")
    for method, spec in methods.items():
        _require(params, f"methods.{method}.loss", source, str)
    if "ablation" in params:
        for key in ("datasets", "methods", "fractions", "seeds"):
            for value in _require(params, f"ablation.{key}", source, list, lambda v: len(v) > 0, "a non-empty list"):
                known = {"datasets": datasets, "methods": methods}.get(key)
                if known is not None and value not in known:
                    raise ParamsError(f"{source}: ablation.{key} names {value!r}, which is not under {key}")
    if "bench" in params:
        for key in ("naive_max_tokens", "dim", "batch", "repeats", "step_repeats", "loader_batches"):
            _require(params, f"bench.{key}", source, int, lambda v: v > 0, "a positive integer")
        _require(params, "bench.token_budget", source, int, lambda v: v >= 0, "a non-negative integer")
        for key in ("tokens", "classes", "models", "loader_datasets"):
            _require(params, f"bench.{key}", source, list, lambda v: len(v) > 0, "a non-empty list")
    _require(params, "model.name", source, str)
    _require(params, "train.iterations", source, int, lambda v: v > 0, "a positive integer")
    _require(params, "train.batch_size", source, int, lambda v: v > 0, "a positive integer")
    _require(params, "train.lr", source, number, lambda v: v > 0, "a positive number")
    _require(params, "train.momentum", source, number, lambda v: 0 <= v < 1, "in [0, 1)")
    _require(params, "train.weight_decay", source, number, lambda v: v >= 0, "a non-negative number")
    _require(params, "train.poly_power", source, number, lambda v: v >= 0, "a non-negative number")
    _require(params, "train.checkpoint_every", source, int, lambda v: v > 0, "a positive integer")
    _require(params, "train.workers", source, int, lambda v: v >= 0, "a non-negative integer")
    _require(params, "train.cache_decoded", source, bool, expected="true or false")
    _require(params, "train.amp", source, str, lambda v: v in ("off", "bf16", "fp16"), "one of off, bf16, fp16")


def run_name(method: str, percent: int, seed: int) -> str:
    """``pals-10-0``: the name of one run inside its dataset, as in the DVC matrix."""
    return f"{method}-{percent}-{seed}"


def dataset_params(params: dict, dataset: str) -> dict:
    if dataset not in params["datasets"]:
        raise ParamsError(f"unknown dataset {dataset!r}; expected one of {', '.join(params['datasets'])}")
    return params["datasets"][dataset]


def method_params(params: dict, method: str) -> tuple[str, dict]:
    """``(loss name, loss parameters)`` of a method; methods are named loss configurations."""
    if method not in params["methods"]:
        raise ParamsError(f"unknown method {method!r}; expected one of {', '.join(params['methods'])}")
    spec = dict(params["methods"][method])
    return spec.pop("loss"), spec


# Where each stage writes (relative to the repository root; dvc.yaml declares the same paths).
DATA_DIR = Path("data")
SUBSETS_DIR = Path("subsets")
RUNS_DIR = Path("runs")
RESULTS_DIR = Path("results")


def run_dir(dataset: str, run: str) -> Path:
    return RUNS_DIR / dataset / run


def log_path(dataset: str, run: str) -> Path:
    return RESULTS_DIR / "logs" / dataset / f"{run}.csv"


def metrics_path(dataset: str, run: str) -> Path:
    return RESULTS_DIR / "metrics" / dataset / f"{run}.json"


def predictions_dir(dataset: str, run: str) -> Path:
    return RESULTS_DIR / "predictions" / dataset / run
