"""PALS and the baseline losses against independent expectations (docs/method.md, sections 1-2)."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from paper_repro.losses import SmoothedTargetLoss, SoftTargetCrossEntropy, affinity_rows, aggregate_predictions, padded_widths, pooled_size
from paper_repro.settings import LossSettings

IGNORE = 255


def naive_aggregate(features, probs, tau):
    """Oracle: the materialised N x N affinity of docs/method.md, steps 2-4, in float64."""
    f = F.normalize(features.double().flatten(2), dim=1)  # [B, D, N]
    affinity = torch.softmax(torch.einsum("bdi,bdj->bij", f, f) / tau, dim=-1)
    return torch.einsum("bij,bkj->bki", affinity, probs.double().flatten(2)).reshape(probs.shape)


def build_loss(name, num_classes, **params):
    """The loss of a method with loss ``name`` and ``params`` (the others at their defaults, settings.LOSSES)."""
    return SmoothedTargetLoss(LossSettings.of(name, params), num_classes, IGNORE)


def random_batch(seed, batch=2, classes=5, size=(12, 16), feat_size=(6, 8), dim=8, ignore_fraction=0.2):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, classes, *size, generator=generator) * 2
    features = torch.randn(batch, dim, *feat_size, generator=generator)
    target = torch.randint(0, classes, (batch, *size), generator=generator)
    target[torch.rand(batch, *size, generator=generator) < ignore_fraction] = IGNORE
    return logits, target, features


def soft_cross_entropy_oracle(logits, target, soft_targets):
    """Mean over valid pixels via PyTorch's own probability-target cross-entropy."""
    valid = target != IGNORE
    flat_logits = logits.permute(0, 2, 3, 1)[valid]
    flat_targets = soft_targets.permute(0, 2, 3, 1)[valid]
    return F.cross_entropy(flat_logits, flat_targets)


@pytest.mark.parametrize(
    "batch,dim,classes,height,width,tau",
    [(2, 8, 5, 4, 6, 0.1), (3, 16, 19, 8, 8, 0.5), (2, 256, 21, 9, 7, 0.07), (2, 3, 7, 5, 5, 2.0)],
)
def test_fused_aggregation_matches_naive_oracle(batch, dim, classes, height, width, tau):
    generator = torch.Generator().manual_seed(batch * 1000 + dim)
    features = torch.randn(batch, dim, height, width, generator=generator)
    probs = torch.softmax(torch.randn(batch, classes, height, width, generator=generator) * 3, dim=1)
    fused = aggregate_predictions(features, probs, tau)
    assert fused.shape == probs.shape
    torch.testing.assert_close(fused.double(), naive_aggregate(features, probs, tau), atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(fused.sum(1), torch.ones(batch, height, width), atol=1e-5, rtol=0)


@pytest.mark.parametrize("dim,classes", [(64, 19), (8, 21), (21, 21)])
def test_aggregation_runs_on_the_fused_flash_kernel_on_cpu(dim, classes):
    features = torch.randn(2, dim, 16, 16)
    probs = torch.softmax(torch.randn(2, classes, 16, 16), dim=1)
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):  # a fallback to the O(N^2) math kernel raises
        aggregated = aggregate_predictions(features, probs, 0.1)
    torch.testing.assert_close(aggregated.double(), naive_aggregate(features, probs, 0.1), atol=2e-5, rtol=1e-4)


def test_each_device_pads_to_the_widths_its_fused_kernels_accept():
    assert padded_widths("cpu", 256, 19) == (256, 256)  # CPU flash: one width for q, k and v
    assert padded_widths("cpu", 8, 21) == (21, 21)
    assert padded_widths("cuda", 256, 19) == (256, 24)  # cuDNN / efficient: v to the next multiple of 8
    assert padded_widths("cuda", 256, 21) == (256, 24)
    assert padded_widths("cuda", 3, 7) == (8, 8)
    assert padded_widths("cuda", 64, 32) == (64, 32)


