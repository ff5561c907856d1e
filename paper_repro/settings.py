"""The parameters as typed, validated settings: the one owner of every rule a parameter obeys.

:func:`resolve` turns the parameter tree (``paper_repro/config.py`` reads it) into one immutable
:class:`Settings`, checking every section before any stage does work, so that a bad value stops
the first stage of ``dvc repro`` with one line naming the file and the key. Each stage then gets
what it works on, resolved once: a run's stages a :class:`RunSettings` (dataset, effective train
settings, model, loss, evaluation), the other stages their sections. No code below the command
line reads the raw parameters.

This module imports nothing but the standard library, so every stage can depend on it without
depending on the code of the others (the losses, models, data loaders and generators take their
settings from here, and hold none of their rules).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from .errors import ParamsError
from .layout import Run

BASELINE = "ce"  # the study's baseline: every difference is measured against it
ABLATED = "pals"  # the method the ablation's variants vary

# The allowed values, each list owned here and read by the code that acts on it.
DATASET_KINDS = ("cityscapes", "voc")  # paper_repro/data/<kind>.py reads each in its real format
MODELS = {"deeplabv3plus_resnet101": "resnet101", "deeplabv3plus_resnet50": "resnet50", "deeplabv3plus_small": "small"}  # -> backbone
AMP = ("off", "bf16", "fp16")  # autocast dtype on CUDA; the CPU always runs float32
EXECUTORS = ("local", "slurm")
LOSSES = {  # loss -> its parameters and their defaults (docs/method.md, section 3)
    "ce": {},
    "ls": {"eps": 0.1},
    "pals": {"alpha": 0.5, "tau": 0.1, "T": 1.0, "token_budget": 0, "ramp": 0.0},
    "pals_no_onehot": {"tau": 0.1, "T": 1.0, "token_budget": 0, "ramp": 0.0},  # alpha = 0: the aggregated distribution alone
    "pals_uniform": {"alpha": 0.5, "T": 1.0, "ramp": 0.0},  # a uniform affinity: the image's mean prediction
}
SMOOTHING = {"ce": None, "ls": "uniform", "pals": "aggregated", "pals_no_onehot": "aggregated", "pals_uniform": "image_mean"}
GENERATOR_ARGUMENTS = {  # dataset kind -> the embedded generator's arguments (paper_repro/data/synthetic.py); None: required
    "cityscapes": {"n_train": None, "n_val": None, "height": None, "width": None, "seed": None, "typical_look": 0.9},
    "voc": {"n_train": None, "n_val": None, "height": None, "width": None, "seed": None, "classes": (1, 3, 4, 5, 7, 8, 15, 20),
            "typical_look": 0.9},
}
GENERATOR_MINIMA = {"n_train": 1, "n_val": 1, "height": 16, "width": 16}  # the smallest tree the generators draw
VOC_OBJECT_CLASSES = range(1, 21)  # the 20 object classes' indices (0 = background)


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def positive_int(value: Any) -> bool:
    return is_int(value) and value > 0


class Section:
    """Reads one section of the parameters; every failure is a :class:`ParamsError` naming the file and the key."""

    def __init__(self, tree: Any, prefix: str, source: str) -> None:
        self.tree, self.prefix, self.source = tree, prefix, source

    def fail(self, message: str):
        raise ParamsError(f"{self.source}: {message}")

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def get(self, name: str, check=None, expected: str = "") -> Any:
        node = self.tree
        for part in name.split("."):
            if not isinstance(node, dict) or part not in node:
                self.fail(f"missing parameter {self.key(name)}")
            node = node[part]
        if check is not None and not check(node):
            self.fail(f"{self.key(name)} must be {expected}, got {node!r}")
        return node

    def section(self, name: str, expected: str = "a mapping") -> Section:
        return Section(self.get(name, lambda v: isinstance(v, dict), expected), self.key(name), self.source)

    def names(self, name: str, known, where: str) -> tuple:
        """A non-empty list whose every entry is among ``known``."""
        values = self.get(name, lambda v: isinstance(v, list) and len(v) > 0, "a non-empty list")
        for value in values:
            if value not in known:
                self.fail(f"{self.key(name)} names {value!r}, which is not under {where} ({', '.join(map(str, known))})")
        return tuple(values)

    def size(self, name: str, least: int = 1) -> tuple[int, int]:
        expected = "[height, width] of positive integers" if least == 1 else f"[height, width] of integers >= {least}"
        return tuple(self.get(name, lambda v: isinstance(v, list) and len(v) == 2 and all(is_int(x) and x >= least for x in v), expected))


def check_generator_arguments(kind: str, arguments: dict) -> None:
    """:class:`ParamsError`, starting with the argument's name, if the generator would refuse ``arguments`` (its defaults filled in)."""
    accepted = GENERATOR_ARGUMENTS[kind]
    unknown = sorted(set(arguments) - set(accepted))
    if unknown:
        raise ParamsError(f"{unknown[0]}: unknown argument (accepted: {', '.join(accepted)})")
    values = accepted | arguments
    for name, value in values.items():
        if value is None:
            raise ParamsError(f"{name}: missing")
    for name, least in GENERATOR_MINIMA.items():
        if not is_int(values[name]) or values[name] < least:
            raise ParamsError(f"{name} must be an integer >= {least}, got {values[name]!r}")
    if not is_int(values["seed"]):
        raise ParamsError(f"seed must be an integer, got {values['seed']!r}")
    if not is_number(values["typical_look"]) or not 0.0 <= values["typical_look"] <= 1.0:
        raise ParamsError(f"typical_look must be a number in [0, 1], got {values['typical_look']!r}")
    if "classes" in values:
        classes = values["classes"]
        if not isinstance(classes, (list, tuple)) or not classes or not set(classes) <= set(VOC_OBJECT_CLASSES):
            raise ParamsError(f"classes must be a non-empty list of VOC class indices in 1..20, got {classes!r}")


