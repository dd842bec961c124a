"""Stages as verified artifacts: one writer and one loader for what each stage of unveil leaves behind.

An artifact is a stage's output (a folder, or one file) plus a ``meta.json`` describing it: its ``kind``
(:data:`KINDS`), the SHA-256 of each of its files, the artifacts it was built from (path and digest), the
command and resolved configuration that made it, and the versions of Python, torch and unveil
(:func:`unveil.provenance.write_run_metadata`). A folder artifact keeps it as ``FOLDER/meta.json``; a one-file
artifact beside the file, ``NAME.meta.json`` (``splits.csv`` -> ``splits.meta.json``).

:func:`load_artifact` is the one loader: it refuses (:class:`ArtifactError`) a file that no longer hashes as
recorded, and an artifact whose recorded input now hashes otherwise ("built from something else": the error names
the input and the meta.json). Outputs of older versions, without a meta.json, still load, with a warning that
they are unverified. The chain: records -> split -> pre-processed set -> bundle -> evaluation -> audit -> report
(docs/artifacts.md).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unveil.documents import load_json
from unveil.errors import UnveilError
from unveil.provenance import file_sha256, write_run_metadata

log = logging.getLogger(__name__)

KINDS: tuple[str, ...] = ("records", "split", "preprocessed", "bundle", "evaluation", "audit", "report")
META = "meta.json"
FORMAT = "unveil-artifact"
FORMAT_VERSION = 1
_WARNED: set[Path] = set()  # legacy outputs already said to be unverified


class ArtifactError(UnveilError, ValueError):
    """An artifact is not what its meta.json says: a file changed or is missing, an input it was built from
    changed, or the meta.json itself is unreadable or of another kind. The message names the file."""


@dataclass(frozen=True)
class Input:
    """One thing an artifact was built from: another artifact or a plain file (``path``), or a described input
    with no file of its own (``path`` None, e.g. a dataset's record table, ``sha256`` its content hash)."""

    kind: str
    path: Path | None
    sha256: str | None = None
    role: str = ""

    def as_dict(self, base: Path) -> dict[str, Any]:
        return {"kind": self.kind, "role": self.role, "sha256": self.sha256,
                "path": None if self.path is None else _relative(self.path, base)}


@dataclass(frozen=True)
class Artifact:
    """A loaded artifact: where it is, its meta.json (empty for a legacy output) and whether it was verified."""

    path: Path
    kind: str
    meta: dict[str, Any] = field(default_factory=dict)
    verified: bool = True

    @property
    def files(self) -> dict[str, str]:
        return dict(self.meta.get("files", {}))

    @property
    def inputs(self) -> list[dict[str, Any]]:
        return list(self.meta.get("inputs", []))

    def input(self, role: str) -> dict[str, Any] | None:
        """The recorded input of that ``role`` (``split``, ``encoder``...), or None."""
        return next((item for item in self.inputs if item.get("role") == role), None)


def meta_path(path: str | Path) -> Path:
    """Where the meta.json of the artifact at ``path`` lives: inside a folder, beside a file."""
    path = Path(path)
    if path.is_dir():
        return path / META
    return path.with_suffix(".meta.json") if path.is_file() or path.suffix else path / META


#: The staging folder a guarded command writes into before it is moved into place (``unveil.io.outputs``): an
#: artifact written there records its inputs relative to the folder it lands in, its parent.
STAGING_DIR = ".unveil-partial"


def _landing(base: Path) -> Path:
    """Where an artifact folder ends up: the parent of a staging folder, else the folder itself."""
    return base.parent if base.name == STAGING_DIR else base


def _base(path: Path) -> Path:
    """The folder an artifact's file names are relative to."""
    return path if meta_path(path).parent == path else path.parent


def _relative(path: Path, base: Path) -> str:
    return os.path.relpath(Path(path).absolute(), base.absolute())


def content_digest(files: Mapping[str, str]) -> str:
    """One SHA-256 over an artifact's ``{name: sha256}`` (sorted): what a later artifact records of its inputs.
    It depends on the files' contents only, so rewriting identical content keeps it."""
    lines = "".join(f"{name}\t{digest}\n" for name, digest in sorted(files.items()))
    return hashlib.sha256(lines.encode("utf-8")).hexdigest()


def current_digest(path: str | Path) -> str | None:
    """The digest an input at ``path`` has now: an artifact's :func:`content_digest` of its files as they are, a
    plain file's SHA-256; None for what cannot be hashed (missing, or a folder without meta.json)."""
    path = Path(path)
    meta = meta_path(path)
    if meta.is_file():
        recorded = _read_meta(meta).get("files", {})
        base = _base(path)
        try:
            return content_digest({name: file_sha256(base / name) for name in recorded})
        except OSError:
            return None
    return file_sha256(path) if path.is_file() else None


def artifact_input(path: str | Path, kind: str, role: str = "") -> Input:
    """An input to record: the artifact or file at ``path`` with its current digest."""
    return Input(kind, Path(path), current_digest(path), role)


def write_artifact(path: str | Path, kind: str, files: Iterable[str | Path], *, command: str,
                   config: Mapping[str, Any], inputs: Iterable[Input] = (),
                   extra: Mapping[str, Any] | None = None) -> Path:
    """The one writer: hash ``files`` (names relative to the artifact's folder, or paths inside it) and write the
    artifact's meta.json atomically with its kind, inputs, command, configuration and versions; returns it."""
    if kind not in KINDS:
        raise ArtifactError(f"{path}: unknown artifact kind {kind!r}; one of {', '.join(KINDS)}")
    path = Path(path)
    base = _base(path)
    hashes = {_relative(base / name, base): file_sha256(base / name) for name in files}
    document = {"artifact": FORMAT, "format_version": FORMAT_VERSION, "kind": kind, "files": hashes,
                "digest": content_digest(hashes), "inputs": [item.as_dict(_landing(base)) for item in inputs],
                **dict(extra or {})}
    return write_run_metadata(meta_path(path), command, dict(config), extra=document)


def _read_meta(meta: Path) -> dict[str, Any]:
    document = load_json(meta, ArtifactError, "artifact meta.json")
    if document.get("artifact") != FORMAT or not isinstance(document.get("files"), dict) \
            or not isinstance(document.get("inputs", []), list):
        raise ArtifactError(f"{meta}: not an unveil artifact description (needs artifact, kind, files, inputs)")
    return document


def _check_files(meta: Path, base: Path, files: Mapping[str, str]) -> None:
    for name, recorded in files.items():
        target = base / name
        if not target.is_file():
            raise ArtifactError(f"{target}: listed in {meta} but missing; rebuild it with the command that wrote it")
        now = file_sha256(target)
        if now != recorded:
            raise ArtifactError(f"{target}: content hash differs from the one {meta} recorded (sha256 "
                                f"{recorded[:12]}..., now {now[:12]}...); rebuild it with the command that wrote it")


def _check_inputs(meta: Path, base: Path, inputs: list[dict[str, Any]]) -> None:
    for item in inputs:
        if not isinstance(item, dict) or item.get("path") is None or item.get("sha256") is None:
            continue  # a described input (no file), or one that could not be hashed when recorded
        source = Path(os.path.normpath(base / str(item["path"])))
        now = current_digest(source)
        if now is None:
            log.warning("%s: input %s (%s) is not there any more; not verified", meta, source, item.get("kind"))
        elif now != item["sha256"]:
            raise ArtifactError(f"{meta}: built from {source} ({item.get('kind')}), whose content hash has changed "
                                f"since (sha256 {str(item['sha256'])[:12]}..., now {now[:12]}...); its results would "
                                "be of something else: rebuild it")


def load_artifact(path: str | Path, kind: str | None = None, *, check_inputs: bool = True) -> Artifact:
    """The one loader: read the meta.json of the artifact at ``path`` and verify that its files hash as recorded
    and (``check_inputs``) that the inputs it names still do; an output without meta.json (older versions) loads
    unverified, with a warning. Any mismatch is an :class:`ArtifactError` naming the file."""
    path = Path(path)
    meta = meta_path(path)
    if not meta.is_file():
        if not path.exists():
            raise ArtifactError(f"{path}: no such {kind or 'artifact'}")
        if meta not in _WARNED:  # once per file and process: a legacy split is read several times per evaluation
            _WARNED.add(meta)
            log.warning("%s: no %s beside it (written by an older unveil?): loaded unverified", path, meta.name)
        return Artifact(path, kind or "", {}, verified=False)
    document = _read_meta(meta)
    if kind is not None and document.get("kind") != kind:
        raise ArtifactError(f"{meta}: describes a {document.get('kind')!r} artifact, expected {kind!r}")
    base = _base(path)
    _check_files(meta, base, document["files"])
    if check_inputs:
        _check_inputs(meta, base, document.get("inputs", []))
    return Artifact(path, str(document["kind"]), document, verified=True)
