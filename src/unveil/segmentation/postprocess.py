"""Mask clean-up after thresholding: keep the two largest connected components, fill their holes."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def keep_largest_components(mask: np.ndarray, count: int = 2, min_fraction: float = 0.05) -> np.ndarray:
    """Keep the ``count`` largest 8-connected components; drop any below ``min_fraction`` of the
    largest (a real second lung is never that small, a stray blob usually is)."""
    mask = np.asarray(mask, dtype=bool)
    labels, found = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    if found <= 1:
        return mask
    sizes = np.bincount(labels.ravel())[1:]
    order = np.argsort(sizes)[::-1][:count]
    keep = [index + 1 for index in order if sizes[index] >= min_fraction * sizes[order[0]]]
    return np.isin(labels, keep)


def fill_holes(mask: np.ndarray) -> np.ndarray:
    return ndimage.binary_fill_holes(np.asarray(mask, dtype=bool))


def clean_lung_mask(mask: np.ndarray) -> np.ndarray:
    """The segmenter's post-processing: two largest components, holes filled."""
    return fill_holes(keep_largest_components(mask))
