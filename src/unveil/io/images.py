"""Read chest radiographs (PNG, JPEG, DICOM, or anything Pillow opens) as float32 gray images in [0, 1].

One entry point, :func:`read_image`, so every later stage sees the same representation whatever
the source: single-channel float32, ``0`` = black, ``1`` = white (DICOM MONOCHROME1 is inverted,
colour is reduced to luminance, alpha is composited over black, EXIF orientation is applied).
Every unreadable file is an :class:`ImageReadError` naming the file and the problem in plain words;
only the exceptions the decoders raise for bad files become one, so a bug of ours keeps its traceback.

This module reads PNG/JPEG/other Pillow formats; :mod:`unveil.io.dicom` reads DICOM (with an allow-list
of technical tags, so patient fields never reach an :class:`ImageInfo` or a message).
"""

from __future__ import annotations

import logging
import os
import stat
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from unveil.io.decoding import (
    DEFAULT_MAX_PIXELS,
    ImageInfo,
    ImageReadError,
    LoadedImage,
    check_pixels,
    describe,
    finish,
    luminance,
    min_max,
)
from unveil.io.dicom import read_dicom

__all__ = ["DEFAULT_MAX_PIXELS", "ImageInfo", "ImageReadError", "LoadedImage", "image_to_uint8", "read_image"]

logger = logging.getLogger(__name__)

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
_DICOM_MAGIC_OFFSET = 128
_DICOM_SUFFIXES = (".dcm", ".dicom")
_NOT_RECOGNISED = "not a recognised image format (expected PNG, JPEG, DICOM or another format Pillow can read)"

#: What Pillow raises for a malformed file: OSError (UnidentifiedImageError, "image file is truncated",
#: decoder errors), SyntaxError and struct.error (plugins parsing a broken header or chunk), EOFError,
#: ValueError (e.g. a bad mode or size in the header) and DecompressionBombError (its own size guard, which a
#: few plugins apply while decoding frames). Anything else is a bug and propagates.
_PILLOW_ERRORS = (OSError, SyntaxError, struct.error, EOFError, ValueError, Image.DecompressionBombError)


def image_to_uint8(pixels: np.ndarray) -> np.ndarray:
    """Map [0, 1] floats to uint8 (x * 255, rounded half to even, clipped), for hashing and saving."""
    scaled = np.rint(np.asarray(pixels, dtype=np.float32) * np.float32(255.0))
    return np.clip(np.nan_to_num(scaled), 0, 255).astype(np.uint8)


