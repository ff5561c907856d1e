"""The ``explain`` stage: what PALS does at a few pixels of one image, for the explanation figure.

For the first evaluation image and the run named by the ``explain:`` parameters, pick one
query pixel at the centre of each of the largest ground-truth regions and save, at the
feature resolution, its affinity row ``A_i = softmax_j(<f_i, f_j> / tau)`` (docs/method.md,
step 3), and at the pixel the training target ``t_i`` (step 5) that each method of the study
would give it, built by the training losses themselves from the run's own prediction.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from . import IGNORE_INDEX
from .atomic import save_npz
from .data import open_dataset
from .data.transforms import eval_transforms
from .evaluate import load_trained_model
from .layout import Layout
from .losses import SmoothedTargetLoss, affinity_rows
from .settings import DatasetSettings, Settings

log = logging.getLogger(__name__)


def query_pixels(label: np.ndarray, count: int) -> list[tuple[int, int]]:
    """For the ``count`` largest classes in ``label``, the labelled pixel closest to the class's centroid."""
    classes, sizes = np.unique(label[label != IGNORE_INDEX], return_counts=True)
    pixels = []
    for cls in classes[np.argsort(-sizes)][:count]:
        ys, xs = np.nonzero(label == cls)
        nearest = np.argmin((ys - ys.mean()) ** 2 + (xs - xs.mean()) ** 2)
        pixels.append((int(ys[nearest]), int(xs[nearest])))
    return pixels


@torch.no_grad()
def explain(settings: Settings, dataset: DatasetSettings, layout: Layout = Layout()) -> Path:
    """Write the explanation file (npz): image, label, query pixels, their affinity maps, and per
    method of the study the target at each pixel (``methods`` names the rows of ``targets``)."""
    explained_run = settings.run(settings.explain.run(dataset.name))
    run, spec = explained_run.run, dataset
    methods = list(settings.study.methods)
    losses = {method: SmoothedTargetLoss(settings.loss(method), spec.num_classes) for method in methods}
    explained = explained_run.loss
    model = load_trained_model(explained_run, layout, torch.device("cpu"))
    data = open_dataset(spec, spec.eval_split, transforms=eval_transforms())
    image, label = data[0]
    output = model(image[None].contiguous(memory_format=torch.channels_last))
    logits, features = output["out"], output["feat"]
    per_pixel = {method: loss.targets(logits, label[None], features)[0] for method, loss in losses.items()}
    height, width = features.shape[-2:]
    label = label.numpy()
    pixels = query_pixels(label, settings.explain.pixels)
    rows = [min(int(y * height / label.shape[0]), height - 1) * width + min(int(x * width / label.shape[1]), width - 1) for y, x in pixels]
    affinities = affinity_rows(features, rows, explained.tau)[0].reshape(len(rows), height, width).numpy()
    targets = np.array([[per_pixel[method][:, y, x].double().numpy() for y, x in pixels] for method in methods])
    raw = data.read_rgb(0)
    output_path = layout.explanation(spec.name)
    save_npz(output_path, image=raw, label=label, pixels=np.array(pixels), affinity=affinities, methods=np.array(methods),
             descriptions=np.array([settings.loss(m).describe() for m in methods]), targets=targets,
             explained_method=run.method, tau=explained.tau, alpha=explained.alpha, image_id=data.ids[0], run=run.name)
    log.info("wrote %s", output_path)
    return output_path
