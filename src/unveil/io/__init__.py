"""Image input/output: read any supported radiograph as gray float32, write test DICOMs."""

from unveil.io.dicom import has_dicom_preamble, read_dicom_header
from unveil.io.dicom_writer import write_dicom
from unveil.io.images import (
    DEFAULT_MAX_PIXELS,
    ImageInfo,
    ImageReadError,
    LoadedImage,
    image_to_uint8,
    read_image,
)
from unveil.io.properties import FileProperties, read_file_properties

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "FileProperties",
    "ImageInfo",
    "ImageReadError",
    "LoadedImage",
    "has_dicom_preamble",
    "image_to_uint8",
    "read_dicom_header",
    "read_file_properties",
    "read_image",
    "write_dicom",
]
