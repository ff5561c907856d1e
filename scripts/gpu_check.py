"""The GPU check: run it unchanged on a machine with CUDA, from the repository root.

    python scripts/gpu_check.py

1. ``python -m paper_repro bench`` with the default parameters: writes
   ``results/bench/bench_cuda.json``, which notebook 07 shows beside the CPU report.
2. A paper-scale smoke run: ResNet-101 DeepLabV3+ (torchvision architecture, random weights:
   the smoke run measures speed and memory, not accuracy) at the Cityscapes preset's crop,
   batch, optimiser and autocast dtype, ``ce`` and ``pals`` alternating, timed by the
   benchmark's ``step_times`` (the training loop's own ``training_step``). It prints the median
   step time of each, the pals / ce ratio and each one's peak GPU memory (``step_memory``), and
   writes them to ``results/bench/smoke_cuda.json``.

On a machine without CUDA it says so and exits with status 0 without measuring anything.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import torch

from paper_repro.atomic import write_json
from paper_repro.bench import step_memory, step_times
from paper_repro.config import load_settings
from paper_repro.runtime import autocast_dtype
from paper_repro.settings import Settings

SMOKE_METHODS = ("ce", "pals")


def smoke_run(settings: Settings, dataset: str, device: torch.device, steps: int, size: list[int] | None = None,
              batch: int | None = None) -> dict:
    """Median step time (s) of ``ce`` and ``pals`` and, on CUDA, each one's peak memory for the
    paper-scale model at ``dataset``'s crop and train batch size (or ``size`` and ``batch``),
    timed by the benchmark's own ``step_times`` and ``step_memory`` in ``train.amp`` on CUDA."""
    spec, train = settings.dataset(dataset), settings.train_of(dataset)
    case = {"device": str(device), "model": "deeplabv3plus_resnet101", "classes": spec.num_classes, "train": train,
            "losses": {method: settings.loss(method) for method in SMOKE_METHODS},
            "size": list(size or spec.crop), "batch": batch or train.batch_size, "repeats": steps, "methods": SMOKE_METHODS}
    median = step_times(case)
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "model": case["model"], "size": case["size"], "batch": case["batch"], "steps": steps,
        "precision": str(autocast_dtype(train.amp, device) or torch.float32).removeprefix("torch."),
        "step_seconds": median, "pals_over_ce": median["pals"] / median["ce"],
        "peak_memory_mb": {method: step_memory(case | {"method": method}) for method in SMOKE_METHODS} if device.type == "cuda" else None,
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
    settings = load_settings(args.preset)
    [dataset] = settings.study.datasets
    report = smoke_run(settings, dataset, torch.device("cuda"), args.steps)
    for method, seconds in report["step_seconds"].items():
        print(f"{method}: {seconds * 1000:.0f} ms per step")
    peaks = ", ".join(f"{method} {megabytes:.0f} MB" for method, megabytes in report["peak_memory_mb"].items())
    print(f"{report['model']} at {report['size'][0]} x {report['size'][1]}, batch {report['batch']}, {report['precision']} "
          f"on {report['device']}: pals / ce {report['pals_over_ce']:.2f}, peak memory {peaks}")
    write_json(report, Path("results/bench/smoke_cuda.json"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