@pytest.mark.parametrize("dim,classes", [(256, 19), (8, 21), (3, 7)])
@pytest.mark.parametrize("device_type", ["cpu", "cuda", "unpadded"])
def test_every_padding_gives_the_oracle_result(dim, classes, device_type):
    """The CUDA widths (and no padding at all) computed on the CPU, where any width runs (the math
    kernel takes what flash refuses): zero channels change nothing but the kernel."""
    generator = torch.Generator().manual_seed(dim + classes)
    features = torch.randn(2, dim, 6, 10, generator=generator)
    probs = torch.softmax(torch.randn(2, classes, 6, 10, generator=generator) * 3, dim=1)
    widths = (dim, classes) if device_type == "unpadded" else padded_widths(device_type, dim, classes)
    aggregated = aggregate_predictions(features, probs, 0.1, widths=widths)
    torch.testing.assert_close(aggregated.double(), naive_aggregate(features, probs, 0.1), atol=2e-5, rtol=1e-4)


def test_widths_narrower_than_the_inputs_are_refused():
    with pytest.raises(ValueError, match="at least"):
        aggregate_predictions(torch.randn(1, 16, 4, 4), torch.softmax(torch.randn(1, 19, 4, 4), 1), 0.1, widths=(16, 8))


# Largest deviation from the float64 oracle allowed for the aggregated distributions (values
# in [0, 1]) when the aggregation runs in half precision under autocast: bf16 keeps 8
# significant bits, fp16 11; measured worst cases over these inputs are about a third of these.
HALF_PRECISION_TOLERANCE = {torch.bfloat16: 1e-2, torch.float16: 1.5e-3}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("tau", [0.03, 0.1, 1.0])
def test_aggregation_under_autocast_runs_fused_in_half_precision_within_tolerance(dtype, tau):
    generator = torch.Generator().manual_seed(7)
    features = torch.randn(2, 64, 16, 16, generator=generator)
    probs = torch.softmax(torch.randn(2, 19, 16, 16, generator=generator) * 3, dim=1)
    oracle = naive_aggregate(features, probs, tau)
    with torch.autocast("cpu", dtype=dtype), sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        half = aggregate_predictions(features, probs, tau)
    assert half.dtype == torch.float32
    error = (half.double() - oracle).abs().max().item()
    assert error <= HALF_PRECISION_TOLERANCE[dtype]
    # and it really ran in half precision: float32 is orders of magnitude closer
    assert (aggregate_predictions(features, probs, tau).double() - oracle).abs().max().item() < error / 10


def test_autocast_loss_matches_float32_loss_within_tolerance():
    logits, target, features = random_batch(3, classes=19, size=(32, 32), feat_size=(8, 8), dim=64)
    loss = build_loss("pals", 19)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half = loss(logits, target, features)
    assert half.dtype == torch.float32
    assert abs(half.item() - loss(logits, target, features).item()) <= 1e-2 * loss(logits, target, features).item()


@pytest.mark.parametrize("height,width,budget", [(64, 64, 1024), (96, 96, 1024), (17, 23, 50), (5, 7, 1), (8, 8, 64)])
def test_pooled_size_respects_the_budget(height, width, budget):
    pooled_height, pooled_width = pooled_size(height, width, budget)
    assert 1 <= pooled_height <= height and 1 <= pooled_width <= width
    assert pooled_height * pooled_width <= budget
    assert (pooled_height, pooled_width) == {(64, 64, 1024): (32, 32), (96, 96, 1024): (32, 32), (8, 8, 64): (8, 8)}.get(
        (height, width, budget), (pooled_height, pooled_width))


def test_token_budget_at_or_above_n_changes_nothing():
    features, probs = torch.randn(2, 16, 8, 8), torch.softmax(torch.randn(2, 5, 8, 8), dim=1)
    full = aggregate_predictions(features, probs, 0.1)
    torch.testing.assert_close(aggregate_predictions(features, probs, 0.1, token_budget=64), full)
    torch.testing.assert_close(aggregate_predictions(features, probs, 0.1, token_budget=1000), full)


