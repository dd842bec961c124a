"""The feature map (the paper's Fig. 4a/4b): t-SNE of the encoder features, drawn by source and by label."""

from __future__ import annotations

import numpy as np
import pandas as pd

from unveil.audit.context import AuditContext
from unveil.audit.embedding import plot_embedding, tsne_map
from unveil.audit.protocol import AuditOutcome, AuditTest, register

#: the two maps it draws (file names in the output folder, keys of audit.json's ``files``)
MAPS = ("tsne_by_source", "tsne_by_label")


class FeatureMap(AuditTest):
    """Pictures, no verdict: the t-SNE points of every image (audit_images.csv's ``tsne_x``, ``tsne_y``)."""

    name = "feature map"
    needs = ("features", "records")
    order = 100
    stage = "t-SNE"

    def run(self, context: AuditContext) -> AuditOutcome:
        points = tsne_map(context.features, seed=context.seed)
        out = context.out
        files = {"tsne_by_source": str(plot_embedding(points, context.records["source"], "encoder features by source",
                                                      out / "tsne_by_source.png")),
                 "tsne_by_label": str(plot_embedding(points, pd.Series(context.audited.label_names),
                                                     "encoder features by label", out / "tsne_by_label.png"))}
        return AuditOutcome(files=files, per_image={"tsne_x": points[:, 0], "tsne_y": points[:, 1]})

    def not_applicable(self, context: AuditContext, reason: str) -> AuditOutcome:
        """No map: the reason as ``figures["tsne_note"]``, NaN points, and an earlier run's maps removed (they are
        not this run's)."""
        for stale in MAPS:
            (context.out / f"{stale}.png").unlink(missing_ok=True)
        missing = np.full(len(context.records), np.nan)
        return AuditOutcome(figures={"tsne_note": reason}, per_image={"tsne_x": missing, "tsne_y": missing.copy()})


register(FeatureMap())
