"""Grad-CAM saliency maps (MONAI) of a model bundle, and the overlays that show them on the radiograph.

Shared by the audit (saliency inside the lungs) and by ``unveil predict`` (one overlay per image)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from unveil.training.bundle import ModelBundle
from unveil.training.data import to_model_input
from unveil.transforms import resize_image, resize_mask


def gradcam_maps(bundle: ModelBundle, images: torch.Tensor, class_index: int, batch_size: int = 16) -> np.ndarray:
    """Grad-CAM maps (N x S x S, each scaled to [0, 1]) for ``class_index`` at the model's target layer."""
    from monai.visualize import GradCAM  # lazy: only Grad-CAM needs monai.visualize

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


#: Longest side, in pixels, of the radiograph an overlay is drawn on.
OVERLAY_SIDE = 384


def display_image(pixels: np.ndarray, side: int = OVERLAY_SIDE) -> np.ndarray:
    """A radiograph (float in [0, 1], any size) resized for display: longest side ``side``, aspect kept."""
    height, width = pixels.shape[:2]
    factor = side / max(height, width)
    return resize_image(pixels, (max(1, round(height * factor)), max(1, round(width * factor))))


def save_overlay(image: np.ndarray, saliency: np.ndarray, mask: np.ndarray, title: str, path: str | Path, *,
                 display: np.ndarray | None = None) -> Path:
    """Grad-CAM map over the radiograph, lung contour (cyan), a colour scale and a caption strip.

    ``image`` (uint8), ``saliency`` (in [0, 1]) and ``mask`` are at the model's square input size;
    ``display`` is the original radiograph (float in [0, 1], e.g. from :func:`display_image`): the map
    and contour are resized onto it, so the reader sees the image as acquired, not the 128-px model
    input. The map uses matplotlib's perceptually uniform ``inferno`` colour map, more opaque where
    saliency is high, with its scale on the right (0 = least, 1 = most salient in this image).
    Composed with numpy + Pillow: about 20x faster than a matplotlib figure per image."""
    from matplotlib import colormaps  # lazy: matplotlib is slow to import and only overlays need it
    from PIL import Image, ImageDraw
    from skimage.segmentation import find_boundaries

    if display is None:
        display = display_image(np.asarray(image, dtype=np.float32) / 255.0, max(256, int(image.shape[0])))
    base = np.clip(np.asarray(display, dtype=np.float32), 0.0, 1.0)
    heat_map = np.clip(resize_image(np.asarray(saliency, dtype=np.float32), base.shape), 0.0, 1.0)
    colours = colormaps["inferno"]
    heat = colours(heat_map)[..., :3].astype(np.float32)
    alpha = (0.1 + 0.45 * heat_map)[..., None]
    blended = (1.0 - alpha) * base[..., None] + alpha * heat
    lungs = resize_mask(np.asarray(mask, dtype=np.float32), base.shape)
    if lungs.any() and not lungs.all():
        blended[find_boundaries(lungs, mode="inner")] = (0.0, 1.0, 1.0)
    picture = Image.fromarray(np.rint(blended * 255).astype(np.uint8))
    top, bar_width, margin = 14, 12, 34
    canvas = Image.new("RGB", (picture.width + margin, max(picture.height, 60) + top), "white")
    canvas.paste(picture, (0, top))
    bar_top, bar_bottom = top + 10, top + picture.height - 10
    ramp = np.linspace(1.0, 0.0, max(bar_bottom - bar_top, 2))
    bar = colours(np.repeat(ramp[:, None], bar_width, axis=1))[..., :3]
    canvas.paste(Image.fromarray(np.rint(bar * 255).astype(np.uint8)), (picture.width + 4, bar_top))
    draw = ImageDraw.Draw(canvas)
    draw.text((2, 1), title, fill="black")
    draw.text((picture.width + 4 + bar_width + 2, bar_top - 4), "1", fill="black")
    draw.text((picture.width + 4 + bar_width + 2, bar_bottom - 8), "0", fill="black")
    draw.text((picture.width + 2, top - 13), "CAM", fill="black")
    canvas.save(path)
    return Path(path)
