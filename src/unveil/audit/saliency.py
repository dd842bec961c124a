"""How much of a Grad-CAM map (:mod:`unveil.explain.saliency`) falls inside the lungs."""

from __future__ import annotations

import numpy as np


def lung_saliency_fraction(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Per image: the share of the saliency mass inside the lung mask (nan for an all-zero map)."""
    total = maps.reshape(len(maps), -1).sum(1)
    inside = (maps * masks).reshape(len(maps), -1).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, inside / total, np.nan)

