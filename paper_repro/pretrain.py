"""The ``pretrain`` stage: the embedded benchmark's analog of ImageNet weights (docs/method.md, section 5).

The paper fine-tunes a backbone that ImageNet classification taught generic object
appearance, without a single mask. Here the CPU-scale backbone of ``deeplabv3plus_small``
learns the same kind of task: which of the 20 VOC object classes appear in an image
(multi-label presence, binary cross-entropy on globally pooled stride-16 features), on a
generated *source* set of object scenes. The source images come from random streams of their
own (``synthetic.SOURCE_SPLITS``), so they share no image with either benchmark, whatever the
seeds. As ImageNet does for the real datasets, the source task shares concepts with the
benchmarks, never images or masks: the object scenes use 8 of its 20 classes, and the street
scenes' people, cars and buses are drawn differently and labelled in another class set.

Writes the backbone's weights (``Layout.pretrained_backbone``), which every study run of
``deeplabv3plus_small`` loads when ``model.pretrained_backbone`` is true (ASPP, decoder and
classifier start from scratch), the per-iteration log and the held-out mean average precision.
The stage is a function of the ``pretrain:`` parameters alone and takes a few minutes on two
CPU cores; a killed run starts again from iteration 0.

For a model that does not load these weights (the ResNets start from torchvision's ImageNet
weights; ``model.pretrained_backbone: false`` from scratch) the stage pretrains nothing: it
writes, at once, a backbone file without weights that says what the runs start from, so that
the runs, which depend on that file, depend on nothing of the pretraining.
"""

from __future__ import annotations

import logging
from dataclasses import asdict

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .atomic import save_torch, write_json, write_rows
from .checkpoint import seed_everything
from .data.synthetic import SOURCE_CLASSES, draw_source_image
from .data.transforms import IMAGENET_MEAN, IMAGENET_STD
from .errors import TrainingDiverged
from .layout import Layout
from .metrics import average_precision
from .models import SmallBackbone
from .runtime import device as compute_device
from .runtime import start_process
from .settings import PretrainSettings, Settings
from .train import build_optimisation

log = logging.getLogger(__name__)
LOG_FIELDS = ("iteration", "loss", "lr")


class PresenceClassifier(nn.Module):
    """The backbone, global average pooling of its stride-16 features, and one logit per source class."""

    def __init__(self, backbone: SmallBackbone, classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.out_channels, classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(images)[1].mean(dim=(2, 3)))


