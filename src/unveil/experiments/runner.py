"""`unveil reproduce`: the whole grid of an experiment, resumable, results in SQLite, then the report.

Output folder layout:
    data/                     synthetic benchmark (when the experiment asks for one)
    cache/                    pre-processing cache shared by every run
    pretrain/<label>-<arch>/  one pre-training run per (encoder data, architecture)
    cells/<arch>-<encoder>-<composition>/   one training run per grid cell
    evaluation/<cell>/        results, tables, predictions and ROC curve of each cell (as `unveil evaluate`)
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
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from unveil.audit import audit
from unveil.data.spec import DataSpec
from unveil.evaluation.evaluate import evaluate_models
from unveil.evaluation.outputs import write_evaluation_outputs
from unveil.evaluation.store import ResultsStore
from unveil.evaluation.tables import write_tables
from unveil.experiments.config import SYNTHETIC_ROLES, Experiment, ExperimentError
from unveil.preprocess.cache import PreprocessSettings
from unveil.progress import duration, progress_log
from unveil.provenance import environment_versions, write_run_metadata, write_text_atomic
from unveil.reports import write_report
from unveil.synth.config import load_config
from unveil.synth.generate import dataset_roots, generate
from unveil.training import pretrain, train
from unveil.training.config import TrainConfig

log = logging.getLogger(__name__)

def _say(progress: Callable[[str], None] | None, message: str) -> None:
    """A step line: through ``progress`` when given (the CLI adds the elapsed time), else ``unveil.progress``."""
    if progress is not None:
        progress(message)
    else:
        progress_log.info("%s", message)


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
        _say(progress, f"generating the synthetic '{config.name}' benchmark (scale {scale}, "
                       f"{config.image_size} px) in {folder}")
        generate(config, folder, seed=experiment.seed, scale=scale, workers=workers, overwrite=True)
    roots = dataset_roots(folder)
    data.update({role: DataSpec(roots[role][0], str(roots[role][1])) for role in SYNTHETIC_ROLES if role in roots})
    return data


def cell_id(architecture: str, encoder: str, composition: str) -> str:
    return f"{architecture}-{encoder}-{composition}"


@dataclass(frozen=True)
class Cell:
    """One grid cell: an architecture, an encoder (``none``: from scratch) and a training composition."""

    architecture: str
    encoder: str
    composition: str
    run_dir: Path

    @property
    def id(self) -> str:
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

    def run(self) -> dict[str, Any]:
        result = pretrain(self.data, self.run_dir, config=self.config, preprocess=self.preprocess, cache=self.cache,
                          classes=self.classes, workers=self.workers, progress=self.progress)
        return {"bundle": str(result.bundle), "seconds": result.seconds, "best_epoch": result.best_epoch}


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

    @property
    def name(self) -> str:
        return self.cell.id

    def run(self) -> dict[str, Any]:
        result = train(self.cell.composition, self.bindings, self.cell.run_dir, config=self.config,
                       preprocess=self.preprocess, encoder=self.encoder, cache=self.cache, workers=self.workers,
                       recipes=self.recipes, progress=self.progress)
        return {"bundle": str(result.bundle), "seconds": result.seconds, "best_epoch": result.best_epoch,
                "val_auc": result.best_metrics.get("val_auc")}


Job = PretrainJob | CellJob


def _set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _run_job(job: Job) -> dict[str, Any]:
    return job.run()


def _run_jobs(jobs: Sequence[Job], parallel: int, progress: Callable[[str], None] | None,
              on_done: Callable[[Any, dict[str, Any]], None], what: str = "cell") -> None:
    """Run every job, in ``parallel`` processes when > 1; ``on_done`` records each result as soon as it exists,
    so a run killed later keeps what is finished. One line per job (``cell 3/8 conv8-B-AB``) with the time it
    took and an ETA for the rest (mean time per finished job)."""
    started, total = time.perf_counter(), len(jobs)

    def eta(finished: int) -> str:
        if not finished or finished == total:
            return ""
        left = (time.perf_counter() - started) / finished * (total - finished)
        return f"; ETA {duration(left)} for the {total - finished} left"

    if parallel <= 1 or len(jobs) <= 1:
        for index, job in enumerate(jobs):
            _say(progress, f"  {what} {index + 1}/{total} {job.name} ...")
            job_started = time.perf_counter()
            on_done(job, job.run())
            _say(progress, f"  {what} {index + 1}/{total} {job.name} done in "
                           f"{duration(time.perf_counter() - job_started)}{eta(index + 1)}")
        return
    threads = max(1, (os.cpu_count() or 2) // parallel)
    _say(progress, f"  {total} {what}s, {parallel} at a time: {', '.join(job.name for job in jobs)}")
    with ProcessPoolExecutor(max_workers=parallel, initializer=_set_threads, initargs=(threads,)) as pool:
        futures = {pool.submit(_run_job, job): job for job in jobs}
        for finished, future in enumerate(as_completed(futures), start=1):
            on_done(futures[future], future.result())
            _say(progress, f"  {what} {finished}/{total} {futures[future].name} done after "
                           f"{duration(time.perf_counter() - started)}{eta(finished)}")


@dataclass
class _Run:
    """What every step of one ``reproduce`` shares."""

    experiment: Experiment
    out: Path
    store: ResultsStore
    parallel: int
    workers: int
    progress: Callable[[str], None] | None
    data: dict[str, DataSpec] = field(default_factory=dict)

    @property
    def cache(self) -> Path:
        return self.out / "cache"

    @property
    def bars(self) -> bool:
        """Progress bars (on a terminal) unless processes would draw over each other."""
        return self.parallel <= 1

    def say(self, message: str) -> None:
        _say(self.progress, message)


def plan_cells(experiment: Experiment, out: Path) -> list[Cell]:
    """Every cell of the grid, in the experiment's order."""
    return [Cell(a, e, c, out / "cells" / cell_id(a, e, c)) for a, e, c in experiment.cells()]


