"""Pre-processing: the paper's equalize -> segment -> blurred lung mask -> [0, 1] pipeline run over a dataset,
and its cache. The pure image transforms live in :mod:`unveil.transforms` (re-exported here)."""

from unveil.transforms import (
    ApplyLungMask,
    EqualizeHistogram,
    NormalizeIntensity,
    Resize,
    apply_lung_mask,
    blur_mask,
    clahe,
    equalize_histogram,
    normalize_intensity,
    paper_pipeline,
    resize_image,
    resize_mask,
)

__all__ = ["ApplyLungMask", "EqualizeHistogram", "NormalizeIntensity", "Resize", "apply_lung_mask", "blur_mask",
           "clahe", "equalize_histogram", "normalize_intensity", "paper_pipeline", "resize_image", "resize_mask"]
