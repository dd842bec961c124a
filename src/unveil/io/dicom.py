"""Read one single-frame DICOM radiograph as gray float32 in [0, 1] (called by :func:`unveil.io.read_image`).

The file is parsed with a fixed allow-list of technical tags, so patient fields (name, ID, birth date,
...) are skipped on disk and can never reach an :class:`~unveil.io.ImageInfo` or a message. Stored
values go through the modality LUT, then the VOI LUT or window (min-max without one), then MONOCHROME1
inversion. Only the exceptions pydicom documents for malformed files become an
:class:`~unveil.io.ImageReadError`; any other exception is a bug and propagates.

:func:`read_dicom_header` is for loaders that index a folder of DICOM files (``dicom-folder``): it reads the
elements a loader names, never the pixels, and converts them where pydicom's warnings and logs are silenced,
so that a value it reads (a PatientID to pseudonymise) never reaches a log or a message.
"""

from __future__ import annotations

import logging
import os
import re
import struct
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import BinaryIO

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from unveil.errors import NotFiniteError, finite
from unveil.io.decoding import (
    ImageInfo,
    ImageReadError,
    LoadedImage,
    check_pixels,
    describe,
)
from unveil.io.dicom_voi import dicom_to_gray

logger = logging.getLogger(__name__)

#: The only DICOM elements ever parsed (plus Specific Character Set, which pydicom always keeps).
#: Everything else, patient fields included, is skipped with a seek and never decoded.
DICOM_TAGS = [
    "SOPClassUID", "Modality", "ViewPosition", "SamplesPerPixel", "PhotometricInterpretation",
    "PlanarConfiguration", "NumberOfFrames", "Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit",
    "PixelRepresentation", "SmallestImagePixelValue", "LargestImagePixelValue", "PixelPaddingValue",
    "RedPaletteColorLookupTableDescriptor", "GreenPaletteColorLookupTableDescriptor",
    "BluePaletteColorLookupTableDescriptor", "PaletteColorLookupTableUID", "RedPaletteColorLookupTableData",
    "GreenPaletteColorLookupTableData", "BluePaletteColorLookupTableData", "SegmentedRedPaletteColorLookupTableData",
    "SegmentedGreenPaletteColorLookupTableData", "SegmentedBluePaletteColorLookupTableData", "RescaleIntercept",
    "RescaleSlope", "RescaleType", "ModalityLUTSequence", "WindowCenter", "WindowWidth", "VOILUTFunction",
    "VOILUTSequence", "ExtendedOffsetTable", "ExtendedOffsetTableLengths", "FloatPixelData",
    "DoubleFloatPixelData", "PixelData",
]
_PIXEL_DATA_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")

#: What ``pydicom.dcmread`` raises for a file that is not (valid) DICOM: its own InvalidDicomError, and the
#: errors of reading/unpacking bytes that end early or hold nonsense (UnicodeDecodeError is a ValueError).
_PARSE_ERRORS = (InvalidDicomError, OSError, EOFError, struct.error, ValueError)
#: What pydicom's pixel decoding documents for bad or unsupported pixel data: ValueError (inconsistent
#: attributes, data shorter than announced), RuntimeError (every decoder plugin failed, or all are missing),
#: NotImplementedError (no decoder for the transfer syntax or the pixel type).
_PIXEL_ERRORS = (ValueError, RuntimeError, NotImplementedError, OSError, EOFError, struct.error)
#: Elements pydicom's decoder requires (it raises AttributeError without them); checked first, so that a
#: missing one is named and an AttributeError from the decoder is never taken for a bad file.
_REQUIRED = {"BitsAllocated": "(0028,0100) Bits Allocated", "PhotometricInterpretation":
             "(0028,0004) Photometric Interpretation", "SamplesPerPixel": "(0028,0002) Samples per Pixel"}
_REQUIRED_INTEGER = {"BitsStored": "(0028,0101) Bits Stored", "PixelRepresentation": "(0028,0103) Pixel Representation"}


