"""Datasets in their real on-disk formats, the embedded synthetic benchmark, transforms and subsets."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from .cityscapes import CityscapesSegmentation
from .common import LabelledImages
from .voc import VOCSegmentation

DATASET_CLASSES = {"cityscapes": CityscapesSegmentation, "voc": VOCSegmentation}


def open_dataset(spec: dict, split: str, ids: Sequence[str] | None = None, transforms: Callable | None = None) -> LabelledImages:
    """The dataset described by a ``datasets.<name>`` section of the parameters."""
    return DATASET_CLASSES[spec["kind"]](spec["root"], split, ids=ids, transforms=transforms)
