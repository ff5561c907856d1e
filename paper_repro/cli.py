"""``python -m paper_repro <stage>``: the pipeline's stages as commands.

Stages, in data-flow order: ``generate`` (write the synthetic tree, or check a real one),
``subsets`` (nested label-fraction manifests and their class coverage), ``train`` (one run),
``evaluate`` (one run's metrics), ``report`` (tables over all runs) and ``explain`` (PALS at a
few pixels, for the explanation figure). Each reads
``--params`` (default ``params.yaml``) with ``--set dotted.key=value`` overrides, spelled as
``dvc exp run -S``. A user mistake ends with a one-line error and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from . import config
from .atomic import atomic_folder
from .config import ParamsError, dataset_params, load_params, run_name

log = logging.getLogger("paper_repro")


def stage_generate(params: dict, args: argparse.Namespace) -> None:
    from .data import open_dataset
    from .data.synthetic import GENERATORS
    from .evaluate import write_json

    spec = dataset_params(params, args.dataset)
    stage_dir = config.DATA_DIR / args.dataset
    if spec.get("generate"):
        if Path(spec["root"]) != stage_dir:
            raise ParamsError(f"datasets.{args.dataset}.root must be {stage_dir} for a generated dataset, got {spec['root']}")
        log.info("generating %s into %s", args.dataset, stage_dir)
        GENERATORS[spec["kind"]](stage_dir, **spec["generate"])
    splits = {split: len(open_dataset(spec, split)) for split in (spec.get("train_split", "train"), spec.get("eval_split", "val"))}
    summary = {"dataset": args.dataset, "kind": spec["kind"], "root": spec["root"], "images": splits}
    if not spec.get("generate"):  # a real dataset stays where it is; the stage records where and what
        write_json(summary, stage_dir / "source.json")
    write_json(summary, config.RESULTS_DIR / "data" / f"{args.dataset}.json")
    export_samples(open_dataset(spec, spec.get("eval_split", "val")), params["evaluate"]["figure_images"],
                   config.RESULTS_DIR / "samples" / args.dataset)
    log.info("%s: %s", args.dataset, json.dumps(splits))


def export_samples(data, count: int, folder: Path) -> None:
    """Copy the first ``count`` images (RGB PNG) and train-id labels of ``data`` for the figures."""
    from PIL import Image

    with atomic_folder(folder) as staging:
        for index in range(min(count, len(data))):
            with Image.open(data.files[index][0]) as image:
                image.convert("RGB").save(staging / f"{data.ids[index]}_image.png")
            Image.fromarray(data.load_label(index)).save(staging / f"{data.ids[index]}_label.png")


def stage_subsets(params: dict, args: argparse.Namespace) -> None:
    import pandas as pd

    from .data import open_dataset
    from .data.subsets import class_pixel_counts, nested_subsets, subset_coverage, write_manifest
    from .evaluate import class_names
    from .report import write_csv
    from .train import manifest_path

    spec = dataset_params(params, args.dataset)
    data = open_dataset(spec, spec.get("train_split", "train"))
    log.info("%s: reading %d training labels for class coverage", args.dataset, len(data))
    counts = class_pixel_counts(data, spec["num_classes"])
    percents = params["study"]["fractions"]
    coverage = []
    for seed in params["study"]["seeds"]:
        by_fraction = nested_subsets(data.ids, [p / 100 for p in percents], seed)
        subsets = {percent: by_fraction[percent / 100] for percent in percents}
        for percent, ids in subsets.items():
            write_manifest(ids, manifest_path(config.SUBSETS_DIR, args.dataset, seed, percent))
        coverage.append(subset_coverage(data.ids, counts, subsets, class_names(spec), seed))
    write_csv(pd.concat(coverage), config.RESULTS_DIR / "subsets" / f"{args.dataset}.csv")


def stage_train(params: dict, args: argparse.Namespace) -> None:
    from .train import train

    name = run_name(args.method, args.fraction, args.seed)
    train(params, args.dataset, args.method, args.fraction, args.seed,
          config.run_dir(args.dataset, name), config.log_path(args.dataset, name), config.SUBSETS_DIR)


def stage_evaluate(params: dict, args: argparse.Namespace) -> None:
    from .evaluate import evaluate

    name = run_name(args.method, args.fraction, args.seed)
    evaluate(params, args.dataset, config.run_dir(args.dataset, name) / "model.pt",
             config.metrics_path(args.dataset, name), config.predictions_dir(args.dataset, name))


def stage_explain(params: dict, args: argparse.Namespace) -> None:
    from .explain import explain

    name = run_name(args.method, args.fraction, args.seed)
    path = explain(params, args.dataset, args.method, config.run_dir(args.dataset, name) / "model.pt",
                   config.RESULTS_DIR / "explain" / f"{args.dataset}.npz")
    log.info("wrote %s", path)


def stage_bench(params: dict, args: argparse.Namespace) -> None:
    import pandas as pd

    from .bench import run_bench

    if "bench" not in params:
        raise ParamsError(f"{args.params}: no bench: section (see params.yaml)")
    report = run_bench(params, config.RESULTS_DIR / "bench")
    print(json.dumps(report["device"]))
    with pd.option_context("display.width", 250, "display.max_columns", 30):
        for section in ("aggregation", "steps", "loader"):
            print(pd.DataFrame(report[section]).drop(columns=["device", "repeats"], errors="ignore").to_string(index=False))


def stage_report(params: dict, args: argparse.Namespace) -> None:
    from .report import report

    for name, path in report(params).items():
        log.info("wrote %s table %s", name, path)


STAGES = {
    "generate": (stage_generate, "write the synthetic dataset tree (or check a real one) and summarise it"),
    "subsets": (stage_subsets, "write nested label-fraction manifests per seed and their class coverage"),
    "train": (stage_train, "train one run (dataset, method, fraction, seed), resuming from its last checkpoint"),
    "evaluate": (stage_evaluate, "evaluate one trained run on the full-resolution evaluation split"),
    "report": (stage_report, "summarise all runs into tables (mean, std, n, delta vs ce)"),
    "bench": (stage_bench, "time and measure the memory of PALS aggregation (naive vs fused) and ce/ls/pals training steps"),
    "explain": (stage_explain, "save a trained PALS run's affinity maps and targets at a few pixels of one image"),
}


def percent(value: str) -> int:
    number = int(value)
    if not 0 < number <= 100:
        raise argparse.ArgumentTypeError(f"must be an integer percent in (0, 100], got {value}")
    return number


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m paper_repro", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="stage", required=True, metavar="stage")
    for stage, (_, help_text) in STAGES.items():
        sub = commands.add_parser(stage, help=help_text, description=help_text)
        sub.add_argument("--params", default="params.yaml", help="parameter file (default: params.yaml)")
        sub.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                         help="override a parameter, e.g. --set train.iterations=50 (repeatable)")
        if stage in ("generate", "subsets", "train", "evaluate", "explain"):
            sub.add_argument("--dataset", required=True, help="a dataset name under `datasets:` in the parameters")
        if stage in ("train", "evaluate", "explain"):
            sub.add_argument("--method", required=True, help="a method name under `methods:` (ce, ls, pals, ...)")
            sub.add_argument("--fraction", required=True, type=percent, help="labelled fraction as an integer percent: 10, 30, 50, 100")
            sub.add_argument("--seed", required=True, type=int, help="seed of the subset draw, initialisation and data order")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        params = load_params(args.params, args.overrides)
        if getattr(args, "dataset", None) is not None:
            dataset_params(params, args.dataset)
        if getattr(args, "method", None) is not None:
            config.method_params(params, args.method)
        STAGES[args.stage][0](params, args)
    except (ParamsError, FileNotFoundError, KeyError, ValueError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
