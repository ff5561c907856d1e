"""The parameters as typed, validated settings: the one owner of every rule a stage's parameter obeys.

Each rule is a :class:`Rule`: its test and the words an error says it with, written once. The
sections of the two commands that are not stages (``bench:`` and ``launch:``) are read by
``tool_settings.py`` with the same rules; no stage loads that module, so their schema is not
part of what every run depends on.

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
from collections.abc import Callable
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
LOSSES = {  # loss -> its parameters and their defaults (docs/method.md, section 3): the one place they are written in code
    "ce": {},
    "ls": {"eps": 0.1},
    "pals": {"alpha": 0.5, "tau": 0.1, "T": 1.0, "token_budget": 0, "ramp": 0.0},  # alpha 0: the aggregated distribution alone
    "pals_uniform": {"alpha": 0.5, "T": 1.0, "ramp": 0.0},  # a uniform affinity: the image's mean prediction
}
SMOOTHING = {"ce": None, "ls": "uniform", "pals": "aggregated", "pals_uniform": "image_mean"}
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
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class Rule:
    """What a parameter's value must be: the test, and the words an error says it with (``must be <description>``)."""

    test: Callable[[Any], bool]
    description: str

    def __call__(self, value: Any) -> bool:
        return bool(self.test(value))


def integer_from(least: int, note: str = "") -> Rule:
    words = {0: "a non-negative integer", 1: "a positive integer"}.get(least, f"an integer >= {least}")
    return Rule(lambda v: is_int(v) and v >= least, words + note)


def number_in(low: float, high: float, note: str = "") -> Rule:
    return Rule(lambda v: is_number(v) and low <= v <= high, f"a number in [{low:g}, {high:g}]{note}")


def one_of(values, names: str = "") -> Rule:
    return Rule(lambda v: v in values, f"one of {names or ', '.join(map(str, values))}")


def non_empty_list(of: Rule | None = None, words: str = "a non-empty list") -> Rule:
    return Rule(lambda v: isinstance(v, list) and len(v) > 0 and (of is None or all(of(x) for x in v)), words)


INTEGER = Rule(is_int, "an integer")
POSITIVE_INTEGER = integer_from(1)
NON_NEGATIVE_INTEGER = integer_from(0)
POSITIVE_NUMBER = Rule(lambda v: is_number(v) and v > 0, "a positive number")
NON_NEGATIVE_NUMBER = Rule(lambda v: is_number(v) and v >= 0, "a non-negative number")
BOOLEAN = Rule(lambda v: isinstance(v, bool), "true or false")
MAPPING = Rule(lambda v: isinstance(v, dict), "a mapping")
NON_EMPTY_STRING = Rule(lambda v: isinstance(v, str) and v != "", "a non-empty string")
LOSS_RULES = {  # every parameter of settings.LOSSES
    "eps": number_in(0, 1),
    "alpha": number_in(0, 1),
    "tau": Rule(POSITIVE_NUMBER.test, "a positive number (the affinity temperature)"),
    "T": Rule(POSITIVE_NUMBER.test, "a positive number (the teacher temperature)"),
    "token_budget": integer_from(0, " (0 = no pooling)"),
    "ramp": number_in(0, 1, " (a share of training; 0 = no ramp)"),
}

GENERATOR_RULES = {name: integer_from(least) for name, least in GENERATOR_MINIMA.items()} | {  # every argument of GENERATOR_ARGUMENTS
    "seed": INTEGER,
    "typical_look": number_in(0, 1),
    "classes": Rule(lambda v: isinstance(v, (list, tuple)) and len(v) > 0 and set(v) <= set(VOC_OBJECT_CLASSES),
                    "a non-empty list of VOC class indices in 1..20"),
}


