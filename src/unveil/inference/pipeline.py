"""The whole chain of `unveil predict` as two exportable torch modules (lung stage, classifier stage).

Between them lies the lung mask's connected-component clean-up, which no ONNX operator expresses: it runs in
numpy (:mod:`unveil.inference.pipeline_runtime`, shipped in the export folder as ``preprocess.py``). Every
other step is in the graphs, in the arithmetic of the numpy/Pillow/scipy code it replaces
(:mod:`unveil.inference.graph`). :func:`reference_probabilities` is `unveil predict`'s own path on arrays, the
yardstick the export is checked against.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from unveil.inference.graph import blur, blur_matrix, equalize, min_max, pil_resize
from unveil.inference.predict import Predictor
from unveil.models.classifier import CxrClassifier
from unveil.segmentation.infer import INPUT_MEAN, INPUT_STD
from unveil.synth.phantom import render_anatomy, sample_anatomy
from unveil.training.loop import encoder_features, probabilities_from_features
from unveil.transforms import resize_image


class LungStage(nn.Module):
    """Raw N x 1 x H x W image in [0, 1] -> (image resized to S x S, raw lung mask at S x S): the resize of
    `unveil predict`, the lung U-Net on its resized and equalized view, its probability resized back and
    thresholded (:meth:`unveil.segmentation.LungSegmenter.segment_batch` before post-processing)."""

    def __init__(self, network: nn.Module, *, size: int, lung_size: int, equalize_input: bool, channel: int,
                 threshold: float) -> None:
        super().__init__()
        self.network = network
        self.size, self.lung_size, self.channel = size, lung_size, channel
        self.equalize_input, self.threshold = equalize_input, threshold

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        resized = pil_resize(image, self.size)
        view = pil_resize(resized, self.lung_size)
        if self.equalize_input:
            view = equalize(view)
        logits = self.network((view - INPUT_MEAN) / INPUT_STD)
        probability = torch.sigmoid(logits.float())[:, self.channel:self.channel + 1]
        return resized, pil_resize(probability, self.size) >= self.threshold


class ClassifierStage(nn.Module):
    """(S x S image, cleaned lung mask) -> class probabilities: the bundle's equalization, the mask blurred and
    applied, min-max to [0, 1], rounding to 8 bits, normalization, the classifier and softmax."""

    blur: torch.Tensor  # a registered buffer (exported with the graph)

    def __init__(self, model: CxrClassifier, *, size: int, equalization: str, apply_mask: bool, blur_radius: float,
                 mean: float, std: float) -> None:
        super().__init__()
        if equalization not in ("global", "lungs", "none"):
            raise ValueError(f"equalization {equalization!r} has no exported form (global, lungs or none)")
        self.model = model
        self.equalization, self.apply_mask, self.blur_radius = equalization, apply_mask, blur_radius
        self.register_buffer("blur", torch.from_numpy(blur_matrix(size, blur_radius)) if blur_radius > 0
                             else torch.eye(size, dtype=torch.float64))
        self.mean, self.std = float(mean), float(std)

    def forward(self, image: torch.Tensor, lung_mask: torch.Tensor) -> torch.Tensor:
        mask = (lung_mask > 0.5).float()
        if self.equalization == "global":
            image = equalize(image)
        elif self.equalization == "lungs":
            image = equalize(image, mask)
        if self.apply_mask:
            image = image * (blur(mask, self.blur) if self.blur_radius > 0 else mask)
        stored = torch.clamp(torch.round(min_max(image) * 255.0), 0.0, 255.0) / 255.0  # predict's uint8 images
        features = self.model.features((stored - self.mean) / self.std)
        return torch.softmax(self.model.head(features).float(), dim=1)


def build_stages(predictor: Predictor) -> tuple[LungStage, ClassifierStage]:
    """The two modules of ``predictor``'s chain (its bundle, lung model, convention and settings), in eval mode."""
    segmenter, bundle, settings = predictor.segmenter, predictor.bundle, predictor.settings
    lungs = LungStage(segmenter.network.float().eval(), size=bundle.image_size, lung_size=segmenter.input_size,
                      equalize_input=segmenter.equalize, channel=segmenter.channel(settings.convention),
                      threshold=segmenter.threshold)
    mean, std = bundle.normalization
    classifier = ClassifierStage(bundle.model.float().eval(), size=bundle.image_size, equalization=settings.equalize,
                                 apply_mask=settings.mask != "none", blur_radius=float(settings.blur_radius),
                                 mean=mean, std=std)
    return lungs.eval(), classifier.eval()


def reference_probabilities(predictor: Predictor, images: Sequence[np.ndarray]) -> np.ndarray:
    """Class probabilities (N x classes) of raw gray images in [0, 1] along `unveil predict`'s own path."""
    resized = [resize_image(np.asarray(image, dtype=np.float32), predictor.bundle.image_size) for image in images]
    array, _ = predictor.preprocess(resized)
    mean, std = predictor.bundle.normalization
    features = encoder_features(predictor.bundle.model, array, mean, std)
    return probabilities_from_features(predictor.bundle.model, features)


def check_images(count: int = 4, seed: int = 0) -> list[np.ndarray]:
    """Synthetic radiographs (the phantom of :mod:`unveil.synth`) of varied sizes and aspect ratios, to verify an
    export when no real images are given."""
    rng = np.random.default_rng(seed)
    images = []
    for index in range(count):
        side = (300, 517, 181, 420)[index % 4]
        image, _ = render_anatomy(sample_anatomy(rng), side, rng)
        images.append(image[: side - (index % 3) * side // 10])  # some not square
    return images
