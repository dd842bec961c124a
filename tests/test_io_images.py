"""Tests for unveil.io.images: every supported layout decodes to the expected [0, 1] values,
and every bad input becomes an ImageReadError that names the file and the problem."""

from __future__ import annotations

import pickle
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import JPEG2000Lossless

from unveil.io import (
    DEFAULT_MAX_PIXELS,
    ImageInfo,
    ImageReadError,
    LoadedImage,
    has_dicom_preamble,
    image_to_uint8,
    images,
    read_dicom_header,
    read_image,
    write_dicom,
)

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
LUMA = np.array([0.299, 0.587, 0.114])


def save(tmp_path: Path, name: str, image: Image.Image, **kwargs) -> Path:
    path = tmp_path / name
    image.save(path, **kwargs)
    return path


def noise_image(size: tuple[int, int] = (64, 64)) -> Image.Image:
    """Incompressible content so a cut file really loses image data."""
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8))


def expect_error(path: Path, *keywords: str, **kwargs) -> ImageReadError:
    with pytest.raises(ImageReadError) as caught:
        read_image(path, **kwargs)
    error = caught.value
    assert isinstance(error, ImageReadError)
    assert error.path == str(path)
    assert str(path) in str(error)
    assert str(error) == f"{path}: {error.problem}"
    for keyword in keywords:
        assert keyword in error.problem.lower(), error.problem
    assert error.__cause__ is None and (error.__context__ is None or error.__suppress_context__)
    return error


# ------------------------------------------------------------------------------------------ Pillow


def test_gray8_png_exact(tmp_path: Path) -> None:
    stored = np.array([[0, 51], [128, 255], [7, 200]], dtype=np.uint8)
    loaded = read_image(save(tmp_path, "g.png", Image.fromarray(stored)))
    assert isinstance(loaded, LoadedImage)
    assert loaded.pixels.dtype == np.float32 and loaded.pixels.shape == (3, 2)
    np.testing.assert_array_equal(loaded.pixels, stored.astype(np.float32) / np.float32(255))
    assert loaded.info == ImageInfo(str(tmp_path / "g.png"), "PNG", 3, 2, 8, "L", None)


def test_gray8_jpeg_round_trip(tmp_path: Path) -> None:
    stored = np.repeat(np.repeat(np.array([[0, 64], [160, 255]], dtype=np.uint8), 16, 0), 16, 1)
    loaded = read_image(save(tmp_path, "g.jpg", Image.fromarray(stored), quality=95))
    assert loaded.info.format == "JPEG" and loaded.info.photometric == "L" and loaded.info.bit_depth == 8
    assert loaded.pixels.shape == (32, 32)
    np.testing.assert_allclose(loaded.pixels, stored / 255.0, atol=4 / 255)


def test_png_16_bit(tmp_path: Path) -> None:
    stored = np.array([[0, 32768], [65535, 1000]], dtype=np.uint16)
    loaded = read_image(save(tmp_path, "g16.png", Image.fromarray(stored)))
    assert loaded.info.bit_depth == 16 and loaded.info.photometric.startswith("I")
    assert loaded.pixels[1, 0] == 1.0 and loaded.pixels[0, 0] == 0.0
    assert loaded.pixels[0, 1] == pytest.approx(32768 / 65535, abs=1e-7)
    assert loaded.pixels[1, 1] == pytest.approx(1000 / 65535, abs=1e-7)


def test_rgb_to_luminance(tmp_path: Path) -> None:
    rgb = np.array([[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [255, 255, 255]]], dtype=np.uint8)
    loaded = read_image(save(tmp_path, "c.png", Image.fromarray(rgb, "RGB")))
    assert loaded.info.photometric == "RGB"
    np.testing.assert_allclose(loaded.pixels, [[0.299, 0.587], [0.114, 1.0]], atol=1e-6)


def test_rgba_composited_over_black(tmp_path: Path) -> None:
    rgba = np.array([[[255, 255, 255, 0], [255, 255, 255, 255], [200, 200, 200, 128]]], dtype=np.uint8)
    loaded = read_image(save(tmp_path, "a.png", Image.fromarray(rgba, "RGBA")))
    assert loaded.info.photometric == "RGBA"
    np.testing.assert_allclose(loaded.pixels, [[0.0, 1.0, 200 / 255 * 128 / 255]], atol=1e-6)


def palette_image() -> Image.Image:
    image = Image.fromarray(np.array([[0, 1, 2]], dtype=np.uint8), "P")
    image.putpalette([0, 0, 0, 255, 255, 255, 255, 0, 0])
    return image


