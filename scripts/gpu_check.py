"""The GPU check: run it unchanged on a machine with CUDA, from the repository root.

    python scripts/gpu_check.py

It logs each part and each case as it starts and ends, and is sized to finish in about three
minutes on one H200-class GPU (no child processes, no dataset beyond a small generated one).

1. ``python -m paper_repro bench`` with the default parameters, in this process: writes
   ``results/bench/bench_cuda.json``, which notebook 07 shows beside the CPU report.
2. PALS's aggregation at paper scale: ``B = 8`` images of ``N = 36864`` feature pixels (a 768 x 768
   crop at stride 4), ``D = 256``, ``K = 19``, in the Cityscapes preset's autocast dtype: the kernel
   the dispatcher chooses and each fused kernel alone, beside the FLOP bound at this card's
   measured matrix-multiply rate.
3. A paper-scale smoke run: ResNet-101 DeepLabV3+ (torchvision architecture, random weights: it
   measures speed and memory, not accuracy) at the Cityscapes preset's crop, batch, optimiser and
   autocast dtype, ``ce`` and ``pals`` alternating, timed by the benchmark's ``step_times`` (the
   training loop's own ``training_step``): the median step time of each, pals / ce and each one's
   peak GPU memory.
4. Reproducibility: one short embedded street run, trained twice from scratch: are the two runs'
   weights identical? Then twice more with ``torch.use_deterministic_algorithms`` (operations without
   a deterministic CUDA implementation only warn; they are listed), with the time each pair took.

Parts 2-4 go to ``results/bench/smoke_cuda.json``. On a machine without CUDA it says so and exits
with status 0 without measuring anything.
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import replace
from pathlib import Path

import torch

from paper_repro.atomic import write_json
from paper_repro.bench import FUSED_KERNELS, _aggregation_case, run_bench, step_memory, step_times
from paper_repro.cli import LOG_FORMAT
from paper_repro.config import load_settings
from paper_repro.data import open_dataset
from paper_repro.data.synthetic import GENERATORS
from paper_repro.layout import Layout, Run
from paper_repro.runtime import precision_name
from paper_repro.runtime import device as compute_device
from paper_repro.settings import ABLATED, Settings
from paper_repro.subsets import write_manifest
from paper_repro.tool_settings import load_bench
from paper_repro.train import train

log = logging.getLogger("gpu_check")
SMOKE_METHODS = ("ce", "pals")
PAPER_SCALE = {"batch": 8, "n": 36864, "dim": 256, "classes": 19}  # a 768 x 768 crop at stride 4, the decoder's 256 channels
TARGETS = {"aggregation_ms": 12.0, "pals_over_ce": 1.25}  # at paper scale on an H200-class GPU
CUBLAS_DETERMINISTIC = {"CUBLAS_WORKSPACE_CONFIG": ":4096:8"}  # what torch's deterministic mode asks of cuBLAS, set before any CUDA work


def matmul_tflops(device: torch.device, dtype: torch.dtype, size: int = 8192, repeats: int = 10) -> float:
    """This card's measured dense matrix-multiply rate in ``dtype`` (TFLOP/s): the FLOP bounds' reference."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    a @ b
    torch.cuda.synchronize(device)
    began = time.perf_counter()
    for _ in range(repeats):
        a @ b
    torch.cuda.synchronize(device)
    return 2 * size**3 * repeats / (time.perf_counter() - began) / 1e12


