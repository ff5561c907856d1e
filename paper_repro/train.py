"""Training loop: one (dataset, method, label fraction, seed) run, resumable, single- or multi-process.

Read top to bottom: data (the subset manifest, seeded batches), model and loss, SGD with
momentum and poly learning-rate decay per iteration, then the loop, which checkpoints every
``train.checkpoint_every`` iterations. Every fraction of a dataset trains for the same
``train.iterations`` (smaller subsets are repeated more often).

Determinism: batch ``k`` holds the samples at positions ``k*B .. k*B+B-1`` of a stream of
per-epoch permutations seeded by ``(seed, epoch)``, and each sample's augmentation is seeded
by ``(seed, position)``. The data a run sees is therefore a function of the seed and the
iteration alone (not of worker count or restarts), so a run killed and resumed from its last
checkpoint ends, on the CPU, with exactly the weights of an uninterrupted run.

Under ``torchrun`` (``WORLD_SIZE > 1``) the run uses DistributedDataParallel (NCCL with
SyncBatchNorm on CUDA; gloo on the CPU, where PyTorch has no SyncBatchNorm and each rank
normalises with its own batch); each rank takes its own ``B`` samples of every global batch
of ``B * world_size``. On CUDA, ``train.amp`` selects bf16 or fp16 autocast.
"""

from __future__ import annotations

import csv
import ctypes
import hashlib
import logging
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .atomic import exclusive_lock, save_torch, write_rows
from .checkpoint import RESUME_KEYS, CheckpointError, load_checkpoint, restore_rng_states, rng_states, seed_everything
from .errors import TrainingDiverged
from .config import dataset_params, method_loss, method_params, train_settings
from .data import open_dataset
from .data.transforms import train_transforms
from .layout import Layout, Run
from .models import build_model
from .subsets import read_manifest

log = logging.getLogger(__name__)
LOG_FIELDS = ("iteration", "loss", "lr", "data_seconds", "step_seconds")
TIMING_FIELDS = ("data_seconds", "step_seconds")  # in the CSV log only: the checkpoint holds what defines the weights


def derived_seed(seed: int, purpose: int, counter: int) -> int:
    """An independent 32-bit seed for ``(run seed, purpose, counter)``: 0 = sample augmentation, 1 = epoch order."""
    return int(np.random.SeedSequence([seed, purpose, counter]).generate_state(1)[0])


class SeededBatches:
    """Batches of ``(index, augmentation seed)`` for iterations ``start .. total - 1`` of one rank."""

    def __init__(self, size: int, batch_size: int, seed: int, start: int, total: int, rank: int = 0, world: int = 1):
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.start, self.total, self.rank, self.world = start, total, rank, world
        self._permutations: dict[int, list[int]] = {}

    def _item(self, position: int) -> tuple[int, int]:
        epoch, offset = divmod(position, self.size)
        if epoch not in self._permutations:
            self._permutations = {epoch: torch.randperm(self.size, generator=torch.Generator().manual_seed(derived_seed(self.seed, 1, epoch))).tolist()}
        return self._permutations[epoch][offset], derived_seed(self.seed, 0, position)

    def __iter__(self):
        for iteration in range(self.start, self.total):
            first = (iteration * self.world + self.rank) * self.batch_size
            yield [self._item(first + j) for j in range(self.batch_size)]

    def __len__(self) -> int:
        return self.total - self.start


class SeededSamples(Dataset):
    """Loads ``dataset[index]`` with the random transforms seeded by the given seed."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, int]):
        index, seed = item
        with torch.random.fork_rng(devices=[]):
            # the CPU generator alone: transforms run on the CPU, and torch.manual_seed would also
            # queue a CUDA reseed (with a captured stack trace) for every sample
            torch.default_generator.manual_seed(seed)
            return self.dataset[index]


def open_training_data(params: dict, dataset: str, ids: list[str] | None = None) -> Dataset:
    """The training split (or its ``ids``) with the random training transforms."""
    spec = dataset_params(params, dataset)
    transforms = train_transforms(spec["crop"], spec["base_size"], spec["scale_range"])
    data = open_dataset(spec, spec["train_split"], ids, transforms)
    return data.keep_decoded() if train_settings(params, dataset)["cache_decoded"] else data


def training_loader(data: Dataset, settings: dict, seed: int, start: int = 0, rank: int = 0, world: int = 1,
                    device: torch.device = torch.device("cpu")) -> DataLoader:
    """Batches of iterations ``start .. train.iterations - 1`` for one rank, a function of the seed alone."""
    return DataLoader(
        SeededSamples(data),
        batch_sampler=SeededBatches(len(data), settings["batch_size"], seed, start, settings["iterations"], rank, world),
        num_workers=settings["workers"],
        pin_memory=device.type == "cuda",
        generator=torch.Generator(),  # its own seed draw must not advance the global RNG that dropout uses
    )


def setup_distributed() -> tuple[int, int, torch.device]:
    """``(rank, world_size, device)``; initialises the process group under ``torchrun``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available()
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    rank = dist.get_rank() if world > 1 else 0
    if cuda:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local_rank)
        return rank, world, torch.device("cuda", local_rank)
    return rank, world, torch.device("cpu")


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    if device.type != "cuda" or amp == "off":
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