class Section:
    """Reads one section of the parameters; every failure is a :class:`ParamsError` naming the file and the key."""

    def __init__(self, tree: Any, prefix: str, source: str) -> None:
        self.tree, self.prefix, self.source = tree, prefix, source

    def fail(self, message: str):
        raise ParamsError(f"{self.source}: {message}")

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def get(self, name: str, rule: Rule | None = None) -> Any:
        node = self.tree
        for part in name.split("."):
            if not isinstance(node, dict) or part not in node:
                self.fail(f"missing parameter {self.key(name)}")
            node = node[part]
        if rule is not None and not rule(node):
            self.fail(f"{self.key(name)} must be {rule.description}, got {node!r}")
        return node

    def section(self, name: str, rule: Rule = MAPPING) -> Section:
        return Section(self.get(name, rule), self.key(name), self.source)

    def names(self, name: str, known, where: str) -> tuple:
        """A non-empty list whose every entry is among ``known``."""
        values = self.get(name, non_empty_list())
        for value in values:
            if value not in known:
                self.fail(f"{self.key(name)} names {value!r}, which is not under {where} ({', '.join(map(str, known))})")
        return tuple(values)

    def size(self, name: str, least: int = 1) -> tuple[int, int]:
        element = integer_from(least)
        words = "[height, width] of " + ("positive integers" if least == 1 else f"integers >= {least}")
        return tuple(self.get(name, Rule(lambda v: isinstance(v, list) and len(v) == 2 and all(element(x) for x in v), words)))


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
    for name, value in values.items():
        if not GENERATOR_RULES[name](value):
            raise ParamsError(f"{name} must be {GENERATOR_RULES[name].description}, got {value!r}", key=name)


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
    scaled_from: str | None = None  # the dataset this one is, generated ``scale`` times higher and wider (the scale check)
    scale: int = 1

    def scaled(self, factor: int) -> DatasetSettings:
        """This generated dataset drawn ``factor`` times higher and wider, named ``<name>-x<factor>``: the generator's
        arguments but the size (the same seed and ids; its draws depend on the size, so the scenes are new ones of the
        same distribution), crop and base size ``factor`` times larger, the same training."""
        size = {key: self.generate[key] * factor for key in ("height", "width")}
        return replace(self, name=f"{self.name}-x{factor}", root=f"{self.root}-x{factor}", generate=self.generate | size,
                       base_size=self.base_size * factor, crop=(self.crop[0] * factor, self.crop[1] * factor),
                       scaled_from=self.name, scale=factor)


@dataclass(frozen=True)
class LossSettings:
    """``methods.<name>``: a method is a named loss configuration; its target is
    ``alpha * onehot(y) + (1 - alpha) * q`` with ``q`` given by ``smoothing`` (docs/method.md, steps 1-6).
    A parameter its loss does not read (``settings.LOSSES``) is ``None``: ``ce`` and ``ls`` hold no tau."""

    loss: str
    alpha: float  # weight of the one-hot label
    smoothing: str | None  # None (ce), "uniform" (ls), "aggregated" (PALS) or "image_mean" (uniform affinity)
    tau: float | None  # the affinity temperature
    T: float | None  # the teacher temperature
    token_budget: int | None  # 0: no pooling of keys and values before the aggregation
    ramp: float | None  # share of training over which the self-target's weight grows from 0 (0: full weight from the start)

    @staticmethod
    def of(loss: str, options: dict) -> LossSettings:
        """The settings of ``loss`` with ``options``; a :class:`ParamsError` naming the parameter (``key``) otherwise."""
        if loss not in LOSSES:
            raise ParamsError(f"unknown loss {loss!r}; expected one of {', '.join(LOSSES)}")
        allowed = list(LOSSES[loss])
        unknown = sorted(set(options) - set(allowed))
        if unknown:
            raise ParamsError(f"loss {loss!r} takes parameters {allowed or 'none'}, got unknown {unknown}")
        values = LOSSES[loss] | options
        for key, value in values.items():
            if not LOSS_RULES[key](value):
                raise ParamsError(f"{key} must be {LOSS_RULES[key].description}, got {value!r}", key=key)
        alpha = {"ce": 1.0, "ls": 1.0 - values.get("eps", 0.0)}.get(loss, values.get("alpha"))
        read = {key: values.get(key) for key in ("tau", "T", "token_budget", "ramp")}
        return LossSettings(loss, float(alpha), SMOOTHING[loss] if alpha < 1.0 else None,
                            **{key: None if value is None else type(LOSSES[loss][key])(value) for key, value in read.items()})

    def describe(self) -> str:
        """The loss and the parameters it reads, as a reader writes them: ``ce``, ``ls: eps 0.1``, ``pals: alpha 0.5, tau 0.1, T 1``."""
        if self.loss == "ls":
            parameters = {"eps": 1.0 - self.alpha}
        else:
            parameters = {"alpha": None if self.loss == "ce" else self.alpha, "tau": self.tau, "T": self.T,
                          "token budget": self.token_budget or None, "ramp": self.ramp or None}
        shown = [f"{key} {value:.6g}" for key, value in parameters.items() if value is not None]
        return f"{self.loss}: {', '.join(shown)}" if shown else self.loss


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
    scale: Study | None = None  # runs of the study or the sweep on their datasets generated larger (``datasets`` holds those)

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
        """Every run of the study, the sweep, the schedule and the scale checks (those on ``dataset`` if given), in that order."""
        every = self.study.runs() + [run for extra in (self.ablation, self.schedule, self.scale) if extra for run in extra.runs()]
        return [run for run in every if dataset in (None, run.dataset)]

    def run(self, run: Run) -> RunSettings:
        return RunSettings(run, self.dataset(run.dataset), self.loss(run.method), self.model, self.train_of(run.dataset, run.schedule),
                           self.evaluate)


