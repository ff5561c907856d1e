"""``python -m paper_repro <stage>``: the pipeline's stages as commands.

Stages, in data-flow order: ``generate`` (write the synthetic tree, or check a real one),
``subsets`` (nested label-percent manifests and their class coverage), ``pretrain`` (the
small backbone's weights), ``runs`` (every run on one dataset, each ``run``: ``train``, then
``evaluate``, which also exist on their own), ``report`` (tables over all runs) and ``explain`` (PALS at a few
pixels, for the explanation figure); ``bench`` measures speed and memory, ``launch`` runs the
study's runs as parallel jobs, ``preset`` writes a preset's effective parameters into
``params.yaml``, ``predict`` runs a trained model on any images or writes a test-server
submission and ``compare`` sets this workspace's results beside another run's. Each reads
``--params`` (default ``params.yaml``) with ``--set dotted.key=value`` overrides, spelled as
``dvc exp run -S``. A user mistake ends with a one-line error and exit
status 2.

In a DVC workspace (a ``dvc.yaml`` here) the stage commands write what ``dvc.yaml`` tracks, so
they run with the parameters DVC records: ``params.yaml`` without overrides (but for the ``train``
settings that change no output, ``TrainSettings.RESUMABLE_ACROSS``). Try other values with
``dvc exp run -S key=value``, or in a copy of the workspace.

This module parses arguments, reads the settings once (``paper_repro/settings.py``) and hands
each stage's entry function (``STAGES``) what it works on.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from pathlib import Path
from typing import NamedTuple

from .config import load_settings, write_preset
from .errors import ParamsError, UserError
from .settings import TrainSettings


class Stage(NamedTuple):
    module: str  # paper_repro.<module> holds the stage's work
    entry: str  # its entry function
    target: str | None  # what it works on: "dataset" (entry(settings, DatasetSettings)), "run" (entry(RunSettings)),
    # "notebook" (entry(name)), "compare" (entry(settings, reference, out)), "bench" (entry(settings, BenchSettings)),
    # "launch" (entry(settings, LaunchSettings, params_path=..., overrides=..., show=..., wait=...)) or None (entry(settings))
    help: str
    tracked: bool = True  # writes outputs dvc.yaml tracks


STAGES = {
    "generate": Stage("generate", "generate", "dataset", "write the synthetic dataset tree (or check a real one) and summarise it"),
    "subsets": Stage("subsets", "make_subsets", "dataset", "write nested label-percent manifests per seed and their class coverage"),
    "pretrain": Stage("pretrain", "pretrain", None, "pretrain the deeplabv3plus_small backbone on a generated source task (the ImageNet analog)"),
    "train": Stage("train", "train", "run", "train one run (dataset, method, percent, seed), resuming from its last checkpoint"),
    "evaluate": Stage("evaluate", "evaluate", "run", "evaluate one trained run on the full-resolution evaluation split"),
    "run": Stage("run", "run", "run", "train one run (resuming from its last checkpoint), then evaluate it: one run of the study"),
    "runs": Stage("run", "run_dataset", "dataset", "run every run on one dataset (study, sweep, schedule sensitivity), train.runs_at_once at a time"),
    "report": Stage("report", "report", None, "summarise all runs into tables (mean, std, n, delta vs ce)"),
    "explain": Stage("explain", "explain", "dataset", "save the affinity maps and targets of the run named by explain: at a few pixels of one image"),
    "notebook": Stage("notebook", "execute", "notebook", "execute one notebook of notebooks_src/ into notebooks/, written only once every cell has run"),
    "bench": Stage("bench", "bench", "bench", "time and measure the memory of PALS aggregation (naive vs fused) and ce/ls/pals training steps", False),
    "launch": Stage("launch", "launch", "launch", "run the study's runs that are missing or stale as parallel jobs (local or SLURM) and record them in DVC", False),
    "preset": Stage("config", "write_preset", "preset", "write a preset's effective parameters (merged over its base) into params.yaml, which DVC reads", False),
    "predict": Stage("predict", "predict", "predict", "predict with a trained run on any images, or write a split's test-server submission", False),
    "compare": Stage("compare", "compare", "compare", "compare every run's mIoU and every verdict with another copy of the study's results", False),
}
LOG_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"
OUTPUT_NEUTRAL = tuple(f"train.{key}" for key in TrainSettings.RESUMABLE_ACROSS)  # overrides that change no output


def percent(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if not 0 < number <= 100:
        raise argparse.ArgumentTypeError(f"must be an integer percent in (0, 100], got {value}")
    return number


def positive(value: str) -> int:
    if not value.isdigit() or int(value) == 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return int(value)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m paper_repro", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="stage", required=True, metavar="stage")
    for name, stage in STAGES.items():
        sub = commands.add_parser(name, help=stage.help, description=stage.help)
        if stage.target == "preset":
            sub.add_argument("preset", help="a preset file, e.g. presets/cityscapes.yaml")
            continue
        sub.add_argument("--params", default="params.yaml", help="parameter file (default: params.yaml)")
        sub.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                         help="override a parameter, e.g. --set train.iterations=50 (repeatable)")
        if stage.target == "dataset":
            sub.add_argument("--dataset", required=True, help="a dataset name under `datasets:` in the parameters")
        if stage.target == "notebook":
            sub.add_argument("--name", required=True, help="a notebook of notebooks_src/, without .ipynb")
        if stage.target == "run":
            sub.add_argument("--method", required=True, help="a method name under `methods:` (ce, ls, pals, ...)")
            sub.add_argument("--percent", required=True, type=percent, help="labelled share of the training images, an integer percent: 10, 30, 50, 100")
            sub.add_argument("--seed", required=True, type=int, help="seed of the subset draw, initialisation and data order")
            sub.add_argument("--schedule", type=positive, default=1, help="train this many times the dataset's iterations (default 1)")
        if stage.target in ("run", "predict"):
            sub.add_argument("--dataset", required=True, help="a dataset name under `datasets:` in the parameters")
        if stage.target == "predict":
            sub.add_argument("inputs", nargs="*", help="image files, folders of images or glob patterns (or --split)")
            sub.add_argument("--split", help="every image of this split of the dataset (e.g. test), instead of inputs")
            sub.add_argument("--model", help="a model.pt file, instead of --method, --percent and --seed")
            sub.add_argument("--method", help="the run's method")
            sub.add_argument("--percent", type=percent, help="the run's labelled percent")
            sub.add_argument("--seed", type=int, help="the run's seed")
            sub.add_argument("--out", required=True, help="the folder to write (written whole once every image is done)")
            sub.add_argument("--format", choices=("maps", "cityscapes", "voc"), default="maps",
                             help="maps: label PNG and colour overlay per image; cityscapes / voc: the test servers' submission layout")
            sub.add_argument("--confidence", action="store_true", help="also write the top class's probability per pixel (maps)")
            sub.add_argument("--archive", action="store_true", help="also pack the submission: <out>.zip (cityscapes), <out>.tar.gz (voc)")
        if stage.target == "compare":
            sub.add_argument("reference", help="the root of another copy of the repository whose results/metrics hold the same runs")
            sub.add_argument("--out", help="also write the per-cell table to this CSV file (and the per-run table beside it, *_runs.csv)")
        if stage.target == "launch":
            sub.add_argument("--status", action="store_true", help="print the table of runs (pending, running, done, failed) and exit")
            sub.add_argument("--no-wait", action="store_true", help="submit and return (slurm); a later launch picks the jobs up again")
    return parser


def check_tracked_outputs(args: argparse.Namespace) -> None:
    """In a DVC workspace, a stage command writes what DVC records as made from ``params.yaml``: refuse
    another parameter file or an override that would change those outputs behind DVC's back."""
    if not STAGES[args.stage].tracked or not Path("dvc.yaml").is_file():
        return
    changing = [assignment for assignment in args.overrides if not assignment.split("=", 1)[0].strip() in OUTPUT_NEUTRAL]
    if Path(args.params) != Path("params.yaml") or changing:
        what = f"--set {changing[0]}" if changing else f"--params {args.params}"
        raise ParamsError(f"{what}: in this DVC workspace the {args.stage} stage writes outputs dvc.yaml tracks, made from params.yaml; "
                          "run `dvc exp run -S key=value` (or edit params.yaml, or work in a copy without dvc.yaml)")


