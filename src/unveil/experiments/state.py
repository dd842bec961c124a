"""What every step of one ``unveil reproduce`` shares (:class:`GridRun`): the experiment, the output folder, the
results store, parallelism, the bound data and the trackers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from unveil.data.spec import DataSpec
from unveil.evaluation.store import ResultsStore
from unveil.experiments.config import Experiment
from unveil.experiments.jobs import report_step
from unveil.tracking import TrackingSettings


@dataclass
class GridRun:
    """What every step of one ``reproduce`` shares."""

    experiment: Experiment
    out: Path
    store: ResultsStore
    parallel: int
    workers: int
    progress: Callable[[str], None] | None
    cluster: str | None = None  # a Dask cluster ("local" or a scheduler address); None: this process or a pool
    data: dict[str, DataSpec] = field(default_factory=dict)
    tracking: TrackingSettings | None = None  # every run's trackers (grid_tracking); None: metrics.jsonl only
    shared_cache: Path | None = None  # the pre-processing cache of several seeds' runs (default: OUT/cache)

    @property
    def cache(self) -> Path:
        return self.shared_cache if self.shared_cache is not None else self.out / "cache"

    @property
    def bars(self) -> bool:
        """Progress bars (on a terminal) unless processes would draw over each other (or run elsewhere)."""
        return self.parallel <= 1 and self.cluster is None

    def say(self, message: str) -> None:
        report_step(self.progress, message)
