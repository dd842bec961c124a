"""The one list of metrics: a :class:`MetricSpec` per metric, with its formula, what it needs and how it is shown.

Everything that names a metric derives from this registry: the computation of every metric and of its
bootstrap resamples and Wilson interval (:mod:`unveil.evaluation.metrics`), the n/a rules and their notes,
the tables' column labels, interval captions and the Haldane-Anscombe column (:mod:`unveil.evaluation.tables`),
the metrics the results store keeps (:mod:`unveil.evaluation.store`). Adding a metric is its spec here (its
formula over confusion counts) and its test in ``tests/test_metrics.py``; the tables and the store follow.

Conventions: COVID+ is the positive class; counts arrive as float64 arrays (one value per bootstrap
resample, or one for the point estimate) inside ``np.errstate(divide="ignore", invalid="ignore")``, so that
0/0 gives nan and x/0 gives inf, and a formula returns an array of the same shape.

>>> metric_spec("balanced_accuracy").label
'BA'
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

import numpy as np

from unveil.errors import UnveilError

NO_POSITIVES = "no COVID+ images"
NO_NEGATIVES = "no COVID- images"
CELL_NAMES = {"tp": "true positives", "fp": "false positives", "tn": "true negatives", "fn": "false negatives"}


class MetricSpecError(UnveilError, ValueError):
    """A metric is unknown, or a spec cannot be registered (the message names the metric)."""


class ConfusionCounts(Protocol):
    """The confusion counts a metric's note reads (``unveil.evaluation.metrics.Confusion``)."""

    @property
    def tp(self) -> int: ...

    @property
    def fp(self) -> int: ...

    @property
    def tn(self) -> int: ...

    @property
    def fn(self) -> int: ...

    @property
    def positives(self) -> int: ...

    @property
    def negatives(self) -> int: ...


class Needs(StrEnum):
    """The images without which a metric is undefined (nan, with a note; never a made-up number)."""

    IMAGES = "images"
    POSITIVES = "positives"
    NEGATIVES = "negatives"
    BOTH = "both"


class IntervalKind(StrEnum):
    """The 95 % interval the tables show for a metric: the patient bootstrap (percentile) or, for a
    proportion, the patient-aware Wilson interval (:mod:`unveil.evaluation.proportions`)."""

    BOOTSTRAP = "bootstrap"
    WILSON = "wilson"


Formula = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], np.ndarray]
#: (is COVID+, predicted COVID+) per image -> (counts as a success, counts as a trial) per image.
Trials = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]
Note = Callable[[float, ConfusionCounts], "str | None"]


@dataclass(frozen=True)
class MetricSpec:
    """One metric.

    ``key``: its column in result rows and its name in the store; ``label``: its column in the Markdown and
    LaTeX tables (escaped there); ``name``: in words, for captions. ``from_counts``: the formula over
    (tp, fp, tn, fn); None for the one metric of the scores themselves, ROC AUC (its resamples are the
    bootstrap's weighted AUC). ``paper``: one of the paper's seven metrics (every table shows it; the others
    are shown where the rows hold them). ``at_paper_threshold``: also reported at the paper's fixed 0.5
    (``key_at_0.5``). ``trials``: for a Wilson interval, which images count as successes and as trials.
    ``note``: why a value is nan, inf or zero beyond what ``needs`` says (the DOR's zero cells)."""

    key: str
    label: str
    name: str
    needs: Needs
    interval: IntervalKind
    from_counts: Formula | None
    paper: bool = True
    at_paper_threshold: bool = False
    higher_is_better: bool = True
    digits: int = 2
    resample_reason: str = "had it undefined"
    trials: Trials | None = None
    note: Note | None = None

    def point_note(self, value: float, confusion: ConfusionCounts) -> str | None:
        """Why the point estimate ``value`` is nan (or, by :attr:`note`, inf or zero); None when it is an
        ordinary number."""
        missing = NO_POSITIVES if confusion.positives == 0 else NO_NEGATIVES if confusion.negatives == 0 else None
        if self.needs is Needs.BOTH and missing:
            return f"undefined: {missing} (it needs COVID+ and COVID- images)"
        if self.note is not None:
            return self.note(value, confusion)
        if not math.isnan(value):
            return None
        reason = {Needs.POSITIVES: NO_POSITIVES, Needs.NEGATIVES: NO_NEGATIVES, Needs.IMAGES: "no images"}.get(
            self.needs, missing)
        return f"undefined: {reason}" if reason else "undefined"


