"""The probes on the encoder features: the label probe (a reference) and, within each class, a source probe for
every pair of probe groups (a source within one audited set, :func:`unveil.audit.context.audited_as`)."""

from __future__ import annotations

import itertools
import math

import pandas as pd

from unveil.audit.context import AuditContext
from unveil.audit.probes import ProbeResult, linear_probe
from unveil.audit.protocol import AuditOutcome, AuditTest, InsufficientData, register
from unveil.audit.settings import AuditThresholds
from unveil.audit.verdict import NOT_APPLICABLE, Verdict, label_probe_verdict, source_probe_verdict


def probe_verdict(probe: ProbeResult, thresholds: AuditThresholds, within: str,
                  training_groups: set[str] | None = None) -> Verdict:
    """A source probe flags when it separates two groups of the model's own test split (two of its training
    sources: the shortcut a model can learn); a probe involving an external set measures a shift, shown as
    evidence (see the transfer test). ``training_groups`` None: every pair may flag (no own test split)."""
    external = training_groups is not None and not {probe.negative, probe.positive} <= training_groups
    return source_probe_verdict(probe, thresholds.source_probe, within, external=external)


def too_few_to_probe(counts: pd.Series, min_images: int, within: str) -> list[Verdict]:
    """A "not applicable" verdict per pair of sources among ``within`` images that is not probed because one
    side holds fewer than ``min_images`` images: a probe that cannot run is said, never silently left out."""
    verdicts = []
    for first, second in itertools.combinations(sorted(counts.index), 2):
        if min(counts[first], counts[second]) >= min_images:
            continue
        reason = (f"{first}: {counts[first]} image(s), {second}: {counts[second]} among {within} images; a source "
                  f"probe needs {min_images} of each (--audit-threshold min_images)")
        verdicts.append(Verdict("source probe", f"{first} vs {second} ({within} images)", math.nan, math.nan,
                                math.nan, f"{NOT_APPLICABLE}: too few images", None, f"not applicable: {reason}",
                                measure="balanced accuracy (linear probe, out of fold)"))
    return verdicts


class SourceProbes(AuditTest):
    """Label probe, then source probes; a probe whose sides hold too few patients is noted (``label_probe_note``,
    ``probe_notes``) and gives no verdict."""

    name = "source probes"
    needs = ("features", "records")
    order = 200
    stage = "probes"

    def run(self, context: AuditContext) -> AuditOutcome:
        features, kept, is_positive, groups = context.features, context.records, context.is_positive, context.groups
        seed, resamples, thresholds = context.seed, context.resamples, context.thresholds
        outcome, probes = AuditOutcome(), []
        try:
            label_probe = linear_probe(features, is_positive, groups, name="label", negative="COVID-",
                                       positive="COVID+", seed=seed, resamples=resamples)
            probes.append(label_probe.figures())
            outcome.verdicts.append(label_probe_verdict(label_probe.evaluation.metrics["roc_auc"]))
        except InsufficientData as error:
            outcome.figures["label_probe_note"] = str(error)
        for value, within in ((0, "COVID-"), (1, "COVID+")):
            in_class = is_positive == value
            counts = kept.loc[in_class, "audited_as"].value_counts()
            sources = sorted(s for s, n in counts.items() if n >= thresholds.min_images)
            outcome.verdicts += too_few_to_probe(counts, thresholds.min_images, within)
            for first, second in itertools.combinations(sources, 2):
                chosen = in_class & kept["audited_as"].isin([first, second]).to_numpy()
                try:
                    probe = linear_probe(features[chosen], (kept.loc[chosen, "audited_as"] == second).to_numpy(),
                                         groups[chosen], name=f"source {within}", negative=first, positive=second,
                                         seed=seed, resamples=resamples)
                except InsufficientData as error:
                    outcome.figures.setdefault("probe_notes", []).append(str(error))
                    continue
                probes.append(probe.figures())
                outcome.verdicts.append(probe_verdict(probe, thresholds, within, context.audited.training_groups))
        outcome.figures["probes"] = probes
        return outcome


register(SourceProbes())
