"""Conv-8, the small all-convolutional CXR classifier of Tartaglione et al. (2020), after ALL-CNN-C.

References: J. T. Springenberg, A. Dosovitskiy, T. Brox, M. Riedmiller, "Striving for Simplicity: The All
Convolutional Net", ICLR workshop 2015 (ALL-CNN-C); E. Tartaglione, C. A. Barbano, C. Berzovini, M. Calandri,
M. Grangetto, "Unveiling COVID-19 from CHEST X-Ray with Deep Learning: A Hurdles Race with Small Data", IJERPH 2020
("8 convolutional layers and one fully connected").
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from unveil.models.classifier import EncoderParts


def scaled_channels(channels: int, width: float) -> int:
    """``channels`` times the width multiplier, at least 8 (tiny widths are for tests and CPU demos)."""
    return max(8, round(channels * width))


def conv_bn_relu(in_channels: int, out_channels: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    """Convolution ('same' padding, no bias) + BatchNorm + ReLU; the ReLU is not in-place so Grad-CAM hooks work."""
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, kernel, stride, kernel // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU())


class Conv8Encoder(nn.Sequential):
    """ALL-CNN-C's eight convolutions (96, 96, 96/2, 192, 192, 192/2, 192, 1x1 192), BN + ReLU each, global pooling.

    ALL-CNN-C was designed for 32 px CIFAR images; the first convolution here has stride 2 (not in the original) so
    that 224-256 px radiographs cost a few GFLOPs rather than ~14 at full resolution. Output: (B, feature_dim).
    """

    target_layer = "conv8"

    def __init__(self, in_channels: int = 1, width: float = 1.0) -> None:
        c96, c192 = scaled_channels(96, width), scaled_channels(192, width)
        plan = [(c96, 3, 2), (c96, 3, 1), (c96, 3, 2), (c192, 3, 1), (c192, 3, 1), (c192, 3, 2), (c192, 3, 1),
                (c192, 1, 1)]  # (out channels, kernel, stride)
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        channels = in_channels
        for index, (out, kernel, stride) in enumerate(plan, 1):
            layers[f"conv{index}"] = conv_bn_relu(channels, out, kernel, stride)
            channels = out
        layers["pool"] = nn.AdaptiveAvgPool2d(1)
        layers["flatten"] = nn.Flatten()
        super().__init__(layers)
        self.feature_dim = channels


def build_encoder(in_channels: int, width: float = 1.0) -> EncoderParts:
    """The ``conv8`` spec's builder (:mod:`unveil.models.catalog`)."""
    encoder = Conv8Encoder(in_channels, width)
    return EncoderParts(encoder, encoder.feature_dim, encoder.target_layer, "conv1.0.weight", "head")
