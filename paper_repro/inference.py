"""Whole-image inference: class probabilities at an image's own resolution, optionally averaged over
scales and horizontal flips (docs/method.md, section 6). ``evaluate`` and ``predict`` both use it, so
a submission holds exactly the predictions the project's own evaluation scores; evaluate and the
target margins feed it consecutive images of one size at a time (:func:`equal_size_batches`)."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext

import torch
import torch.nn.functional as F


@torch.no_grad()
def class_probabilities(model: torch.nn.Module, images: torch.Tensor, scales: Sequence[float] = (1.0,), flip: bool = False,
                        dtype: torch.dtype | None = None) -> torch.Tensor:
    """Softmax ``[B, K, H, W]`` (float32) of ``images`` ``[B, 3, H, W]``, the mean over ``scales`` (the
    image resized by each, the logits brought back to ``H x W``) and, with ``flip``, over each scale's
    horizontal mirror (its probabilities mirrored back). One scale of 1 without flip is one forward
    pass; with flip the mean is exactly flip-equivariant (the two terms of each scale commute).
    ``dtype``: the autocast dtype of the forward passes, or None (whatever autocast the caller set)."""
    height, width = images.shape[-2:]
    total, views = None, 0
    for scale in scales:
        scaled = images if scale == 1.0 else F.interpolate(images, size=(round(height * scale), round(width * scale)),
                                                           mode="bilinear", align_corners=False)
        for mirrored in (False, True) if flip else (False,):
            view = (scaled.flip(-1) if mirrored else scaled).contiguous(memory_format=torch.channels_last)
            with torch.autocast(images.device.type, dtype=dtype) if dtype is not None else nullcontext():
                logits = model(view)["out"].float()
            if logits.shape[-2:] != (height, width):
                logits = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
            probs = torch.softmax(logits, dim=1)
            probs = probs.flip(-1) if mirrored else probs
            total, views = (probs if total is None else total + probs), views + 1
    return total if views == 1 else total / views


def equal_size_batches(data, batch_size: int):
    """``(indices, images [B, 3, H, W], masks [B, H, W])``: consecutive samples of ``data`` stacked in
    order, at most ``batch_size`` per batch and of one size (a batch ends where the size changes)."""
    indices, images, masks = [], [], []
    for index in range(len(data)):
        image, mask = data[index]
        if images and (len(images) == batch_size or image.shape != images[0].shape):
            yield indices, torch.stack(images), torch.stack(masks)
            indices, images, masks = [], [], []
        indices.append(index)
        images.append(image)
        masks.append(mask)
    if images:
        yield indices, torch.stack(images), torch.stack(masks)
