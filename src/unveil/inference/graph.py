"""The pre-processing of `unveil predict` as torch operations that export to ONNX, value for value.

Each function mirrors one numpy/Pillow/scipy step of :mod:`unveil.transforms` and
:mod:`unveil.segmentation.infer` in the same arithmetic (float32 where they store float32, float64 where
they compute in double), so that the exported pipeline (:mod:`unveil.inference.pipeline`) gives the
probabilities `unveil predict` gives:

- :func:`pil_resize`: Pillow's bilinear resize of a float ("F") image, antialiased when reducing
  (triangle filter widened by the scale, weights normalised per output pixel; horizontal pass first);
  written as two matrix products, so any input size exports.
- :func:`equalize`: MONAI ``HistogramNormalize`` as :func:`unveil.transforms.equalize_histogram` calls it
  (scikit-image's 256-bin histogram over [min, max], cumulative counts rescaled to [0, 1], ``np.interp`` at
  the bin centres), optionally with the histogram taken inside a mask.
- :func:`blur_matrix`: scipy's ``gaussian_filter`` (truncate 4, mode "reflect") as a constant matrix.
"""

from __future__ import annotations

import numpy as np
import torch

BINS = 256


def pil_weights(in_size: int, out_size: int) -> torch.Tensor:
    """Pillow's bilinear resampling coefficients (``precompute_coeffs``) as a dense (out, in) float64 matrix."""
    source = torch.arange(in_size, dtype=torch.float64)
    length = torch.ones_like(source).sum()  # the input length as a tensor (a symbolic size when exported)
    scale = length / out_size
    filterscale = torch.clamp(scale, min=1.0)
    support = filterscale  # the bilinear filter's support is 1, widened by the scale when reducing
    inverse = 1.0 / filterscale
    center = (torch.arange(out_size, dtype=torch.float64) + 0.5) * scale
    first = torch.clamp(torch.trunc(center - support + 0.5), min=0.0)
    last = torch.minimum(torch.trunc(center + support + 0.5), length)
    distance = (source[None, :] - center[:, None] + 0.5) * inverse
    window = (source[None, :] >= first[:, None]) & (source[None, :] < last[:, None])
    weights = torch.where(window, torch.clamp(1.0 - torch.abs(distance), min=0.0), torch.zeros_like(distance))
    total = weights.sum(dim=1, keepdim=True)
    return weights / torch.where(total == 0, torch.ones_like(total), total)


def pil_resize(image: torch.Tensor, size: int) -> torch.Tensor:
    """Resize N x 1 x H x W float32 images to ``size`` x ``size`` as :func:`unveil.transforms.resize_image` does
    (Pillow, mode "F", bilinear): each pass in float64, stored as float32 between passes."""
    across = pil_weights(image.shape[3], size)
    down = pil_weights(image.shape[2], size)
    horizontal = torch.matmul(image.double(), across.transpose(0, 1)).float()
    return torch.matmul(down, horizontal.double()).float()


