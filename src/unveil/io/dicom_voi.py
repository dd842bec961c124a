"""DICOM stored values to gray in [0, 1]: the modality LUT, then the VOI LUT or window (else min-max), then the
MONOCHROME1 inversion; palette and colour images by luminance (pydicom's LUT functions do the lookups)."""

from __future__ import annotations

import logging

import numpy as np
import pydicom
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi, apply_voi_lut, apply_windowing

from unveil.io.decoding import (
    ImageReadError,
    describe,
    finish,
    luminance,
    min_max,
)

logger = logging.getLogger("unveil.io.dicom")  # the reader's logger: one name for every DICOM message


def dicom_to_gray(stored: np.ndarray, ds: pydicom.Dataset, photometric: str, name: str) -> np.ndarray:
    """Stored values -> [0, 1] gray: modality LUT, then VOI LUT / window or min-max, then MONOCHROME1 inversion."""
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(stored, ds)
        return finish(luminance(rgb) / np.float32(np.iinfo(rgb.dtype).max))
    if stored.ndim == 3:  # colour (pixel_array already converts YBR to RGB)
        bits = int(ds.get("BitsStored") or 8)
        return finish(luminance(stored) / np.float32(2**bits - 1))
    if stored.ndim != 2:
        raise ImageReadError(name, f"unexpected DICOM pixel array shape {stored.shape}; expected one 2-D image")

    values = apply_modality_lut(stored, ds)
    gray = _apply_voi(values, ds, name)
    if gray is None:
        gray = min_max(values)
    if photometric == "MONOCHROME1":
        gray = 1.0 - np.clip(gray, 0.0, 1.0)
    return finish(gray)


def _has_voi_lut(ds: pydicom.Dataset) -> bool:
    """Same test pydicom's apply_voi_lut uses for a usable VOI LUT Sequence."""
    items = ds.get("VOILUTSequence")
    return bool(items) and None not in (items[0].get("LUTDescriptor"), items[0].get("LUTData"))


def _apply_voi(values: np.ndarray, ds: pydicom.Dataset, name: str) -> np.ndarray | None:
    """Apply the file's VOI LUT or window and map its output range to [0, 1]; ``None`` if there is none."""
    has_window = ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None
    if not (_has_voi_lut(ds) or has_window):
        return None
    try:
        low, high, out = _voi_lut(values, ds) if _has_voi_lut(ds) else _window(values, ds)
    except ValueError as exc:  # pydicom's documented error for an unusable LUT descriptor or window
        logger.warning("%s: ignoring unusable VOI LUT / window (%s); using min-max", name, describe(exc))
        return None
    if high == low:
        return np.zeros(values.shape, dtype=np.float32)
    # Dividing by (high - low) also handles a negative rescale slope (low > high).
    return (np.asarray(out, dtype=np.float64) - low) / (high - low)


def _voi_lut(values: np.ndarray, ds: pydicom.Dataset) -> tuple[float, float, np.ndarray]:
    """The VOI LUT's output and the range of its entries (the reachable output range: more robust than
    2**LUTDescriptor[2] - 1, which vendors often overstate)."""
    if values.dtype.kind == "f":  # pydicom indexes the LUT with integers
        values = np.rint(values).astype(np.int64)
    out = apply_voi_lut(values, ds, prefer_lut=True)
    descriptor = ds.VOILUTSequence[0].LUTDescriptor
    first, count = int(descriptor[1]), int(descriptor[0]) or 2**16
    entries = apply_voi(np.arange(first, first + count, dtype=np.int64), ds)
    return float(entries.min()), float(entries.max()), out


def _window(values: np.ndarray, ds: pydicom.Dataset) -> tuple[float, float, np.ndarray]:
    """The windowed values and their bounds [y_min, y_max], which pydicom derives from BitsStored,
    PixelRepresentation and rescale (probing with -inf/+inf yields exactly those bounds)."""
    low, high = (float(v) for v in apply_windowing(np.array([-np.inf, np.inf]), ds))
    return low, high, apply_windowing(values, ds)
