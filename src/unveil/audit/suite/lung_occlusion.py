"""The lung occlusion test: the model's ROC AUC with the lung content hidden, in one of two variants
(:func:`occluded_inputs`; see :mod:`unveil.audit.occlusion`), "not applicable" with the reason when what remains is
the same input for every image."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from unveil.audit.context import AuditContext, AuditedImages
from unveil.audit.occlusion import (
    lung_mean,
    occlude,
    occlusion_masks,
    same_for_every_image,
    silhouettes,
    soft_silhouettes,
)
from unveil.audit.protocol import AuditOutcome, AuditTest, register
from unveil.audit.verdict import occlusion_not_applicable, occlusion_verdict, separation_kept
from unveil.evaluation.metrics import evaluate_scores


def occluded_inputs(audited: AuditedImages, fill: int | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
    """The images with the lung content hidden, and how (``variant``, ``fill``, ...). The model's input already
    masked (black outside its blurred lung mask): the "silhouette" variant, the content replaced by one ``fill``
    (default: the mean lung intensity of the audited input) inside that same blurred mask. Otherwise "lungs
    hidden": the lungs (grown by size/64 px) replaced by the training mean, the rest of the radiograph kept."""
    bundle, images = audited.bundle, audited.images.images
    if audited.model_masks is not None:
        settings = bundle.preprocess_settings
        soft = soft_silhouettes(audited.model_masks, settings.blur_radius, bundle.image_size)
        fill = lung_mean(images, soft) if fill is None else fill
        return silhouettes(soft, fill), {"variant": "silhouette", "fill": fill, "blur_radius_px": settings.blur_radius,
                                         "lung_fraction": float((soft >= 0.5).mean())}
    fill = int(round(bundle.normalization[0] * 255)) if fill is None else fill
    dilation = max(1, bundle.image_size // 64)
    hidden = occlusion_masks(audited.lungs, dilation=dilation)
    return occlude(images, hidden, fill), {"variant": "lungs hidden", "fill": fill, "dilation_px": dilation,
                                           "hidden_fraction": float(hidden.mean())}


def nothing_left(occluded: torch.Tensor, figures: dict[str, Any]) -> str | None:
    """Why the occlusion test cannot flag on these inputs whatever the model does, or None."""
    if same_for_every_image(occluded):
        what = ("every image has the same lung silhouette" if figures["variant"] == "silhouette" else
                "the grown lung masks cover the whole image")
        return (f"with the lung content hidden the model gets the same input for every image ({what}): its output "
                "cannot tell the classes apart, whatever it learned")
    if figures["variant"] == "lungs hidden" and figures["hidden_fraction"] == 0:
        return "no lung pixel was found to hide: the images are the model's own input"
    return None


class LungOcclusion(AuditTest):
    """One verdict (or a note with one class only); the probabilities with the lungs hidden per image
    (``probability_lungs_hidden``)."""

    name = "lung occlusion"
    needs = ("bundle", "images", "lungs", "probability")
    order = 300
    stage = "lung occlusion"

    def run(self, context: AuditContext) -> AuditOutcome:
        bundle, is_positive, groups = context.bundle, context.is_positive, context.groups
        images, figures = occluded_inputs(context.audited)
        occluded = bundle.predict_probabilities(images)[:, bundle.positive_index]
        outcome = AuditOutcome(per_image={"probability_lungs_hidden": occluded})
        if len(np.unique(is_positive)) != 2:
            outcome.figures["occlusion_note"] = "one class only among the audited images: no AUC"
            return outcome
        seed, resamples = context.seed, context.resamples
        before = evaluate_scores(is_positive, context.probability, groups, resamples=resamples,
                                 seed=seed).metrics["roc_auc"]
        outcome.figures["occlusion"] = {**figures, "auc": before.value}
        reason = nothing_left(images, figures)
        if reason is not None:
            outcome.figures["occlusion"]["not_applicable"] = reason
            outcome.verdicts.append(occlusion_not_applicable(figures["variant"], reason))
            return outcome
        after = evaluate_scores(is_positive, occluded, groups, resamples=resamples, seed=seed).metrics["roc_auc"]
        outcome.figures["occlusion"].update(auc_occluded=after.value, auc_occluded_low=after.low,
                                            auc_occluded_high=after.high,
                                            separation_kept=separation_kept(before.value, after.value))
        outcome.verdicts.append(occlusion_verdict(before.value, after, context.thresholds.occlusion_auc,
                                                  figures["variant"]))
        return outcome


register(LungOcclusion())
