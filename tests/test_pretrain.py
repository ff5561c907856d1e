"""The pretrain stage: a source set disjoint from the benchmarks, deterministic weights that the
segmentation model loads into its backbone alone, and the average precision that scores it."""

import json
import math

import numpy as np
import pytest
import torch

from conftest import TINY_PARAMS
from paper_repro.checkpoint import CheckpointError
from paper_repro.data.synthetic import DEFAULT_VOC_CLASSES, _rng, draw_object_scene, draw_source_image, draw_street_scene
from paper_repro.layout import Layout
from paper_repro.metrics import average_precision
from paper_repro.models import build_model
from paper_repro.pretrain import pretrain, source_set
from paper_repro.settings import resolve

STUDY = resolve(TINY_PARAMS | {"model": {"name": "deeplabv3plus_small", "pretrained_backbone": True}}, "tiny parameters")
SETTINGS = STUDY.pretrain


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Layout:
    layout = Layout(tmp_path_factory.mktemp("pretrain"))
    pretrain(STUDY, layout)
    return layout


def test_average_precision_matches_a_hand_computed_ranking():
    scores = torch.tensor([0.2, 0.9, 0.7, 0.8, 0.1])
    positives = torch.tensor([1, 1, 0, 0, 1])
    # ranked: 0.9 (+), 0.8, 0.7, 0.2 (+), 0.1 (+): precisions at the positives 1/1, 2/4, 3/5
    assert average_precision(scores, positives) == pytest.approx((1 + 2 / 4 + 3 / 5) / 3)
    assert average_precision(scores, torch.ones(5)) == 1.0
    assert math.isnan(average_precision(scores, torch.zeros(5)))


def test_source_images_are_drawn_from_streams_no_benchmark_image_uses():
    """The same seed, size and index in every benchmark split never gives a source image."""
    height, width, count = 32, 32, 12
    benchmark = []
    for seed in (0, 1):
        for split in ("train", "val"):
            for index in range(count):
                benchmark.append(draw_object_scene(_rng(seed, split, index), height, width, DEFAULT_VOC_CLASSES, 0.5)[0])
                benchmark.append(draw_street_scene(_rng(seed, split, index), height, width, 0.5)[0])
    source = [draw_source_image(seed, split, index, height, width, 0.5)[0]
              for seed in (0, 1) for split in ("train", "held_out") for index in range(count)]
    benchmark_bytes = {image.tobytes() for image in benchmark}
    assert len({image.tobytes() for image in source}) == len(source)
    assert not benchmark_bytes & {image.tobytes() for image in source}


def test_source_presence_labels_are_the_classes_drawn():
    images, presence = source_set(SETTINGS, "train")
    assert images.shape == (SETTINGS.images, 3, *SETTINGS.size) and images.dtype == torch.uint8
    for index in range(SETTINGS.images):
        _, labels = draw_source_image(SETTINGS.seed, "train", index, *SETTINGS.size, SETTINGS.typical_look)
        drawn = sorted(set(np.unique(labels).tolist()) - {0, 255})
        assert (torch.nonzero(presence[index]).flatten() + 1).tolist() == drawn


def test_pretrained_weights_load_into_the_backbone_alone(pretrained):
    saved = torch.load(pretrained.pretrained_backbone(), weights_only=True)["backbone"]
    torch.manual_seed(3)
    loaded = build_model("deeplabv3plus_small", 19, pretrained_backbone=True, backbone_weights=pretrained.pretrained_backbone())
    torch.manual_seed(3)
    scratch = build_model("deeplabv3plus_small", 19)
    for name, tensor in loaded.backbone.state_dict().items():
        assert torch.equal(tensor, saved[name]), name
    assert any(not torch.equal(tensor, scratch.backbone.state_dict()[name]) for name, tensor in saved.items())
    rest = {name: tensor for name, tensor in loaded.state_dict().items() if not name.startswith("backbone.")}
    assert rest and all(torch.equal(tensor, scratch.state_dict()[name]) for name, tensor in rest.items())  # ASPP, decoder, classifier from scratch


def test_pretraining_is_deterministic(pretrained, tmp_path):
    again = Layout(tmp_path)
    pretrain(STUDY, again)
    first = torch.load(pretrained.pretrained_backbone(), weights_only=True)["backbone"]
    second = torch.load(again.pretrained_backbone(), weights_only=True)["backbone"]
    assert first.keys() == second.keys() and all(torch.equal(first[name], second[name]) for name in first)
    assert json.loads(pretrained.pretrain_metrics().read_text()) == json.loads(again.pretrain_metrics().read_text())
    assert pretrained.pretrain_log().read_text() == again.pretrain_log().read_text()


def test_a_file_that_is_not_the_pretrained_backbone_is_refused(pretrained, tmp_path):
    other = tmp_path / "model.pt"
    torch.save({"config": {}, "model": {}}, other)
    with pytest.raises(CheckpointError, match=f"{other}: not a checkpoint of this project .missing backbone."):
        build_model("deeplabv3plus_small", 19, pretrained_backbone=True, backbone_weights=other)
    wrong = tmp_path / "wrong.pt"
    torch.save({"config": {}, "backbone": {"stem.0.weight": torch.zeros(1)}}, wrong)
    with pytest.raises(CheckpointError, match=f"{wrong}: its weights do not fit the deeplabv3plus_small backbone"):
        build_model("deeplabv3plus_small", 19, pretrained_backbone=True, backbone_weights=wrong)


@pytest.mark.parametrize("model", [{"name": "deeplabv3plus_resnet101", "pretrained_backbone": True},
                                   {"name": "deeplabv3plus_small", "pretrained_backbone": False}], ids=["resnet", "from-scratch"])
def test_a_model_that_does_not_load_the_weights_pretrains_nothing(tmp_path, monkeypatch, model):
    """The stage writes its outputs at once, without drawing a source image: the runs that depend on the
    backbone file then depend on nothing of the pretraining."""
    import paper_repro.pretrain

    monkeypatch.setattr(paper_repro.pretrain, "source_set", lambda *args: pytest.fail("drew the source set"))
    layout = Layout(tmp_path)
    metrics = pretrain(resolve(TINY_PARAMS | {"model": model}, "tiny parameters"), layout)
    start = "torchvision's ImageNet weights" if model["pretrained_backbone"] else "random initialisation"
    assert metrics == {"pretrained": False, "model": model["name"], "starts_from": start}
    assert json.loads(layout.pretrain_metrics().read_text()) == metrics
    assert torch.load(layout.pretrained_backbone(), weights_only=True) == {"config": metrics, "backbone": {}}
    assert layout.pretrain_log().read_text().splitlines() == ["iteration,loss,lr"]
