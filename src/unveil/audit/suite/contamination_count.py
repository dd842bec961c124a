"""The contamination test: per audited set, how many of its images are (near-)copies of the model's training
images (:mod:`unveil.audit.contamination`; a data flag)."""

from __future__ import annotations

from unveil.audit.contamination import contamination_section
from unveil.audit.context import AuditContext
from unveil.audit.protocol import AuditOutcome, AuditTest, register


class ContaminationCount(AuditTest):
    """One count per audited set; per image, whether it duplicates a training image
    (``near_duplicate_of_training``)."""

    name = "contamination"
    needs = ("bundle", "records", "sets")
    order = 600
    stage = "lung occlusion"

    def run(self, context: AuditContext) -> AuditOutcome:
        outcome = AuditOutcome()
        duplicated = contamination_section(context.bundle, context.records, context.sets, context.thresholds,
                                           outcome.figures, outcome.verdicts, cache=context.audited.cache,
                                           workers=context.workers)
        outcome.per_image["near_duplicate_of_training"] = duplicated
        return outcome


register(ContaminationCount())
