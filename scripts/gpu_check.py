"""The GPU check: run it unchanged on a machine with CUDA, from the repository root.

    python scripts/gpu_check.py

1. ``python -m paper_repro bench`` with the default parameters: writes
   ``results/bench/bench_cuda.json``, which notebook 07 shows beside the CPU report.
2. A paper-scale smoke run: ResNet-101 DeepLabV3+ (torchvision architecture, random weights:
   the smoke run measures speed and memory, not accuracy) at the Cityscapes preset's crop,
   batch, optimiser and autocast dtype, ``ce`` and ``pals`` alternating, through the training
   loop's own ``training_step``. It prints the median step time of each, the pals / ce ratio
   and the peak GPU memory, and writes them to ``results/bench/smoke_cuda.json``.

On a machine without CUDA it says so and exits with status 0 without measuring anything.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from paper_repro.atomic import write_json
from paper_repro.config import load_params, method_loss
from paper_repro.models import build_model
from paper_repro.train import autocast_dtype, build_optimisation, training_step

SMOKE_METHODS = ("ce", "pals")


def smoke_run(params: dict, dataset: str, device: torch.device, steps: int, size: list[int] | None = None,
              batch: int | None = None) -> dict:
    """Median step time (s) of ``ce`` and ``pals`` and the peak memory of the paper-scale model at
    ``dataset``'s crop and ``train.batch_size`` (or ``size`` and ``batch``), in ``train.amp`` on CUDA."""
    spec = params["datasets"][dataset]
    height, width = size or spec["crop"]
    batch = batch or params["train"]["batch_size"]
    dtype = autocast_dtype(params["train"]["amp"], device)
    torch.manual_seed(0)
    images = torch.randn(batch, 3, height, width).to(device, memory_format=torch.channels_last)
    masks = torch.randint(0, spec["num_classes"], (batch, height, width)).to(device)
    runs = {}
    for method in SMOKE_METHODS:
        model = build_model("deeplabv3plus_resnet101", spec["num_classes"]).to(device, memory_format=torch.channels_last)
        criterion = method_loss(params, method, spec["num_classes"])
        optimizer, scheduler, scaler = build_optimisation(model, params["train"], dtype, device)
        runs[method] = (model, criterion, optimizer, scheduler, scaler)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = {method: [] for method in SMOKE_METHODS}
    for step in range(steps + 1):  # the first step of each method is a warm-up
        for method, (model, criterion, optimizer, scheduler, scaler) in runs.items():
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            began = time.perf_counter()
            training_step(model, criterion, optimizer, scheduler, scaler, images, masks, dtype)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if step:
                times[method].append(time.perf_counter() - began)
    median = {method: statistics.median(values) for method, values in times.items()}
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "model": "deeplabv3plus_resnet101", "size": [height, width], "batch": batch,
        "precision": str(dtype or torch.float32).removeprefix("torch."), "steps": steps,
        "step_seconds": median, "pals_over_ce": median["pals"] / median["ce"],
        "peak_memory_mb": round(torch.cuda.max_memory_allocated(device) / 2**20, 1) if device.type == "cuda" else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="presets/cityscapes.yaml", help="parameters of the smoke run (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per method after one warm-up (default: %(default)s)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device is visible: the GPU check measures nothing here (run it on a GPU machine)")
        return 0
    subprocess.run([sys.executable, "-m", "paper_repro", "bench"], check=True)
    params = load_params(args.preset)
    [dataset] = params["study"]["datasets"]
    report = smoke_run(params, dataset, torch.device("cuda"), args.steps)
    for method, seconds in report["step_seconds"].items():
        print(f"{method}: {seconds * 1000:.0f} ms per step")
    print(f"{report['model']} at {report['size'][0]} x {report['size'][1]}, batch {report['batch']}, {report['precision']} "
          f"on {report['device']}: pals / ce {report['pals_over_ce']:.2f}, peak memory {report['peak_memory_mb']:.0f} MB")
    write_json(report, Path("results/bench/smoke_cuda.json"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