@dataclass(frozen=True)
class Study:
    datasets: tuple[str, ...]
    methods: tuple[str, ...]
    percents: tuple[int, ...]  # labelled share of the training split, integer percents
    seeds: tuple[int, ...]
    schedule: int = 1  # training length in multiples of each dataset's iterations

    def runs(self, methods: tuple[str, ...] | None = None) -> list[Run]:
        """Every run of the grid (or of ``methods`` over its datasets, percents and seeds), in its order."""
        return [Run(dataset, method, percent, seed, self.schedule) for dataset in self.datasets for method in (methods or self.methods)
                for percent in self.percents for seed in self.seeds]


@dataclass(frozen=True)
class DatasetSettings:
    """``datasets.<name>``: where a dataset lies, in which format, how it is augmented; its own train settings."""

    name: str
    kind: str
    root: str
    num_classes: int
    train_split: str
    eval_split: str
    base_size: int
    scale_range: tuple[float, float]
    crop: tuple[int, int]
    generate: dict | None = None  # the embedded generator's arguments; None for a real dataset
    train: dict = field(default_factory=dict)  # entries that replace the train section's for this dataset's runs


@dataclass(frozen=True)
class LossSettings:
    """``methods.<name>``: a method is a named loss configuration; its target is
    ``alpha * onehot(y) + (1 - alpha) * q`` with ``q`` given by ``smoothing`` (docs/method.md, steps 1-6)."""

    loss: str
    alpha: float  # weight of the one-hot label
    smoothing: str | None  # None (ce), "uniform" (ls), "aggregated" (PALS) or "image_mean" (uniform affinity)
    tau: float = 0.1
    T: float = 1.0  # the teacher temperature
    token_budget: int = 0  # 0: no pooling of keys and values before the aggregation
    ramp: float = 0.0  # share of training over which the self-target's weight grows from 0 (0: full weight from the start)

    @staticmethod
    def of(loss: str, options: dict) -> LossSettings:
        """The settings of ``loss`` with ``options``; :class:`ParamsError` starting with the parameter's name otherwise."""
        if loss not in LOSSES:
            raise ParamsError(f"unknown loss {loss!r}; expected one of {', '.join(LOSSES)}")
        allowed = list(LOSSES[loss])
        unknown = sorted(set(options) - set(allowed))
        if unknown:
            raise ParamsError(f"loss {loss!r} takes parameters {allowed or 'none'}, got unknown {unknown}")
        for key, value in options.items():
            if not is_number(value) or not math.isfinite(value):
                raise ParamsError(f"loss {loss!r} parameter {key!r} must be a finite number, got {value!r}")
        values = LOSSES[loss] | options
        rules = {"eps": (lambda v: 0.0 <= v <= 1.0, "in [0, 1]"), "alpha": (lambda v: 0.0 <= v <= 1.0, "in [0, 1]"),
                 "tau": (lambda v: v > 0, "> 0"), "T": (lambda v: v > 0, "> 0 (the teacher temperature)"),
                 "token_budget": (lambda v: v >= 0 and v == int(v), "an integer >= 0 (0 = no pooling)"),
                 "ramp": (lambda v: 0.0 <= v <= 1.0, "in [0, 1] (a share of training; 0 = no ramp)")}
        for key, value in values.items():
            check, expected = rules[key]
            if not check(value):
                raise ParamsError(f"{key} must be {expected}, got {value!r}")
        alpha = {"ce": 1.0, "ls": 1.0 - values.get("eps", 0.0), "pals_no_onehot": 0.0}.get(loss, values.get("alpha"))
        smoothing = SMOOTHING[loss] if alpha < 1.0 else None
        extra = {key: values[key] for key in ("tau", "T") if key in values}
        return LossSettings(loss, float(alpha), smoothing, **{k: float(v) for k, v in extra.items()},
                            token_budget=int(values.get("token_budget", 0)), ramp=float(values.get("ramp", 0.0)))


