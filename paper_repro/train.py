"""Training loop: one (dataset, method, label percent, seed) run, resumable, single- or multi-process.

Read top to bottom: data (the subset manifest, seeded batches), model and loss, SGD with
momentum and poly learning-rate decay per iteration, then the loop, which checkpoints every
``train.checkpoint_every`` iterations. Every label percent of a dataset trains for the same
``train.iterations`` (smaller subsets are repeated more often). Everything a run needs arrives
resolved as one :class:`~paper_repro.settings.RunSettings`.

Determinism: batch ``k`` holds the samples at positions ``k*B .. k*B+B-1`` of a stream of
per-epoch permutations seeded by ``(seed, epoch)``, and each sample's augmentation is seeded
by ``(seed, position)``. The data a run sees is therefore a function of the seed and the
iteration alone (not of worker count or restarts), so a run killed and resumed from its last
checkpoint ends, on the CPU, with exactly the weights of an uninterrupted run with the same
number of threads (the thread count changes the last bits: the CSV log records it at every
iteration).

Under ``torchrun`` (``WORLD_SIZE > 1``) the run uses DistributedDataParallel (NCCL with
SyncBatchNorm on CUDA; gloo on the CPU, where PyTorch has no SyncBatchNorm and each rank
normalises with its own batch); each rank takes its own ``B`` samples of every global batch
of ``B * world_size``, so a run's data and weights depend on the number of processes: a
checkpoint written with another number is not resumed. On CUDA, ``train.amp`` selects bf16 or
fp16 autocast.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import os
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .atomic import exclusive_lock, save_torch, write_rows
from .checkpoint import RESUME_KEYS, load_checkpoint, restore_rng_states, rng_states, seed_everything
from .data import open_dataset
from .data.transforms import train_transforms
from .errors import CheckpointError, TrainingDiverged
from .layout import Layout
from .losses import SmoothedTargetLoss
from .models import build_model
from .runtime import autocast_dtype, setup_distributed, start_process
from .settings import DatasetSettings, Optimisation, RunSettings, TrainSettings
from .subsets import read_manifest

log = logging.getLogger(__name__)
LOG_FIELDS = ("iteration", "loss", "lr", "threads", "data_seconds", "step_seconds")
MACHINE_FIELDS = ("threads", "data_seconds", "step_seconds")  # in the CSV log only: the checkpoint holds what defines the weights


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


def open_training_data(spec: DatasetSettings, cache_decoded: bool, ids: list[str] | None = None) -> Dataset:
    """The training split (or its ``ids``) with the random training transforms."""
    transforms = train_transforms(spec.crop, spec.base_size, spec.scale_range)
    data = open_dataset(spec, spec.train_split, ids, transforms)
    return data.keep_decoded() if cache_decoded else data


def training_loader(data: Dataset, settings: TrainSettings, seed: int, start: int = 0, rank: int = 0, world: int = 1,
                    device: torch.device = torch.device("cpu")) -> DataLoader:
    """Batches of iterations ``start .. train.iterations - 1`` for one rank, a function of the seed alone."""
    return DataLoader(
        SeededSamples(data),
        batch_sampler=SeededBatches(len(data), settings.batch_size, seed, start, settings.iterations, rank, world),
        num_workers=settings.workers,
        pin_memory=device.type == "cuda",
        generator=torch.Generator(),  # its own seed draw must not advance the global RNG that dropout uses
    )


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


def run_config(settings: RunSettings, data, processes: int) -> dict:
    """Everything that defines a run's weights; a checkpoint is resumed only if this matches exactly.

    It includes a fingerprint of the training files' contents, so regenerated or replaced data
    starts a fresh run instead of resuming weights trained on the old files; the dataset's
    ``root`` is left out (the contents say what the data is, not where it lies). The ``train``
    settings that only say how batches are loaded and how often they are saved
    (``TrainSettings.RESUMABLE_ACROSS``) are left out too: a run may resume with other values of
    them. The number of processes is in: each takes ``train.batch_size`` samples of every step.
    """
    data_spec = {key: value for key, value in asdict(settings.dataset).items() if key not in ("root", "train")}
    return {
        "run": asdict(settings.run), "files": files_fingerprint(data.files), "data": data_spec, "loss": asdict(settings.loss),
        "model": asdict(settings.model), "train": settings.train.defining_weights(), "processes": processes,
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


def with_machine_fields(rows: list[dict], log_path: Path) -> list[dict]:
    """The checkpoint's log rows with the threads and timings the CSV log recorded for them (blank where it has none)."""
    logged = {}
    if log_path.is_file():
        with open(log_path, newline="") as handle:
            logged = {int(row["iteration"]): row for row in csv.DictReader(handle)}
    return [row | {field: logged.get(row["iteration"], {}).get(field, "") for field in MACHINE_FIELDS} for row in rows]


def sgd_kernel(device: torch.device) -> dict:
    """The SGD step's keyword on ``device``: ``fused`` on CUDA, PyTorch's default (per-tensor) elsewhere."""
    return {"fused": True} if device.type == "cuda" else {}


def build_optimisation(model: torch.nn.Module, settings: Optimisation, dtype: torch.dtype | None, device: torch.device):
    """``(optimizer, scheduler, scaler)``: SGD with momentum and weight decay, polynomial decay of the
    learning rate over ``settings.iterations``, and a gradient scaler that is active under fp16 only.

    On CUDA the SGD step is PyTorch's fused kernel: the same update in a few kernel launches instead of
    several per parameter tensor, which is most of a small model's step there (its rounding may differ in
    the last bits from the per-tensor step). The CPU keeps the per-tensor step its results were made with.
    """
    optimizer = torch.optim.SGD(model.parameters(), lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay,
                                **sgd_kernel(device))
    scheduler = torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=settings.iterations, power=settings.poly_power)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    return optimizer, scheduler, scaler