_SPECS: dict[str, MetricSpec] = {}


def register_metric(spec: MetricSpec, *, replace: bool = False) -> MetricSpec:
    """Add ``spec`` after the metrics already registered (the order of result columns and table columns); a
    second spec of one key is refused unless ``replace``."""
    if not spec.key.isidentifier() or spec.key.endswith(("_low", "_high", "_note")):
        raise MetricSpecError(f"a metric key is an identifier without a column suffix; got {spec.key!r}")
    if spec.key in _SPECS and not replace:
        raise MetricSpecError(f"metric {spec.key!r} is registered already")
    if spec.interval is IntervalKind.WILSON and spec.trials is None:
        raise MetricSpecError(f"metric {spec.key!r}: a Wilson interval needs its trials (successes of what)")
    if spec.from_counts is None and (spec.key != "roc_auc" or spec.at_paper_threshold or spec.trials):
        raise MetricSpecError(f"metric {spec.key!r} needs a formula over the confusion counts (ROC AUC is the one "
                              "metric of the scores: the bootstrap resamples it as a weighted AUC)")
    _SPECS[spec.key] = spec
    return spec


def unregister_metric(key: str) -> None:
    """Remove a metric (tests register fakes and take them out again)."""
    _SPECS.pop(key, None)


def metric_specs() -> tuple[MetricSpec, ...]:
    """Every registered metric, in registration order."""
    return tuple(_SPECS.values())


def metric_spec(key: str) -> MetricSpec:
    """The spec of ``key``; a :class:`MetricSpecError` naming the known metrics otherwise."""
    try:
        return _SPECS[key]
    except KeyError:
        raise MetricSpecError(f"unknown metric {key!r}; metrics: {', '.join(_SPECS)}") from None


def reported() -> tuple[str, ...]:
    """Every metric an evaluation reports, in column order."""
    return tuple(_SPECS)


def paper_metrics() -> tuple[str, ...]:
    """The paper's metrics (every table shows them)."""
    return tuple(key for key, spec in _SPECS.items() if spec.paper)


def proportions() -> tuple[str, ...]:
    """The metrics with a patient-aware Wilson interval."""
    return tuple(key for key, spec in _SPECS.items() if spec.interval is IntervalKind.WILSON)


def at_paper_threshold() -> tuple[str, ...]:
    """The threshold metrics also reported at the paper's fixed 0.5."""
    return tuple(key for key, spec in _SPECS.items() if spec.at_paper_threshold)


def label_of(key: str) -> str:
    """The table label of metric ``key`` (the key itself for a column no spec knows)."""
    spec = _SPECS.get(key)
    return spec.label if spec is not None else key


# --- the shipped metrics ------------------------------------------------------------------------------------------


def _sensitivity(tp: np.ndarray, fp: np.ndarray, tn: np.ndarray, fn: np.ndarray) -> np.ndarray:
    return tp / (tp + fn)


def _specificity(tp: np.ndarray, fp: np.ndarray, tn: np.ndarray, fn: np.ndarray) -> np.ndarray:
    return tn / (tn + fp)


def _f1(tp: np.ndarray, fp: np.ndarray, tn: np.ndarray, fn: np.ndarray) -> np.ndarray:
    return np.where(tp + fn > 0, 2 * tp / (2 * tp + fp + fn), np.nan)


def _accuracy(tp: np.ndarray, fp: np.ndarray, tn: np.ndarray, fn: np.ndarray) -> np.ndarray:
    return (tp + tn) / (tp + fp + tn + fn)