@dataclass(frozen=True)
class ModelSettings:
    name: str
    pretrained_backbone: bool

    @property
    def backbone(self) -> str:
        return MODELS[self.name]

    @property
    def loads_pretrain_stage(self) -> bool:
        """Whether the backbone starts from the ``pretrain`` stage's weights (the ResNets load torchvision's)."""
        return self.pretrained_backbone and self.backbone == "small"


@dataclass(frozen=True)
class Optimisation:
    """SGD with momentum and weight decay, polynomial decay of the learning rate over ``iterations``."""

    iterations: int
    batch_size: int
    lr: float
    momentum: float
    weight_decay: float
    poly_power: float


@dataclass(frozen=True)
class TrainSettings(Optimisation):
    checkpoint_every: int
    workers: int
    cache_decoded: bool
    amp: str
    runs_at_once: int  # runs of one dataset the `runs` stage trains at once, each with its share of the threads

    # How batches are loaded, how often they are saved and how many runs share the machine: a run may
    # resume with other values of them (the thread count they imply changes the CPU's last bits only).
    RESUMABLE_ACROSS = ("workers", "cache_decoded", "checkpoint_every", "runs_at_once")

    def defining_weights(self) -> dict:
        """The settings a run's weights are a function of (a checkpoint resumes only if they match)."""
        return {key: value for key, value in asdict(self).items() if key not in self.RESUMABLE_ACROSS}


@dataclass(frozen=True)
class EvaluateSettings:
    figure_images: int  # predictions saved for the first N evaluation ids (sorted)
    calibration_bins: int
    boundary_width: int = 2  # the boundary band: labelled pixels within this many pixels of a label change
    scales: tuple[float, ...] = (1.0,)  # the softmax is averaged over the image resized by each (docs/method.md, section 6)
    flip: bool = False  # and over each scale's horizontal mirror
    batch_size: int = 1  # evaluation images per forward pass (consecutive images of one size); it changes only the probabilities' last bits

    REGIONS = ("boundary", "interior")  # scored apart: the boundary band (metrics.boundary_band) and its complement


@dataclass(frozen=True)
class PretrainSettings(Optimisation):
    images: int
    held_out: int
    size: tuple[int, int]
    seed: int
    typical_look: float


@dataclass(frozen=True)
class ExplainSettings:
    method: str
    percent: int
    seed: int
    pixels: int

    def run(self, dataset: str) -> Run:
        return Run(dataset, self.method, self.percent, self.seed)


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


@dataclass(frozen=True)
class RunSettings:
    """Everything one run's stages (train, evaluate, explain) need, resolved once."""

    run: Run
    dataset: DatasetSettings
    loss: LossSettings
    model: ModelSettings
    train: TrainSettings  # the train section with the dataset's own entries in their place
    evaluate: EvaluateSettings