def paper_scale_aggregation(settings: Settings, device: torch.device) -> dict:
    """The aggregation at ``PAPER_SCALE`` in ``train.amp``: the dispatcher's kernel and every fused kernel alone
    (those that refuse the shapes are listed as such), with the FLOP bound ``2 B N^2 (D + K)``."""
    precision = precision_name(settings.train.amp, device)
    case = PAPER_SCALE | {"variant": "fused", "tau": settings.loss(ABLATED).tau, "precision": precision, "repeats": 10, "device": str(device)}
    chosen = _aggregation_case(case)
    alone = {}
    for kernel in FUSED_KERNELS:
        name = kernel.name.lower()
        try:
            alone[name] = round(_aggregation_case(case | {"kernel": name})["median_s"] * 1000, 2)
        except RuntimeError as error:  # this kernel does not take these shapes or this dtype
            alone[name] = f"refused: {str(error).splitlines()[0][:120]}"
    tflops = matmul_tflops(device, getattr(torch, precision))
    flops = 2 * PAPER_SCALE["batch"] * PAPER_SCALE["n"] ** 2 * (PAPER_SCALE["dim"] + PAPER_SCALE["classes"])
    return PAPER_SCALE | {
        "precision": precision, "kernel": chosen["kernel"], "ms": round(chosen["median_s"] * 1000, 2), "peak_mb": chosen["peak_mb"],
        "each_kernel_ms": alone, "matmul_tflops": round(tflops, 1), "flop_bound_ms": round(flops / tflops / 1e9, 2),
        "target_ms": TARGETS["aggregation_ms"]}


def smoke_run(settings: Settings, dataset: str, device: torch.device, steps: int, size: list[int] | None = None,
              batch: int | None = None) -> dict:
    """Median step time (s) of ``ce`` and ``pals`` and, on CUDA, each one's peak memory for the
    paper-scale model at ``dataset``'s crop and train batch size (or ``size`` and ``batch``),
    timed by the benchmark's own ``step_times`` and ``step_memory`` in ``train.amp`` on CUDA."""
    spec, train_settings = settings.dataset(dataset), settings.train_of(dataset)
    case = {"device": str(device), "model": "deeplabv3plus_resnet101", "classes": spec.num_classes, "train": train_settings,
            "losses": {method: settings.loss(method) for method in SMOKE_METHODS},
            "size": list(size or spec.crop), "batch": batch or train_settings.batch_size, "repeats": steps, "methods": SMOKE_METHODS}
    median = step_times(case)
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "model": case["model"], "size": case["size"], "batch": case["batch"], "steps": steps,
        "precision": precision_name(train_settings.amp, device),
        "step_seconds": median, "pals_over_ce": median["pals"] / median["ce"], "target_pals_over_ce": TARGETS["pals_over_ce"],
        "peak_memory_mb": {method: step_memory(case | {"method": method}) for method in SMOKE_METHODS} if device.type == "cuda" else None,
    }


def trained_weights(settings: Settings, run: Run, root: Path, ids: list[str]) -> tuple[dict, float, list[dict]]:
    """Train ``run`` from scratch in a workspace of its own at ``root``: ``(weights, seconds, CSV log rows)``."""
    layout = Layout(root)
    write_manifest(ids, layout.manifest(run.dataset, run.seed, run.percent))
    began = time.perf_counter()
    model = train(settings.run(run), layout)
    seconds = time.perf_counter() - began
    with open(layout.log(run), newline="") as handle:
        rows = list(csv.DictReader(handle))
    return torch.load(model, weights_only=True)["model"], seconds, rows


def identical(first: dict, second: dict) -> bool:
    return first.keys() == second.keys() and all(torch.equal(first[key], second[key]) for key in first)