def read_image(path: str | os.PathLike[str], *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> LoadedImage:
    """Read one image file: ``.pixels`` (gray float32 H x W in [0, 1]) and ``.info`` (what the file said).

    The format is detected from the content, not the extension. ``max_pixels`` bounds
    width * height, checked from the header before any pixel is decoded; ``None`` disables it
    (Pillow's process-wide ``Image.MAX_IMAGE_PIXELS`` is neither used nor changed).
    Raises :class:`ImageReadError` for every unreadable input.
    """
    if max_pixels is not None and max_pixels < 1:
        raise ValueError(f"max_pixels must be positive or None, got {max_pixels!r}")
    name = os.fsdecode(path)
    with _open_file(name) as handle:
        try:
            return _read_by_content(handle, name, max_pixels)
        except MemoryError:
            raise ImageReadError(name, "not enough memory to decode the image") from None
        except OSError as exc:  # reading the file itself failed (I/O error on a network share...)
            raise ImageReadError(name, f"could not read the file ({describe(exc)})") from None


def _read_by_content(handle: BinaryIO, name: str, max_pixels: int | None) -> LoadedImage:
    """Pick the decoder from the first bytes (the extension only decides whether to try headerless DICOM)."""
    head = handle.read(_DICOM_MAGIC_OFFSET + 4)
    handle.seek(0)
    if head.startswith(_PNG_MAGIC):
        return _read_pillow(handle, name, "PNG", max_pixels)
    if head.startswith(_JPEG_MAGIC):
        return _read_pillow(handle, name, "JPEG", max_pixels)
    if head[_DICOM_MAGIC_OFFSET:] == b"DICM":
        return read_dicom(handle, name, max_pixels, force=False)  # type: ignore[return-value]
    if name.lower().endswith(_DICOM_SUFFIXES):
        loaded = read_dicom(handle, name, max_pixels, force=True)
        if loaded is not None:
            return loaded
        handle.seek(0)
    return _read_pillow(handle, name, None, max_pixels)


@contextmanager
def _open_file(name: str) -> Iterator[BinaryIO]:
    """Open ``name`` for reading, turning OS errors and empty/special files into ImageReadError."""
    try:
        # closed below; os-level on the name as given: Path("") would be the current folder, not a missing file
        handle = open(name, "rb")  # noqa: SIM115, PTH123
    except FileNotFoundError:
        raise ImageReadError(name, "file not found") from None
    except IsADirectoryError:
        raise ImageReadError(name, "is a directory, not an image file") from None
    except PermissionError:
        problem = "is a directory, not an image file" if os.path.isdir(name) else "permission denied"  # noqa: PTH112 - as above
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
            # Exactly what Image.open catches from a plugin's factory to mean "not my format, try the next":
            # the plugins signal a header they cannot parse that way (it ends in UnidentifiedImageError).
            continue
    raise UnidentifiedImageError("cannot identify image file")


def _read_pillow(handle: BinaryIO, name: str, sniffed: str | None, max_pixels: int | None) -> LoadedImage:
    """Decode a PNG/JPEG/other Pillow image; ``sniffed`` is the format its magic bytes announced."""
    label = sniffed or "image"
    try:
        image = _open_unchecked(handle)  # lazy: reads the header only
    except UnidentifiedImageError:
        problem = f"corrupt {sniffed} file (header cannot be parsed)" if sniffed else _NOT_RECOGNISED
        raise ImageReadError(name, problem) from None
    except _PILLOW_ERRORS as exc:
        raise ImageReadError(name, _decode_problem(exc, label, "corrupt {fmt} file")) from None

    with image:
        width, height = image.size
        check_pixels(name, width, height, max_pixels)
        fmt = sniffed or image.format or "unknown"
        mode = image.mode
        try:
            image.load()
        except Image.DecompressionBombError as exc:
            # A few plugins (GIF frames) check Pillow's own process-wide limit while decoding.
            raise ImageReadError(name, f"over Pillow's pixel limit Image.MAX_IMAGE_PIXELS ({describe(exc)})") from None
        except MemoryError:
            raise ImageReadError(name, "not enough memory to decode the image") from None
        except _PILLOW_ERRORS as exc:
            raise ImageReadError(name, _decode_problem(exc, fmt, "cannot decode {fmt} image data")) from None

        try:
            oriented = ImageOps.exif_transpose(image)
        except _PILLOW_ERRORS as exc:
            # Broken EXIF should not make the pixels unreadable: keep the stored orientation.
            logger.warning("%s: ignoring unreadable EXIF orientation (%s)", name, describe(exc))
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
    # Pillow has no exception type for truncation (an OSError "image file is truncated"), so only the wording of
    # our message looks at its text; what is caught, and that it becomes an ImageReadError, never does.
    if isinstance(exc, EOFError) or "truncated" in str(exc).lower():
        return f"{fmt} file is truncated (data ends early; the file is incomplete or corrupt)"
    return f"{otherwise.format(fmt=fmt)} ({describe(exc)})"


def _pillow_bit_depth(mode: str) -> int:
    if mode == "1":
        return 1
    if mode == "I" or mode.startswith("I;16"):
        return 16
    if mode in ("I;32", "F"):
        return 32
    return 8


def _pillow_to_gray(image: Image.Image) -> np.ndarray:
    """Convert a loaded Pillow image of any mode to float32 (H, W) in [0, 1]."""
    mode = image.mode
    gray: np.ndarray
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
        gray = min_max(np.asarray(image, dtype=np.float32))
    elif mode == "LA":
        la = np.asarray(image, dtype=np.float32)
        gray = la[..., 0] * la[..., 1] / np.float32(255.0 * 255.0)  # over black
    elif mode == "La":
        gray = np.asarray(image, dtype=np.float32)[..., 0] / np.float32(255.0)  # already premultiplied
    elif mode in ("RGB", "RGBX", "RGBa"):
        gray = luminance(np.asarray(image)) / np.float32(255.0)
    elif mode == "RGBA":
        gray = _rgba_over_black(np.asarray(image))
    elif mode in ("P", "PA"):
        # Via RGBA: palette entries without transparency get alpha 255, so one path covers both.
        gray = _rgba_over_black(np.asarray(image.convert("RGBA")))
    elif mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        gray = luminance(np.asarray(image.convert("RGB"))) / np.float32(255.0)
    else:
        gray = np.asarray(image.convert("L"), dtype=np.float32) / np.float32(255.0)
    return finish(gray)


def _rgba_over_black(rgba: np.ndarray) -> np.ndarray:
    alpha = rgba[..., 3].astype(np.float32) / np.float32(255.0)
    return luminance(rgba) * alpha / np.float32(255.0)


