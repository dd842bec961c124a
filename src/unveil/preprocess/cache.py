"""`unveil preprocess`: a content-addressed cache of pre-processed images (and their lung masks).

Each cached file is keyed by the SHA-256 of the source file *and* of the pre-processing settings
(working size, equalization, masking, blur, and the segmentation model's own hash), so a rerun
is free and a change of any setting never reuses a stale file. Images are processed in parallel
worker processes, each loading the segmenter once; results stream back one small row at a time,
so memory stays flat however many images. An image that fails is named, skipped and listed in
the run's manifest (or stops the run at the end with ``strict``).

Layout: ``<cache>/<key[:2]>/<key>.png`` (16-bit gray, [0, 1] scaled to 0..65535) and
``<key>.mask.png`` (8-bit, 0/255, at the working size), plus ``manifest-<settings>.csv`` per run.
Training reads an image set through one uint8 array file, ``<cache>/arrays/<set key>.npy``
(N x 1 x S x S, built once from the PNGs, memory-mapped: see :func:`image_array`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from filelock import FileLock
from PIL import Image

from unveil.artifacts import Input, write_artifact
from unveil.documents import load_json
from unveil.errors import UnveilError, disk_full, no_space
from unveil.io import DEFAULT_MAX_PIXELS, ImageReadError, read_image
from unveil.progress import bar as progress_bar
from unveil.provenance import file_sha256, write_text_atomic
from unveil.segmentation import LungSegmenter, default_model_path
from unveil.transforms import paper_pipeline, resize_image, resize_mask

log = logging.getLogger(__name__)

EQUALIZATIONS = ("global", "lungs", "clahe", "none")
MASK_MODES = ("segment", "truth", "none")


class PreprocessSettingsError(UnveilError, ValueError):
    """A pre-processing setting is invalid, or the lung model it names cannot be used."""


@dataclass(frozen=True)
class PreprocessSettings:
    """Everything that changes a pre-processed image (and so its cache key)."""

    size: int = 256
    equalize: str = "global"
    mask: str = "segment"  # segment with the model, use the record's own mask ("truth"), or none
    blur_radius: float = 3.0
    model: str | None = None  # segmentation bundle path; None = the shipped model
    convention: str | None = None  # lung-mask convention ("visible" / "full"); None = the lung model's default
    model_sha256: str | None = None  # filled in by :func:`resolve_settings`

    def key(self) -> str:
        described = {k: v for k, v in asdict(self).items() if k != "model"}
        return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:16]


def resolve_settings(settings: PreprocessSettings) -> PreprocessSettings:
    """Validate the settings and pin the segmentation model by content hash."""
    if settings.equalize not in EQUALIZATIONS:
        raise PreprocessSettingsError(f"equalize must be one of {EQUALIZATIONS}, got {settings.equalize!r}")
    if settings.mask not in MASK_MODES:
        raise PreprocessSettingsError(f"mask must be one of {MASK_MODES}, got {settings.mask!r}")
    if not 16 <= settings.size <= 4096:
        raise PreprocessSettingsError(f"size must be in [16, 4096], got {settings.size}")
    if settings.mask != "segment":
        return PreprocessSettings(**{**asdict(settings), "model": None, "model_sha256": None, "convention": None})
    weights = Path(settings.model) if settings.model else default_model_path()
    if weights.suffix != ".safetensors":
        weights = weights.with_suffix(".safetensors")
    if not weights.is_file():
        raise PreprocessSettingsError(f"{weights}: segmentation model not found")
    convention = _lung_convention(weights, settings.convention)
    digest = file_sha256(weights)
    if settings.model_sha256 is not None and settings.model_sha256 != digest:  # recorded (bundle): must match
        raise PreprocessSettingsError(f"{weights}: lung model changed since it was recorded (SHA-256 {digest[:12]}..., "
                                      f"recorded {settings.model_sha256[:12]}...); masks would differ silently from "
                                      "the ones the model was trained with: restore that lung model")
    return PreprocessSettings(**{**asdict(settings), "model": str(weights), "model_sha256": digest,
                                 "convention": convention})


def _lung_convention(weights: Path, asked: str | None) -> str:
    """The lung-mask convention to segment in: ``asked``, checked against what the lung model knows, or
    the model's default; written into the settings so that it is part of every cache key and bundle."""
    description = load_json(weights.with_suffix(".json"), PreprocessSettingsError, "lung model description")
    known = [str(c) for c in description.get("conventions", ["visible"])]
    if asked is None:
        return str(description.get("default_convention", known[0]))
    if asked not in known:
        raise PreprocessSettingsError(f"lung convention must be one of {', '.join(known)} (what this lung model "
                                      f"knows); got {asked!r}")
    return asked


