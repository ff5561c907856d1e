"""Cityscapes ``gtFine`` in its real layout (docs/method.md, section 4).

``root/leftImg8bit/{split}/{city}/{city}_{seq}_{frame}_leftImg8bit.png`` and
``root/gtFine/{split}/{city}/{city}_{seq}_{frame}_gtFine_labelIds.png``; file discovery and the
official label table come from ``torchvision.datasets.Cityscapes``. The 34 label ids map to
the 19 evaluation classes (train ids 0..18), everything else to 255 (ignore).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torchvision.datasets import Cityscapes

from .. import IGNORE_INDEX
from .common import UNDEFINED, LabelledImages, label_lookup_table

CLASSES = [c.name for c in sorted(Cityscapes.classes, key=lambda c: c.train_id) if 0 <= c.train_id < IGNORE_INDEX]
PALETTE = [c.color for c in sorted(Cityscapes.classes, key=lambda c: c.train_id) if 0 <= c.train_id < IGNORE_INDEX]
NUM_CLASSES = len(CLASSES)  # 19

# Stored label id -> train id. Label ids 0..33 are defined; 255 is the uint8 form of the
# license-plate id -1, which is ignored like every class outside the 19.
LABEL_ID_TO_TRAIN_ID = {
    c.id: (c.train_id if 0 <= c.train_id < IGNORE_INDEX else IGNORE_INDEX) for c in Cityscapes.classes if c.id >= 0
} | {255: IGNORE_INDEX}  # the license plate's stored id
_LOOKUP = label_lookup_table(LABEL_ID_TO_TRAIN_ID)
# Train id -> official label id, as the evaluation server reads predictions (0..18; nothing else is predicted).
TRAIN_ID_TO_LABEL_ID = np.zeros(256, dtype=np.uint8)
for _class in Cityscapes.classes:
    if 0 <= _class.train_id < IGNORE_INDEX:
        TRAIN_ID_TO_LABEL_ID[_class.train_id] = _class.id


def label_ids_to_train_ids(labels: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """Map Cityscapes label ids (0..33) to train ids (0..18, 255 elsewhere); keeps the input's type."""
    values = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels).astype(np.int64)
    if values.size and (values.min() < 0 or values.max() > 255 or (_LOOKUP[values] == UNDEFINED).any()):
        bad = sorted(set(np.unique(values).tolist()) - set(LABEL_ID_TO_TRAIN_ID))
        raise ValueError(f"Cityscapes label ids must be in 0..33 (or 255); got {bad}")
    train_ids = _LOOKUP[values].astype(np.uint8)
    if isinstance(labels, torch.Tensor):
        return torch.from_numpy(train_ids).long().to(labels.device)
    return train_ids


def image_id(image_path: str | Path) -> str:
    """``aachen_000000_000019`` from ``.../aachen_000000_000019_leftImg8bit.png``."""
    return Path(image_path).name.removesuffix("_leftImg8bit.png")


def split_images(root: str | Path, split: str) -> list[tuple[str, Path]]:
    """``(image id, image file)`` of every image of ``split`` (``test`` included, which has no usable labels), sorted."""
    folder = Path(root) / "leftImg8bit" / split
    if not folder.is_dir():
        raise FileNotFoundError(f"Cityscapes: missing folder {folder}")
    return [(image_id(path), path) for path in sorted(folder.glob("*/*_leftImg8bit.png"))]


class CityscapesSegmentation(LabelledImages):
    """Cityscapes fine annotations of ``split`` (``train``, ``val`` or ``test``), optionally only ``ids``."""

    def __init__(self, root: str | Path, split: str, ids: Sequence[str] | None = None, transforms: Callable | None = None):
        for folder in ("leftImg8bit", "gtFine"):
            if not (Path(root) / folder / split).is_dir():
                raise FileNotFoundError(f"Cityscapes: missing folder {Path(root) / folder / split}")
        files = Cityscapes(str(root), split=split, mode="fine", target_type="semantic")
        samples = [(image_id(image), image, targets[0]) for image, targets in zip(files.images, files.targets)]
        super().__init__(samples, _LOOKUP, ids, transforms, description=f"Cityscapes {split} ({root})")