@dataclass(frozen=True)
class Settings:
    study: Study
    datasets: dict[str, DatasetSettings]
    methods: dict[str, LossSettings]
    model: ModelSettings
    train: TrainSettings
    evaluate: EvaluateSettings
    pretrain: PretrainSettings
    explain: ExplainSettings
    ablation: Study | None = None  # extra runs compared with the study's ce and pals runs
    schedule: Study | None = None  # study runs trained longer (schedule sensitivity)
    bench: BenchSettings | None = None
    launch: LaunchSettings | None = None

    def dataset(self, name: str) -> DatasetSettings:
        if name not in self.datasets:
            raise ParamsError(f"unknown dataset {name!r}; expected one of {', '.join(self.datasets)}")
        return self.datasets[name]

    def loss(self, method: str) -> LossSettings:
        if method not in self.methods:
            raise ParamsError(f"unknown method {method!r}; expected one of {', '.join(self.methods)}")
        return self.methods[method]

    def train_of(self, dataset: str, schedule: int = 1) -> TrainSettings:
        """The ``train`` settings of a run on ``dataset``: the section with the dataset's own ``train:``
        entries in their place (a schedule per benchmark, as the paper's Cityscapes and VOC schedules differ),
        its iterations times ``schedule`` (the learning rate decays over the longer schedule)."""
        train = replace(self.train, **self.dataset(dataset).train)
        return replace(train, iterations=train.iterations * schedule)

    def runs(self, dataset: str | None = None) -> list[Run]:
        """Every run of the study, the sweep and the schedule sensitivity (those on ``dataset`` if given), in that order."""
        every = self.study.runs() + [run for extra in (self.ablation, self.schedule) if extra for run in extra.runs()]
        return [run for run in every if dataset in (None, run.dataset)]

    def run(self, run: Run) -> RunSettings:
        return RunSettings(run, self.dataset(run.dataset), self.loss(run.method), self.model, self.train_of(run.dataset, run.schedule),
                           self.evaluate)


def resolve(params: dict, source: str) -> Settings:
    """Check every section of ``params`` (read from ``source``) and return them as :class:`Settings`."""
    top = Section(params, "", source)
    datasets_tree = top.get("datasets", lambda v: isinstance(v, dict) and len(v) > 0, "a mapping of dataset names to settings")
    methods_tree = top.get("methods", lambda v: isinstance(v, dict) and len(v) > 0, "a mapping of method names to loss settings")
    study = read_study(top, datasets_tree, methods_tree)
    datasets = {name: read_dataset(top.section(f"datasets.{name}"), name) for name in datasets_tree}
    methods = {name: read_method(top.section(f"methods.{name}", "a mapping with a loss")) for name in methods_tree}
    model = ModelSettings(top.get("model.name", lambda v: v in MODELS, f"one of {', '.join(MODELS)}"),
                          top.get("model.pretrained_backbone", lambda v: isinstance(v, bool), "true or false"))
    train_tree = top.get("train", lambda v: isinstance(v, dict), "a mapping")
    train = read_train(top.section("train"))
    for name, dataset in datasets.items():  # a dataset's own train settings, checked as the whole section they complete
        if "train" in datasets_tree[name]:
            own = top.get(f"datasets.{name}.train", lambda v: isinstance(v, dict) and set(v) <= set(train_tree),
                          f"a mapping of train settings ({', '.join(train_tree)})")
            read_train(Section(train_tree | own, f"datasets.{name}.train", source))
    scales = top.get("evaluate.scales", lambda v: isinstance(v, list) and len(v) > 0 and len(set(v)) == len(v)
                     and all(is_number(s) and 0 < s <= 4 for s in v), "a non-empty list of distinct scales in (0, 4]")
    evaluate = EvaluateSettings(top.get("evaluate.figure_images", lambda v: is_int(v) and v >= 0, "a non-negative integer"),
                                top.get("evaluate.calibration_bins", positive_int, "a positive integer"),
                                top.get("evaluate.boundary_width", positive_int, "a positive integer"),
                                tuple(float(s) for s in scales), top.get("evaluate.flip", lambda v: isinstance(v, bool), "true or false"),
                                top.get("evaluate.batch_size", positive_int, "a positive integer"))
    settings = Settings(study, datasets, methods, model, train, evaluate, read_pretrain(top.section("pretrain")),
                        read_explain(top, study, methods), read_ablation(top, study, methods_tree) if "ablation" in params else None,
                        read_schedule(top, study) if "schedule" in params else None)
    if "bench" in params:
        settings = replace(settings, bench=read_bench(top.section("bench"), datasets_tree))
    if "launch" in params:
        settings = replace(settings, launch=read_launch(top.section("launch")))
    return settings


