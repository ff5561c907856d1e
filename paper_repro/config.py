"""Parameters: ``params.yaml`` (or a preset file) plus ``--set dotted.key=value`` overrides.

``params.yaml`` is the single source of every parameter. :func:`load_params` reads it and
checks everything any stage will use before any stage does work, so that a bad value fails
the first stage of ``dvc repro``, not run 25 of 60. Where a value's rules belong to the code
that uses it (a loss's parameters, a generator's sizes, a model name, a dataset kind), the
check asks that code.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml

from .errors import ParamsError


BASELINE = "ce"  # the study's baseline: every difference is measured against it
ABLATED = "pals"  # the method the ablation's variants vary


class ParamsLoader(yaml.SafeLoader):
    """YAML as people write numbers: ``1e-3``, ``5e-4`` and ``1e9`` are floats (YAML 1.1, PyYAML's
    default, reads a float without a dot as text; YAML 1.2, which DVC reads, as a float)."""


ParamsLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789"))


def parse_yaml(text: str) -> Any:
    return yaml.load(text, Loader=ParamsLoader)  # noqa: S506 (a SafeLoader)


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
    try:
        node[parts[-1]] = parse_yaml(raw)
    except yaml.YAMLError as error:
        raise ParamsError(f"--set {key}: the value is not valid YAML ({error})") from error


def load_params(path: str | Path = "params.yaml", overrides: list[str] | tuple[str, ...] = ()) -> dict:
    """Read the parameter file, apply overrides and validate what every stage relies on."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"parameter file {path} does not exist")
    try:
        params = parse_yaml(path.read_text())
    except yaml.YAMLError as error:
        raise ParamsError(f"{path}: not valid YAML ({error})") from error
    if not isinstance(params, dict):
        raise ParamsError(f"{path}: expected a mapping of sections")
    params = copy.deepcopy(params)
    for assignment in overrides:
        apply_override(params, assignment)
    Validator(params, path).validate()
    return params


def dataset_params(params: dict, dataset: str) -> dict:
    if dataset not in params["datasets"]:
        raise ParamsError(f"unknown dataset {dataset!r}; expected one of {', '.join(params['datasets'])}")
    return params["datasets"][dataset]


def train_settings(params: dict, dataset: str) -> dict:
    """The ``train`` settings of a run on ``dataset``: the ``train`` section with the dataset's own
    ``train:`` entries in their place (a schedule per benchmark, as the paper's Cityscapes and VOC
    schedules differ)."""
    return params["train"] | dataset_params(params, dataset).get("train", {})


def method_params(params: dict, method: str) -> tuple[str, dict]:
    """``(loss name, loss parameters)`` of a method; methods are named loss configurations."""
    if method not in params["methods"]:
        raise ParamsError(f"unknown method {method!r}; expected one of {', '.join(params['methods'])}")
    spec = dict(params["methods"][method])
    return spec.pop("loss"), spec


