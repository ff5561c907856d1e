"""Joint image / mask transforms built from ``torchvision.transforms.v2`` with ``tv_tensors.Mask``.

Training: random scale of the shorter side, horizontal flip, random crop (images padded with
0, masks with 255 so padding is ignored, never read as class 0), then ImageNet normalisation.
Evaluation: normalisation only, at the label's full resolution.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from .. import IGNORE_INDEX

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _to_normalised_float() -> list[v2.Transform]:
    return [
        v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True),
        v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ]


def train_transforms(crop_size: Sequence[int], base_size: int, scale_range: Sequence[float] = (0.5, 2.0)) -> v2.Compose:
    """Random resize of the shorter side to ``base_size * [scale_range]``, flip, ``crop_size`` (h, w) crop."""
    low, high = scale_range
    if not 0 < low <= high:
        raise ValueError(f"scale_range must satisfy 0 < low <= high, got {tuple(scale_range)}")
    return v2.Compose(
        [
            v2.RandomResize(int(base_size * low), int(base_size * high) + 1),
            v2.RandomHorizontalFlip(),
            v2.RandomCrop(tuple(crop_size), pad_if_needed=True, fill={tv_tensors.Image: 0, tv_tensors.Mask: IGNORE_INDEX}),
            *_to_normalised_float(),
        ]
    )


def eval_transforms() -> v2.Compose:
    """Normalisation only: evaluation runs at the label's full resolution."""
    return v2.Compose(_to_normalised_float())