def _balanced_accuracy(tp: np.ndarray, fp: np.ndarray, tn: np.ndarray, fn: np.ndarray) -> np.ndarray:
    return (_sensitivity(tp, fp, tn, fn) + _specificity(tp, fp, tn, fn)) / 2


def _both(tp: np.ndarray, fp: np.ndarray, tn: np.ndarray, fn: np.ndarray) -> np.ndarray:
    return (tp + fn > 0) & (tn + fp > 0)


def _dor(tp: np.ndarray, fp: np.ndarray, tn: np.ndarray, fn: np.ndarray) -> np.ndarray:
    """inf when fp*fn == 0 < tp*tn, nan when both products are 0 or a class is missing."""
    return np.where(_both(tp, fp, tn, fn), (tp * tn) / (fp * fn), np.nan)


def _dor_corrected(tp: np.ndarray, fp: np.ndarray, tn: np.ndarray, fn: np.ndarray) -> np.ndarray:
    """Haldane-Anscombe: 0.5 added to every cell; nan when a class is missing (no odds ratio to correct)."""
    return np.where(_both(tp, fp, tn, fn), ((tp + 0.5) * (tn + 0.5)) / ((fp + 0.5) * (fn + 0.5)), np.nan)


def _dor_note(value: float, confusion: ConfusionCounts) -> str | None:
    """Why the DOR is nan, infinite or zero (its zero cells), pointing to the corrected estimate."""
    corrected = "Haldane-Anscombe corrected estimate given as dor_corrected"
    zero = [cell for cell in ("tp", "fp", "tn", "fn") if getattr(confusion, cell) == 0]
    if math.isnan(value):
        return f"undefined: tp*tn and fp*fn are both zero (zero cells: {', '.join(zero)}); {corrected}"
    if math.isinf(value) or value == 0:
        kind, cells = ("infinite", ("fp", "fn")) if math.isinf(value) else ("zero", ("tp", "tn"))
        which = " and ".join(f"no {CELL_NAMES[cell]}" for cell in cells if cell in zero)
        return f"{kind}: {which} (cell zero); {corrected}"
    return None


for _spec in (
    MetricSpec("sensitivity", "Sensitivity", "sensitivity", Needs.POSITIVES, IntervalKind.WILSON, _sensitivity,
               at_paper_threshold=True, resample_reason="held no COVID+ images",
               trials=lambda positive, predicted: (positive & predicted, positive)),
    MetricSpec("specificity", "Specificity", "specificity", Needs.NEGATIVES, IntervalKind.WILSON, _specificity,
               at_paper_threshold=True, resample_reason="held no COVID- images",
               trials=lambda positive, predicted: (~positive & ~predicted, ~positive)),
    MetricSpec("f1", "F1", "F1 score", Needs.POSITIVES, IntervalKind.BOOTSTRAP, _f1, at_paper_threshold=True,
               resample_reason="held no COVID+ images"),
    MetricSpec("accuracy", "Accuracy", "accuracy", Needs.IMAGES, IntervalKind.WILSON, _accuracy,
               at_paper_threshold=True, resample_reason="were empty",
               trials=lambda positive, predicted: (positive == predicted, np.ones_like(positive))),
    MetricSpec("balanced_accuracy", "BA", "balanced accuracy", Needs.BOTH, IntervalKind.BOOTSTRAP,
               _balanced_accuracy, at_paper_threshold=True, resample_reason="held one class only"),
    MetricSpec("roc_auc", "AUC", "ROC AUC", Needs.BOTH, IntervalKind.BOOTSTRAP, None,
               resample_reason="held one class only"),
    MetricSpec("dor", "DOR", "diagnostic odds ratio", Needs.BOTH, IntervalKind.BOOTSTRAP, _dor,
               resample_reason="held one class only or had tp*tn = fp*fn = 0", note=_dor_note),
    MetricSpec("dor_corrected", "DOR (HA)", "Haldane-Anscombe corrected diagnostic odds ratio", Needs.BOTH,
               IntervalKind.BOOTSTRAP, _dor_corrected, paper=False, resample_reason="held one class only"),
):
    register_metric(_spec)