def test_palette_without_transparency(tmp_path: Path) -> None:
    loaded = read_image(save(tmp_path, "p.png", palette_image()))
    assert loaded.info.photometric == "P"
    np.testing.assert_allclose(loaded.pixels, [[0.0, 1.0, 0.299]], atol=1e-6)


def test_palette_with_transparency(tmp_path: Path) -> None:
    loaded = read_image(save(tmp_path, "pt.png", palette_image(), transparency=1))
    assert loaded.info.photometric == "P"
    np.testing.assert_allclose(loaded.pixels, [[0.0, 0.0, 0.299]], atol=1e-6)  # white entry is transparent


def test_one_bit(tmp_path: Path) -> None:
    image = Image.fromarray(np.array([[True, False], [False, True]]))
    assert image.mode == "1"
    loaded = read_image(save(tmp_path, "b.png", image))
    assert loaded.info.photometric == "1" and loaded.info.bit_depth == 1
    np.testing.assert_array_equal(loaded.pixels, [[1.0, 0.0], [0.0, 1.0]])


def test_exif_orientation_applied(tmp_path: Path) -> None:
    stored = np.zeros((16, 32), dtype=np.uint8)
    stored[:, 16:] = 255  # left half black, right half white
    exif = Image.Exif()
    exif[0x0112] = 6  # display = stored rotated 90 degrees clockwise
    loaded = read_image(save(tmp_path, "o.jpg", Image.fromarray(stored), exif=exif, quality=95))
    assert loaded.pixels.shape == (32, 16)
    assert (loaded.info.height, loaded.info.width) == (32, 16)
    assert loaded.pixels[:12].max() < 0.1  # the left (black) edge is now on top
    assert loaded.pixels[20:].min() > 0.9


def test_format_sniffed_from_content_not_extension(tmp_path: Path) -> None:
    png = save(tmp_path, "really_png.jpg", Image.fromarray(np.array([[9]], dtype=np.uint8)), format="PNG")
    assert read_image(png).info.format == "PNG"
    dicom = write_dicom(tmp_path / "really_dicom.png", np.array([[0, 5]], dtype=np.uint16))
    assert read_image(dicom).info.format == "DICOM"
    bmp = save(tmp_path, "g.bmp", Image.fromarray(np.array([[0, 255]], dtype=np.uint8)))
    loaded = read_image(bmp)
    assert loaded.info.format == "BMP"
    np.testing.assert_array_equal(loaded.pixels, [[0.0, 1.0]])


def test_pillow_global_limit_neither_blocks_nor_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = save(tmp_path, "n.png", noise_image())
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)  # Pillow alone would raise DecompressionBombError
    assert read_image(path).pixels.shape == (64, 64)
    assert Image.MAX_IMAGE_PIXELS == 10


def test_max_pixels_none_disables_the_check(tmp_path: Path) -> None:
    path = save(tmp_path, "n.png", noise_image((8, 8)))
    assert read_image(path, max_pixels=None).pixels.shape == (8, 8)
    assert read_image(path, max_pixels=64).pixels.shape == (8, 8)  # the limit is inclusive


def test_image_to_uint8() -> None:
    out = image_to_uint8(np.array([[0.0, 0.5, 1.0, 1.2, -0.1, 0.2]], dtype=np.float32))
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, [[0, 128, 255, 255, 0, 51]])


def test_error_is_picklable() -> None:
    error = pickle.loads(pickle.dumps(ImageReadError("/x/y.png", "file not found")))
    assert (error.path, error.problem, str(error)) == ("/x/y.png", "file not found", "/x/y.png: file not found")


# ------------------------------------------------------------------------------------------- DICOM

STORED_12 = np.array([[100, 600], [1100, 4095]], dtype=np.uint16)


def test_dicom_monochrome2_min_max(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "m2.dcm", STORED_12, bits_stored=12)
    loaded = read_image(path)
    np.testing.assert_allclose(loaded.pixels, (STORED_12 - 100) / 3995, atol=1e-6)
    assert loaded.pixels.dtype == np.float32
    assert loaded.info == ImageInfo(str(path), "DICOM", 2, 2, 12, "MONOCHROME2", None)


def test_dicom_monochrome1_inverted(tmp_path: Path) -> None:
    loaded = read_image(write_dicom(tmp_path / "m1.dcm", STORED_12, photometric="MONOCHROME1"))
    assert loaded.info.photometric == "MONOCHROME1"
    np.testing.assert_allclose(loaded.pixels, 1 - (STORED_12 - 100) / 3995, atol=1e-6)


