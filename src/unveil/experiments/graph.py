"""The one job graph of ``unveil reproduce``: every artifact the grid builds, with what it is built from.

Nodes are the stages of docs/artifacts.md: a pre-training (``pretrain``), a grid cell (``cell``, after the
pre-training of its encoder), a cell's evaluation (``evaluate``, after the cell) and audit (``audit``, after the
cell), and the report (after every evaluation and audit). A node with a ``job`` is work an executor runs (the
embedded one, :func:`run_local`, or the Dask one, :func:`unveil.experiments.cluster.run_graph`); the others are
the driver's own steps. Both executors take the same graph: the order lives here, once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unveil.experiments.config import ExperimentError
from unveil.experiments.jobs import CellJob, Job, PretrainJob, _run_jobs

#: The stages in the order their artifacts are built (docs/artifacts.md).
STAGES: tuple[str, ...] = ("pretrain", "cell", "evaluate", "audit", "report")
#: Stages whose nodes are jobs an executor runs, and the word their progress lines use.
WORKER_STAGES: dict[str, str] = {"pretrain": "encoder", "cell": "cell"}


@dataclass(frozen=True)
class Node:
    """One artifact to build: its key (``cell:conv8-B-AB``), stage, folder, the keys it is built from, the job
    that builds it (None: a driver step) and whether it already exists (a rerun skips it)."""

    key: str
    stage: str
    artifact: Path
    after: tuple[str, ...] = ()
    job: Job | None = None
    done: bool = False


class JobGraph:
    """Nodes added in dependency order (a node names only nodes added before it, so the graph has no cycle)."""

    def __init__(self) -> None:
        self._nodes: dict[str, Node] = {}

    def add(self, node: Node) -> Node:
        if node.stage not in STAGES:
            raise ExperimentError(f"{node.key}: unknown stage {node.stage!r}; one of {', '.join(STAGES)}")
        if node.key in self._nodes:
            raise ExperimentError(f"{node.key}: two nodes of the job graph with one key")
        unknown = [key for key in node.after if key not in self._nodes]
        if unknown:
            raise ExperimentError(f"{node.key}: built from {', '.join(unknown)}, not in the job graph (yet)")
        self._nodes[node.key] = node
        return node

    def __getitem__(self, key: str) -> Node:
        return self._nodes[key]

    def __len__(self) -> int:
        return len(self._nodes)

    def order(self) -> list[Node]:
        """Every node after what it is built from: by stage, then in the order added (a stable topological
        order, the one both executors follow)."""
        rank = {stage: index for index, stage in enumerate(STAGES)}
        ordered = sorted(self._nodes.values(), key=lambda node: rank[node.stage])
        position = {node.key: index for index, node in enumerate(ordered)}
        for node in ordered:  # stages already respect the edges; this holds them to it
            late = [key for key in node.after if position[key] > position[node.key]]
            if late:
                raise ExperimentError(f"{node.key}: stage {node.stage} cannot come after {', '.join(late)}")
        return ordered

    def stage(self, stage: str, *, pending: bool = False) -> list[Node]:
        """The nodes of ``stage`` in order (``pending``: only those not done yet)."""
        return [node for node in self.order() if node.stage == stage and not (pending and node.done)]

    def dependencies(self, key: str) -> list[Node]:
        return [self._nodes[after] for after in self._nodes[key].after]


def job_graph(pretrainings: Iterable[PretrainJob], cells: Iterable[CellJob]) -> JobGraph:
    """The graph of jobs to run: each pre-training, then each cell after the pre-training whose bundle is its
    encoder (a cell whose encoder was pre-trained earlier, or from scratch, depends on nothing)."""
    graph = JobGraph()
    by_bundle: dict[str, str] = {}
    for job in pretrainings:
        node = graph.add(Node(f"pretrain:{job.name}", "pretrain", job.run_dir / "model", job=job))
        by_bundle[str(job.run_dir / "model")] = node.key
    for cell in cells:
        after = (by_bundle[cell.encoder],) if cell.encoder in by_bundle else ()
        graph.add(Node(f"cell:{cell.name}", "cell", cell.cell.bundle, after, job=cell))
    return graph


def run_local(graph: JobGraph, parallel: int, progress: Callable[[str], None] | None,
              on_done: Callable[[Any, dict[str, Any]], None], stages: Sequence[str] = tuple(WORKER_STAGES)) -> None:
    """The embedded executor: each worker stage of ``stages`` in turn (so every job runs after what it is built
    from), its pending jobs in this process or ``parallel`` processes (`unveil.experiments.jobs`)."""
    for stage in stages:
        jobs = [node.job for node in graph.stage(stage, pending=True) if node.job is not None]
        _run_jobs(jobs, parallel, progress, on_done, what=WORKER_STAGES[stage])
