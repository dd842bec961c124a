"""The audit test protocol: what one audit test declares, what it returns, and the ordered registry `audit()` runs.

An audit test (:class:`AuditTest`) has a ``name``, the resources of the :class:`~unveil.audit.context.AuditContext`
it ``needs`` (:data:`RESOURCES`), its place in the run (``order``, lowest first) and one method,
``run(context) -> AuditOutcome``: its verdicts, the figures behind them, the files it wrote and its per-image
evidence (columns of ``audit_images.csv``), in one shape. A test that lacks the patients, classes or images to
say anything raises :class:`InsufficientData`; the runner catches that type only and records the test with
``not_applicable(context, reason)`` ("not applicable: <reason>"). Any other exception is a bug and propagates.

Tests register themselves (:func:`register`), one module each under :mod:`unveil.audit.suite`; `audit()` iterates
:func:`registered`.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from unveil.audit.verdict import DATA_TESTS, MEANINGS, NOT_APPLICABLE, Verdict
from unveil.errors import UnveilError

if TYPE_CHECKING:
    import numpy as np

    from unveil.audit.context import AuditContext


class InsufficientData(UnveilError, ValueError):
    """Too few patients, classes or images for a test (or one part of it) to say anything: the message says what
    is missing. The audit records such a test as "not applicable: <message>"; it never hides another error."""


#: what an audit test may declare in ``needs``: attributes of the AuditContext (the costly ones, marked *, are
#: computed once, when the first test that needs them runs)
RESOURCES: dict[str, str] = {
    "bundle": "the audited model (its network, threshold, pre-processing settings, provenance)",
    "records": "one row per audited image (source, patient, test set, probe group, metadata columns), with the "
               "labels (is_positive) and patient keys (groups) beside it",
    "images": "the images as the model saw them (pre-processed)",
    "lungs": "the lung masks of --mask, and the model's own masks (model_masks; None without lung masking)",
    "sets": "the audited sets (record ids of each) and which one is the model's own test split",
    "features": "* the encoder features of every image",
    "probability": "* the model's probability of COVID+ per image",
    "saliency_maps": "* the Grad-CAM map of every image",
    "own_split": "* the images the data tests read: the model's own test split, every audited image without one",
    "file_properties": "* what the files' headers say about the own_split images (width, format, JPEG quality...)",
}


@dataclass
class AuditOutcome:
    """What one audit test found, in the shape every test shares; the runner merges it into the audit's result."""

    #: its rows of the verdict table, in the order they are printed
    verdicts: list[Verdict] = field(default_factory=list)
    #: the numbers behind them (keys of audit.json's ``figures``; each key belongs to one test)
    figures: dict[str, Any] = field(default_factory=dict)
    #: the files it wrote in the output folder (audit.json's ``files``: a path, or a list of paths)
    files: dict[str, Any] = field(default_factory=dict)
    #: per-image evidence: columns of audit_images.csv, one value per audited image
    per_image: dict[str, np.ndarray] = field(default_factory=dict)


class AuditTest(ABC):
    """One audit test. Subclasses set ``name``, ``needs``, ``order`` (and may set ``stage``, the progress bar's label,
    ``subject`` and ``measure``, what a default "not applicable" row says) and implement :meth:`run`."""

    #: the test's name, unique in the registry
    name: str = ""
    #: the AuditContext resources it reads (keys of :data:`RESOURCES`)
    needs: tuple[str, ...] = ()
    #: where it runs among the registered tests, lowest first (the built-in tests use 100, 200, ... 1000)
    order: float = math.inf
    #: the progress bar's label while it runs (tests sharing a label count as one step)
    stage: str = ""
    #: what the default "not applicable" verdict names as its subject and measure
    subject: str = "all audited images"
    measure: str = ""
    #: what a fired flag of each of its verdicts' tests means, in a reviewer's words (the lead sentence; read only;
    #: the built-in tests' are in :data:`unveil.audit.verdict.MEANINGS`)
    meanings: dict[str, str] = {}
    #: those of its verdicts' tests that flag the data, not the model (the lead sentence's "On the data")
    data_flags: tuple[str, ...] = ()

    @abstractmethod
    def run(self, context: AuditContext) -> AuditOutcome:
        """The test on these images; raises :class:`InsufficientData` when they cannot answer it."""

    def not_applicable(self, context: AuditContext, reason: str) -> AuditOutcome:
        """What the audit records when :meth:`run` raised :class:`InsufficientData` (``reason``: its message): one
        "not applicable" verdict with the reason, and the reason under ``figures[name]``."""
        verdict = Verdict(self.name, self.subject, math.nan, math.nan, math.nan,
                          f"{NOT_APPLICABLE}: too few patients, classes or images", None, f"not applicable: {reason}",
                          measure=self.measure)
        return AuditOutcome(verdicts=[verdict], figures={self.name: {"not_applicable": reason}})


Test = TypeVar("Test", bound=AuditTest)

_REGISTRY: list[AuditTest] = []


def check_test(test: object) -> None:
    """Raise TypeError unless ``test`` follows the protocol: an AuditTest with a non-empty name, needs drawn from
    :data:`RESOURCES` and a numeric order (a mistake in unveil's code, not in the user's input)."""
    if not isinstance(test, AuditTest):
        raise TypeError(f"an audit test must be an AuditTest instance; got {test!r}")
    if not isinstance(test.name, str) or not test.name.strip():
        raise TypeError(f"{type(test).__name__}: an audit test needs a name")
    unknown = [need for need in test.needs if need not in RESOURCES]
    if isinstance(test.needs, str) or unknown:
        raise TypeError(f"audit test {test.name!r}: needs must be a tuple of {', '.join(RESOURCES)}; got "
                        f"{test.needs!r}")
    if isinstance(test.order, bool) or not isinstance(test.order, (int, float)) or math.isnan(test.order):
        raise TypeError(f"audit test {test.name!r}: order must be a number; got {test.order!r}")


def register(test: Test) -> Test:
    """Add ``test`` to the tests `audit()` runs, at its ``order`` (after those of equal order), and its flags'
    meanings and data flags to the lead sentence's; returns it. A second test of the same name, or a meaning or data
    flag another test gave, is refused (TypeError)."""
    check_test(test)
    if any(other.name == test.name for other in _REGISTRY):
        raise TypeError(f"an audit test named {test.name!r} is already registered")
    taken = sorted((set(test.meanings) & set(MEANINGS)) | (set(test.data_flags) & set(DATA_TESTS)))
    if taken:
        raise TypeError(f"audit test {test.name!r}: {', '.join(taken)} already belong(s) to another test")
    MEANINGS.update(test.meanings)
    DATA_TESTS.extend(test.data_flags)
    _REGISTRY.append(test)
    _REGISTRY.sort(key=lambda registered_test: registered_test.order)  # stable: equal orders keep their arrival
    return test


def unregister(name: str) -> AuditTest:
    """Remove the test named ``name`` (KeyError if none), and the meanings and data flags it added; return it (e.g. a
    toy audit test registered by a test)."""
    for index, test in enumerate(_REGISTRY):
        if test.name == name:
            for key in test.meanings:
                MEANINGS.pop(key, None)
            DATA_TESTS[:] = [flag for flag in DATA_TESTS if flag not in test.data_flags]
            return _REGISTRY.pop(index)
    raise KeyError(f"no audit test named {name!r} is registered")


def registered() -> tuple[AuditTest, ...]:
    """Every registered test, in the order `audit()` runs them."""
    return tuple(_REGISTRY)