def source_set(settings: PretrainSettings, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images uint8 [N, 3, H, W], presence float [N, 20])`` of the source ``split`` (``train`` or ``held_out``)."""
    count = settings.images if split == "train" else settings.held_out
    height, width = settings.size
    images, presence = [], []
    for index in tqdm(range(count), desc=f"pretrain source {split}", leave=False):
        image, labels = draw_source_image(settings.seed, split, index, height, width, settings.typical_look)
        images.append(torch.from_numpy(image.copy()).permute(2, 0, 1))
        presence.append(torch.from_numpy(np.isin(SOURCE_CLASSES, labels)))
    return torch.stack(images), torch.stack(presence).float()


def normalise(images: torch.Tensor) -> torch.Tensor:
    """uint8 images to the float input the segmentation transforms give (``data/transforms.py``)."""
    mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device).view(1, 3, 1, 1)
    return (images.float() / 255 - mean) / std


def batches(size: int, batch_size: int, iterations: int, generator: torch.Generator):
    """Index batches of per-epoch permutations drawn from ``generator``, and per-sample flips."""
    order = torch.empty(0, dtype=torch.int64)
    for _ in range(iterations):
        while len(order) < batch_size:
            order = torch.cat([order, torch.randperm(size, generator=generator)])
        yield order[:batch_size], torch.rand(batch_size, generator=generator) < 0.5
        order = order[batch_size:]


@torch.no_grad()
def held_out_scores(model: nn.Module, images: torch.Tensor, device: torch.device, batch_size: int = 256) -> torch.Tensor:
    model.eval()
    return torch.cat([model(normalise(images[i:i + batch_size].to(device))).sigmoid().cpu() for i in range(0, len(images), batch_size)])


def pretrain(settings: Settings, layout: Layout = Layout()) -> dict:
    """Pretrain the small backbone on source presence labels (or, for a model that does not load its
    weights, record what the runs start from); returns the metrics it writes."""
    if not settings.model.loads_pretrain_stage:
        return record_without_pretraining(settings, layout)
    start_process()
    source_task = settings.pretrain
    device = compute_device()
    train_images, train_presence = source_set(source_task, "train")
    held_images, held_presence = source_set(source_task, "held_out")
    log.info("pretraining the deeplabv3plus_small backbone: %d source images (%d held out), %d iterations of batch %d on %s",
             len(train_images), len(held_images), source_task.iterations, source_task.batch_size, device)

    seed_everything(source_task.seed)
    model = PresenceClassifier(SmallBackbone(), len(SOURCE_CLASSES)).to(device, memory_format=torch.channels_last)
    optimizer, scheduler, _ = build_optimisation(model, source_task, None, device)
    generator = torch.Generator().manual_seed(source_task.seed)
    rows = []
    model.train()
    for iteration, (index, flip) in enumerate(tqdm(batches(len(train_images), source_task.batch_size, source_task.iterations, generator),
                                                   total=source_task.iterations, desc="pretrain"), start=1):
        images = train_images[index]
        images = torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)
        images = normalise(images.to(device)).contiguous(memory_format=torch.channels_last)
        loss = F.binary_cross_entropy_with_logits(model(images), train_presence[index].to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        rows.append({"iteration": iteration, "loss": round(loss.item(), 6), "lr": scheduler.get_last_lr()[0]})
        scheduler.step()
        if not np.isfinite(rows[-1]["loss"]):
            raise TrainingDiverged(f"pretraining loss became {rows[-1]['loss']} at iteration {iteration}; lower pretrain.lr")

    scores = held_out_scores(model, held_images, device)
    per_class = [average_precision(scores[:, k], held_presence[:, k]) for k in range(len(SOURCE_CLASSES))]
    chance = held_presence.mean(0).tolist()  # the average precision of random scores
    metrics = {
        "held_out_mAP": float(np.nanmean(per_class)) * 100, "chance_mAP": float(np.mean(chance)) * 100,
        "per_class_AP": {int(k): (ap * 100 if np.isfinite(ap) else None) for k, ap in zip(SOURCE_CLASSES, per_class)},
        "images": len(train_images), "held_out": len(held_images), "final_loss": rows[-1]["loss"],
    }
    log.info("held-out mAP %.1f (chance %.1f)", metrics["held_out_mAP"], metrics["chance_mAP"])
    save_torch({"config": asdict(source_task), "backbone": model.backbone.cpu().state_dict()}, layout.pretrained_backbone())
    write_rows(rows, LOG_FIELDS, layout.pretrain_log())
    write_json(metrics, layout.pretrain_metrics())
    return metrics


def record_without_pretraining(settings: Settings, layout: Layout) -> dict:
    """The stage's outputs for a model that does not load its weights: a backbone file without weights
    naming what the runs start from, an empty log, and metrics saying why nothing was pretrained."""
    start = "torchvision's ImageNet weights" if settings.model.pretrained_backbone else "random initialisation"
    metrics = {"pretrained": False, "model": settings.model.name, "starts_from": start}
    log.info("%s starts from %s: nothing to pretrain", settings.model.name, start)
    save_torch({"config": metrics, "backbone": {}}, layout.pretrained_backbone())
    write_rows([], LOG_FIELDS, layout.pretrain_log())
    write_json(metrics, layout.pretrain_metrics())
    return metrics
