"""Lung occlusion: hide the lung content behind a neutral fill and see what the model still separates.

Two variants, chosen by what the model sees (:func:`unveil.audit.run.occluded_inputs`):

- the input is the whole radiograph (pre-processing ``mask=none``): the lung fields, grown a little, are replaced
  by the training mean (:func:`occlude`); what remains is everything outside the lungs;
- the input is already lung-masked (``mask=segment`` or ``truth``: black outside the blurred lung mask): hiding the
  lungs would leave a black image, so the lung content is replaced by one fill inside the model's own blurred mask
  (:func:`silhouettes`); what remains is the mask's shape and size, itself a possible shortcut (pediatric vs adult
  lungs), and nothing of the radiograph.

Either way, when what remains is the same for every image (:func:`same_for_every_image`) the model's output cannot
depend on it: the test is not applicable, never passed.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from unveil.transforms import blur_mask, resize_image


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


def soft_silhouettes(masks: np.ndarray, blur_radius: float, size: int) -> np.ndarray:
    """The pre-processing's blurred lung masks (N x size x size, 0-1): ``masks`` at the pre-processing size, blurred
    with its ``blur_radius`` as :func:`unveil.transforms.apply_lung_mask` does, resized to the model's ``size``."""
    soft = [blur_mask(mask, blur_radius) for mask in masks.astype(bool)]
    return np.stack([s if s.shape == (size, size) else resize_image(s, size) for s in soft]).clip(0, 1)


def lung_mean(images: torch.Tensor, soft: np.ndarray) -> int:
    """The mean intensity (0-255) of the input inside the lungs over all images: one neutral fill for every image,
    so the fill itself tells no image from another."""
    inside = torch.from_numpy(soft >= 0.5)[:, None]
    return int(round(float(images[inside].float().mean()))) if bool(inside.any()) else 0


def silhouettes(soft: np.ndarray, fill: int) -> torch.Tensor:
    """uint8 images (N x 1 x S x S): ``fill`` shaped by each blurred mask, i.e. what the pre-processing would draw
    from a radiograph of one uniform intensity. Nothing of the image is left but the mask's shape and size."""
    return torch.from_numpy(np.rint(np.clip(fill, 0, 255) * soft).astype(np.uint8))[:, None]


def same_for_every_image(images: torch.Tensor) -> bool:
    """Whether every image of ``images`` is the same (nothing left to tell one from another)."""
    return len(images) < 2 or bool((images == images[:1]).all())
