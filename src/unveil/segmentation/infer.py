"""Apply a lung segmentation bundle to images: resize, equalize, predict, threshold, clean, restore size."""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError

from unveil.errors import UnveilError
from unveil.segmentation.model import load_lung_bundle, resolve_bundle
from unveil.segmentation.postprocess import clean_lung_mask
from unveil.transforms import equalize_histogram, resize_image

#: Intensity standardisation of the network input (equalized images are uniform on [0, 1]).
INPUT_MEAN, INPUT_STD = 0.5, 0.29


class SegmenterError(UnveilError, RuntimeError):
    """A segmentation bundle is missing or unreadable (the message names the file)."""


def default_model_path() -> Path:
    """The lung model shipped inside the package (see weights/MODEL_CARD.md)."""
    return Path(str(resources.files("unveil.segmentation").joinpath("weights/lung_unet.safetensors")))


def prepare_input(image: np.ndarray, size: int, equalize: bool = True) -> np.ndarray:
    """The network's view of an image: resized to ``size`` and histogram-equalized, in [0, 1]."""
    resized = resize_image(image, size)
    return equalize_histogram(resized) if equalize else resized


def to_tensor(prepared: np.ndarray | Sequence[np.ndarray]) -> torch.Tensor:
    """Stack prepared images into a standardised (N, 1, H, W) float tensor."""
    array = prepared if isinstance(prepared, np.ndarray) else np.stack(prepared)
    if array.ndim == 2:
        array = array[None]
    return (torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[:, None] - INPUT_MEAN) / INPUT_STD


class LungSegmenter:
    """A trained lung U-Net with its input specification; ``segment`` returns a boolean mask of
    the image's own size."""

    def __init__(self, network: torch.nn.Module, description: dict[str, Any], device: str = "cpu") -> None:
        self.network = network.to(device).eval()
        self.description = description
        self.device = device
        spec = description.get("input", {})
        self.input_size = int(spec.get("size", 256))
        self.equalize = bool(spec.get("equalize", True))
        self.threshold = float(description.get("threshold", 0.5))
        self.conventions = list(description.get("conventions", ["visible"]))
        self.default_convention = str(description.get("default_convention", self.conventions[0]))

    def channel(self, convention: str | None) -> int:
        """Output channel of ``convention`` (None: the bundle's default)."""
        convention = convention or self.default_convention
        if convention not in self.conventions:
            raise SegmenterError(f"this lung model knows conventions {self.conventions}, not {convention!r}")
        return self.conventions.index(convention)

    @classmethod
    def load(cls, path: str | Path | None = None, device: str = "cpu") -> LungSegmenter:
        """Load a bundle (``x.safetensors`` + ``x.json``, its base name, or a `lungs train` run folder);
        the shipped model when ``path`` is None."""
        path = Path(path) if path is not None else default_model_path()
        try:
            path = resolve_bundle(path)
        except ValueError as error:
            raise SegmenterError(str(error)) from None
        except FileNotFoundError as error:
            raise SegmenterError(f"{error.filename}: {error.strerror}") from None
        try:
            network, description = load_lung_bundle(path)
        except FileNotFoundError as error:
            raise SegmenterError(f"{error.filename}: segmentation model file not found") from None
        except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as error:
            raise SegmenterError(f"{path}: not a readable lung segmentation bundle ({error})") from None
        return cls(network, description, device)

    @torch.inference_mode()
    def probabilities(self, images: Sequence[np.ndarray], batch_size: int = 16,
                      convention: str | None = None) -> list[np.ndarray]:
        """Lung probability maps at the network's input size, one per image."""
        channel = self.channel(convention)
        out: list[np.ndarray] = []
        for start in range(0, len(images), batch_size):
            batch = [prepare_input(image, self.input_size, self.equalize) for image in images[start:start + batch_size]]
            logits = self.network(to_tensor(batch).to(self.device))
            out.extend(torch.sigmoid(logits.float())[:, channel].cpu().numpy())
        return out

    def segment_batch(self, images: Sequence[np.ndarray], *, postprocess: bool = True,
                      batch_size: int = 16, convention: str | None = None) -> list[np.ndarray]:
        """Boolean lung masks, each of its image's size, in ``convention`` ("visible" lung field or
        "full" lung including the part behind the heart; default: the bundle's)."""
        masks = []
        for image, probability in zip(images, self.probabilities(images, batch_size, convention), strict=True):
            mask = resize_image(probability, image.shape) >= self.threshold
            masks.append(clean_lung_mask(mask) if postprocess else mask)
        return masks

    def segment(self, image: np.ndarray, *, postprocess: bool = True, convention: str | None = None) -> np.ndarray:
        return self.segment_batch([image], postprocess=postprocess, convention=convention)[0]
