"""Read chest radiographs (PNG, JPEG, DICOM, or anything Pillow opens) as float32 gray images in [0, 1].

One entry point, :func:`read_image`, so every later stage sees the same representation whatever
the source: single-channel float32, ``0`` = black, ``1`` = white (DICOM MONOCHROME1 is inverted,
colour is reduced to luminance, alpha is composited over black, EXIF orientation is applied).
Every failure is an :class:`ImageReadError` naming the file and the problem in plain words.

DICOM files are parsed with a fixed allow-list of technical tags, so patient fields (name, ID,
birth date, ...) are skipped on disk and can never reach an :class:`ImageInfo` or a message.
"""

from __future__ import annotations

import logging
import os
import stat
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
import pydicom
from PIL import Image, ImageOps, UnidentifiedImageError
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi, apply_voi_lut, apply_windowing
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from unveil.errors import UnveilError

__all__ = ["DEFAULT_MAX_PIXELS", "ImageInfo", "ImageReadError", "LoadedImage", "image_to_uint8", "read_image"]

logger = logging.getLogger(__name__)

#: Largest width * height decoded by default: a guard against decompression bombs (50 M pixels, e.g. 7000 x 7000;
#: the largest radiograph detectors give about 4300 x 4300). ``--max-pixels`` of every CLI command changes it.
DEFAULT_MAX_PIXELS: int = 50_000_000

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
_DICOM_MAGIC_OFFSET = 128
_DICOM_SUFFIXES = (".dcm", ".dicom")
_NOT_RECOGNISED = "not a recognised image format (expected PNG, JPEG, DICOM or another format Pillow can read)"

#: ITU-R 601-2 luma weights, the same as Pillow's ``convert("L")``, applied in float.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)

#: The only DICOM elements ever parsed (plus Specific Character Set, which pydicom always keeps).
#: Everything else, patient fields included, is skipped with a seek and never decoded.
_DICOM_TAGS = [
    "SOPClassUID",
    "Modality",
    "ViewPosition",
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "PlanarConfiguration",
    "NumberOfFrames",
    "Rows",
    "Columns",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "SmallestImagePixelValue",
    "LargestImagePixelValue",
    "PixelPaddingValue",
    "RedPaletteColorLookupTableDescriptor",
    "GreenPaletteColorLookupTableDescriptor",
    "BluePaletteColorLookupTableDescriptor",
    "PaletteColorLookupTableUID",
    "RedPaletteColorLookupTableData",
    "GreenPaletteColorLookupTableData",
    "BluePaletteColorLookupTableData",
    "SegmentedRedPaletteColorLookupTableData",
    "SegmentedGreenPaletteColorLookupTableData",
    "SegmentedBluePaletteColorLookupTableData",
    "RescaleIntercept",
    "RescaleSlope",
    "RescaleType",
    "ModalityLUTSequence",
    "WindowCenter",
    "WindowWidth",
    "VOILUTFunction",
    "VOILUTSequence",
    "ExtendedOffsetTable",
    "ExtendedOffsetTableLengths",
    "FloatPixelData",
    "DoubleFloatPixelData",
    "PixelData",
]
_PIXEL_DATA_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")

#: Exceptions that Pillow / pydicom / numpy raise for malformed input.
_DECODE_ERRORS = (
    OSError,
    EOFError,
    ValueError,
    SyntaxError,
    struct.error,
    IndexError,
    KeyError,
    TypeError,
    AttributeError,
    RuntimeError,
    NotImplementedError,
    InvalidDicomError,
    Image.DecompressionBombError,
)



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


def image_to_uint8(pixels: np.ndarray) -> np.ndarray:
    """Map [0, 1] floats to uint8 (x * 255, rounded half to even, clipped), for hashing and saving."""
    scaled = np.rint(np.asarray(pixels, dtype=np.float32) * np.float32(255.0))
    return np.clip(np.nan_to_num(scaled), 0, 255).astype(np.uint8)


