"""Calibration: does a predicted probability of 0.8 mean COVID+ eight times in ten? ECE and Brier score.

- **ECE** (expected calibration error; Naeini, Cooper & Hauskrecht 2015, Guo et al. 2017): the images are put in
  ``BINS`` (10) equal-width bins of their predicted COVID+ probability, and
  ``ECE = sum_k (n_k / n) |fraction COVID+ in bin k - mean probability in bin k|`` (empty bins add nothing).
  Bin rule (:data:`BIN_RULE`): edges ``linspace(0, 1, bins + 1)``; a probability on an inner edge goes to the
  lower bin (bin k holds (k/B, (k+1)/B], the first bin also 0): exactly the bins of scikit-learn's
  ``calibration_curve(strategy="uniform")``, so that the reliability diagram and the ECE read the same bins.
- **Brier score** (Brier 1950): the mean squared difference between probability and label, 0 for a perfect
  and confident model, 0.25 for a constant 0.5; scikit-learn's ``brier_score_loss``.

Both come with a 95 % percentile interval from the same patient bootstrap as every other metric
(:func:`unveil.evaluation.bootstrap.patient_multiplicities`: with the same seed, the same resamples). Both are
defined on a test set of one class (how far its probabilities are from that class), unlike AUC.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from unveil.errors import UnveilError
from unveil.evaluation.bootstrap import patient_multiplicities, percentile_interval
from unveil.evaluation.metrics import _patient_codes, _validate_labels_scores

#: Number of equal-width probability bins of the ECE and of the reliability diagram.
BINS = 10
#: How the tables, figures and report state the binning.
BIN_RULE = ("equal-width bins of the predicted probability on [0, 1]; a probability on an inner edge goes to the "
            "lower bin (scikit-learn's calibration_curve, strategy 'uniform')")


class CalibrationError(UnveilError, ValueError):
    """Labels, scores, patients or the number of bins cannot be used for calibration (the message says which)."""


def _checked(labels: ArrayLike, scores: ArrayLike, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels (0/1 ints) and scores (floats in [0, 1]), validated as the metrics validate them; ``bins`` >= 1."""
    if isinstance(bins, bool) or int(bins) != bins or bins < 1:
        raise CalibrationError(f"bins must be a positive integer; got {bins!r}")
    try:
        return _validate_labels_scores(labels, scores)
    except ValueError as error:
        raise CalibrationError(f"calibration: {error}") from None


def bin_indices(scores: ArrayLike, bins: int = BINS) -> np.ndarray:
    """Bin (0..bins-1) of each probability, by :data:`BIN_RULE`."""
    edges = np.linspace(0.0, 1.0, int(bins) + 1)
    return np.searchsorted(edges[1:-1], np.asarray(scores, dtype=np.float64))


def reliability_table(labels: ArrayLike, scores: ArrayLike, bins: int = BINS) -> pd.DataFrame:
    """One row per bin: ``low``, ``high`` (edges), ``images``, ``mean_probability`` and ``fraction_positive``
    (nan in an empty bin): the points of the reliability diagram."""
    y, s = _checked(labels, scores, bins)
    index = bin_indices(s, bins)
    count = np.bincount(index, minlength=bins).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_p = np.bincount(index, weights=s, minlength=bins) / count
        fraction = np.bincount(index, weights=y, minlength=bins) / count
    edges = np.linspace(0.0, 1.0, int(bins) + 1)
    return pd.DataFrame({"bin": np.arange(bins), "low": edges[:-1], "high": edges[1:], "images": count.astype(int),
                         "mean_probability": mean_p, "fraction_positive": fraction})


def expected_calibration_error(labels: ArrayLike, scores: ArrayLike, bins: int = BINS) -> float:
    """ECE over ``bins`` equal-width bins: sum over bins of (images in bin / images) x |fraction COVID+ - mean
    probability|."""
    table = reliability_table(labels, scores, bins)
    used = table[table["images"] > 0]
    gaps = (used["fraction_positive"] - used["mean_probability"]).abs()
    return float((used["images"] * gaps).sum() / used["images"].sum())


