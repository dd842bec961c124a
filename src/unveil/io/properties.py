"""File-level properties of a radiograph, read from its header only: what the acquisition and export left behind.

A set pooled from two hospitals often tells them apart by its files alone (one exports 224 x 224 RGB JPEGs, the
other 16-bit PNGs of 3000 px), so the audit asks how well the label is predicted from these properties
(:mod:`unveil.audit.fingerprint`). Pixels are never decoded. A DICOM file is read through
:func:`~unveil.io.read_dicom_header` with the technical elements of :data:`DICOM_PROPERTY_TAGS` only: no patient
field is ever parsed. JPEG quality is estimated from the luminance quantisation table (IJG scaling).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import numpy as np

from unveil.io.decoding import ImageReadError, describe
from unveil.io.dicom import has_dicom_preamble, read_dicom_header
from unveil.io.images import _PILLOW_ERRORS, _open_unchecked, _pillow_bit_depth

#: the only DICOM elements read for the properties (technical ones; never a patient field)
DICOM_PROPERTY_TAGS = ("Rows", "Columns", "BitsStored", "BitsAllocated", "PhotometricInterpretation", "Modality",
                       "Manufacturer", "PixelSpacing", "ImagerPixelSpacing")

#: the IJG (libjpeg) luminance quantisation table at quality 50, in natural (row-major) order
IJG_LUMINANCE = np.array([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99])


@dataclass(frozen=True)
class FileProperties:
    """What one image file says about itself, before any pixel is decoded (None: the file does not say)."""

    format: str  # "JPEG", "PNG", "DICOM", ... (from the content)
    width: int
    height: int
    bit_depth: int  # bits per sample as stored
    colour_mode: str  # Pillow mode ("L", "RGB", "I;16") or DICOM PhotometricInterpretation
    file_size: int  # bytes
    jpeg_quality: int | None = None  # estimated from the quantisation tables
    manufacturer: str | None = None  # DICOM Manufacturer
    modality: str | None = None  # DICOM Modality
    pixel_spacing: float | None = None  # mm, DICOM PixelSpacing (else ImagerPixelSpacing), first value


def ijg_table(quality: int) -> np.ndarray:
    """The luminance table libjpeg writes at ``quality`` (1-100)."""
    scale = 5000 / quality if quality < 50 else 200 - 2 * quality
    return np.clip((IJG_LUMINANCE * scale + 50) // 100, 1, 255)


def jpeg_quality(luminance: list[int] | np.ndarray) -> int:
    """The IJG quality (1-100) whose luminance table is closest to ``luminance`` (64 values, natural order):
    exact for files written by libjpeg-based encoders, the nearest equivalent for others."""
    table = np.asarray(luminance, dtype=float)
    if table.shape != (64,):
        raise ValueError(f"a quantisation table has 64 values; got {table.shape}")
    errors = [np.abs(ijg_table(q) - table).sum() for q in range(1, 101)]
    return int(np.argmin(errors)) + 1


def _first_number(text: str | None) -> float | None:
    found = re.search(r"[-+]?\d*\.?\d+(?:[eE][-+]?\d+)?", text or "")
    return float(found.group()) if found else None


def _dicom_properties(path: str, size: int) -> FileProperties:
    """The properties of a DICOM file, from :data:`DICOM_PROPERTY_TAGS` only."""
    tags = read_dicom_header(path, DICOM_PROPERTY_TAGS)
    spacing = _first_number(tags["PixelSpacing"]) or _first_number(tags["ImagerPixelSpacing"])
    return FileProperties(
        format="DICOM", width=int(_first_number(tags["Columns"]) or 0), height=int(_first_number(tags["Rows"]) or 0),
        bit_depth=int(_first_number(tags["BitsStored"]) or _first_number(tags["BitsAllocated"]) or 0),
        colour_mode=(tags["PhotometricInterpretation"] or "unknown").upper(), file_size=size,
        manufacturer=tags["Manufacturer"], modality=tags["Modality"], pixel_spacing=spacing)


def read_file_properties(path: str | os.PathLike[str]) -> FileProperties:
    """The :class:`FileProperties` of one image file, from its header (the format from its content).
    Raises :class:`ImageReadError` naming the file when it cannot be opened or is no image Pillow or pydicom reads."""
    name = os.fsdecode(path)
    try:
        # os-level on the name as given: Path("") would be the current folder, not a missing file
        size = os.stat(name).st_size  # noqa: PTH116
    except OSError as exc:
        raise ImageReadError(name, f"cannot be opened ({exc.strerror or type(exc).__name__})") from None
    if has_dicom_preamble(name):
        return _dicom_properties(name, size)
    try:
        # os-level on the name as given: Path("") would be the current folder, not a missing file
        with open(name, "rb") as handle, _open_unchecked(handle) as image:  # noqa: PTH123
            quality = None
            tables = getattr(image, "quantization", None)  # JPEG only
            if image.format == "JPEG" and tables:
                quality = jpeg_quality(tables[min(tables)])
            return FileProperties(format=image.format or "unknown", width=int(image.size[0]),
                                  height=int(image.size[1]), bit_depth=_pillow_bit_depth(image.mode),
                                  colour_mode=image.mode, file_size=size, jpeg_quality=quality)
    except _PILLOW_ERRORS as exc:
        raise ImageReadError(name, f"no image header could be read ({describe(exc)})") from None
