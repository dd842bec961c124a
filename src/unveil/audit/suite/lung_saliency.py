"""Saliency in the lungs: the share of the Grad-CAM mass inside the lung mask over the lungs' share of the image
(1 = a uniform map), and the overlays of a few images per class."""

from __future__ import annotations

import math

import numpy as np

from unveil.audit.bootstrap import patient_bootstrap_mean
from unveil.audit.context import AuditContext
from unveil.audit.outputs import write_overlays
from unveil.audit.protocol import AuditOutcome, AuditTest, register
from unveil.audit.saliency import lung_saliency_fraction
from unveil.audit.verdict import saliency_verdict


class LungSaliency(AuditTest):
    """One verdict (a flag only with ``lung_saliency`` set); per image its share inside the lungs
    (``lung_saliency``); the overlays in ``saliency/``."""

    name = "saliency in lungs"
    needs = ("bundle", "lungs", "saliency_maps", "probability")
    order = 900
    stage = "Grad-CAM"

    def run(self, context: AuditContext) -> AuditOutcome:
        bundle, lungs, maps = context.bundle, context.lungs, context.saliency_maps
        inside = lung_saliency_fraction(maps, lungs)
        area = lungs.reshape(len(lungs), -1).mean(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            enrichment = np.where(area > 0, inside / area, np.nan)
        mean, low, high = patient_bootstrap_mean(enrichment, context.groups, resamples=context.resamples,
                                                 seed=context.seed)
        share = float(np.nanmean(inside)) if np.isfinite(inside).any() else math.nan
        lung_area = float(area.mean())
        layer = bundle.model.target_layer
        figures = {"enrichment_mean": mean, "low": low, "high": high, "share_inside_lungs": share,
                   "lung_area_fraction": lung_area, "layer": layer}
        verdict = saliency_verdict(mean, low, high, share=share, lung_area=lung_area, layer=layer,
                                   rule=context.thresholds.lung_saliency)
        overlays = write_overlays(context.audited, maps, context.probability, context.out, seed=context.seed,
                                  samples=context.saliency_samples)
        return AuditOutcome(verdicts=[verdict], figures={"saliency": figures}, files={"saliency_overlays": overlays},
                            per_image={"lung_saliency": inside})


register(LungSaliency())
