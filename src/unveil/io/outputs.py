"""Output folders that never lose or overwrite a user's files.

Every command that writes results into a user-named folder goes through :class:`OutputFolder`:

- the folder must not overlap the inputs (neither inside an input folder nor holding an input), so a
  run never writes over, or later reads back, the files it was given;
- one run at a time holds an exclusive lock (``.unveil.lock``, ``fcntl.flock``); a second run into the
  same folder is refused at once, never interleaved;
- results are written into a staging folder (``.unveil-partial``) and moved into place only when the run
  completes, so an interrupted or failing run leaves the previous complete result untouched (the
  staging folder marks the incomplete run and is cleared by the next run);
- a read-only or unwritable folder is one clear error, not a traceback, and so is a full disk (or spent
  quota): :class:`unveil.errors.DiskFullError` names the file, the partial result is removed;
- a model bundle (a folder holding ``bundle.json``) is never an output folder.

``staged=False`` (train, pretrain, reproduce: runs that resume in place) keeps the lock and the checks and
writes straight into the folder.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path

from unveil.artifacts import STAGING_DIR
from unveil.errors import UnveilError, disk_full, no_space

__all__ = ["LOCK_FILE", "STAGING_DIR", "OutputError", "OutputFolder", "check_no_overlap", "ensure_writable",
           "refuse_model_folder"]

LOCK_FILE = ".unveil.lock"


class OutputError(UnveilError, OSError):
    """An output folder cannot be used: it overlaps the inputs, is busy with another run or is not writable
    (the message names the folder)."""

    def __str__(self) -> str:  # OSError's str() would prefix an errno; the message is already one line
        return str(self.args[0]) if self.args else "output error"


def _resolved(path: str | Path) -> Path:
    # lexical first ("a/link/.." is "a"), then symlinks: Path.resolve alone would follow the link before ".."
    return Path(os.path.abspath(Path(path).expanduser())).resolve()  # noqa: PTH100


def check_no_overlap(out: str | Path, inputs: Iterable[str | Path]) -> None:
    """Refuse an output folder that is an input, lies inside an input folder or holds an input."""
    target = _resolved(out)
    for item in inputs:
        source = _resolved(item)
        if target == source or (source.is_dir() and target.is_relative_to(source)):
            raise OutputError(f"{out}: output folder lies inside the input {item}; choose a folder outside the "
                              "inputs (outputs would overwrite or be read back as inputs)")
        if source.is_relative_to(target):
            raise OutputError(f"{out}: output folder holds the input {item}; choose a folder outside the inputs")


def refuse_model_folder(out: str | Path) -> None:
    """Refuse an output folder that is a model bundle (it holds ``bundle.json``): results written there would
    sit among, or replace, the model's own files."""
    if (_resolved(out) / "bundle.json").is_file():
        raise OutputError(f"{out}: output folder is a model bundle (it holds bundle.json); choose a folder "
                          "outside the model")


def ensure_writable(out: str | Path) -> Path:
    """Create ``out`` if needed and check that files can be created in it (one-line error otherwise)."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".unveil-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except FileExistsError:
        raise OutputError(f"{out}: output path exists and is not a folder") from None
    except OSError as error:
        why = "read-only or not writable" if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS) else \
            (error.strerror or str(error))
        raise OutputError(f"{out}: cannot write to the output folder ({why})") from None
    return out


class OutputFolder:
    """An exclusive, staged output folder: ``with OutputFolder(out, inputs) as staged: ...`` writes into
    ``staged.stage`` and, on success, :meth:`commit` moves each written entry into ``out``.

    Entries are replaced one by one with ``os.replace`` (a folder entry through a rename of the old one
    aside), so each output is either the previous complete version or the new complete one."""

    def __init__(self, out: str | Path, inputs: Sequence[str | Path] = (), *, staged: bool = True,
                 lock: bool = True) -> None:
        self.out = Path(out)
        check_no_overlap(self.out, inputs)
        refuse_model_folder(self.out)
        self._lock_handle: int | None = None
        self.staged, self.lock = staged, lock
        self.stage = self.out / STAGING_DIR if staged else self.out

    def __enter__(self) -> OutputFolder:
        import fcntl

        self._created = not self.out.exists()
        ensure_writable(self.out)
        if self.lock:
            handle = os.open(self.out / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(handle)
                raise OutputError(f"{self.out}: another unveil run is writing into this folder; wait for it or "
                                  "choose another --out") from None
            self._lock_handle = handle
        if not self.staged:  # a run that resumes in place (train, pretrain, reproduce): lock and checks only
            return self
        try:
            if self.stage.exists():  # left by an interrupted run: never part of a complete result
                shutil.rmtree(self.stage)
            self.stage.mkdir()
        except OSError as error:
            self._unlock()
            raise OutputError(f"{self.out}: cannot prepare the output folder ({error.strerror or error})") from None
        return self

    def commit(self) -> list[Path]:
        """Move every staged entry into the output folder; returns the final paths."""
        moved = []
        for entry in sorted(self.stage.iterdir()):
            target = self.out / entry.name
            if entry.is_dir() and target.is_dir():
                aside = self.out / f".unveil-old-{entry.name}"
                if aside.exists():
                    shutil.rmtree(aside)
                target.rename(aside)
                entry.rename(target)
                shutil.rmtree(aside)
            else:
                entry.replace(target)
            moved.append(target)
        return moved

    def _unlock(self) -> None:
        if self._lock_handle is not None:
            os.close(self._lock_handle)  # closing releases the flock
            self._lock_handle = None

    def __exit__(self, kind, value, traceback) -> None:
        try:
            if kind is None and self.staged:
                self.commit()
                shutil.rmtree(self.stage, ignore_errors=True)
            elif value is not None and no_space(value):  # the one place a full disk becomes one line
                if self.staged:
                    shutil.rmtree(self.stage, ignore_errors=True)  # free what the partial run took
                raise disk_full(getattr(value, "filename", None) or self.out, value) from value
        finally:
            self._unlock()
            if kind is not None and self._created:
                self._remove_if_empty()

    def _remove_if_empty(self) -> None:
        """A run that failed in a folder it created leaves no folder behind: its staging folder (nothing came
        before it) and its lock go, and the folder too unless the run wrote into it directly (``staged=False``)."""
        if self.staged:
            shutil.rmtree(self.stage, ignore_errors=True)
        (self.out / LOCK_FILE).unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # not empty: what a resumable run wrote stays for its rerun
            self.out.rmdir()
