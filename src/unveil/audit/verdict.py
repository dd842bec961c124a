"""One audit verdict, and the sentence a reviewer reads first: which flags fired and what they mean."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from unveil.audit.probes import ProbeResult
    from unveil.evaluation.metrics import MetricValue


#: the rule text of a test that cannot say anything on these inputs (the verdict's ``suggests`` says why)
NOT_APPLICABLE = "not applicable"
#: the rule text of a test whose inputs are missing (e.g. the model's training images are unknown)
NOT_CHECKED = "not checked"
#: a measure that starts so is a count of images (``Verdict.total``: out of how many), never an estimate
COUNT = "number of "


def is_count(measure: str) -> bool:
    """Whether a verdict's ``measure`` is a count of images (printed "1 of 180 images", with no interval)."""
    return str(measure).startswith(COUNT)


def value_text(value: float | None, low: float | None, high: float | None, *, measure: str = "",
               total: int | None = None, digits: int = 2) -> str:
    """A verdict's value as a reader sees it: a count as "k of n images" (no interval: it is not an estimate),
    otherwise "v [low, high]" (bounds left out when unknown); "n/a" when there is no value."""
    def missing(x: float | None) -> bool:
        return x is None or (isinstance(x, float) and math.isnan(x))

    if value is None or missing(value):
        return "n/a"
    if is_count(measure):
        count = int(round(float(value)))
        return f"{count} of {total} images" if total is not None else f"{count} image{'' if count == 1 else 's'}"
    text = f"{value:.{digits}f}"
    return text if missing(low) and missing(high) else f"{text} [{low:.{digits}f}, {high:.{digits}f}]"


@dataclass
class Verdict:
    test: str
    subject: str
    value: float
    low: float
    high: float
    threshold: str
    flagged: bool | None  # None: informative only, or not applicable / not checked (see ``state``)
    suggests: str
    measure: str = ""  # what ``value`` is: ROC AUC, balanced accuracy, a ratio, a number of images ...
    total: int | None = None  # for a count: out of how many images

    @property
    def shown(self) -> str:
        """The value as printed: "0.88 [0.80, 0.95]", "1 of 180 images", "n/a"."""
        return value_text(self.value, self.low, self.high, measure=self.measure, total=self.total)

    @property
    def state(self) -> str:
        """FLAGGED, ok, informative, not applicable or not checked: what the flag column says."""
        if self.flagged is not None:
            return "FLAGGED" if self.flagged else "ok"
        return next((t for t in (NOT_APPLICABLE, NOT_CHECKED) if self.threshold.startswith(t)), "informative")


@dataclass
class AuditResult:
    """Every verdict of one audit, the figures behind them and the files written."""

    verdicts: list[Verdict]
    figures: dict[str, Any]
    files: dict[str, str] = field(default_factory=dict)

    @property
    def flagged(self) -> list[Verdict]:
        return [v for v in self.verdicts if v.flagged]


#: what a fired flag of each test means, in a reviewer's words (a registered audit test adds its own,
#: :attr:`unveil.audit.protocol.AuditTest.meanings`)
MEANINGS: dict[str, str] = {
    "source probe": "the features tell the datasets apart within a class, so the model can read the hospital",
    "lung occlusion": "the model still separates the classes with the lung content hidden, so it uses evidence other "
                      "than the lungs' content (outside them, or on lung-masked images the lungs' shape and size)",
    "transfer (AUC)": "its ranking of COVID+ over COVID- degrades on other sets, so its in-source figures do not "
                      "carry over",
    "transfer (balanced accuracy)": "its decisions degrade on other sets at its own threshold",
    "below chance": "on another set it ranks COVID- above COVID+, so what it learned is inverted there (a "
                    "shortcut, not the disease)",
    "metadata probe": "the features encode acquisition or patient factors (view, sex, age, site) within a class",
    "metadata only": "the metadata alone predict the label, so a shortcut is available in the data",
    "contamination": "some test images are copies of training images, so their scores are not independent "
                     "evidence",
    "acquisition fingerprint": "the image files alone (size, format, bit depth, JPEG quality...) predict the label, "
                               "so merged sources are visible without a source column",
    "source discovery": "the model's features fall into clusters that follow both the label and the image files, "
                        "so it groups images by how they were acquired (merged sources)",
    "saliency in lungs": "the saliency is not concentrated in the lungs",
    "pointing game": "the saliency peak rarely falls in the infected region",
}