def read_study(top: Section, datasets: dict, methods: dict) -> Study:
    study = top.section("study")
    names = study.names("datasets", datasets, "datasets")
    chosen = study.names("methods", methods, "methods")
    if BASELINE not in chosen:
        top.fail(f"study.methods must include {BASELINE}, the baseline every difference is measured against, got {list(chosen)}")
    percents = study.get("percents", lambda v: isinstance(v, list) and len(v) > 0 and all(is_int(p) and 0 < p <= 100 for p in v),
                         "a non-empty list of integer percents in (0, 100]")
    seeds = study.get("seeds", lambda v: isinstance(v, list) and len(v) > 0 and all(is_int(s) for s in v), "a non-empty list of integers")
    for key, values in (("percents", percents), ("seeds", seeds)):
        if len(set(values)) != len(values):
            top.fail(f"study.{key} lists a value twice: {values}")
    return Study(names, chosen, tuple(percents), tuple(seeds))


def read_dataset(spec: Section, name: str) -> DatasetSettings:
    kind = spec.get("kind", lambda v: v in DATASET_KINDS, f"one of {', '.join(DATASET_KINDS)}")
    strings = {key: spec.get(key, lambda v: isinstance(v, str) and v != "", "a non-empty string") for key in ("root", "train_split", "eval_split")}
    generate = None
    if spec.tree.get("generate") is not None:
        generate = spec.get("generate", lambda v: isinstance(v, dict), "a mapping of generator arguments")
        try:
            check_generator_arguments(kind, generate)
        except ParamsError as error:
            spec.fail(f"{spec.key('generate')}.{error}")
    return DatasetSettings(
        name=name, kind=kind, **strings,
        num_classes=spec.get("num_classes", lambda v: is_int(v) and v >= 2, "an integer >= 2"),
        base_size=spec.get("base_size", positive_int, "a positive integer"),
        scale_range=tuple(spec.get("scale_range", lambda v: isinstance(v, list) and len(v) == 2 and all(is_number(x) for x in v)
                                   and 0 < v[0] <= v[1], "[low, high] with 0 < low <= high")),
        crop=spec.size("crop"), generate=generate, train=dict(spec.tree.get("train", {})))


def read_method(spec: Section) -> LossSettings:
    loss = spec.get("loss", lambda v: v in LOSSES, f"one of {', '.join(LOSSES)}")
    options = {key: value for key, value in spec.tree.items() if key != "loss"}
    try:
        return LossSettings.of(loss, options)
    except ParamsError as error:
        message = str(error)
        key = message.split(" ", 1)[0]
        spec.fail(f"{spec.prefix}.{message}" if key in options else f"{spec.prefix}: {message}")


def read_optimisation(section: Section) -> dict:
    positive, non_negative = (lambda v: is_number(v) and v > 0), (lambda v: is_number(v) and v >= 0)
    return {
        "iterations": section.get("iterations", positive_int, "a positive integer"),
        "batch_size": section.get("batch_size", positive_int, "a positive integer"),
        "lr": section.get("lr", positive, "a positive number"),
        "momentum": section.get("momentum", lambda v: is_number(v) and 0 <= v < 1, "a number in [0, 1)"),
        "weight_decay": section.get("weight_decay", non_negative, "a non-negative number"),
        "poly_power": section.get("poly_power", non_negative, "a non-negative number"),
    }


def read_train(section: Section) -> TrainSettings:
    return TrainSettings(
        **read_optimisation(section),
        checkpoint_every=section.get("checkpoint_every", positive_int, "a positive integer"),
        workers=section.get("workers", lambda v: is_int(v) and v >= 0, "a non-negative integer"),
        cache_decoded=section.get("cache_decoded", lambda v: isinstance(v, bool), "true or false"),
        amp=section.get("amp", lambda v: v in AMP, f"one of {', '.join(AMP)}"),
        runs_at_once=section.get("runs_at_once", positive_int, "a positive integer"))


def read_pretrain(section: Section) -> PretrainSettings:
    """The source task of the pretrain stage (``paper_repro/pretrain.py``)."""
    return PretrainSettings(
        **read_optimisation(section),
        images=section.get("images", positive_int, "a positive integer"),
        held_out=section.get("held_out", positive_int, "a positive integer"),
        size=section.size("size", max(GENERATOR_MINIMA["height"], GENERATOR_MINIMA["width"])),
        seed=section.get("seed", is_int, "an integer"),
        typical_look=section.get("typical_look", lambda v: is_number(v) and 0 <= v <= 1, "a number in [0, 1]"))


