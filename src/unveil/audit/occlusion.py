"""Lung occlusion: replace the lung fields by a neutral fill and see what the model still separates."""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage


def occlusion_masks(masks: np.ndarray, dilation: int) -> np.ndarray:
    """Lung masks (N x S x S, bool) grown by ``dilation`` pixels, so lung borders are hidden too."""
    if dilation <= 0:
        return masks.astype(bool)
    structure = ndimage.generate_binary_structure(2, 1)
    return np.stack([ndimage.binary_dilation(m, structure, iterations=dilation) for m in masks.astype(bool)])


def occlude(images: torch.Tensor, masks: np.ndarray, fill: int) -> torch.Tensor:
    """uint8 images (N x 1 x S x S) with the masked pixels set to ``fill`` (0-255)."""
    occluded = images.clone()
    occluded[torch.from_numpy(masks)[:, None]] = int(np.clip(fill, 0, 255))
    return occluded
