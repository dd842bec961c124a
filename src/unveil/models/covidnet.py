"""A PyTorch re-implementation of the COVID-Net design (L. Wang, Z. Q. Lin, A. Wong, "COVID-Net: a tailored deep
convolutional neural network design for detection of COVID-19 cases from chest X-ray images", Sci. Rep. 2020).

This follows the published architecture description and the public PyTorch ports; it is not the authors' code and
no published COVID-Net weights are used or loadable.
"""

from __future__ import annotations

from torch import Tensor, nn

from unveil.models.classifier import EncoderParts
from unveil.models.conv8 import conv_bn_relu, scaled_channels

#: (output channels at width 1, PEPX modules) of the four stages, as in the public ports of COVID-Net.
STAGES = ((56, 3), (112, 4), (216, 6), (424, 3))


class PEPX(nn.Sequential):
    """Projection-expansion-projection-extension: 1x1 -> 1x1 -> depthwise 3x3 (carries the stride) -> 1x1 -> 1x1,
    each with BN + ReLU; inner widths are 1/2 and 3/4 of the input's, as in the public ports."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        project, expand = max(1, in_channels // 2), max(1, 3 * in_channels // 4)
        super().__init__(conv_bn_relu(in_channels, project, 1), conv_bn_relu(project, expand, 1),
                         conv_bn_relu(expand, expand, 3, stride, groups=expand), conv_bn_relu(expand, project, 1),
                         conv_bn_relu(project, out_channels, 1))


class PEPXStage(nn.Module):
    """PEPX modules with COVID-Net's long-range connections: after the first (which reads the stage input), each
    module reads the sum of the projected stage input (1x1 shortcut) and all earlier module outputs; the stage
    returns that sum including the last module. ``stride`` 2 downsamples in the first depthwise conv and shortcut."""

    def __init__(self, in_channels: int, out_channels: int, blocks: int, stride: int) -> None:
        super().__init__()
        self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                                      nn.BatchNorm2d(out_channels))
        self.blocks = nn.ModuleList([PEPX(in_channels, out_channels, stride)]
                                    + [PEPX(out_channels, out_channels) for _ in range(blocks - 1)])

    def forward(self, x: Tensor) -> Tensor:
        total = self.shortcut(x)
        for index, block in enumerate(self.blocks):
            total = total + block(x if index == 0 else total)
        return total


class CovidNetEncoder(nn.Module):
    """COVID-Net re-implementation (not the authors' code or weights): 7x7/2 stem conv + 3x3/2 max-pool (as in the
    public ports), four PEPX stages (3, 4, 6, 3 modules; 56, 112, 216, 424 channels x width; stride 2 at stages
    2-4), global average pooling -> (B, feature_dim). The original's extra fully connected layers (7*7*424 -> 1024
    -> 256) are left out: CxrClassifier puts one linear head on the pooled features."""

    target_layer = "stage4"
    stage1: PEPXStage  # added below by name (add_module), one per STAGES entry
    stage2: PEPXStage
    stage3: PEPXStage
    stage4: PEPXStage

    def __init__(self, in_channels: int = 1, width: float = 1.0) -> None:
        super().__init__()
        channels = scaled_channels(56, width)
        self.stem = conv_bn_relu(in_channels, channels, 7, 2)
        self.stem_pool = nn.MaxPool2d(3, 2, 1)
        for index, (out, blocks) in enumerate(STAGES, 1):
            out = scaled_channels(out, width)
            self.add_module(f"stage{index}", PEPXStage(channels, out, blocks, 1 if index == 1 else 2))
            channels = out
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.feature_dim = channels

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem_pool(self.stem(x))
        x = self.stage4(self.stage3(self.stage2(self.stage1(x))))
        return self.flatten(self.pool(x))


def build_encoder(in_channels: int, width: float = 1.0) -> EncoderParts:
    """The ``covidnet`` spec's builder (:mod:`unveil.models.catalog`)."""
    encoder = CovidNetEncoder(in_channels, width)
    return EncoderParts(encoder, encoder.feature_dim, encoder.target_layer, "stem.0.weight", "head")