def method_loss(params: dict, method: str, num_classes: int):
    """The training loss of ``method`` (a ``paper_repro.losses.SmoothedTargetLoss``)."""
    from .losses import build_loss

    loss, options = method_params(params, method)
    return build_loss(loss, num_classes, **options)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class Validator:
    """Checks one parameter tree; every failure is a :class:`ParamsError` naming the file and the key."""

    def __init__(self, params: dict, source: Path) -> None:
        self.params, self.source = params, source

    def fail(self, message: str) -> None:
        raise ParamsError(f"{self.source}: {message}")

    def get(self, dotted: str, check=None, expected: str = "") -> Any:
        node: Any = self.params
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                self.fail(f"missing parameter {dotted}")
            node = node[part]
        if check is not None and not check(node):
            self.fail(f"{dotted} must be {expected}, got {node!r}")
        return node

    def names(self, dotted: str, known: dict | list, where: str) -> list:
        """A non-empty list whose every entry is among ``known``."""
        values = self.get(dotted, lambda v: isinstance(v, list) and len(v) > 0, "a non-empty list")
        for value in values:
            if value not in known:
                self.fail(f"{dotted} names {value!r}, which is not under {where} ({', '.join(map(str, known))})")
        return values

    def validate(self) -> None:
        self.study()
        self.datasets()
        self.methods()
        self.model_train_evaluate()
        self.pretrain()
        self.ablation()
        self.explain()
        if "bench" in self.params:
            self.bench()
        if "launch" in self.params:
            self.launch()

    def study(self) -> None:
        self.get("datasets", lambda v: isinstance(v, dict) and len(v) > 0, "a mapping of dataset names to settings")
        self.get("methods", lambda v: isinstance(v, dict) and len(v) > 0, "a mapping of method names to loss settings")
        self.names("study.datasets", self.params["datasets"], "datasets")
        methods = self.names("study.methods", self.params["methods"], "methods")
        if BASELINE not in methods:
            self.fail(f"study.methods must include {BASELINE}, the baseline every difference is measured against, got {methods}")
        self.get("study.fractions", lambda v: isinstance(v, list) and len(v) > 0 and all(_is_int(p) and 0 < p <= 100 for p in v),
                 "a non-empty list of integer percents in (0, 100]")
        self.get("study.seeds", lambda v: isinstance(v, list) and len(v) > 0 and all(_is_int(s) for s in v),
                 "a non-empty list of integers")
        for key in ("fractions", "seeds"):
            values = self.params["study"][key]
            if len(set(values)) != len(values):
                self.fail(f"study.{key} lists a value twice: {values}")

    def datasets(self) -> None:
        from .data import DATASET_KINDS
        from .data.synthetic import check_arguments

        for name, spec in self.params["datasets"].items():
            prefix = f"datasets.{name}"
            self.get(prefix, lambda v: isinstance(v, dict), "a mapping")
            kind = self.get(f"{prefix}.kind", lambda v: v in DATASET_KINDS, f"one of {', '.join(DATASET_KINDS)}")
            for key in ("root", "train_split", "eval_split"):
                self.get(f"{prefix}.{key}", lambda v: isinstance(v, str) and v != "", "a non-empty string")
            self.get(f"{prefix}.num_classes", lambda v: _is_int(v) and v >= 2, "an integer >= 2")
            self.get(f"{prefix}.crop", lambda v: isinstance(v, list) and len(v) == 2 and all(_is_int(x) and x > 0 for x in v),
                     "[height, width] of positive integers")
            self.get(f"{prefix}.base_size", lambda v: _is_int(v) and v > 0, "a positive integer")
            self.get(f"{prefix}.scale_range", lambda v: isinstance(v, list) and len(v) == 2 and all(_is_number(x) for x in v)
                     and 0 < v[0] <= v[1], "[low, high] with 0 < low <= high")
            if spec.get("generate") is not None:
                arguments = self.get(f"{prefix}.generate", lambda v: isinstance(v, dict), "a mapping of generator arguments")
                try:
                    check_arguments(DATASET_KINDS[kind].generator, arguments)
                except ValueError as error:
                    self.fail(f"{prefix}.generate.{error}")

    def methods(self) -> None:
        from .losses import LOSSES, build_loss

        for method, spec in self.params["methods"].items():
            self.get(f"methods.{method}", lambda v: isinstance(v, dict), "a mapping with a loss")
            loss = self.get(f"methods.{method}.loss", lambda v: v in LOSSES, f"one of {', '.join(LOSSES)}")
            options = {key: value for key, value in spec.items() if key != "loss"}
            try:
                build_loss(loss, 2, **options)  # the loss's own rules decide
            except ValueError as error:
                message = str(error)
                key = message.split(" ", 1)[0]
                self.fail(f"methods.{method}.{message}" if key in options else f"methods.{method}: {message}")

    def model_train_evaluate(self) -> None:
        from .models import MODELS

        self.get("model.name", lambda v: v in MODELS, f"one of {', '.join(MODELS)}")
        self.get("model.pretrained_backbone", lambda v: isinstance(v, bool), "true or false")
        self.train("train")
        for name, spec in self.params["datasets"].items():
            if "train" in spec:  # a dataset's own train settings, checked as the whole section they complete
                overrides = self.get(f"datasets.{name}.train", lambda v: isinstance(v, dict) and set(v) <= set(self.params["train"]),
                                     f"a mapping of train settings ({', '.join(self.params['train'])})")
                Validator({"datasets": {name: {"train": self.params["train"] | overrides}}}, self.source).train(f"datasets.{name}.train")
        self.get("evaluate.figure_images", lambda v: _is_int(v) and v >= 0, "a non-negative integer")
        self.get("evaluate.calibration_bins", lambda v: _is_int(v) and v > 0, "a positive integer")

    def train(self, section: str) -> None:
        """The settings ``paper_repro/train.py`` reads, in ``train`` or a dataset's ``train``."""
        self.optimisation(section)
        self.get(f"{section}.checkpoint_every", lambda v: _is_int(v) and v > 0, "a positive integer")
        self.get(f"{section}.workers", lambda v: _is_int(v) and v >= 0, "a non-negative integer")
        self.get(f"{section}.cache_decoded", lambda v: isinstance(v, bool), "true or false")
        self.get(f"{section}.amp", lambda v: v in ("off", "bf16", "fp16"), "one of off, bf16, fp16")

    def optimisation(self, section: str) -> None:
        """The SGD and schedule settings that ``train.build_optimisation`` reads, for ``train`` or ``pretrain``."""
        positive, non_negative = (lambda v: _is_number(v) and v > 0), (lambda v: _is_number(v) and v >= 0)
        self.get(f"{section}.iterations", lambda v: _is_int(v) and v > 0, "a positive integer")
        self.get(f"{section}.batch_size", lambda v: _is_int(v) and v > 0, "a positive integer")
        self.get(f"{section}.lr", positive, "a positive number")
        self.get(f"{section}.momentum", lambda v: _is_number(v) and 0 <= v < 1, "a number in [0, 1)")
        self.get(f"{section}.weight_decay", non_negative, "a non-negative number")
        self.get(f"{section}.poly_power", non_negative, "a non-negative number")

    def pretrain(self) -> None:
        """The source task of the pretrain stage (``paper_repro/pretrain.py``)."""
        from .data.synthetic import SIZE_MINIMA

        least = max(SIZE_MINIMA["height"], SIZE_MINIMA["width"])
        self.get("pretrain.images", lambda v: _is_int(v) and v > 0, "a positive integer")
        self.get("pretrain.held_out", lambda v: _is_int(v) and v > 0, "a positive integer")
        self.get("pretrain.size", lambda v: isinstance(v, list) and len(v) == 2 and all(_is_int(x) and x >= least for x in v),
                 f"[height, width] of integers >= {least}")
        self.get("pretrain.seed", _is_int, "an integer")
        self.get("pretrain.typical_look", lambda v: _is_number(v) and 0 <= v <= 1, "a number in [0, 1]")
        self.optimisation("pretrain")

    def ablation(self) -> None:
        """Extra runs compared with the study's ce and pals runs of the same datasets, fractions and seeds."""
        if "ablation" not in self.params:
            return
        study = self.params["study"]
        for key, known in (("datasets", study["datasets"]), ("fractions", study["fractions"]), ("seeds", study["seeds"])):
            self.names(f"ablation.{key}", known, f"study.{key}")
        methods = self.names("ablation.methods", self.params["methods"], "methods")
        if ABLATED not in study["methods"]:
            self.fail(f"the ablation compares its variants with the study's {ABLATED} runs: study.methods must include {ABLATED}")
        repeated = sorted(set(methods) & set(study["methods"]))
        if repeated:
            self.fail(f"ablation.methods names {repeated}, which the study already runs; list only the variants")

    def explain(self) -> None:
        """The explanation figure shows one PALS run of the study (method, fraction, seed) per dataset."""
        study = self.params["study"]
        method = self.get("explain.method", lambda v: v in study["methods"], f"one of study.methods ({', '.join(study['methods'])})")
        self.get("explain.fraction", lambda v: v in study["fractions"], f"one of study.fractions {study['fractions']}")
        self.get("explain.seed", lambda v: v in study["seeds"], f"one of study.seeds {study['seeds']}")
        self.get("explain.pixels", lambda v: _is_int(v) and v > 0, "a positive integer")
        if method_loss(self.params, method, 2).smoothing != "aggregated":
            self.fail(f"explain.method must be a method with the PALS aggregation (loss pals or pals_no_onehot), got {method!r}")

    def bench(self) -> None:
        from .models import MODELS

        for key in ("naive_max_tokens", "dim", "batch", "repeats", "step_repeats", "loader_batches"):
            self.get(f"bench.{key}", lambda v: _is_int(v) and v > 0, "a positive integer")
        self.get("bench.token_budget", lambda v: _is_int(v) and v >= 0, "a non-negative integer")
        for key in ("tokens", "classes", "models"):
            self.get(f"bench.{key}", lambda v: isinstance(v, list) and len(v) > 0, "a non-empty list")
        self.names("bench.loader_datasets", self.params["datasets"], "datasets")
        for index, entry in enumerate(self.params["bench"]["models"]):
            prefix = f"bench.models[{index}]"
            if not isinstance(entry, dict) or entry.get("name") not in MODELS:
                self.fail(f"{prefix} must name a model ({', '.join(MODELS)}), got {entry!r}")
            if "dataset" in entry:
                if entry["dataset"] not in self.params["datasets"]:
                    self.fail(f"{prefix}.dataset names {entry['dataset']!r}, which is not under datasets")
            elif not all(key in entry for key in ("size", "batch", "classes")):
                self.fail(f"{prefix} must give a dataset, or size, batch and classes, got {entry!r}")

    def launch(self) -> None:
        """How ``python -m paper_repro launch`` runs the cells (``paper_repro/launch.py``)."""
        positive_int = lambda v: _is_int(v) and v > 0  # noqa: E731
        self.get("launch.executor", lambda v: v in ("local", "slurm"), "local or slurm")
        self.get("launch.workers", lambda v: v == "auto" or positive_int(v), "auto (one per visible GPU, else 1) or a positive integer")
        self.get("launch.gpus_per_job", lambda v: _is_int(v) and v >= 0, "a non-negative integer")
        self.get("launch.attempts", positive_int, "a positive integer")
        self.get("launch.folder", lambda v: isinstance(v, str) and v != "", "a non-empty string")
        self.get("launch.slurm.partition", lambda v: v is None or (isinstance(v, str) and v != ""), "a partition name or null")
        for key in ("time_minutes", "cpus_per_job", "mem_gb"):
            self.get(f"launch.slurm.{key}", positive_int, "a positive integer")
        self.get("launch.slurm.setup", lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
                 "a list of shell lines run before each job")
