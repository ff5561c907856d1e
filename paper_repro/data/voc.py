"""Pascal VOC 2012 segmentation in its real layout (docs/method.md, section 4).

``root/VOCdevkit/VOC2012/{JPEGImages/*.jpg, SegmentationClass/*.png,
ImageSets/Segmentation/{train,val}.txt}``, as the official tar extracts; file discovery comes
from ``torchvision.datasets.VOCSegmentation``. Labels are palette PNGs whose indices are the
21 classes (0 = background) and 255 for the boundary / ignore band.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from torchvision import datasets

from .. import IGNORE_INDEX
from .common import LabelledImages, label_lookup_table

CLASSES = [
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
]
NUM_CLASSES = len(CLASSES)  # 21
_LOOKUP = label_lookup_table({index: index for index in range(NUM_CLASSES)} | {IGNORE_INDEX: IGNORE_INDEX})


def voc_palette() -> list[int]:
    """The VOC colour map as a flat 768-entry PIL palette: bit k of the index sets bit 7-k/3 of r, g, b."""
    palette = []
    for index in range(256):
        red = green = blue = 0
        bits = index
        for shift in range(7, -1, -1):
            red |= (bits & 1) << shift
            green |= ((bits >> 1) & 1) << shift
            blue |= ((bits >> 2) & 1) << shift
            bits >>= 3
        palette += [red, green, blue]
    return palette


PALETTE = [tuple(voc_palette()[3 * i : 3 * i + 3]) for i in range(NUM_CLASSES)]


def save_palette_png(labels: np.ndarray, path: str | Path) -> None:
    """Write class indices ``[H, W]`` (uint8) as a VOC palette PNG."""
    image = Image.fromarray(np.asarray(labels, dtype=np.uint8))
    image.putpalette(voc_palette())  # turns the grey image into a palette ("P") image
    image.save(path)


def voc_root(root: str | Path) -> Path:
    return Path(root) / "VOCdevkit" / "VOC2012"


def split_images(root: str | Path, split: str) -> list[tuple[str, Path]]:
    """``(image id, image file)`` of every image listed for ``split`` (``test`` included, which has no labels)."""
    split_file = voc_root(root) / "ImageSets" / "Segmentation" / f"{split}.txt"
    if not split_file.is_file():
        raise FileNotFoundError(f"Pascal VOC: missing split list {split_file}")
    ids = [line.strip() for line in split_file.read_text().splitlines() if line.strip()]
    return [(image_id, voc_root(root) / "JPEGImages" / f"{image_id}.jpg") for image_id in ids]


class VOCSegmentation(LabelledImages):
    """Pascal VOC 2012 segmentation ``split`` (``train``, ``val`` or ``trainval``), optionally only ``ids``."""

    def __init__(self, root: str | Path, split: str, ids: Sequence[str] | None = None, transforms: Callable | None = None):
        split_file = voc_root(root) / "ImageSets" / "Segmentation" / f"{split}.txt"
        if not split_file.is_file():
            raise FileNotFoundError(f"Pascal VOC: missing split list {split_file}")
        files = datasets.VOCSegmentation(str(root), year="2012", image_set=split)
        samples = [(Path(image).stem, image, mask) for image, mask in zip(files.images, files.masks)]
        super().__init__(samples, _LOOKUP, ids, transforms, description=f"Pascal VOC 2012 {split} ({root})")