def load_data(run: _Run) -> None:
    """Step 1: bind every role the grid needs (generating a synthetic benchmark if asked) and store the datasets."""
    experiment = run.experiment
    for note in experiment.notes:
        run.say(f"  note: {note}")
    run.data = resolve_data(experiment, run.out, run.workers, run.progress)
    recipes = experiment.recipe_book()
    needed = {r for name in (*experiment.compositions, *experiment.tests) for r in recipes.recipe(name).roles}
    needed = sorted(needed | {r for e in experiment.encoders if e != "none" for r in experiment.pretraining_roles(e)})
    missing = [role for role in needed if role not in run.data]
    if missing:
        raise ExperimentError(f"{experiment.source}: the grid needs data for role(s) {', '.join(missing)}")
    for role in needed:
        spec = run.data[role]
        records = spec.load()
        run.store.put_dataset(role, spec.source, spec.root, records)
        run.say(f"  {role}: {spec.source}, {len(records)} images")


def pretrain_encoders(run: _Run) -> dict[tuple[str, str], str]:
    """Step 2: pre-train each encoder once per architecture (skipping finished ones); (label, architecture)
    -> bundle path."""
    experiment = run.experiment
    encoders: dict[tuple[str, str], str] = {}
    pending = []
    for label in (e for e in experiment.encoders if e != "none"):
        spec = experiment.pretraining[label]
        for architecture in experiment.architectures:
            run_dir = run.out / "pretrain" / f"{label}-{architecture}"
            encoders[(label, architecture)] = str(run_dir / "model")
            if (run_dir / "done.json").is_file():
                continue
            pending.append(PretrainJob(
                f"{label}-{architecture}", [run.data[role] for role in experiment.pretraining_roles(label)], run_dir,
                experiment.train_config(architecture, spec.training), experiment.preprocess, run.cache,
                tuple(spec.classes) if spec.classes else None, run.workers, run.bars))

    def done(job: Job, result: dict[str, Any]) -> None:
        write_text_atomic(Path(result["bundle"]).parent / "done.json", json.dumps(result) + "\n")

    _run_jobs(pending, run.parallel, run.progress, done, what="encoder")
    return encoders


def train_cells(run: _Run, cells: list[Cell], encoders: dict[tuple[str, str], str]) -> None:
    """Step 3: train every cell not yet done (a cell killed mid-training resumes from its checkpoint)."""
    experiment = run.experiment
    recipes = experiment.recipe_book()
    done = run.store.done_cells()
    pending = [CellJob(cell, {role: run.data[role] for role in recipes.recipe(cell.composition).roles},
                       experiment.train_config(cell.architecture), experiment.preprocess, run.cache,
                       encoders.get((cell.encoder, cell.architecture)), run.workers, experiment.recipes, run.bars)
               for cell in cells if not (cell.id in done and (cell.bundle / "bundle.json").is_file())]

    def record(job: CellJob, result: dict[str, Any]) -> None:
        cell = job.cell
        run.store.put_cell({"cell_id": cell.id, "architecture": cell.architecture, "encoder": cell.encoder,
                            "training_set": cell.composition, "run_dir": str(cell.run_dir),
                            "bundle": result["bundle"], "status": "done", "seconds": result["seconds"],
                            "best_epoch": result["best_epoch"], "val_auc": result["val_auc"],
                            "config": job.config.to_dict()})

    _run_jobs(pending, run.parallel, run.progress, record)


