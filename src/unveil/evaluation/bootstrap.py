"""The patient-level (cluster) bootstrap behind every interval of :mod:`unveil.evaluation.metrics`.

Several images of one patient are not independent, so patients, not images, are drawn with
replacement; an image's weight in a resample is the number of times its patient was drawn. All
resamples are computed at once (per-patient confusion counts times a multiplicity matrix, and a
weighted ROC AUC over many weight vectors), and a percentile interval is taken over the resamples in
which a metric is defined.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

# Resamples per chunk are capped so that one chunk's image-weight matrix holds about this many values.
_CHUNK_VALUES = 2_000_000


@dataclass(frozen=True)
class Interval:
    """A percentile interval over the resamples where a metric is defined, and a note on what is missing."""

    low: float
    high: float
    note: str | None
    resamples: int
    defined_in: int  # resamples in which the metric is defined (inf counts as defined)

    @property
    def undefined_in_every_resample(self) -> bool:
        """True when there were resamples but the metric was undefined (nan) in all of them."""
        return self.resamples > 0 and self.defined_in == 0


def resample_patients(y: np.ndarray, s: np.ndarray, predicted: np.ndarray, codes: np.ndarray, n_patients: int,
                      resamples: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Confusion counts (resamples x 4: tp, fp, tn, fn) and ROC AUC (resamples) of each patient resample."""
    if resamples == 0:
        return np.empty((0, 4)), np.empty(0)
    # Per-patient confusion counts (P x 4): a resample's counts are multiplicities @ counts.
    cell = np.where(y == 1, np.where(predicted, 0, 3), np.where(predicted, 1, 2))  # tp, fp, tn, fn
    per_patient = np.zeros((n_patients, 4))
    np.add.at(per_patient, (codes, cell), 1.0)
    auc = WeightedAUC(y, s)
    counts, aucs = [], []
    for multiplicity in patient_multiplicities(n_patients, resamples, rng, images=len(y)):
        counts.append(multiplicity @ per_patient)
        aucs.append(auc(multiplicity[:, codes]))
    return np.concatenate(counts), np.concatenate(aucs)


def patient_multiplicities(n_patients: int, resamples: int, rng: np.random.Generator, *,
                           images: int = 0) -> Iterator[np.ndarray]:
    """Chunks (resamples x patients, float) of how many times each patient is drawn in each resample.

    The one draw behind every patient bootstrap (metrics, calibration, paired comparisons): patients are drawn
    with replacement, ``n_patients`` per resample; an image's weight is its patient's multiplicity
    (``chunk[:, codes]``). A chunk's image-weight matrix holds about ``_CHUNK_VALUES`` values (``images``: the
    number of images it will weigh)."""
    chunk = max(1, _CHUNK_VALUES // max(images, n_patients))
    for start in range(0, resamples, chunk):
        size = min(chunk, resamples - start)
        drawn = rng.integers(0, n_patients, size=(size, n_patients))
        # Multiplicity of each patient in each resample: one bincount over row-offset patient indices.
        offsets = drawn + (np.arange(size) * n_patients)[:, None]
        multiplicity = np.bincount(offsets.ravel(), minlength=size * n_patients).reshape(size, n_patients)
        yield multiplicity.astype(np.float64)


class WeightedAUC:
    """ROC AUC of fixed labels/scores under many weight vectors at once (rows of a weight matrix).

    AUC = sum over (positive i, negative j) of w_i w_j ([s_i > s_j] + [s_i == s_j] / 2), over W+ W-: the
    Mann-Whitney form, equal to the trapezoidal area sklearn's ``roc_auc_score(sample_weight=w)`` computes.
    Written by hand because sklearn takes one weight vector per call, ~1 ms each: 2000 calls would be
    seconds, while this does all resamples with one cumulative sum and two gathers."""

    def __init__(self, y: np.ndarray, s: np.ndarray):
        self.positive = np.flatnonzero(y == 1)
        negative = np.flatnonzero(y == 0)
        self.negative = negative[np.argsort(s[negative], kind="stable")]
        negative_scores = s[self.negative]
        positive_scores = s[self.positive]
        # Per positive: number of negatives scored below it, and below or equal to it.
        self.below = np.searchsorted(negative_scores, positive_scores, side="left")
        self.up_to = np.searchsorted(negative_scores, positive_scores, side="right")

    def __call__(self, weights: np.ndarray) -> np.ndarray:
        """AUC per row of ``weights`` (resamples x images); nan where a row weighs one class only."""
        cumulative = np.zeros((weights.shape[0], len(self.negative) + 1))
        np.cumsum(weights[:, self.negative], axis=1, out=cumulative[:, 1:])
        positive_weights = weights[:, self.positive]
        # Weighted negatives below each positive, plus half of the tied ones.
        beaten = 0.5 * (cumulative[:, self.below] + cumulative[:, self.up_to])
        numerator = np.einsum("ij,ij->i", positive_weights, beaten)
        with np.errstate(divide="ignore", invalid="ignore"):
            return numerator / (positive_weights.sum(axis=1) * cumulative[:, -1])


def percentile_interval(values: np.ndarray, alpha: float, resamples: int, *,
                        undefined_reason: str = "had it undefined") -> Interval:
    """Percentile interval over the resamples where the metric is defined (inf allowed), with a note saying
    why it is missing, partial (``undefined_reason``: what the other resamples had) or unbounded."""
    if resamples == 0:
        return Interval(math.nan, math.nan, "no interval: no bootstrap resamples", 0, 0)
    defined = values[~np.isnan(values)]
    if defined.size == 0:
        return Interval(math.nan, math.nan, f"no interval: undefined in all {resamples} resamples", resamples, 0)
    low, high = _percentiles_with_inf(defined, (100 * alpha, 100 * (1 - alpha)))
    notes = []
    if defined.size < resamples:
        notes.append(f"interval from {defined.size} of {resamples} resamples (the others {undefined_reason})")
    if math.isinf(high):
        infinite = int(np.isinf(defined).sum())
        notes.append(f"upper bound infinite: {infinite} of {defined.size} resamples had no false positives "
                     "or no false negatives")
    return Interval(low, high, "; ".join(notes) or None, resamples, int(defined.size))


def _percentiles_with_inf(values: np.ndarray, percents: tuple[float, ...]) -> list[float]:
    """np.percentile (linear), but with +inf values handled: interpolating towards inf gives inf.

    np.percentile computes a + (b - a) * t, which is nan for b = inf and t = 0; so inf is replaced by a
    finite stand-in above every finite value, and any result above the largest finite value is inf."""
    infinite = np.isposinf(values)
    if not infinite.any():
        return [float(v) for v in np.percentile(values, percents)]
    if infinite.all():
        return [math.inf for _ in percents]
    largest = float(values[~infinite].max())
    stand_in = np.where(infinite, min(2 * abs(largest) + 1, np.finfo(np.float64).max), values)
    return [math.inf if v > largest else float(v) for v in np.percentile(stand_in, percents)]
