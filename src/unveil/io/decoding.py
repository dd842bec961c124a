"""What every image decoder of :mod:`unveil.io` shares: the result types, the one error, the pixel limit
and the conversion of decoded values to gray float32 in [0, 1].

The PNG/JPEG/Pillow reader lives in :mod:`unveil.io.images` (with :func:`~unveil.io.images.read_image`,
the entry point) and the DICOM reader in :mod:`unveil.io.dicom`; both build on this module.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from unveil.errors import UnveilError

#: Largest width * height decoded by default: a guard against decompression bombs (50 M pixels, e.g. 7000 x 7000;
#: the largest radiograph detectors give about 4300 x 4300). ``--max-pixels`` of every CLI command changes it.
DEFAULT_MAX_PIXELS: int = 50_000_000

#: ITU-R 601-2 luma weights, the same as Pillow's ``convert("L")``, applied in float.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


class ImageReadError(UnveilError):
    """A file could not be read as an image; ``path`` is the file, ``problem`` says why in plain words."""

    def __init__(self, path: str, problem: str) -> None:
        # args = (path, problem) keeps the exception picklable (e.g. across DataLoader workers).
        super().__init__(path, problem)
        self.path = path
        self.problem = problem

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}"


@dataclass(frozen=True)
class ImageInfo:
    """Technical description of a source image (never any patient field)."""

    path: str
    format: str  # "PNG" | "JPEG" | "DICOM" | other Pillow format name
    height: int
    width: int
    bit_depth: int  # bits per sample as stored (DICOM BitsStored)
    photometric: str  # Pillow mode ("L", "I;16", "RGB", ...) or DICOM PhotometricInterpretation
    view: str | None  # DICOM ViewPosition ("PA", "AP", ...) if present


@dataclass(frozen=True)
class LoadedImage:
    """Gray pixels (float32, shape (H, W), 0 = black, 1 = white) plus what the file said about them."""

    pixels: np.ndarray
    info: ImageInfo
    notes: tuple[str, ...] = ()  # what the reader ignored in the file, and why (e.g. a header that would blank it)


def describe(exc: BaseException) -> str:
    """One line naming a decoder's exception: its type and message."""
    text = " ".join(str(exc).split())  # one line, even for pydicom's multi-line plugin reports
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def check_pixels(name: str, width: int, height: int, max_pixels: int | None) -> None:
    """Refuse images whose header announces more than ``max_pixels`` pixels (decompression bombs)."""
    if max_pixels is not None and width * height > max_pixels:
        raise ImageReadError(
            name,
            f"image is {width}x{height} = {width * height:,} pixels, over the pixel limit of {max_pixels:,} "
            "(a guard against decompression bombs); if the file is trusted, raise the limit with "
            "read_image(..., max_pixels=N) or disable it with max_pixels=None",
        )


def luminance(rgb: np.ndarray) -> np.ndarray:
    """Weighted sum over the last axis (R, G, B), in float32."""
    return rgb[..., :3].astype(np.float32) @ _LUMA


def min_max(values: np.ndarray) -> np.ndarray:
    """Stretch finite values to [0, 1]; a constant image becomes all zeros."""
    values = values.astype(np.float32, copy=False)
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return np.zeros(values.shape, dtype=np.float32)
    low, high = float(finite.min()), float(finite.max())
    if high <= low:
        return np.zeros(values.shape, dtype=np.float32)
    return (values - np.float32(low)) / np.float32(high - low)


def finish(gray: np.ndarray) -> np.ndarray:
    """float32, C-contiguous, NaN -> 0, clipped to [0, 1]."""
    gray = np.nan_to_num(np.asarray(gray, dtype=np.float32), nan=0.0, posinf=1.0, neginf=0.0)
    return np.ascontiguousarray(np.clip(gray, 0.0, 1.0), dtype=np.float32)
