"""Benchmark: PALS aggregation (naive, fused, fused with pooled keys), full training steps of
ce / ls / pals (the training loop's own ``training_step``), and the training data loader of
the study's datasets.

On the CPU every case runs in a fresh child process, so that its peak memory is honest: the peak
resident set of that process minus the same process's resident set before the case. On CUDA the
cases run in this process, one after another: ``torch.cuda.max_memory_allocated`` is reset before
each, and a child's start-up (a CUDA context each) would cost more than the cases themselves. Times
are medians over repeated runs after warm-up; the training steps of ce / ls / pals at one size are
timed in one process, alternating, so that their ratios do not depend on how fast the machine
happened to be for each of them. The fused cases and the training steps run with the fused kernels
of ``scaled_dot_product_attention`` alone (a fallback to the O(N^2) math kernel is an error), under
the autocast dtype training uses on the device (``train.amp``; float32 on the CPU), and each
aggregation row names the kernel that ran. Each case is logged as it starts and ends.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
import platform
import resource
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from .atomic import write_json
from .data.synthetic import GENERATORS
from .layout import Layout
from .losses import SmoothedTargetLoss, aggregate_predictions, padded_widths, pooled_size
from .models import build_model
from .runtime import autocast_dtype, precision_name, start_process
from .runtime import device as compute_device
from .settings import ABLATED, BASELINE, GENERATOR_MINIMA, Settings
from .tool_settings import BenchSettings
from .train import build_optimisation, open_training_data, training_loader, training_step

log = logging.getLogger(__name__)
FUSED_KERNELS = (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION)


def fused_kernels_only(kernels=FUSED_KERNELS):
    """A context in which ``scaled_dot_product_attention`` runs one of ``kernels`` or raises: never the math kernel."""
    return sdpa_kernel(list(kernels))


def aggregation_kernel(batch: int, queries: int, keys: int, dim: int, classes: int, dtype: torch.dtype, device: torch.device,
                       kernels=FUSED_KERNELS) -> str:
    """The kernel ``aggregate_predictions`` runs on these shapes, as the dispatcher chooses it among ``kernels`` (the
    fused ones: ``flash_attention``, ``efficient_attention``, ``cudnn_attention``); ``RuntimeError`` if none accepts them."""
    feature_width, value_width = padded_widths(device.type, dim, classes)
    shape = (batch, 1)
    q = torch.empty(*shape, queries, feature_width, dtype=dtype, device=device)
    k = torch.empty(*shape, keys, feature_width, dtype=dtype, device=device)
    v = torch.empty(*shape, keys, value_width, dtype=dtype, device=device)
    with fused_kernels_only(kernels):
        return SDPBackend(torch._fused_sdp_choice(q, k, v)).name.lower()  # the dispatcher's own choice (no public API says it)


def naive_aggregate(features: torch.Tensor, probs: torch.Tensor, tau: float) -> torch.Tensor:
    """The materialised N x N form of docs/method.md, steps 2-4 (the reference, never used in training)."""
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
    """One aggregation case: ``variant`` (naive, fused, fused_pooled) at ``batch``, ``n``, ``dim``, ``classes``,
    in ``precision`` (the autocast dtype, or float32); fused variants on ``kernel`` alone if given."""
    device = torch.device(case["device"])
    generator = torch.Generator().manual_seed(0)
    side = int(case["n"] ** 0.5)
    features = torch.randn(case["batch"], case["dim"], side, side, generator=generator).to(device)
    probs = torch.softmax(torch.randn(case["batch"], case["classes"], side, side, generator=generator), 1).to(device)
    budget = case.get("token_budget", 0)
    function = {
        "naive": naive_aggregate,
        "fused": aggregate_predictions,
        "fused_pooled": lambda f, p, tau: aggregate_predictions(f, p, tau, budget),
    }[case["variant"]]
    dtype = getattr(torch, case["precision"])
    result = {}
    kernels = FUSED_KERNELS
    if case["variant"] != "naive":
        kernels = (SDPBackend.__members__[case["kernel"].upper()],) if case.get("kernel") else FUSED_KERNELS
        keys = case["n"] if not budget or case["n"] <= budget else math.prod(pooled_size(side, side, budget))
        result["kernel"] = aggregation_kernel(case["batch"], case["n"], keys, case["dim"], case["classes"], dtype, device, kernels)

    def call():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32), fused_kernels_only(kernels):
            function(features, probs, case["tau"])

    baseline = _peak_rss_mb()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = _timed(call, case["repeats"], 1, device)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else _peak_rss_mb() - baseline
    return case | result | {"median_s": statistics.median(times), "peak_mb": round(peak, 1)}


STEP_METHODS = ("ce", "ls", "pals")


def _training_step(case: dict, method: str):
    """A function running one iteration of training (``train.training_step``: forward, loss, backward,
    SGD, learning-rate decay) of ``method`` with the study's loss and optimiser settings at the case's size
    (``case["losses"]``: the methods' loss settings, ``case["train"]``: the train settings)."""
    device = torch.device(case["device"])
    torch.manual_seed(0)
    model = build_model(case["model"], case["classes"]).to(device, memory_format=torch.channels_last)
    criterion = SmoothedTargetLoss(case["losses"][method], case["classes"])
    dtype = autocast_dtype(case["train"].amp, device)  # as training runs
    settings = replace(case["train"], iterations=10**6)  # no decay to zero within the bench
    optimizer, scheduler, scaler = build_optimisation(model, settings, dtype, device)
    height, width = case["size"]
    images = torch.randn(case["batch"], 3, height, width).to(device, memory_format=torch.channels_last)
    masks = torch.randint(0, case["classes"], (case["batch"], height, width)).to(device)

    def step():
        with fused_kernels_only():
            training_step(model, criterion, optimizer, scheduler, scaler, images, masks, dtype)
    return step


def step_times(case: dict) -> dict[str, float]:
    """Median step time of every method of ``case["methods"]`` (default ``STEP_METHODS``). The methods'
    steps alternate (ce, ls, pals, ce, ...), so that drifts in the machine's speed reach all of them
    alike and their ratios stay comparable. ``scripts/gpu_check.py`` times its smoke run with it."""
    device = torch.device(case["device"])
    steps = {method: _training_step(case, method) for method in case.get("methods", STEP_METHODS)}
    for step in steps.values():
        _timed(step, 0, 2, device)
    times = {method: [] for method in steps}
    for _ in range(case["repeats"]):
        for method, step in steps.items():
            times[method] += _timed(step, 1, 0, device)
    return {method: statistics.median(values) for method, values in times.items()}


def step_memory(case: dict) -> float:
    """Peak memory (MB) of one method's training steps (``case["method"]``), alone in its process
    (on a GPU, the peak allocated by the steps also counts within a process)."""
    device = torch.device(case["device"])
    step = _training_step(case, case["method"])
    baseline = _peak_rss_mb()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    _timed(step, 3, 0, device)
    return round(torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else _peak_rss_mb() - baseline, 1)


def _loader_case(case: dict) -> dict:
    """Median time per training batch of the real training loader (decode, augment, collate) of
    ``case["spec"]`` with ``case["train"]``, the train settings of that dataset's runs."""
    spec = case["spec"]
    with tempfile.TemporaryDirectory() as scratch:
        if not Path(spec.root).exists():  # generated for the case: its training split alone
            if not spec.generate:
                raise FileNotFoundError(f"datasets.{spec.name}.root: {spec.root} does not exist")
            arguments = spec.generate | {"n_val": GENERATOR_MINIMA["n_val"]}
            spec = replace(spec, root=str(GENERATORS[spec.kind](Path(scratch) / spec.name, **arguments)))
        settings = replace(case["train"], iterations=case["batches"])
        times, waited = [], time.perf_counter()
        for _ in training_loader(open_training_data(spec, settings.cache_decoded), settings, seed=0):
            times.append(time.perf_counter() - waited)
            waited = time.perf_counter()
    keep = {key: case[key] for key in ("batches", "device")}
    return {"dataset": spec.name} | keep | {"batch": settings.batch_size, "workers": settings.workers, "cache_decoded": settings.cache_decoded,
                                            "median_s": statistics.median(times), "mean_s": statistics.fmean(times)}


def _in_child(function, case: dict) -> dict:
    """Run one case in a fresh process so that its peak memory is its own."""
    with multiprocessing.get_context("spawn").Pool(1, initializer=start_process) as pool:  # the allocator as in training
        return pool.apply(function, (case,))


class Cases:
    """Runs the bench's cases one by one (in a child process each on the CPU, in this one on CUDA) and logs
    each as it starts and ends, with its number, the elapsed seconds and the time since the bench began."""

    def __init__(self, total: int, device: torch.device) -> None:
        self.total, self.done, self.device, self.began = total, 0, device, time.perf_counter()

    def run(self, label: str, function, case: dict):
        self.done += 1
        log.info("bench %d/%d: %s", self.done, self.total, label)
        began = time.perf_counter()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            result = function(case)
        else:
            result = _in_child(function, case)
        now = time.perf_counter()
        log.info("bench %d/%d: %s done in %.1f s (%.0f s since the start)", self.done, self.total, label, now - began, now - self.began)
        return result


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


def model_cases(settings: Settings, bench_settings: BenchSettings) -> list[dict]:
    """``bench.models`` entries resolved to ``{name, size, batch, classes, train}``; an entry naming a
    ``dataset`` takes the crop, class count and train settings that the study trains it with."""
    cases = []
    for entry in bench_settings.models:
        train = settings.train
        if "dataset" in entry:
            spec, train = settings.dataset(entry["dataset"]), settings.train_of(entry["dataset"])
            entry = {"size": list(spec.crop), "batch": train.batch_size, "classes": spec.num_classes} | entry
        cases.append(entry | {"train": train})
    return cases


def aggregation_cases(settings: Settings, bench_settings: BenchSettings, device: torch.device) -> list[dict]:
    """The aggregation cases of ``bench:``: every variant at every class count and N it is run at, with the
    tau of the study's ``pals``."""
    precision = precision_name(settings.train.amp, device)
    tau = settings.loss(ABLATED).tau
    cases = []
    for classes in bench_settings.classes:
        for n in bench_settings.tokens:
            for variant in ("naive", "fused", "fused_pooled"):
                if (variant == "naive" and n > bench_settings.naive_max_tokens) or (variant == "fused_pooled" and n <= bench_settings.token_budget):
                    continue
                case = {"variant": variant, "n": n, "dim": bench_settings.dim, "classes": classes, "batch": bench_settings.batch,
                        "tau": tau, "precision": precision, "repeats": bench_settings.repeats, "device": str(device)}
                if variant == "fused_pooled":
                    case["token_budget"] = bench_settings.token_budget
                cases.append(case)
    return cases


def run_bench(settings: Settings, bench_settings: BenchSettings, layout: Layout = Layout()) -> dict:
    """Run every case of the ``bench:`` parameters; write and return
    ``{"device", "aggregation", "steps", "loader"}``."""
    start_process()  # the allocator as in training, for the cases run in this process
    device = compute_device()
    aggregation_todo = aggregation_cases(settings, bench_settings, device)
    models = model_cases(settings, bench_settings)
    cases = Cases(len(aggregation_todo) + len(models) * (1 + len(STEP_METHODS)) + len(bench_settings.loader_datasets), device)
    aggregation = [cases.run(f"aggregation {case['variant']} N={case['n']} K={case['classes']} B={case['batch']} {case['precision']}",
                             _aggregation_case, case) for case in aggregation_todo]
    steps = []
    losses = {method: settings.loss(method) for method in STEP_METHODS}
    for model_case in models:
        case = {key: model_case[key] for key in ("size", "batch", "classes")} | {
            "model": model_case["name"], "dataset": model_case.get("dataset"), "repeats": bench_settings.step_repeats,
            "precision": precision_name(model_case["train"].amp, device),
            "device": str(device)}
        inputs = {"losses": losses, "train": model_case["train"]}
        label = f"{case['model']} {case['size'][0]}x{case['size'][1]} batch {case['batch']} {case['precision']}"
        medians = cases.run(f"training steps {label}: {', '.join(STEP_METHODS)} alternating", step_times, case | inputs)
        for method in STEP_METHODS:
            peak = cases.run(f"peak memory {label}: {method}", step_memory, case | inputs | {"method": method})
            steps.append(case | {"method": method, "median_s": medians[method], "peak_mb": peak})
    loader = [cases.run(f"training loader {dataset}", _loader_case,
                        {"spec": settings.dataset(dataset), "train": settings.train_of(dataset), "batches": bench_settings.loader_batches,
                         "device": str(device)})
              for dataset in bench_settings.loader_datasets]
    by_case = {(r["variant"], r["n"], r["classes"]): r for r in aggregation}
    for row in aggregation:
        reference = by_case.get(({"fused": "naive", "fused_pooled": "fused"}.get(row["variant"]), row["n"], row["classes"]))
        if reference is not None:
            row[f"time_ratio_vs_{reference['variant']}"] = round(row["median_s"] / reference["median_s"], 3)
            row[f"memory_ratio_vs_{reference['variant']}"] = round(row["peak_mb"] / max(reference["peak_mb"], 1e-6), 4)
    for row in steps:
        baseline = [r for r in steps if r["model"] == row["model"] and r["size"] == row["size"] and r["method"] == BASELINE][0]
        row["time_ratio_vs_ce"] = round(row["median_s"] / baseline["median_s"], 3)
    for row in loader:
        pals = [r for r in steps if r["dataset"] == row["dataset"] and r["method"] == "pals"]
        if pals:
            row["pals_step_median_s"] = pals[0]["median_s"]
            row["loader_share_of_iteration"] = round(row["median_s"] / (row["median_s"] + pals[0]["median_s"]), 3)
    report = {"device": device_info(device), "aggregation": aggregation, "steps": steps, "loader": loader}
    write_json(report, layout.bench(device.type))
    return report


def bench(settings: Settings, bench_settings: BenchSettings, layout: Layout = Layout()) -> dict:
    """The ``bench`` command: :func:`run_bench`, then its tables printed."""
    import json

    import pandas as pd

    report = run_bench(settings, bench_settings, layout)
    print(json.dumps(report["device"]))
    with pd.option_context("display.width", 250, "display.max_columns", 30):
        for section in ("aggregation", "steps", "loader"):
            print(pd.DataFrame(report[section]).drop(columns=["device", "repeats"], errors="ignore").to_string(index=False))
    return report