def resolve(params: dict, source: str) -> Settings:
    """Check every section of ``params`` (read from ``source``) that a stage reads and return them as :class:`Settings`."""
    top = Section(params, "", source)
    datasets_tree = top.get("datasets", Rule(lambda v: isinstance(v, dict) and len(v) > 0, "a mapping of dataset names to settings"))
    methods_tree = top.get("methods", Rule(lambda v: isinstance(v, dict) and len(v) > 0, "a mapping of method names to loss settings"))
    study = read_study(top, datasets_tree, methods_tree)
    datasets = {name: read_dataset(top.section(f"datasets.{name}"), name) for name in datasets_tree}
    methods = {name: read_method(top.section(f"methods.{name}", Rule(MAPPING.test, "a mapping with a loss"))) for name in methods_tree}
    model = ModelSettings(top.get("model.name", one_of(MODELS)), top.get("model.pretrained_backbone", BOOLEAN))
    train_tree = top.get("train", MAPPING)
    train = read_train(top.section("train"))
    for name, dataset in datasets.items():  # a dataset's own train settings, checked as the whole section they complete
        if "train" in datasets_tree[name]:
            own = top.get(f"datasets.{name}.train", Rule(lambda v: isinstance(v, dict) and set(v) <= set(train_tree),
                                                         f"a mapping of train settings ({', '.join(train_tree)})"))
            read_train(Section(train_tree | own, f"datasets.{name}.train", source))
    scale = Rule(lambda v: is_number(v) and 0 < v <= 4, "a scale in (0, 4]")
    scales = top.get("evaluate.scales", Rule(lambda v: non_empty_list(scale)(v) and len(set(v)) == len(v),
                                             "a non-empty list of distinct scales in (0, 4]"))
    evaluate = EvaluateSettings(top.get("evaluate.figure_images", NON_NEGATIVE_INTEGER), top.get("evaluate.calibration_bins", POSITIVE_INTEGER),
                                top.get("evaluate.boundary_width", POSITIVE_INTEGER), tuple(float(s) for s in scales),
                                top.get("evaluate.flip", BOOLEAN), top.get("evaluate.batch_size", POSITIVE_INTEGER))
    ablation = read_ablation(top, study, methods_tree) if "ablation" in params else None
    scale = None
    if "scale" in params:
        scale, scaled = read_scale(top, study, ablation, datasets)
        datasets |= scaled
    return Settings(study, datasets, methods, model, train, evaluate, read_pretrain(top.section("pretrain")),
                    read_explain(top, study, methods), ablation, read_schedule(top, study) if "schedule" in params else None, scale)


def read_study(top: Section, datasets: dict, methods: dict) -> Study:
    study = top.section("study")
    names = study.names("datasets", datasets, "datasets")
    chosen = study.names("methods", methods, "methods")
    if BASELINE not in chosen:
        top.fail(f"study.methods must include {BASELINE}, the baseline every difference is measured against, got {list(chosen)}")
    percents = study.get("percents", non_empty_list(Rule(lambda p: is_int(p) and 0 < p <= 100, ""),
                                                    "a non-empty list of integer percents in (0, 100]"))
    seeds = study.get("seeds", non_empty_list(INTEGER, "a non-empty list of integers"))
    for key, values in (("percents", percents), ("seeds", seeds)):
        if len(set(values)) != len(values):
            top.fail(f"study.{key} lists a value twice: {values}")
    return Study(names, chosen, tuple(percents), tuple(seeds))


def read_dataset(spec: Section, name: str) -> DatasetSettings:
    kind = spec.get("kind", one_of(DATASET_KINDS))
    strings = {key: spec.get(key, NON_EMPTY_STRING) for key in ("root", "train_split", "eval_split")}
    generate = None
    if spec.tree.get("generate") is not None:
        generate = spec.get("generate", Rule(MAPPING.test, "a mapping of generator arguments"))
        try:
            check_generator_arguments(kind, generate)
        except ParamsError as error:
            spec.fail(f"{spec.key('generate')}.{error}")
    return DatasetSettings(
        name=name, kind=kind, **strings,
        num_classes=spec.get("num_classes", integer_from(2)),
        base_size=spec.get("base_size", POSITIVE_INTEGER),
        scale_range=tuple(spec.get("scale_range", Rule(lambda v: isinstance(v, list) and len(v) == 2 and all(is_number(x) for x in v)
                                                       and 0 < v[0] <= v[1], "[low, high] with 0 < low <= high"))),
        crop=spec.size("crop"), generate=generate, train=dict(spec.tree.get("train", {})))


