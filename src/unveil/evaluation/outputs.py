"""The files of an evaluation, written one way for `unveil evaluate` and `unveil reproduce`.

One folder holds: ``results.csv`` (one row per model x test set, every column), Table 2 and Tables
A1..An (``table2.md``/``.tex``, ``tableA<n>_<architecture>.md``/``.tex``), ``predictions.csv`` (one row
per model x test set x image: ``probability``, ``label``, ``decision``, ``threshold`` ...), one ROC
figure per model (``roc_<model>.png``/``.svg``) and ``evaluation.meta.json`` (the arguments, versions
and skipped images). Every file is written atomically.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from unveil.evaluation.evaluate import EvaluationRun
from unveil.evaluation.tables import plot_roc_curves, write_tables
from unveil.provenance import write_run_metadata, write_text_atomic

RESULTS = "results.csv"
PREDICTIONS = "predictions.csv"
META = "evaluation.meta.json"


@dataclass
class EvaluationOutputs:
    """What :func:`write_evaluation_outputs` wrote (paths)."""

    tables: list[Path]  # results.csv and the Markdown/LaTeX tables
    predictions: Path
    roc: list[Path]
    meta: Path


def _merged(new: pd.DataFrame, path: Path) -> pd.DataFrame:
    """``new`` after the rows of an earlier file at ``path`` for (model, test set) pairs ``new`` does not hold."""
    if not path.is_file():
        return new
    previous = pd.read_csv(path)
    if previous.empty or not {"model", "test_set"} <= set(previous.columns):
        return new
    pairs = set(zip(new["model"].astype(str), new["test_set"].astype(str), strict=True))
    kept = [(str(m), str(t)) not in pairs for m, t in zip(previous["model"], previous["test_set"], strict=True)]
    return pd.concat([previous[kept], new], ignore_index=True)


def write_evaluation_outputs(run: EvaluationRun, out: str | Path, *, arguments: dict[str, Any],
                             command: str = "unveil evaluate", keep_previous: bool = False,
                             roc_formats: tuple[str, ...] = ("png", "svg")) -> EvaluationOutputs:
    """Write the results, tables, predictions, ROC curves and metadata of ``run`` into ``out``.

    ``arguments``: what the evaluation was asked (recorded in ``evaluation.meta.json`` with ``command``).
    ``keep_previous``: keep the rows of an earlier call into ``out`` for the (model, test set) pairs this run
    did not evaluate (a resumed experiment evaluates only the test sets it lacks)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows, predictions = run.rows, run.predictions
    if keep_previous:
        rows, predictions = _merged(rows, out / RESULTS), _merged(predictions, out / PREDICTIONS)
    tables = write_tables(rows, out)
    predictions_path = write_text_atomic(out / PREDICTIONS, predictions.to_csv(index=False, lineterminator="\n"))
    roc = plot_roc_curves(predictions, out, formats=roc_formats)
    meta = out / META
    write_run_metadata(meta, command, arguments, extra={"skipped": run.skipped})
    return EvaluationOutputs(tables, Path(predictions_path), roc, meta)
