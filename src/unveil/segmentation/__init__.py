"""Lung segmentation: a small U-Net (MONAI), its training, post-processing and the shipped model."""

from unveil.segmentation.infer import LungSegmenter, SegmenterError, default_model_path

__all__ = ["LungSegmenter", "SegmenterError", "default_model_path"]