def cache_paths(cache: Path, key: str) -> tuple[Path, Path]:
    folder = cache / key[:2]
    return folder / f"{key}.png", folder / f"{key}.mask.png"


def load_cached(image_path: str | Path) -> np.ndarray:
    """A cached 16-bit image back as float32 in [0, 1]."""
    with Image.open(image_path) as image:
        return np.asarray(image, dtype=np.float32) / 65535.0


def _save_png(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        Image.fromarray(array).save(temporary, format="PNG", compress_level=1)  # uint16 -> 16-bit, uint8 -> 8-bit
        temporary.replace(path)
    except OSError as error:
        if no_space(error):
            raise disk_full(path, error) from None  # picklable across the worker pool: no chained cause
        raise
    finally:
        temporary.unlink(missing_ok=True)


_SEGMENTER: Any = None
_MAX_PIXELS: int | None = DEFAULT_MAX_PIXELS


def die_with_parent() -> None:
    """Make this (worker) process exit when its parent dies, even by ``kill -9``: Linux's
    ``prctl(PR_SET_PDEATHSIG, SIGKILL)`` through ctypes, else a daemon thread polling ``os.getppid()``.
    Without it, workers of a killed ``unveil preprocess`` stay alive, blocked on a pipe, holding memory."""
    import signal
    import sys
    import threading
    import time

    parent = os.getppid()
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(1, signal.SIGKILL, 0, 0, 0) == 0:  # 1 = PR_SET_PDEATHSIG
                if os.getppid() != parent:  # the parent died before prctl took effect
                    os._exit(1)
                return
        except (OSError, AttributeError):
            pass

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="unveil-parent-watch", daemon=True).start()


def _init_worker(model_path: str | None, threads: int, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                 worker: bool = False) -> None:
    """Per-process set-up: one segmenter, few torch threads (parallelism is across processes), the pixel
    limit; a worker process also dies with its parent."""
    global _SEGMENTER, _MAX_PIXELS
    if worker:
        die_with_parent()
    _MAX_PIXELS = max_pixels
    import torch

    torch.set_num_threads(threads)
    if model_path is not None:
        _SEGMENTER = LungSegmenter.load(model_path)


def prepare_image(path: str | Path, truth_mask: str | None, settings: PreprocessSettings,
                  segmenter: LungSegmenter | None, *, max_pixels: int | None = DEFAULT_MAX_PIXELS
                  ) -> tuple[np.ndarray, np.ndarray]:
    """One radiograph through the paper's chain with ``settings``: read, resize, lung mask (segmented, the
    record's own, or none), equalize, blurred mask applied, [0, 1]. Returns (image float32 S x S, mask bool S x S);
    what the cache stores and what :class:`unveil.preprocess.dataset.RecordDataset` yields."""
    image = resize_image(read_image(path, max_pixels=max_pixels).pixels, settings.size)
    if settings.mask == "segment":
        if segmenter is None:
            raise PreprocessSettingsError("mask 'segment' needs a lung segmenter")
        mask = segmenter.segment(image, convention=settings.convention)
    elif settings.mask == "truth":
        if not truth_mask:
            raise ValueError("mask 'truth' asked for but the record has no mask_path")
        with Image.open(truth_mask) as stored:
            mask = resize_mask(np.asarray(stored.convert("L")) > 127, settings.size)
    else:
        mask = np.ones_like(image, dtype=bool)
    pipeline = paper_pipeline(settings.size, blur_radius=settings.blur_radius, equalize=settings.equalize,
                              mask=settings.mask != "none")
    return pipeline({"image": image, "mask": mask})["image"], mask


