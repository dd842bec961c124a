"""Decision thresholds: one vocabulary of rules and the pure function that applies them.

A COVID classifier outputs ``probability`` (of COVID+); its ``decision`` is ``covid+`` iff
``probability >= threshold``. The threshold is chosen *a priori*, on the model's own validation
predictions, never on a test set. Rules:

- ``youden`` (the default at training time): the threshold maximizing sensitivity + specificity - 1
  on validation. Focal loss keeps probabilities near 0.5, so a fixed 0.5 can make every decision
  one-sided (balanced accuracy 0.5 beside a good AUC); Youden's point does not depend on calibration.
- ``fixed``: a given value (the paper's 0.5; ``paper.yaml`` uses it).
- ``sensitivity``: the highest threshold whose validation sensitivity reaches a target.
- ``bundle`` (evaluation and prediction only): the threshold recorded in the model bundle.

This module sits below training and evaluation so that both use the same rules (training chooses
the bundle's threshold with it; evaluation and ``unveil predict`` re-choose with it on request). What a
user asks for travels as one :class:`ThresholdRequest` (rule, fixed value, target sensitivity); what a
rule chose as a :class:`ThresholdChoice`. Adding a rule: its member of :class:`ThresholdRule`, its help in
``_RULE_HELP`` and its branch in :func:`choose_threshold`, here, and its test in ``tests/test_metrics.py``
(the ``--threshold-rule`` help and every accepted value follow).

>>> choose_threshold([0, 0, 1, 1], [0.40, 0.45, 0.47, 0.49], ThresholdRule.YOUDEN).value
0.47
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from unveil.errors import UnveilError, finite


class ThresholdError(UnveilError, ValueError):
    """A threshold rule or parameter a user gave cannot apply (unknown rule, value outside [0, 1], one class)."""


class ThresholdRule(StrEnum):
    """How a decision threshold is chosen (the one vocabulary of CLI options, configs, rows and bundles)."""

    FIXED = "fixed"
    YOUDEN = "youden"
    SENSITIVITY = "sensitivity"
    BUNDLE = "bundle"

    def describe(self, value: float | None = None) -> str:
        """How a threshold was chosen, in words starting with the rule's name (``fixed 0.5``, ``youden on
        validation``); the data-driven rules append their figures (see :func:`choose_threshold`)."""
        if self is ThresholdRule.FIXED:
            return f"{self.value} {value:g}" if value is not None else self.value
        if self is ThresholdRule.BUNDLE:
            return "the threshold recorded in the model bundle"
        return f"{self.value} on validation"

    @classmethod
    def parse(cls, value: ThresholdRule | str, *, allow_bundle: bool = True) -> ThresholdRule:
        """``value`` as a rule; a :class:`ThresholdError` naming the accepted rules otherwise."""
        allowed = [rule for rule in cls if allow_bundle or rule is not cls.BUNDLE]
        try:
            rule = cls(str(value.value if isinstance(value, cls) else value).strip().lower())
        except ValueError:
            rule = None
        if rule is None or rule not in allowed:
            raise ThresholdError(f"unknown threshold rule {value!r}; "
                                 f"choose one of {', '.join(r.value for r in allowed)}")
        return rule

    @property
    def help(self) -> str:
        """What the rule does, in a few words (the ``--threshold-rule`` help)."""
        return _RULE_HELP[self]


_RULE_HELP = {
    ThresholdRule.FIXED: "--threshold, default 0.5",
    ThresholdRule.YOUDEN: "maximizing sensitivity + specificity - 1 on the model's validation predictions",
    ThresholdRule.SENSITIVITY: "the highest reaching --target-sensitivity on the model's validation predictions",
    ThresholdRule.BUNDLE: "the threshold chosen at training time, recorded in the bundle",
}


def rules_help(*, allow_bundle: bool = True) -> str:
    """``fixed (...), youden (...), sensitivity (...) or bundle (...).``: every rule with its help, for the
    command line (``allow_bundle``: with the rule that defers to a bundle)."""
    rules = [rule for rule in ThresholdRule if allow_bundle or rule is not ThresholdRule.BUNDLE]
    parts = [f"{rule.value} ({rule.help})" for rule in rules]
    return (", ".join(parts[:-1]) + f" or {parts[-1]}" if len(parts) > 1 else parts[0]) + "."


#: The paper's threshold, reported beside any other so that the two can be compared.
PAPER_THRESHOLD = 0.5


@dataclass(frozen=True)
class ThresholdChoice:
    """A chosen threshold, the rule that chose it, its parameter and a sentence saying how."""

    value: float
    rule: ThresholdRule
    description: str
    chosen_on: str = "validation"
    parameter: float | None = None  # the fixed value, or the target sensitivity

    def as_dict(self) -> dict[str, Any]:
        """The bundle.json record."""
        return {"value": float(self.value), "rule": self.rule.value, "description": self.description,
                "chosen_on": self.chosen_on, "parameter": self.parameter}

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> ThresholdChoice:
        """Read a bundle.json record; bundles written before rules were typed hold e.g. ``"fixed 0.5"``."""
        text = str(record.get("rule", "fixed"))
        rule = ThresholdRule.parse(text.split()[0] if text.split() else "fixed", allow_bundle=False)
        return cls(float(record["value"]), rule, str(record.get("description") or text),
                   str(record.get("chosen_on") or ("fixed" if rule is ThresholdRule.FIXED else "validation")),
                   record.get("parameter"))


@dataclass(frozen=True)
class ThresholdRequest:
    """A threshold asked for: the rule, the value of the fixed rule and the target of the sensitivity rule
    (each used, and checked when the request is made, only by its rule). ``choose`` applies it to validation
    predictions; ``bundle`` is resolved by the model bundle (``ModelBundle.resolve_threshold``).

    >>> ThresholdRequest("fixed", 0.3).choose([0, 1], [0.2, 0.4]).value
    0.3
    """

    rule: ThresholdRule = ThresholdRule.BUNDLE
    value: float = PAPER_THRESHOLD
    target_sensitivity: float = 0.9

    def __post_init__(self) -> None:
        rule = ThresholdRule.parse(self.rule)
        object.__setattr__(self, "rule", rule)
        if rule is ThresholdRule.FIXED:
            fixed_threshold(self.value)
        if rule is ThresholdRule.SENSITIVITY:
            target = finite_number(self.target_sensitivity, "target sensitivity")
            if not 0 < target <= 1:
                raise ThresholdError(f"target sensitivity must lie in (0, 1]; got {target}")

    @classmethod
    def of(cls, request: ThresholdRequest | ThresholdRule | str) -> ThresholdRequest:
        """``request`` itself, or a rule's request with the default value and target."""
        return request if isinstance(request, ThresholdRequest) else cls(ThresholdRule.parse(request))

    def choose(self, labels: ArrayLike, probabilities: ArrayLike) -> ThresholdChoice:
        """The threshold this request's rule chooses on validation ``labels`` and ``probabilities``."""
        return choose_threshold(labels, probabilities, self.rule, value=self.value,
                                target_sensitivity=self.target_sensitivity)

    def as_dict(self) -> dict[str, Any]:
        """The request as run metadata records it (``threshold_rule``, ``threshold``, ``target_sensitivity``)."""
        return {"threshold_rule": self.rule.value, "threshold": self.value,
                "target_sensitivity": self.target_sensitivity}