#: Every numeric element the reader or pydicom's LUT functions use: (integer?, lowest, highest, multi-valued?).
#: :func:`dicom_number` is the one reading of them; a value outside its range or not a number is refused.
NUMERIC_ELEMENTS: dict[str, tuple[bool, float, float, bool]] = {
    "Rows": (True, 0, 65535, False), "Columns": (True, 0, 65535, False),
    "NumberOfFrames": (True, 0, 2**31 - 1, False), "SamplesPerPixel": (True, 1, 4, False),
    "PlanarConfiguration": (True, 0, 1, False), "BitsAllocated": (True, 1, 64, False),
    "BitsStored": (True, 1, 64, False), "HighBit": (True, 0, 63, False), "PixelRepresentation": (True, 0, 1, False),
    "SmallestImagePixelValue": (True, -(2**31), 2**32 - 1, False),
    "LargestImagePixelValue": (True, -(2**31), 2**32 - 1, False),
    "PixelPaddingValue": (True, -(2**31), 2**32 - 1, False),
    "RescaleSlope": (False, -1e30, 1e30, False), "RescaleIntercept": (False, -1e30, 1e30, False),
    "WindowCenter": (False, -1e30, 1e30, True), "WindowWidth": (False, -1e30, 1e30, True),
}
#: Text elements the reader or pydicom's LUT functions use, read through :func:`dicom_text` (one value each).
TEXT_ELEMENTS = ("PhotometricInterpretation", "ViewPosition", "RescaleType", "VOILUTFunction")
#: Samples per pixel each photometric interpretation has (a gray image announcing 3 samples is refused).
_SAMPLES = {"MONOCHROME1": 1, "MONOCHROME2": 1, "PALETTE COLOR": 1, "RGB": 3, "YBR_FULL": 3, "YBR_FULL_422": 3,
            "YBR_ICT": 3, "YBR_RCT": 3, "YBR_PARTIAL_420": 3}
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


#: a DICOM Part 10 file has "DICM" after a 128-byte preamble, whatever its name
DICM_OFFSET = 128


def has_dicom_preamble(path: str | os.PathLike[str]) -> bool:
    """Whether a file is DICOM by content ("DICM" at byte 128, any suffix or none); a file that cannot be opened
    is an :class:`ImageReadError` naming it."""
    try:
        # os-level on the name as given: Path("") would be the current folder, not a missing file
        with open(path, "rb") as handle:  # noqa: PTH123
            return handle.read(DICM_OFFSET + 4)[DICM_OFFSET:] == b"DICM"
    except OSError as exc:
        raise ImageReadError(str(path), f"cannot be opened ({exc.strerror or type(exc).__name__})") from None


def read_dicom_header(path: str | os.PathLike[str], keywords: Sequence[str]) -> dict[str, str | None]:
    """The text of ``keywords`` (dataset or file-meta elements; None when absent or blank), pixels never read.

    Only the named elements are parsed. A file pydicom cannot parse, or an element it cannot convert, is an
    :class:`ImageReadError` naming the file and the element, never a value; pydicom's own warnings and log
    records (which can quote values) are silenced for the read."""
    name = str(path)
    with warnings.catch_warnings(), _quiet_pydicom_decoders():
        warnings.simplefilter("ignore")
        try:
            ds = pydicom.dcmread(name, stop_before_pixels=True, specific_tags=list(keywords))
        except _PARSE_ERRORS as exc:
            raise ImageReadError(name, f"DICOM header cannot be parsed ({describe(exc)})") from None
        meta = getattr(ds, "file_meta", None) or pydicom.Dataset()
        values: dict[str, str | None] = {}
        for keyword in keywords:
            try:
                value = ds.get(keyword) if keyword in ds else meta.get(keyword)
                text = None if value is None else " ".join(str(value).split())
            except _PARSE_ERRORS as exc:  # the type only: a conversion message can quote the value
                raise ImageReadError(name, f"DICOM element {keyword} cannot be read ({type(exc).__name__})") from None
            values[keyword] = text or None
    return values


