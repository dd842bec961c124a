"""Feedback on long work: progress bars with an ETA, and one line per finished step.

Two channels, both on stderr so that stdout stays machine-readable:

- **bars** (:func:`bar`, tqdm): drawn only on a terminal, for steps longer than a few seconds
  (pre-processing, training epochs, evaluation, audit stages, prediction). When stderr is not a
  terminal (a log file, CI, Slurm) no bar is drawn; the same call gives time-stamped lines instead
  (:class:`LineProgress`): one when the phase starts, one every ``UNVEIL_PROGRESS_INTERVAL`` seconds
  (default 30) with the count, rate and ETA, and one when it ends; a phase over within 2 s prints
  nothing. :func:`phase` does the same for work without countable steps (export);
- **step lines** (:data:`progress_log`, the ``unveil.progress`` logger): one line per finished
  epoch (validation loss, AUC, balanced accuracy) or experiment cell. The CLI always shows them
  (:func:`configure_logging`); from Python, enable them with
  ``logging.getLogger("unveil.progress").setLevel(logging.INFO)`` and a handler.

Lines are written with ``tqdm.write`` so that they never tear a bar in progress.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import threading
import time
import weakref
from collections.abc import Iterable, Iterator, Sized
from contextlib import contextmanager
from typing import Any, TypeVar

from tqdm import tqdm

PROGRESS_LOGGER = "unveil.progress"
DEFAULT_INTERVAL = 30.0
#: A phase that ends sooner prints no line at all (a cache hit is not news).
START_GRACE = 2.0
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


def bar(iterable: Iterable[T] | None = None, *, enabled: bool = True, **options: Any) -> tqdm | LineProgress:
    """Progress of ``enabled`` work on stderr: a tqdm bar with rate and ETA on a terminal, time-stamped
    lines (:class:`LineProgress`, the same calls) anywhere else; nothing when not ``enabled``."""
    if enabled and not _stderr_is_terminal():
        return LineProgress(iterable, **options)
    options.setdefault("dynamic_ncols", True)
    return tqdm(iterable, disable=None if enabled else True, file=sys.stderr, **options)


def _stderr_is_terminal() -> bool:
    try:
        return bool(sys.stderr.isatty())
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False


def progress_interval() -> float:
    """Seconds between two lines of a phase in progress (``UNVEIL_PROGRESS_INTERVAL``, default 30)."""
    try:
        value = float(os.environ.get("UNVEIL_PROGRESS_INTERVAL", DEFAULT_INTERVAL))
    except ValueError:
        return DEFAULT_INTERVAL
    return value if math.isfinite(value) and value > 0 else DEFAULT_INTERVAL


def _stamp() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S")


class LineProgress:
    """A tqdm bar's twin for logs: ``2026-12-03 07:01:12 preprocess: started (212 img)``, then every interval
    ``... preprocess: 96/212 img (45 %), 3.1 img/s, ETA 37 s``, and ``... preprocess: done, 212 img in 68 s``.

    A phase over within ``START_GRACE`` seconds prints nothing. Lines go to :data:`progress_log` (the CLI
    shows them on stderr). A nested bar (``leave=False``, e.g. the
    batches of one epoch, whose end the epoch line reports) prints only its interval lines. The interval lines
    come from a daemon thread, so one long step (a t-SNE) still shows it is alive. Accepts and ignores tqdm's
    display options."""

    def __init__(self, iterable: Iterable[Any] | None = None, *, total: int | None = None, desc: str = "",
                 unit: str = "it", leave: bool = True, interval: float | None = None, **_display: Any) -> None:
        self.iterable = iterable
        self.total = total if total is not None else (len(iterable) if isinstance(iterable, Sized) else None)
        self.desc, self.unit, self.leave = desc or "progress", unit, leave
        self.n, self.postfix = 0, ""
        self.started = time.perf_counter()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._closed = self._announced = False
        self._stamp = _stamp()
        every = interval or progress_interval()
        self._beat = threading.Thread(target=_heartbeat, args=(weakref.ref(self), self._stop, every,
                                                               min(START_GRACE, every)), daemon=True)
        self._beat.start()

    def announce(self) -> None:
        """The start line (with the time the phase started), once, and only for a phase still running after
        ``START_GRACE`` seconds: a phase served from a cache in no time prints nothing."""
        with self._lock:
            if self.leave and not self._closed and not self._announced:
                self._announced = True
                size = f" ({self.total} {self.unit})" if self.total is not None else ""
                progress_log.info("%s %s: started%s", self._stamp, self.desc, size)

    def __del__(self) -> None:  # a phase abandoned by an exception stops its heartbeat once it is collected
        stop = getattr(self, "_stop", None)
        if stop is not None:
            stop.set()

    def status(self) -> str:
        """``96/212 img (45 %), 3.1 img/s, ETA 37 s[, postfix]``"""
        elapsed = time.perf_counter() - self.started
        rate = self.n / elapsed if elapsed > 0 else 0.0
        if self.total:
            text = f"{self.n}/{self.total} {self.unit} ({100 * self.n / self.total:.0f} %), {rate:.3g} {self.unit}/s"
            if 0 < self.n < self.total and rate > 0:
                text += f", ETA {duration((self.total - self.n) / rate)}"
        elif self.n:
            text = f"{self.n} {self.unit}, {duration(elapsed)} so far"
        else:
            text = f"running, {duration(elapsed)} so far"
        return text + (f", {self.postfix}" if self.postfix else "")

    def __iter__(self):
        try:
            for item in self.iterable or ():
                yield item
                self.update()
        finally:
            self.close()

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix(self, **values: Any) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def set_postfix_str(self, text: str = "") -> None:
        self.postfix = text

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._stop.set()
            announced = self._announced
        if announced:
            count = f"{self.n} {self.unit} " if self.n or self.total is not None else ""
            progress_log.info("%s %s: done, %sin %s", _stamp(), self.desc, count,
                              duration(time.perf_counter() - self.started))

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _heartbeat(progress: weakref.ref[LineProgress], stop: threading.Event, interval: float, grace: float) -> None:
    """After ``grace`` seconds the start line, then every ``interval`` seconds one line of ``progress``; holds it
    only weakly, so that a phase left open (an exception between creation and ``close``) is collected and its
    thread ends."""
    if stop.wait(grace):
        return
    current = progress()
    if current is None:
        return
    current.announce()
    del current
    while not stop.wait(interval):
        current = progress()
        if current is None:
            return
        progress_log.info("%s %s: %s", _stamp(), current.desc, current.status())
        del current


@contextmanager
def phase(desc: str, *, enabled: bool = True) -> Iterator[None]:
    """A phase without countable steps (an export): a start line, a line every interval while it runs, an end
    line with its duration, on any stderr (a terminal too: there is no bar to draw)."""
    if not enabled:
        yield
        return
    with LineProgress(desc=desc, unit="step"):
        yield


def duration(seconds: float) -> str:
    """``42 s``, ``3.5 min``, ``1.2 h``: short human durations for step lines."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
