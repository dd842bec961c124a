"""Run metadata: the resolved configuration and package versions written beside every result."""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import sys
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

from unveil.errors import disk_full, no_space

_PACKAGES = ("unveil-cxr", "torch", "torchvision", "numpy", "pandas", "pillow", "pydicom", "scikit-learn",
             "monai", "imagehash")


def environment_versions() -> dict[str, str | None]:
    """Versions of Python, the platform and the packages unveil's results depend on."""
    versions: dict[str, str | None] = {"python": sys.version.split()[0], "platform": platform.platform()}
    for package in _PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8, ``\n`` line ends) to ``path`` atomically: see :func:`write_bytes_atomic`."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_bytes_atomic(path: str | Path, data: bytes | memoryview) -> Path:
    """Write ``data`` to ``path`` through a temporary file and a rename: never a half-written file, no temporary
    left behind; a full disk or quota is one :class:`unveil.errors.DiskFullError` naming ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
        Path(temporary).chmod(0o644)  # mkstemp creates 0600; results are meant to be shared
        Path(temporary).replace(path)
    except OSError as error:
        if no_space(error):
            raise disk_full(path, error) from error
        raise
    finally:
        Path(temporary).unlink(missing_ok=True)
    return path


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return value.item()
    return value


def write_run_metadata(path: str | Path, command: str, config: dict[str, Any],
                       extra: dict[str, Any] | None = None) -> Path:
    """Write ``<...>.meta.json``: command, resolved configuration, versions, time (UTC)."""
    document = {
        "command": command,
        "config": _jsonable(config),
        "versions": environment_versions(),
        "created_utc": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    if extra:
        document.update(_jsonable(extra))
    return write_text_atomic(path, json.dumps(document, indent=2, sort_keys=True) + "\n")


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes, read in chunks (memory stays flat for large files)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as stream:
        while block := stream.read(chunk):
            digest.update(block)
    return digest.hexdigest()