def training_step(model, criterion, optimizer, scheduler, scaler, images, masks, dtype: torch.dtype | None,
                  progress: float = 1.0) -> tuple[float, float]:
    """One iteration at training ``progress`` (iteration / iterations, for a loss that ramps its
    self-target in): forward and loss under autocast (``dtype``, or none), backward, SGD step and
    learning-rate decay. Returns ``(loss, learning rate used)``. The benchmark times this same function."""
    with torch.autocast(images.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        output = model(images)
        loss = criterion(output["out"], masks, output["feat"], progress)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    lr = scheduler.get_last_lr()[0]
    scheduler.step()
    return loss.item(), lr


def train(settings: RunSettings, layout: Layout = Layout()) -> Path:
    """Train one run into its run folder (``checkpoint.pt``, ``model.pt``) and write its CSV log; returns ``model.pt``.

    Rank 0 holds the run's lock (``Layout.run_lock``) throughout: a second training of the same
    run fails at once, naming the process that holds it.
    """
    start_process()
    rank, world, device = setup_distributed()
    if rank > 0:
        return train_unlocked(settings, layout, rank, world, device)
    run = settings.run
    busy = f"{layout.run_dir(run)} is being trained by {{holder}} (lock {{lock}}); wait for it to finish or stop it"
    with exclusive_lock(layout.run_lock(run), busy):
        return train_unlocked(settings, layout, rank, world, device)


def placed_model(settings: RunSettings, layout: Layout, world: int, device: torch.device) -> tuple[torch.nn.Module, torch.nn.Module]:
    """``(model to train, the bare model)``: the run's model on ``device``, channels-last (faster convolutions on CPU
    and GPU alike), wrapped for DistributedDataParallel when ``world`` > 1 (with SyncBatchNorm on CUDA; PyTorch has
    none for gloo, where each rank keeps its own statistics)."""
    model = build_model(settings.model.name, settings.dataset.num_classes, settings.model.pretrained_backbone, layout.pretrained_backbone())
    model = model.to(device, memory_format=torch.channels_last)
    if world == 1:
        return model, model
    if device.type == "cuda":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    return model, model.module


def train_unlocked(settings: RunSettings, layout: Layout, rank: int, world: int, device: torch.device) -> Path:
    run, spec, train_settings = settings.run, settings.dataset, settings.train

    data = open_training_data(spec, train_settings.cache_decoded, read_manifest(layout.manifest(run.dataset, run.seed, run.percent)))
    config = run_config(settings, data, world)

    seed_everything(run.seed)
    model, bare_model = placed_model(settings, layout, world, device)
    criterion = SmoothedTargetLoss(settings.loss, spec.num_classes)
    dtype = autocast_dtype(train_settings.amp, device)
    optimizer, scheduler, scaler = build_optimisation(model, train_settings, dtype, device)

    checkpoint_path, log_path = layout.checkpoint(run), layout.log(run)
    start, rows = 0, []
    state = usable_checkpoint(checkpoint_path, config, device, move_aside=rank == 0)
    if state is not None:
        for part, saved in ((bare_model, "model"), (optimizer, "optimizer"), (scheduler, "scheduler"), (scaler, "scaler")):
            part.load_state_dict(state[saved])
        restore_rng_states(state["rng"])
        start, rows = state["iteration"], with_machine_fields(state["log"], log_path)
        log.info("resuming %s from iteration %d", layout.run_dir(run), start)
    total, threads = train_settings.iterations, torch.get_num_threads()
    log.info("training %s %s %d%% seed %d: %d images, %d iterations of batch %d x %d process(es) on %s, %d thread(s)",
             run.dataset, run.method, run.percent, run.seed, len(data), total, train_settings.batch_size, world, device, threads)

    loader = training_loader(data, train_settings, run.seed, start, rank, world, device)
    model.train()
    quiet = {} if rank == 0 else {"disable": True}  # rank 0 alone shows progress (TQDM_DISABLE=1 silences it)
    progress = tqdm(total=total, initial=start, desc=f"train {run.dataset} {run.name}", **quiet)
    waited = time.perf_counter()
    for iteration, (images, masks) in enumerate(loader, start=start):
        images = images.to(device, non_blocking=True, memory_format=torch.channels_last)
        masks = masks.to(device, non_blocking=True)
        began = time.perf_counter()
        loss_value, lr = training_step(model, criterion, optimizer, scheduler, scaler, images, masks, dtype, iteration / total)
        finished = time.perf_counter()
        rows.append({"iteration": iteration + 1, "loss": round(loss_value, 6), "lr": lr, "threads": threads,
                     "data_seconds": round(began - waited, 6), "step_seconds": round(finished - began, 6)})
        progress.update()
        progress.set_postfix(loss=f"{loss_value:.3f}")
        if not np.isfinite(loss_value):
            raise TrainingDiverged(f"loss became {loss_value} at iteration {iteration + 1}; lower train.lr")
        done = iteration + 1
        if rank == 0 and (done % train_settings.checkpoint_every == 0 or done == total):
            save_torch({
                "config": config, "iteration": done, "model": bare_model.state_dict(),
                "log": [{key: value for key, value in row.items() if key not in MACHINE_FIELDS} for row in rows],
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(), "rng": rng_states(),
            }, checkpoint_path)
            write_rows(rows, LOG_FIELDS, log_path)  # the CSV log keeps the threads and timings the checkpoint leaves out
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
