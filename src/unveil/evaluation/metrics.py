"""The paper's seven metrics at a decision threshold, with patient-level bootstrap intervals.

Tartaglione et al. (2020) report sensitivity, specificity, F1, accuracy, balanced accuracy, ROC AUC
and the diagnostic odds ratio (DOR) at threshold 0.5, without intervals. Here every metric comes with
a 95 % percentile interval from a *cluster* bootstrap over patients: several images of one patient
are not independent, so resampling images would give intervals that are too narrow. Sensitivity,
specificity and accuracy also get a patient-aware Wilson interval (:mod:`unveil.evaluation.proportions`:
Wilson on images / design effect), which, unlike the percentile bootstrap, does not collapse to [0, 0]
at 0/n or [1, 1] at n/n; the tables show it for those three metrics, the bootstrap for the others.

Conventions: COVID+ is the positive class (label 1); an image is predicted positive iff its score is
>= the threshold. Undefined values are ``nan``: sensitivity and F1 need COVID+ images, specificity
COVID- images, and balanced accuracy, ROC AUC, the DOR and its corrected form need both (a
continuity correction alone is no odds ratio). The DOR is ``inf`` when no false positives or no false
negatives occur, and its Haldane-Anscombe corrected form (0.5 added to every cell) is reported beside
it as ``dor_corrected``. Each value carries a note that says why it is nan/inf or why its interval is
partial.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy.stats import binomtest
from sklearn.metrics import roc_auc_score

from unveil.errors import UnveilError
from unveil.evaluation import metric_specs
from unveil.evaluation.bootstrap import (  # noqa: F401 - WeightedAUC, _percentiles_with_inf: re-exported for tests
    Interval,
    WeightedAUC,
    _percentiles_with_inf,
    percentile_interval,
    resample_patients,
)
from unveil.evaluation.proportions import patient_wilson_interval
from unveil.thresholds import (  # noqa: F401 - re-exported: the evaluation layer names them too
    PAPER_THRESHOLD,
    ThresholdChoice,
    ThresholdRule,
    choose_threshold,
    finite_number,
    fixed_threshold,
)

# The metrics themselves (formulas, n/a rules, labels) are specs of unveil.evaluation.metric_specs; these
# names list the shipped ones (code that must see metrics registered later asks metric_specs).
METRICS: tuple[str, ...] = metric_specs.paper_metrics()
PROPORTIONS: tuple[str, ...] = metric_specs.proportions()
REPORTED: tuple[str, ...] = metric_specs.reported()
#: Metrics that depend on the threshold, also reported at the paper's fixed 0.5 (columns ``m_at_0.5``).
AT_PAPER_THRESHOLD: tuple[str, ...] = metric_specs.at_paper_threshold()
AT_PAPER_SUFFIX = "_at_0.5"

# The threshold vocabulary lives in unveil.thresholds (training chooses with it too); re-exported here.
__all__ = ["AT_PAPER_SUFFIX", "AT_PAPER_THRESHOLD", "BOTH_CLASSES", "METRICS", "PAPER_THRESHOLD", "PROPORTIONS",
           "REPORTED",
           "Confusion", "Evaluation", "MetricOptionError", "MetricValue", "ThresholdChoice", "ThresholdRule",
           "choose_threshold", "dor_from_rates", "dor_haldane", "dor_range_from_rounded", "evaluate_scores",
           "fixed_threshold",
           "metrics_at_paper_threshold", "point_metrics", "wilson_interval"]

#: Metrics that need COVID+ and COVID- images: nan (never a continuity-corrected number) with one class.
BOTH_CLASSES: tuple[str, ...] = tuple(spec.key for spec in metric_specs.metric_specs()
                                      if spec.needs is metric_specs.Needs.BOTH)
_WeightedAUC = WeightedAUC  # the name tests and older callers use


class MetricOptionError(UnveilError, ValueError):
    """An evaluation option a user sets (``--resamples``, the confidence level) is out of range."""


@dataclass(frozen=True)
class Confusion:
    """Confusion counts at one threshold (positive = COVID+)."""

    tp: int
    fp: int
    tn: int
    fn: int

    @classmethod
    def from_scores(cls, labels: ArrayLike, scores: ArrayLike, threshold: float) -> Confusion:
        """Counts with an image predicted positive iff its score >= ``threshold``."""
        y, s = _validate_labels_scores(labels, scores)
        threshold = finite_number(threshold, "threshold")
        predicted = s >= threshold
        return cls(tp=int(np.sum(predicted & (y == 1))), fp=int(np.sum(predicted & (y == 0))),
                   tn=int(np.sum(~predicted & (y == 0))), fn=int(np.sum(~predicted & (y == 1))))

    @property
    def positives(self) -> int:
        return self.tp + self.fn

    @property
    def negatives(self) -> int:
        return self.tn + self.fp

    @property
    def total(self) -> int:
        return self.tp + self.fp + self.tn + self.fn


def _metrics_from_counts(tp, fp, tn, fn) -> dict[str, np.ndarray]:
    """Every metric of the counts (each registered spec's formula) from (arrays of) counts; 0/0 gives nan and
    x/0 gives inf, which is exactly the DOR convention (inf when fp*fn == 0 < tp*tn, nan when both products
    are 0)."""
    tp, fp, tn, fn = (np.asarray(c, dtype=np.float64) for c in (tp, fp, tn, fn))
    with np.errstate(divide="ignore", invalid="ignore"):
        return {spec.key: spec.from_counts(tp, fp, tn, fn) for spec in metric_specs.metric_specs()
                if spec.from_counts is not None}


def point_metrics(confusion: Confusion) -> dict[str, float]:
    """Every paper metric except ROC AUC (which needs the scores) as floats; undefined ones are nan."""
    values = _metrics_from_counts(confusion.tp, confusion.fp, confusion.tn, confusion.fn)
    return {name: float(values[name]) for name in metric_specs.paper_metrics() if name in values}


def dor_haldane(confusion: Confusion) -> float:
    """Haldane-Anscombe DOR: 0.5 added to every cell, so it is finite and > 0 even with zero cells; nan when
    COVID+ or COVID- images are missing (the correction alone would make up an odds ratio)."""
    return float(_metrics_from_counts(confusion.tp, confusion.fp, confusion.tn, confusion.fn)["dor_corrected"])


def dor_from_rates(sensitivity: float, specificity: float) -> float:
    """DOR from sensitivity and specificity, (se/(1-se)) / ((1-sp)/sp); inf/0/nan as for counts."""
    se, sp = _rate(sensitivity, "sensitivity"), _rate(specificity, "specificity")
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.float64(se * sp) / np.float64((1 - se) * (1 - sp)))


def dor_range_from_rounded(sensitivity: float, specificity: float, decimals: int = 2) -> tuple[float, float]:
    """The DOR values consistent with ``sensitivity`` and ``specificity`` printed to ``decimals`` places.

    Used to check published tables, where the DOR was computed from unrounded rates: the true rates lie
    within half a unit of the last printed place, and the DOR increases with both, so the extremes are
    at the low/low and high/high corners."""
    half = 0.5 * 10.0 ** -decimals
    se, sp = _rate(sensitivity, "sensitivity"), _rate(specificity, "specificity")
    low = dor_from_rates(max(se - half, 0.0), max(sp - half, 0.0))
    high = dor_from_rates(min(se + half, 1.0), min(sp + half, 1.0))
    return low, high


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (images taken as independent); (nan, nan) for n == 0.
    The evaluation uses the patient-aware form, :func:`unveil.evaluation.proportions.patient_wilson_interval`."""
    if n < 0 or not 0 <= successes <= max(n, 0):
        raise ValueError(f"need 0 <= successes <= n; got successes={successes}, n={n}")
    if n == 0:
        return math.nan, math.nan
    interval = binomtest(int(successes), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return float(interval.low), float(interval.high)


@dataclass(frozen=True)
class MetricValue:
    """One metric: point estimate, patient-bootstrap percentile interval (``low``, ``high``), for the
    proportions the patient-aware Wilson interval and the design effect it used, and a note saying why the
    value is nan/inf or why the interval is missing or partial."""

    name: str
    value: float
    low: float
    high: float
    wilson_low: float | None = None
    wilson_high: float | None = None
    note: str | None = None
    design_effect: float | None = None


@dataclass(frozen=True)
class Evaluation:
    """Metrics of one score set at one threshold, with the counts behind them."""

    threshold: float
    threshold_rule: ThresholdRule
    confusion: Confusion
    metrics: dict[str, MetricValue]
    images: int
    patients: int
    positive_images: int
    negative_images: int
    positive_patients: int
    negative_patients: int
    bootstrap: dict
    threshold_description: str = ""

    def as_row(self) -> dict[str, object]:
        """A flat dict (one table row): threshold, counts, confusion cells, and per metric m the columns
        m, m_low, m_high (patient bootstrap), for the proportions m_wilson_low/m_wilson_high (patient-aware
        Wilson) and m_design_effect, and m_note."""
        c = self.confusion
        row: dict[str, object] = {
            "threshold": self.threshold, "threshold_rule": self.threshold_rule.value,
            "threshold_description": self.threshold_description, "images": self.images,
            "patients": self.patients, "positive_images": self.positive_images,
            "negative_images": self.negative_images, "positive_patients": self.positive_patients,
            "negative_patients": self.negative_patients, "tp": c.tp, "fp": c.fp, "tn": c.tn, "fn": c.fn}
        for name, metric in self.metrics.items():
            row.update({name: metric.value, f"{name}_low": metric.low, f"{name}_high": metric.high})
            if metric_specs.metric_spec(name).interval is metric_specs.IntervalKind.WILSON:
                row.update({f"{name}_wilson_low": metric.wilson_low, f"{name}_wilson_high": metric.wilson_high,
                            f"{name}_design_effect": metric.design_effect})
            row[f"{name}_note"] = metric.note
        return row


def evaluate_scores(labels: ArrayLike, scores: ArrayLike, patients: ArrayLike, *,
                    threshold: float | ThresholdChoice = PAPER_THRESHOLD, resamples: int = 2000,
                    confidence: float = 0.95, seed: int = 0) -> Evaluation:
    """All metrics of ``scores`` against ``labels`` at ``threshold``, with patient-bootstrap intervals.

    ``threshold``: a :class:`ThresholdChoice` (its rule and description go into the result), or a number
    (taken as the fixed rule).

    ``patients`` gives each image's patient id: the bootstrap draws patients with replacement and an
    image's weight is the number of times its patient was drawn. A resample in which a metric is undefined
    (e.g. one class only) is left out of that metric's interval, and its note says how many remained."""
    y, s = _validate_labels_scores(labels, scores)
    codes = _patient_codes(patients, len(y))
    choice = threshold if isinstance(threshold, ThresholdChoice) else None
    threshold = finite_number(threshold.value if isinstance(threshold, ThresholdChoice) else threshold, "threshold")
    rule = choice.rule if choice else ThresholdRule.FIXED
    description = choice.description if choice else ThresholdRule.FIXED.describe(threshold)
    if not 0 < confidence < 1:
        raise MetricOptionError(f"confidence must lie in (0, 1); got {confidence}")
    if int(resamples) != resamples or resamples < 0:
        raise MetricOptionError(f"resamples must be a non-negative integer; got {resamples}")
    resamples = int(resamples)
    n_patients = int(codes.max()) + 1

    confusion = Confusion.from_scores(y, s, threshold)
    counted = _metrics_from_counts(confusion.tp, confusion.fp, confusion.tn, confusion.fn)
    points = {name: float(value) for name, value in counted.items()}
    both_classes = confusion.positives > 0 and confusion.negatives > 0
    points["roc_auc"] = float(roc_auc_score(y, s)) if both_classes else math.nan

    predicted = s >= threshold
    draws = _bootstrap(y, s, predicted, codes, n_patients, resamples, np.random.default_rng(seed))
    per_patient = _per_patient_counts(y, predicted, codes, n_patients)
    metrics = {name: _metric_value(name, points[name], draws[name], confusion, confidence, resamples,
                                   per_patient.get(name)) for name in metric_specs.reported()}

    return Evaluation(
        threshold=threshold, threshold_rule=rule, threshold_description=description, confusion=confusion,
        metrics=metrics,
        images=len(y), patients=n_patients, positive_images=confusion.positives,
        negative_images=confusion.negatives,
        # A patient with images of both classes counts in both (so the two may sum to more than `patients`).
        positive_patients=len(np.unique(codes[y == 1])), negative_patients=len(np.unique(codes[y == 0])),
        bootstrap={"resamples": resamples, "unit": "patient", "confidence": confidence, "seed": seed,
                   "method": "percentile"})


def _per_patient_counts(y: np.ndarray, predicted: np.ndarray, codes: np.ndarray,
                        n_patients: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per proportion, each patient's (successes, trials): found COVID+ of COVID+ images (sensitivity),
    cleared COVID- of COVID- images (specificity), right of all images (accuracy)."""
    def count(mask: np.ndarray) -> np.ndarray:
        return np.bincount(codes[mask], minlength=n_patients)
    positive, found = y == 1, {}
    for spec in metric_specs.metric_specs():
        if spec.trials is not None:
            successes, trials = spec.trials(positive, predicted)
            found[spec.key] = (count(successes), count(trials))
    return found


def _metric_value(name: str, point: float, draws: np.ndarray, confusion: Confusion, confidence: float,
                  resamples: int, per_patient: tuple[np.ndarray, np.ndarray] | None = None) -> MetricValue:
    """One metric's point value, bootstrap interval, patient-aware Wilson interval (proportions, from their
    per-patient successes and trials) and notes."""
    interval = percentile_interval(draws, (1 - confidence) / 2, resamples,
                                   undefined_reason=metric_specs.metric_spec(name).resample_reason)
    wilson = patient_wilson_interval(*per_patient, confidence) if per_patient is not None else None
    # Undefined at the point and in every resample: the point note already says why.
    interval_note = None if math.isnan(point) and interval.undefined_in_every_resample else interval.note
    notes = [note for note in (metric_specs.metric_spec(name).point_note(point, confusion), interval_note) if note]
    return MetricValue(name=name, value=point, low=interval.low, high=interval.high,
                       wilson_low=wilson.low if wilson else None, wilson_high=wilson.high if wilson else None,
                       note="; ".join(notes) or None, design_effect=wilson.design_effect if wilson else None)


def metrics_at_paper_threshold(labels: ArrayLike, scores: ArrayLike) -> dict[str, float]:
    """The threshold-dependent metrics at the paper's fixed 0.5 (point values, columns ``m_at_0.5``), shown
    beside a chosen threshold so that the two readings can be compared."""
    c = Confusion.from_scores(labels, scores, PAPER_THRESHOLD)
    values = _metrics_from_counts(c.tp, c.fp, c.tn, c.fn)
    return {f"{name}{AT_PAPER_SUFFIX}": float(values[name]) for name in metric_specs.at_paper_threshold()}


# --- bootstrap (the resampling itself lives in unveil.evaluation.bootstrap) --------------------------------------


def _bootstrap(y: np.ndarray, s: np.ndarray, predicted: np.ndarray, codes: np.ndarray, n_patients: int,
               resamples: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Every reported metric in each of ``resamples`` patient-bootstrap resamples (arrays of length resamples)."""
    if resamples == 0:
        return {name: np.empty(0) for name in metric_specs.reported()}
    counts, aucs = resample_patients(y, s, predicted, codes, n_patients, resamples, rng)
    values = _metrics_from_counts(*counts.T)
    values["roc_auc"] = aucs
    return values


# --- validation ------------------------------------------------------------------------------------------------


def _validate_labels_scores(labels: ArrayLike, scores: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Labels as an int array of 0/1 and scores as a float array in [0, 1], equal lengths, at least one."""
    y, s = np.asarray(labels), np.asarray(scores)
    if y.ndim != 1 or s.ndim != 1:
        raise ValueError(f"labels and scores must be one-dimensional; got shapes {y.shape} and {s.shape}")
    if len(y) != len(s):
        raise ValueError(f"labels and scores differ in length: {len(y)} labels, {len(s)} scores")
    if len(y) == 0:
        raise ValueError("no images: labels and scores are empty")
    if y.dtype == object or y.dtype.kind not in "biuf":
        original = np.asarray(labels, dtype=object).tolist()
        bad = sorted({repr(v) for v in original if not (isinstance(v, (int, float, np.number)) and v in (0, 1))})
        if bad:
            raise ValueError(f"labels must be 0 or 1; got {', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}")
        y = y.astype(np.float64)
    bad_mask = ~np.isin(y, (0, 1))
    if bad_mask.any():
        bad = [repr(v) for v in np.unique(y[bad_mask]).tolist()]
        raise ValueError(f"labels must be 0 or 1; got {', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}")
    try:
        s = s.astype(np.float64)
    except (TypeError, ValueError):
        raise ValueError("scores must be numbers") from None
    if not np.all(np.isfinite(s)) or s.min() < 0 or s.max() > 1:
        bad = s[~np.isfinite(s) | (s < 0) | (s > 1)]
        raise ValueError(f"scores must be finite and in [0, 1]; got {bad[:5].tolist()}")
    return y.astype(np.int64), s


def _patient_codes(patients: ArrayLike, n: int) -> np.ndarray:
    """Patient ids as codes 0..P-1 (one per image)."""
    ids = np.asarray(patients, dtype=object)
    if ids.ndim != 1 or len(ids) != n:
        raise ValueError(f"patients must give one id per image: {n} images, {ids.size} patient ids")
    codes, _ = pd.factorize(ids)
    if (codes < 0).any():
        raise ValueError(f"{int((codes < 0).sum())} image(s) have a missing patient id")
    return codes


def _rate(value: float, what: str) -> float:
    value = float(value)
    if not 0 <= value <= 1:
        raise ValueError(f"{what} must lie in [0, 1]; got {value}")
    return value
