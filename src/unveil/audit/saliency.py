"""Grad-CAM saliency (MONAI) and how much of it falls inside the lungs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from unveil.training.bundle import ModelBundle
from unveil.training.data import to_model_input


def gradcam_maps(bundle: ModelBundle, images: torch.Tensor, class_index: int, batch_size: int = 16) -> np.ndarray:
    """Grad-CAM maps (N x S x S, each scaled to [0, 1]) for ``class_index`` at the model's target layer."""
    from monai.visualize import GradCAM

    model = bundle.model.eval()
    mean, std = bundle.normalization
    cam = GradCAM(nn_module=model, target_layers=model.target_layer)
    maps = []
    for chunk in torch.split(images, batch_size):
        inputs = to_model_input(chunk, mean, std).requires_grad_(False)
        with torch.enable_grad():
            result = cam(x=inputs, class_idx=class_index)
        maps.append(np.nan_to_num(result.detach().float().numpy()[:, 0]))
    model.zero_grad(set_to_none=True)
    return np.concatenate(maps)


def lung_saliency_fraction(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Per image: the share of the saliency mass inside the lung mask (nan for an all-zero map)."""
    total = maps.reshape(len(maps), -1).sum(1)
    inside = (maps * masks).reshape(len(maps), -1).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, inside / total, np.nan)


def save_overlay(image: np.ndarray, saliency: np.ndarray, mask: np.ndarray, title: str, path: str | Path) -> Path:
    """Gray image, Grad-CAM heat map (jet, 40 %) on top, lung contour in green, a caption strip.
    Composed with numpy + Pillow: about 20x faster than a matplotlib figure per image."""
    from matplotlib import colormaps
    from PIL import Image, ImageDraw
    from skimage.segmentation import find_boundaries

    gray = np.repeat(np.asarray(image, dtype=np.float32)[..., None] / 255.0, 3, axis=2)
    heat = colormaps["jet"](np.clip(saliency, 0, 1))[..., :3].astype(np.float32)
    blended = 0.6 * gray + 0.4 * heat
    if mask.any() and not mask.all():
        blended[find_boundaries(mask, mode="inner")] = (0.0, 1.0, 0.0)
    picture = Image.fromarray(np.rint(blended * 255).astype(np.uint8))
    scale = max(1, 256 // max(picture.size))
    picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
    canvas = Image.new("RGB", (picture.width, picture.height + 14), "white")
    canvas.paste(picture, (0, 14))
    ImageDraw.Draw(canvas).text((2, 1), title, fill="black")
    canvas.save(path)
    return Path(path)
