"""Evaluation: one confusion matrix over the whole validation split at the label's full resolution.

Protocol: whole-image inference (each validation image goes through the network once at its
stored resolution; the logits come back at that resolution), 255 ignored, the *last*
checkpoint of the run (never the best on the reported split). Writes ``metrics.json`` with
mIoU, per-class IoU, pixel accuracy and ECE (15 bins), and saves the predicted labels of a
fixed list of validation images (the first ``evaluate.figure_images`` ids in sorted order)
for the qualitative figures.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from .atomic import atomic_file, atomic_folder
from .config import dataset_params
from .data import cityscapes, open_dataset, voc
from .data.transforms import eval_transforms
from .metrics import calibration_bins, confusion_matrix, ece_from_bins, iou_per_class, mean_iou, pixel_accuracy
from .models import build_model

log = logging.getLogger(__name__)


def class_names(spec: dict) -> list[str]:
    """The dataset's class names in train-id order (numbers if ``num_classes`` differs)."""
    names = {"cityscapes": cityscapes.CLASSES, "voc": voc.CLASSES}[spec["kind"]]
    return names if len(names) == spec["num_classes"] else [str(i) for i in range(spec["num_classes"])]


def write_json(payload: dict, path: Path) -> None:
    with atomic_file(path) as temporary:
        temporary.write_text(json.dumps(payload, indent=2) + "\n")


@torch.no_grad()
def evaluate(params: dict, dataset: str, model_path: Path, metrics_path: Path, predictions_dir: Path) -> dict:
    """Evaluate ``model_path`` on the dataset's evaluation split; returns the metrics it writes."""
    model_path, metrics_path, predictions_dir = Path(model_path), Path(metrics_path), Path(predictions_dir)
    if not model_path.is_file():
        raise FileNotFoundError(f"missing trained model {model_path}; run the train stage first")
    spec = dataset_params(params, dataset)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    state = torch.load(model_path, map_location=device, weights_only=False)
    model = build_model(params["model"]["name"], spec["num_classes"]).to(device, memory_format=torch.channels_last)
    model.load_state_dict(state["model"])
    model.eval()

    split = spec.get("eval_split", "val")
    data = open_dataset(spec, split, transforms=eval_transforms())
    figure_ids = set(data.ids[: params["evaluate"]["figure_images"]])
    n_bins = params["evaluate"]["calibration_bins"]
    num_classes = spec["num_classes"]
    cm = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
    bins = torch.zeros(3, n_bins, dtype=torch.float64, device=device)
    with atomic_folder(predictions_dir) as staging:
        for index in tqdm(range(len(data)), desc=f"evaluate {model_path.parent.name}", leave=False):
            image, mask = data[index]
            image = image.to(device).unsqueeze(0).contiguous(memory_format=torch.channels_last)
            mask = mask.to(device).unsqueeze(0)
            probs = torch.softmax(model(image)["out"].float(), dim=1)
            prediction = probs.argmax(1)
            cm += confusion_matrix(prediction, mask, num_classes)
            bins += calibration_bins(probs, mask, n_bins)
            if data.ids[index] in figure_ids:
                Image.fromarray(prediction[0].byte().cpu().numpy()).save(staging / f"{data.ids[index]}.png")

    iou = iou_per_class(cm.cpu())
    metrics = {
        "miou": round(100 * mean_iou(cm.cpu()), 4),
        "pixel_accuracy": round(100 * pixel_accuracy(cm.cpu()), 4),
        "ece": round(100 * ece_from_bins(bins.cpu()), 4),
        "iou": {name: (None if np.isnan(value) else round(100 * value, 4)) for name, value in zip(class_names(spec), iou.tolist())},
        "images": len(data),
        "split": split,
        "reliability": {"count": bins[0].tolist(), "confidence_sum": bins[1].tolist(), "correct": bins[2].tolist()},
    }
    write_json(metrics, metrics_path)
    log.info("%s: mIoU %.2f, pixel accuracy %.2f, ECE %.2f", metrics_path, metrics["miou"], metrics["pixel_accuracy"], metrics["ece"])
    return metrics