def _edges(low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """``np.histogram``'s 257 bin edges over [low, high] in float32 (``np.linspace`` in float32; an empty
    range widened by 0.5 on each side, as scikit-image does)."""
    same = high == low
    low = torch.where(same, low - 0.5, low)
    high = torch.where(same, high + 0.5, high)
    step = (high - low) / BINS
    steps = torch.arange(BINS + 1, dtype=torch.float32)
    edges = steps[None, :] * step[:, None] + low[:, None]
    return torch.cat([edges[:, :BINS], high[:, None]], dim=1)


def _bin_index(values: torch.Tensor, points: torch.Tensor, guess: torch.Tensor, last: int) -> torch.Tensor:
    """The index j in [0, last] with points[j] <= value < points[j + 1] (0 below, ``last`` above), from a
    ``guess`` within one of it: numpy's own correction of its arithmetic bin index (``np.histogram``)."""
    index = guess.clamp(0, last)
    index = index - ((values < torch.gather(points, 1, index)) & (index > 0)).long()
    above = (values >= torch.gather(points, 1, (index + 1).clamp(max=points.shape[1] - 1))) & (index < last)
    return index + above.long()


def equalize(image: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Histogram equalization of N x 1 x H x W float32 images to [0, 1], value for value as
    :func:`unveil.transforms.equalize_histogram` (with ``mask``: the histogram of the pixels inside it, range
    included; an image whose mask is empty falls back to the whole image, as ``EqualizeHistogram`` does)."""
    flat = image.flatten(1)
    if mask is None:
        weight = torch.ones_like(flat)
    else:
        weight = (mask.flatten(1) > 0.5).float()
        weight = torch.where(weight.amax(dim=1, keepdim=True) > 0, weight, torch.ones_like(weight))
    inside = weight > 0
    big = torch.full_like(flat, float("inf"))
    low = torch.where(inside, flat, big).amin(dim=1)
    high = torch.where(inside, flat, -big).amax(dim=1)
    edges = _edges(low, high)
    position = (flat - edges[:, :1]) / (edges[:, -1:] - edges[:, :1]) * BINS  # in bins, within one of the truth
    bins = _bin_index(flat, edges, torch.floor(position).long(), BINS - 1)
    counts = torch.zeros_like(edges[:, :BINS]).scatter_add(1, bins, weight)
    cumulative = torch.cumsum(counts, dim=1)  # integer counts: exact in float32 below 2**24 pixels
    first, total = cumulative[:, :1], cumulative[:, -1:]
    levels = (cumulative - first) / (total - first)  # MONAI's rescale_array, in float32
    centers = ((edges[:, :-1] + edges[:, 1:]) / 2.0).double()
    levels = levels.double()
    slopes = (levels[:, 1:] - levels[:, :-1]) / (centers[:, 1:] - centers[:, :-1])
    values = flat.double()
    index = _bin_index(values, centers, torch.floor(position.double() - 0.5).long(), BINS - 2)
    start = torch.gather(centers, 1, index)
    ramp = torch.gather(slopes, 1, index) * (values - start) + torch.gather(levels, 1, index)
    result = torch.where(values < centers[:, :1], levels[:, :1], ramp)
    result = torch.where(values >= centers[:, -1:], levels[:, -1:], result)
    return result.float().reshape(image.shape)


def blur_matrix(size: int, sigma: float, truncate: float = 4.0) -> np.ndarray:
    """scipy's ``gaussian_filter1d(mode="reflect")`` along one axis of length ``size`` as a (size, size)
    float64 matrix: ``matrix @ column`` is the filtered column."""
    radius = int(truncate * float(sigma) + 0.5)
    offsets = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 / (sigma * sigma) * offsets.astype(np.float64) ** 2)
    kernel = kernel / kernel.sum()
    matrix = np.zeros((size, size), dtype=np.float64)
    period = 2 * size
    for row in range(size):
        source = np.mod(row + offsets, period)  # "reflect" (d c b a | a b c d) folds with period 2 * size
        source = np.where(source >= size, period - 1 - source, source)
        np.add.at(matrix[row], source, kernel)
    return matrix


def blur(mask: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """Blur N x 1 x S x S float32 masks with a :func:`blur_matrix` (axis 0 then axis 1, float32 between), clip
    to [0, 1]: :func:`unveil.transforms.blur_mask`."""
    rows = torch.matmul(matrix, mask.double()).float()
    both = torch.matmul(rows.double(), matrix.transpose(0, 1)).float()
    return torch.clamp(both, 0.0, 1.0)


def min_max(image: torch.Tensor) -> torch.Tensor:
    """:func:`unveil.transforms.normalize_intensity` per image: min-max to [0, 1], a constant image to zeros."""
    low = image.amin(dim=(2, 3), keepdim=True)
    high = image.amax(dim=(2, 3), keepdim=True)
    span = high - low
    scaled = (image - low) / torch.where(span > 0, span, torch.ones_like(span))
    return torch.where(span > 0, scaled, torch.zeros_like(image))