def fixed_threshold(value: float = PAPER_THRESHOLD) -> ThresholdChoice:
    """The fixed rule: ``value`` itself, whatever the data."""
    value = finite_number(value, "threshold value")
    if not 0 <= value <= 1:
        raise ThresholdError(f"a fixed threshold is a probability in [0, 1]; got {value}")
    return ThresholdChoice(value, ThresholdRule.FIXED, ThresholdRule.FIXED.describe(value), "fixed", value)


def choose_threshold(labels: ArrayLike, probabilities: ArrayLike, rule: ThresholdRule | str = ThresholdRule.FIXED, *,
                     value: float = PAPER_THRESHOLD, target_sensitivity: float = 0.9) -> ThresholdChoice:
    """A decision threshold chosen a priori on validation ``labels`` (0/1) and ``probabilities`` (of COVID+).

    ``fixed``: ``value``. ``youden``: the threshold maximizing sensitivity + specificity - 1 (the highest
    one among ties). ``sensitivity``: the highest threshold whose sensitivity reaches ``target_sensitivity``.
    Data-driven thresholds are validation probabilities, so ``probability >= threshold`` reproduces the
    chosen point. ``bundle`` is not a rule this function can apply (the bundle holds the result)."""
    from sklearn.metrics import roc_curve

    rule = ThresholdRule.parse(rule, allow_bundle=False)
    if rule is ThresholdRule.FIXED:
        return fixed_threshold(value)
    y, s = np.asarray(labels, dtype=np.float64), np.asarray(probabilities, dtype=np.float64)
    if y.ndim != 1 or y.shape != s.shape or not len(y):
        raise ThresholdError(f"labels and probabilities must be non-empty 1-D arrays of one length; got {y.shape}, "
                             f"{s.shape}")
    if not np.isin(y, (0, 1)).all() or not np.all(np.isfinite(s)):
        raise ThresholdError("labels must be 0/1 and probabilities finite")
    if y.min() == y.max():
        raise ThresholdError(f"a {rule.value} threshold needs both classes in the validation labels; "
                             f"all are {int(y[0])}")
    # thresholds[0] is inf (nothing predicted positive, tpr = fpr = 0); skip it: J there is 0, which
    # the last point (everything positive) also reaches, and sensitivity there is 0 < any target.
    fpr, tpr, thresholds = roc_curve(y, s, drop_intermediate=False)
    fpr, tpr, thresholds = fpr[1:], tpr[1:], thresholds[1:]
    if rule is ThresholdRule.YOUDEN:
        youden = tpr - fpr
        best = int(np.argmax(youden))  # first maximum = highest threshold among ties
        return ThresholdChoice(float(thresholds[best]), rule,
                               f"{rule.describe()} (J={youden[best]:.3f}, sensitivity {tpr[best]:.2f}, "
                               f"specificity {1 - fpr[best]:.2f})")
    target = finite_number(target_sensitivity, "target sensitivity")
    if not 0 < target <= 1:
        raise ThresholdError(f"target sensitivity must lie in (0, 1]; got {target}")
    # tpr rises as the threshold falls, so the first point reaching the target has the highest threshold.
    # A tiny tolerance keeps e.g. 9/10 = 0.8999999999999999 from missing a target of 0.9.
    index = int(np.argmax(tpr >= target - 1e-12))
    return ThresholdChoice(float(thresholds[index]), rule,
                           f"{rule.value} >= {target:.2f} on validation (achieved {tpr[index]:.3f}, "
                           f"specificity {1 - fpr[index]:.2f})", parameter=target)


def finite_number(value: float, what: str) -> float:
    """``value`` as a finite float; a :class:`ThresholdError` naming ``what`` otherwise (see ``unveil.errors``)."""
    return finite(value, what, ThresholdError)
