"""Feedback on long work: progress bars with an ETA, and one line per finished step.

Two channels, both on stderr so that stdout stays machine-readable:

- **bars** (:func:`bar`, tqdm): drawn only on a terminal, for steps longer than a few seconds
  (pre-processing, training epochs, evaluation, audit stages);
- **step lines** (:data:`progress_log`, the ``unveil.progress`` logger): one line per finished
  epoch (validation loss, AUC, balanced accuracy) or experiment cell. The CLI always shows them
  (:func:`configure_logging`); from Python, enable them with
  ``logging.getLogger("unveil.progress").setLevel(logging.INFO)`` and a handler.

Lines are written with ``tqdm.write`` so that they never tear a bar in progress.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable
from typing import Any, TypeVar

from tqdm import tqdm

PROGRESS_LOGGER = "unveil.progress"
progress_log = logging.getLogger(PROGRESS_LOGGER)

T = TypeVar("T")


class TqdmHandler(logging.Handler):
    """A logging handler writing through ``tqdm.write`` to the current ``sys.stderr``."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # logging must never take the program down
            self.handleError(record)


def configure_logging(verbose: bool = False) -> None:
    """The CLI's logging: warnings (info with ``verbose``) as ``LEVEL name: message``; step lines always.

    Step lines get their own handler (bare message); the root handler skips them, so they appear once.
    """
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, TqdmHandler)]:
        root.removeHandler(handler)
    if not root.handlers:  # like logging.basicConfig: leave a host's (or pytest's) handlers alone
        handler = TqdmHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        handler.addFilter(lambda record: not record.name.startswith(PROGRESS_LOGGER))
        root.addHandler(handler)
    root.setLevel(logging.INFO if verbose else logging.WARNING)
    lines = TqdmHandler()
    lines.setFormatter(logging.Formatter("%(message)s"))
    progress_log.handlers[:] = [lines]
    progress_log.setLevel(logging.INFO)


def bar(iterable: Iterable[T] | None = None, *, enabled: bool = True, **options: Any) -> tqdm:
    """A tqdm bar on stderr with rate and ETA; drawn only when ``enabled`` and stderr is a terminal."""
    options.setdefault("dynamic_ncols", True)
    return tqdm(iterable, disable=None if enabled else True, file=sys.stderr, **options)


def duration(seconds: float) -> str:
    """``42 s``, ``3.5 min``, ``1.2 h``: short human durations for step lines."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