def process_one(job: tuple[str, str, str | None, str, dict[str, Any]]) -> dict[str, Any]:
    """Pre-process one record into the cache (or find it there); return its manifest row."""
    record_id, path, truth_mask, cache, spec = job
    settings = PreprocessSettings(**spec)
    row: dict[str, Any] = {"record_id": record_id, "path": path, "status": "failed", "error": None,
                           "cache_path": None, "mask_path": None, "lung_fraction": None}
    try:
        key = hashlib.sha256(f"{file_sha256(path)}:{settings.key()}".encode()).hexdigest()
    except OSError as error:
        row["error"] = f"{path}: cannot read file ({error.strerror or error})"
        return row
    image_file, mask_file = cache_paths(Path(cache), key)
    if image_file.is_file() and mask_file.is_file():
        with Image.open(mask_file) as mask_image:
            fraction = float((np.asarray(mask_image) > 127).mean())
        return {**row, "status": "hit", "cache_path": str(image_file), "mask_path": str(mask_file),
                "lung_fraction": round(fraction, 4)}
    try:
        processed, mask = prepare_image(path, truth_mask, settings, _SEGMENTER, max_pixels=_MAX_PIXELS)
    except ImageReadError as error:
        row["error"] = str(error)
        return row
    except (OSError, ValueError) as error:
        row["error"] = f"{path}: {error}"
        return row
    _save_png(np.rint(np.clip(processed, 0, 1) * 65535).astype(np.uint16), image_file)
    _save_png(mask.astype(np.uint8) * 255, mask_file)
    return {**row, "status": "processed", "cache_path": str(image_file), "mask_path": str(mask_file),
            "lung_fraction": round(float(mask.mean()), 4)}


@dataclass
class PreprocessReport:
    settings: PreprocessSettings
    manifest: pd.DataFrame
    manifest_path: Path
    failures: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return {str(k): int(v) for k, v in self.manifest["status"].value_counts().items()}


class PreprocessError(UnveilError, RuntimeError):
    """Strict mode: some images could not be pre-processed (the message lists them)."""

    exit_code = 1  # some inputs could not be used: a partial failure, not a mistake


def preprocess_records(records: pd.DataFrame, cache: str | Path, settings: PreprocessSettings = PreprocessSettings(),
                       *, workers: int = 1, progress: bool = False, strict: bool = False,
                       max_pixels: int | None = DEFAULT_MAX_PIXELS) -> PreprocessReport:
    """Fill the cache for ``records``; return the manifest (one row per record, failures included).
    ``max_pixels``: images whose header declares more pixels fail before decoding."""
    settings = resolve_settings(settings)
    cache = Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    spec = asdict(settings)
    masks = records["mask_path"] if "mask_path" in records else pd.Series([None] * len(records))
    jobs = [(str(r), str(p), None if pd.isna(m) else str(m), str(cache), spec)
            for r, p, m in zip(records["record_id"], records["path"], masks, strict=True)]
    model = settings.model if settings.mask == "segment" else None
    rows = list(_run(jobs, model, workers, progress, max_pixels))
    manifest = pd.DataFrame(rows, columns=["record_id", "path", "status", "error", "cache_path", "mask_path",
                                           "lung_fraction"])
    manifest_path = cache / f"manifest-{settings.key()}.csv"
    write_text_atomic(manifest_path, manifest.to_csv(index=False, lineterminator="\n"))
    write_text_atomic(cache / f"settings-{settings.key()}.json",
                      json.dumps(asdict(settings), indent=2, sort_keys=True) + "\n")
    write_artifact(manifest_path, "preprocessed", [manifest_path.name, f"settings-{settings.key()}.json"],
                   command="preprocess", config=spec, inputs=[Input("lung-model", None, settings.model_sha256)])
    failures = [str(e) for e in manifest.loc[manifest["status"] == "failed", "error"]]
    for failure in failures:
        log.warning("skipped: %s", failure)
    report = PreprocessReport(settings, manifest, manifest_path, failures)
    if strict and failures:
        raise PreprocessError(f"{len(failures)} image(s) could not be pre-processed:\n  " + "\n  ".join(failures))
    return report


