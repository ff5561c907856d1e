"""The ``evaluate`` stage: one confusion matrix over the whole evaluation split at the label's full resolution.

Protocol (docs/method.md, section 6): whole-image inference (each evaluation image goes
through the network once at its stored resolution, ``evaluate.batch_size`` consecutive images
of one size per forward pass; the logits come back at that resolution), ignored pixels
skipped, the *last* checkpoint of the run (never the best on the reported split), mIoU by the official Cityscapes convention. Writes ``metrics.json`` with
mIoU, per-class IoU, pixel accuracy and ECE (``evaluate.calibration_bins`` bins), the mIoU and
pixel accuracy of the boundary band (labelled pixels within ``evaluate.boundary_width`` pixels
of a label change) and of the interior, and saves
the predicted labels of a fixed list of evaluation images (the first
``evaluate.figure_images`` ids in sorted order) for the qualitative figures. Beside the scores,
``metrics.json`` records what the run's method asks of each class's pixels of its own training
images (``targets``, ``paper_repro/margins.py``; docs/method.md, section 7).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from . import IGNORE_INDEX
from .atomic import atomic_folder, write_json
from .checkpoint import MODEL_KEYS, load_checkpoint
from .data import class_names, open_dataset
from .data.transforms import eval_transforms
from .errors import CheckpointError
from .layout import Layout
from .margins import target_margins
from .metrics import boundary_band, calibration_bins, confusion_matrix, ece_from_bins, iou_per_class, mean_iou, pixel_accuracy
from .models import build_model
from .inference import class_probabilities, equal_size_batches
from .runtime import autocast_dtype
from .runtime import device as compute_device
from .settings import EvaluateSettings, ModelSettings, RunSettings

log = logging.getLogger(__name__)


def load_model(path: Path, model_settings: ModelSettings, num_classes: int, device: torch.device) -> torch.nn.Module:
    """The trained weights in ``path`` (a run's ``model.pt``) in evaluation mode."""
    if not path.is_file():
        raise FileNotFoundError(f"missing trained model {path}; run the train stage first")
    model = build_model(model_settings.name, num_classes)
    weights = load_checkpoint(path, MODEL_KEYS, device)["model"]
    try:
        model.load_state_dict(weights)
    except RuntimeError as error:  # other shapes or names: another model or class count
        raise CheckpointError(f"{path}: its weights do not fit model.name {model_settings.name} with {num_classes} classes") from error
    return model.to(device, memory_format=torch.channels_last).eval()


def load_trained_model(settings: RunSettings, layout: Layout, device: torch.device) -> torch.nn.Module:
    """The final weights of the run in evaluation mode."""
    return load_model(layout.model(settings.run), settings.model, settings.dataset.num_classes, device)


@torch.no_grad()
def evaluate(settings: RunSettings, layout: Layout = Layout()) -> dict:
    """Evaluate the run's final model on its dataset's evaluation split; returns the metrics it writes."""
    run, spec = settings.run, settings.dataset
    device = compute_device()
    model = load_trained_model(settings, layout, device)
    dtype = autocast_dtype(settings.train.amp, device)
    metrics_path, predictions_dir = layout.metrics(run), layout.predictions(run)

    split = spec.eval_split
    data = open_dataset(spec, split, transforms=eval_transforms())
    figure_ids = set(data.ids[: settings.evaluate.figure_images])
    n_bins = settings.evaluate.calibration_bins
    num_classes = spec.num_classes
    cm = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
    region_cm = {region: torch.zeros_like(cm) for region in EvaluateSettings.REGIONS}
    bins = torch.zeros(3, n_bins, dtype=torch.float64, device=device)
    # Predictions and metrics are committed together: the old metrics go first, the new ones come
    # last, so an interruption leaves no metrics (the stage reruns), never new predictions beside old metrics.
    metrics_path.unlink(missing_ok=True)
    with atomic_folder(predictions_dir) as staging:
        progress = tqdm(total=len(data), desc=f"evaluate {run.dataset} {run.name}", leave=False)
        for indices, images, masks in equal_size_batches(data, settings.evaluate.batch_size):
            images = images.to(device).contiguous(memory_format=torch.channels_last)
            masks = masks.to(device)
            probs = class_probabilities(model, images, settings.evaluate.scales, settings.evaluate.flip, dtype)
            predictions = probs.max(1).indices  # the argmax (first of ties), several times faster on this layout
            cm += confusion_matrix(predictions, masks, num_classes)
            band = boundary_band(masks, settings.evaluate.boundary_width)
            for region, pixels in zip(EvaluateSettings.REGIONS, (band, ~band)):
                region_cm[region] += confusion_matrix(predictions, torch.where(pixels, masks, IGNORE_INDEX), num_classes)
            bins += calibration_bins(probs, masks, n_bins)
            for index, prediction in zip(indices, predictions):
                if data.ids[index] in figure_ids:
                    Image.fromarray(prediction.byte().cpu().numpy()).save(staging / layout.prediction(run, data.ids[index]).name)
            progress.update(len(indices))
        progress.close()

    iou = iou_per_class(cm.cpu())
    metrics = {
        "miou": round(100 * mean_iou(cm.cpu()), 4),
        "pixel_accuracy": round(100 * pixel_accuracy(cm.cpu()), 4),
        "ece": round(100 * ece_from_bins(bins.cpu()), 4),
        "iou": {name: (None if np.isnan(value) else round(100 * value, 4)) for name, value in zip(class_names(spec), iou.tolist())},
        **{region: {"miou": round(100 * mean_iou(matrix.cpu()), 4), "pixel_accuracy": round(100 * pixel_accuracy(matrix.cpu()), 4),
                    "pixels": int(matrix.sum())} for region, matrix in region_cm.items()},
        "boundary_width": settings.evaluate.boundary_width,
        "images": len(data),
        "split": split,
        "reliability": {"count": bins[0].tolist(), "confidence_sum": bins[1].tolist(), "correct": bins[2].tolist()},
        "targets": target_margins(settings, model, layout, device),  # what the method's target asks, on the run's training images
    }
    write_json(metrics, metrics_path)
    log.info("%s: mIoU %.2f, pixel accuracy %.2f, ECE %.2f", metrics_path, metrics["miou"], metrics["pixel_accuracy"], metrics["ece"])
    return metrics