def test_pooled_aggregation_attends_from_every_pixel_to_2x2_block_means():
    generator = torch.Generator().manual_seed(3)
    features = torch.randn(2, 16, 8, 12, generator=generator)
    probs = torch.softmax(torch.randn(2, 5, 8, 12, generator=generator) * 3, dim=1)
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        pooled = aggregate_predictions(features, probs, 0.2, token_budget=24)  # 96 pixels -> 4 x 6 blocks of 2 x 2
    # oracle by hand: block means by reshaping, every full-resolution pixel as a query, float64
    def block_means(x):
        return x.double().reshape(2, x.shape[1], 4, 2, 6, 2).mean(dim=(3, 5)).flatten(2)  # [B, C, 24]
    queries = F.normalize(features.double().flatten(2), dim=1)
    keys = F.normalize(block_means(features), dim=1)
    affinity = torch.softmax(torch.einsum("bdi,bdj->bij", queries, keys) / 0.2, dim=-1)  # [B, 96, 24]
    expected = torch.einsum("bij,bkj->bki", affinity, block_means(probs)).reshape(2, 5, 8, 12)
    torch.testing.assert_close(pooled.double(), expected, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(pooled.sum(1), torch.ones(2, 8, 12), atol=1e-5, rtol=0)


def test_pals_loss_passes_its_token_budget_to_the_aggregation():
    logits, target, features = random_batch(5, size=(16, 16), feat_size=(8, 8))
    pooled_loss = build_loss("pals", 5, token_budget=16)
    assert pooled_loss.settings.token_budget == 16
    expected = 0.5 * F.one_hot(torch.where(target == IGNORE, 0, target), 5).permute(0, 3, 1, 2).double()
    probs = torch.softmax(F.interpolate(logits, size=(8, 8), mode="bilinear", align_corners=False), dim=1)
    q = F.interpolate(aggregate_predictions(features, probs, 0.1, token_budget=16), size=(16, 16), mode="bilinear", align_corners=False)
    expected = (expected + 0.5 * q.double()) * (target != IGNORE).unsqueeze(1)
    torch.testing.assert_close(pooled_loss.targets(logits, target, features).double(), expected, atol=1e-6, rtol=1e-5)
    assert not torch.allclose(pooled_loss.targets(logits, target, features), build_loss("pals", 5).targets(logits, target, features))


def test_images_do_not_attend_to_each_other():
    features = torch.randn(2, 8, 4, 4)
    probs = torch.softmax(torch.randn(2, 3, 4, 4), dim=1)
    changed = probs.clone()
    changed[1] = torch.softmax(torch.randn(3, 4, 4), dim=0)
    torch.testing.assert_close(aggregate_predictions(features, probs, 0.1)[0], aggregate_predictions(features, changed, 0.1)[0])


def test_hand_computed_2x2_example():
    # One image, K = 2, D = 1, features at the label resolution (resampling is the identity).
    # f = sign(F): pixels 0, 1, 3 are +1 and pixel 2 is -1, so <f_i, f_j> = +-1. With
    # tau = 1 / ln 2 the affinity weights are 2 (same sign) and 1/2 (opposite sign):
    #   rows of +1 pixels: [2, 2, 1/2, 2] / 6.5;   row of pixel 2: [1/2, 1/2, 2, 1/2] / 3.5.
    # Logits give p = [.75, .25], [.5, .5], [.25, .75], [.75, .25], hence
    #   q(+1 pixels, class 0) = (2*.75 + 2*.5 + .5*.25 + 2*.75) / 6.5 = 4.125 / 6.5
    #   q(pixel 2,  class 0) = (.5*.75 + .5*.5 + 2*.25 + .5*.75) / 3.5 = 1.5 / 3.5.
    # Labels [[0, 1], [1, ignore]], alpha = 1/2: t = onehot / 2 + q / 2 on pixels 0, 1, 2.
    ln3 = math.log(3.0)
    logits = torch.tensor([[[ln3, 0.0], [0.0, ln3]], [[0.0, 0.0], [ln3, 0.0]]]).unsqueeze(0)
    features = torch.tensor([[[[1.0, 1.0], [-1.0, 1.0]]]])
    target = torch.tensor([[[0, 1], [1, IGNORE]]])
    q_plus, q_minus = 4.125 / 6.5, 1.5 / 3.5
    expected_targets = [
        (0.5 + 0.5 * q_plus, 0.5 * (1 - q_plus)),  # pixel 0, label 0
        (0.5 * q_plus, 0.5 + 0.5 * (1 - q_plus)),  # pixel 1, label 1
        (0.5 * q_minus, 0.5 + 0.5 * (1 - q_minus)),  # pixel 2, label 1
    ]
    log_p = [(math.log(0.75), math.log(0.25)), (math.log(0.5), math.log(0.5)), (math.log(0.25), math.log(0.75))]
    expected = sum(-(t0 * l0 + t1 * l1) for (t0, t1), (l0, l1) in zip(expected_targets, log_p)) / 3

    loss = build_loss("pals", 2, tau=1 / math.log(2), alpha=0.5, T=1.0)
    assert loss(logits, target, features).item() == pytest.approx(expected, rel=1e-5)
    targets = loss.targets(logits, target, features)[0].permute(1, 2, 0).reshape(4, 2)
    torch.testing.assert_close(targets[:3], torch.tensor(expected_targets), atol=1e-6, rtol=0)
    assert targets[3].abs().sum() == 0  # the ignored pixel has no target


@pytest.mark.parametrize("name,params", [("pals", {}), ("pals", {"alpha": 0.2, "tau": 0.5, "T": 2.0}), ("pals", {"alpha": 0.0}), ("pals_uniform", {}), ("ls", {"eps": 0.3})])
def test_targets_are_distributions_on_valid_pixels(name, params):
    logits, target, features = random_batch(0)
    targets = build_loss(name, 5, **params).targets(logits, target, features)
    valid = target != IGNORE
    torch.testing.assert_close(targets.sum(1)[valid], torch.ones(int(valid.sum())), atol=1e-5, rtol=0)
    assert (targets >= 0).all()
    assert targets.sum(1)[~valid].abs().max() == 0


def test_loss_equals_cross_entropy_with_its_soft_targets():
    logits, target, features = random_batch(1)
    loss = build_loss("pals", 5, alpha=0.3, tau=0.2)
    expected = soft_cross_entropy_oracle(logits, target, loss.targets(logits, target, features))
    torch.testing.assert_close(loss(logits, target, features), expected, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("name", ["ce", "pals"])
def test_alpha_one_is_cross_entropy(name):
    logits, target, features = random_batch(2)
    params = {"alpha": 1.0} if name == "pals" else {}
    expected = F.cross_entropy(logits, target, ignore_index=IGNORE)
    torch.testing.assert_close(build_loss(name, 5, **params)(logits, target, features), expected)


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.25])
def test_ls_equals_pytorch_label_smoothing(eps):
    logits, target, features = random_batch(3)
    expected = F.cross_entropy(logits, target, ignore_index=IGNORE, label_smoothing=eps)
    torch.testing.assert_close(build_loss("ls", 5, eps=eps)(logits, target, features), expected)


