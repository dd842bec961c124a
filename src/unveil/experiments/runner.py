"""`unveil reproduce`: the whole grid of an experiment, resumable, results in SQLite, then the report.

Output folder layout:
    data/                     synthetic benchmark (when the experiment asks for one)
    cache/                    pre-processing cache shared by every run
    pretrain/<label>-<arch>/  one pre-training run per (encoder data, architecture)
    cells/<arch>-<encoder>-<composition>/   one training run per grid cell
    evaluation/<cell>/        results, tables, predictions, ROC, reliability and confusion figures, subgroups of
                              each cell (as `unveil evaluate`)
    audit/<cell>/             bias audit outputs
    tables/                   Table 2 and Tables A1..An (CSV, Markdown, LaTeX)
    results.sqlite            the results store (docs/results.md)
    report.html               the self-contained report

A rerun skips what is finished (cells marked done in the store, evaluations and audits already
stored) and resumes a cell killed mid-training from its checkpoint.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from unveil.data.spec import DataSpec
from unveil.evaluation.store import ResultsStore
from unveil.evaluation.tables import write_tables
from unveil.experiments.assess import audit_cells, audited_cells, compare_encoders, evaluate_cells
from unveil.experiments.cluster import LOCAL, check_cluster, open_client, run_graph
from unveil.experiments.config import SYNTHETIC_ROLES, Experiment, ExperimentError
from unveil.experiments.graph import JobGraph, Node, run_local
from unveil.experiments.jobs import Cell, CellJob, PretrainJob, cell_id, report_step
from unveil.experiments.state import GridRun
from unveil.provenance import environment_versions, write_run_metadata, write_text_atomic
from unveil.reports import write_report
from unveil.reports.seeds import seed_folder, write_mitigation_table, write_seed_tables, write_seeds_report
from unveil.synth.config import load_config
from unveil.synth.generate import dataset_roots, generate
from unveil.tracking import MLFLOW_FOLDER, TrackingSettings, mlflow_experiment

log = logging.getLogger(__name__)

def resolve_data(experiment: Experiment, out: Path, workers: int,
                 progress: Callable[[str], None] | None = None) -> dict[str, DataSpec]:
    """The role bindings; a synthetic benchmark is generated once into OUT/data (reused when it matches)."""
    data = dict(experiment.data)
    if experiment.synthetic is None:
        return data
    synthetic = experiment.synthetic
    preset, scale = synthetic.preset, synthetic.scale
    config = load_config(preset)
    if synthetic.image_size is not None:
        config = replace(config, image_size=synthetic.image_size)
    folder = out / "data"
    meta = folder / "synth.meta.json"
    wanted = {"seed": experiment.seed, "scale": scale, "image_size": config.image_size}
    current = json.loads(meta.read_text()) if meta.is_file() else {}
    if not meta.is_file() or {k: current.get(k) for k in wanted} != wanted or \
            current.get("config", {}).get("name") != config.name:
        report_step(progress, f"generating the synthetic '{config.name}' benchmark (scale {scale}, "
                       f"{config.image_size} px) in {folder}")
        generate(config, folder, seed=experiment.seed, scale=scale, workers=workers, overwrite=True)
    roots = dataset_roots(folder)
    data.update({role: DataSpec(roots[role][0], str(roots[role][1])) for role in SYNTHETIC_ROLES if role in roots})
    return data


def plan_cells(experiment: Experiment, out: Path) -> list[Cell]:
    """Every cell of the grid, in the experiment's order, then the mitigated arm's."""
    cells = [Cell(a, e, c, out / "cells" / cell_id(a, e, c)) for a, e, c in experiment.cells()]
    return cells + [Cell(a, e, c, out / "cells" / cell_id(a, e, c, d), d)
                    for a, e, c, d in experiment.mitigated_cells()]


def load_data(run: GridRun) -> None:
    """Step 1: bind every role the grid needs (generating a synthetic benchmark if asked) and store the datasets."""
    experiment = run.experiment
    for note in experiment.notes:
        run.say(f"  note: {note}")
    run.data = resolve_data(experiment, run.out, run.workers, run.progress)
    recipes = experiment.recipe_book()
    tested = {r for name in (*experiment.compositions, *experiment.tests) for r in recipes.recipe(name).roles}
    needed = sorted(tested | {r for e in experiment.encoders if e != "none" for r in experiment.pretraining_roles(e)}
                    | set(experiment.audit.external))  # stored too: the report names an external set by its role
    missing = [role for role in needed if role not in run.data]
    if missing:
        raise ExperimentError(f"{experiment.source}: the grid needs data for role(s) {', '.join(missing)}")
    for role in needed:
        spec = run.data[role]
        records = spec.load()
        run.store.put_dataset(role, spec.source, spec.root, records)
        run.say(f"  {role}: {spec.source}, {len(records)} images")


def plan_pretraining(run: GridRun) -> tuple[dict[tuple[str, str], str], list[PretrainJob]]:
    """Each encoder once per architecture: (label, architecture) -> bundle path, and the pre-trainings not
    finished yet (no done.json)."""
    experiment = run.experiment
    encoders: dict[tuple[str, str], str] = {}
    pending = []
    for label in (e for e in experiment.encoders if e != "none"):
        spec = experiment.pretraining[label]
        if not experiment.pretraining_roles(label):
            continue  # a weights file used as it is: the cells start from it (plan_cell_jobs)
        for architecture in experiment.architectures:
            run_dir = run.out / "pretrain" / f"{label}-{architecture}"
            encoders[(label, architecture)] = str(run_dir / "model")
            if (run_dir / "done.json").is_file():
                continue
            pending.append(PretrainJob(
                f"{label}-{architecture}", [run.data[role] for role in experiment.pretraining_roles(label)], run_dir,
                experiment.train_config(architecture, spec.training), experiment.preprocess, run.cache,
                tuple(spec.classes) if spec.classes else None, run.workers, run.bars, spec.init_weights,
                run.tracking))
    return encoders, pending


def pretrained(job: PretrainJob, result: dict[str, Any]) -> None:
    """A pre-training finished: RUN_DIR/done.json (a rerun skips it)."""
    write_text_atomic(job.run_dir / "done.json", json.dumps(result) + "\n")


def plan_graph(run: GridRun, cells: list[Cell]) -> JobGraph:
    """The one graph of the run (`unveil.experiments.graph`): pre-trainings, cells after their encoder's
    pre-training, each cell's evaluation and audit, the report after them; what exists already is marked done."""
    encoders, pending = plan_pretraining(run)
    graph, jobs, by_bundle = JobGraph(), {job.name: job for job in pending}, {}
    for (label, architecture), bundle in encoders.items():
        name = f"{label}-{architecture}"
        by_bundle[bundle] = graph.add(Node(f"pretrain:{name}", "pretrain", Path(bundle), job=jobs.get(name),
                                           done=name not in jobs)).key
    cell_jobs = {job.cell.id: job for job in plan_cell_jobs(run, cells, encoders)}
    for cell in cells:
        encoder = encoders.get((cell.encoder, cell.architecture))
        graph.add(Node(f"cell:{cell.id}", "cell", cell.bundle, (by_bundle[encoder],) if encoder in by_bundle else (),
                       cell_jobs.get(cell.id), done=cell.id not in cell_jobs))
    evaluated = run.store.evaluated()
    for cell in cells:
        graph.add(Node(f"evaluate:{cell.id}", "evaluate", run.out / "evaluation" / cell.id, (f"cell:{cell.id}",),
                       done=all((cell.id, test) in evaluated for test in run.experiment.tests)))
    for cell in audited_cells(run, cells):
        folder = run.out / "audit" / cell.id
        graph.add(Node(f"audit:{cell.id}", "audit", folder, (f"cell:{cell.id}",),
                       done=(folder / "audit.json").is_file()))
    stages = [node.key for node in graph.order() if node.stage in ("evaluate", "audit")]
    graph.add(Node("report", "report", run.out / "report.html", tuple(stages)))
    return graph


