"""The transfer test: for each audited set other than the model's own test split, how much the model's AUC and
balanced accuracy drop there, and whether it is below chance (:mod:`unveil.audit.transfer`)."""

from __future__ import annotations

from unveil.audit.context import AuditContext
from unveil.audit.protocol import AuditOutcome, AuditTest, register
from unveil.audit.transfer import transfer_section


class TransferDrop(AuditTest):
    """Three verdicts per external set; a set holding one class only is noted in ``transfer_notes``."""

    name = "transfer"
    needs = ("records", "sets", "probability", "bundle")
    order = 400
    stage = "lung occlusion"

    def run(self, context: AuditContext) -> AuditOutcome:
        figures: dict = {}
        verdicts = transfer_section(context.records, context.sets, context.is_positive, context.probability,
                                    context.groups, context.own, context.bundle.threshold, context.thresholds,
                                    figures, seed=context.seed, resamples=context.resamples)
        return AuditOutcome(verdicts=verdicts, figures=figures)


register(TransferDrop())