def read_dicom(handle: BinaryIO, name: str, max_pixels: int | None, *, force: bool) -> LoadedImage | None:
    """Decode a single-frame DICOM image.

    With ``force`` (a .dcm/.dicom file without the DICM preamble) returns ``None`` when the content
    does not look like DICOM at all, so the caller can try Pillow instead.
    """
    ds = _parse(handle, name, force=force)
    if ds is None:
        return None
    notes = drop_blanking_header(ds, name)  # before the element checks: a blanking value is dropped, not fatal
    _require_one_image(ds, name, max_pixels)
    stored = _decode_stored_values(ds, name)
    photometric = str(ds.get("PhotometricInterpretation") or "").strip().upper() or "MONOCHROME2"
    try:
        pixels = dicom_to_gray(stored, ds, photometric, name)
    except MemoryError:
        raise ImageReadError(name, "not enough memory to process the DICOM pixel data") from None
    except ValueError as exc:  # pydicom's LUT functions: descriptors or data that do not fit the values
        raise ImageReadError(name, f"cannot convert DICOM pixel values ({describe(exc)})") from None
    return LoadedImage(pixels=pixels, info=ImageInfo(
        path=name, format="DICOM", height=int(pixels.shape[0]), width=int(pixels.shape[1]),
        bit_depth=int(ds.get("BitsStored") or ds.get("BitsAllocated") or 0), photometric=photometric,
        view=str(ds.get("ViewPosition") or "").strip() or None), notes=notes)


#: The header elements that map stored values to gray, with the values that would blank every image.
BLANKING_ELEMENTS = ("RescaleSlope", "RescaleIntercept", "WindowCenter", "WindowWidth")


def drop_blanking_header(ds: pydicom.Dataset, name: str) -> tuple[str, ...]:
    """Remove from ``ds`` a rescale or window that would blank the image (a NaN or infinite value, a slope of 0:
    every pixel one value, read as all black) and say so: the image is then read without it (no rescale: the
    stored values; no window: min-max) and each note names the element, also logged as a warning."""
    notes = []
    for keyword in BLANKING_ELEMENTS:
        try:
            raw = ds.get(keyword)
        except _PARSE_ERRORS:  # an unparseable element is header parsing's concern, left alone here
            continue
        if raw is None:
            continue
        values = list(raw) if isinstance(raw, MultiValue) else [raw]
        try:
            numbers = [float(value) for value in values]
        except (TypeError, ValueError):  # not a number at all: header parsing's concern (class 1), left alone
            continue
        if _usable(keyword, numbers):
            continue
        if keyword.startswith("Rescale"):
            pairs = [k for k in ("RescaleSlope", "RescaleIntercept") if k in ds]
        else:
            pairs = [k for k in ("WindowCenter", "WindowWidth") if k in ds]
        shown = " ".join(str(v) for v in values)
        for element in pairs:
            del ds[element]
        what = "rescale" if keyword.startswith("Rescale") else "window"
        notes.append(f"ignored the DICOM {what} ({keyword} {shown} would blank the image); read without it")
        logger.warning("%s: %s", name, notes[-1])
    return tuple(notes)


def _usable(keyword: str, numbers: list[float]) -> bool:
    """Finite numbers (:func:`unveil.errors.finite`), and a rescale slope other than 0."""
    try:
        for number in numbers:
            finite(number, keyword)
    except NotFiniteError:
        return False
    return not (keyword == "RescaleSlope" and 0 in numbers)


def _parse(handle: BinaryIO, name: str, *, force: bool) -> pydicom.Dataset | None:
    """The allow-listed elements of the file; ``None`` for a forced read of something that is not DICOM."""
    try:
        ds = pydicom.dcmread(handle, force=force, specific_tags=DICOM_TAGS)
    except _PARSE_ERRORS as exc:
        if force:
            logger.debug("%s: not parseable as headerless DICOM (%s)", name, describe(exc))
            return None
        raise ImageReadError(name, f"DICOM file cannot be parsed ({describe(exc)})") from None
    if force and not (_has_pixels(ds) or "Rows" in ds or "SOPClassUID" in ds):
        return None
    return ds


def _has_pixels(ds: pydicom.Dataset) -> bool:
    return any(keyword in ds for keyword in _PIXEL_DATA_KEYWORDS)