def brier_score(labels: ArrayLike, scores: ArrayLike) -> float:
    """Mean squared difference between the COVID+ probability and the label (0 best; 0.25: always 0.5)."""
    y, s = _checked(labels, scores, BINS)
    return float(np.mean((s - y) ** 2))


@dataclass(frozen=True)
class Calibration:
    """ECE and Brier score with their patient-bootstrap percentile intervals, the bins and a note."""

    ece: float
    ece_low: float
    ece_high: float
    brier: float
    brier_low: float
    brier_high: float
    bins: int
    resamples: int
    note: str | None = None

    def as_row(self) -> dict[str, object]:
        """Columns of a results row: ``ece``, ``ece_low``, ``ece_high``, ``ece_bins``, ``brier``, ``brier_low``,
        ``brier_high``, ``calibration_note``."""
        return {"ece": self.ece, "ece_low": self.ece_low, "ece_high": self.ece_high, "ece_bins": self.bins,
                "brier": self.brier, "brier_low": self.brier_low, "brier_high": self.brier_high,
                "calibration_note": self.note}


def weighted_calibration(labels: np.ndarray, scores: np.ndarray, weights: np.ndarray,
                         bins: int = BINS) -> tuple[np.ndarray, np.ndarray]:
    """ECE and Brier score under each row of ``weights`` (resamples x images) at once: per bin, the weighted
    sums of labels and of probabilities (two matrix products), so 2000 resamples cost one pass."""
    onehot = np.zeros((len(scores), bins))
    onehot[np.arange(len(scores)), bin_indices(scores, bins)] = 1.0
    total = weights.sum(axis=1)
    gaps = np.abs(weights @ (onehot * labels[:, None]) - weights @ (onehot * scores[:, None])).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return gaps / total, weights @ ((scores - labels) ** 2) / total


def calibration(labels: ArrayLike, scores: ArrayLike, patients: ArrayLike, *, bins: int = BINS,
                resamples: int = 2000, confidence: float = 0.95, seed: int = 0) -> Calibration:
    """ECE (``bins`` equal-width bins) and Brier score of ``scores`` against ``labels``, each with a 95 %
    patient-bootstrap percentile interval (``patients``: each image's patient id; patients are drawn)."""
    y, s = _checked(labels, scores, bins)
    if not 0 < confidence < 1 or int(resamples) != resamples or resamples < 0:
        raise CalibrationError(f"need 0 < confidence < 1 and resamples >= 0; got {confidence}, {resamples}")
    try:
        codes = _patient_codes(patients, len(y))
    except ValueError as error:
        raise CalibrationError(f"calibration: {error}") from None
    ece, brier = expected_calibration_error(y, s, bins), brier_score(y, s)
    rng = np.random.default_rng(seed)
    draws = [weighted_calibration(y, s, m[:, codes], bins)
             for m in patient_multiplicities(int(codes.max()) + 1, int(resamples), rng, images=len(y))]
    alpha = (1 - confidence) / 2
    if draws:
        ece_draws, brier_draws = (np.concatenate(parts) for parts in zip(*draws, strict=True))
    else:
        ece_draws = brier_draws = np.empty(0)
    ece_interval = percentile_interval(ece_draws, alpha, int(resamples))
    brier_interval = percentile_interval(brier_draws, alpha, int(resamples))
    note = ece_interval.note if ece_interval.note else None
    return Calibration(ece, ece_interval.low, ece_interval.high, brier, brier_interval.low, brier_interval.high,
                       int(bins), int(resamples), note)


def calibration_summary(value: Calibration) -> str:
    """``ECE 0.081 [0.052, 0.120] (10 bins), Brier 0.162 [0.131, 0.198]``: one line for a terminal or a table."""
    def shown(point: float, low: float, high: float) -> str:
        bounds = "" if math.isnan(low) else f" [{low:.3f}, {high:.3f}]"
        return f"{point:.3f}{bounds}"
    return (f"ECE {shown(value.ece, value.ece_low, value.ece_high)} ({value.bins} bins), "
            f"Brier {shown(value.brier, value.brier_low, value.brier_high)}")
