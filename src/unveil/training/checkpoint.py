"""Checkpoints of a training run: written atomically after every epoch, resumed only by the same configuration."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from unveil.errors import UnveilError
from unveil.provenance import write_bytes_atomic
from unveil.training.config import AFTER_TRAINING, TrainConfig


class CheckpointError(UnveilError, RuntimeError):
    """A checkpoint cannot be resumed (unreadable, or from a different configuration)."""


def save_checkpoint(path: Path, document: dict[str, Any]) -> None:
    """Atomic: a kill during the write leaves the previous checkpoint intact. Serialised in memory, then written
    by Python: a full disk is an ``OSError`` with its errno (torch's own writer reports it as an opaque
    ``RuntimeError: [enforce fail ...]``), raised as one :class:`unveil.errors.DiskFullError`."""
    buffer = io.BytesIO()
    torch.save(document, buffer)
    write_bytes_atomic(path, buffer.getbuffer())


def load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a truncated or foreign file: say which and why
        raise CheckpointError(f"{path}: not a readable unveil checkpoint ({type(error).__name__}: {error})") from None


def check_resumable(state: dict[str, Any], config: TrainConfig, path: Path) -> None:
    """A checkpoint continues only the same configuration, except ``epochs``: more extends the run
    (the optimizer and LR schedule continue where they stopped, and the best epoch is chosen over
    all epochs), fewer than already trained is refused. A cosine schedule spans the planned epochs,
    so with it ``epochs`` cannot change."""
    saved = dict(state.get("config") or {})
    wanted = config.to_dict()
    keys = dict.fromkeys([*saved, *wanted])
    ignored = {"epochs", *AFTER_TRAINING}  # the threshold and the collapse check come after training
    differing = [key for key in keys if key not in ignored and saved.get(key) != wanted.get(key)]
    if differing:
        changes = ", ".join(f"{key} {saved.get(key)!r} -> {wanted.get(key)!r}" for key in differing)
        raise CheckpointError(f"{path}: written by a run with a different configuration ({changes}); "
                              "use a new run directory (or --no-resume to start over)")
    done, planned = int(state["epoch"]), int(saved.get("epochs", config.epochs))
    if config.epochs < done:
        raise CheckpointError(f"{path}: {done} epoch(s) already trained, more than the {config.epochs} asked for; "
                              f"ask for at least {done} (more extends the run), or use a new run directory "
                              "(or --no-resume to start over)")
    if config.epochs != planned and config.scheduler == "cosine":
        raise CheckpointError(f"{path}: the cosine schedule spans the {planned} planned epoch(s), so epochs cannot "
                              f"change to {config.epochs}; use a new run directory (or --no-resume)")
