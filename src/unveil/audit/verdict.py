"""One audit verdict, and the sentence a reviewer reads first: which flags fired and what they mean."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from unveil.audit.probes import ProbeResult
    from unveil.evaluation.metrics import MetricValue


@dataclass
class Verdict:
    test: str
    subject: str
    value: float
    low: float
    high: float
    threshold: str
    flagged: bool | None  # None: informative only
    suggests: str
    measure: str = ""  # what ``value`` is: ROC AUC, balanced accuracy, a ratio ...


@dataclass
class AuditResult:
    """Every verdict of one audit, the figures behind them and the files written."""

    verdicts: list[Verdict]
    figures: dict[str, Any]
    files: dict[str, str] = field(default_factory=dict)

    @property
    def flagged(self) -> list[Verdict]:
        return [v for v in self.verdicts if v.flagged]


#: what a fired flag of each test means, in a reviewer's words
MEANINGS: dict[str, str] = {
    "source probe": "the features tell the datasets apart within a class, so the model can read the hospital",
    "lung occlusion": "the model still separates the classes with the lungs hidden, so it uses evidence outside "
                      "the lungs",
    "transfer (AUC)": "its ranking of COVID+ over COVID- degrades on other sets, so its in-source figures do not "
                      "carry over",
    "transfer (balanced accuracy)": "its decisions degrade on other sets at its own threshold",
    "below chance": "on another set it ranks COVID- above COVID+, so what it learned is inverted there (a "
                    "shortcut, not the disease)",
    "metadata probe": "the features encode acquisition or patient factors (view, sex, age, site) within a class",
    "metadata only": "the metadata alone predict the label, so a shortcut is available in the data",
    "contamination": "some test images are copies of training images, so their scores are not independent "
                     "evidence",
    "saliency in lungs": "the saliency is not concentrated in the lungs",
    "pointing game": "the saliency peak rarely falls in the infected region",
}


#: tests about the audited data rather than the model: they fire for any model audited on these images
DATA_TESTS = ("metadata only", "contamination")


def summary_sentence(verdicts: Iterable[tuple[str, bool | None]]) -> str:
    """One sentence from (test, flagged) pairs: which flags fired on the model and on the data, and what they
    mean. The data flags (:data:`DATA_TESTS`) say what the test images allow, whatever the model."""
    verdicts = list(verdicts)
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
    return head + (f". On the data: {listed(data)}." if data else ".")


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


def occlusion_verdict(before: float, after: MetricValue, rule: float) -> Verdict:
    """The model's AUC with the lungs hidden (``after``; ``before``: with them): flags at ``rule`` or above."""
    flagged = bool(after.value >= rule)
    suggests = (f"with the lungs hidden the model still separates the classes (AUC {after.value:.2f}, "
                f"{before:.2f} with them): it uses evidence outside the lungs" if flagged else
                f"hiding the lungs takes the AUC from {before:.2f} to {after.value:.2f}")
    return Verdict("lung occlusion", "COVID- vs COVID+ (lungs hidden)", after.value, after.low, after.high,
                   f"AUC >= {rule:g} flags", flagged, suggests, measure="ROC AUC (model, lungs hidden)")


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