#: tests about the audited data rather than the model: they fire for any model audited on these images (a registered
#: audit test adds its own, :attr:`unveil.audit.protocol.AuditTest.data_flags`)
DATA_TESTS = ["metadata only", "acquisition fingerprint", "contamination"]


def summary_sentence(verdicts: Iterable[tuple[str, bool | None]], not_run: Iterable[str] = ()) -> str:
    """One sentence from (test, flagged) pairs: which flags fired on the model and on the data, and what they
    mean. The data flags (:data:`DATA_TESTS`) say what the test images allow, whatever the model. ``not_run``:
    the tests of verdicts that were not applicable (too few images): the sentence says they could not run."""
    verdicts, skipped = list(verdicts), sorted(set(not_run))
    fired: dict[str, int] = {}
    for test, flagged in verdicts:
        if flagged:
            fired[test] = fired.get(test, 0) + 1

    def listed(tests: list[str]) -> str:
        return "; ".join(f"{test}{f' (x{fired[test]})' if fired[test] > 1 else ''}: "
                         f"{MEANINGS.get(test, 'see the table')}" for test in tests)

    model = [t for t in fired if t not in DATA_TESTS]
    data = [t for t in fired if t in DATA_TESTS]
    count = sum(fired[t] for t in model)
    if model:
        head = f"{count} flag{'s' if count != 1 else ''} fired on the model — {listed(model)}"
    else:
        tested = len({t for t, flagged in verdicts if flagged is not None and t not in DATA_TESTS})
        kinds = f"{tested} kind{'s' if tested != 1 else ''} of test with a rule"
        head = (f"No flag fired on the model ({kinds}): these tests found no evidence of a dataset shortcut, "
                "which is not proof that it learned the disease")
    unrun = (f" Not run for too few patients, classes or images: {', '.join(skipped)} (see the table)."
             if skipped else "")
    return head + (f". On the data: {listed(data)}." if data else ".") + unrun


def source_probe_verdict(probe: ProbeResult, rule: float, within: str, *, external: bool) -> Verdict:
    """A source probe's verdict: it flags (balanced accuracy >= ``rule``) only between two of the model's own
    training sources; a pair with an ``external`` set measures a shift, shown as evidence (the transfer test
    judges whether it costs accuracy)."""
    metric = probe.evaluation.metrics["balanced_accuracy"]
    separated = bool(metric.value >= rule)
    accuracy = probe.evaluation.metrics["accuracy"].value
    counts = ", ".join(f"{source}: {n} images" for source, n in probe.counts.items())
    detail = f"(accuracy {accuracy:.2f}, majority rate {probe.majority_rate:.2f}; {counts})"
    pair = f"{probe.positive} from {probe.negative} among {within} images {detail}"
    if external:
        threshold = "informative: an external set (flags only between training sources)"
        suggests = (f"the features {'tell' if separated else 'hardly tell'} {pair}: a shift between a training "
                    "source and an external set; whether it costs accuracy is the transfer test's question")
        flagged = None
    else:
        threshold = f"balanced accuracy >= {rule:g} flags"
        suggests = (f"the features tell {pair}: the model carries the dataset, so cross-source results may reflect "
                    "the source, not the disease" if separated else
                    f"no strong {probe.negative}/{probe.positive} signature among {within} images {detail}")
        flagged = separated
    return Verdict("source probe", f"{probe.negative} vs {probe.positive} ({within} images)", metric.value, metric.low,
                   metric.high, threshold, flagged, suggests, measure="balanced accuracy (linear probe, out of fold)")


