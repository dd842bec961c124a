"""The torchvision architectures (ResNet-18, ResNet-50, DenseNet-121) with a one-channel stem, as encoders.

Their specs are in :mod:`unveil.models.catalog`; each function here is one spec's builder.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Literal

from torch import nn
from torchvision import models as tvm

from unveil.models.classifier import EncoderParts


def _stem_conv(in_channels: int, mode: Literal["fan_in", "fan_out"]) -> nn.Conv2d:
    """torchvision's 7x7/2, 64-channel stem for ``in_channels`` inputs, initialised as torchvision does."""
    conv = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
    nn.init.kaiming_normal_(conv.weight, mode=mode, nonlinearity="relu")
    return conv


def _resnet(depth: int, in_channels: int) -> EncoderParts:
    net = getattr(tvm, f"resnet{depth}")(weights=None)
    net.conv1 = _stem_conv(in_channels, "fan_out")
    names = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool")
    layers = [(name, getattr(net, name)) for name in names] + [("flatten", nn.Flatten())]
    encoder = nn.Sequential(OrderedDict(layers))
    return EncoderParts(encoder, net.fc.in_features, f"layer4.{len(net.layer4) - 1}", "conv1.weight", "fc")


def resnet18(in_channels: int, width: float = 1.0) -> EncoderParts:
    """torchvision's ResNet-18 up to its pooled features (``width`` is fixed at 1.0)."""
    return _resnet(18, in_channels)


def resnet50(in_channels: int, width: float = 1.0) -> EncoderParts:
    """torchvision's ResNet-50 up to its pooled features (``width`` is fixed at 1.0)."""
    return _resnet(50, in_channels)


def densenet121(in_channels: int, width: float = 1.0) -> EncoderParts:
    """torchvision's DenseNet-121 up to its pooled features (``width`` is fixed at 1.0)."""
    net = tvm.densenet121(weights=None)
    net.features.conv0 = _stem_conv(in_channels, "fan_in")
    # torchvision's forward: features -> ReLU -> pool; the ReLU is not in-place so hooks on norm5 (Grad-CAM) work
    encoder = nn.Sequential(OrderedDict(features=net.features, relu=nn.ReLU(), pool=nn.AdaptiveAvgPool2d(1),
                                        flatten=nn.Flatten()))
    return EncoderParts(encoder, net.classifier.in_features, "features.norm5", "features.conv0.weight", "classifier")
