"""Infection evidence: where records carry infection masks (COVID-QU-Ex), the Grad-CAM mass in the infected region
and the pointing game on COVID+ images (:mod:`unveil.audit.infection`)."""

from __future__ import annotations

from unveil.audit.context import AuditContext
from unveil.audit.infection import infection_verdicts
from unveil.audit.protocol import AuditOutcome, AuditTest, register


class InfectionSaliency(AuditTest):
    """Two verdicts, or none (and empty figures) when no record carries an infection mask."""

    name = "infection saliency"
    needs = ("bundle", "records", "saliency_maps")
    order = 1000
    stage = "Grad-CAM"

    def run(self, context: AuditContext) -> AuditOutcome:
        verdicts, figures = infection_verdicts(
            context.saliency_maps, context.records, context.is_positive, context.groups,
            size=context.bundle.image_size, pointing_rule=context.thresholds.infection_pointing, seed=context.seed,
            resamples=context.resamples)
        return AuditOutcome(verdicts=verdicts, figures={"infection": figures})


register(InfectionSaliency())
