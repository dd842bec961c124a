"""Transfer verdict: does the model's in-source performance hold on other hospitals' images?

For each external set, the model's ROC AUC and balanced accuracy on it are compared with those on its own
composition's test split. The interval of the *difference* comes from resampling the patients of each set
independently (the two sets share no patient), so it accounts for the uncertainty of both figures.

Rules (thresholds in :class:`~unveil.audit.run.AuditThresholds`): "does not transfer" when the drop
(in-source minus external) is at least ``transfer_drop`` and its interval excludes zero; "below chance"
when the external AUC's upper bound is under ``below_chance``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from unveil.audit.protocol import InsufficientData
from unveil.audit.verdict import Verdict
from unveil.evaluation.metrics import Evaluation, _bootstrap, _patient_codes, evaluate_scores

#: the two metrics compared between the in-source test and each external set
COMPARED = ("roc_auc", "balanced_accuracy")


@dataclass(frozen=True)
class ScoredSet:
    """One test set as the model scored it: true ``labels`` (1 = COVID+), ``probability``, patient keys."""

    name: str
    labels: np.ndarray
    probability: np.ndarray
    patients: np.ndarray


@dataclass
class Difference:
    """In-source minus external value of one metric, with the percentile interval of the difference."""

    metric: str
    in_source: float
    external: float
    drop: float
    low: float
    high: float
    resamples_used: int


@dataclass
class Transfer:
    """The comparison of one external set with the in-source test."""

    external: str
    in_source: str
    evaluation: Evaluation  # the external set's own metrics (AUC interval for "below chance")
    reference: Evaluation  # the in-source test's
    differences: dict[str, Difference]

    def figures(self) -> dict[str, object]:
        out: dict[str, object] = {"external": self.external, "in_source": self.in_source,
                                  "external_images": self.evaluation.images,
                                  "external_patients": self.evaluation.patients,
                                  "in_source_images": self.reference.images}
        for name, difference in self.differences.items():
            out[name] = {"in_source": difference.in_source, "external": difference.external,
                         "drop": difference.drop, "drop_low": difference.low, "drop_high": difference.high,
                         "external_low": self.evaluation.metrics[name].low,
                         "external_high": self.evaluation.metrics[name].high,
                         "resamples_used": difference.resamples_used}
        return out


def _draws(scored: ScoredSet, threshold: float, resamples: int, seed: int) -> dict[str, np.ndarray]:
    codes = _patient_codes(scored.patients, len(scored.labels))
    y, s = np.asarray(scored.labels).astype(int), np.asarray(scored.probability, dtype=float)
    return _bootstrap(y, s, s >= threshold, codes, int(codes.max()) + 1, resamples, np.random.default_rng(seed))


def compare_transfer(in_source: ScoredSet, external: ScoredSet, *, threshold: float, resamples: int = 1000,
                     seed: int = 0, confidence: float = 0.95) -> Transfer:
    """AUC and balanced accuracy of ``external`` against ``in_source`` at the model's ``threshold``, with
    patient-bootstrap intervals of the difference (each set's patients resampled independently)."""
    for scored in (in_source, external):
        if len(np.unique(scored.labels)) < 2:
            raise InsufficientData(f"transfer: {scored.name} holds one class only ({len(scored.labels)} images); "
                             "AUC and balanced accuracy need COVID+ and COVID- images")
    reference = evaluate_scores(in_source.labels, in_source.probability, in_source.patients, threshold=threshold,
                                resamples=resamples, seed=seed, confidence=confidence)
    evaluation = evaluate_scores(external.labels, external.probability, external.patients, threshold=threshold,
                                 resamples=resamples, seed=seed + 1, confidence=confidence)
    first = _draws(in_source, threshold, resamples, seed)
    second = _draws(external, threshold, resamples, seed + 1)
    alpha = (1 - confidence) / 2 * 100
    differences = {}
    for name in COMPARED:
        drops = first[name] - second[name]
        drops = drops[np.isfinite(drops)]
        low, high = (float(np.percentile(drops, alpha)), float(np.percentile(drops, 100 - alpha))) if len(drops) \
            else (math.nan, math.nan)
        value_in, value_out = reference.metrics[name].value, evaluation.metrics[name].value
        differences[name] = Difference(name, value_in, value_out, value_in - value_out, low, high, len(drops))
    return Transfer(external.name, in_source.name, evaluation, reference, differences)


def does_not_transfer(difference: Difference, drop: float) -> bool:
    """The rule: a drop of at least ``drop`` whose interval excludes zero (its lower bound is above 0)."""
    return bool(difference.drop >= drop and difference.low > 0)


def below_chance(transfer: Transfer, bound: float) -> bool:
    """The rule: the external AUC's upper bound is under ``bound`` (0.5: worse than a coin, with confidence)."""
    high = transfer.evaluation.metrics["roc_auc"].high
    return bool(not math.isnan(high) and high < bound)


def transfer_verdicts(transfer: Transfer, *, drop: float, bound: float) -> list:
    """The three verdicts of one external set: AUC drop, balanced-accuracy drop, below chance."""
    verdicts = []
    for name, label in (("roc_auc", "AUC"), ("balanced_accuracy", "balanced accuracy")):
        d = transfer.differences[name]
        flagged = does_not_transfer(d, drop)
        where = f"{transfer.in_source} -> {transfer.external}"
        detail = (f"{label} {d.in_source:.2f} on its own test split ({transfer.in_source}), {d.external:.2f} on "
                  f"{transfer.external}; drop {d.drop:.2f} [{d.low:.2f}, {d.high:.2f}]")
        suggests = (f"{detail}: the model does not transfer; its in-source figures are no evidence that it "
                    "detects COVID-19 elsewhere" if flagged else
                    f"{detail}: no drop of {drop:g} or more that the interval confirms")
        verdicts.append(Verdict(f"transfer ({label})", where, d.drop, d.low, d.high,
                                f"drop >= {drop:g} with its interval above 0 flags", flagged, suggests,
                                measure=f"{label} drop (in-source minus external; patients of each set resampled)"))
    auc = transfer.evaluation.metrics["roc_auc"]
    flagged = below_chance(transfer, bound)
    verdicts.append(Verdict(
        "below chance", f"{transfer.external} (COVID- vs COVID+)", auc.value, auc.low, auc.high,
        f"upper bound < {bound:g} flags", flagged,
        (f"AUC {auc.value:.2f} [{auc.low:.2f}, {auc.high:.2f}] on {transfer.external}: the model ranks COVID- above "
         "COVID+ there; what separates its training classes is inverted on this set (a shortcut such as the "
         "source, view or age), not the disease") if flagged else
        f"AUC {auc.value:.2f} [{auc.low:.2f}, {auc.high:.2f}] on {transfer.external}: not confidently below chance",
        measure="ROC AUC (model, external set)"))
    return verdicts


def own_composition(bundle) -> str | None:
    """The composition the model was trained on (``AB`` from its provenance task ``train:AB``), or None."""
    task = str(bundle.description.get("provenance", {}).get("task", ""))
    return task.split(":", 1)[1] or None if task.startswith("train:") else None


def transfer_section(records, members: dict[str, set[str]], is_positive: np.ndarray, probability: np.ndarray,
                     groups: np.ndarray, own: str | None, threshold: float, thresholds, figures: dict, *, seed: int,
                     resamples: int) -> list:
    """Transfer verdicts of every audited test set other than the model's own (``members``: the record ids of
    each set); figures go to ``figures["transfer"]``, reasons for a skipped set to ``figures["transfer_notes"]``."""
    names = list(members)
    others = [name for name in names if name != own]
    figures["transfer"], notes = [], []
    if own is None or own not in names:
        if others:
            notes.append("no in-source test split (the model's own composition is not audited): no transfer verdict")
        figures["transfer_notes"] = notes
        return []
    sets = {name: records["record_id"].isin(members[name]).to_numpy() for name in names}

    def scored(name: str) -> ScoredSet:
        chosen = sets[name]
        return ScoredSet(name, is_positive[chosen], probability[chosen], groups[chosen])

    verdicts = []
    for name in others:
        try:
            transfer = compare_transfer(scored(own), scored(name), threshold=threshold, resamples=resamples,
                                        seed=seed)
        except InsufficientData as error:
            notes.append(str(error))
            continue
        figures["transfer"].append(transfer.figures())
        verdicts += transfer_verdicts(transfer, drop=thresholds.transfer_drop, bound=thresholds.below_chance)
    figures["transfer_notes"] = notes
    return verdicts