def pretrain_encoders(run: GridRun, graph: JobGraph) -> None:
    """Step 2: pre-train each encoder once per architecture (skipping finished ones)."""
    run_local(graph, run.parallel, run.progress, pretrained, stages=("pretrain",))


def plan_cell_jobs(run: GridRun, cells: list[Cell], encoders: dict[tuple[str, str], str]) -> list[CellJob]:
    """The cells not done yet (marked done in the store, with their bundle), as jobs."""
    experiment = run.experiment
    recipes = experiment.recipe_book()
    done = run.store.done_cells()

    def weights_file(encoder: str) -> str | None:  # an encoder with no pre-training run starts from its file
        if encoder == "none" or experiment.pretraining_roles(encoder):
            return None
        return experiment.pretraining[encoder].init_weights

    return [CellJob(cell, {role: run.data[role] for role in recipes.recipe(cell.composition).roles},
                    experiment.train_config(cell.architecture, {"debias": cell.debias} if cell.debias != "none"
                                            else None), experiment.preprocess, run.cache,
                    encoders.get((cell.encoder, cell.architecture)), run.workers, experiment.recipes, run.bars,
                    weights_file(cell.encoder), run.tracking)
            for cell in cells if not (cell.id in done and (cell.bundle / "bundle.json").is_file())]