def test_dicom_rescale_applied(tmp_path: Path) -> None:
    # A negative slope flips the modality values, so min-max on them inverts the stored order.
    stored = np.array([[0, 100, 200]], dtype=np.uint16)
    loaded = read_image(write_dicom(tmp_path / "r.dcm", stored, rescale_slope=-1, rescale_intercept=0))
    np.testing.assert_allclose(loaded.pixels, [[1.0, 0.5, 0.0]], atol=1e-6)


def test_dicom_window_after_rescale(tmp_path: Path) -> None:
    # modality = 2 * stored - 1000 = [-1000, 0, 1000, 3000]; LINEAR window 1000/2001 spans (-0.5, 1999.5].
    stored = np.array([[0, 500, 1000, 2000]], dtype=np.uint16)
    path = write_dicom(
        tmp_path / "rw.dcm", stored, rescale_slope=2, rescale_intercept=-1000, window_center=1000, window_width=2001
    )
    np.testing.assert_allclose(read_image(path).pixels, [[0.0, 0.00025, 0.50025, 1.0]], atol=1e-6)


def test_dicom_window_center_width(tmp_path: Path) -> None:
    # LINEAR window 2000/1001 spans (1499.5, 2499.5]: below -> 0, above -> 1.
    stored = np.array([[0, 1000, 2000, 3000, 4095]], dtype=np.uint16)
    path = write_dicom(tmp_path / "w.dcm", stored, window_center=2000, window_width=1001)
    np.testing.assert_allclose(read_image(path).pixels, [[0.0, 0.0, 0.5005, 1.0, 1.0]], atol=1e-6)


def test_dicom_voi_lut_sequence_preferred(tmp_path: Path) -> None:
    stored = np.array([[0, 1, 2, 3]], dtype=np.uint16)
    path = write_dicom(tmp_path / "lut.dcm", stored, window_center=1, window_width=1)  # the LUT must win
    ds = pydicom.dcmread(path)
    item = Dataset()
    item.add_new("LUTDescriptor", "US", [4, 0, 16])
    item.add_new("LUTData", "US", [0, 100, 200, 400])
    ds.VOILUTSequence = [item]
    ds.save_as(path)
    np.testing.assert_allclose(read_image(path).pixels, [[0.0, 0.25, 0.5, 1.0]], atol=1e-6)


def test_dicom_view_position(tmp_path: Path) -> None:
    assert read_image(write_dicom(tmp_path / "v.dcm", STORED_12, view="PA")).info.view == "PA"


def test_dicom_signed_pixels(tmp_path: Path) -> None:
    stored = np.array([[-2048, -1000, 0, 2047]], dtype=np.int16)
    loaded = read_image(write_dicom(tmp_path / "s.dcm", stored, signed=True))
    np.testing.assert_allclose(loaded.pixels, [[0.0, 1048 / 4095, 2048 / 4095, 1.0]], atol=1e-6)
    # Signed windowing outputs [-2048, 2047]; window 0/101 spans (-50.5, 49.5].
    path = write_dicom(tmp_path / "sw.dcm", stored, signed=True, window_center=0, window_width=101)
    np.testing.assert_allclose(read_image(path).pixels, [[0.0, 0.0, 0.505, 1.0]], atol=1e-6)


def test_dicom_without_preamble_by_extension(tmp_path: Path) -> None:
    ds = pydicom.dcmread(write_dicom(tmp_path / "full.dcm", STORED_12))
    bare = Dataset()
    bare.update(ds)  # no preamble, no file meta
    path = tmp_path / "bare.dcm"
    bare.save_as(path, implicit_vr=True, little_endian=True)
    assert path.read_bytes()[128:132] != b"DICM"
    loaded = read_image(path)
    assert loaded.info.format == "DICOM"
    np.testing.assert_allclose(loaded.pixels, (STORED_12 - 100) / 3995, atol=1e-6)


def test_dicom_multi_frame_rejected(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "mf.dcm", np.arange(8, dtype=np.uint16).reshape(4, 2))
    ds = pydicom.dcmread(path)
    ds.Rows, ds.NumberOfFrames = 2, 2
    ds.save_as(path)
    expect_error(path, "multi-frame")


def test_dicom_patient_fields_never_exposed(tmp_path: Path) -> None:
    secrets = ("ZZSECRETNAME", "ZZSECRETID42", "19010203")
    path = write_dicom(tmp_path / "p.dcm", STORED_12, view="AP")
    ds = pydicom.dcmread(path)
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = f"{secrets[0]}^ANNA", secrets[1], secrets[2]
    ds.PatientSex, ds.PatientAge = "F", "077Y"
    ds.save_as(path)
    loaded = read_image(path)
    for secret in secrets:
        assert secret not in repr(loaded.info) and secret not in repr(loaded)
    del ds.PixelData
    ds.save_as(path)
    error = expect_error(path, "pixel data")
    for secret in secrets:
        assert secret not in str(error) and secret not in repr(error)


