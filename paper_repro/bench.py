"""Benchmark: PALS aggregation (naive vs fused) and full training steps of ce / ls / pals.

Every case runs in a fresh child process, so its peak memory is honest: on the CPU the peak
resident set of that process minus the same process's resident set before the case; on CUDA
``torch.cuda.max_memory_allocated``. Times are medians over repeated runs after warm-up.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import platform
import resource
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from .losses import aggregate_predictions, build_loss
from .models import build_model


def naive_aggregate(features: torch.Tensor, probs: torch.Tensor, tau: float) -> torch.Tensor:
    """The materialised N x N form of DESIGN.md section 2 steps 2-4 (the reference, never used in training)."""
    f = F.normalize(features.flatten(2), dim=1)
    affinity = torch.softmax(torch.einsum("bdi,bdj->bij", f, f) / tau, dim=-1)
    return torch.einsum("bij,bkj->bki", affinity, probs.flatten(2)).reshape(probs.shape)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def _timed(function, repeats: int, warmup: int, device: torch.device) -> list[float]:
    for _ in range(warmup):
        function()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        began = time.perf_counter()
        function()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - began)
    return times


def _aggregation_case(case: dict) -> dict:
    device = torch.device(case["device"])
    generator = torch.Generator().manual_seed(0)
    side = int(case["n"] ** 0.5)
    features = torch.randn(case["batch"], case["dim"], side, side, generator=generator).to(device)
    probs = torch.softmax(torch.randn(case["batch"], case["classes"], side, side, generator=generator), 1).to(device)
    function = {"naive": naive_aggregate, "fused": aggregate_predictions}[case["variant"]]
    baseline = _peak_rss_mb()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = _timed(lambda: function(features, probs, 0.1), case["repeats"], 1, device)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else _peak_rss_mb() - baseline
    return case | {"median_s": statistics.median(times), "peak_mb": round(peak, 1)}


def _step_case(case: dict) -> dict:
    device = torch.device(case["device"])
    torch.manual_seed(0)
    model = build_model(case["model"], case["classes"]).to(device, memory_format=torch.channels_last)
    criterion = build_loss(case["method"], case["classes"])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    height, width = case["size"]
    images = torch.randn(case["batch"], 3, height, width).to(device, memory_format=torch.channels_last)
    masks = torch.randint(0, case["classes"], (case["batch"], height, width)).to(device)
    dtype = {"float32": None, "bf16": torch.bfloat16}[case["precision"]]

    def step():
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            output = model(images)
            loss = criterion(output["out"], masks, output["feat"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    baseline = _peak_rss_mb()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = _timed(step, case["repeats"], 2, device)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else _peak_rss_mb() - baseline
    return case | {"median_s": statistics.median(times), "peak_mb": round(peak, 1)}


def _in_child(function, case: dict) -> dict:
    """Run one case in a fresh process so that its peak memory is its own."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(function, (case,))


def device_info(device: torch.device) -> dict:
    info = {"torch": torch.__version__, "device": str(device), "threads": torch.get_num_threads(), "python": platform.python_version()}
    if device.type == "cuda":
        info["name"] = torch.cuda.get_device_name(device)
    else:
        info["name"] = platform.processor() or platform.machine()
        cpuinfo = Path("/proc/cpuinfo")
        if cpuinfo.is_file():
            models = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if line.startswith("model name")]
            info["name"] = models[0] if models else info["name"]
            info["cpus"] = os.cpu_count()
    return info


def run_bench(settings: dict, output_dir: Path) -> dict:
    """Run every case of the ``bench:`` parameters; write and return ``{"device", "aggregation", "steps"}``."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    aggregation = []
    for classes in settings["classes"]:
        for n in settings["tokens"]:
            for variant in ("naive", "fused"):
                if variant == "naive" and n > settings["naive_max_tokens"]:
                    continue
                case = {"variant": variant, "n": n, "dim": settings["dim"], "classes": classes, "batch": settings["batch"],
                        "repeats": settings["repeats"], "device": str(device)}
                aggregation.append(_in_child(_aggregation_case, case))
    steps = []
    for model_case in settings["models"]:
        for method in ("ce", "ls", "pals"):
            case = {"model": model_case["name"], "size": model_case["size"], "batch": model_case["batch"],
                    "classes": model_case["classes"], "method": method, "repeats": settings["repeats"],
                    "precision": "bf16" if device.type == "cuda" else "float32", "device": str(device)}
            steps.append(_in_child(_step_case, case))
    for row in aggregation:
        naive = [r for r in aggregation if r["variant"] == "naive" and r["n"] == row["n"] and r["classes"] == row["classes"]]
        if row["variant"] == "fused" and naive:
            row["time_ratio_vs_naive"] = round(row["median_s"] / naive[0]["median_s"], 3)
            row["memory_ratio_vs_naive"] = round(row["peak_mb"] / max(naive[0]["peak_mb"], 1e-6), 4)
    for row in steps:
        ce = [r for r in steps if r["model"] == row["model"] and r["method"] == "ce"][0]
        row["time_ratio_vs_ce"] = round(row["median_s"] / ce["median_s"], 3)
    report = {"device": device_info(device), "aggregation": aggregation, "steps": steps}
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / f"bench_{device.type}.json"
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(temporary, path)
    return report