def record_cell(store: ResultsStore, job: CellJob, result: dict[str, Any]) -> None:
    """A cell finished: its row in the results store (only the driver writes the store)."""
    cell = job.cell
    store.put_cell({"cell_id": cell.id, "architecture": cell.architecture, "encoder": cell.encoder,
                    "training_set": cell.composition, "run_dir": str(cell.run_dir), "bundle": result["bundle"],
                    "status": "done", "seconds": result["seconds"], "best_epoch": result["best_epoch"],
                    "val_auc": result["val_auc"], "config": job.config.to_dict(), "debias": cell.debias})


def record_job(run: GridRun, job: PretrainJob | CellJob, result: dict[str, Any]) -> None:
    """A job of the graph finished: a pre-training's done.json, or a cell's row in the store."""
    if isinstance(job, PretrainJob):
        pretrained(job, result)
    else:
        record_cell(run.store, job, result)


def train_cells(run: GridRun, graph: JobGraph) -> None:
    """Step 3: train every cell not yet done (a cell killed mid-training resumes from its checkpoint)."""
    run_local(graph, run.parallel, run.progress, lambda job, result: record_job(run, job, result), stages=("cell",))


def train_on_cluster(run: GridRun, graph: JobGraph, connect: Callable[[], Any]) -> None:
    """Steps 2 and 3 as tasks of a Dask cluster (`unveil.experiments.cluster`), over the same graph: a cell that
    needs an encoder depends on its pre-training task; the driver records each result as it arrives.
    ``connect()`` gives the client, only when there is something to run (a finished grid starts no cluster)."""
    if graph.stage("pretrain", pending=True) or graph.stage("cell", pending=True):
        run_graph(connect(), graph, on_done=lambda job, result: record_job(run, job, result), progress=run.progress)


def write_summary(run: GridRun, started: float) -> None:
    """Step 6 (first half): Table 2 and Tables A1..An from the store, and reproduce.meta.json."""

    experiment = run.experiment
    write_tables(run.store.wide_results(), run.out / "tables")
    write_mitigation_table(run.store, run.out / "tables")
    write_run_metadata(run.out / "reproduce.meta.json", "unveil reproduce", {
        "experiment": str(experiment.source), "document": experiment.document, "jobs": run.parallel,
        "cluster": run.cluster,
        "preprocess": asdict(experiment.preprocess)}, extra={"seconds": round(time.perf_counter() - started, 1)})


def grid_tracking(settings: TrackingSettings | None, out: Path, name: str) -> TrackingSettings | None:
    """The trackers of every run of a grid: TensorBoard events in each run's folder; one MLflow experiment named
    ``name``, in OUT/mlruns unless a URI is given, created here once, before the jobs share its database."""
    if settings is None or not settings.enabled:
        return None
    local = settings.uri is None
    settings = settings.under(out, experiment=name)
    if "mlflow" in settings.track and settings.uri is not None:  # under() gave it a URI
        mlflow_experiment(settings.uri, settings.experiment, out.resolve() / MLFLOW_FOLDER / "artifacts" if local
                          else None)
    return settings