def call_stage(args: argparse.Namespace) -> None:
    """Read the settings once and call the stage's entry function with what it works on."""
    from .layout import Run

    stage = STAGES[args.stage]
    if stage.target == "preset":
        write_preset(args.preset)
        return
    check_tracked_outputs(args)
    settings = load_settings(args.params, args.overrides)
    entry = getattr(importlib.import_module(f"{__package__}.{stage.module}"), stage.entry)
    if stage.target is None:
        entry(settings)
    elif stage.target == "bench":
        from .tool_settings import load_bench

        entry(settings, load_bench(args.params, args.overrides))
    elif stage.target == "notebook":
        entry(args.name)
    elif stage.target == "launch":
        from .tool_settings import load_launch

        entry(settings, load_launch(args.params, args.overrides), params_path=args.params, overrides=args.overrides,
              show=args.status, wait=not args.no_wait)
    elif stage.target == "compare":
        entry(settings, Path(args.reference), Path(args.out) if args.out else None)
    elif stage.target == "dataset":
        entry(settings, settings.dataset(args.dataset))
    elif stage.target == "predict":
        entry(settings, settings.dataset(args.dataset), predicted_model(args), args.inputs, args.split, Path(args.out),
              args.format, args.confidence, args.archive)
    else:
        entry(settings.run(Run(args.dataset, args.method, args.percent, args.seed, args.schedule)))  # an unknown name: a one-line error


def predicted_model(args: argparse.Namespace) -> Path:
    """The model file ``predict`` uses: ``--model``, or the trained run that ``--method``, ``--percent`` and ``--seed`` name."""
    from .layout import Layout, Run

    named = [args.method, args.percent, args.seed]
    if bool(args.inputs) == bool(args.split):
        raise ParamsError("predict: give image files, folders or patterns, or --split, not both")
    if args.model and any(value is not None for value in named):
        raise ParamsError("predict: give --model or --method, --percent and --seed, not both")
    if args.model:
        return Path(args.model)
    if any(value is None for value in named):
        raise ParamsError("predict: name the run (--method, --percent and --seed) or give --model")
    return Layout().model(Run(args.dataset, args.method, args.percent, args.seed))


# What a user or the machine can cause: a one-line error and exit status 2, never a traceback. The
# project's own errors (paper_repro/errors.py), a missing input and a file it may not read.
USER_ERRORS = (UserError, FileNotFoundError, PermissionError)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    try:
        call_stage(args)
    except KeyboardInterrupt:
        again = "resume from the last checkpoint" if args.stage in ("train", "run", "runs") else "start the stage again"
        print(f"interrupted: nothing half-written was kept; run the same command again to {again}", file=sys.stderr)
        return 130
    except USER_ERRORS as error:
        # an error raised in a data-loading worker arrives with the worker's traceback: its last line is the error
        print(f"error: {str(error).strip().splitlines()[-1]}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
