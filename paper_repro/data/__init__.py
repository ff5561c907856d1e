"""Datasets in their real on-disk formats, the embedded synthetic benchmark and joint transforms.

:data:`DATASET_KINDS` is the one registry of what a ``datasets.<name>.kind`` may be: the
loader class, the class names and colours in train-id order, and the generator of the
embedded benchmark that writes the same format.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from . import cityscapes, voc
from .common import LabelledImages
from .synthetic import generate_cityscapes_like, generate_voc_like


@dataclass(frozen=True)
class DatasetKind:
    loader: type[LabelledImages]  # called as loader(root, split, ids=None, transforms=None)
    classes: list[str]
    palette: list[tuple[int, int, int]]
    generator: Callable[..., Path]  # generator(root, **datasets.<name>.generate)


DATASET_KINDS = {
    "cityscapes": DatasetKind(cityscapes.CityscapesSegmentation, cityscapes.CLASSES, cityscapes.PALETTE, generate_cityscapes_like),
    "voc": DatasetKind(voc.VOCSegmentation, voc.CLASSES, voc.PALETTE, generate_voc_like),
}


def open_dataset(spec: dict, split: str, ids: Sequence[str] | None = None, transforms: Callable | None = None) -> LabelledImages:
    """The dataset described by a ``datasets.<name>`` section of the parameters."""
    return DATASET_KINDS[spec["kind"]].loader(spec["root"], split, ids=ids, transforms=transforms)


def class_names(spec: dict) -> list[str]:
    """The dataset's class names in train-id order (numbers if ``num_classes`` differs from the kind's)."""
    names = DATASET_KINDS[spec["kind"]].classes
    return names if len(names) == spec["num_classes"] else [str(i) for i in range(spec["num_classes"])]