def test_dicom_writer_header_and_header_reader(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """write_dicom sets further elements by keyword; read_dicom_header reads only those asked for, never the
    pixels, and a value it reads (a PatientID too long for its VR) reaches no warning and no log record."""
    secret = "ZZSECRETID" * 7
    with warnings.catch_warnings():  # pydicom warns on writing a value longer than VR LO allows
        warnings.simplefilter("ignore")
        path = write_dicom(tmp_path / "no-suffix", STORED_12, view="PA",
                           header={"Manufacturer": "Acme", "InstitutionName": "North General", "PatientID": secret})
    caplog.clear()
    caplog.set_level("DEBUG")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        header = read_dicom_header(path, ["PatientID", "Manufacturer", "InstitutionName", "StationName", "Rows",
                                          "MediaStorageSOPClassUID"])
    assert header == {"PatientID": secret, "Manufacturer": "Acme", "InstitutionName": "North General",
                      "StationName": None, "Rows": "2", "MediaStorageSOPClassUID": "1.2.840.10008.5.1.4.1.1.1.1"}
    assert caught == [] and secret not in caplog.text
    assert has_dicom_preamble(path) and not has_dicom_preamble(save(tmp_path, "x.png", noise_image((4, 4))))
    with pytest.raises(ImageReadError, match="cannot be opened"):
        has_dicom_preamble(tmp_path / "absent")
    for bad in ({"NoSuchKeyword": "x"}, {"SOPInstanceUID": "1.2"}, {"ViewPosition": "AP"}):
        with pytest.raises(ValueError, match="write_dicom"):
            write_dicom(tmp_path / "bad.dcm", STORED_12, header=bad)


# --------------------------------------------------------------------------------------- bad input


def test_missing_file(tmp_path: Path) -> None:
    expect_error(tmp_path / "nope.png", "not found")


def test_directory(tmp_path: Path) -> None:
    expect_error(tmp_path, "directory")


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    error = expect_error(path, "empty")
    assert error.problem == "empty file (0 bytes)"


def test_permission_denied(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = save(tmp_path, "locked.png", noise_image((4, 4)))

    def refuse(name: str, *args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied", name)

    # chmod 0 does not stop root, so simulate the OS refusing to open the file.
    monkeypatch.setattr(images, "open", refuse, raising=False)
    expect_error(path, "permission denied")


@pytest.mark.parametrize(("name", "fmt"), [("cut.png", "PNG"), ("cut.jpg", "JPEG")])
def test_truncated(tmp_path: Path, name: str, fmt: str) -> None:
    path = save(tmp_path, name, noise_image(), format=fmt)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    expect_error(path, "truncated", fmt.lower())


def test_random_bytes(tmp_path: Path) -> None:
    path = tmp_path / "noise.png"
    path.write_bytes(np.random.default_rng(1).integers(0, 256, 512, dtype=np.uint8).tobytes())
    expect_error(path, "not a recognised image format")


def test_text_file(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("label,path\nnormal,a.png\n")
    expect_error(path, "not a recognised image format")


def test_garbage_with_dicom_extension(tmp_path: Path) -> None:
    path = tmp_path / "junk.dcm"
    path.write_bytes(b"this is not a DICOM file at all\n" * 8)
    expect_error(path, "not a recognised image format")


def test_dicom_without_pixel_data(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "nopix.dcm", STORED_12)
    ds = pydicom.dcmread(path)
    del ds.PixelData
    ds.save_as(path)
    expect_error(path, "no pixel data")


def test_pixel_limit_png(tmp_path: Path) -> None:
    path = save(tmp_path, "big.png", noise_image((10, 10)))
    error = expect_error(path, "10x10", "limit", "max_pixels", max_pixels=50)
    assert "100" in error.problem and "50" in error.problem


def test_pixel_limit_checked_from_header_before_decoding(tmp_path: Path) -> None:
    # A PNG whose header claims 100000 x 100000 pixels but holds almost no image data: refused by the limit,
    # not by a decoding (truncation) error, proving the check precedes decoding.
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    path = tmp_path / "bomb.png"
    header = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0))
    header += chunk(b"IDAT", zlib.compress(b"\0" * 64))  # a few bytes; decoding would fail as truncated
    path.write_bytes(header)
    assert DEFAULT_MAX_PIXELS < 100_000 * 100_000
    expect_error(path, "100000x100000", "limit", "max_pixels")


def test_pixel_limit_dicom(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "big.dcm", np.zeros((10, 10), dtype=np.uint16))
    expect_error(path, "10x10", "limit", "max_pixels", max_pixels=99)


def test_dicom_undecodable_transfer_syntax(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "j2k.dcm", STORED_12)
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = JPEG2000Lossless  # claims JPEG 2000; the bytes are not
    ds.PixelData = encapsulate([bytes(range(256)) * 4])
    ds["PixelData"].VR = "OB"
    ds.save_as(path)
    error = expect_error(path, "jpeg 2000", "decoder plugin")
    assert JPEG2000Lossless in error.problem


def test_dicom_missing_required_element_is_named(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "nobits.dcm", STORED_12)
    ds = pydicom.dcmread(path)
    del ds.BitsStored
    ds.save_as(path)
    expect_error(path, "bits stored", "needed to decode")


def test_truncated_dicom_pixel_data_is_named(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "short.dcm", STORED_12)
    ds = pydicom.dcmread(path)
    ds.PixelData = ds.PixelData[:4]
    ds.save_as(path)
    expect_error(path, "truncated")


def test_too_large_is_refused_and_pillow_global_unchanged(tmp_path: Path) -> None:
    before = Image.MAX_IMAGE_PIXELS
    png = save(tmp_path, "n.png", noise_image((20, 20)))
    dicom = write_dicom(tmp_path / "n.dcm", np.zeros((20, 20), dtype=np.uint16))
    for path in (png, dicom):
        expect_error(path, "20x20", "limit", max_pixels=399)
        assert read_image(path, max_pixels=400).pixels.shape == (20, 20)
        assert read_image(path, max_pixels=None).pixels.shape == (20, 20)
    assert before == Image.MAX_IMAGE_PIXELS


@pytest.mark.parametrize("bug", [TypeError, AttributeError, KeyError, RuntimeError, IndexError])
def test_a_bug_inside_the_pillow_decoder_propagates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    bug: type[Exception]) -> None:
    """Only what decoders raise for bad files means "unreadable image"; our own bugs keep their traceback."""
    from PIL import PngImagePlugin

    def broken(self):
        raise bug("a bug, not a bad file")

    path = save(tmp_path, "g.png", noise_image((8, 8)))
    monkeypatch.setattr(PngImagePlugin.PngImageFile, "load", broken)
    with pytest.raises(bug, match="a bug, not a bad file"):
        read_image(path)


@pytest.mark.parametrize("bug", [TypeError, AttributeError, KeyError, IndexError])
def test_a_bug_inside_the_dicom_decoder_propagates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   bug: type[Exception]) -> None:
    from unveil.io import dicom_voi

    def broken(*args, **kwargs):
        raise bug("a bug, not a bad file")

    path = write_dicom(tmp_path / "g.dcm", STORED_12)
    monkeypatch.setattr(dicom_voi, "apply_modality_lut", broken)
    with pytest.raises(bug, match="a bug, not a bad file"):
        read_image(path)
    monkeypatch.undo()
    monkeypatch.setattr(pydicom.Dataset, "pixel_array", property(broken))
    with pytest.raises(bug, match="a bug, not a bad file"):
        read_image(path)


