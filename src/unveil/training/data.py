"""Image sets for training: pre-processed images as one uint8 array, augmented on whole batches.

The paper's loop decodes every image with PIL and transforms it one at a time, every epoch. Here the
pre-processing cache is decoded once into one uint8 array (N x 1 x S x S: 64 KiB per image at 256 px),
and the rigid augmentation runs on a whole batch with one ``affine_grid``/``grid_sample`` call, on the
training device. That is what makes the loop fast.

Training reads that array as a memory map of a file in the cache (``load_image_set(..., cache=)``):
built once per image set, image by image, and shared by later runs and by DDP ranks through the OS
page cache; a batch copies only its own images. So resident memory does not grow with the data set
(26,684 RSNA images at 512 px are 7 GB of pixels). Without ``cache`` the set is decoded into memory
(evaluation and audit, whose test sets are small); both give the same pixels.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image

from unveil.errors import UnveilError
from unveil.preprocess.cache import cached_uint8, image_array


class TrainingDataError(UnveilError, ValueError):
    """The data given for training cannot be used (the message says why)."""


@dataclass
class ImageSet:
    """Images (uint8, N x 1 x S x S), integer labels and the records they come from.

    ``images`` may be a read-only memory map of a cache file (see :func:`load_image_set`): index it (a
    batch is a copy) or ``clone()`` it; never write into it in place."""

    images: torch.Tensor
    labels: torch.Tensor
    records: pd.DataFrame
    classes: tuple[str, ...]
    skipped: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def size(self) -> int:
        return int(self.images.shape[-1])

    def class_counts(self) -> dict[str, int]:
        counts = torch.bincount(self.labels, minlength=len(self.classes)).tolist()
        return {name: int(count) for name, count in zip(self.classes, counts, strict=True)}


def load_image_set(records: pd.DataFrame, manifest: pd.DataFrame, labels: pd.Series | np.ndarray,
                   classes: tuple[str, ...], size: int | None = None, *,
                   cache: str | Path | None = None) -> ImageSet:
    """The cached pre-processed images of ``records`` (joined to the cache ``manifest`` by record_id),
    as uint8 at ``size`` (default: the images' own size, which must then be the same for all).

    With ``cache`` (the pre-processing cache folder), the images are read through a memory-mapped
    array file in ``<cache>/arrays/`` (built on first use; see :func:`unveil.preprocess.cache.image_array`);
    without, they are decoded into memory. Records whose pre-processing failed are skipped and listed."""
    labels = np.asarray(labels)
    if len(labels) != len(records):
        raise TrainingDataError(f"{len(labels)} labels for {len(records)} records")
    cached = manifest.set_index("record_id")
    keep, skipped, paths = [], [], []
    for position, record_id in enumerate(records["record_id"]):
        if record_id not in cached.index:
            skipped.append(f"{record_id}: not in the pre-processing manifest")
            continue
        row = cached.loc[record_id]
        if row["status"] == "failed" or pd.isna(row["cache_path"]):
            skipped.append(str(row["error"]))
            continue
        paths.append(str(row["cache_path"]))
        keep.append(position)
    if not paths:
        raise TrainingDataError("no usable image: " + ("; ".join(skipped[:3]) or "the record table is empty"))
    if size is None:
        size = _common_size(paths)
    if cache is not None:
        with warnings.catch_warnings():  # read-only on purpose: the map is the cache file
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            images = torch.from_numpy(image_array(cache, paths, size))
    else:
        array = np.empty((len(paths), 1, size, size), dtype=np.uint8)
        for index, path in enumerate(paths):
            array[index, 0] = cached_uint8(path, size)
        images = torch.from_numpy(array)
    return ImageSet(images, torch.as_tensor(labels[keep], dtype=torch.int64),
                    records.iloc[keep].reset_index(drop=True), tuple(classes), skipped)


def _common_size(paths: list[str]) -> int:
    """The side of the cached images (read from their headers); an error when they differ or are not square."""
    shapes = set()
    for path in paths:
        with Image.open(path) as image:
            shapes.add((image.height, image.width))
    if len(shapes) > 1 or next(iter(shapes))[0] != next(iter(shapes))[1]:
        raise TrainingDataError(f"cached images have different or non-square sizes {sorted(shapes)}; pass size=")
    return next(iter(shapes))[0]


def fit_normalization(images: torch.Tensor) -> tuple[float, float]:
    """Mean and standard deviation of the [0, 1] intensities of ``images`` (uint8), computed in
    chunks so memory stays flat. Fitted on the training split only."""
    total, total_sq, count = 0.0, 0.0, 0
    for chunk in torch.split(images, 256):
        values = chunk.to(torch.float64) / 255.0
        total += float(values.sum())
        total_sq += float((values * values).sum())
        count += values.numel()
    mean = total / count
    std = math.sqrt(max(total_sq / count - mean * mean, 0.0))
    return mean, max(std, 1e-6)


def to_model_input(images: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """uint8 [0, 255] -> normalized float32."""
    return (images.float() / 255.0 - mean) / std


def random_rigid_affine(batch: int, generator: torch.Generator, rotation_degrees: float, translate: float,
                        hflip: bool) -> torch.Tensor:
    """Per-sample 2x3 affine matrices (normalized coordinates): rotation in [-r, r] degrees,
    translation in [-t, t] of the image size, optional horizontal flip with probability 0.5.
    Drawn on the CPU from ``generator`` so a seed gives the same augmentation on any device."""
    angles = (torch.rand(batch, generator=generator, dtype=torch.float64) * 2 - 1) * math.radians(rotation_degrees)
    shifts = (torch.rand(batch, 2, generator=generator, dtype=torch.float64) * 2 - 1) * translate * 2
    flips = torch.ones(batch, dtype=torch.float64)
    if hflip:
        flips = torch.where(torch.rand(batch, generator=generator) < 0.5, -1.0, 1.0).to(torch.float64)
    cos, sin = torch.cos(angles), torch.sin(angles)
    theta = torch.zeros(batch, 2, 3, dtype=torch.float64)
    theta[:, 0, 0], theta[:, 0, 1], theta[:, 0, 2] = cos * flips, -sin, shifts[:, 0]
    theta[:, 1, 0], theta[:, 1, 1], theta[:, 1, 2] = sin * flips, cos, shifts[:, 1]
    return theta.float()


def apply_affine(images: torch.Tensor, theta: torch.Tensor, fill: float) -> torch.Tensor:
    """Warp a float batch with ``theta`` (bilinear); pixels from outside the image get ``fill``."""
    grid = F.affine_grid(theta.to(images.device), list(images.shape), align_corners=False)
    shifted = images - fill  # zero padding of (x - fill) == padding x with fill
    return F.grid_sample(shifted, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + fill

