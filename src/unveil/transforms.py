"""Small, composable pre-processing transforms for 2-D radiographs and their lung masks.

Each transform is a callable on a dictionary ``{"image": float32 HxW in [0, 1], "mask": ...}``
(the MONAI dictionary convention), so they chain with :class:`monai.transforms.Compose`; the
array functions they wrap are usable on their own. The paper's pipeline is
:func:`paper_pipeline`: histogram equalization, lung mask blurred with a 3-pixel radius and
applied, intensities to [0, 1].

Example::

    from monai.transforms import Compose
    pipeline = Compose([Resize(256), EqualizeHistogram(), ApplyLungMask(blur_radius=3), NormalizeIntensity()])
    out = pipeline({"image": image, "mask": mask})
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from monai.transforms import Compose, HistogramNormalize
from PIL import Image
from scipy.ndimage import gaussian_filter
from skimage.exposure import equalize_adapthist

Sample = dict[str, Any]


def equalize_histogram(image: np.ndarray, mask: np.ndarray | None = None, *, bins: int = 256) -> np.ndarray:
    """Global histogram equalization to [0, 1] (MONAI ``HistogramNormalize``); with ``mask`` the
    histogram is computed inside the mask only (e.g. the lungs) and applied to the whole image."""
    transform = HistogramNormalize(num_bins=bins, min=0, max=1,
                                   mask=None if mask is None else np.asarray(mask, dtype=bool))
    return np.asarray(transform(np.asarray(image, dtype=np.float32)), dtype=np.float32)


def clahe(image: np.ndarray, *, clip_limit: float = 0.01, tile_fraction: float = 1 / 8) -> np.ndarray:
    """Contrast-limited adaptive histogram equalization (scikit-image), result in [0, 1]."""
    kernel = max(8, int(round(min(image.shape) * tile_fraction)))
    return equalize_adapthist(np.clip(image, 0.0, 1.0), kernel_size=kernel, clip_limit=clip_limit).astype(np.float32)


def blur_mask(mask: np.ndarray, radius: float) -> np.ndarray:
    """Soften a binary mask's edge with a Gaussian of standard deviation ``radius`` pixels, in [0, 1]."""
    soft = np.asarray(mask, dtype=np.float32)
    if soft.max() > 1:
        soft = soft / 255.0
    return np.clip(gaussian_filter(soft, sigma=radius), 0.0, 1.0) if radius > 0 else soft


def apply_lung_mask(image: np.ndarray, mask: np.ndarray, *, blur_radius: float = 3.0) -> np.ndarray:
    """Keep the lungs: multiply the image by the (blurred) mask, as the paper does (radius 3 px)."""
    return (np.asarray(image, dtype=np.float32) * blur_mask(mask, blur_radius)).astype(np.float32)


def normalize_intensity(image: np.ndarray) -> np.ndarray:
    """Min-max to [0, 1]; a constant image becomes zeros."""
    image = np.asarray(image, dtype=np.float32)
    low, high = float(image.min()), float(image.max())
    return np.zeros_like(image) if high <= low else (image - low) / (high - low)


def resize_image(image: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a float image to ``size`` (side, or (height, width))."""
    height, width = (size, size) if isinstance(size, int) else size
    if image.shape == (height, width):
        return np.asarray(image, dtype=np.float32)
    resized = Image.fromarray(np.asarray(image, dtype=np.float32), mode="F").resize((width, height),
                                                                                   Image.Resampling.BILINEAR)
    return np.array(resized, dtype=np.float32)  # a writable copy (PIL buffers are read-only)


def resize_mask(mask: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Resize a binary mask (bilinear on [0, 1], then threshold at 0.5)."""
    return resize_image(np.asarray(mask, dtype=np.float32) / (255.0 if np.max(mask) > 1 else 1.0), size) >= 0.5


@dataclass(frozen=True)
class Resize:
    """Resize ``image`` (bilinear) and ``mask`` (if present) to ``size``."""

    size: int | tuple[int, int]

    def __call__(self, sample: Sample) -> Sample:
        out = dict(sample, image=resize_image(sample["image"], self.size))
        if sample.get("mask") is not None:
            out["mask"] = resize_mask(sample["mask"], self.size)
        return out


@dataclass(frozen=True)
class EqualizeHistogram:
    """Global histogram equalization; ``within_mask`` computes the histogram in the lungs only;
    ``adaptive`` uses CLAHE instead."""

    within_mask: bool = False
    adaptive: bool = False
    bins: int = 256

    def __call__(self, sample: Sample) -> Sample:
        if self.adaptive:
            return dict(sample, image=clahe(sample["image"]))
        mask = sample.get("mask") if self.within_mask else None
        if self.within_mask and (mask is None or not np.asarray(mask).any()):  # np.any(tensor) is a TypeError
            mask = None  # no lungs found: fall back to the whole image rather than fail
        return dict(sample, image=equalize_histogram(sample["image"], mask, bins=self.bins))


@dataclass(frozen=True)
class ApplyLungMask:
    """Multiply the image by the lung mask blurred with ``blur_radius`` pixels."""

    blur_radius: float = 3.0

    def __call__(self, sample: Sample) -> Sample:
        if sample.get("mask") is None:
            raise ValueError("ApplyLungMask needs a 'mask' in the sample (segment the lungs first)")
        return dict(sample, image=apply_lung_mask(sample["image"], sample["mask"], blur_radius=self.blur_radius))


@dataclass(frozen=True)
class NormalizeIntensity:
    """Min-max the image to [0, 1]."""

    def __call__(self, sample: Sample) -> Sample:
        return dict(sample, image=normalize_intensity(sample["image"]))


def paper_pipeline(size: int = 256, *, blur_radius: float = 3.0, equalize: str = "global",
                   mask: bool = True) -> Compose:
    """The paper's pre-processing as one callable ``monai.transforms.Compose`` of the transforms above.

    ``equalize``: "global", "lungs" (histogram of the lungs only), "clahe" or "none";
    ``mask``: apply the blurred lung mask (needs ``sample["mask"]``). Example::

        image = resize_image(read_image(path).pixels, 128)
        out = paper_pipeline(128)({"image": image, "mask": LungSegmenter.load().segment(image)})
        out["image"]  # float32 128 x 128 in [0, 1]
    """
    steps: list = [Resize(size)]
    if equalize != "none":
        if equalize not in ("global", "lungs", "clahe"):
            raise ValueError(f"equalize must be global, lungs, clahe or none, got {equalize!r}")
        steps.append(EqualizeHistogram(within_mask=equalize == "lungs", adaptive=equalize == "clahe"))
    if mask:
        steps.append(ApplyLungMask(blur_radius=blur_radius))
    steps.append(NormalizeIntensity())
    return Compose(steps)