def read_method(spec: Section) -> LossSettings:
    loss = spec.get("loss", one_of(LOSSES))
    try:
        return LossSettings.of(loss, {key: value for key, value in spec.tree.items() if key != "loss"})
    except ParamsError as error:  # a parameter's error names it within the method, the others the method
        spec.fail(f"{spec.prefix}.{error}" if error.key else f"{spec.prefix}: {error}")


def read_optimisation(section: Section) -> dict:
    return {
        "iterations": section.get("iterations", POSITIVE_INTEGER),
        "batch_size": section.get("batch_size", POSITIVE_INTEGER),
        "lr": section.get("lr", POSITIVE_NUMBER),
        "momentum": section.get("momentum", Rule(lambda v: is_number(v) and 0 <= v < 1, "a number in [0, 1)")),
        "weight_decay": section.get("weight_decay", NON_NEGATIVE_NUMBER),
        "poly_power": section.get("poly_power", NON_NEGATIVE_NUMBER),
    }


def read_train(section: Section) -> TrainSettings:
    return TrainSettings(
        **read_optimisation(section),
        checkpoint_every=section.get("checkpoint_every", POSITIVE_INTEGER),
        workers=section.get("workers", NON_NEGATIVE_INTEGER),
        cache_decoded=section.get("cache_decoded", BOOLEAN),
        amp=section.get("amp", one_of(AMP)),
        runs_at_once=section.get("runs_at_once", POSITIVE_INTEGER))


def read_pretrain(section: Section) -> PretrainSettings:
    """The source task of the pretrain stage (``paper_repro/pretrain.py``)."""
    return PretrainSettings(
        **read_optimisation(section),
        images=section.get("images", POSITIVE_INTEGER),
        held_out=section.get("held_out", POSITIVE_INTEGER),
        size=section.size("size", max(GENERATOR_MINIMA["height"], GENERATOR_MINIMA["width"])),
        seed=section.get("seed", INTEGER),
        typical_look=section.get("typical_look", number_in(0, 1)))


def read_explain(top: Section, study: Study, methods: dict[str, LossSettings]) -> ExplainSettings:
    """The explanation figure shows one PALS run of the study (method, percent, seed) per dataset."""
    method = top.get("explain.method", one_of(study.methods, f"study.methods ({', '.join(study.methods)})"))
    settings = ExplainSettings(
        method,
        top.get("explain.percent", one_of(study.percents, f"study.percents {list(study.percents)}")),
        top.get("explain.seed", one_of(study.seeds, f"study.seeds {list(study.seeds)}")),
        top.get("explain.pixels", POSITIVE_INTEGER))
    if methods[method].smoothing != "aggregated":
        top.fail(f"explain.method must be a method with the PALS aggregation (loss pals, alpha < 1), got {method!r}")
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
    return Study(**grid, schedule=schedule.get("factor", integer_from(2)))


def read_scale(top: Section, study: Study, ablation: Study | None,
               datasets: dict[str, DatasetSettings]) -> tuple[Study | None, dict[str, DatasetSettings]]:
    """Runs of the study or the sweep (their methods, percents and seeds) on their generated datasets drawn ``factor``
    times higher and wider, and those datasets by name (``<dataset>-x<factor>``). ``datasets: []`` runs none (a real
    dataset cannot be drawn larger)."""
    scale = top.section("scale")
    factor = scale.get("factor", integer_from(2))
    bases = scale.get("datasets", Rule(lambda v: isinstance(v, list), "a list of dataset names (empty: no scale check)"))
    if not bases:
        return None, {}
    grid = {key: scale.names(key, getattr(study, key), f"study.{key}") for key in ("datasets", "percents", "seeds")}
    known = study.methods + (ablation.methods if ablation else ())
    grid["methods"] = scale.names("methods", known, "study.methods or ablation.methods")
    at_one = set(study.runs() + (ablation.runs() if ablation else []))
    for run in Study(**grid).runs():
        if run not in at_one:
            top.fail(f"scale: {run.method} at {run.percent}% seed {run.seed} on {run.dataset} is not a run of the study or the "
                     f"ablation, so it has nothing to be compared with at 1x")
    scaled = {}
    for name in grid["datasets"]:
        if datasets[name].generate is None:
            top.fail(f"scale.datasets names {name!r}, which has no generate: section; only a generated dataset can be drawn larger")
        spec = datasets[name].scaled(factor)
        if spec.name in datasets:
            top.fail(f"scale: the dataset {name!r} drawn {factor}x would be named {spec.name!r}, which datasets already holds")
        scaled[spec.name] = spec
    return Study(tuple(scaled), grid["methods"], grid["percents"], grid["seeds"]), scaled
