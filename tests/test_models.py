"""DeepLabV3+ builders: output contract, paper-scale structure and backbone weights."""

import urllib.error

import pytest
import torch
import torch.nn.functional as F
import torchvision

from paper_repro.models import MODELS, build_model


@pytest.mark.parametrize("name,feature_channels", [("deeplabv3plus_small", 64), ("deeplabv3plus_resnet50", 256), ("deeplabv3plus_resnet101", 256)])
def test_outputs_logits_at_input_resolution_and_stride_4_features(name, feature_channels):
    torch.manual_seed(0)
    model = build_model(name, num_classes=19).eval()
    with torch.no_grad():
        output = model(torch.randn(2, 3, 64, 96))
    assert output["out"].shape == (2, 19, 64, 96)
    assert output["feat"].shape == (2, feature_channels, 16, 24)


def test_logits_are_the_classifier_applied_to_the_returned_features():
    model = build_model("deeplabv3plus_small", num_classes=5).eval()
    with torch.no_grad():
        output = model(torch.randn(1, 3, 48, 64))
        expected = F.interpolate(model.classifier(output["feat"]), size=(48, 64), mode="bilinear", align_corners=False)
    torch.testing.assert_close(output["out"], expected)


def test_paper_scale_backbone_has_output_stride_16():
    model = build_model("deeplabv3plus_resnet101", num_classes=21).eval()
    with torch.no_grad():
        low, high = model.backbone(torch.randn(1, 3, 64, 64))
    assert low.shape[-2:] == (16, 16) and high.shape[-2:] == (4, 4) and high.shape[1] == 2048
    assert len(model.backbone.layer3) == 23  # ResNet-101


def test_small_model_is_cpu_scale():
    parameters = sum(p.numel() for p in build_model("deeplabv3plus_small", 19).parameters())
    assert 0.5e6 < parameters < 2e6


def test_pretrained_backbone_loads_torchvision_imagenet_weights(monkeypatch):
    reference = torchvision.models.resnet50()
    torch.nn.init.constant_(reference.conv1.weight, 0.125)
    requested = []

    def fake_get_state_dict(weights, *args, **kwargs):
        requested.append(weights)
        return reference.state_dict()

    monkeypatch.setattr(torchvision.models.WeightsEnum, "get_state_dict", fake_get_state_dict)
    model = build_model("deeplabv3plus_resnet50", 21, pretrained_backbone=True)
    assert requested == [torchvision.models.ResNet50_Weights.IMAGENET1K_V1]
    assert torch.all(model.backbone.stem[0].weight == 0.125)


def test_unavailable_pretrained_weights_are_a_clear_error(monkeypatch, tmp_path):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torchvision.models.WeightsEnum, "get_state_dict", offline)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"ImageNet backbone weights are not available .*resnet101-.*\.pth to .*checkpoints"):
        build_model("deeplabv3plus_resnet101", 19, pretrained_backbone=True)


def test_unknown_model_and_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="unknown model 'unet'; expected one of " + ", ".join(MODELS)):
        build_model("unet", 19)
    with pytest.raises(ValueError, match="num_classes must be >= 2"):
        build_model("deeplabv3plus_small", 1)
    with pytest.raises(FileNotFoundError, match="missing pretrained backbone None; run `python -m paper_repro pretrain` first"):
        build_model("deeplabv3plus_small", 19, pretrained_backbone=True)