def reproduce_seeds(experiment: Experiment, out: Path, *, report: bool = True,
                    progress: Callable[[str], None] | None = None, **options: Any) -> Path:
    """Every seed of ``experiment`` as one full run in OUT/seed-N (sharing OUT/cache), then the tables over seeds
    (OUT/tables) and OUT/report.html; return OUT/tables/results_by_cell.csv. A rerun skips finished seeds' work."""
    started = time.perf_counter()
    seeds = experiment.all_seeds
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "experiment.yaml", _yaml(experiment.document))
    for index, seed in enumerate(seeds, start=1):
        report_step(progress, f"seed {seed} ({index}/{len(seeds)}): {seed_folder(out, seed)}")
        reproduce(experiment.for_seed(seed), seed_folder(out, seed), report=report, progress=progress,
                  cache=out / "cache", **options)
    report_step(progress, f"tables over the seeds {', '.join(map(str, seeds))}: {out / 'tables'}")
    written = write_seed_tables(out, seeds)
    write_run_metadata(out / "reproduce.meta.json", "unveil reproduce", {
        "experiment": str(experiment.source), "document": experiment.document, "seeds": seeds,
        "preprocess": asdict(experiment.preprocess), **{k: v for k, v in options.items() if k in ("jobs", "cluster")}},
        extra={"seconds": round(time.perf_counter() - started, 1)})
    if report:
        report_step(progress, f"  report: {write_seeds_report(out, seeds, experiment.name)}")
    return written["results_by_cell"]


def reproduce(experiment: Experiment, out: str | Path, *, jobs: int | None = None, workers: int = 2,
              report: bool = True, progress: Callable[[str], None] | None = None,
              cluster: str | None = None, tracking: TrackingSettings | None = None,
              cache: Path | None = None) -> Path:
    """Run (or continue) every step of ``experiment`` into ``out``; return the results store path.

    ``jobs``: pre-trainings and cells at a time (processes; default: the file's ``jobs``); ``workers``: decoding
    processes per job. ``cluster``: run pre-trainings and cells as tasks of a Dask cluster instead, ``"local"``
    (a ``LocalCluster`` of ``jobs`` workers) or a scheduler address (``tcp://host:8786``); see docs/cluster.md.
    Evaluation, audit, the store and the report stay in this process either way. ``tracking``: the trackers of every
    pre-training and cell (default: the file's ``tracking:``; :func:`grid_tracking`). ``cache``: the pre-processing
    cache (default OUT/cache). An experiment with several seeds runs :func:`reproduce_seeds` (and returns the
    pooled results' CSV instead of a store).
    """
    out = Path(out)
    if len(experiment.all_seeds) > 1:
        return reproduce_seeds(experiment, out, report=report, progress=progress, jobs=jobs, workers=workers,
                               cluster=cluster, tracking=tracking)
    started = time.perf_counter()
    parallel = jobs if jobs is not None else experiment.jobs
    with ExitStack() as stack, ExitStack() as on_cluster:  # the store and a cluster closed even when a step fails
        clients: list[Any] = []

        def connect() -> Any:
            """The client of the cluster ``cluster``, opened once (and closed with ``on_cluster``)."""
            if not clients:
                clients.append(on_cluster.enter_context(open_client(str(cluster), parallel, progress)))
            return clients[0]

        if cluster is not None and check_cluster(cluster) != LOCAL:  # first: a wrong value fails before any work
            connect()
        out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out / "experiment.yaml", _yaml(experiment.document))
        store = stack.enter_context(ResultsStore(out / "results.sqlite"))
        store.set_experiment({"name": experiment.name, "seed": experiment.seed, "source": str(experiment.source),
                              "versions": environment_versions(), "document": experiment.document,
                              "notes": experiment.notes,
                              "recipes": str(experiment.recipes) if experiment.recipes else ""})
        run = GridRun(experiment, out, store, parallel, workers, progress, cluster,
                      tracking=grid_tracking(tracking or experiment.tracking.settings(), out, experiment.name),
                      shared_cache=cache)
        cells = plan_cells(experiment, out)
        run.say("[1/6] data")
        load_data(run)
        graph = plan_graph(run, cells)
        if cluster is None:
            run.say("[2/6] pre-training encoders")
            pretrain_encoders(run, graph)
            run.say("[3/6] training cells")
            train_cells(run, graph)
        else:
            run.say(f"[2-3/6] pre-training encoders and training cells on the Dask cluster ({cluster})")
            train_on_cluster(run, graph, connect)
            on_cluster.close()  # evaluation and audit run here: a local cluster's workers are not needed any more
        run.say("[4/6] evaluating every cell on every test set")
        evaluate_cells(run, cells, graph)
        compare_encoders(run, cells)
        run.say("[5/6] auditing")
        audit_cells(run, cells, graph)
        run.say("[6/6] tables and report")
        write_summary(run, started)
    if report:
        path = write_report(out)
        report_step(progress, f"  report: {path}")
    return out / "results.sqlite"


def _yaml(document: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(document, sort_keys=False)