def test_ls_default_eps_is_0_1():
    logits, target, features = random_batch(4)
    expected = F.cross_entropy(logits, target, ignore_index=IGNORE, label_smoothing=0.1)
    torch.testing.assert_close(build_loss("ls", 5)(logits, target, features), expected)


@pytest.mark.parametrize("name", ["ls", "pals", "pals_uniform"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_every_smoothing_distribution_is_float32_and_sums_to_one_for_half_precision_logits(name, dtype):
    logits, target, features = random_batch(13, classes=19)
    loss = build_loss(name, 19)
    q = loss.smoothing_distribution(logits.to(dtype), features.to(dtype))
    assert q.dtype == torch.float32
    torch.testing.assert_close(q.sum(1), torch.ones_like(q.sum(1)), atol=1e-6, rtol=0)


def test_ls_under_bfloat16_logits_matches_the_explicit_target_on_the_rounded_logits():
    # bf16 logits are computed in float32 against the exact 1/K (in bf16, 19 * bf16(1/19) = 1.002)
    logits, target, features = random_batch(14, classes=19)
    logits = logits + 20  # the loss is shift-invariant; a sum of q that is not 1 is not
    rounded = logits.bfloat16().double()
    target_distribution = 0.9 * F.one_hot(target.clamp(max=18), 19).permute(0, 3, 1, 2).double() + 0.1 / 19
    valid = target != IGNORE
    expected = -(target_distribution * torch.log_softmax(rounded, 1)).sum(1)[valid].mean()
    value = build_loss("ls", 19)(logits.bfloat16(), target, features)
    torch.testing.assert_close(value.double(), expected, atol=1e-6, rtol=1e-6)


def test_pals_uniform_smooths_towards_the_image_mean_prediction():
    logits, target, features = random_batch(5, feat_size=(3, 4))
    alpha = 0.4
    small = F.interpolate(logits, size=(3, 4), mode="bilinear", align_corners=False)
    image_mean = torch.softmax(small, dim=1).mean(dim=(2, 3))  # [B, K]
    onehot = F.one_hot(target.clamp(max=4), 5).permute(0, 3, 1, 2).float()
    soft = alpha * onehot + (1 - alpha) * image_mean[:, :, None, None]
    expected = soft_cross_entropy_oracle(logits, target, soft)
    torch.testing.assert_close(build_loss("pals_uniform", 5, alpha=alpha)(logits, target, features), expected)


def test_pals_with_alpha_0_uses_the_aggregated_distribution_alone():
    logits, target, features = random_batch(6)
    tau = 0.3
    small = F.interpolate(logits, size=features.shape[-2:], mode="bilinear", align_corners=False)
    q = naive_aggregate(features, torch.softmax(small, dim=1), tau).float()
    q = F.interpolate(q, size=logits.shape[-2:], mode="bilinear", align_corners=False)
    expected = soft_cross_entropy_oracle(logits, target, q)
    torch.testing.assert_close(build_loss("pals", 5, alpha=0.0, tau=tau)(logits, target, features), expected, atol=1e-5, rtol=1e-5)


def test_teacher_temperature_softens_the_prediction_before_aggregation():
    logits, target, features = random_batch(7)
    hot = build_loss("pals", 5, alpha=0.0, T=4.0).targets(logits, target, features)
    cold = build_loss("pals", 5, alpha=0.0, T=1.0).targets(logits, target, features)
    valid = (target != IGNORE).unsqueeze(1)
    entropy = lambda t: -(t.clamp_min(1e-12).log() * t * valid).sum()  # noqa: E731
    assert entropy(hot) > entropy(cold)


@pytest.mark.parametrize("name", ["ce", "ls", "pals", "pals_uniform"])
def test_gradient_flows_only_through_log_softmax(name):
    # With sum_k t_ik = 1 and t detached, d loss / d z_i = (softmax(z_i) - t_i) / n_valid on valid
    # pixels and 0 on ignored ones; features get no gradient at all.
    logits, target, features = random_batch(8)
    logits.requires_grad_(True)
    features.requires_grad_(True)
    loss = build_loss(name, 5)
    value = loss(logits, target, features)
    value.backward()
    valid = (target != IGNORE).unsqueeze(1)
    with torch.no_grad():
        expected = (torch.softmax(logits, 1) - loss.targets(logits, target, features)) * valid / valid.sum()
    torch.testing.assert_close(logits.grad, expected, atol=1e-7, rtol=1e-4)
    assert features.grad is None or features.grad.abs().max() == 0


@pytest.mark.parametrize("q_shape", [None, (1, 4, 1, 1), (2, 4, 1, 1), (2, 4, 3, 5)])
@pytest.mark.parametrize("alpha", [1.0, 0.3, 0.0])
def test_soft_target_cross_entropy_value_and_finite_difference_gradient(q_shape, alpha):
    # float64 throughout: the value against the explicit -sum_k t_ik log_softmax(z_i)_k, the
    # hand-written backward against finite differences; q is full, per-image or shared
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 3, 5, dtype=torch.float64, generator=generator) * 3
    target = torch.randint(0, 4, (2, 3, 5), generator=generator)
    target[0, 0, :2] = IGNORE
    q = None if q_shape is None else torch.softmax(torch.randn(q_shape, dtype=torch.float64, generator=generator), 1)
    onehot = F.one_hot(torch.where(target == IGNORE, 0, target), 4).permute(0, 3, 1, 2).double()
    soft = onehot if q is None else alpha * onehot + (1 - alpha) * q
    valid = target != IGNORE
    expected = -(soft * torch.log_softmax(logits, 1)).sum(1)[valid].mean()
    value = SoftTargetCrossEntropy.apply(logits, target, q, 1.0 if q is None else alpha, IGNORE)
    torch.testing.assert_close(value, expected, atol=1e-12, rtol=1e-12)
    logits.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda z: SoftTargetCrossEntropy.apply(z, target, q, alpha, IGNORE), (logits,))