def read_image(path: str | os.PathLike[str], *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> LoadedImage:
    """Read one image file: ``.pixels`` (gray float32 H x W in [0, 1]) and ``.info`` (what the file said).

    The format is detected from the content, not the extension. ``max_pixels`` bounds
    width * height, checked from the header before any pixel is decoded; ``None`` disables it.
    Raises :class:`ImageReadError` for every unreadable input.
    """
    if max_pixels is not None and max_pixels < 1:
        raise ValueError(f"max_pixels must be positive or None, got {max_pixels!r}")
    name = os.fsdecode(path)
    with _open_file(name) as handle:
        try:
            head = handle.read(_DICOM_MAGIC_OFFSET + 4)
            handle.seek(0)
            if head.startswith(_PNG_MAGIC):
                return _read_pillow(handle, name, "PNG", max_pixels)
            if head.startswith(_JPEG_MAGIC):
                return _read_pillow(handle, name, "JPEG", max_pixels)
            if head[_DICOM_MAGIC_OFFSET:] == b"DICM":
                return _read_dicom(handle, name, max_pixels, force=False)  # type: ignore[return-value]
            if name.lower().endswith(_DICOM_SUFFIXES):
                loaded = _read_dicom(handle, name, max_pixels, force=True)
                if loaded is not None:
                    return loaded
                handle.seek(0)
            return _read_pillow(handle, name, None, max_pixels)
        except ImageReadError:
            raise
        except MemoryError:
            raise ImageReadError(name, "not enough memory to decode the image") from None
        except _DECODE_ERRORS as exc:
            raise ImageReadError(name, f"could not read the image ({_describe(exc)})") from None


@contextmanager
def _open_file(name: str) -> Iterator[BinaryIO]:
    """Open ``name`` for reading, turning OS errors and empty/special files into ImageReadError."""
    try:
        handle = open(name, "rb")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        raise ImageReadError(name, "file not found") from None
    except IsADirectoryError:
        raise ImageReadError(name, "is a directory, not an image file") from None
    except PermissionError:
        problem = "is a directory, not an image file" if os.path.isdir(name) else "permission denied"
        raise ImageReadError(name, problem) from None
    except OSError as exc:
        raise ImageReadError(name, f"cannot open file ({exc.strerror or exc})") from None
    with handle:
        status = os.fstat(handle.fileno())
        if not stat.S_ISREG(status.st_mode):
            raise ImageReadError(name, "not a regular file")
        if status.st_size == 0:
            raise ImageReadError(name, "empty file (0 bytes)")
        yield handle


def _describe(exc: BaseException) -> str:
    text = " ".join(str(exc).split())  # one line, even for pydicom's multi-line plugin reports
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _check_pixels(name: str, width: int, height: int, max_pixels: int | None) -> None:
    """Refuse images whose header announces more than ``max_pixels`` pixels (decompression bombs)."""
    if max_pixels is not None and width * height > max_pixels:
        raise ImageReadError(
            name,
            f"image is {width}x{height} = {width * height:,} pixels, over the pixel limit of {max_pixels:,} "
            "(a guard against decompression bombs); if the file is trusted, raise the limit with "
            "read_image(..., max_pixels=N) or disable it with max_pixels=None",
        )


def _open_unchecked(handle: BinaryIO) -> Image.Image:
    """``Image.open`` without Pillow's process-wide decompression-bomb check (``Image.MAX_IMAGE_PIXELS``):
    the header is parsed lazily by the first plugin that accepts the file, as ``Image.open`` does, and our
    own per-call ``max_pixels`` is checked on the size it declares. Pillow's global is never changed, so other
    code in the process keeps its own limit."""
    Image.init()
    handle.seek(0)
    prefix = handle.read(16)
    for format_id in list(Image.ID):
        factory, accept = Image.OPEN[format_id]
        accepted = not accept or accept(prefix)
        if not accepted or isinstance(accepted, str):
            continue
        try:
            handle.seek(0)
            return factory(handle, "")
        except (SyntaxError, IndexError, TypeError, struct.error):
            continue
    raise UnidentifiedImageError("cannot identify image file")


# ---------------------------------------------------------------------------------------------- Pillow


def _read_pillow(handle: BinaryIO, name: str, sniffed: str | None, max_pixels: int | None) -> LoadedImage:
    """Decode a PNG/JPEG/other Pillow image; ``sniffed`` is the format its magic bytes announced."""
    label = sniffed or "image"
    try:
        image = _open_unchecked(handle)  # lazy: reads the header only
    except UnidentifiedImageError:
        problem = f"corrupt {sniffed} file (header cannot be parsed)" if sniffed else _NOT_RECOGNISED
        raise ImageReadError(name, problem) from None
    except _DECODE_ERRORS as exc:
        raise ImageReadError(name, _decode_problem(exc, label, "corrupt {fmt} file")) from None

    with image:
        width, height = image.size
        _check_pixels(name, width, height, max_pixels)
        fmt = sniffed or image.format or "unknown"
        mode = image.mode
        try:
            image.load()
        except Image.DecompressionBombError as exc:
            # A few plugins (GIF frames) check Pillow's own process-wide limit while decoding.
            raise ImageReadError(name, f"over Pillow's pixel limit Image.MAX_IMAGE_PIXELS ({_describe(exc)})") from None
        except MemoryError:
            raise ImageReadError(name, "not enough memory to decode the image") from None
        except _DECODE_ERRORS as exc:
            raise ImageReadError(name, _decode_problem(exc, fmt, "cannot decode {fmt} image data")) from None

        try:
            oriented = ImageOps.exif_transpose(image)
        except _DECODE_ERRORS as exc:
            # Broken EXIF should not make the pixels unreadable: keep the stored orientation.
            logger.warning("%s: ignoring unreadable EXIF orientation (%s)", name, _describe(exc))
            oriented = image
        pixels = _pillow_to_gray(oriented)
        if oriented is not image:
            oriented.close()

    info = ImageInfo(
        path=name,
        format=fmt,
        height=int(pixels.shape[0]),
        width=int(pixels.shape[1]),
        bit_depth=_pillow_bit_depth(mode),
        photometric=mode,
        view=None,
    )
    return LoadedImage(pixels=pixels, info=info)


def _decode_problem(exc: BaseException, fmt: str, otherwise: str) -> str:
    """Plain-words problem for a Pillow failure; truncation (Pillow's "image file is truncated") is named as such."""
    if isinstance(exc, EOFError) or "truncated" in str(exc).lower():
        return f"{fmt} file is truncated (data ends early; the file is incomplete or corrupt)"
    return f"{otherwise.format(fmt=fmt)} ({_describe(exc)})"


def _pillow_bit_depth(mode: str) -> int:
    if mode == "1":
        return 1
    if mode == "I" or mode.startswith("I;16"):
        return 16
    if mode in ("I;32", "F"):
        return 32
    return 8


def _luminance(rgb: np.ndarray) -> np.ndarray:
    """Weighted sum over the last axis (R, G, B), in float32."""
    return rgb[..., :3].astype(np.float32) @ _LUMA


def _pillow_to_gray(image: Image.Image) -> np.ndarray:
    """Convert a loaded Pillow image of any mode to float32 (H, W) in [0, 1]."""
    mode = image.mode
    if mode == "1":
        gray = np.asarray(image, dtype=np.float32)  # bool -> 0.0 / 1.0
    elif mode == "L":
        gray = np.asarray(image, dtype=np.float32) / np.float32(255.0)
    elif mode == "I" or mode.startswith("I;16"):
        # 16-bit gray (PNG "I;16", older Pillow "I"); convert("I") covers byte orders numpy lacks.
        try:
            raw = np.asarray(image)
        except (TypeError, ValueError):
            raw = np.asarray(image.convert("I"))
        gray = raw.astype(np.float32) / np.float32(65535.0)
    elif mode == "F":
        gray = _min_max(np.asarray(image, dtype=np.float32))
    elif mode == "LA":
        la = np.asarray(image, dtype=np.float32)
        gray = la[..., 0] * la[..., 1] / np.float32(255.0 * 255.0)  # over black
    elif mode == "La":
        gray = np.asarray(image, dtype=np.float32)[..., 0] / np.float32(255.0)  # already premultiplied
    elif mode in ("RGB", "RGBX", "RGBa"):
        gray = _luminance(np.asarray(image)) / np.float32(255.0)
    elif mode == "RGBA":
        gray = _rgba_over_black(np.asarray(image))
    elif mode in ("P", "PA"):
        # Via RGBA: palette entries without transparency get alpha 255, so one path covers both.
        gray = _rgba_over_black(np.asarray(image.convert("RGBA")))
    elif mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        gray = _luminance(np.asarray(image.convert("RGB"))) / np.float32(255.0)
    else:
        gray = np.asarray(image.convert("L"), dtype=np.float32) / np.float32(255.0)
    return _finish(gray)


def _rgba_over_black(rgba: np.ndarray) -> np.ndarray:
    alpha = rgba[..., 3].astype(np.float32) / np.float32(255.0)
    return _luminance(rgba) * alpha / np.float32(255.0)


def _min_max(values: np.ndarray) -> np.ndarray:
    """Stretch finite values to [0, 1]; a constant image becomes all zeros."""
    values = values.astype(np.float32, copy=False)
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return np.zeros(values.shape, dtype=np.float32)
    low, high = float(finite.min()), float(finite.max())
    if high <= low:
        return np.zeros(values.shape, dtype=np.float32)
    return (values - np.float32(low)) / np.float32(high - low)


def _finish(gray: np.ndarray) -> np.ndarray:
    """float32, C-contiguous, NaN -> 0, clipped to [0, 1]."""
    gray = np.nan_to_num(np.asarray(gray, dtype=np.float32), nan=0.0, posinf=1.0, neginf=0.0)
    return np.ascontiguousarray(np.clip(gray, 0.0, 1.0), dtype=np.float32)


# ---------------------------------------------------------------------------------------------- DICOM


def _read_dicom(handle: BinaryIO, name: str, max_pixels: int | None, *, force: bool) -> LoadedImage | None:
    """Decode a single-frame DICOM image.

    With ``force`` (a .dcm/.dicom file without the DICM preamble) returns ``None`` when the content
    does not look like DICOM at all, so the caller can try Pillow instead.
    """
    try:
        ds = pydicom.dcmread(handle, force=force, specific_tags=_DICOM_TAGS)
    except MemoryError:
        raise
    except _DECODE_ERRORS as exc:
        if force:
            logger.debug("%s: not parseable as headerless DICOM (%s)", name, _describe(exc))
            return None
        raise ImageReadError(name, f"DICOM file cannot be parsed ({_describe(exc)})") from None

    has_pixels = any(keyword in ds for keyword in _PIXEL_DATA_KEYWORDS)
    if force and not (has_pixels or "Rows" in ds or "SOPClassUID" in ds):
        return None
    if not has_pixels:
        if "Rows" in ds or "Columns" in ds:  # image attributes but no pixels: the file stops early
            raise ImageReadError(name, "DICOM file has no pixel data though it describes an image (Rows/Columns): "
                                       "probably truncated (the file ends before its pixel data)")
        raise ImageReadError(
            name, "DICOM file has no pixel data (no PixelData element; it may be a report or other non-image object)"
        )
    rows, columns = ds.get("Rows"), ds.get("Columns")
    if not rows or not columns:
        raise ImageReadError(name, "DICOM file has pixel data but no Rows/Columns to describe it")
    _check_pixels(name, int(columns), int(rows), max_pixels)
    frames = int(ds.get("NumberOfFrames") or 1)
    if frames > 1:
        raise ImageReadError(name, f"multi-frame DICOM ({frames} frames) is not supported; expected one radiograph")

    syntax = _transfer_syntax(ds)
    try:
        with _quiet_pydicom_decoders():
            stored = ds.pixel_array
    except MemoryError:
        raise ImageReadError(name, "not enough memory to decode the DICOM pixel data") from None
    except Exception as exc:  # noqa: BLE001 - decoder plugins raise arbitrary types; report them uniformly
        if syntax.is_compressed:
            problem = (
                f"cannot decode DICOM pixel data compressed as {syntax.name} ({syntax}); a decoder plugin may be "
                "missing (e.g. pylibjpeg with pylibjpeg-openjpeg / pylibjpeg-libjpeg, or python-gdcm) "
                f"or the data is corrupt ({_describe(exc)})"
            )
        elif "less than expected" in str(exc) or "truncated" in str(exc).lower():
            problem = f"DICOM file is truncated (pixel data ends early; {_describe(exc)})"
        else:
            problem = f"cannot decode DICOM pixel data ({syntax.name}; {_describe(exc)})"
        raise ImageReadError(name, problem) from None

    photometric = str(ds.get("PhotometricInterpretation") or "").strip().upper() or "MONOCHROME2"
    try:
        pixels = _dicom_to_gray(stored, ds, photometric, name)
    except MemoryError:
        raise ImageReadError(name, "not enough memory to process the DICOM pixel data") from None
    except _DECODE_ERRORS as exc:
        raise ImageReadError(name, f"cannot convert DICOM pixel values ({_describe(exc)})") from None

    view = str(ds.get("ViewPosition") or "").strip() or None
    info = ImageInfo(
        path=name,
        format="DICOM",
        height=int(pixels.shape[0]),
        width=int(pixels.shape[1]),
        bit_depth=int(ds.get("BitsStored") or ds.get("BitsAllocated") or 0),
        photometric=photometric,
        view=view,
    )
    return LoadedImage(pixels=pixels, info=info)


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


def _dicom_to_gray(stored: np.ndarray, ds: pydicom.Dataset, photometric: str, name: str) -> np.ndarray:
    """Stored values -> [0, 1] gray: modality LUT, then VOI LUT / window or min-max, then MONOCHROME1 inversion."""
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(stored, ds)
        return _finish(_luminance(rgb) / np.float32(np.iinfo(rgb.dtype).max))
    if stored.ndim == 3:  # colour (pixel_array already converts YBR to RGB)
        bits = int(ds.get("BitsStored") or 8)
        return _finish(_luminance(stored) / np.float32(2**bits - 1))
    if stored.ndim != 2:
        raise ValueError(f"unexpected pixel array shape {stored.shape}")

    values = apply_modality_lut(stored, ds)
    gray = _apply_voi(values, ds, name)
    if gray is None:
        gray = _min_max(values)
    if photometric == "MONOCHROME1":
        gray = 1.0 - np.clip(gray, 0.0, 1.0)
    return _finish(gray)


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
        if _has_voi_lut(ds):
            if values.dtype.kind == "f":  # pydicom indexes the LUT with integers
                values = np.rint(values).astype(np.int64)
            out = apply_voi_lut(values, ds, prefer_lut=True)
            # Outputs are LUT entries, so the entries' own range is the reachable output range
            # (more robust than 2**LUTDescriptor[2] - 1, which vendors often overstate).
            descriptor = ds.VOILUTSequence[0].LUTDescriptor
            first, count = int(descriptor[1]), int(descriptor[0]) or 2**16
            entries = apply_voi(np.arange(first, first + count, dtype=np.int64), ds)
            low, high = float(entries.min()), float(entries.max())
        else:
            out = apply_windowing(values, ds)
            # Windowing outputs [y_min, y_max], derived by pydicom from BitsStored, PixelRepresentation
            # and rescale (processing.apply_windowing); probing with -inf/+inf yields exactly those bounds.
            low, high = (float(v) for v in apply_windowing(np.array([-np.inf, np.inf]), ds))
    except (ValueError, TypeError, IndexError, KeyError, AttributeError, NotImplementedError) as exc:
        logger.warning("%s: ignoring unusable VOI LUT / window (%s); using min-max", name, _describe(exc))
        return None
    if high == low:
        return np.zeros(values.shape, dtype=np.float32)
    # Dividing by (high - low) also handles a negative rescale slope (low > high).
    return (np.asarray(out, dtype=np.float64) - low) / (high - low)
