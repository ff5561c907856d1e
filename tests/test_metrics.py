"""Metrics against hand-computed confusion matrices and calibration bins."""

import math

import pytest
import torch

from paper_repro.metrics import (
    boundary_band,
    calibration_bins,
    confusion_matrix,
    ece_from_bins,
    expected_calibration_error,
    iou_per_class,
    mean_iou,
    pixel_accuracy,
)


def hand_case():
    # truth  0 0 1 1 2 255      K = 4 (class 3 absent from truth and prediction)
    # pred   0 1 1 1 0 2
    target = torch.tensor([[0, 0, 1], [1, 2, 255]])
    pred = torch.tensor([[0, 1, 1], [1, 0, 2]])
    return pred, target


def test_confusion_matrix_rows_are_truth_columns_are_prediction():
    pred, target = hand_case()
    expected = torch.tensor([[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]])
    assert torch.equal(confusion_matrix(pred, target, 4), expected)


def test_iou_miou_and_accuracy_by_hand():
    cm = confusion_matrix(*hand_case(), num_classes=4)
    iou = iou_per_class(cm)
    # class 0: TP 1, FP 1, FN 1 -> 1/3; class 1: TP 2, FP 1 -> 2/3; class 2: TP 0, FN 1 -> 0; class 3: absent
    assert iou[:3].tolist() == pytest.approx([1 / 3, 2 / 3, 0.0])
    assert math.isnan(iou[3].item())
    assert mean_iou(cm) == pytest.approx(1 / 3)
    assert pixel_accuracy(cm) == pytest.approx(3 / 5)


def test_class_predicted_but_absent_from_truth_has_zero_iou():
    cm = confusion_matrix(torch.tensor([0, 1]), torch.tensor([0, 0]), 3)
    assert iou_per_class(cm)[:2].tolist() == [0.5, 0.0]
    assert math.isnan(iou_per_class(cm)[2].item())


def test_confusion_matrices_add_up_over_batches():
    generator = torch.Generator().manual_seed(0)
    pred = torch.randint(0, 5, (4, 8, 8), generator=generator)
    target = torch.randint(0, 5, (4, 8, 8), generator=generator)
    target[:, 0] = 255
    whole = confusion_matrix(pred, target, 5)
    parts = sum(confusion_matrix(pred[i], target[i], 5) for i in range(4))
    assert torch.equal(whole, parts)
    assert whole.sum() == 4 * 7 * 8


def test_confusion_matrix_rejects_out_of_range_labels():
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\) or 255; found \[7\]"):
        confusion_matrix(torch.tensor([0, 7]), torch.tensor([0, 1]), 3)
    with pytest.raises(ValueError, match="differs from target shape"):
        confusion_matrix(torch.tensor([0, 1]), torch.tensor([0, 1, 2]), 3)


def test_expected_calibration_error_by_hand():
    # Top probabilities 0.9 (right), 0.9 (wrong), 0.62 (right), 0.55 (right), one ignored pixel.
    # 15 bins of width 1/15: 0.9 -> bin 13, 0.62 -> bin 9, 0.55 -> bin 8.
    # ECE = 2/4 * |0.5 - 0.9| + 1/4 * |1 - 0.62| + 1/4 * |1 - 0.55| = 0.2 + 0.095 + 0.1125
    probs = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.38, 0.62], [0.55, 0.45], [0.99, 0.01]])
    probs = probs.T.reshape(1, 2, 1, 5)
    target = torch.tensor([[[0, 1, 1, 0, 255]]])
    assert expected_calibration_error(probs, target, n_bins=15) == pytest.approx(0.4075)
    bins = calibration_bins(probs, target, n_bins=15)
    assert bins[0].nonzero().flatten().tolist() == [8, 9, 13]
    assert bins[0, 13].item() == 2 and bins[2, 13].item() == 1


def test_calibration_bins_accumulate_over_batches():
    generator = torch.Generator().manual_seed(1)
    probs = torch.softmax(torch.randn(3, 4, 5, 5, generator=generator) * 3, dim=1)
    target = torch.randint(0, 4, (3, 5, 5), generator=generator)
    summed = sum(calibration_bins(probs[i : i + 1], target[i : i + 1]) for i in range(3))
    assert ece_from_bins(summed) == pytest.approx(expected_calibration_error(probs, target))


def test_perfectly_confident_and_correct_is_calibrated():
    target = torch.tensor([[[0, 1, 2]]])
    probs = torch.nn.functional.one_hot(target, 3).permute(0, 3, 1, 2).double()
    assert expected_calibration_error(probs, target) == 0.0


def test_boundary_band_by_hand():
    # labels (255 ignored at the bottom right)   band, width 1              band, width 2
    # 0 0 0 1 1 1                                0 0 1 1 0 0                0 1 1 1 1 0
    # 0 0 0 1 1 1                                0 0 1 1 0 0                1 1 1 1 1 1
    # 0 0 0 1 1 1                                1 1 1 1 1 1                1 1 1 1 1 1
    # 2 2 2 2 2 2                                1 1 1 1 1 1                1 1 1 1 1 1
    # 2 2 2 2 2 255                              0 0 0 0 1 1                1 1 1 1 1 1
    labels = torch.tensor([[0, 0, 0, 1, 1, 1]] * 3 + [[2] * 6, [2, 2, 2, 2, 2, 255]])[None]
    one = torch.tensor([[0, 0, 1, 1, 0, 0]] * 2 + [[1] * 6] * 2 + [[0, 0, 0, 0, 1, 1]], dtype=torch.bool)
    two = torch.tensor([[0, 1, 1, 1, 1, 0]] + [[1] * 6] * 4, dtype=torch.bool)
    assert torch.equal(boundary_band(labels, 1)[0], one)
    assert torch.equal(boundary_band(labels, 2)[0], two)
    assert not boundary_band(torch.zeros(1, 4, 4, dtype=torch.long), 1).any()  # one label, the border is no change


def test_boundary_and_interior_confusion_matrices_add_up_to_the_whole():
    generator = torch.Generator().manual_seed(0)
    target = torch.zeros(2, 20, 24, dtype=torch.long)  # three blocks: a boundary band between them and an interior inside each
    target[:, :, 12:], target[:, 10:, :] = 1, 2
    pred = torch.randint(0, 3, target.shape, generator=generator)
    band = boundary_band(target, 2)
    parts = [confusion_matrix(pred, torch.where(pixels, target, 255), 3) for pixels in (band, ~band)]
    assert torch.equal(parts[0] + parts[1], confusion_matrix(pred, target, 3))
    assert band.any() and (~band).any()  # both parts hold pixels, and each counts exactly its own
    assert parts[0].sum() == band.sum() and parts[1].sum() == (~band).sum()
