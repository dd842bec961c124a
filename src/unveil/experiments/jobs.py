"""The units of work of ``unveil reproduce``: grid cells, pre-training and cell jobs (picklable: they run in
other processes or on Dask workers), the attempts log that proves a resume, and the embedded local executor.

Every job writes only its own run folder; the caller records results (the driver alone writes the store).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unveil.data.spec import DataSpec
from unveil.preprocess.cache import PreprocessSettings
from unveil.progress import duration, progress_log
from unveil.provenance import write_text_atomic
from unveil.tracking import TrackingSettings
from unveil.training import pretrain, train
from unveil.training.config import TrainConfig


def report_step(progress: Callable[[str], None] | None, message: str) -> None:
    """A step line: through ``progress`` when given (the CLI adds the elapsed time), else ``unveil.progress``."""
    if progress is not None:
        progress(message)
    else:
        progress_log.info("%s", message)


def cell_id(architecture: str, encoder: str, composition: str, debias: str = "none") -> str:
    """``conv8-B-AB``; a cell of the mitigated arm adds its method: ``conv8-B-AB-end``."""
    return f"{architecture}-{encoder}-{composition}" + ("" if debias == "none" else f"-{debias}")


@dataclass(frozen=True)
class Cell:
    """One grid cell: an architecture, an encoder (``none``: from scratch), a training composition and, in the
    mitigated arm, the debias method it is trained with (``none``: the grid's own cells)."""

    architecture: str
    encoder: str
    composition: str
    run_dir: Path
    debias: str = "none"

    @property
    def id(self) -> str:
        return cell_id(self.architecture, self.encoder, self.composition, self.debias)

    @property
    def twin_id(self) -> str:
        """The unmitigated cell this one is compared with (itself for a grid cell)."""
        return cell_id(self.architecture, self.encoder, self.composition)

    @property
    def bundle(self) -> Path:
        return self.run_dir / "model"


@dataclass(frozen=True)
class PretrainJob:
    """One encoder to pre-train (picklable: it may run in another process)."""

    name: str
    data: list[DataSpec]
    run_dir: Path
    config: TrainConfig
    preprocess: PreprocessSettings
    cache: Path
    classes: tuple[str, ...] | None
    workers: int
    progress: bool
    init_weights: str | None = None  # a weights file the encoder starts from (torchvision / torchxrayvision)
    tracking: TrackingSettings | None = None  # TensorBoard / MLflow besides metrics.jsonl

    def run(self) -> dict[str, Any]:
        attempt = _begin_attempt(self.run_dir)
        result = pretrain(self.data, self.run_dir, config=self.config, preprocess=self.preprocess, cache=self.cache,
                          classes=self.classes, workers=self.workers, progress=self.progress,
                          init_weights=self.init_weights, tracking=self.tracking)
        return {"bundle": str(result.bundle), "seconds": result.seconds, "best_epoch": result.best_epoch, **attempt}


@dataclass(frozen=True)
class CellJob:
    """One grid cell to train (picklable: it may run in another process)."""

    cell: Cell
    bindings: dict[str, DataSpec]
    config: TrainConfig
    preprocess: PreprocessSettings
    cache: Path
    encoder: str | None  # the pre-trained encoder's bundle; None: from scratch
    workers: int
    recipes: Path | None
    progress: bool
    init_weights: str | None = None  # an encoder used as it is, from a weights file (no pre-training run)
    tracking: TrackingSettings | None = None  # TensorBoard / MLflow besides metrics.jsonl

    @property
    def name(self) -> str:
        return self.cell.id

    def run(self) -> dict[str, Any]:
        attempt = _begin_attempt(self.cell.run_dir)
        result = train(self.cell.composition, self.bindings, self.cell.run_dir, config=self.config,
                       preprocess=self.preprocess, encoder=self.encoder, cache=self.cache, workers=self.workers,
                       recipes=self.recipes, progress=self.progress, init_weights=self.init_weights,
                       tracking=self.tracking)
        return {"bundle": str(result.bundle), "seconds": result.seconds, "best_epoch": result.best_epoch,
                "val_auc": result.best_metrics.get("val_auc"), **attempt}


Job = PretrainJob | CellJob


def attempt_note(result: dict[str, Any]) -> str:
    """`` (attempt 2, resumed after epoch 3)`` for a job that did not finish in its first process, else ``""``."""
    if result.get("attempt", 1) <= 1:
        return ""
    resumed = result.get("resumed_after_epoch", 0)
    return f" (attempt {result['attempt']}, " + (f"resumed after epoch {resumed})" if resumed else "from scratch)")


ATTEMPTS_LOG = "attempts.jsonl"  # in each run folder: one line per process that started or resumed the run


def _begin_attempt(run_dir: Path) -> dict[str, Any]:
    """Note in RUN_DIR/attempts.jsonl that a process starts (or restarts) this run: its number, host, pid and the
    epoch its checkpoint already holds (0: from scratch). A cell whose worker was lost shows a second attempt
    that resumed; the driver says so."""
    import socket

    import torch

    checkpoint = run_dir / "checkpoint.pt"
    resumed = 0
    if checkpoint.is_file():
        try:  # memory-mapped: only the epoch is read; train() itself checks the checkpoint
            resumed = int(torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)["epoch"])
        except Exception:  # unreadable: train() raises CheckpointError naming it
            resumed = 0
    log_path = run_dir / ATTEMPTS_LOG
    earlier = log_path.read_text(encoding="utf-8") if log_path.is_file() else ""
    attempt = {"attempt": earlier.count("\n") + 1, "host": socket.gethostname(), "pid": os.getpid(),
               "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "resumed_after_epoch": resumed}
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(log_path, earlier + json.dumps(attempt) + "\n")
    return {"attempt": attempt["attempt"], "resumed_after_epoch": resumed}


def _set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _run_job(job: Job) -> dict[str, Any]:
    return job.run()


def eta_note(started: float, finished: int, total: int) -> str:
    """``; ETA 3.8 min for the 5 left`` (mean time per finished job since ``started``), or ``""``."""
    if not finished or finished >= total:
        return ""
    left = (time.perf_counter() - started) / finished * (total - finished)
    return f"; ETA {duration(left)} for the {total - finished} left"


def _run_jobs(jobs: Sequence[Job], parallel: int, progress: Callable[[str], None] | None,
              on_done: Callable[[Any, dict[str, Any]], None], what: str = "cell") -> None:
    """Run every job, in ``parallel`` processes when > 1; ``on_done`` records each result as soon as it exists,
    so a run killed later keeps what is finished. One line per job (``cell 3/8 conv8-B-AB``) with the time it
    took and an ETA for the rest (mean time per finished job)."""
    started, total = time.perf_counter(), len(jobs)

    def eta(finished: int) -> str:
        return eta_note(started, finished, total)

    if parallel <= 1 or len(jobs) <= 1:
        for index, job in enumerate(jobs):
            report_step(progress, f"  {what} {index + 1}/{total} {job.name} ...")
            job_started = time.perf_counter()
            result = job.run()
            on_done(job, result)
            report_step(progress, f"  {what} {index + 1}/{total} {job.name} done in "
                           f"{duration(time.perf_counter() - job_started)}{attempt_note(result)}{eta(index + 1)}")
        return
    threads = max(1, (os.cpu_count() or 2) // parallel)
    report_step(progress, f"  {total} {what}s, {parallel} at a time: {', '.join(job.name for job in jobs)}")
    with ProcessPoolExecutor(max_workers=parallel, initializer=_set_threads, initargs=(threads,)) as pool:
        futures = {pool.submit(_run_job, job): job for job in jobs}
        for finished, future in enumerate(as_completed(futures), start=1):
            result = future.result()
            on_done(futures[future], result)
            report_step(progress, f"  {what} {finished}/{total} {futures[future].name} done after "
                           f"{duration(time.perf_counter() - started)}{attempt_note(result)}{eta(finished)}")
