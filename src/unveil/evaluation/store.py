"""The results store: one SQLite file per experiment (schema in docs/results.md).

Tables
- ``experiment(key, value)``: name, seed, resolved configuration (YAML), versions (JSON), times.
- ``datasets(role, source, path, images, patients, covid_pos, covid_neg, by_finding)``.
- ``cells(cell_id, architecture, encoder, training_set, run_dir, bundle, status, seconds, best_epoch,
  val_auc, config)``: one training cell of the grid.
- ``results(cell_id, test_set, metric, value, low, high, wilson_low, wilson_high, note, images, patients,
  positive_images, negative_images, tp, fp, tn, fn, threshold, threshold_rule, resamples, seed,
  provenance, design_effect)``: one row per (cell, test set, metric). ``low``/``high``: patient bootstrap;
  ``wilson_low``/``wilson_high``/``design_effect``: the patient-aware Wilson interval of the proportions
  (sensitivity, specificity, accuracy; NULL for the other metrics). NaN is stored as NULL, infinity as a
  REAL inf.
  The metrics include ``*_at_0.5`` (sensitivity, specificity, F1, accuracy, balanced accuracy at the
  fixed 0.5, point values) beside the ones at the cell's own threshold.
- ``audits(cell_id, test, subject, value, low, high, rule, flagged, suggests, measure)``: ``measure`` says
  what ``value`` is (ROC AUC, balanced accuracy, a ratio).
- ``files(kind, cell_id, label, path)``: pictures the report embeds (ROC, reliability, confusion, t-SNE, ...).
- ``subgroups(cell_id, test_set, attribute, subgroup, ...)``: the columns of ``subgroups.csv``
  (:mod:`unveil.evaluation.subgroups`).
- ``comparisons(model_a, model_b, test_set, claim, ...)``: paired comparisons of two cells on one test set, the
  columns of ``comparisons.csv`` (:mod:`unveil.evaluation.paired`), ``claim`` what is said of the second.
The results also hold the calibration (metrics ``ece`` and ``brier``, with their bootstrap ``low``/``high``).
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from unveil.errors import UnveilError
from unveil.evaluation import metric_specs
from unveil.evaluation.metrics import AT_PAPER_SUFFIX
from unveil.training.config import ConfigError, TrainConfig

#: the tables of a results store
TABLES = ("experiment", "datasets", "cells", "results", "audits", "files", "subgroups", "comparisons")


class StoreError(UnveilError, ValueError):
    """A results store was asked for something it does not hold."""

SCHEMA = """
CREATE TABLE IF NOT EXISTS experiment (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS datasets (role TEXT PRIMARY KEY, source TEXT, path TEXT, images INTEGER,
    patients INTEGER, covid_pos INTEGER, covid_neg INTEGER, by_finding TEXT);
CREATE TABLE IF NOT EXISTS cells (cell_id TEXT PRIMARY KEY, architecture TEXT, encoder TEXT, training_set TEXT,
    run_dir TEXT, bundle TEXT, status TEXT, seconds REAL, best_epoch INTEGER, val_auc REAL, config TEXT);
CREATE TABLE IF NOT EXISTS results (cell_id TEXT, test_set TEXT, metric TEXT, value REAL, low REAL, high REAL,
    wilson_low REAL, wilson_high REAL, note TEXT, images INTEGER, patients INTEGER, positive_images INTEGER,
    negative_images INTEGER, tp INTEGER, fp INTEGER, tn INTEGER, fn INTEGER, threshold REAL, threshold_rule TEXT,
    resamples INTEGER, seed INTEGER, provenance TEXT, design_effect REAL, PRIMARY KEY (cell_id, test_set, metric));
CREATE TABLE IF NOT EXISTS audits (cell_id TEXT, test TEXT, subject TEXT, value REAL, low REAL, high REAL,
    rule TEXT, flagged INTEGER, suggests TEXT, measure TEXT, PRIMARY KEY (cell_id, test, subject));
CREATE TABLE IF NOT EXISTS files (kind TEXT, cell_id TEXT, label TEXT, path TEXT, PRIMARY KEY (kind, cell_id, label));
CREATE TABLE IF NOT EXISTS subgroups (cell_id TEXT, test_set TEXT, attribute TEXT, subgroup TEXT, images INTEGER,
    patients INTEGER, positive_patients INTEGER, negative_patients INTEGER, sensitivity REAL, sensitivity_low REAL,
    sensitivity_high REAL, specificity REAL, specificity_low REAL, specificity_high REAL, roc_auc REAL,
    roc_auc_low REAL, roc_auc_high REAL, note TEXT, PRIMARY KEY (cell_id, test_set, attribute, subgroup));
CREATE TABLE IF NOT EXISTS comparisons (model_a TEXT, model_b TEXT, test_set TEXT, claim TEXT, unpaired_images INTEGER,
    images INTEGER, patients INTEGER, auc_a REAL, auc_b REAL, auc_difference REAL, auc_difference_low REAL,
    auc_difference_high REAL, delong_z REAL, delong_p REAL, balanced_accuracy_a REAL, balanced_accuracy_b REAL,
    balanced_accuracy_difference REAL, balanced_accuracy_difference_low REAL, balanced_accuracy_difference_high REAL,
    resamples INTEGER, note TEXT, PRIMARY KEY (model_a, model_b, test_set));
"""


#: Calibration metrics stored beside the registered ones (:mod:`unveil.evaluation.calibration`: computed from the
#: scores, not from the counts at a threshold, so they are not metric specs).
CALIBRATION_METRICS = ("ece", "brier")


def stored_metrics() -> tuple[str, ...]:
    """The ``metric`` values of the results table: every registered metric (:mod:`unveil.evaluation.metric_specs`),
    then the threshold metrics at the paper's 0.5, then the calibration metrics."""
    return (*metric_specs.reported(), *(f"{m}{AT_PAPER_SUFFIX}" for m in metric_specs.at_paper_threshold()),
            *CALIBRATION_METRICS)


#: The shipped metrics the store keeps (``stored_metrics()`` also holds metrics registered later).
REPORTED_METRICS = stored_metrics()
COUNT_COLUMNS = ("images", "patients", "positive_images", "negative_images", "tp", "fp", "tn", "fn")
RESULT_COLUMNS = ("cell_id", "test_set", "metric", "value", "low", "high", "wilson_low", "wilson_high", "note",
                  *COUNT_COLUMNS, "threshold", "threshold_rule", "resamples", "seed", "provenance", "design_effect")
#: Columns added to a table after its first release: (table, column, type), added to an older store on opening.
ADDED_COLUMNS = (("audits", "measure", "TEXT"), ("results", "design_effect", "REAL"), ("cells", "debias", "TEXT"))


def _real(value: Any) -> float | None:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _missing(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def _plain(value: Any) -> Any:
    """A numpy scalar as the Python value SQLite stores."""
    return value.item() if hasattr(value, "item") else value


def _seed_and_recipe(config: Any) -> dict[str, Any]:
    """A cell's training seed and recipe key (for pooling seeds), from its stored configuration."""
    try:
        values = json.loads(config)
        return {"model_seed": values.get("seed"), "recipe_key": TrainConfig.from_dict(values).recipe_key()}
    except (TypeError, ValueError, ConfigError, AttributeError):
        return {"model_seed": None, "recipe_key": ""}


class ResultsStore:
    """A thin wrapper over the SQLite file; every write is one transaction."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.connection = sqlite3.connect(self.path, timeout=60)
        self.connection.executescript(SCHEMA)
        for table, column, kind in ADDED_COLUMNS:  # a store written before verdicts named their measure, ...
            if column not in {row[1] for row in self.connection.execute(f"PRAGMA table_info({table})")}:
                with self.connection:
                    self.connection.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")

    def close(self) -> None:
        self.connection.close()

    def __enter__(self) -> ResultsStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def set_experiment(self, values: dict[str, Any]) -> None:
        with self.connection:
            self.connection.executemany("INSERT OR REPLACE INTO experiment VALUES (?, ?)",
                                        [(k, v if isinstance(v, str) else json.dumps(v, default=str))
                                         for k, v in values.items()])

    def put_dataset(self, role: str, source: str, path: str, records: pd.DataFrame) -> None:
        findings = {str(k): int(v) for k, v in records["finding"].value_counts().items()}
        patients = int((records["source"] + "::" + records["patient_id"]).nunique())
        with self.connection:
            self.connection.execute("INSERT OR REPLACE INTO datasets VALUES (?, ?, ?, ?, ?, ?, ?, ?)", (
                role, source, str(path), len(records), patients, int((records["covid"] == 1).sum()),
                int((records["covid"] == 0).sum()), json.dumps(findings)))

    def put_cell(self, cell: dict[str, Any]) -> None:
        columns = ("cell_id", "architecture", "encoder", "training_set", "run_dir", "bundle", "status", "seconds",
                   "best_epoch", "val_auc", "config", "debias")
        values = [json.dumps(cell[c], default=str) if c == "config" else cell.get(c) for c in columns]
        with self.connection:
            self.connection.execute(f"INSERT OR REPLACE INTO cells ({', '.join(columns)}) VALUES "
                                    f"({', '.join('?' * len(columns))})", values)

    def done_cells(self) -> set[str]:
        return {row[0] for row in self.connection.execute("SELECT cell_id FROM cells WHERE status = 'done'")}

    def evaluated(self) -> set[tuple[str, str]]:
        return set(self.connection.execute("SELECT DISTINCT cell_id, test_set FROM results"))

    def put_results(self, cell_id: str, rows: pd.DataFrame, provenance: dict[str, Any]) -> None:
        """Rows of `evaluate_models` (one per test set) -> one row per (cell, test set, metric)."""
        records = []
        for _, row in rows.iterrows():
            for metric in (m for m in stored_metrics() if m in row):
                records.append((
                    cell_id, row["test_set"], metric, _real(row.get(metric)), _real(row.get(f"{metric}_low")),
                    _real(row.get(f"{metric}_high")), _real(row.get(f"{metric}_wilson_low")),
                    _real(row.get(f"{metric}_wilson_high")),
                    None if pd.isna(row.get(f"{metric}_note")) else str(row.get(f"{metric}_note")),
                    *(int(row[c]) for c in COUNT_COLUMNS), float(row["threshold"]), str(row["threshold_rule"]),
                    int(row["resamples"]), int(row["seed"]), json.dumps(provenance, default=str),
                    _real(row.get(f"{metric}_design_effect"))))
        with self.connection:
            self.connection.executemany(f"INSERT OR REPLACE INTO results ({', '.join(RESULT_COLUMNS)}) VALUES "
                                        f"({', '.join('?' * len(RESULT_COLUMNS))})", records)

    def put_audit(self, cell_id: str, verdicts: Iterable[Any]) -> None:
        with self.connection:
            self.connection.executemany(
                "INSERT OR REPLACE INTO audits (cell_id, test, subject, value, low, high, rule, flagged, suggests, "
                "measure) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", [
                    (cell_id, v.test, v.subject, _real(v.value), _real(v.low), _real(v.high), v.threshold,
                     None if v.flagged is None else int(v.flagged), v.suggests, getattr(v, "measure", None))
                    for v in verdicts])

    def put_file(self, kind: str, cell_id: str, label: str, path: str | Path) -> None:
        with self.connection:
            self.connection.execute("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?)", (kind, cell_id, label,
                                                                                        str(path)))

    def _put_rows(self, table: str, rows: pd.DataFrame, fixed: dict[str, Any] | None = None) -> None:
        """Rows into ``table`` (INSERT OR REPLACE), its columns taken from ``rows`` and ``fixed``; NaN as NULL."""
        columns = [row[1] for row in self.connection.execute(f"PRAGMA table_info({table})")]
        records = []
        for _, row in rows.iterrows():
            values = {**row.to_dict(), **(fixed or {})}
            records.append([None if _missing(values.get(c)) else _plain(values.get(c)) for c in columns])
        with self.connection:
            self.connection.executemany(f"INSERT OR REPLACE INTO {table} ({', '.join(columns)}) VALUES "
                                        f"({', '.join('?' * len(columns))})", records)

    def put_subgroups(self, cell_id: str, table: pd.DataFrame) -> None:
        """The subgroup rows of one cell (``subgroups.csv`` of its evaluation)."""
        self._put_rows("subgroups", table, {"cell_id": cell_id})

    def put_comparisons(self, table: pd.DataFrame, claim: str | None = None) -> None:
        """Paired comparisons (:func:`unveil.evaluation.paired.compare_predictions` rows; models: cell ids)."""
        self._put_rows("comparisons", table, {"claim": claim})

    def compared(self) -> set[tuple[str, str, str]]:
        """(model_a, model_b, test_set) of every stored comparison."""
        return set(self.connection.execute("SELECT model_a, model_b, test_set FROM comparisons"))

    def table(self, name: str) -> pd.DataFrame:
        if name not in TABLES:
            raise StoreError(f"no table {name!r} in the results store; tables: {', '.join(TABLES)}")
        return pd.read_sql_query(f"SELECT * FROM {name}", self.connection)

    def wide_results(self) -> pd.DataFrame:
        """One row per (cell, test set) with ``metric``, ``metric_low``, ``metric_high``, ``metric_note``, for
        the proportions ``metric_wilson_low``/``_wilson_high``/``_design_effect``, and the cell's identity: the
        layout the tables module expects (the columns of `evaluate_models` rows)."""
        long = self.table("results")
        if long.empty:
            return pd.DataFrame()
        cells = self.table("cells").set_index("cell_id")
        rows = []
        for (cell_id, test_set), group in long.groupby(["cell_id", "test_set"], sort=True):
            first = group.iloc[0]
            row: dict[str, Any] = {"model": cell_id, "test_set": test_set,
                                   **{c: cells.loc[cell_id, c] for c in ("architecture", "encoder", "training_set",
                                                                         "bundle")},
                                   "debias": cells.loc[cell_id, "debias"] or "none",
                                   **_seed_and_recipe(cells.loc[cell_id, "config"]),
                                   **{c: int(first[c]) for c in COUNT_COLUMNS},
                                   "threshold": first["threshold"], "threshold_rule": first["threshold_rule"]}
            for _, metric in group.iterrows():
                name = metric["metric"]
                columns = [("", "value"), ("_low", "low"), ("_high", "high"), ("_note", "note")]
                if name in metric_specs.proportions():
                    columns += [("_wilson_low", "wilson_low"), ("_wilson_high", "wilson_high"),
                                ("_design_effect", "design_effect")]
                for suffix, column in columns:
                    value = metric[column]
                    row[name + suffix] = math.nan if value is None and suffix != "_note" else value
            rows.append(row)
        return pd.DataFrame(rows)

    def export_csv(self, folder: str | Path) -> list[Path]:
        """Every table as CSV (``<table>.csv``) in ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        written = []
        for name in TABLES:
            path = folder / f"{name}.csv"
            self.table(name).to_csv(path, index=False)
            written.append(path)
        return written
