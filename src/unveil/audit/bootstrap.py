"""A per-image measurement's mean over the audited images, with an interval from resampling patients."""

from __future__ import annotations

import math

import numpy as np


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
