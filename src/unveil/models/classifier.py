"""The common shape of every classifier: an encoder producing pooled features, then one linear head."""

from __future__ import annotations

from typing import Any, NamedTuple

from torch import Tensor, nn

from unveil.models.catalog import ModelError

__all__ = ["CxrClassifier", "EncoderParts", "ModelError"]


class EncoderParts(NamedTuple):
    """What a model's builder returns (see :class:`unveil.models.catalog.ModelSpec`): the encoder and what
    build_model needs to know of it."""

    encoder: nn.Module
    feature_dim: int
    target_layer: str  # relative to the encoder
    first_conv: str  # state-dict key of the first convolution's weight (input channels are adapted on load)
    classifier: str  # key prefix of the classifier layer in the architecture's own (torchvision) state dicts


class CxrClassifier(nn.Module):
    """Encoder (images (B, C, H, W) -> pooled features (B, feature_dim)) followed by a linear head (-> logits).

    The split lets fine-tuning reuse a pre-trained encoder under a new head, lets analyses read ``features``,
    and ``target_layer`` names (as in ``named_modules()``) the last 4-D feature map, for Grad-CAM.
    """

    def __init__(self, architecture: str, encoder: nn.Module, feature_dim: int, num_classes: int, in_channels: int,
                 target_layer: str) -> None:
        super().__init__()
        self.architecture = architecture
        self.encoder = encoder
        self.feature_dim = feature_dim
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.head = nn.Linear(feature_dim, num_classes)
        if target_layer not in dict(self.named_modules()):
            raise ModelError(f"{architecture}: target layer {target_layer!r} is not a module of the model")
        self.target_layer = target_layer
        #: The (mean, std) normalization the encoder's weights require, when fixed by where they come from (a
        #: torchxrayvision checkpoint: [0, 1] -> [-1024, 1024]); None: fitted on the training split.
        self.input_normalization: tuple[float, float] | None = None
        #: Where the encoder's initial weights come from (format, file, sha256, ...), recorded in the bundle.
        self.encoder_source: dict[str, Any] | None = None

    def forward(self, x: Tensor) -> Tensor:
        """Class logits (B, num_classes)."""
        return self.head(self.encoder(x))

    def features(self, x: Tensor) -> Tensor:
        """Pooled encoder features (B, feature_dim), the head's input."""
        return self.encoder(x)

    def replace_head(self, num_classes: int) -> None:
        """Swap in a freshly initialised head (drawn from the current torch RNG) with ``num_classes`` outputs."""
        old = self.head.weight
        self.head = nn.Linear(self.feature_dim, num_classes, device=old.device, dtype=old.dtype)
        self.num_classes = num_classes

    def extra_repr(self) -> str:
        return f"architecture={self.architecture!r}, in_channels={self.in_channels}, num_classes={self.num_classes}"