def evaluate_cells(run: _Run, cells: list[Cell]) -> None:
    """Step 4: every cell on every test set it has not met yet; results in the store, files in
    OUT/evaluation/<cell>/ (the files of `unveil evaluate --out`)."""

    experiment, options = run.experiment, run.experiment.evaluation
    evaluated = run.store.evaluated()
    for number, cell in enumerate(cells, start=1):
        tests = [t for t in experiment.tests if (cell.id, t) not in evaluated]
        if not tests:
            continue
        result = evaluate_models([cell.bundle], tests, data=run.data, cache=run.cache,
                                 threshold_rule=options.threshold_rule, threshold=options.threshold,
                                 target_sensitivity=options.target_sensitivity, resamples=options.resamples,
                                 seed=experiment.seed, workers=run.workers, recipes=experiment.recipes, progress=True)
        result = replace(result, rows=result.rows.assign(model=cell.id),
                         predictions=result.predictions.assign(model=cell.id))
        run.store.put_results(cell.id, result.rows, {"bundle": str(cell.bundle), "skipped": result.skipped})
        written = write_evaluation_outputs(
            result, run.out / "evaluation" / cell.id, command="unveil reproduce", keep_previous=True,
            roc_formats=("png",), arguments={"models": [str(cell.bundle)], "on": tests, **asdict(options),
                                             "seed": experiment.seed})
        for figure in written.roc:
            run.store.put_file("roc", cell.id, "ROC", figure)
        rows = result.rows
        summary = ", ".join(f"{t} {ba:.2f}" for t, ba in zip(rows["test_set"], rows["balanced_accuracy"]))
        run.say(f"  cell {number}/{len(cells)} {cell.id}: balanced accuracy {summary}")


def external_sets(run: _Run, cell: Cell) -> list[str]:
    """The audit's external roles as whole datasets (SOURCE:PATH), less the roles ``cell`` was trained on."""
    trained_on = set(run.experiment.recipe_book().recipe(cell.composition).roles)
    return [f"{run.data[role].source}:{run.data[role].root}" for role in run.experiment.audit.external
            if role in run.data and role not in trained_on]


def audit_cells(run: _Run, cells: list[Cell]) -> None:
    """Step 5: audit the cells of the audited compositions (skipping those already audited)."""

    experiment, options = run.experiment, run.experiment.audit
    compositions = experiment.compositions if options.compositions == "all" else options.compositions
    audited = [cell for cell in cells if cell.composition in compositions]
    for number, cell in enumerate(audited, start=1):
        folder = run.out / "audit" / cell.id
        if (folder / "audit.json").is_file():
            continue
        test_sets = list(options.test_sets or [cell.composition]) + external_sets(run, cell)
        run.say(f"  audit {number}/{len(audited)} {cell.id} on {', '.join(test_sets)} ...")
        result = audit(cell.bundle, test_sets, folder, data=run.data, mask=options.mask, cache=run.cache,
                       thresholds=options.thresholds, seed=experiment.seed, resamples=options.resamples,
                       saliency_samples=options.saliency_samples, workers=run.workers, recipes=experiment.recipes,
                       progress=True)
        run.store.put_audit(cell.id, result.verdicts)
        for kind in ("tsne_by_source", "tsne_by_label"):
            if kind in result.files:
                run.store.put_file(kind, cell.id, kind.replace("_", " "), result.files[kind])
        for index, overlay in enumerate(result.files.get("saliency_overlays", [])):
            run.store.put_file("saliency", cell.id, f"{index}:{Path(overlay).stem}", overlay)
        flags = ", ".join(f"{v.test} ({v.subject})" for v in result.flagged) or "none"
        run.say(f"  audit {number}/{len(audited)} {cell.id}: flags: {flags}")


def write_summary(run: _Run, started: float) -> None:
    """Step 6 (first half): Table 2 and Tables A1..An from the store, and reproduce.meta.json."""

    experiment = run.experiment
    write_tables(run.store.wide_results(), run.out / "tables")
    write_run_metadata(run.out / "reproduce.meta.json", "unveil reproduce", {
        "experiment": str(experiment.source), "document": experiment.document, "jobs": run.parallel,
        "preprocess": asdict(experiment.preprocess)}, extra={"seconds": round(time.perf_counter() - started, 1)})


def reproduce(experiment: Experiment, out: str | Path, *, jobs: int | None = None, workers: int = 2,
              report: bool = True, progress: Callable[[str], None] | None = None) -> Path:
    """Run (or continue) every step of ``experiment`` into ``out``; return the results store path."""
    started = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "experiment.yaml", _yaml(experiment.document))
    with ResultsStore(out / "results.sqlite") as store:  # closed even when a step fails
        store.set_experiment({"name": experiment.name, "seed": experiment.seed, "source": str(experiment.source),
                              "versions": environment_versions(), "document": experiment.document,
                              "notes": experiment.notes,
                              "recipes": str(experiment.recipes) if experiment.recipes else ""})
        run = _Run(experiment, out, store, jobs if jobs is not None else experiment.jobs, workers, progress)
        cells = plan_cells(experiment, out)
        run.say("[1/6] data")
        load_data(run)
        run.say("[2/6] pre-training encoders")
        encoders = pretrain_encoders(run)
        run.say("[3/6] training cells")
        train_cells(run, cells, encoders)
        run.say("[4/6] evaluating every cell on every test set")
        evaluate_cells(run, cells)
        run.say("[5/6] auditing")
        audit_cells(run, cells)
        run.say("[6/6] tables and report")
        write_summary(run, started)
    if report:
        path = write_report(out)
        _say(progress, f"  report: {path}")
    return out / "results.sqlite"


def _yaml(document: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(document, sort_keys=False)
