"""Training losses: cross-entropy, uniform label smoothing and PALS (docs/method.md, sections 1-2).

Every loss here is a cross-entropy against a per-pixel target of the form

    t_i = alpha * onehot(y_i) + (1 - alpha) * q_i                      (step 5)

and differs only in the smoothing distribution ``q`` and the weight ``alpha``:

===============  ===========  ==============================================
name             alpha        q_i
===============  ===========  ==============================================
``ce``           1            (unused)
``ls``           1 - eps      uniform 1/K
``pals``         alpha        sum_j A_ij p_j, A = softmax(<f_i, f_j> / tau)
``pals_uniform`` alpha        mean_j p_j (A uniform over the image)
===============  ===========  ==============================================

The table's names and parameters, and their rules, are ``settings.LOSSES``; a method's
:class:`~paper_repro.settings.LossSettings` says which row it is. The loss is the mean over
valid pixels (label != ignore_index) of ``-sum_k t_ik log_softmax(z_i)_k`` (step 6). Every ``q`` is built in float32, whatever the
logits' dtype: the closed form of ``SoftTargetCrossEntropy`` relies on ``sum_k q_ik = 1``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from . import IGNORE_INDEX
from .settings import LossSettings

__all__ = ["aggregate_predictions", "affinity_rows", "padded_widths", "teacher_probabilities", "SmoothedTargetLoss", "SoftTargetCrossEntropy"]


def aggregate_predictions(features: torch.Tensor, probs: torch.Tensor, tau: float, token_budget: int = 0,
                          widths: tuple[int, int] | None = None) -> torch.Tensor:
    """Pixel-wise aggregated distribution ``q = A p`` (docs/method.md, steps 2-4, before upsampling).

    ``f_i = F_i / ||F_i||`` (step 2), ``A_ij = softmax_j(<f_i, f_j> / tau)`` over the N = h*w
    pixels of each image (step 3) and ``q = A p`` (step 4) is attention with queries = keys = f
    and values = p, so it runs through ``scaled_dot_product_attention`` and never materialises
    the N x N affinity. f and p are zero-padded to the widths the device's fused kernels accept
    (:func:`padded_widths`): zero channels change neither the dot products nor the first K
    output channels.

    Precision: float32, or the autocast dtype (bf16 / fp16) when autocast is active on the
    inputs' device; the result is always float32. ``tests/test_losses.py`` bounds the
    deviation from the float32 oracle.

    Pooling (off by default): with ``token_budget > 0`` and N above it, the keys and values (f
    and p) are average-pooled to at most ``token_budget`` positions (f re-normalised after
    pooling) while every one of the N pixels stays a query, so q keeps the feature resolution
    and memory stays linear in N; time drops from O(N^2) to O(N * token_budget).

    Args:
        features: ``[B, D, h, w]`` decoder features.
        probs: ``[B, K, h, w]`` class probabilities at the feature resolution.
        tau: affinity temperature, > 0.
        token_budget: at most this many key positions per image; 0 = all N (the method as published).
        widths: ``(width of f, width of p)`` after padding; ``None``: :func:`padded_widths` of the device.

    Returns:
        ``[B, K, h, w]`` float32 distributions (each pixel sums to 1). Inputs are detached: the
        network is its own teacher and no gradient flows into the target.
    """
    if tau <= 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    if token_budget < 0:
        raise ValueError(f"token_budget must be >= 0 (0 = no pooling), got {token_budget}")
    if features.dim() != 4 or probs.dim() != 4 or features.shape[0] != probs.shape[0] or features.shape[2:] != probs.shape[2:]:
        raise ValueError(
            f"features [B, D, h, w] and probs [B, K, h, w] must share B, h and w; "
            f"got features {tuple(features.shape)} and probs {tuple(probs.shape)}"
        )
    batch, dim, height, width = features.shape
    classes = probs.shape[1]
    device_type = features.device.type
    dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else torch.float32
    features, probs = features.detach().float(), probs.detach().float()
    key_features, key_probs = features, probs
    if token_budget and height * width > token_budget:
        size = pooled_size(height, width, token_budget)
        key_features, key_probs = F.adaptive_avg_pool2d(features, size), F.adaptive_avg_pool2d(probs, size)
    feature_width, value_width = widths or padded_widths(device_type, dim, classes)
    if feature_width < dim or value_width < classes:
        raise ValueError(f"widths {(feature_width, value_width)} must be at least (D, K) = {(dim, classes)}")

    def padded(tokens: torch.Tensor, width: int) -> torch.Tensor:
        """``[B, n, C]`` -> ``[B, 1, n, width]``, zero-padded, contiguous (fused kernels need a unit last stride)."""
        return F.pad(tokens, (0, width - tokens.shape[-1])).to(dtype).unsqueeze(1).contiguous()

    queries = padded(normalised_tokens(features), feature_width)
    keys = queries if key_features is features else padded(normalised_tokens(key_features), feature_width)
    values = padded(key_probs.permute(0, 2, 3, 1).reshape(batch, -1, classes), value_width)
    with torch.autocast(device_type, enabled=False):  # the dtype is chosen above, explicitly
        aggregated = F.scaled_dot_product_attention(queries, keys, values, scale=1.0 / tau)
    aggregated = aggregated[:, 0, :, :classes].float().contiguous()  # unpadded: bilinear upsampling is 2x faster on it
    return aggregated.reshape(batch, height, width, classes).permute(0, 3, 1, 2)  # channels-last


CUDA_WIDTH_MULTIPLE = 8  # the fused CUDA kernels read q, k and v in aligned blocks of 8 half-precision values


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def padded_widths(device_type: str, dim: int, classes: int) -> tuple[int, int]:
    """``(width of f, width of p)`` for the fastest exact kernel of ``scaled_dot_product_attention`` on the device.

    CPU: its one fused kernel (flash) needs queries, keys and values of one width, so the narrower
    of f (D channels) and p (K classes) is padded to the wider. CUDA: cuDNN attention and the
    memory-efficient kernel take values narrower than the queries, in multiples of 8, so p is padded
    only to the next multiple of 8 (24 for K = 19 or 21, instead of D = 256): the values' share of the
    work shrinks about tenfold. ``python -m paper_repro bench`` reports which kernel ran.
    """
    if device_type == "cuda":
        return round_up(dim, CUDA_WIDTH_MULTIPLE), round_up(classes, CUDA_WIDTH_MULTIPLE)
    width = max(dim, classes)
    return width, width


def pooled_size(height: int, width: int, token_budget: int) -> tuple[int, int]:
    """The ``(h', w')`` of a square ``s x s`` pooling of an ``h x w`` map with ``h' * w' <= token_budget``."""
    stride = max(1, math.ceil(math.sqrt(height * width / token_budget)))
    while math.ceil(height / stride) * math.ceil(width / stride) > token_budget:
        stride += 1
    return math.ceil(height / stride), math.ceil(width / stride)


def teacher_probabilities(logits: torch.Tensor, size: tuple[int, int], T: float) -> torch.Tensor:
    """``p = softmax(downsample(z) / T)``, detached (docs/method.md, step 1)."""
    small = F.interpolate(logits.detach().float(), size=size, mode="bilinear", align_corners=False)
    return torch.softmax(small / T, dim=1)


def normalised_tokens(features: torch.Tensor) -> torch.Tensor:
    """``f_i = F_i / ||F_i||`` (docs/method.md, step 2): ``[B, D, h, w]`` -> ``[B, h*w, D]``, detached, float32."""
    features = features.detach().float()
    return F.normalize(features.permute(0, 2, 3, 1).reshape(features.shape[0], -1, features.shape[1]), dim=-1)


def affinity_rows(features: torch.Tensor, pixels: list[int], tau: float) -> torch.Tensor:
    """Rows ``A_i = softmax_j(<f_i, f_j> / tau)`` (docs/method.md, step 3) of the feature pixels ``pixels``
    (indices into the ``h*w`` grid) of each image, ``[B, len(pixels), h*w]``: the materialised form of the
    affinity that :func:`aggregate_predictions` applies without ever writing it, for a few rows at a time."""
    tokens = normalised_tokens(features)
    return torch.softmax(tokens[:, pixels] @ tokens.transpose(1, 2) / tau, dim=-1)


class SmoothedTargetLoss(nn.Module):
    """Cross-entropy against ``alpha * onehot(y) + (1 - alpha) * q`` (docs/method.md, steps 5-6), as a
    method's :class:`~paper_repro.settings.LossSettings` describe it.

    ``smoothing`` is ``None`` for plain cross-entropy, ``"uniform"`` for ``q = 1/K``,
    ``"aggregated"`` for the PALS distribution and ``"image_mean"`` for the image-adaptive
    variant with a uniform affinity. With ``ramp`` > 0 the weight ``1 - alpha`` of ``q`` grows
    linearly from 0, at the start of training, to its value once the share ``ramp`` of training
    has passed (docs/method.md, section 3); ``progress`` says how far training is (iteration /
    iterations; 1 outside training). Calling the module returns the mean over valid pixels.
    """

    def __init__(self, settings: LossSettings, num_classes: int, ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__()
        self.settings, self.num_classes, self.ignore_index = settings, num_classes, ignore_index
        self.alpha, self.smoothing = settings.alpha, settings.smoothing

    def one_hot_weight(self, progress: float) -> float:
        """The weight of the one-hot label at training ``progress``: ``alpha`` once the ramp (if any) has passed."""
        ramp = self.settings.ramp or 0.0
        if progress >= ramp:
            return self.alpha
        return 1.0 - (1.0 - self.alpha) * progress / ramp

    def smoothing_distribution(self, logits: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """``q`` at the logits' resolution, ``[B, K, H, W]`` or broadcastable to it (steps 1-4)."""
        if self.smoothing == "uniform":  # float32 even for half-precision logits: in bf16, 19 * (1/19) = 1.002
            return torch.full((1, self.num_classes, 1, 1), 1.0 / self.num_classes, dtype=torch.float32, device=logits.device)
        probs = teacher_probabilities(logits, features.shape[-2:], self.settings.T)
        if self.smoothing == "image_mean":
            return probs.mean(dim=(2, 3), keepdim=True)
        aggregated = aggregate_predictions(features, probs, self.settings.tau, self.settings.token_budget)
        return F.interpolate(aggregated, size=logits.shape[-2:], mode="bilinear", align_corners=False)

    def targets(self, logits: torch.Tensor, target: torch.Tensor, features: torch.Tensor, progress: float = 1.0) -> torch.Tensor:
        """The full soft target ``t`` (step 5), ``[B, K, H, W]``; zero at ignored pixels."""
        return self.targets_and_smoothing(logits, target, features, progress)[0]

    def targets_and_smoothing(self, logits: torch.Tensor, target: torch.Tensor, features: torch.Tensor,
                              progress: float = 1.0) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(t, q)``: :meth:`targets` and the smoothing distribution it mixed in (``None`` for plain cross-entropy)."""
        valid = target != self.ignore_index
        onehot = F.one_hot(torch.where(valid, target, 0), self.num_classes).permute(0, 3, 1, 2).float()
        alpha = self.one_hot_weight(progress)
        soft, q = alpha * onehot, None
        if self.smoothing is not None:
            q = self.smoothing_distribution(logits, features).float()
            soft = soft + (1.0 - alpha) * q
        return soft * valid.unsqueeze(1), q

    def forward(self, logits: torch.Tensor, target: torch.Tensor, features: torch.Tensor | None = None,
                progress: float = 1.0) -> torch.Tensor:
        if logits.shape[1] != self.num_classes:
            raise ValueError(f"logits have {logits.shape[1]} classes, the loss expects {self.num_classes}")
        if target.shape != logits.shape[:1] + logits.shape[2:]:
            raise ValueError(f"target shape {tuple(target.shape)} does not match logits {tuple(logits.shape)}")
        if features is None and self.smoothing in ("aggregated", "image_mean"):
            raise ValueError(f"the {self.smoothing!r} smoothing needs the decoder features")
        q = self.smoothing_distribution(logits, features) if self.smoothing is not None else None
        return SoftTargetCrossEntropy.apply(logits, target, q, self.one_hot_weight(progress), self.ignore_index)


def _pixel_dot(q: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """``<q_i, z_i>`` for every pixel of ``z`` ``[B, H, W, K]``, with ``q`` of the same shape or
    ``[B or 1, 1, 1, K]``, as batched matrix products (no full-size temporary)."""
    classes = z.shape[-1]
    if q.shape == z.shape:
        return torch.bmm(q.reshape(-1, 1, classes), z.reshape(-1, classes, 1)).view(z.shape[:-1])
    return torch.matmul(z.flatten(1, 2), q.reshape(q.shape[0], classes, 1)).view(z.shape[:-1])


class SoftTargetCrossEntropy(torch.autograd.Function):
    """Mean over valid pixels of ``-sum_k t_ik log softmax(z_i)_k`` with
    ``t_i = alpha * onehot(y_i) + (1 - alpha) * q_i`` (docs/method.md, steps 5-6), without building ``t``.

    Every ``q`` here is a distribution (``sum_k q_ik = 1``), so ``sum_k t_ik = 1`` and

        loss_i = logsumexp(z_i) - alpha * z_i,y_i - (1 - alpha) * <q_i, z_i>
        d loss_i / d z_i = softmax(z_i) - t_i

    The forward pass therefore reads the logits without writing a log-softmax, and the
    backward pass writes the gradient in one full-size tensor (softmax, minus alpha at the
    label, minus (1 - alpha) q, times valid / n_valid). Both work on the ``[B, H, W, K]`` view
    of the logits, which is contiguous for channels-last logits, so the class reductions run
    over contiguous memory. Half-precision logits are computed in float32 and get a gradient
    of their own dtype; ``tests/test_losses.py`` checks value and gradient against the
    explicit ``-sum_k t_ik log_softmax(z_i)_k``.

    Args (of ``apply``): logits ``[B, K, H, W]``; target ``[B, H, W]``; q ``[B, K, H, W]``,
    anything broadcastable to it, or ``None`` (plain cross-entropy); alpha; ignore_index.
    """

    @staticmethod
    def forward(ctx, logits, target, q, alpha, ignore_index):
        dtype = torch.promote_types(logits.dtype, torch.float32)
        z = logits.to(dtype).permute(0, 2, 3, 1).contiguous()
        valid = target != ignore_index
        label = torch.where(valid, target, 0).unsqueeze(-1)
        target_dot_z = z.gather(-1, label).squeeze(-1).mul_(alpha)  # <t_i, z_i>
        if q is not None:
            q = q.to(dtype).permute(0, 2, 3, 1)
            target_dot_z.add_(_pixel_dot(q, z), alpha=1.0 - alpha)
        log_normaliser = torch.logsumexp(z, dim=-1)
        count = valid.sum().clamp(min=1)
        ctx.save_for_backward(z, label, valid, q, count)
        ctx.alpha, ctx.logits_dtype = alpha, logits.dtype
        return ((log_normaliser - target_dot_z) * valid).sum() / count

    @staticmethod
    def backward(ctx, grad_output):
        z, label, valid, q, count = ctx.saved_tensors
        grad = torch.softmax(z, dim=-1)
        grad.scatter_add_(-1, label, torch.full(label.shape, -ctx.alpha, dtype=grad.dtype, device=grad.device))
        if q is not None:
            grad.sub_(q, alpha=1.0 - ctx.alpha)
        grad.mul_((valid * (grad_output / count)).unsqueeze(-1))
        return grad.to(ctx.logits_dtype).permute(0, 3, 1, 2), None, None, None, None
