"""Infection evidence: on COVID+ images with an infection mask, does the saliency point at the disease?

Two measurements per image (COVID-QU-Ex publishes a COVID-19 infection mask per image):

* **mass ratio**: the share of the Grad-CAM mass inside the infected region divided by the region's share of
  the image (1 = what a uniform map gives; above 1: the saliency concentrates on the infection);
* **pointing game** (Zhang et al., 2016, "Top-down neural attention by excitation backprop"): a hit when the
  saliency's maximum lies inside the infected region; the chance rate is the region's share of the image.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from PIL import Image

from unveil.audit.bootstrap import patient_bootstrap_mean
from unveil.audit.verdict import Verdict
from unveil.evaluation.proportions import patient_wilson_interval

#: the record column holding the infection mask (0 = background, > 127 = infected), as the COVID-QU-Ex loader
#: writes it
COLUMN = "infection_mask_path"


def load_infection_masks(paths: pd.Series, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Masks at ``size`` x ``size`` (nearest neighbour, the way lung masks follow the image) and a bool per
    path saying whether it held a mask; a missing path gives an all-False mask."""
    masks, present = [], []
    for path in paths:
        if path is None or pd.isna(path) or not str(path):
            masks.append(np.zeros((size, size), dtype=bool))
            present.append(False)
            continue
        with Image.open(path) as stored:
            masks.append(np.asarray(stored.convert("L").resize((size, size), Image.Resampling.NEAREST)) > 127)
        present.append(True)
    if not masks:
        return np.zeros((0, size, size), dtype=bool), np.zeros(0, dtype=bool)
    return np.stack(masks), np.asarray(present)


def infection_mass_ratio(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Per image: (saliency mass inside the mask / total mass) / (mask area / image area); nan for an empty
    mask or an all-zero map."""
    flat_maps, flat_masks = maps.reshape(len(maps), -1), masks.reshape(len(masks), -1)
    total = flat_maps.sum(1)
    inside = (flat_maps * flat_masks).sum(1)
    area = flat_masks.mean(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((total > 0) & (area > 0), inside / total / area, np.nan)


def pointing_hits(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Per image: 1.0 when the saliency maximum lies inside the mask, 0.0 when not, nan for an empty mask or
    a flat map (no maximum to point with)."""
    flat_maps, flat_masks = maps.reshape(len(maps), -1), masks.reshape(len(masks), -1)
    peak = flat_maps.argmax(1)
    hit = flat_masks[np.arange(len(flat_masks)), peak].astype(float)
    flat = flat_maps.max(1) <= flat_maps.min(1)
    return np.where(flat_masks.any(1) & ~flat, hit, np.nan)


def hit_rate_interval(hits: np.ndarray, groups: np.ndarray) -> tuple[float, float, float]:
    """The pointing game's hit rate with a patient-aware Wilson interval (a proportion: a patient bootstrap gives
    [0, 0] at 0 hits); images without a defined hit (nan) are left out."""
    defined = ~np.isnan(hits)
    if not defined.any():
        return math.nan, math.nan, math.nan
    table = pd.DataFrame({"group": groups[defined], "hit": hits[defined].astype(int)}).groupby("group")["hit"]
    interval = patient_wilson_interval(table.sum().to_numpy(), table.count().to_numpy())
    return float(hits[defined].mean()), interval.low, interval.high


def infection_verdicts(maps: np.ndarray, records: pd.DataFrame, is_positive: np.ndarray, groups: np.ndarray, *,
                       size: int, pointing_rule: float | None, seed: int, resamples: int) -> tuple[list, dict]:
    """Mass ratio and pointing game on the COVID+ images whose infection mask is not empty; nothing when the
    records carry no infection masks."""
    if COLUMN not in records or not records[COLUMN].notna().any():
        return [], {}
    chosen = np.flatnonzero((is_positive == 1) & records[COLUMN].notna().to_numpy())
    masks, _ = load_infection_masks(records[COLUMN].iloc[chosen], size)
    nonempty = masks.reshape(len(masks), -1).any(1)
    chosen, masks = chosen[nonempty], masks[nonempty]
    if not len(chosen):
        return [], {"infection_note": "no COVID+ image with a non-empty infection mask"}
    ratio = infection_mass_ratio(maps[chosen], masks)
    hits = pointing_hits(maps[chosen], masks)
    area = float(masks.reshape(len(masks), -1).mean(1).mean())
    ratio_mean, ratio_low, ratio_high = patient_bootstrap_mean(ratio, groups[chosen], resamples=resamples, seed=seed)
    hit_mean, hit_low, hit_high = hit_rate_interval(hits, groups[chosen])
    figures = {"images": int(len(chosen)), "area_fraction": area, "mass_ratio": ratio_mean,
               "mass_ratio_low": ratio_low, "mass_ratio_high": ratio_high, "pointing_hit_rate": hit_mean,
               "pointing_low": hit_low, "pointing_high": hit_high}
    flagged = None if pointing_rule is None else bool(hit_mean < pointing_rule)
    verdicts = [
        Verdict("infection saliency", f"Grad-CAM mass in the infection / its area ({len(chosen)} COVID+ images)",
                ratio_mean, ratio_low, ratio_high, "informative (no flag)", None,
                f"the infected region covers {area:.0%} of the image on average; "
                + ("the saliency concentrates there (more than a uniform map)" if ratio_mean > 1 else
                   "the saliency is not concentrated there (no more than a uniform map)"),
                measure="ratio (Grad-CAM share in infection / infection area share)"),
        Verdict("pointing game", f"saliency peak inside the infection ({len(chosen)} COVID+ images)", hit_mean,
                hit_low, hit_high, "informative (no flag unless infection_pointing is set)" if pointing_rule is None
                else f"hit rate < {pointing_rule:g} flags", flagged,
                f"the saliency maximum lies in the infected region on {hit_mean:.0%} of COVID+ images (chance: the "
                f"region's share, {area:.0%})", measure="hit rate (pointing game)")]
    return verdicts, figures