def files_fingerprint(files) -> str:
    """SHA-256 over the names and contents of every (image, label) file, in order.

    By content, so that data restored by ``dvc checkout`` or copied to another disk (new
    modification times, another root) still resumes, while any changed byte starts afresh.
    """
    digest = hashlib.sha256()
    for pair in files:
        for path in pair:
            digest.update(f"{Path(path).name}\n".encode())
            with open(path, "rb") as handle:
                while chunk := handle.read(2**20):
                    digest.update(chunk)
    return digest.hexdigest()


RESUMABLE_ACROSS = ("workers", "cache_decoded", "checkpoint_every")


def run_config(params: dict, run: Run, data) -> dict:
    """Everything that defines a run's weights; a checkpoint is resumed only if this matches exactly.

    It includes a fingerprint of the training files' contents, so regenerated or replaced data
    starts a fresh run instead of resuming weights trained on the old files; the dataset's
    ``root`` is left out (the contents say what the data is, not where it lies). The ``train``
    settings that only say how batches are loaded and how often they are saved
    (``RESUMABLE_ACROSS``) are left out too: a run may resume with other values of them.
    """
    data_spec = {key: value for key, value in dataset_params(params, run.dataset).items() if key != "root"}
    return {
        "dataset": run.dataset, "method": run.method, "percent": run.percent, "seed": run.seed, "files": files_fingerprint(data.files),
        "data": data_spec, "loss": method_params(params, run.method), "model": params["model"],
        "train": {key: value for key, value in train_settings(params, run.dataset).items() if key not in RESUMABLE_ACROSS},
    }


def usable_checkpoint(path: Path, config: dict, device: torch.device, move_aside: bool) -> dict | None:
    """The checkpoint at ``path`` if it resumes this run; ``None`` (with a warning saying why) otherwise.

    A file that is not a checkpoint of this project never blocks a run: it is moved aside to
    ``<name>.corrupt`` (``move_aside``) and the run starts afresh.
    """
    if not path.is_file():
        return None
    try:
        state = load_checkpoint(path, RESUME_KEYS, device)
    except CheckpointError as error:
        if move_aside:
            aside = path.with_name(path.name + ".corrupt")
            os.replace(path, aside)
            log.warning("%s; moved it to %s and training from iteration 0", error, aside)
        return None
    if state["config"] != config:
        changed = sorted(key for key in config if state["config"].get(key) != config[key]) if isinstance(state["config"], dict) else ["config"]
        log.warning("ignoring %s: it was written with other parameters or data (%s differ); training from iteration 0", path, ", ".join(changed))
        return None
    return state


def with_logged_timings(rows: list[dict], log_path: Path) -> list[dict]:
    """The checkpoint's log rows with the timings the CSV log recorded for them (blank where it has none)."""
    logged = {}
    if log_path.is_file():
        with open(log_path, newline="") as handle:
            logged = {int(row["iteration"]): row for row in csv.DictReader(handle)}
    return [row | {field: logged.get(row["iteration"], {}).get(field, "") for field in TIMING_FIELDS} for row in rows]


def build_optimisation(model: torch.nn.Module, settings: dict, dtype: torch.dtype | None, device: torch.device):
    """``(optimizer, scheduler, scaler)``: SGD with momentum and weight decay, polynomial decay of the
    learning rate over ``settings["iterations"]``, and a gradient scaler that is active under fp16 only."""
    optimizer = torch.optim.SGD(model.parameters(), lr=settings["lr"], momentum=settings["momentum"], weight_decay=settings["weight_decay"])
    scheduler = torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=settings["iterations"], power=settings["poly_power"])
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    return optimizer, scheduler, scaler


