"""`unveil reproduce`: the whole grid of an experiment, resumable, results in SQLite, then the report.

Output folder layout:
    data/                     synthetic benchmark (when the experiment asks for one)
    cache/                    pre-processing cache shared by every run
    pretrain/<label>-<arch>/  one pre-training run per (encoder data, architecture)
    cells/<arch>-<encoder>-<composition>/   one training run per grid cell
    evaluation/               predictions and ROC curves per cell
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
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import pandas as pd

from unveil.audit import audit
from unveil.data.spec import DataSpec
from unveil.evaluation.evaluate import evaluate_models
from unveil.evaluation.store import ResultsStore
from unveil.evaluation.tables import plot_roc_curves, write_tables
from unveil.experiments.config import SYNTHETIC_ROLES, Experiment, ExperimentError
from unveil.progress import duration, progress_log
from unveil.provenance import environment_versions, write_run_metadata, write_text_atomic
from unveil.reports import write_report
from unveil.synth.config import load_config
from unveil.synth.generate import dataset_roots, generate
from unveil.training import pretrain, train

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


def _set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _pretrain_job(args: tuple) -> dict[str, Any]:
    specs, run_dir, config, preprocess, cache, classes, workers, bars = args
    result = pretrain(specs, run_dir, config=config, preprocess=preprocess, cache=cache, classes=classes,
                      workers=workers, progress=bars)
    return {"bundle": str(result.bundle), "seconds": result.seconds, "best_epoch": result.best_epoch}


def _train_job(args: tuple) -> dict[str, Any]:
    composition, bindings, run_dir, config, preprocess, cache, encoder, workers, recipes, bars = args
    result = train(composition, bindings, run_dir, config=config, preprocess=preprocess, encoder=encoder,
                   cache=cache, workers=workers, recipes=recipes, progress=bars)
    return {"bundle": str(result.bundle), "seconds": result.seconds, "best_epoch": result.best_epoch,
            "val_auc": result.best_metrics.get("val_auc")}


def _run_jobs(function: Callable[[tuple], dict[str, Any]], jobs: list[tuple[str, tuple]], parallel: int,
              progress: Callable[[str], None] | None,
              on_done: Callable[[str, dict[str, Any]], None], what: str = "cell") -> None:
    """Run ``function`` on every job (name, args), in ``parallel`` processes when > 1; ``on_done`` records
    each result as soon as it exists, so a run killed later keeps what is finished. One line per job
    (``cell 3/8 conv8-B-AB``) with the time it took and an ETA for the rest (mean time per finished job)."""
    started, total = time.perf_counter(), len(jobs)

    def eta(finished: int) -> str:
        if not finished or finished == total:
            return ""
        left = (time.perf_counter() - started) / finished * (total - finished)
        return f"; ETA {duration(left)} for the {total - finished} left"

    if parallel <= 1 or len(jobs) <= 1:
        for index, (name, args) in enumerate(jobs):
            _say(progress, f"  {what} {index + 1}/{total} {name} ...")
            job_started = time.perf_counter()
            on_done(name, function(args))
            _say(progress, f"  {what} {index + 1}/{total} {name} done in "
                           f"{duration(time.perf_counter() - job_started)}{eta(index + 1)}")
        return
    threads = max(1, (os.cpu_count() or 2) // parallel)
    _say(progress, f"  {total} {what}s, {parallel} at a time: {', '.join(name for name, _ in jobs)}")
    with ProcessPoolExecutor(max_workers=parallel, initializer=_set_threads, initargs=(threads,)) as pool:
        futures = {pool.submit(function, args): name for name, args in jobs}
        for finished, future in enumerate(as_completed(futures), start=1):
            on_done(futures[future], future.result())
            _say(progress, f"  {what} {finished}/{total} {futures[future]} done after "
                           f"{duration(time.perf_counter() - started)}{eta(finished)}")


def reproduce(experiment: Experiment, out: str | Path, *, jobs: int | None = None, workers: int = 2,
              report: bool = True, progress: Callable[[str], None] | None = None) -> Path:
    """Run (or continue) every step of ``experiment`` into ``out``; return the results store path."""
    started = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    parallel = jobs if jobs is not None else experiment.jobs
    bars = parallel <= 1  # progress bars (on a terminal) unless processes would draw over each other
    cache = out / "cache"
    write_text_atomic(out / "experiment.yaml", _yaml(experiment.document))
    store = ResultsStore(out / "results.sqlite")
    store.set_experiment({"name": experiment.name, "seed": experiment.seed, "source": str(experiment.source),
                          "versions": environment_versions(), "document": experiment.document})

    # 1. Data.
    _say(progress, "[1/6] data")
    data = resolve_data(experiment, out, workers, progress)
    recipes = experiment.recipe_book()
    needed = {r for name in (*experiment.compositions, *experiment.tests) for r in recipes.recipe(name).roles}
    needed = sorted(needed | {r for e in experiment.encoders if e != "none" for r in experiment.pretraining_roles(e)})
    missing = [role for role in needed if role not in data]
    if missing:
        raise ExperimentError(f"{experiment.source}: the grid needs data for role(s) {', '.join(missing)}")
    for role in needed:
        records = data[role].load()
        store.put_dataset(role, data[role].source, data[role].root, records)
        _say(progress, f"  {role}: {data[role].source}, {len(records)} images")

    # 2. Pre-training, once per (encoder data, architecture).
    _say(progress, "[2/6] pre-training encoders")
    encoders: dict[tuple[str, str], str] = {}
    pending = []
    for label in (e for e in experiment.encoders if e != "none"):
        spec = experiment.pretraining[label]
        for architecture in experiment.architectures:
            run_dir = out / "pretrain" / f"{label}-{architecture}"
            encoders[(label, architecture)] = str(run_dir / "model")
            if (run_dir / "done.json").is_file():
                continue
            config = experiment.train_config(architecture, spec.training)
            specs = [data[role] for role in experiment.pretraining_roles(label)]
            classes = tuple(spec.classes) if spec.classes else None
            pending.append((f"{label}-{architecture}",
                            (specs, run_dir, config, experiment.preprocess, cache, classes, workers, bars)))
    _run_jobs(_pretrain_job, pending, parallel, progress, lambda name, result: write_text_atomic(
        Path(result["bundle"]).parent / "done.json", json.dumps(result) + "\n"), what="encoder")

    # 3. Training cells.
    _say(progress, "[3/6] training cells")
    done = store.done_cells()
    pending = []
    cells = {}
    for architecture, encoder, composition in experiment.cells():
        identifier = cell_id(architecture, encoder, composition)
        run_dir = out / "cells" / identifier
        cells[identifier] = (architecture, encoder, composition, run_dir)
        if identifier in done and (run_dir / "model" / "bundle.json").is_file():
            continue
        bindings = {role: data[role] for role in recipes.recipe(composition).roles}
        pending.append((identifier, (composition, bindings, run_dir, experiment.train_config(architecture),
                                     experiment.preprocess, cache, encoders.get((encoder, architecture)), workers,
                                     experiment.recipes, bars)))
    def record_cell(identifier: str, result: dict[str, Any]) -> None:
        architecture, encoder, composition, run_dir = cells[identifier]
        store.put_cell({"cell_id": identifier, "architecture": architecture, "encoder": encoder,
                        "training_set": composition, "run_dir": str(run_dir), "bundle": result["bundle"],
                        "status": "done", "seconds": result["seconds"], "best_epoch": result["best_epoch"],
                        "val_auc": result["val_auc"],
                        "config": experiment.train_config(architecture).to_dict()})

    _run_jobs(_train_job, pending, parallel, progress, record_cell)

    # 4. Every cell on every test set.
    _say(progress, "[4/6] evaluating every cell on every test set")
    evaluated = store.evaluated()
    options = experiment.evaluation
    for number, (identifier, (_, _, _, run_dir)) in enumerate(cells.items(), start=1):
        tests = [t for t in experiment.tests if (identifier, t) not in evaluated]
        if not tests:
            continue
        run = evaluate_models([run_dir / "model"], tests, data=data, cache=cache,
                              threshold_rule=options.threshold_rule, threshold=options.threshold,
                              target_sensitivity=options.target_sensitivity, resamples=options.resamples,
                              seed=experiment.seed, workers=workers, recipes=experiment.recipes, progress=True)
        rows = run.rows.assign(model=identifier)
        store.put_results(identifier, rows, {"bundle": str(run_dir / "model"), "skipped": run.skipped})
        folder = out / "evaluation"
        folder.mkdir(exist_ok=True)
        predictions = run.predictions.assign(model=identifier)
        path = folder / f"predictions-{identifier}.csv"
        previous = pd.read_csv(path) if path.is_file() else None
        if previous is not None:
            predictions = pd.concat([previous[~previous["test_set"].isin(tests)], predictions], ignore_index=True)
        write_text_atomic(path, predictions.to_csv(index=False, lineterminator="\n"))
        for figure in plot_roc_curves(predictions, folder, formats=("png",)):
            store.put_file("roc", identifier, "ROC", figure)
        summary = ", ".join(f"{t} {ba:.2f}" for t, ba in zip(rows["test_set"], rows["balanced_accuracy"]))
        _say(progress, f"  cell {number}/{len(cells)} {identifier}: balanced accuracy {summary}")

    # 5. Audit.
    _say(progress, "[5/6] auditing")
    audit_options = experiment.audit
    audited_compositions = audit_options.compositions
    if audited_compositions == "all":
        audited_compositions = experiment.compositions
    audit_sets = audit_options.test_sets
    audited = [i for i, (_, _, composition, _) in cells.items() if composition in audited_compositions]
    for number, identifier in enumerate(audited, start=1):
        _, _, composition, run_dir = cells[identifier]
        folder = out / "audit" / identifier
        if (folder / "audit.json").is_file():
            continue
        _say(progress, f"  audit {number}/{len(audited)} {identifier} on {', '.join(audit_sets or [composition])} ...")
        result = audit(run_dir / "model", list(audit_sets or [composition]), folder, data=data,
                       masks=audit_options.masks, cache=cache, thresholds=audit_options.thresholds,
                       seed=experiment.seed, resamples=audit_options.resamples,
                       saliency_samples=audit_options.saliency_samples, workers=workers,
                       recipes=experiment.recipes, progress=True)
        store.put_audit(identifier, result.verdicts)
        for kind in ("tsne_by_source", "tsne_by_label"):
            if kind in result.files:
                store.put_file(kind, identifier, kind.replace("_", " "), result.files[kind])
        for index, overlay in enumerate(result.files.get("saliency_overlays", [])):
            store.put_file("saliency", identifier, f"{index}:{Path(overlay).stem}", overlay)
        flags = ", ".join(f"{v.test} ({v.subject})" for v in result.flagged) or "none"
        _say(progress, f"  audit {number}/{len(audited)} {identifier}: flags: {flags}")

    # 6. Tables and report.
    _say(progress, "[6/6] tables and report")
    write_tables(store.wide_results(), out / "tables")
    write_run_metadata(out / "reproduce.meta.json", "unveil reproduce", {
        "experiment": str(experiment.source), "document": experiment.document, "jobs": parallel,
        "preprocess": asdict(experiment.preprocess)}, extra={"seconds": round(time.perf_counter() - started, 1)})
    store.close()
    if report:
        path = write_report(out)
        _say(progress, f"  report: {path}")
    return out / "results.sqlite"


def _yaml(document: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(document, sort_keys=False)
