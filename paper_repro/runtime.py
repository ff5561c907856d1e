"""Where and how a stage computes: the device, the processes of a distributed run, threads,
autocast and the allocator. The one place each of these is decided.

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


def keep_freed_memory() -> None:
    """Have glibc keep freed memory for reuse instead of returning it to the system (no-op without glibc).

    A training step allocates and frees the same multi-megabyte tensors at every iteration.
    With glibc's defaults many of them are fresh ``mmap`` regions whose pages fault in anew
    each time, at about 1 ms per 5 MB tensor on a 2-core CPU; served from a heap that is not
    trimmed they cost nothing extra. ``python -m paper_repro bench`` measures steps with it.
    """
    if platform.libc_ver()[0] != "glibc":
        return
    libc = ctypes.CDLL(None)
    m_trim_threshold, m_mmap_threshold = -1, -3  # from <malloc.h>
    libc.mallopt(m_mmap_threshold, 32 * 2**20)  # glibc's largest: blocks up to 32 MB come from the heap
    libc.mallopt(m_trim_threshold, 2**30)  # and up to 1 GB of freed heap stays mapped
