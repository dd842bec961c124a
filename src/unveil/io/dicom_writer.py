"""Write a grayscale radiograph as a real DICOM file (Digital X-Ray storage) with pydicom.

Used by test fixtures and by the synthetic benchmark to produce sources in DICOM layouts (RSNA, a hospital's
DICOM export). Only technical attributes are written unless ``header`` asks for more (a fixture's PatientID,
Manufacturer, InstitutionName...): no patient name, birth date or other identifying field by default.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

#: Digital X-Ray Image Storage - For Presentation.
DX_STORAGE_SOP_CLASS = UID("1.2.840.10008.5.1.4.1.1.1.1")


def write_dicom(
    path: str | Path,
    pixels: np.ndarray,
    *,
    bits_stored: int = 12,
    photometric: str = "MONOCHROME2",
    view: str | None = None,
    rescale_slope: float | None = None,
    rescale_intercept: float | None = None,
    window_center: float | None = None,
    window_width: float | None = None,
    signed: bool = False,
    uid_seed: str | None = None,
    header: Mapping[str, str] | None = None,
) -> Path:
    """Write ``pixels`` (2-D integers already in stored-value units) to ``path`` atomically.

    ``pixels`` must fit in ``bits_stored`` bits (unsigned, or two's complement when ``signed``).
    ``uid_seed`` makes the generated UIDs deterministic (same seed -> byte-identical file).
    ``header``: further text elements by DICOM keyword (``{"PatientID": "P1", "Manufacturer": "Acme"}``);
    an unknown keyword or one the writer sets itself (UIDs, pixel attributes) is a ValueError.
    """
    array = _stored_values(pixels, bits_stored, photometric, signed)
    extra = _header_elements(header or {})

    def uid(suffix: str) -> str:
        return generate_uid(entropy_srcs=[uid_seed, suffix]) if uid_seed is not None else generate_uid()

    path = Path(path)
    dataset = _dx_dataset(path, uid)
    if view:
        dataset.ViewPosition = view
    for keyword, value in extra.items():
        setattr(dataset, keyword, value)
    _set_pixels(dataset, array, bits_stored, photometric, signed)
    if rescale_slope is not None or rescale_intercept is not None:
        dataset.RescaleSlope = f"{1.0 if rescale_slope is None else rescale_slope:g}"
        dataset.RescaleIntercept = f"{0.0 if rescale_intercept is None else rescale_intercept:g}"
    if window_center is not None and window_width is not None:
        dataset.WindowCenter = f"{window_center:g}"
        dataset.WindowWidth = f"{window_width:g}"
    _save_atomic(dataset, path)
    return path


def _stored_values(pixels: np.ndarray, bits_stored: int, photometric: str, signed: bool) -> np.ndarray:
    """``pixels`` as an array, after checking it is 2-D integers that fit ``bits_stored`` bits."""
    array = np.asarray(pixels)
    if array.ndim != 2:
        raise ValueError(f"write_dicom expects a 2-D array, got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"write_dicom expects integer stored values, got {array.dtype}")
    if photometric not in {"MONOCHROME1", "MONOCHROME2"}:
        raise ValueError(f"photometric must be MONOCHROME1 or MONOCHROME2, got {photometric!r}")
    if not 1 <= bits_stored <= 16:
        raise ValueError(f"bits_stored must lie in [1, 16], got {bits_stored}")
    low, high = (-(2 ** (bits_stored - 1)), 2 ** (bits_stored - 1) - 1) if signed else (0, 2**bits_stored - 1)
    if array.size and (array.min() < low or array.max() > high):
        raise ValueError(f"pixel values [{array.min()}, {array.max()}] do not fit {bits_stored} bits stored")
    return array


#: Elements ``header`` may not set: the writer sets them, and a mismatch would make a file that lies.
_WRITER_SET = frozenset({"SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "Rows", "Columns",
                         "SamplesPerPixel", "PhotometricInterpretation", "BitsAllocated", "BitsStored", "HighBit",
                         "PixelRepresentation", "PixelData", "ViewPosition"})


def _header_elements(header: Mapping[str, str]) -> dict[str, str]:
    """``header`` checked: known DICOM keywords of text elements, none that the writer sets itself."""
    for keyword in header:
        if tag_for_keyword(keyword) is None:
            raise ValueError(f"write_dicom: {keyword!r} is not a DICOM keyword")
        if keyword in _WRITER_SET:
            raise ValueError(f"write_dicom: {keyword} is set by the writer (use its own argument, e.g. view=)")
        if dictionary_VR(keyword) in {"SQ", "OB", "OW", "OF", "OD", "OL", "OV", "UN"}:
            raise ValueError(f"write_dicom: {keyword} is not a text element")
    return {keyword: str(value) for keyword, value in header.items()}


def _dx_dataset(path: Path, uid) -> FileDataset:
    """An empty Digital X-Ray dataset with its file meta and UIDs (technical attributes only)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DX_STORAGE_SOP_CLASS
    meta.MediaStorageSOPInstanceUID = uid("sop")
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    dataset.SOPClassUID = DX_STORAGE_SOP_CLASS
    dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    dataset.StudyInstanceUID = uid("study")
    dataset.SeriesInstanceUID = uid("series")
    dataset.Modality = "DX"
    dataset.BodyPartExamined = "CHEST"
    return dataset


def _set_pixels(dataset: FileDataset, array: np.ndarray, bits_stored: int, photometric: str, signed: bool) -> None:
    """The image pixel module: one gray sample per pixel in 8 or 16 allocated bits."""
    bits_allocated = 8 if bits_stored <= 8 else 16
    dtype = {(8, False): np.uint8, (8, True): np.int8, (16, False): np.uint16, (16, True): np.int16}[
        (bits_allocated, signed)
    ]
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = photometric
    dataset.Rows, dataset.Columns = array.shape
    dataset.BitsAllocated = bits_allocated
    dataset.BitsStored = bits_stored
    dataset.HighBit = bits_stored - 1
    dataset.PixelRepresentation = 1 if signed else 0
    dataset.PixelData = array.astype(dtype).tobytes()


def _save_atomic(dataset: FileDataset, path: Path) -> None:
    """Write to a temporary file beside ``path``, then rename: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        dataset.save_as(temporary, enforce_file_format=True)
        Path(temporary).replace(path)
    finally:
        Path(temporary).unlink(missing_ok=True)