def training_step(model, criterion, optimizer, scheduler, scaler, images, masks, dtype: torch.dtype | None) -> tuple[float, float]:
    """One iteration: forward and loss under autocast (``dtype``, or none), backward, SGD step and
    learning-rate decay. Returns ``(loss, learning rate used)``. The benchmark times this same function."""
    with torch.autocast(images.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        output = model(images)
        loss = criterion(output["out"], masks, output["feat"])
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    lr = scheduler.get_last_lr()[0]
    scheduler.step()
    return loss.item(), lr


def train(params: dict, run: Run, layout: Layout = Layout()) -> Path:
    """Train one run into its run folder (``checkpoint.pt``, ``model.pt``) and write its CSV log; returns ``model.pt``.

    Rank 0 holds the run's lock (``Layout.run_lock``) throughout: a second training of the same
    run fails at once, naming the process that holds it.
    """
    rank, world, device = setup_distributed()
    if rank > 0:
        return train_unlocked(params, run, layout, rank, world, device)
    busy = f"{layout.run_dir(run)} is being trained by {{holder}} (lock {{lock}}); wait for it to finish or stop it"
    with exclusive_lock(layout.run_lock(run), busy):
        return train_unlocked(params, run, layout, rank, world, device)


def train_unlocked(params: dict, run: Run, layout: Layout, rank: int, world: int, device: torch.device) -> Path:
    keep_freed_memory()
    spec = dataset_params(params, run.dataset)
    settings = train_settings(params, run.dataset)

    data = open_training_data(params, run.dataset, read_manifest(layout.manifest(run.dataset, run.seed, run.percent)))
    config = run_config(params, run, data)

    seed_everything(run.seed)
    model = build_model(params["model"]["name"], spec["num_classes"], params["model"]["pretrained_backbone"], layout.pretrained_backbone())
    model = model.to(device, memory_format=torch.channels_last)  # faster convolutions on CPU and GPU alike
    if world > 1:
        if device.type == "cuda":  # PyTorch's SyncBatchNorm is GPU-only; on gloo each rank keeps its own statistics
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    bare_model = model.module if world > 1 else model
    criterion = method_loss(params, run.method, spec["num_classes"])
    dtype = autocast_dtype(settings["amp"], device)
    optimizer, scheduler, scaler = build_optimisation(model, settings, dtype, device)

    checkpoint_path, log_path = layout.checkpoint(run), layout.log(run)
    start, rows = 0, []
    state = usable_checkpoint(checkpoint_path, config, device, move_aside=rank == 0)
    if state is not None:
        bare_model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        restore_rng_states(state["rng"])
        start, rows = state["iteration"], with_logged_timings(state["log"], log_path)
        log.info("resuming %s from iteration %d", layout.run_dir(run), start)
    total = settings["iterations"]
    log.info("training %s %s %d%% seed %d: %d images, %d iterations of batch %d x %d process(es) on %s",
             run.dataset, run.method, run.percent, run.seed, len(data), total, settings["batch_size"], world, device)

    loader = training_loader(data, settings, run.seed, start, rank, world, device)
    model.train()
    quiet = {} if rank == 0 else {"disable": True}  # rank 0 alone shows progress (TQDM_DISABLE=1 silences it)
    progress = tqdm(total=total, initial=start, desc=f"train {run.dataset} {run.name}", **quiet)
    waited = time.perf_counter()
    for iteration, (images, masks) in enumerate(loader, start=start):
        images = images.to(device, non_blocking=True, memory_format=torch.channels_last)
        masks = masks.to(device, non_blocking=True)
        began = time.perf_counter()
        loss_value, lr = training_step(model, criterion, optimizer, scheduler, scaler, images, masks, dtype)
        finished = time.perf_counter()
        rows.append({"iteration": iteration + 1, "loss": round(loss_value, 6), "lr": lr,
                     "data_seconds": round(began - waited, 6), "step_seconds": round(finished - began, 6)})
        progress.update()
        progress.set_postfix(loss=f"{loss_value:.3f}")
        if not np.isfinite(loss_value):
            raise TrainingDiverged(f"loss became {loss_value} at iteration {iteration + 1}; lower train.lr")
        done = iteration + 1
        if rank == 0 and (done % settings["checkpoint_every"] == 0 or done == total):
            save_torch({
                "config": config, "iteration": done, "model": bare_model.state_dict(),
                "log": [{key: value for key, value in row.items() if key not in TIMING_FIELDS} for row in rows],
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(), "rng": rng_states(),
            }, checkpoint_path)
            write_rows(rows, LOG_FIELDS, log_path)
        waited = time.perf_counter()
    progress.close()

    final_path = layout.model(run)
    if rank == 0:
        save_torch({"config": config, "model": bare_model.state_dict()}, final_path)
        write_rows(rows, LOG_FIELDS, log_path)
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return final_path
