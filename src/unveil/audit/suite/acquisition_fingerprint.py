"""The acquisition fingerprint: the label from what the image files say about themselves, on the model's own test
split (:mod:`unveil.audit.fingerprint`; a data flag)."""

from __future__ import annotations

from unveil.audit.context import AuditContext
from unveil.audit.fingerprint import fingerprint_verdicts
from unveil.audit.protocol import AuditOutcome, AuditTest, register


class AcquisitionFingerprint(AuditTest):
    """The combined verdict, then one informative row per property that carries the label alone ("not applicable"
    with too few patients); the files whose header could not be read in ``figures["fingerprint"]["read_errors"]``."""

    name = "acquisition fingerprint"
    needs = ("own_split", "file_properties")
    order = 700
    stage = "lung occlusion"

    def run(self, context: AuditContext) -> AuditOutcome:
        split, (properties, errors) = context.own_split, context.file_properties
        verdicts, figures = fingerprint_verdicts(properties, context.is_positive[split.chosen],
                                                 context.groups[split.chosen], rule=context.thresholds.fingerprint_auc,
                                                 scope=split.scope, seed=context.seed, resamples=context.resamples)
        figures["read_errors"] = errors
        return AuditOutcome(verdicts=verdicts, figures={"fingerprint": figures})


register(AcquisitionFingerprint())