def dicom_number(ds: pydicom.Dataset, keyword: str, name: str) -> int | float | tuple[float, ...] | None:
    """The checked value of the numeric element ``keyword`` (see :data:`NUMERIC_ELEMENTS`); None when absent or
    blank. A value that cannot be parsed, is not finite or is out of range is an :class:`ImageReadError` naming
    the file and the element (never the value's text beyond 20 characters)."""
    integer, low, high, multi = NUMERIC_ELEMENTS[keyword]
    label = f"DICOM element {keyword}"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            value = ds.get(keyword)
    except (*_PARSE_ERRORS, TypeError, OverflowError) as exc:  # pydicom's IS/DS conversion of the raw bytes
        raise ImageReadError(name, f"{label} cannot be read ({type(exc).__name__})") from None
    if value is None or (isinstance(value, (str, bytes)) and not value.strip()):
        return None
    items = list(value) if isinstance(value, (list, tuple, pydicom.multival.MultiValue)) else [value]
    if not items or (len(items) > 1 and not multi):
        raise ImageReadError(name, f"{label} must hold one number, holds {len(items)} values")
    numbers = tuple(_one_number(item, integer, low, high, label, name) for item in items)
    return numbers if multi else numbers[0]


def _one_number(item: object, integer: bool, low: float, high: float, label: str, name: str) -> int | float:
    """One value of a numeric element as int/float, range-checked."""
    if isinstance(item, bytes):
        item = item.decode("latin-1", "replace")
    text = str(item).strip()
    if isinstance(item, bool) or not isinstance(item, (int, float, str)) or (
            isinstance(item, str) and not _NUMBER.fullmatch(text)):
        raise ImageReadError(name, f"{label} is not a number ({text[:20]!r})")
    number = float(item)
    if not np.isfinite(number) or number < low or number > high:
        raise ImageReadError(name, f"{label} must be a finite number in [{low:g}, {high:g}], got {text[:20]}")
    if integer:
        if number != int(number):
            raise ImageReadError(name, f"{label} must be an integer, got {text[:20]}")
        return int(number)
    return number


