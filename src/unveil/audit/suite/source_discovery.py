"""Source discovery: k-means clusters of the encoder features against the label and the image files, on the model's
own test split (:mod:`unveil.audit.discovery`), and the montage of each cluster's most central images."""

from __future__ import annotations

import numpy as np

from unveil.audit.context import AuditContext
from unveil.audit.discovery import discovery_verdicts
from unveil.audit.outputs import write_cluster_montage
from unveil.audit.protocol import AuditOutcome, AuditTest, register


class SourceDiscovery(AuditTest):
    """The clusters' verdict and the file properties' informative row; each image's cluster (``cluster``: -1 outside
    the clustered images, or when the test is not applicable) and ``clusters.png``."""

    name = "source discovery"
    needs = ("features", "own_split", "file_properties")
    order = 800
    stage = "lung occlusion"

    def run(self, context: AuditContext) -> AuditOutcome:
        split, thresholds = context.own_split, context.thresholds
        verdicts, figures, clusters = discovery_verdicts(
            context.features[split.chosen], split.records, context.is_positive[split.chosen],
            context.groups[split.chosen], context.file_properties[0], ami_rule=thresholds.discovery_ami,
            acquisition_rule=thresholds.discovery_acquisition, min_images=thresholds.min_images, scope=split.scope,
            seed=context.seed, resamples=context.resamples)
        outcome = AuditOutcome(verdicts=verdicts, figures={"discovery": figures})
        montage = write_cluster_montage(figures.get("clusters", []), context.out / "clusters.png")
        if montage is not None:
            outcome.files["clusters_montage"] = str(montage)
        per_image = np.full(len(context.records), -1)
        if clusters is not None:
            per_image[split.chosen] = clusters
        outcome.per_image["cluster"] = per_image
        return outcome


register(SourceDiscovery())
