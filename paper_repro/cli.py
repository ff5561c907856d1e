"""``python -m paper_repro <stage>``: the pipeline's stages as commands.

Stages, in data-flow order: ``generate`` (write the synthetic tree, or check a real one),
``subsets`` (nested label-fraction manifests and their class coverage), ``pretrain`` (the
small backbone's weights), ``run`` (one cell of the matrix: ``train``, then ``evaluate``, which
also exist on their own), ``report`` (tables over all runs) and ``explain`` (PALS at a few
pixels, for the explanation figure); ``bench`` measures speed and memory and ``launch`` runs
the matrix's cells as parallel jobs. Each reads
``--params`` (default ``params.yaml``) with ``--set dotted.key=value`` overrides, spelled as
``dvc exp run -S``. A user mistake ends with a one-line error and exit status 2.

This module only parses arguments and dispatches: each stage's work is the entry function
of its own module (``STAGES``).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import NamedTuple

from .config import dataset_params, load_params, method_params
from .errors import ParamsError, UserError

class Stage(NamedTuple):
    module: str  # paper_repro.<module> holds the stage's work
    entry: str  # its entry function, called as entry(params, **target)
    target: str | None  # what it works on: "dataset" (entry(params, dataset=...)), "run" (entry(params, run=Run(...))),
    # "notebook" (entry(params, name=...)), "launch" (entry(params, params_path=..., overrides=..., show=..., wait=...)) or nothing
    help: str


STAGES = {
    "generate": Stage("generate", "generate", "dataset", "write the synthetic dataset tree (or check a real one) and summarise it"),
    "subsets": Stage("subsets", "make_subsets", "dataset", "write nested label-fraction manifests per seed and their class coverage"),
    "pretrain": Stage("pretrain", "pretrain", None, "pretrain the deeplabv3plus_small backbone on a generated source task (the ImageNet analog)"),
    "train": Stage("train", "train", "run", "train one run (dataset, method, fraction, seed), resuming from its last checkpoint"),
    "evaluate": Stage("evaluate", "evaluate", "run", "evaluate one trained run on the full-resolution evaluation split"),
    "run": Stage("cell", "train_and_evaluate", "run", "train one run (resuming from its last checkpoint), then evaluate it: one cell of the matrix"),
    "report": Stage("report", "report", None, "summarise all runs into tables (mean, std, n, delta vs ce)"),
    "explain": Stage("explain", "explain", "dataset", "save the affinity maps and targets of the run named by explain: at a few pixels of one image"),
    "notebook": Stage("notebook", "execute", "notebook", "execute one notebook of notebooks_src/ into notebooks/, written only once every cell has run"),
    "bench": Stage("bench", "bench", None, "time and measure the memory of PALS aggregation (naive vs fused) and ce/ls/pals training steps"),
    "launch": Stage("launch", "launch", "launch", "run the matrix cells that are missing or stale as parallel jobs (local or SLURM) and record them in DVC"),
}


def percent(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if not 0 < number <= 100:
        raise argparse.ArgumentTypeError(f"must be an integer percent in (0, 100], got {value}")
    return number


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m paper_repro", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="stage", required=True, metavar="stage")
    for name, stage in STAGES.items():
        sub = commands.add_parser(name, help=stage.help, description=stage.help)
        sub.add_argument("--params", default="params.yaml", help="parameter file (default: params.yaml)")
        sub.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                         help="override a parameter, e.g. --set train.iterations=50 (repeatable)")
        if stage.target in ("dataset", "run"):
            sub.add_argument("--dataset", required=True, help="a dataset name under `datasets:` in the parameters")
        if stage.target == "notebook":
            sub.add_argument("--name", required=True, help="a notebook of notebooks_src/, without .ipynb")
        if stage.target == "run":
            sub.add_argument("--method", required=True, help="a method name under `methods:` (ce, ls, pals, ...)")
            sub.add_argument("--fraction", required=True, type=percent, help="labelled fraction as an integer percent: 10, 30, 50, 100")
            sub.add_argument("--seed", required=True, type=int, help="seed of the subset draw, initialisation and data order")
        if stage.target == "launch":
            sub.add_argument("--status", action="store_true", help="print the table of cells (pending, running, done, failed) and exit")
            sub.add_argument("--no-wait", action="store_true", help="submit and return (slurm); a later launch picks the jobs up again")
    return parser


def stage_arguments(params: dict, args: argparse.Namespace) -> dict:
    """The entry function's keyword arguments: a dataset, a run, a notebook name or nothing."""
    from .layout import Run

    target = STAGES[args.stage].target
    if target is None:
        return {}
    if target == "notebook":
        return {"name": args.name}
    if target == "launch":
        return {"params_path": args.params, "overrides": args.overrides, "show": args.status, "wait": not args.no_wait}
    dataset_params(params, args.dataset)
    if target == "dataset":
        return {"dataset": args.dataset}
    method_params(params, args.method)
    return {"run": Run(args.dataset, args.method, args.fraction, args.seed)}


# What a user or the machine can cause: a one-line error and exit status 2, never a traceback. The
# project's own errors (paper_repro/errors.py), a missing input and a file it may not read.
USER_ERRORS = (UserError, FileNotFoundError, PermissionError)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    stage = STAGES[args.stage]
    try:
        params = load_params(args.params, args.overrides)
        if args.stage == "bench" and "bench" not in params:
            raise ParamsError(f"{args.params}: no bench: section (see params.yaml)")
        entry = getattr(importlib.import_module(f"{__package__}.{stage.module}"), stage.entry)
        entry(params, **stage_arguments(params, args))
    except KeyboardInterrupt:
        again = "resume from the last checkpoint" if args.stage in ("train", "run") else "start the stage again"
        print(f"interrupted: nothing half-written was kept; run the same command again to {again}", file=sys.stderr)
        return 130
    except USER_ERRORS as error:
        # an error raised in a data-loading worker arrives with the worker's traceback: its last line is the error
        print(f"error: {str(error).strip().splitlines()[-1]}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