def test_loss_is_the_same_for_channels_last_and_bfloat16_logits():
    logits, target, features = random_batch(12)
    loss = build_loss("pals", 5)

    def value_and_gradient(z):
        z = z.detach().requires_grad_(True)
        value = loss(z, target, features)
        value.backward()
        return value, z.grad

    value, gradient = value_and_gradient(logits)
    cl_value, cl_gradient = value_and_gradient(logits.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(cl_value, value, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(cl_gradient, gradient, atol=1e-9, rtol=1e-5)
    # bf16 logits are computed in float32: same value as float32 logits holding the rounded values
    rounded_value, rounded_gradient = value_and_gradient(logits.bfloat16().float())
    bf_value, bf_gradient = value_and_gradient(logits.bfloat16())
    assert bf_value.dtype == torch.float32 and bf_gradient.dtype == torch.bfloat16
    torch.testing.assert_close(bf_value, rounded_value, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(bf_gradient.float(), rounded_gradient, atol=1e-7, rtol=1e-2)


@pytest.mark.parametrize("name", ["ce", "ls"])
def test_ignored_pixels_contribute_nothing(name):
    logits, target, features = random_batch(9)
    changed = logits.clone()
    changed[(target == IGNORE).unsqueeze(1).expand_as(logits)] = 100.0
    loss = build_loss(name, 5)
    torch.testing.assert_close(loss(logits, target, features), loss(changed, target, features))


def test_pals_loss_is_the_mean_over_valid_pixels_only():
    logits, target, features = random_batch(10, ignore_fraction=0.0)
    loss = build_loss("pals", 5)
    per_pixel = -(loss.targets(logits, target, features) * torch.log_softmax(logits, 1)).sum(1)
    partly_ignored = target.clone()
    partly_ignored[:, :4] = IGNORE  # ignored pixels stay keys of the affinity, so t elsewhere is unchanged
    expected = per_pixel[:, 4:].mean()
    torch.testing.assert_close(loss(logits, partly_ignored, features), expected, atol=1e-6, rtol=1e-5)


def test_all_pixels_ignored_gives_zero_loss():
    logits, target, features = random_batch(11)
    target[:] = IGNORE
    assert build_loss("pals", 5)(logits, target, features).item() == 0.0


@pytest.mark.parametrize(
    "name,params,message",
    [
        ("focal", {}, "unknown loss 'focal'"),
        ("pals", {"alpha": 1.5}, "alpha must be a number in [0, 1], got 1.5"),
        ("pals", {"alpha": -0.1}, "alpha must be a number in [0, 1]"),
        ("pals", {"tau": 0.0}, "tau must be a positive number (the affinity temperature), got 0.0"),
        ("pals", {"tau": -1.0}, "tau must be a positive number"),
        ("pals", {"T": 0.0}, "T must be a positive number (the teacher temperature)"),
        ("ls", {"eps": 1.2}, "eps must be a number in [0, 1], got 1.2"),
        ("ce", {"tau": 0.1}, "loss 'ce' takes parameters none, got unknown ['tau']"),
        ("pals", {"tau": "0.1"}, "tau must be a positive number (the affinity temperature), got '0.1'"),
        ("pals", {"alpha": float("nan")}, "alpha must be a number in [0, 1], got nan"),
        ("pals", {"token_budget": -1}, "token_budget must be a non-negative integer (0 = no pooling)"),
        ("pals", {"token_budget": 10.5}, "token_budget must be a non-negative integer (0 = no pooling)"),
        ("pals_uniform", {"token_budget": 64}, "got unknown ['token_budget']"),
    ],
)
def test_bad_loss_configuration_is_a_clear_error(name, params, message):
    with pytest.raises(ValueError) as error:
        build_loss(name, 5, **params)
    assert message in str(error.value)


def test_affinity_rows_are_rows_of_the_materialised_affinity():
    generator = torch.Generator().manual_seed(3)
    features = torch.randn(2, 8, 4, 6, generator=generator)
    f = F.normalize(features.double().flatten(2), dim=1)
    full = torch.softmax(torch.einsum("bdi,bdj->bij", f, f) / 0.2, dim=-1)  # [B, N, N], step 3 by hand
    torch.testing.assert_close(affinity_rows(features, [0, 5, 23], 0.2).double(), full[:, [0, 5, 23]], atol=1e-6, rtol=1e-5)


def test_aggregate_rejects_mismatched_shapes_and_bad_tau():
    with pytest.raises(ValueError, match="must share B, h and w"):
        aggregate_predictions(torch.randn(2, 8, 4, 4), torch.rand(2, 3, 4, 5), 0.1)
    with pytest.raises(ValueError, match="tau must be > 0"):
        aggregate_predictions(torch.randn(2, 8, 4, 4), torch.rand(2, 3, 4, 4), 0.0)


def test_the_self_target_ramps_in_linearly_then_holds():
    """``ramp: r``: the weight ``1 - alpha`` of ``q`` grows linearly from 0 to its value at progress ``r``."""
    logits, target, features = random_batch(3)
    ramped, plain = build_loss("pals", 5, alpha=0.4, ramp=0.5), build_loss("pals", 5, alpha=0.4)
    # no ramp is the published method, bit for bit, at any progress
    assert torch.equal(build_loss("pals", 5, alpha=0.4, ramp=0.0)(logits, target, features, 0.0), plain(logits, target, features))
    # at the start the one-hot label alone: cross-entropy
    torch.testing.assert_close(ramped(logits, target, features, 0.0), build_loss("ce", 5)(logits, target, features))
    # a quarter of training, half the ramp: 0.6 * 0.5 = 0.3 on q, i.e. alpha 0.7
    torch.testing.assert_close(ramped(logits, target, features, 0.25), build_loss("pals", 5, alpha=0.7)(logits, target, features))
    torch.testing.assert_close(ramped.targets(logits, target, features, 0.25), build_loss("pals", 5, alpha=0.7).targets(logits, target, features))
    # once the ramp has passed, exactly the unramped loss
    for progress in (0.5, 0.9):
        assert torch.equal(ramped(logits, target, features, progress), plain(logits, target, features))
    with pytest.raises(ValueError, match=r"ramp must be a number in \[0, 1\]"):
        build_loss("pals", 5, ramp=1.5)
    with pytest.raises(ValueError, match=r"got unknown \['ramp'\]"):
        build_loss("ls", 5, ramp=0.5)  # a uniform target has nothing to ramp in
