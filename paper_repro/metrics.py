"""Segmentation metrics: confusion matrix, IoU, mIoU, pixel accuracy and calibration (ECE);
and the average precision that scores the ``pretrain`` stage's presence classifier.

The confusion matrix is accumulated over a whole split and every score is derived from it,
so a dataset's mIoU is computed once from the summed matrix, never averaged over images; the
mIoU follows the official Cityscapes convention (docs/method.md, section 6). The same scores are
also split between the *boundary band* (pixels within a few pixels of a label change) and the
interior (every other labelled pixel), as trimap evaluations do.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import IGNORE_INDEX

__all__ = [
    "boundary_band",
    "confusion_matrix",
    "iou_per_class",
    "mean_iou",
    "pixel_accuracy",
    "calibration_bins",
    "ece_from_bins",
    "expected_calibration_error",
    "average_precision",
]


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """``[K, K]`` int64 counts, rows = ground truth, columns = prediction; ``ignore_index`` is skipped."""
    if pred.shape != target.shape:
        raise ValueError(f"pred shape {tuple(pred.shape)} differs from target shape {tuple(target.shape)}")
    valid = target != ignore_index
    truth, guess = target[valid].long(), pred[valid].long()
    values = torch.cat([truth, guess])
    out_of_range = values[(values < 0) | (values >= num_classes)]
    if out_of_range.numel():
        raise ValueError(f"labels must be in [0, {num_classes}) or {ignore_index}; found {torch.unique(out_of_range).tolist()}")
    counts = torch.bincount(truth * num_classes + guess, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def boundary_band(target: torch.Tensor, width: int) -> torch.Tensor:
    """``[B, H, W]`` bool: pixels with another label (an ignored pixel counts as one) within ``width``
    pixels in Chebyshev distance, i.e. in the ``(2 width + 1)``-pixel square around them. The image
    border is no label change (edge pixels are compared with the pixels inside only)."""
    if target.dim() != 3 or width < 1:
        raise ValueError(f"target must be [B, H, W] and width >= 1; got {tuple(target.shape)} and {width}")
    labels = F.pad(target[:, None].float(), (width,) * 4, mode="replicate")
    window = 2 * width + 1
    highest = F.max_pool2d(labels, window, stride=1)
    lowest = -F.max_pool2d(-labels, window, stride=1)
    return (highest != lowest)[:, 0]


def iou_per_class(cm: torch.Tensor) -> torch.Tensor:
    """``TP / (TP + FP + FN)`` per class, NaN for a class absent from both prediction and truth."""
    cm = cm.double()
    true_positive = cm.diagonal()
    union = cm.sum(0) + cm.sum(1) - true_positive
    return torch.where(union > 0, true_positive / union.clamp(min=1), torch.full_like(union, float("nan")))


def mean_iou(cm: torch.Tensor) -> float:
    """Mean of the per-class IoU over the classes where it is defined: a class absent from both the
    ground truth and the prediction (NaN) is left out, one predicted but absent scores 0 and counts."""
    return torch.nanmean(iou_per_class(cm)).item()


def pixel_accuracy(cm: torch.Tensor) -> float:
    """Fraction of valid pixels predicted correctly."""
    return (cm.diagonal().sum() / cm.sum().clamp(min=1)).item()


def calibration_bins(probs: torch.Tensor, target: torch.Tensor, n_bins: int = 15, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Per-bin ``[count, sum of confidence, number correct]`` as a ``[3, n_bins]`` float64 tensor.

    ``probs`` is ``[B, K, H, W]`` (softmax output), ``target`` ``[B, H, W]``. A pixel's
    confidence is its top probability; bins are equal-width on (0, 1] (bin b holds
    confidences in (b/n, (b+1)/n]). Sums over batches add up, so a split accumulates them.
    """
    if probs.dim() != 4 or target.shape != probs.shape[:1] + probs.shape[2:]:
        raise ValueError(f"probs must be [B, K, H, W] and target [B, H, W]; got {tuple(probs.shape)} and {tuple(target.shape)}")
    confidence, prediction = probs.max(dim=1)
    valid = target != ignore_index
    confidence, correct = confidence[valid].double(), (prediction[valid] == target[valid]).double()
    index = (torch.ceil(confidence * n_bins).long() - 1).clamp(0, n_bins - 1)
    bins = torch.zeros(3, n_bins, dtype=torch.float64, device=probs.device)
    bins[0].index_add_(0, index, torch.ones_like(confidence))
    bins[1].index_add_(0, index, confidence)
    bins[2].index_add_(0, index, correct)
    return bins


def ece_from_bins(bins: torch.Tensor) -> float:
    """``sum_b n_b / n * |accuracy_b - confidence_b|`` from :func:`calibration_bins` sums."""
    count, confidence_sum, correct_sum = bins
    total = count.sum()
    if total == 0:
        return float("nan")
    return ((correct_sum - confidence_sum).abs().sum() / total).item()


def expected_calibration_error(probs: torch.Tensor, target: torch.Tensor, n_bins: int = 15, ignore_index: int = IGNORE_INDEX) -> float:
    """Expected calibration error over the valid pixels of ``probs`` ``[B, K, H, W]``."""
    return ece_from_bins(calibration_bins(probs, target, n_bins, ignore_index))


def average_precision(scores: torch.Tensor, positives: torch.Tensor) -> float:
    """Mean of the precision at the rank of each positive, ranking by ``scores`` (highest first,
    ties in index order); NaN without positives. The mean over classes is the mAP."""
    order = torch.argsort(scores, descending=True, stable=True)
    hits = positives[order].double()
    if hits.sum() == 0:
        return float("nan")
    precision = hits.cumsum(0) / torch.arange(1, len(hits) + 1, dtype=torch.float64)
    return (precision * hits).sum().item() / hits.sum().item()
