"""What a method's training target asks of each labelled pixel (docs/method.md, section 7): per class, the
target's mass on the label class, its largest mass on another class (the rival) and which class that is
most often, their margin, and how often the smoothing distribution ``q`` alone puts most mass on another
class than the label.

``ce``'s target is the one-hot label (margin 1), ``ls``'s gives every other class ``eps / K`` (margin
``1 - eps``); PALS's puts ``1 - alpha`` on the classes the pixel's feature-neighbours predict, so that its
margin can be small, or negative where the aggregated prediction favours a rival strongly. The runs
stage measures it with each run's final model on the first :data:`TARGET_IMAGES` images of the run's
own labelled subset, at full resolution, without augmentation, as that model builds its targets
(``evaluate.batch_size`` images of one size per forward pass; a batch's images never attend to each other).
"""

from __future__ import annotations

import torch

from . import IGNORE_INDEX
from .data import class_names, open_dataset
from .data.transforms import eval_transforms
from .inference import equal_size_batches
from .layout import Layout
from .losses import SmoothedTargetLoss
from .settings import RunSettings
from .subsets import read_manifest

TARGET_IMAGES = 100  # of a run's labelled subset, in its manifest's order: enough pixels per class, seconds per run


class TargetMargins:
    """Sums over labelled pixels, per label class, of the target's label mass, rival mass and margin, the
    rival classes' counts, and the pixels where ``q``'s largest mass is on another class."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.pixels = torch.zeros(num_classes, dtype=torch.float64)
        self.label_mass = torch.zeros(num_classes, dtype=torch.float64)
        self.rival_mass = torch.zeros(num_classes, dtype=torch.float64)
        self.q_elsewhere = torch.zeros(num_classes, dtype=torch.float64)
        self.rivals = torch.zeros(num_classes, num_classes, dtype=torch.float64)  # [label, rival]: pixels
        self.has_q = False

    def update(self, targets: torch.Tensor, labels: torch.Tensor, q: torch.Tensor | None = None) -> None:
        """``targets`` ``[B, K, H, W]`` (each labelled pixel's target sums to 1), ``labels`` ``[B, H, W]``,
        ``q`` ``[B, K, H, W]`` or broadcastable to it, or ``None`` for a method without one (``ce``, ``ls``)."""
        valid = labels != IGNORE_INDEX
        label = labels[valid].long()
        target = targets.permute(0, 2, 3, 1)[valid].double()  # [n, K]
        label_mass = target.gather(1, label[:, None])[:, 0]
        rival_mass, rival = target.scatter(1, label[:, None], float("-inf")).max(1)
        classes = self.num_classes
        self.pixels += torch.bincount(label, minlength=classes)
        self.label_mass += torch.bincount(label, weights=label_mass, minlength=classes)
        self.rival_mass += torch.bincount(label, weights=rival_mass, minlength=classes)
        self.rivals += torch.bincount(label * classes + rival, minlength=classes * classes).reshape(classes, classes)
        if q is not None:
            self.has_q = True
            elsewhere = q.expand_as(targets).permute(0, 2, 3, 1)[valid].argmax(1) != label
            self.q_elsewhere += torch.bincount(label, weights=elsewhere.double(), minlength=classes)

    def summary(self, names: list[str]) -> dict[str, dict]:
        """Per class with labelled pixels: ``pixels``, mean ``label_mass``, mean ``rival_mass``, the most frequent
        ``rival`` class, mean ``margin`` (label minus rival mass) and ``q_elsewhere`` (share of pixels; ``None``
        without ``q``)."""
        rows = {}
        for k in torch.nonzero(self.pixels).flatten().tolist():
            n = self.pixels[k].item()
            rows[names[k]] = {
                "pixels": int(n), "label_mass": round(self.label_mass[k].item() / n, 6), "rival_mass": round(self.rival_mass[k].item() / n, 6),
                "rival": names[int(self.rivals[k].argmax())], "margin": round((self.label_mass[k] - self.rival_mass[k]).item() / n, 6),
                "q_elsewhere": round(self.q_elsewhere[k].item() / n, 6) if self.has_q else None}
        return rows


@torch.no_grad()
def target_margins(settings: RunSettings, model: torch.nn.Module, layout: Layout, device: torch.device) -> dict[str, dict]:
    """:class:`TargetMargins` of the run's method over the first :data:`TARGET_IMAGES` images of its labelled subset,
    with ``model`` (the run's final weights) building the targets as training does at its end."""
    run, spec = settings.run, settings.dataset
    ids = read_manifest(layout.manifest(run.dataset, run.seed, run.percent))[:TARGET_IMAGES]
    data = open_dataset(spec, spec.train_split, ids, eval_transforms())
    loss = SmoothedTargetLoss(settings.loss, spec.num_classes)
    margins = TargetMargins(spec.num_classes)
    for _, images, labels in equal_size_batches(data, settings.evaluate.batch_size):
        output = model(images.to(device).contiguous(memory_format=torch.channels_last))
        targets, q = loss.targets_and_smoothing(output["out"].float(), labels.to(device), output["feat"].float())
        if loss.smoothing == "uniform":  # ls: q is 1/K everywhere, its largest mass on no class in particular
            q = None
        margins.update(targets.cpu(), labels, None if q is None else q.cpu())
    return margins.summary(class_names(spec))
