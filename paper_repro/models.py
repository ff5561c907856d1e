"""DeepLabV3+ segmentation networks that return logits and their penultimate decoder features.

``forward(x)`` returns ``{"out": logits [B, K, H, W] at input resolution, "feat": [B, D, H/4, W/4]}``;
``feat`` is the decoder output just before the 1x1 classifier, the ``F`` of docs/method.md, section 2.

* ``deeplabv3plus_resnet101`` / ``deeplabv3plus_resnet50``: paper scale, torchvision ResNet
  with a dilated last stage (output stride 16), ASPP rates (6, 12, 18), 48-channel low-level
  projection and a 256-channel decoder (D = 256), as in Chen et al. 2018. With
  ``pretrained_backbone=True`` the backbone starts from torchvision's ImageNet weights; no
  segmentation-pretrained (COCO / VOC) weights are ever used.
* ``deeplabv3plus_small``: the same architecture scaled for a 2-core CPU (about 1M
  parameters, output stride 16, D = 64). With ``pretrained_backbone=True`` its backbone
  starts from the weights of the ``pretrain`` stage, the embedded benchmark's analog of
  ImageNet (``paper_repro/pretrain.py``); ASPP, decoder and classifier start from scratch.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock
from torchvision.models.segmentation.deeplabv3 import ASPP

from .settings import MODELS

__all__ = ["DeepLabV3Plus", "build_model"]


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class ResNetFeatures(nn.Module):
    """A torchvision ResNet cut into (stride-4 ``layer1`` features, stride-16 ``layer4`` features)."""

    def __init__(self, resnet: torchvision.models.ResNet) -> None:
        super().__init__()
        self.stem = nn.Sequential(resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        low = self.layer1(self.stem(x))
        return low, self.layer4(self.layer3(self.layer2(low)))


class SmallBackbone(nn.Module):
    """A four-stage residual CNN (torchvision ``BasicBlock``) with stride-4 and stride-16 outputs."""

    def __init__(self, widths: Sequence[int] = (24, 32, 64, 128)) -> None:
        super().__init__()
        stem, low, mid, high = widths
        self.low_channels, self.out_channels = low, high
        self.stem = conv_bn_relu(3, stem, stride=2)
        self.layer1 = self._stage(stem, low, blocks=1)
        self.layer2 = self._stage(low, mid, blocks=2)
        self.layer3 = self._stage(mid, high, blocks=2)

    @staticmethod
    def _stage(in_channels: int, out_channels: int, blocks: int) -> nn.Sequential:
        shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=2, bias=False), nn.BatchNorm2d(out_channels))
        layers = [BasicBlock(in_channels, out_channels, stride=2, downsample=shortcut)]
        layers += [BasicBlock(out_channels, out_channels) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        low = self.layer1(self.stem(x))
        return low, self.layer3(self.layer2(low))


class DeepLabV3Plus(nn.Module):
    """DeepLabV3+: ASPP on the stride-16 features, fused with projected stride-4 features."""

    def __init__(
        self,
        backbone: nn.Module,
        low_channels: int,
        high_channels: int,
        num_classes: int,
        atrous_rates: Sequence[int],
        aspp_channels: int,
        low_projection: int,
        decoder_channels: int,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.aspp = ASPP(high_channels, atrous_rates, aspp_channels)
        self.project_low = conv_bn_relu(low_channels, low_projection, kernel_size=1)
        self.decoder = nn.Sequential(
            conv_bn_relu(aspp_channels + low_projection, decoder_channels),
            conv_bn_relu(decoder_channels, decoder_channels),
        )
        self.classifier = nn.Conv2d(decoder_channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        low, high = self.backbone(x)
        context = F.interpolate(self.aspp(high), size=low.shape[-2:], mode="bilinear", align_corners=False)
        features = self.decoder(torch.cat([context, self.project_low(low)], dim=1))
        logits = F.interpolate(self.classifier(features), size=x.shape[-2:], mode="bilinear", align_corners=False)
        return {"out": logits, "feat": features}


def _load_imagenet_weights(resnet: nn.Module, weights) -> None:
    """Load torchvision's ImageNet weights, or fail saying where to put them when offline."""
    try:
        state = weights.get_state_dict(progress=True, check_hash=True)
    except (OSError, RuntimeError) as error:  # URLError is an OSError
        expected = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(weights.url))
        raise FileNotFoundError(
            f"ImageNet backbone weights are not available ({error}); download {weights.url} "
            f"to {expected} or run with pretrained_backbone=False"
        ) from error
    resnet.load_state_dict(state)


def _resnet_deeplab(depth: int, num_classes: int, pretrained_backbone: bool) -> DeepLabV3Plus:
    builder, weights = {
        50: (torchvision.models.resnet50, torchvision.models.ResNet50_Weights.IMAGENET1K_V1),
        101: (torchvision.models.resnet101, torchvision.models.ResNet101_Weights.IMAGENET1K_V1),
    }[depth]
    resnet = builder(weights=None, replace_stride_with_dilation=[False, False, True])
    if pretrained_backbone:
        _load_imagenet_weights(resnet, weights)
    return DeepLabV3Plus(
        ResNetFeatures(resnet), 256, 2048, num_classes,
        atrous_rates=(6, 12, 18), aspp_channels=256, low_projection=48, decoder_channels=256,
    )


def _small_deeplab(num_classes: int, pretrained_backbone: bool, backbone_weights: str | os.PathLike | None) -> DeepLabV3Plus:
    backbone = SmallBackbone()
    model = DeepLabV3Plus(
        backbone, backbone.low_channels, backbone.out_channels, num_classes,
        atrous_rates=(2, 4, 6), aspp_channels=64, low_projection=24, decoder_channels=64,
    )
    model.aspp.project[-1].p = 0.1  # ASPP dropout: 0.5 keeps a 1M-parameter net from fitting in a CPU budget
    if pretrained_backbone:
        _load_pretrain_stage_weights(backbone, backbone_weights)
    return model


def _load_pretrain_stage_weights(backbone: SmallBackbone, path: str | os.PathLike | None) -> None:
    """Load the ``pretrain`` stage's backbone weights (docs/method.md, section 5)."""
    from .checkpoint import BACKBONE_KEYS, CheckpointError, load_checkpoint  # here: only this path reads a file

    if path is None or not os.path.isfile(path):
        raise FileNotFoundError(f"missing pretrained backbone {path}; run `python -m paper_repro pretrain` first")
    try:
        backbone.load_state_dict(load_checkpoint(path, BACKBONE_KEYS)["backbone"])
    except RuntimeError as error:
        raise CheckpointError(f"{path}: its weights do not fit the deeplabv3plus_small backbone") from error


def build_model(name: str, num_classes: int, pretrained_backbone: bool = False,
                backbone_weights: str | os.PathLike | None = None) -> DeepLabV3Plus:
    """Build a segmentation network by name (``settings.MODELS``; the module docstring describes them).

    With ``pretrained_backbone``, the ResNets load torchvision's ImageNet weights and
    ``deeplabv3plus_small`` loads ``backbone_weights``, the file the ``pretrain`` stage writes.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; expected one of {', '.join(MODELS)}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    backbone = MODELS[name]
    if backbone == "small":
        return _small_deeplab(num_classes, pretrained_backbone, backbone_weights)
    return _resnet_deeplab(int(backbone.removeprefix("resnet")), num_classes, pretrained_backbone)