def read_explain(top: Section, study: Study, methods: dict[str, LossSettings]) -> ExplainSettings:
    """The explanation figure shows one PALS run of the study (method, percent, seed) per dataset."""
    method = top.get("explain.method", lambda v: v in study.methods, f"one of study.methods ({', '.join(study.methods)})")
    settings = ExplainSettings(
        method,
        top.get("explain.percent", lambda v: v in study.percents, f"one of study.percents {list(study.percents)}"),
        top.get("explain.seed", lambda v: v in study.seeds, f"one of study.seeds {list(study.seeds)}"),
        top.get("explain.pixels", positive_int, "a positive integer"))
    if methods[method].smoothing != "aggregated":
        top.fail(f"explain.method must be a method with the PALS aggregation (loss pals or pals_no_onehot), got {method!r}")
    return settings


def read_ablation(top: Section, study: Study, methods: dict) -> Study:
    """Extra runs compared with the study's ce and pals runs of the same datasets, percents and seeds."""
    ablation = top.section("ablation")
    grid = {key: ablation.names(key, getattr(study, key), f"study.{key}") for key in ("datasets", "percents", "seeds")}
    variants = ablation.names("methods", methods, "methods")
    if ABLATED not in study.methods:
        top.fail(f"the ablation compares its variants with the study's {ABLATED} runs: study.methods must include {ABLATED}")
    repeated = sorted(set(variants) & set(study.methods))
    if repeated:
        top.fail(f"ablation.methods names {repeated}, which the study already runs; list only the variants")
    return Study(grid["datasets"], variants, grid["percents"], grid["seeds"])


def read_schedule(top: Section, study: Study) -> Study:
    """Study runs (the same methods, percents and seeds) trained ``factor`` times their dataset's iterations."""
    schedule = top.section("schedule")
    grid = {key: schedule.names(key, getattr(study, key), f"study.{key}") for key in ("datasets", "methods", "percents", "seeds")}
    return Study(**grid, schedule=schedule.get("factor", lambda v: is_int(v) and v >= 2, "an integer >= 2"))


def read_bench(bench: Section, datasets: dict) -> BenchSettings:
    positive = {key: bench.get(key, positive_int, "a positive integer")
                for key in ("naive_max_tokens", "dim", "batch", "repeats", "step_repeats", "loader_batches")}
    lists = {key: tuple(bench.get(key, lambda v: isinstance(v, list) and len(v) > 0, "a non-empty list")) for key in ("tokens", "classes", "models")}
    for index, entry in enumerate(lists["models"]):
        prefix = f"bench.models[{index}]"
        if not isinstance(entry, dict) or entry.get("name") not in MODELS:
            bench.fail(f"{prefix} must name a model ({', '.join(MODELS)}), got {entry!r}")
        if "dataset" in entry:
            if entry["dataset"] not in datasets:
                bench.fail(f"{prefix}.dataset names {entry['dataset']!r}, which is not under datasets")
        elif not all(key in entry for key in ("size", "batch", "classes")):
            bench.fail(f"{prefix} must give a dataset, or size, batch and classes, got {entry!r}")
    return BenchSettings(**positive, **lists, token_budget=bench.get("token_budget", lambda v: is_int(v) and v >= 0, "a non-negative integer"),
                         loader_datasets=bench.names("loader_datasets", datasets, "datasets"))


def read_launch(launch: Section) -> LaunchSettings:
    """How ``python -m paper_repro launch`` runs the runs' stages (``paper_repro/launch.py``)."""
    slurm = launch.section("slurm")
    return LaunchSettings(
        executor=launch.get("executor", lambda v: v in EXECUTORS, " or ".join(EXECUTORS)),
        workers=launch.get("workers", lambda v: v == "auto" or positive_int(v), "auto (one per visible GPU, else 1) or a positive integer"),
        gpus_per_job=launch.get("gpus_per_job", lambda v: is_int(v) and v >= 0, "a non-negative integer"),
        attempts=launch.get("attempts", positive_int, "a positive integer"),
        folder=launch.get("folder", lambda v: isinstance(v, str) and v != "", "a non-empty string"),
        slurm=SlurmSettings(
            partition=slurm.get("partition", lambda v: v is None or (isinstance(v, str) and v != ""), "a partition name or null"),
            **{key: slurm.get(key, positive_int, "a positive integer") for key in ("time_minutes", "cpus_per_job", "mem_gb")},
            setup=tuple(slurm.get("setup", lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
                                  "a list of shell lines run before each job"))))
