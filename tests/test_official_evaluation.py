"""The project's mIoU and per-class IoU equal the official Cityscapes evaluator's
(``cityscapesscripts``' evalPixelLevelSemanticLabeling) on a generated Cityscapes tree."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import run_cli
from paper_repro.data.cityscapes import CLASSES, CityscapesSegmentation
from paper_repro.metrics import confusion_matrix, iou_per_class, mean_iou

from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as official
from cityscapesscripts.helpers.labels import trainId2label


def official_scores(predictions: dict[str, np.ndarray], data, folder) -> dict:
    """Score train-id predictions with the official evaluator, which reads label-id PNGs."""
    to_label_id = np.zeros(256, dtype=np.uint8)
    for train_id, label in trainId2label.items():
        if 0 <= train_id < 255:
            to_label_id[train_id] = label.id
    prediction_files, truth_files = [], []
    for index, image_id in enumerate(data.ids):
        path = folder / f"{image_id}_prediction.png"
        Image.fromarray(to_label_id[predictions[image_id]]).save(path)
        prediction_files.append(str(path))
        truth_files.append(str(data.files[index][1]))  # the stored *_gtFine_labelIds.png
    args = official.args
    args.evalInstLevelScore, args.JSONOutput, args.quiet = False, False, True
    return official.evaluateImgLists(prediction_files, truth_files, args)


def assert_same_scores(ours_iou: dict, ours_miou: float, theirs: dict) -> None:
    """Ours in percent (4 decimals kept), theirs as fractions; NaN (and None) = class left out of the mean."""
    for name, value in ours_iou.items():
        expected = theirs["classScores"][name]
        if value is None or np.isnan(value):
            assert np.isnan(expected), name
        else:
            assert value == pytest.approx(100 * expected, abs=1e-3), name
    assert ours_miou == pytest.approx(100 * theirs["averageScoreClasses"], abs=1e-3)


def test_evaluate_stage_scores_as_the_official_evaluator(tiny_workspace, tmp_path):
    args = ["--dataset", "tiny-streets", "--method", "ce", "--percent", "100", "--seed", "0"]
    assert run_cli(tiny_workspace, "train", *args).returncode == 0
    result = run_cli(tiny_workspace, "evaluate", *args, "--set", "evaluate.figure_images=3")  # keep every prediction
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tiny_workspace / "results" / "metrics" / "tiny-streets" / "ce-100-0.json").read_text())
    data = CityscapesSegmentation(tiny_workspace / "data" / "tiny-streets", "val")
    folder = tiny_workspace / "results" / "predictions" / "tiny-streets" / "ce-100-0"
    predictions = {image_id: np.asarray(Image.open(folder / f"{image_id}.png")) for image_id in data.ids}
    assert_same_scores(metrics["iou"], metrics["miou"], official_scores(predictions, data, tmp_path))


def test_metrics_score_noisy_predictions_as_the_official_evaluator(tiny_workspace, tmp_path):
    # the ground truth with a third of its pixels replaced by random classes: every class scores,
    # including predicted classes absent from the ground truth (IoU 0, counted in the mean)
    data = CityscapesSegmentation(tiny_workspace / "data" / "tiny-streets", "val")
    generator = np.random.default_rng(0)
    predictions, cm = {}, torch.zeros(19, 19, dtype=torch.int64)
    for index, image_id in enumerate(data.ids):
        truth = data.load_label(index)
        noisy = np.where(truth == 255, generator.integers(0, 19, truth.shape), truth)
        replace = generator.random(truth.shape) < 1 / 3
        noisy[replace] = generator.integers(0, 17, replace.sum())  # train ids 17, 18 never predicted
        predictions[image_id] = noisy.astype(np.uint8)
        cm += confusion_matrix(torch.from_numpy(noisy), torch.from_numpy(truth.astype(np.int64)), 19)
    ours = dict(zip(CLASSES, (100 * iou_per_class(cm)).tolist()))
    theirs = official_scores(predictions, data, tmp_path)
    assert np.isnan(theirs["classScores"]["motorcycle"]) and np.isnan(ours["motorcycle"])  # absent and never predicted
    assert theirs["classScores"]["train"] == 0 and ours["train"] == 0  # predicted, absent from the ground truth
    assert_same_scores(ours, 100 * mean_iou(cm), theirs)
