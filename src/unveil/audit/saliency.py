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
    """Gray image, Grad-CAM heat map on top, lung contour in green."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(3.2, 3.4), dpi=110)
    axis.imshow(image, cmap="gray", vmin=0, vmax=255)
    axis.imshow(saliency, cmap="jet", alpha=0.4, vmin=0, vmax=1)
    if mask.any() and not mask.all():
        axis.contour(mask.astype(float), levels=[0.5], colors="lime", linewidths=0.8)
    axis.set_title(title, fontsize=7)
    axis.axis("off")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return Path(path)