# ---------------------------------------------------------------------------------------- real data


@pytest.mark.realdata
def test_real_dicom() -> None:
    files = sorted((SHARED / "dicom").glob("*.dcm"))
    if not files:
        pytest.skip("../shared/data/dicom/*.dcm not present")
    loaded = read_image(files[0])
    assert loaded.pixels.shape == (1024, 1024) and loaded.pixels.dtype == np.float32
    assert 0.0 <= loaded.pixels.min() < loaded.pixels.max() <= 1.0
    assert loaded.info.format == "DICOM"
    header = pydicom.dcmread(files[0], stop_before_pixels=True)
    for keyword in ("PatientName", "PatientID"):
        value = str(header.get(keyword) or "")
        if len(value) >= 4:
            assert value not in repr(loaded)


@pytest.mark.realdata
def test_real_jpeg() -> None:
    folder = SHARED / "chest_xray" / "train" / "NORMAL"
    files = sorted(folder.glob("*.jpeg")) + sorted(folder.glob("*.jpg")) if folder.is_dir() else []
    if not files:
        pytest.skip("../shared/data/chest_xray/train/NORMAL not present")
    loaded = read_image(files[0])
    assert loaded.info.format == "JPEG"
    assert loaded.pixels.ndim == 2 and loaded.pixels.shape == (loaded.info.height, loaded.info.width)
    assert 0.0 <= loaded.pixels.min() < loaded.pixels.max() <= 1.0
