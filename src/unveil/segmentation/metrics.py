"""Segmentation figures per image: Dice, IoU and 95th-percentile Hausdorff distance."""

from __future__ import annotations

import warnings

import numpy as np
import torch
from monai.metrics import compute_hausdorff_distance

from unveil.transforms import resize_mask


def dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    """2|P∩T| / (|P|+|T|); 1.0 when both are empty."""
    prediction, truth = np.asarray(prediction, bool), np.asarray(truth, bool)
    total = prediction.sum() + truth.sum()
    return 1.0 if total == 0 else float(2.0 * np.logical_and(prediction, truth).sum() / total)


def iou(prediction: np.ndarray, truth: np.ndarray) -> float:
    """|P∩T| / |P∪T|; 1.0 when both are empty."""
    prediction, truth = np.asarray(prediction, bool), np.asarray(truth, bool)
    union = np.logical_or(prediction, truth).sum()
    return 1.0 if union == 0 else float(np.logical_and(prediction, truth).sum() / union)


def hausdorff95(prediction: np.ndarray, truth: np.ndarray, *, size: int = 256) -> float:
    """95th-percentile symmetric Hausdorff distance (MONAI), in pixels of a ``size``-pixel-wide
    resampling of the pair: comparable across images of any resolution (no pixel spacing is
    known for most CXR sources). NaN when either mask is empty."""
    if not np.any(prediction) or not np.any(truth):
        return float("nan")
    height, width = np.shape(truth)
    shape = (max(1, round(size * height / width)), size)
    p = torch.from_numpy(resize_mask(prediction, shape))[None, None]
    t = torch.from_numpy(resize_mask(truth, shape))[None, None]
    with warnings.catch_warnings():  # MONAI 1.5 calls its own deprecated get_mask_edges(always_return_as_numpy=)
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy", category=FutureWarning)
        return float(compute_hausdorff_distance(p, t, percentile=95.0).item())


def mask_figures(prediction: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    return {"dice": dice(prediction, truth), "iou": iou(prediction, truth),
            "hd95_px256": hausdorff95(prediction, truth)}
