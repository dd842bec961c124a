"""`unveil reproduce --cluster`: pre-trainings and cells as tasks of a Dask distributed cluster.

``--cluster local`` starts a ``distributed.LocalCluster`` on this machine (``--jobs`` worker processes, one task
each at a time, this process's torch threads shared between them); an address (``tcp://host:8786``) joins a
running scheduler, e.g. the one dask-jobqueue's ``SLURMCluster`` starts (docs/cluster.md).

- The jobs come from the run's one job graph (`unveil.experiments.graph`, the embedded executor's too): a cell that
  starts from a pre-trained encoder is submitted with that pre-training's future as an argument, so the scheduler
  starts it only after the pre-training finished, on whichever worker is free.
- A task that trains on CUDA asks for one ``GPU`` resource: only workers started with ``--resources GPU=1`` run it.
- Workers write only their run folders under the output folder (which every worker must see at the same path)
  and return small dicts; the driver alone writes ``done.json``, the SQLite store and the report.
- A worker lost mid-task (killed, out of memory, pre-empted) is replaced and its task rescheduled, up to
  ``distributed.scheduler.allowed-failures`` losses (the scheduler's setting; ``ALLOWED_FAILURES`` for
  ``local``). Training resumes from the run's last checkpoint, so the result is that of an uninterrupted run;
  ``attempts.jsonl`` in the run folder and the driver's line for the task say that it happened.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from distributed import Client, WorkerPlugin

from unveil.experiments.config import ExperimentError
from unveil.experiments.graph import JobGraph, job_graph
from unveil.experiments.jobs import CellJob, Job, PretrainJob, attempt_note, eta_note, report_step
from unveil.progress import duration, progress_log

log = logging.getLogger(__name__)

LOCAL = "local"
ALLOWED_FAILURES = 3  # worker losses one task survives on a local cluster (distributed's default too)
CONNECT_TIMEOUT = 30.0  # seconds to reach a scheduler at an address
GPU = "GPU"  # the resource name GPU workers declare: dask worker ... --resources GPU=1


ADDRESS = re.compile(r"(?:(?P<scheme>[a-z][a-z0-9+]*)://)?(?P<host>\[[0-9a-fA-F:.]+\]|[^\s/:\[\]]+)(?::(?P<port>\d+))?")


def check_cluster(cluster: str) -> str:
    """``local`` or a scheduler address (``tcp://host:8786``, ``tls://host``, ``host:8786``); anything else (a
    typo of ``local``, a scheme without a host) is refused before anything runs."""
    address = ADDRESS.fullmatch(cluster)
    if cluster == LOCAL or (address and (address["scheme"] or address["port"])):
        return cluster
    raise ExperimentError(f"--cluster {cluster!r}: neither 'local' nor a Dask scheduler address (tcp://host:8786)")


def needs_gpu(device: str, gpu_workers: bool) -> bool:
    """A task trains on CUDA: its device is ``cuda``/``cuda:N``, or ``auto`` on a cluster with GPU workers
    (``auto`` picks CUDA where there is one, so such tasks belong on those workers)."""
    return device.startswith("cuda") or (device == "auto" and gpu_workers)


class TorchThreads(WorkerPlugin):
    """Worker set-up: torch's intra-op threads, the ``unveil.progress`` lines (epochs, resumes) on the worker's
    stderr prefixed with its name, and decoding pools started by fork as in the embedded runner.

    ``threads`` None: the worker's cores over the tasks it runs at once (its GPUs when it declares some, else its
    threads); Dask's nanny sets OMP_NUM_THREADS=1, so without this a CPU task would use one core. A Dask worker
    process is started by spawn and inherits that method: every pre-processing pool would re-import torch and the
    driver's main module in each child (seconds per task), hence fork where the platform has it.
    """

    name = "unveil-torch-threads"

    def __init__(self, threads: int | None) -> None:
        self.threads = threads

    def setup(self, worker: Any) -> None:
        import torch

        threads = self.threads
        if threads is None:
            slots = worker.state.total_resources.get(GPU) or worker.state.nthreads
            threads = max(1, len(os.sched_getaffinity(0)) // max(1, int(slots)))
        torch.set_num_threads(threads)
        if "fork" in multiprocessing.get_all_start_methods():
            multiprocessing.set_start_method("fork", force=True)
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(f"[{worker.name}] %(message)s"))
        progress_log.handlers[:] = [handler]
        progress_log.setLevel(logging.INFO)
        progress_log.propagate = False


def _worker_safe(job: Job) -> Job:
    """One decoding process when this worker is a daemonic process (Dask's default), which may not start the
    pre-processing pool; ``unveil`` local clusters start non-daemonic workers (docs/cluster.md)."""
    if job.workers > 1 and multiprocessing.current_process().daemon:
        log.warning("%s: this Dask worker is a daemonic process and cannot start decoding processes: pre-processing "
                    "with one (start workers with DASK_DISTRIBUTED__WORKER__DAEMON=False)", job.name)
        return replace(job, workers=1)
    return job


def pretrain_task(job: PretrainJob) -> dict[str, Any]:
    """A pre-training, on a worker: writes its run folder, returns the result dict."""
    return _worker_safe(job).run()


def cell_task(job: CellJob, pretraining: dict[str, Any] | None) -> dict[str, Any]:
    """A cell, on a worker. ``pretraining``: the result of the pre-training it starts from (its future, passed
    at submission, makes this task wait for it), or None."""
    if pretraining is not None:
        job = replace(job, encoder=pretraining["bundle"])
    return _worker_safe(job).run()


@contextmanager
def _quiet(name: str, level: int = logging.WARNING) -> Iterator[None]:
    """Logger ``name`` at ``level`` at least, restored on exit."""
    logger = logging.getLogger(name)
    saved = logger.level
    logger.setLevel(max(level, logger.getEffectiveLevel()))
    try:
        yield
    finally:
        logger.setLevel(saved)


@contextmanager
def open_client(cluster: str, workers: int, progress: Callable[[str], None] | None = None) -> Iterator[Client]:
    """A client of the cluster: a fresh ``LocalCluster`` of ``workers`` processes for ``local`` (closed on exit),
    else the scheduler at the address."""
    import dask
    from distributed import LocalCluster

    check_cluster(cluster)
    with ExitStack() as stack:
        if cluster == LOCAL:
            import torch

            # Kept for the cluster's lifetime: the nanny reads them again when it restarts a lost worker.
            stack.enter_context(dask.config.set({"distributed.worker.daemon": False,
                                                 "distributed.scheduler.allowed-failures": ALLOWED_FAILURES}))
            gpu = torch.cuda.is_available()
            threads = max(1, torch.get_num_threads() // workers)
            stack.enter_context(_quiet("distributed"))  # the scheduler and nannies log here: warnings only
            nanny = logging.getLogger("distributed.nanny")
            stack.callback(nanny.setLevel, nanny.level)
            local = stack.enter_context(LocalCluster(
                n_workers=workers, threads_per_worker=1, processes=True, memory_limit=0, dashboard_address=None,
                resources={GPU: 1} if gpu else None, env={"DASK_LOGGING__DISTRIBUTED": "warning"}))
            client = stack.enter_context(Client(local))
            # On closing (callbacks run first): idle workers slow to exit (a big interpreter) are killed, quietly.
            stack.callback(nanny.setLevel, logging.ERROR)
            report_step(progress, f"  local Dask cluster: {workers} worker process(es), {threads} torch thread(s) each"
                           + (", one GPU resource each" if gpu else ""))
        else:
            try:
                client = stack.enter_context(Client(cluster, timeout=CONNECT_TIMEOUT))
            except (OSError, TimeoutError) as error:
                raise ExperimentError(f"--cluster {cluster}: no Dask scheduler answered within {CONNECT_TIMEOUT:.0f} s "
                                      f"({error}); start one (`dask scheduler`) or use --cluster local") from None
            threads = None
            known = client.scheduler_info()["workers"].values()
            gpus = sum(1 for w in known if w.get("resources", {}).get(GPU, 0) > 0)
            report_step(progress, f"  Dask scheduler {cluster}: {len(known)} worker(s), {gpus} with a {GPU} resource")
        client.register_plugin(TorchThreads(threads))
        yield client


def _key(kind: str, job: Job, run_dir: Path) -> str:
    """A task key unique to this output folder, so that drivers sharing a scheduler never share a task."""
    from dask.base import tokenize

    return f"unveil-{kind}-{job.name}-{tokenize(str(run_dir.resolve()))[:12]}"


def run_grid(client: Client, pretrainings: Sequence[PretrainJob], cells: Sequence[CellJob], *,
             on_pretrained: Callable[[PretrainJob, dict[str, Any]], None],
             on_cell: Callable[[CellJob, dict[str, Any]], None],
             progress: Callable[[str], None] | None = None) -> None:
    """:func:`run_graph` over the graph of these jobs (`unveil.experiments.graph.job_graph`), each result to
    ``on_pretrained`` or ``on_cell``."""
    def on_done(job: Job, result: dict[str, Any]) -> None:
        on_pretrained(job, result) if isinstance(job, PretrainJob) else on_cell(job, result)

    run_graph(client, job_graph(pretrainings, cells), on_done=on_done, progress=progress)


def run_graph(client: Client, graph: JobGraph, *, on_done: Callable[[Job, dict[str, Any]], None],
              progress: Callable[[str], None] | None = None) -> None:
    """Run the graph's pending jobs (pre-trainings, cells) as tasks on ``client``'s cluster, each after the
    submitted tasks it is built from; ``on_done`` records each result on the driver as soon as it arrives (so a
    driver stopped later keeps what finished). A task's exception is raised here (the other tasks are
    cancelled); a task whose workers kept dying becomes an ExperimentError."""
    pending = [(node, node.job) for node in graph.order() if node.job is not None and not node.done]
    if not pending:
        return
    from distributed import KilledWorker, as_completed

    known = client.scheduler_info()["workers"].values()
    gpu_workers = any(w.get("resources", {}).get(GPU, 0) > 0 for w in known)

    def resources(job: Job) -> dict[str, float] | None:
        return {GPU: 1} if needs_gpu(job.config.device, gpu_workers) else None

    if not gpu_workers and any(resources(job) for _, job in pending):
        report_step(progress, "  no worker offers a GPU yet: CUDA tasks wait for workers started with "
                              f"--resources {GPU}=1")
    futures: dict[Any, Job] = {}
    by_key: dict[str, Any] = {}
    for node, job in pending:  # pre-trainings first, and first in priority: cells wait for them
        if isinstance(job, PretrainJob):
            future = client.submit(pretrain_task, job, key=_key("pretrain", job, job.run_dir),
                                   resources=resources(job), priority=1)
        else:  # after its pre-training's task; none when from scratch or pre-trained earlier
            after = next((by_key[key] for key in node.after if key in by_key), None)
            future = client.submit(cell_task, job, after, key=_key("cell", job, job.cell.run_dir),
                                   resources=resources(job))
        by_key[node.key] = future
        futures[future] = job
    pretrainings = [job for job in futures.values() if isinstance(job, PretrainJob)]
    cells = [job for job in futures.values() if isinstance(job, CellJob)]
    report_step(progress, f"  {len(pretrainings)} pre-training(s) and {len(cells)} cell(s) submitted")
    started, finished = time.perf_counter(), {"encoder": 0, "cell": 0}
    totals = {"encoder": len(pretrainings), "cell": len(cells)}
    try:
        for future in as_completed(list(futures)):
            job = futures[future]
            what = "encoder" if isinstance(job, PretrainJob) else "cell"
            try:
                result = future.result()
            except KilledWorker:
                raise ExperimentError(
                    f"{what} {job.name}: its worker died too often (distributed.scheduler.allowed-failures); see "
                    "the workers' logs (out of memory?); a rerun resumes from its checkpoint") from None
            on_done(job, result)
            finished[what] += 1
            report_step(progress, f"  {what} {finished[what]}/{totals[what]} {job.name} done after "
                           f"{duration(time.perf_counter() - started)}{attempt_note(result)}"
                           f"{eta_note(started, finished[what], totals[what])}")
    finally:
        client.cancel(list(futures))  # nothing of this run is left running on a shared cluster
