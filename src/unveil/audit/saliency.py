"""How much of a Grad-CAM map (:mod:`unveil.explain.saliency`) falls inside the lungs, and the patient-bootstrap
mean the audit reports such per-image figures with."""

from __future__ import annotations

import math

import numpy as np


def lung_saliency_fraction(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Per image: the share of the saliency mass inside the lung mask (nan for an all-zero map)."""
    total = maps.reshape(len(maps), -1).sum(1)
    inside = (maps * masks).reshape(len(maps), -1).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, inside / total, np.nan)


def patient_bootstrap_mean(values: np.ndarray, groups: np.ndarray, *, resamples: int, seed: int,
                           confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean of per-image ``values`` with a percentile interval from resampling patients (nan ignored)."""
    keep = ~np.isnan(values)
    values, groups = values[keep], groups[keep]
    if not len(values):
        return math.nan, math.nan, math.nan
    codes, inverse = np.unique(groups, return_inverse=True)
    sums, counts = np.bincount(inverse, values, len(codes)), np.bincount(inverse, minlength=len(codes))
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(codes), size=(resamples, len(codes)))
    means = sums[draws].sum(1) / counts[draws].sum(1)
    alpha = (1 - confidence) / 2 * 100
    return float(values.mean()), float(np.percentile(means, alpha)), float(np.percentile(means, 100 - alpha))
