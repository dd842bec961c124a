"""Linear probes on encoder features: can a linear model tell the source dataset (or the label)?

Within one class (e.g. COVID- images from A and from B) the label is fixed, so a probe that still
tells the sources apart reads the dataset from the features. Probes are cross-validated with
patients kept within one fold (StratifiedGroupKFold), and their out-of-fold predictions get the
same patient-bootstrap intervals as the models' own metrics.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from unveil.audit.protocol import InsufficientData
from unveil.evaluation.metrics import Evaluation, evaluate_scores, fixed_threshold


@dataclass
class ProbeResult:
    """Out-of-fold performance of a linear probe separating ``negative`` (0) from ``positive`` (1)."""

    name: str
    negative: str
    positive: str
    counts: dict[str, int]
    folds: int
    evaluation: Evaluation
    out_of_fold: np.ndarray

    @property
    def majority_rate(self) -> float:
        """Accuracy of always guessing the larger group: the chance level of the plain accuracy."""
        return max(self.counts.values()) / sum(self.counts.values())

    def figures(self) -> dict[str, object]:
        metrics = self.evaluation.metrics
        out: dict[str, object] = {"name": self.name, "negative": self.negative, "positive": self.positive,
                                  "counts": self.counts, "folds": self.folds, "patients": self.evaluation.patients,
                                  "majority_rate": self.majority_rate}
        for key in ("accuracy", "balanced_accuracy", "roc_auc"):
            out[key] = {"value": metrics[key].value, "low": metrics[key].low, "high": metrics[key].high,
                        "note": metrics[key].note}
        return out


def linear_probe(features: np.ndarray, target: np.ndarray, groups: np.ndarray, *, name: str, negative: str,
                 positive: str, seed: int = 0, folds: int = 5, resamples: int = 1000,
                 regularization: float = 0.1) -> ProbeResult:
    """Cross-validated logistic regression (standardized features, class-balanced weights).

    ``target`` is 0/1; ``groups`` are patient keys (a patient's images never straddle folds).
    """
    def make_model():
        return make_pipeline(StandardScaler(), LogisticRegression(C=regularization, class_weight="balanced",
                                                                  max_iter=5000))

    return cross_validated_probe(features, target, groups, make_model, name=name, negative=negative,
                                 positive=positive, seed=seed, folds=folds, resamples=resamples)


def cross_validated_probe(features: np.ndarray, target: np.ndarray, groups: np.ndarray,
                          make_model: Callable[[], Any], *, name: str, negative: str, positive: str, seed: int = 0,
                          folds: int = 5, resamples: int = 1000) -> ProbeResult:
    """Out-of-fold probabilities of a fresh ``make_model()`` per fold (a class-balanced scikit-learn classifier:
    its decision is the fixed 0.5), folds by StratifiedGroupKFold on the patient keys ``groups``, and their
    patient-bootstrap evaluation. Raises :class:`InsufficientData` when a side has images of fewer than 2 patients."""
    target = np.asarray(target).astype(int)
    groups = np.asarray(groups)
    per_class_patients = min(len(np.unique(groups[target == value])) for value in (0, 1))
    folds = min(folds, per_class_patients)
    if folds < 2:
        raise InsufficientData(f"probe {name}: each side needs images of at least 2 patients "
                         f"({negative}: {int((target == 0).sum())} images, {positive}: {int((target == 1).sum())})")
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    out_of_fold = np.zeros(len(target))
    for train_index, test_index in splitter.split(features, target, groups):
        probe = make_model()
        probe.fit(features[train_index], target[train_index])
        out_of_fold[test_index] = probe.predict_proba(features[test_index])[:, 1]
    evaluation = evaluate_scores(target, out_of_fold, groups, resamples=resamples, seed=seed,
                                 threshold=replace(fixed_threshold(), description="probe at fixed 0.5"))
    counts = {negative: int((target == 0).sum()), positive: int((target == 1).sum())}
    return ProbeResult(name, negative, positive, counts, folds, evaluation, out_of_fold)