def _run(jobs: list, model: str | None, workers: int, progress: bool,
         max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Iterator[dict[str, Any]]:
    if workers <= 1:
        import torch

        # this process: keep its thread setting
        _init_worker(model, threads=torch.get_num_threads(), max_pixels=max_pixels)
        iterator: Any = map(process_one, jobs)
        yield from progress_bar(iterator, total=len(jobs), unit="img", desc="preprocess", enabled=progress)
        return
    with ProcessPoolExecutor(max_workers=workers, initializer=_init_worker,
                             initargs=(model, 1, max_pixels, True)) as pool:
        iterator = pool.map(process_one, jobs, chunksize=4)
        yield from progress_bar(iterator, total=len(jobs), unit="img", desc="preprocess", enabled=progress)


# --- image arrays: one memory-mapped uint8 file per image set -----------------------------------

ARRAY_FOLDER = "arrays"
_CACHED_NAME = re.compile(r"^([0-9a-f]{64})\.png$")


class ImageArrayError(UnveilError, OSError):
    """An image-array file cannot be built (not a cached image, not enough disk space)."""


def content_key(image_path: str | Path) -> str:
    """The content key of a cached image (its file name in the layout ``<key[:2]>/<key>.png``)."""
    path = Path(image_path)
    match = _CACHED_NAME.match(path.name)
    if match is None or path.parent.name != match.group(1)[:2]:
        raise ImageArrayError(f"{path}: not an image of the pre-processing cache (<key[:2]>/<key>.png); "
                              "image arrays are built only from cached images")
    return match.group(1)


def cached_uint8(image_path: str | Path, size: int) -> np.ndarray:
    """A cached image as training reads it: uint8 (0..255), resized to ``size`` x ``size`` if it differs."""
    image = load_cached(image_path)
    if image.shape != (size, size):
        image = resize_image(image, (size, size))
    return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)


def array_path(cache: str | Path, image_paths: list[str], size: int) -> Path:
    """Where the array of these cached images (in this order, at ``size``) lives: named by the SHA-256 of
    their content keys and the size, so the same set maps to the same file in every run and rank."""
    described = json.dumps({"size": int(size), "images": [content_key(p) for p in image_paths]})
    digest = hashlib.sha256(described.encode()).hexdigest()[:32]
    return Path(cache) / ARRAY_FOLDER / f"{digest}-{len(image_paths)}x{size}.npy"


def image_array(cache: str | Path, image_paths: list[str], size: int) -> np.memmap:
    """The cached images ``image_paths`` as one read-only memory-mapped uint8 array (N x 1 x S x S).

    The ``.npy`` file is built on first use, image by image (memory stays flat however many images),
    under a file lock (concurrent runs and DDP ranks build it once and map the same file, so the OS
    page cache holds it once), and moved into place when complete. A damaged file is rebuilt. Rows
    are in the order of ``image_paths``. Writing into the array fails: it is the file."""
    if not image_paths:
        raise ImageArrayError("no image to put in an image array")
    path = array_path(cache, image_paths, size)
    shape = (len(image_paths), 1, int(size), int(size))
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{path}.lock"):
        array = _open_array(path, shape)
        if array is None:
            _write_array(path, image_paths, shape)
            array = _open_array(path, shape)
        if array is None:
            raise ImageArrayError(f"{path}: written but unreadable as a {shape} uint8 array")
    return array


def _open_array(path: Path, shape: tuple[int, ...]) -> np.memmap | None:
    """The array file mapped read-only, or None when absent or not the expected uint8 array."""
    if not path.is_file():
        return None
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:
        log.warning("%s: damaged image array (%s); rebuilding it", path, error)
        return None
    if array.dtype != np.uint8 or array.shape != shape:
        log.warning("%s: holds a %s %s array, not uint8 %s; rebuilding it", path, array.dtype, array.shape, shape)
        return None
    return array


def _write_array(path: Path, image_paths: list[str], shape: tuple[int, ...]) -> None:
    """Stream the images into a temporary ``.npy`` file, one at a time, then rename it into place."""
    needed = int(np.prod(shape)) + 4096
    free = shutil.disk_usage(path.parent).free
    if free < needed:
        raise ImageArrayError(f"{path.parent}: the image array of {shape[0]} images at {shape[-1]} px needs "
                              f"{_megabytes(needed)}, only {_megabytes(free)} free; free some space or use "
                              "another cache folder")
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False, "shape": shape}
    try:
        with temporary.open("wb") as stream:
            np.lib.format.write_array_header_1_0(stream, header)
            for image_path in image_paths:
                stream.write(cached_uint8(image_path, shape[-1]).tobytes())
            stream.flush()
            os.fsync(stream.fileno())
        temporary.replace(path)
    finally:
        if temporary.exists():
            temporary.unlink()


def _megabytes(count: int) -> str:
    return f"{count / 1e9:.2f} GB" if count >= 1e9 else f"{count / 1e6:.1f} MB"
