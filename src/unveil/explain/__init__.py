"""Explaining a model's decisions: Grad-CAM saliency maps and their overlays, used by the audit and by
``unveil predict``. (Encoder features, which the out-of-distribution check fitted at training also needs, are
:func:`unveil.training.loop.encoder_features`.)"""

from unveil.explain.saliency import OVERLAY_SIDE, display_image, gradcam_maps, save_overlay

__all__ = ["OVERLAY_SIDE", "display_image", "gradcam_maps", "save_overlay"]