def label_probe_verdict(metric: MetricValue) -> Verdict:
    """The label probe's ROC AUC: a reference for the source probes, never a flag."""
    return Verdict("label probe", "COVID- vs COVID+ (all images)", metric.value, metric.low, metric.high,
                   "informative (no flag)", None,
                   "how linearly the features separate the labels (compare with the source probes)",
                   measure="ROC AUC (linear probe, out of fold)")


#: the two variants of the occlusion test: (subject, what is hidden) by variant
OCCLUSION_VARIANTS = {"lungs hidden": "lungs hidden",
                      "silhouette": "lung content hidden, silhouette kept"}


def separation_kept(before: float, after: float) -> float:
    """The share of the model's separation above chance (AUC - 0.5) left with the lung content hidden; NaN when
    the model does not rank COVID+ above COVID- to begin with."""
    return (after - 0.5) / (before - 0.5) if before > 0.5 else math.nan


def occlusion_verdict(before: float, after: MetricValue, rule: float, variant: str = "lungs hidden") -> Verdict:
    """The model's AUC with the lungs hidden (``after``; ``before``: with them): flags at ``rule`` or above.
    ``variant`` "silhouette" (lung-masked input): the lung content is hidden and what remains is the mask's shape
    and size, so a flag reads the silhouette, and evidence outside the lungs is not tested (none is left)."""
    hidden = OCCLUSION_VARIANTS[variant]
    flagged = bool(after.value >= rule)
    change = f"AUC {after.value:.2f} with the {hidden}, {before:.2f} with the image as the model sees it"
    if variant == "silhouette":
        kept = (f", keeping {separation_kept(before, after.value):.0%} of the model's separation above chance"
                if before > 0.5 else "")
        suggests = (f"{change}: the lungs' silhouette alone (shape and size, e.g. pediatric vs adult lungs) separates "
                    f"the classes{kept}, a shortcut" if flagged else
                    f"{change}: the silhouette alone stays under the rule{kept}") + (
            "; evidence outside the lungs is not tested: the lung masking of the pre-processing removed it")
    else:
        suggests = (f"with the lungs hidden the model still separates the classes ({change}): it uses evidence "
                    "outside the lungs" if flagged else f"hiding the lungs takes the AUC from {before:.2f} to "
                    f"{after.value:.2f}")
    return Verdict("lung occlusion", f"COVID- vs COVID+ ({hidden})", after.value, after.low, after.high,
                   f"AUC >= {rule:g} flags", flagged, suggests, measure=f"ROC AUC (model, {hidden})")


def occlusion_not_applicable(variant: str, reason: str) -> Verdict:
    """The occlusion test when it cannot flag whatever the model does (``reason``): never "ok"."""
    hidden = OCCLUSION_VARIANTS[variant]
    return Verdict("lung occlusion", f"COVID- vs COVID+ ({hidden})", math.nan, math.nan, math.nan,
                   f"{NOT_APPLICABLE}: nothing is left to separate the classes with", None,
                   f"not applicable: {reason}", measure=f"ROC AUC (model, {hidden})")


def saliency_verdict(mean: float, low: float, high: float, *, share: float, lung_area: float, layer: str,
                     rule: float | None) -> Verdict:
    """Grad-CAM mass in the lungs over the lungs' area share (1: what a uniform map puts there); flags below
    ``rule`` (None: informative only)."""
    reading = ("more than" if mean > 1 else "no more than") + " a uniform map would put there"
    return Verdict(
        "saliency in lungs", f"Grad-CAM mass in lungs / lung area ({layer})", mean, low, high,
        "informative (no flag unless lung_saliency is set)" if rule is None else f"ratio < {rule:g} flags",
        None if rule is None else bool(mean < rule),
        f"{share:.0%} of the Grad-CAM mass lies in the lungs, which cover {lung_area:.0%} of the image: {reading}",
        measure="ratio (Grad-CAM share in lungs / lung area share)")
