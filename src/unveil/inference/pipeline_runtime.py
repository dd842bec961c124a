"""Run an exported unveil pipeline: a raw gray radiograph -> COVID+ probability, with numpy and onnxruntime only.

This file is copied, unchanged, into every folder ``unveil export --format pipeline`` writes (as
``preprocess.py``); it imports nothing from unveil. The chain is that of ``unveil predict``:

1. ``lungs.onnx``: the image (1 x 1 x H x W float32 in [0, 1], any H and W) resized to the model's size
   (Pillow's bilinear), the lung U-Net on its own equalized input, the lung probability resized back and
   thresholded: the resized image and the raw lung mask.
2. :func:`clean_lung_mask` (here, numpy): the two largest 8-connected components (none under 5 % of the
   largest), holes filled, as ``unveil.segmentation.postprocess`` does with scipy. Connected components
   have no ONNX operator, hence this step in numpy.
3. ``classifier.onnx``: histogram equalization, the mask blurred and applied, min-max to [0, 1], rounding to
   8 bits (as predict stores images), the classifier and softmax: class probabilities.

Usage::

    import preprocess
    pipeline = preprocess.Pipeline("path/to/exported/folder")
    probability = pipeline.probability(gray)   # gray: H x W float32 in [0, 1]
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

_EIGHT = [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]
_FOUR = [(-1, 0), (0, -1), (0, 1), (1, 0)]


def label_components(mask: np.ndarray, connectivity: int = 8) -> tuple[np.ndarray, int]:
    """Connected components of a boolean 2-D mask, numbered 1..count in the order of their first pixel in
    raster order (``scipy.ndimage.label``'s numbering); 0 is background."""
    mask = np.asarray(mask, dtype=bool)
    height, width = mask.shape
    index = np.arange(1, mask.size + 1, dtype=np.int64).reshape(mask.shape)
    labels = np.where(mask, index, 0)
    shifts = _EIGHT if connectivity == 8 else _FOUR
    while True:  # every pixel takes its component's largest pixel number: propagation plus pointer jumping
        padded = np.pad(labels, 1)
        spread = labels.copy()
        for dy, dx in shifts:
            np.maximum(spread, padded[1 + dy:1 + dy + height, 1 + dx:1 + dx + width], out=spread)
        spread = np.where(mask, spread, 0)
        flat = spread.ravel()
        jumped = np.where(flat > 0, flat[np.maximum(flat - 1, 0)], 0).reshape(mask.shape)
        spread = np.maximum(spread, jumped)
        if np.array_equal(spread, labels):
            break
        labels = spread
    roots, first = np.unique(labels[mask], return_index=True)
    raster = np.flatnonzero(mask.ravel())[first]  # each component's first pixel in raster order
    order = roots[np.argsort(raster)]
    numbering = np.zeros(mask.size + 1, dtype=np.int64)
    numbering[order] = np.arange(1, len(order) + 1)
    return numbering[labels], len(order)


def keep_largest_components(mask: np.ndarray, count: int = 2, min_fraction: float = 0.05) -> np.ndarray:
    """The ``count`` largest 8-connected components, none under ``min_fraction`` of the largest."""
    mask = np.asarray(mask, dtype=bool)
    labels, found = label_components(mask, 8)
    if found <= 1:
        return mask
    sizes = np.bincount(labels.ravel())[1:]
    order = np.argsort(sizes)[::-1][:count]
    keep = [index + 1 for index in order if sizes[index] >= min_fraction * sizes[order[0]]]
    return np.isin(labels, keep)


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill every background region not 4-connected to the image border (``scipy.ndimage.binary_fill_holes``)."""
    mask = np.asarray(mask, dtype=bool)
    labels, _ = label_components(~mask, 4)
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    outside = np.isin(labels, border[border > 0])
    return mask | (~mask & ~outside)


def clean_lung_mask(mask: np.ndarray) -> np.ndarray:
    """The lung mask's post-processing: two largest components, holes filled."""
    return fill_holes(keep_largest_components(mask))


class Pipeline:
    """An exported folder's two ONNX models and this post-processing, as one call per image."""

    def __init__(self, folder: str | Path, providers: list[str] | None = None) -> None:
        import onnxruntime

        self.folder = Path(folder)
        self.description: dict[str, Any] = json.loads((self.folder / "pipeline.json").read_text(encoding="utf-8"))
        files = self.description["files"]
        providers = providers or ["CPUExecutionProvider"]
        self.lungs = onnxruntime.InferenceSession(str(self.folder / files["lungs"]), providers=providers)
        self.classifier = onnxruntime.InferenceSession(str(self.folder / files["classifier"]), providers=providers)
        self.positive_index = int(self.description["output"]["positive_index"])

    def run(self, image: np.ndarray) -> dict[str, np.ndarray]:
        """Class probabilities, the resized image and the cleaned lung mask of one H x W image in [0, 1]."""
        image = np.asarray(image, dtype=np.float32)
        if image.ndim != 2 or not np.isfinite(image).all() or image.min() < 0 or image.max() > 1:
            raise ValueError("expected one 2-D gray image, float32 in [0, 1]")
        resized, raw = self.lungs.run(None, {"image": image[None, None]})
        mask = clean_lung_mask(raw[0, 0])
        probabilities = self.classifier.run(None, {"image": resized,
                                                   "lung_mask": mask[None, None].astype(np.float32)})[0]
        return {"probabilities": probabilities[0], "image": resized[0, 0], "lung_mask": mask}

    def probability(self, image: np.ndarray) -> float:
        """The positive class's probability (decide with ``pipeline.json``'s threshold: covid+ iff p >= it)."""
        return float(self.run(image)["probabilities"][self.positive_index])