def dicom_text(ds: pydicom.Dataset, keyword: str, name: str) -> str | None:
    """The one text value of the element ``keyword`` (stripped; None when absent or blank); a value that cannot
    be read or holds several values is an :class:`ImageReadError` naming the file and the element."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            value = ds.get(keyword)
    except (*_PARSE_ERRORS, TypeError) as exc:
        raise ImageReadError(name, f"DICOM element {keyword} cannot be read ({type(exc).__name__})") from None
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        raise ImageReadError(name, f"DICOM element {keyword} must hold one value, holds {len(value)}")
    if value is not None and not isinstance(value, str):
        raise ImageReadError(name, f"DICOM element {keyword} must be text, is {type(value).__name__}")
    return (value or "").strip() or None


def _binary_vr(value: int | float | tuple[float, ...]) -> str:
    """A binary VR that holds a checked value exactly (text VRs would be parsed again)."""
    if isinstance(value, float | tuple):
        return "FD"
    return "US" if 0 <= value <= 65535 else "SL" if value < 2**31 else "UL"


def _checked_elements(ds: pydicom.Dataset, name: str) -> None:
    """Read every numeric element once through :func:`dicom_number` and store it back with its standard VR,
    so that pydicom's decoder and LUT functions only ever see checked numbers; then check samples per pixel
    against the photometric interpretation and bits stored against bits allocated."""
    for keyword in TEXT_ELEMENTS:
        dicom_text(ds, keyword, name)
    for keyword in NUMERIC_ELEMENTS:
        if keyword not in ds:
            continue
        value = dicom_number(ds, keyword, name)
        del ds[keyword]
        if value is not None:
            ds.add_new(keyword, _binary_vr(value), list(value) if isinstance(value, tuple) else value)
    photometric = str(ds.get("PhotometricInterpretation") or "").strip().upper()
    samples = ds.get("SamplesPerPixel")
    if samples is not None and photometric in _SAMPLES and samples != _SAMPLES[photometric]:
        raise ImageReadError(name, f"DICOM element SamplesPerPixel is {samples}, but PhotometricInterpretation "
                                   f"{photometric} has {_SAMPLES[photometric]} sample(s) per pixel")
    stored, allocated = ds.get("BitsStored"), ds.get("BitsAllocated")
    if stored is not None and allocated is not None and stored > allocated:
        raise ImageReadError(name, f"DICOM element BitsStored ({stored}) exceeds BitsAllocated ({allocated})")


def _require_one_image(ds: pydicom.Dataset, name: str, max_pixels: int | None) -> None:
    """Refuse a dataset without pixels, without the elements decoding needs, over the pixel limit, or multi-frame."""
    if not _has_pixels(ds):
        if "Rows" in ds or "Columns" in ds:  # image attributes but no pixels: the file stops early
            raise ImageReadError(name, "DICOM file has no pixel data though it describes an image (Rows/Columns): "
                                       "probably truncated (the file ends before its pixel data)")
        raise ImageReadError(
            name, "DICOM file has no pixel data (no PixelData element; it may be a report or other non-image object)"
        )
    _checked_elements(ds, name)
    rows, columns = ds.get("Rows"), ds.get("Columns")
    if not rows or not columns:
        raise ImageReadError(name, "DICOM file has pixel data but no Rows/Columns to describe it")
    check_pixels(name, int(columns), int(rows), max_pixels)
    frames = int(ds.get("NumberOfFrames") or 1)
    if frames > 1:
        raise ImageReadError(name, f"multi-frame DICOM ({frames} frames) is not supported; expected one radiograph")
    required = dict(_REQUIRED, **(_REQUIRED_INTEGER if "PixelData" in ds else {}))
    missing = [label for keyword, label in required.items() if ds.get(keyword) in (None, "")]
    if missing:
        raise ImageReadError(name, f"DICOM image lacks {', '.join(missing)}, needed to decode its pixel data")


def _decode_stored_values(ds: pydicom.Dataset, name: str) -> np.ndarray:
    """The stored pixel values (pydicom's ``pixel_array``), or an ImageReadError saying why they cannot be had."""
    syntax = _transfer_syntax(ds)
    try:
        with _quiet_pydicom_decoders():
            return ds.pixel_array
    except MemoryError:
        raise ImageReadError(name, "not enough memory to decode the DICOM pixel data") from None
    except _PIXEL_ERRORS as exc:
        if syntax.is_compressed:
            problem = (
                f"cannot decode DICOM pixel data compressed as {syntax.name} ({syntax}); a decoder plugin may be "
                "missing (e.g. pylibjpeg with pylibjpeg-openjpeg / pylibjpeg-libjpeg, or python-gdcm) "
                f"or the data is corrupt ({describe(exc)})"
            )
        elif _shorter_than_announced(ds):
            problem = f"DICOM file is truncated (pixel data ends early; {describe(exc)})"
        else:
            problem = f"cannot decode DICOM pixel data ({syntax.name}; {describe(exc)})"
        raise ImageReadError(name, problem) from None


def _shorter_than_announced(ds: pydicom.Dataset) -> bool:
    """Does native (uncompressed) pixel data hold fewer bytes than Rows x Columns x samples x bits announce?"""
    if "PixelData" not in ds:
        return False
    bits = int(ds.get("BitsAllocated") or 0)
    expected = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel") or 1) * bits // 8
    return len(ds.PixelData) < expected


class _DropRecords(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return False


@contextmanager
def _quiet_pydicom_decoders() -> Iterator[None]:
    """Silence pydicom's decoder logger while pixels are decoded: a failing plugin logs a full traceback
    there, and the failure is already reported as one :class:`ImageReadError` line."""
    quiet = logging.getLogger("pydicom")
    muffle = _DropRecords()
    quiet.addFilter(muffle)
    loggers = [logging.getLogger(n) for n in ("pydicom.pixels.decoders.base", "pydicom.pixels.decoders")]
    for each in loggers:
        each.addFilter(muffle)
    try:
        yield
    finally:
        quiet.removeFilter(muffle)
        for each in loggers:
            each.removeFilter(muffle)


def _transfer_syntax(ds: pydicom.Dataset) -> UID:
    """The dataset's transfer syntax, filled in from the parsed encoding when the file meta lacks it."""
    meta = ds.file_meta
    syntax = meta.get("TransferSyntaxUID")
    if syntax is None:
        implicit, little = ds.original_encoding
        if implicit:
            syntax = ImplicitVRLittleEndian
        else:
            syntax = ExplicitVRLittleEndian if little is not False else ExplicitVRBigEndian
        meta.TransferSyntaxUID = syntax
    return UID(str(syntax))
