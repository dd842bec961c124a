"""Two models on the same test images: is one better, with an interval? (``unveil compare``)

"Pre-training helps" is a claim about a difference between two correlated numbers: both models scored the
same images, so their AUCs rise and fall together from one sample to the next, and comparing two separate
intervals (overlapping or not) throws that correlation away. Two answers, side by side:

- **DeLong's test** for two correlated ROC curves (DeLong, DeLong & Clarke-Pearson 1988), in the fast form
  of Sun & Xu (2014, IEEE SPL 21:1389): the structural components of each AUC from midranks, their covariance,
  ``z = (AUC_b - AUC_a) / sqrt(var)`` and a two-sided normal p-value. It takes images as independent.
- A **paired patient bootstrap**: patients are drawn with replacement once per resample, and both models'
  AUCs and balanced accuracies (each at its own threshold) are computed on that same resample; the percentile
  interval of the difference respects patients with several images.

Differences are always second minus first (``b - a``): positive means the second model is better.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy.stats import norm, rankdata

from unveil.errors import UnveilError
from unveil.evaluation.bootstrap import percentile_interval, resample_patients
from unveil.evaluation.metrics import _patient_codes, _validate_labels_scores


class ComparisonError(UnveilError, ValueError):
    """Two models cannot be compared as asked (the message names the models, test set or values)."""


def delong_components(labels: ArrayLike, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """AUCs (k), and the structural components V10 (k x positives) and V01 (k x negatives) of the ``k`` score
    rows of ``scores`` (k x images), by Sun & Xu's midrank algorithm: O(k N log N) instead of O(k m n).

    Hand-written: no maintained library in this environment has DeLong's test (scikit-learn and scipy do not;
    the PyPI packages that do are small single-author projects); midranks are scipy's ``rankdata``."""
    y = np.asarray(labels)
    positives, negatives = scores[:, y == 1], scores[:, y == 0]
    m, n = positives.shape[1], negatives.shape[1]
    tx = rankdata(positives, axis=1)  # midranks among the positives alone
    ty = rankdata(negatives, axis=1)  # among the negatives alone
    tz = rankdata(np.concatenate([positives, negatives], axis=1), axis=1)  # among all images
    aucs = (tz[:, :m].sum(axis=1) - m * (m + 1) / 2) / (m * n)
    v10 = (tz[:, :m] - tx) / n  # per positive: the share of negatives it beats (ties count half)
    v01 = 1.0 - (tz[:, m:] - ty) / m  # per negative: the share of positives that beat it
    return aucs, v10, v01


