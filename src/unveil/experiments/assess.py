"""Steps 4 and 5 of ``unveil reproduce`` (the job graph's ``evaluate`` and ``audit`` nodes): every cell on every
test set it has not met yet, each pre-trained cell compared with its from-scratch twin, and the audits of the
audited compositions; results in the run's store."""

from __future__ import annotations

import logging
from dataclasses import asdict, replace
from pathlib import Path

import pandas as pd

from unveil.audit import audit
from unveil.evaluation.evaluate import evaluate_models
from unveil.evaluation.figures import KINDS, figure_stem
from unveil.evaluation.outputs import PREDICTIONS, write_evaluation_outputs
from unveil.evaluation.paired import ComparisonError, compare_predictions
from unveil.experiments.graph import JobGraph
from unveil.experiments.jobs import Cell
from unveil.experiments.state import GridRun

log = logging.getLogger(__name__)


def audited_cells(run: GridRun, cells: list[Cell]) -> list[Cell]:
    """The cells of the audited compositions, in grid order."""
    options, experiment = run.experiment.audit, run.experiment
    compositions = experiment.compositions if options.compositions == "all" else options.compositions
    return [cell for cell in cells if cell.composition in compositions]


def evaluate_cells(run: GridRun, cells: list[Cell], graph: JobGraph) -> None:
    """Step 4 (the graph's ``evaluate`` nodes): every cell on every test set it has not met yet; results in the
    store, files in OUT/evaluation/<cell>/ (the files of `unveil evaluate --out`)."""

    experiment, options = run.experiment, run.experiment.evaluation
    evaluated = run.store.evaluated()
    by_id = {cell.id: cell for cell in cells}
    for number, node in enumerate(graph.stage("evaluate"), start=1):
        cell = by_id[node.key.partition(":")[2]]
        tests = [t for t in experiment.tests if (cell.id, t) not in evaluated]
        if not tests:
            continue
        result = evaluate_models([cell.bundle], tests, data=run.data, cache=run.cache,
                                 threshold=options.threshold_request(), resamples=options.resamples,
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
        _store_clinical(run, cell, tests, written.clinical.get("subgroups.csv"))
        rows = result.rows
        summary = ", ".join(f"{t} {ba:.2f}" for t, ba in zip(rows["test_set"], rows["balanced_accuracy"], strict=True))
        run.say(f"  cell {number}/{len(cells)} {cell.id}: balanced accuracy {summary}")


def _store_clinical(run: GridRun, cell: Cell, tests: list[str], subgroups: Path | None) -> None:
    """A cell's reliability and confusion figures (one per test set, labelled by it) and subgroups, into the store."""
    folder = run.out / "evaluation" / cell.id
    for kind in KINDS:
        for test in tests:
            path = folder / f"{figure_stem(kind, cell.id, test)}.png"
            if path.is_file():
                run.store.put_file(kind, cell.id, test, path)
    if subgroups is not None:
        run.store.put_subgroups(cell.id, pd.read_csv(subgroups))


def compare_encoders(run: GridRun, cells: list[Cell]) -> None:
    """Step 4 (end): each pre-trained cell against its from-scratch twin (same architecture and composition) on
    every test set both met: "pre-training on B helps" as a paired comparison (DeLong, paired patient bootstrap),
    in the store for the report; then each cell of the mitigated arm against its unmitigated twin ("debias end
    helps"). Pairs already compared are skipped."""
    grid = [c for c in cells if c.debias == "none"]
    scratch = {(c.architecture, c.composition): c for c in grid if c.encoder == "none"}
    for cell in (c for c in grid if c.encoder != "none" and (c.architecture, c.composition) in scratch):
        _compare_pair(run, scratch[(cell.architecture, cell.composition)], cell,
                      f"pre-training on {cell.encoder} helps")
    by_id = {c.id: c for c in grid}
    for cell in (c for c in cells if c.debias != "none" and c.twin_id in by_id):
        _compare_pair(run, by_id[cell.twin_id], cell, f"debias {cell.debias} helps")


def _compare_pair(run: GridRun, twin: Cell, cell: Cell, claim: str) -> None:
    """``cell`` against ``twin`` on every test set both met and not compared yet, into the store."""
    files = [run.out / "evaluation" / c.id / PREDICTIONS for c in (twin, cell)]
    tests = [t for t in run.experiment.tests if (twin.id, cell.id, t) not in run.store.compared()]
    if not tests or not all(f.is_file() for f in files):
        return
    try:
        table = compare_predictions(pd.concat([pd.read_csv(f) for f in files], ignore_index=True), twin.id,
                                    cell.id, test_sets=tests, resamples=run.experiment.evaluation.resamples,
                                    seed=run.experiment.seed)
    except ComparisonError as error:
        run.say(f"  {cell.id} vs {twin.id}: not compared ({error})")
        return
    run.store.put_comparisons(table, claim=claim)


def external_sets(run: GridRun, cell: Cell) -> list[str]:
    """The audit's external roles as whole datasets (SOURCE:PATH), less the roles ``cell`` was trained on."""
    trained_on = set(run.experiment.recipe_book().recipe(cell.composition).roles)
    return [f"{run.data[role].source}:{run.data[role].root}" for role in run.experiment.audit.external
            if role in run.data and role not in trained_on]


def audit_cells(run: GridRun, cells: list[Cell], graph: JobGraph) -> None:
    """Step 5 (the graph's ``audit`` nodes): audit the cells of the audited compositions (skipping those already
    audited)."""

    experiment, options = run.experiment, run.experiment.audit
    by_id, audited = {cell.id: cell for cell in cells}, graph.stage("audit")
    for number, node in enumerate(audited, start=1):
        cell, folder = by_id[node.key.partition(":")[2]], node.artifact
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