def reproducibility(settings: Settings, dataset: str, workspace: Path, iterations: int, images: int = 32) -> dict:
    """One short ``pals`` run on ``dataset`` (generated small into ``workspace``, without the pretrained
    backbone), trained twice, then twice with deterministic algorithms: whether each pair's weights
    are identical, the seconds each pair took and, in deterministic mode, the operations that warned."""
    spec = settings.dataset(dataset)  # small, and trained on the check's schedule rather than the study's
    spec = replace(spec, root=str(workspace / "data"), generate=spec.generate | {"n_train": images, "n_val": 1}, train={})
    GENERATORS[spec.kind](spec.root, **spec.generate)
    ids = open_dataset(spec, spec.train_split).ids
    settings = replace(settings, datasets=settings.datasets | {dataset: spec}, model=replace(settings.model, pretrained_backbone=False),
                       train=replace(settings.train, iterations=iterations, checkpoint_every=iterations, workers=0))
    run = Run(dataset, "pals", 100, 0)
    report = {"dataset": dataset, "method": run.method, "images": images, "iterations": iterations, "device": str(compute_device())}
    for mode in ("default", "deterministic"):
        log.info("reproducibility: training %s twice (%s algorithms)", run.name, mode)
        torch.use_deterministic_algorithms(mode == "deterministic", warn_only=True)
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                (first, seconds_first, rows), (second, seconds_second, _) = (
                    trained_weights(settings, run, workspace / f"{mode}-{attempt}", ids) for attempt in (1, 2))
        finally:
            torch.use_deterministic_algorithms(False)
        nondeterministic = sorted({str(w.message).split(" does not have a deterministic")[0] for w in caught
                                   if "deterministic" in str(w.message)})
        report[mode] = {"identical": identical(first, second), "seconds": [round(seconds_first, 2), round(seconds_second, 2)],
                        "step_ms": round(1000 * statistics.median(float(row["step_seconds"]) for row in rows), 2),
                        "data_ms": round(1000 * statistics.median(float(row["data_seconds"]) for row in rows), 2)}
        if mode == "deterministic":
            report[mode]["warned"] = nondeterministic
        log.info("reproducibility (%s algorithms): weights identical: %s; %s s per run", mode, report[mode]["identical"],
                 report[mode]["seconds"])
    report["deterministic_over_default_time"] = round(sum(report["deterministic"]["seconds"]) / sum(report["default"]["seconds"]), 3)
    return report


def timed_part(name: str, function, *args, **kwargs):
    log.info("part %s: started", name)
    began = time.perf_counter()
    result = function(*args, **kwargs)
    log.info("part %s: done in %.1f s", name, time.perf_counter() - began)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="presets/cityscapes.yaml", help="parameters of the paper-scale parts (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per method after two warm-up steps (default: %(default)s)")
    parser.add_argument("--iterations", type=int, default=100, help="iterations of the reproducibility run (default: %(default)s)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device is visible: the GPU check measures nothing here (run it on a GPU machine)")
        return 0
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    os.environ.update(CUBLAS_DETERMINISTIC)
    os.environ.setdefault("TQDM_DISABLE", "1")  # the log lines say what runs
    device = torch.device("cuda")
    began = time.perf_counter()
    timed_part("1/4 bench", run_bench, load_settings(), load_bench())
    settings = load_settings(args.preset)
    [dataset] = settings.study.datasets
    report = {"device": torch.cuda.get_device_name(device), "torch": torch.__version__, "cuda": torch.version.cuda}
    report["aggregation"] = timed_part("2/4 paper-scale aggregation", paper_scale_aggregation, settings, device)
    log.info("aggregation at B=8, N=36864: %s ms on %s (target %s ms, FLOP bound %s ms)", report["aggregation"]["ms"],
             report["aggregation"]["kernel"], TARGETS["aggregation_ms"], report["aggregation"]["flop_bound_ms"])
    smoke = timed_part("3/4 smoke run", smoke_run, settings, dataset, device, args.steps)
    report |= {"smoke": smoke}
    for method, seconds in smoke["step_seconds"].items():
        log.info("%s: %.1f ms per step", method, seconds * 1000)
    peaks = ", ".join(f"{method} {megabytes:.0f} MB" for method, megabytes in smoke["peak_memory_mb"].items())
    log.info("%s at %d x %d, batch %d, %s: pals / ce %.2f (target %.2f), peak memory %s", smoke["model"], *smoke["size"], smoke["batch"],
             smoke["precision"], smoke["pals_over_ce"], TARGETS["pals_over_ce"], peaks)
    with tempfile.TemporaryDirectory() as workspace:
        report["reproducibility"] = timed_part("4/4 reproducibility", reproducibility, load_settings(), "synthetic-cityscapes",
                                               Path(workspace), args.iterations)
    report["seconds"] = round(time.perf_counter() - began, 1)
    write_json(report, Path("results/bench/smoke_cuda.json"))
    log.info("the GPU check took %.0f s; wrote results/bench/bench_cuda.json and results/bench/smoke_cuda.json", report["seconds"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