def delong_covariance(labels: ArrayLike, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUCs and their DeLong covariance matrix (k x k): ``cov(V10) / m + cov(V01) / n``."""
    aucs, v10, v01 = delong_components(labels, scores)
    m, n = v10.shape[1], v01.shape[1]
    covariance = np.atleast_2d(np.cov(v10)) / m + np.atleast_2d(np.cov(v01)) / n
    return aucs, covariance


@dataclass(frozen=True)
class DeLongResult:
    """DeLong's test of AUC_b - AUC_a: the two AUCs, their difference, its standard error, z and p."""

    auc_a: float
    auc_b: float
    difference: float
    standard_error: float
    z: float
    p: float


def delong_test(labels: ArrayLike, scores_a: ArrayLike, scores_b: ArrayLike) -> DeLongResult:
    """DeLong's two-sided test that two models' AUCs on the same images are equal. Identical scores (zero
    variance, zero difference) give p = 1; a nonzero difference with zero variance gives p = 0."""
    y, a = _validated(labels, scores_a)
    _, b = _validated(labels, scores_b)
    if y.min() == y.max():
        raise ComparisonError("DeLong's test needs COVID+ and COVID- images; the test set has one class only")
    if len(y) - y.sum() < 2 or y.sum() < 2:
        raise ComparisonError("DeLong's test needs at least two COVID+ and two COVID- images (a covariance)")
    aucs, covariance = delong_covariance(y, np.vstack([a, b]))
    contrast = np.array([-1.0, 1.0])
    variance = max(float(contrast @ covariance @ contrast), 0.0)
    difference = float(aucs[1] - aucs[0])
    if variance <= 1e-15:
        z, p = (0.0, 1.0) if abs(difference) < 1e-12 else (math.copysign(math.inf, difference), 0.0)
    else:
        z = difference / math.sqrt(variance)
        p = float(2 * norm.sf(abs(z)))
    return DeLongResult(float(aucs[0]), float(aucs[1]), difference, math.sqrt(variance), z, p)


@dataclass(frozen=True)
class PairedComparison:
    """Model b against model a on the same images: AUC and balanced-accuracy differences (b - a) with their
    paired patient-bootstrap intervals, and DeLong's test of the AUC difference."""

    images: int
    patients: int
    auc_a: float
    auc_b: float
    auc_difference: float
    auc_difference_low: float
    auc_difference_high: float
    delong_z: float
    delong_p: float
    balanced_accuracy_a: float
    balanced_accuracy_b: float
    balanced_accuracy_difference: float
    balanced_accuracy_difference_low: float
    balanced_accuracy_difference_high: float
    resamples: int
    note: str | None = None

    def as_row(self) -> dict[str, object]:
        """The fields as one table row."""
        return asdict(self)


def _validated(labels: ArrayLike, scores: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    try:
        return _validate_labels_scores(labels, scores)
    except ValueError as error:
        raise ComparisonError(f"paired comparison: {error}") from None


def _balanced_accuracy(counts: np.ndarray) -> np.ndarray:
    """Balanced accuracy of confusion counts (rows tp, fp, tn, fn); nan where a class is absent."""
    tp, fp, tn, fn = counts.T
    with np.errstate(divide="ignore", invalid="ignore"):
        return (tp / (tp + fn) + tn / (tn + fp)) / 2


def compare_scores(labels: ArrayLike, scores_a: ArrayLike, scores_b: ArrayLike, patients: ArrayLike, *,
                   threshold_a: float = 0.5, threshold_b: float = 0.5, resamples: int = 2000,
                   confidence: float = 0.95, seed: int = 0) -> PairedComparison:
    """Model b against model a scored on the same images (``labels``, ``patients``: one per image): DeLong's
    test and paired patient-bootstrap intervals of the AUC and balanced-accuracy differences (b - a), each
    model at its own threshold. Both models see exactly the same patient resamples (one seed, one draw)."""
    y, a = _validated(labels, scores_a)
    _, b = _validated(labels, scores_b)
    if len(a) != len(b):
        raise ComparisonError(f"the two models scored {len(a)} and {len(b)} images; a paired comparison needs the "
                              "same images")
    if int(resamples) != resamples or resamples < 0 or not 0 < confidence < 1:
        raise ComparisonError(f"need resamples >= 0 and 0 < confidence < 1; got {resamples}, {confidence}")
    try:
        codes = _patient_codes(patients, len(y))
    except ValueError as error:
        raise ComparisonError(f"paired comparison: {error}") from None
    delong = delong_test(y, a, b)
    n_patients, resamples = int(codes.max()) + 1, int(resamples)
    # The same seed twice: resample_patients draws the same patients for both models.
    counts_a, auc_a = resample_patients(y, a, a >= threshold_a, codes, n_patients, resamples,
                                        np.random.default_rng(seed))
    counts_b, auc_b = resample_patients(y, b, b >= threshold_b, codes, n_patients, resamples,
                                        np.random.default_rng(seed))
    alpha = (1 - confidence) / 2
    reason = "had one class only"
    auc_interval = percentile_interval(auc_b - auc_a, alpha, resamples, undefined_reason=reason)
    ba_interval = percentile_interval(_balanced_accuracy(counts_b) - _balanced_accuracy(counts_a), alpha, resamples,
                                      undefined_reason=reason)
    points = _balanced_accuracy(np.array([_counts(y, a >= threshold_a), _counts(y, b >= threshold_b)]))
    notes = [n for n in (auc_interval.note, ba_interval.note) if n]
    return PairedComparison(
        images=len(y), patients=n_patients, auc_a=delong.auc_a, auc_b=delong.auc_b,
        auc_difference=delong.difference, auc_difference_low=auc_interval.low,
        auc_difference_high=auc_interval.high, delong_z=delong.z, delong_p=delong.p,
        balanced_accuracy_a=float(points[0]), balanced_accuracy_b=float(points[1]),
        balanced_accuracy_difference=float(points[1] - points[0]),
        balanced_accuracy_difference_low=ba_interval.low, balanced_accuracy_difference_high=ba_interval.high,
        resamples=resamples, note="; ".join(dict.fromkeys(notes)) or None)


def _counts(y: np.ndarray, predicted: np.ndarray) -> list[int]:
    """tp, fp, tn, fn."""
    positive = y == 1
    return [int((positive & predicted).sum()), int((~positive & predicted).sum()),
            int((~positive & ~predicted).sum()), int((positive & ~predicted).sum())]


def verdict(row: pd.Series | dict, metric: str = "auc") -> str:
    """``better``, ``worse`` or ``no difference shown``: whether the paired-bootstrap interval of the
    difference (b - a) excludes 0."""
    low, high = float(row[f"{metric}_difference_low"]), float(row[f"{metric}_difference_high"])
    if math.isnan(low) or math.isnan(high):
        return "no interval"
    return "better" if low > 0 else "worse" if high < 0 else "no difference shown"


def comparison_line(row: pd.Series | dict, claim: str | None = None) -> str:
    """``pre-training helps on AB: AUC +0.07 [+0.01, +0.13], DeLong p=0.02; BA +0.05 [-0.02, +0.11] (...)``.
    ``claim``: what is said of the second model (default ``<b> vs <a>``), printed as such only when the AUC
    difference's interval lies above 0; otherwise ``<claim>: not shown`` (interval across 0, or none) or
    ``<claim>: contradicted`` (below 0); a claim ending in ``helps`` reads ``... hurts`` when below. A test set
    that could not be compared (``not_compared``) says why."""
    said = claim or f"{row['model_b']} vs {row['model_a']}"
    test = row.get("test_set_label", row["test_set"])
    reason = row.get("not_compared")
    if isinstance(reason, str) and reason:
        return f"{said} on {test}: not compared: {reason}"
    if claim is not None:
        hurts = f"{claim[:-len(' helps')]} hurts" if claim.endswith(" helps") else f"{claim}: contradicted"
        said = {"better": claim, "worse": hurts}.get(verdict(row), f"{claim}: not shown")

    def part(metric: str, label: str) -> str:
        value, low, high = (float(row[f"{metric}_difference{s}"]) for s in ("", "_low", "_high"))
        bounds = "" if math.isnan(low) else f" [{low:+.2f}, {high:+.2f}]"
        return f"{label} {value:+.2f}{bounds}"
    return (f"{said} on {test}: {part('auc', 'AUC')}, DeLong p={float(row['delong_p']):.2g}; "
            f"{part('balanced_accuracy', 'BA')} ({int(row['patients'])} patients, {int(row['images'])} images)")


#: Columns of predictions (``predictions.csv`` of ``unveil evaluate``) a paired comparison reads.
PREDICTION_COLUMNS = ("model", "test_set", "record_id", "source", "patient_id", "label", "probability", "threshold")


def _one(predictions: pd.DataFrame, model: str, test_set: str) -> pd.DataFrame:
    part = predictions[(predictions["model"].astype(str) == model) & (predictions["test_set"].astype(str) == test_set)]
    return part.drop_duplicates("record_id")


def compare_predictions(predictions: pd.DataFrame, model_a: str, model_b: str, *, test_sets: list[str] | None = None,
                        resamples: int = 2000, confidence: float = 0.95, seed: int = 0,
                        keep_going: bool = False) -> pd.DataFrame:
    """Model b against model a on every test set both were scored on (or ``test_sets``), on the images both
    scored (joined by ``record_id``): one row per test set, the :class:`PairedComparison` fields plus
    ``model_a``, ``model_b``, ``test_set`` and ``unpaired_images`` (scored by one model only, left out).
    ``keep_going``: a test set that cannot be compared (no image in common, one class only) is a row with its
    reason in ``not_compared`` and no figures, instead of an error that stops the other test sets."""
    missing = [c for c in PREDICTION_COLUMNS if c not in predictions.columns]
    if missing:
        raise ComparisonError(f"predictions lack column(s) {', '.join(missing)} (those of `unveil evaluate`'s "
                              "predictions.csv)")
    models = set(predictions["model"].astype(str))
    for model in (model_a, model_b):
        if model not in models:
            raise ComparisonError(f"no predictions of model {model!r}; models: {', '.join(sorted(models))}")
    sets = {m: list(dict.fromkeys(predictions.loc[predictions["model"].astype(str) == m, "test_set"].astype(str)))
            for m in (model_a, model_b)}
    common = [t for t in sets[model_a] if t in sets[model_b] and (test_sets is None or t in test_sets)]
    if not common:
        raise ComparisonError(f"models {model_a} and {model_b} share no test set (theirs: {', '.join(sets[model_a])}; "
                              f"{', '.join(sets[model_b])})")
    rows = []
    for test_set in common:
        try:
            rows.append(_compare_on(predictions, model_a, model_b, test_set, resamples, confidence, seed))
        except ComparisonError as error:
            if not keep_going:
                raise
            rows.append({"model_a": model_a, "model_b": model_b, "test_set": test_set, "not_compared": str(error)})
    return pd.DataFrame(rows)


def _compare_on(predictions: pd.DataFrame, model_a: str, model_b: str, test_set: str, resamples: int,
                confidence: float, seed: int) -> dict[str, Any]:
    """One row of :func:`compare_predictions`; a :class:`ComparisonError` naming the test set when it cannot be."""
    a, b = _one(predictions, model_a, test_set), _one(predictions, model_b, test_set)
    paired = a.merge(b[["record_id", "label", "probability", "threshold"]], on="record_id", suffixes=("", "_b"))
    if paired.empty:
        raise ComparisonError(f"{model_a} and {model_b} scored no image in common on test set {test_set} (their "
                              "test splits differ: a composition's split depends on each model's seed)")
    if (paired["label"] != paired["label_b"]).any():
        raise ComparisonError(f"{model_a} and {model_b} disagree on the labels of test set {test_set}")
    positives = int((paired["label"] == 1).sum())
    if positives < 2 or len(paired) - positives < 2:
        raise ComparisonError(f"test set {test_set}: the {len(paired)} image(s) both models scored hold "
                              f"{positives} COVID+ and {len(paired) - positives} COVID-; a paired comparison "
                              "needs two of each (a composition's test split depends on each model's seed)")
    result = compare_scores(paired["label"], paired["probability"], paired["probability_b"],
                            (paired["source"].astype(str) + "::" + paired["patient_id"].astype(str)).to_numpy(),
                            threshold_a=float(paired["threshold"].iloc[0]),
                            threshold_b=float(paired["threshold_b"].iloc[0]), resamples=resamples,
                            confidence=confidence, seed=seed)
    return {"model_a": model_a, "model_b": model_b, "test_set": test_set,
            "unpaired_images": len(a) + len(b) - 2 * len(paired), **result.as_row()}


def all_pairs(predictions: pd.DataFrame, *, resamples: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Every later model against every earlier one (in the order of ``predictions``) on their shared test sets:
    what ``unveil evaluate`` writes to ``comparisons.csv`` when given several models; empty with fewer than two."""
    models = list(dict.fromkeys(predictions["model"].astype(str))) if "model" in predictions else []
    tests = list(dict.fromkeys(predictions["test_set"].astype(str))) if "test_set" in predictions else []
    parts = []
    for index, first in enumerate(models):
        for second in models[index + 1:]:
            for test in tests:
                try:
                    parts.append(compare_predictions(predictions, first, second, test_sets=[test],
                                                     resamples=resamples, seed=seed))
                except ComparisonError:
                    continue  # not both scored on it, no image in common, or one class only: nothing to compare
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
