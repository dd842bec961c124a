"""Cheap smooth random fields: low-resolution noise upsampled with bicubic interpolation.

A Gaussian-filtered full-resolution noise field costs ~10 ms at 512x512; drawing a few hundred
values and letting Pillow's resize interpolate them costs well under 1 ms, and is all a phantom's
texture (lung vessels, ground glass, grain) needs.
"""

from __future__ import annotations

import numpy as np
from PIL import Image


def upsample(values: np.ndarray, size: int) -> np.ndarray:
    """Bicubic upsampling of a small float array to ``size`` x ``size`` (float32)."""
    image = Image.fromarray(np.ascontiguousarray(values, dtype=np.float32), mode="F")
    return np.asarray(image.resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32)


def smooth_noise(rng: np.random.Generator, cells: int, size: int) -> np.ndarray:
    """Zero-mean, roughly unit-variance noise whose features are about ``size / cells`` pixels wide."""
    return upsample(rng.standard_normal((cells, cells), dtype=np.float32), size)


def smoothstep(edge0: float | np.ndarray, edge1: float | np.ndarray, x: np.ndarray) -> np.ndarray:
    """0 below ``edge0``, 1 above ``edge1``, a smooth cubic ramp between (soft region edges)."""
    t = np.subtract(x, edge0, dtype=np.float32)
    t /= np.subtract(edge1, edge0, dtype=np.float32)
    np.clip(t, 0.0, 1.0, out=t)
    return t * t * (3.0 - 2.0 * t)
