"""Datasets in their real on-disk formats and joint transforms.

:data:`KINDS` says how each ``datasets.<name>.kind`` (``settings.DATASET_KINDS``) is read: the
loader class, the class names and colours in train-id order. The embedded benchmark's generators
(``synthetic.py``) write the same formats; the ``generate`` stage, the ``pretrain`` stage (its source
scenes) and the benchmark (a training split for its loader cases) load them, never a run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ..settings import DatasetSettings
from . import cityscapes, voc
from .common import LabelledImages


@dataclass(frozen=True)
class DatasetKind:
    loader: type[LabelledImages]  # called as loader(root, split, ids=None, transforms=None)
    classes: list[str]
    palette: list[tuple[int, int, int]]
    images: Callable[[str, str], list]  # images(root, split): (image id, file) of a split, labelled or not


KINDS = {
    "cityscapes": DatasetKind(cityscapes.CityscapesSegmentation, cityscapes.CLASSES, cityscapes.PALETTE, cityscapes.split_images),
    "voc": DatasetKind(voc.VOCSegmentation, voc.CLASSES, voc.PALETTE, voc.split_images),
}


def open_dataset(spec: DatasetSettings, split: str, ids: Sequence[str] | None = None, transforms: Callable | None = None) -> LabelledImages:
    """The dataset a ``datasets.<name>`` section describes."""
    return KINDS[spec.kind].loader(spec.root, split, ids=ids, transforms=transforms)


def class_colours(kind: str) -> np.ndarray:
    """``[256, 3]`` uint8: the colour of every train id of a dataset kind (black for the rest, 255 included)."""
    colours = np.zeros((256, 3), dtype=np.uint8)
    colours[: len(KINDS[kind].palette)] = KINDS[kind].palette
    return colours


def class_names(spec: DatasetSettings) -> list[str]:
    """The dataset's class names in train-id order (numbers if ``num_classes`` differs from the kind's)."""
    names = KINDS[spec.kind].classes
    return names if len(names) == spec.num_classes else [str(i) for i in range(spec.num_classes)]
