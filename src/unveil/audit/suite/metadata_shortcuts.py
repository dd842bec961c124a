"""The metadata tests: feature probes of each acquisition or patient factor within a class, and how well the
metadata alone predict the label on the model's own test split (:mod:`unveil.audit.metadata`)."""

from __future__ import annotations

from unveil.audit.context import AuditContext
from unveil.audit.metadata import metadata_verdicts
from unveil.audit.protocol import AuditOutcome, AuditTest, register


class MetadataShortcuts(AuditTest):
    """Metadata probes and metadata-only baselines; a probe with too few patients is noted, no verdict."""

    name = "metadata"
    needs = ("features", "records", "sets")
    order = 500
    stage = "lung occlusion"

    def run(self, context: AuditContext) -> AuditOutcome:
        kept, thresholds = context.records, context.thresholds
        in_own = kept["record_id"].isin(context.sets.get(context.own, set())).to_numpy()  # type: ignore[arg-type]
        verdicts, figures = metadata_verdicts(
            context.features, kept, context.is_positive, context.groups, in_own, probe_rule=thresholds.metadata_probe,
            only_rule=thresholds.metadata_only_auc, min_images=thresholds.min_images, seed=context.seed,
            resamples=context.resamples)
        return AuditOutcome(verdicts=verdicts, figures={"metadata": figures})


register(MetadataShortcuts())
