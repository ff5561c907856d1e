"""Where and how a stage computes: the device, the processes of a distributed run, threads,
autocast and the allocator. The one place each of these is decided.

Process-wide state is set here and only at entry points: :func:`start_process` (the allocator)
by the entry functions of what trains (``train.train``, also in the ``runs`` stage's workers,
``pretrain.pretrain``, ``bench.run_bench`` and the benchmark's child processes);
:func:`worker_environment` (threads, progress bars) by
the ``runs`` stage around starting its pool; the rank of a distributed run is read by
:func:`rank` and :func:`setup_distributed`. The notebooks' display settings are their first
cell's (``notebook.setup``).

Threads: PyTorch uses every core by default, which is right for one process alone and wrong for
several at once (two 2-thread processes on 2 cores together run 2.7x slower than one). The
``runs`` stage's worker processes and the ``launch`` command's concurrent jobs each get
``thread_budget() // jobs`` threads through ``OMP_NUM_THREADS``; any other stage keeps all cores. On the CPU the thread count changes a
run's last bits (reductions are split differently), so every training run logs it per iteration.
"""

from __future__ import annotations

import ctypes
import os
import platform
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist


def device() -> torch.device:
    """CUDA when a GPU is visible, else the CPU (under ``torchrun``: this process's local GPU)."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def setup_distributed() -> tuple[int, int, torch.device]:
    """``(rank, world_size, device)``; initialises the process group under ``torchrun``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    here = device()
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if here.type == "cuda" else "gloo")
    if here.type == "cuda":
        torch.cuda.set_device(here)
    return (dist.get_rank() if world > 1 else 0), world, here


def rank() -> int:
    """This process's rank in a distributed run (``torchrun`` sets ``RANK``); 0 alone."""
    return int(os.environ.get("RANK", "0"))


def thread_budget() -> int:
    """The threads this process may use in all: ``OMP_NUM_THREADS`` if set, else the cores it may run on."""
    if os.environ.get("OMP_NUM_THREADS", "").isdigit() and int(os.environ["OMP_NUM_THREADS"]) > 0:
        return int(os.environ["OMP_NUM_THREADS"])
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def threads_per_job(jobs: int) -> int:
    """The threads of each of ``jobs`` processes running at once, so that together they use the budget once."""
    return max(1, thread_budget() // max(jobs, 1))


def autocast_dtype(amp: str, where: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``train.amp`` (one of ``settings.AMP``) on ``where``; None on the CPU or for ``off``."""
    if where.type != "cuda" or amp == "off":
        return None
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]


def start_process() -> None:
    """What every entry point sets once for the whole process: the allocator keeps freed memory (:func:`keep_freed_memory`)."""
    keep_freed_memory()


@contextmanager
def worker_environment(threads: int) -> Iterator[None]:
    """``os.environ`` for worker processes started inside: ``threads`` threads each (``OMP_NUM_THREADS``, read by
    PyTorch when a spawned worker imports it) and no progress bars (``TQDM_DISABLE``: several would interleave)."""
    variables = {"OMP_NUM_THREADS": str(threads), "TQDM_DISABLE": "1"}
    saved = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name)
            else:
                os.environ[name] = value


def precision_name(amp: str, where: torch.device) -> str:
    """The dtype training computes in on ``where``, as a word: ``bfloat16``, ``float16`` or ``float32``."""
    return str(autocast_dtype(amp, where) or torch.float32).removeprefix("torch.")


def keep_freed_memory() -> None:
    """Have glibc keep freed memory for reuse instead of returning it to the system (no-op without glibc).

    A training step allocates and frees the same multi-megabyte tensors at every iteration.
    With glibc's defaults many of them are fresh ``mmap`` regions whose pages fault in anew
    each time, at about 1 ms per 5 MB tensor on a 2-core CPU; served from a heap that is not
    trimmed they cost nothing extra. Training, pretraining and the benchmark's steps all run with it.
    """
    if platform.libc_ver()[0] != "glibc":
        return
    libc = ctypes.CDLL(None)
    m_trim_threshold, m_mmap_threshold = -1, -3  # from <malloc.h>
    libc.mallopt(m_mmap_threshold, 32 * 2**20)  # glibc's largest: blocks up to 32 MB come from the heap
    libc.mallopt(m_trim_threshold, 2**30)  # and up to 1 GB of freed heap stays mapped
