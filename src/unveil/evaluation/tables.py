"""Results tables in the paper's layout, as CSV, Markdown and LaTeX; ROC curves per model.

- Table 2 (summary): one row per model (its run name, architecture, pre-trained encoder, training
  set and threshold rule), one column per test set, balanced accuracy with its 95 % interval: the
  cross-dataset matrix. Where a model's threshold is not 0.5, each cell also gives the balanced
  accuracy at the paper's fixed 0.5, so an AUC of 0.8 beside a BA of 0.5 never goes unexplained.
- Tables A1...An: one per architecture (in the model registry's order, :mod:`unveil.models.catalog`),
  rows model x test set, columns the seven metrics with intervals, the Haldane-Anscombe corrected DOR
  (finite when the paper's is infinite) and any other metric of the registry
  (:mod:`unveil.evaluation.metric_specs`, which gives every column its label and interval), the
  threshold and its rule, the metrics at 0.5 where the threshold differs, and the counts.

Intervals: sensitivity, specificity and accuracy show the patient-aware Wilson interval (columns
``m_wilson_low``/``m_wilson_high``; the percentile bootstrap collapses to [0, 0] at 0/n), every other
metric the patient bootstrap (``m_low``/``m_high``); the captions say so. An undefined value prints
``n/a`` and the note saying why is listed under the table (and kept in the row's ``m_note``).

A test set is named by its label (:mod:`unveil.evaluation.names`: ``D``, not ``covid-chestxray:/data/cohen``),
the rows' ``test_set_label`` where they carry one; the notes under a table give each label's full name.

Every row names its model; two models are never merged into one row. Runs of one cell that differ
only by seed are pooled only on request (``aggregate_seeds``, :func:`pool_seeds`): mean ± the
half-width of a Student-t 95 % interval over the seeds.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from unveil.errors import UnveilError
from unveil.evaluation import metric_specs
from unveil.evaluation.evaluate import distinct_names
from unveil.evaluation.metric_specs import IntervalKind, label_of, metric_spec
from unveil.evaluation.metrics import AT_PAPER_SUFFIX, PAPER_THRESHOLD, ThresholdRule
from unveil.evaluation.names import legend, test_set_labels
from unveil.evaluation.proportions import METHOD as WILSON_METHOD
from unveil.evaluation.roc import plot_roc_curves  # noqa: F401 - re-exported: tables and their figures
from unveil.evaluation.table_text import latex_table, markdown_table, tex_escape  # noqa: F401 - tex_escape re-exported
from unveil.models.catalog import display_name, table_rank
from unveil.provenance import write_text_atomic

#: The paper's metrics' table labels (from their specs, :mod:`unveil.evaluation.metric_specs`).
LABELS = {key: label_of(key) for key in metric_specs.paper_metrics()}
#: Threshold metrics the tables repeat at 0.5 where a model's threshold differs, in the tables' column order.
AT_PAPER_TABULATED = ("balanced_accuracy", "sensitivity", "specificity")
AT_PAPER_COLUMNS = {key: f"{label_of(key)} at 0.5" for key in AT_PAPER_TABULATED}
FORMATS = ("csv", "md", "tex")
#: The metric of Table 2 (the cross-dataset matrix).
SUMMARY_METRIC = "balanced_accuracy"
SEED_INTERVAL = "mean ± half-width of the Student-t 95 % interval over seeds"
#: How each kind of 95 % interval is computed (captions, report); see :func:`interval_columns`.
BOOTSTRAP_METHOD = "patient bootstrap, percentile"
METHODS = {IntervalKind.WILSON: WILSON_METHOD, IntervalKind.BOOTSTRAP: BOOTSTRAP_METHOD}
#: What a cell without a number means (captions, report).
UNDEFINED_LEGEND = "n/a: undefined (why: listed under the table)"
NOT_EVALUATED_LEGEND = "—: not evaluated"


class TableError(UnveilError, ValueError):
    """Results rows cannot be tabulated as asked (the message names the rows)."""


def format_value(value: float | None, digits: int = 2, infinity: str = "∞") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if math.isinf(value):
        return infinity if value > 0 else "-" + infinity
    return f"{value:.{digits}f}"


def interval_columns(metric: str) -> tuple[str, str]:
    """The row columns holding ``metric``'s interval: the patient-aware Wilson bounds for the proportions
    (sensitivity, specificity, accuracy), the patient-bootstrap percentile bounds for the others."""
    if metric_spec(metric).interval is IntervalKind.WILSON:
        return f"{metric}_wilson_low", f"{metric}_wilson_high"
    return f"{metric}_low", f"{metric}_high"


def interval_methods() -> dict[str, str]:
    """``{"Sensitivity, Specificity, Accuracy": Wilson..., "F1, BA, ...": bootstrap}``: the table columns of
    each kind of interval (every metric's spec, in registry order), and how it is computed."""
    columns: dict[IntervalKind, list[str]] = {}
    for spec in metric_specs.metric_specs():
        columns.setdefault(spec.interval, []).append(spec.label)
    return {", ".join(labels): METHODS[kind] for kind, labels in columns.items()}


def interval_captions() -> str:
    """``95 % CI: Sensitivity, ... Wilson ...; F1, ... patient bootstrap``: which interval each column shows."""
    return "95 % CI: " + "; ".join(f"{columns}: {method}" for columns, method in interval_methods().items())


def format_with_interval(row: pd.Series, metric: str, infinity: str = "∞") -> str:
    """``0.80 [0.70, 0.90]`` (the interval of :func:`interval_columns`), ``0.80 ± 0.05`` for pooled seeds,
    the point alone without an interval, ``n/a`` when undefined."""
    digits = metric_spec(metric).digits
    point = format_value(row[metric], digits, infinity)
    if _seeds(row) > 1:  # pooled seeds: mean ± half-width
        half = row.get(f"{metric}_half_width")
        return point if half is None or pd.isna(half) else f"{point} ± {format_value(half, digits, infinity)}"
    low, high = (row.get(column) for column in interval_columns(metric))
    if pd.isna(row[metric]) or low is None or high is None or (pd.isna(low) and pd.isna(high)):
        return point
    return f"{point} [{format_value(low, digits, infinity)}, {format_value(high, digits, infinity)}]"


def _seeds(row: pd.Series) -> int:
    value = row.get("n_seeds")
    return 0 if value is None or pd.isna(value) else int(value)


def _off_paper_threshold(row: pd.Series) -> bool:
    """Does the row's threshold differ from the paper's 0.5 (so its 0.5 figures are worth showing)?"""
    threshold = row.get("threshold")
    return threshold is not None and not pd.isna(threshold) and not math.isclose(float(threshold), PAPER_THRESHOLD)


def threshold_label(row: pd.Series) -> str:
    """``youden 0.431``: the rule that chose the row's threshold, and the threshold."""
    rule = row.get("threshold_rule")
    rule = "unknown" if rule is None or pd.isna(rule) else str(rule)
    threshold = row.get("threshold")
    if threshold is None or pd.isna(threshold):
        return rule
    if rule == ThresholdRule.FIXED.value:
        return ThresholdRule.FIXED.describe(float(threshold))
    spread = row.get("threshold_sd")
    if spread is not None and not pd.isna(spread) and spread > 0:
        return f"{rule} {float(threshold):.3f} (mean)"
    return f"{rule} {float(threshold):.3f}"


def model_labels(rows: pd.DataFrame) -> pd.Series:
    """One distinct display name per model: its ``model`` name, made distinct with its bundle path where
    two bundles share a name (e.g. the same run folder name under two seeds' folders)."""
    names = rows["model"].astype(str) if "model" in rows else pd.Series("model", index=rows.index)
    if "bundle" not in rows:
        return names
    bundles = rows["bundle"].astype(str)
    clashing = [m for m, group in bundles.groupby(names) if group.nunique() > 1]
    if not clashing:
        return names
    better = distinct_names(sorted(set(bundles[names.isin(clashing)])))
    return pd.Series([better.get(b, n) if n in clashing else n for n, b in zip(names, bundles, strict=True)],
                     index=rows.index)


def labels_of(rows: pd.DataFrame) -> dict[str, str]:
    """Each test set's label (``test_set`` -> label): the rows' own ``test_set_label`` where they carry one (that
    is still distinct), else the default of :func:`~unveil.evaluation.names.test_set_labels`."""
    names = rows["test_set"].astype(str) if "test_set" in rows else pd.Series(dtype=str)
    given = rows["test_set_label"] if "test_set_label" in rows else pd.Series(None, index=rows.index)
    preferred: dict[str, str] = {}
    for name, label in zip(names, given, strict=False):  # rows without test_set: no names
        if isinstance(label, str) and label:
            preferred.setdefault(name, label)
    return test_set_labels(names, preferred)


def test_set_legend(rows: pd.DataFrame) -> list[str]:
    """``Test D = covid-chestxray:/data/cohen``: the full name of each test set a table shows by a label."""
    return legend(labels_of(rows), "Test ")


def with_labels(rows: pd.DataFrame) -> pd.DataFrame:
    """``rows`` with a ``test_set_label`` column right after ``test_set`` (``test_set`` itself unchanged)."""
    if "test_set" not in rows:
        return rows
    labels = labels_of(rows).get
    labelled = rows.drop(columns="test_set_label", errors="ignore")
    labelled.insert(labelled.columns.get_loc("test_set") + 1, "test_set_label",
                    [labels(str(name), str(name)) for name in labelled["test_set"]])
    return labelled


def trained_on(rows: pd.DataFrame) -> pd.Series:
    """The "Trained on" column: the training set, and the debias method of a mitigated model (``QB, debias
    end``); rows without a ``debias`` column, or with ``none``, show the training set alone."""
    names = rows["training_set"].astype(str)
    if "debias" not in rows:
        return names
    methods = rows["debias"].fillna("none").astype(str)
    return pd.Series([n if m == "none" else f"{n}, debias {m}" for n, m in zip(names, methods, strict=True)],
                     index=rows.index)


def _order(rows: pd.DataFrame) -> pd.DataFrame:
    rows = rows.assign(_model=model_labels(rows))
    if "training_set" in rows:
        rows = rows.assign(training_set=trained_on(rows))
    return rows.assign(_arch=rows["architecture"].map(table_rank)).sort_values(
        ["_arch", "encoder", "training_set", "_model", "test_set"]).drop(columns="_arch")


def _with_paper_threshold(row: pd.Series, metric: str, infinity: str) -> str:
    text = format_with_interval(row, metric, infinity)
    column = f"{metric}{AT_PAPER_SUFFIX}"
    if _off_paper_threshold(row) and column in row and not pd.isna(row[column]):
        text += f" (at 0.5: {format_value(row[column], 2, infinity)})"
    return text


def summary_table(rows: pd.DataFrame, metric: str = SUMMARY_METRIC, infinity: str = "∞") -> pd.DataFrame:
    """Table 2: models x test sets, ``metric`` with its interval (and at 0.5 where the threshold differs).
    One row per model: models sharing architecture, encoder and training set stay apart."""
    rows = _order(rows)
    if "threshold_rule" not in rows:
        rows = rows.assign(threshold_rule=None)
    table = rows.assign(value=[_with_paper_threshold(r, metric, infinity) for _, r in rows.iterrows()],
                        Architecture=rows["architecture"].map(display_name),
                        Threshold=rows["threshold_rule"].fillna("unknown").astype(str))
    index = ["_model", "Architecture", "encoder", "training_set", "Threshold"]
    pivot = table.pivot_table(index=index, columns="test_set", values="value", aggfunc=_only, sort=False)
    pivot.index.names = ["Model", "Architecture", "Pre-trained", "Trained on", "Threshold rule"]
    labels = labels_of(rows)
    pivot.columns = [f"Test {labels[str(c)]}" for c in pivot.columns]
    return pivot.fillna("—").reset_index()  # a model not evaluated on a test set


def _only(values: pd.Series) -> str:
    """The one value of a (model, test set) cell; two differing values would be a silent merge."""
    distinct = list(dict.fromkeys(values))
    if len(distinct) > 1:
        raise TableError(f"one model has {len(distinct)} different results on one test set ({', '.join(distinct)}): "
                         "give each evaluation its own model name")
    return distinct[0]


def architecture_tables(rows: pd.DataFrame, infinity: str = "∞") -> dict[str, pd.DataFrame]:
    """Tables A1..An: per architecture, model x test set x the seven metrics, threshold rule, figures at 0.5."""
    tables, labels = {}, labels_of(rows)
    for architecture, group in _order(rows).groupby("architecture", sort=False):
        table = pd.DataFrame({"Model": group["_model"], "Pre-trained": group["encoder"],
                              "Trained on": group["training_set"],
                              "Tested on": group["test_set"].astype(str).map(labels),
                              "Threshold": [threshold_label(r) for _, r in group.iterrows()]})
        if "n_seeds" in group:
            table.insert(1, "Seeds", group["seeds"].to_numpy())
        for spec in metric_specs.metric_specs():  # the paper's always; the others (DOR (HA)) where rows hold them
            if spec.paper or spec.key in group:
                table[spec.label] = [format_with_interval(r, spec.key, infinity) for _, r in group.iterrows()]
        if any(_off_paper_threshold(r) for _, r in group.iterrows()):
            for metric, label in AT_PAPER_COLUMNS.items():
                column = f"{metric}{AT_PAPER_SUFFIX}"
                if column in group:
                    table[label] = [format_value(r[column], 2, infinity) if _off_paper_threshold(r) else "(same)"
                                    for _, r in group.iterrows()]
        table["Patients"] = group["patients"].to_numpy()
        table["Images"] = group["images"].to_numpy()
        tables[str(architecture)] = table.reset_index(drop=True)
    return tables


def pool_seeds(rows: pd.DataFrame) -> pd.DataFrame:
    """Pool the runs of one cell that differ only by seed: per (architecture, encoder, training set, recipe,
    threshold rule, test set), every metric's mean over seeds, its ``_half_width`` (Student-t 95 %, nan
    for one seed), the seeds' distinct ``_note``s, ``n_seeds``, ``seeds`` and the ``model`` names pooled
    (not the per-run interval bounds). Refuses two runs with one seed."""
    from scipy.stats import t as student_t

    if "model_seed" not in rows:
        raise TableError("results rows without model_seed (evaluate them again with this unveil) cannot be "
                         "pooled by seed")
    rows = rows.assign(model=model_labels(rows))
    keys = [k for k in ("architecture", "encoder", "training_set", "debias", "recipe_key", "threshold_rule",
                        "test_set") if k in rows]
    # Per-run interval bounds are not pooled: the seeds' spread replaces them.
    bounds = {column for metric in metric_specs.reported() for column in (
        f"{metric}_low", f"{metric}_high", f"{metric}_wilson_low", f"{metric}_wilson_high")}
    notes = [c for c in rows.columns if c.endswith("_note")]
    numeric = [c for c in rows.columns if c not in keys and pd.api.types.is_numeric_dtype(rows[c])
               and c not in ("model_seed", "seed", "resamples") and c not in bounds and c not in notes]
    pooled = []
    for key, group in rows.groupby(keys, sort=False, dropna=False):
        seeds = group["model_seed"].tolist()
        if len(set(seeds)) < len(seeds):
            cell = dict(zip(keys, key, strict=True))
            raise TableError(f"models {', '.join(group['model'])} share the cell {cell} and a seed: "
                             "they are not seeds of one cell (rename or drop one)")
        n = len(group)
        row = dict(zip(keys, key, strict=True))
        for column in numeric:
            values = group[column].to_numpy(dtype=np.float64)
            row[column] = float(np.mean(values))
            finite = values[np.isfinite(values)]
            if n > 1 and len(finite) == n:
                row[f"{column}_half_width"] = float(student_t.ppf(0.975, n - 1) * np.std(values, ddof=1) / math.sqrt(n))
            else:
                row[f"{column}_half_width"] = math.nan
        row["threshold_sd"] = float(np.std(group["threshold"], ddof=0)) if "threshold" in group else math.nan
        for column in notes:  # the seeds' distinct notes, so that a pooled n/a still says why
            distinct = list(dict.fromkeys(v for v in group[column] if isinstance(v, str) and v))
            row[column] = " | ".join(distinct) if distinct else None
        if "test_set_label" in group:  # the label the evaluation gave (its role), kept for the tables
            row["test_set_label"] = group["test_set_label"].iloc[0]
        row.update({"model": " + ".join(group["model"]), "n_seeds": n,
                    "seeds": ", ".join(str(s) for s in sorted(seeds, key=str)), "interval": SEED_INTERVAL})
        pooled.append(row)
    return pd.DataFrame(pooled)


def undefined_notes(rows: pd.DataFrame, metrics: tuple[str, ...] | None = None,
                    labels: dict[str, str] | None = None) -> list[str]:
    """Why each ``n/a`` of a table is undefined, one line per row, metrics with one note together: ``m on
    Test D: Specificity: undefined: no COVID- images; BA, AUC: ...`` (the rows' ``m_note``), in table order;
    test sets by ``labels`` (default: :func:`labels_of` the rows)."""
    labels = labels_of(rows) if labels is None else labels
    metrics = metric_specs.reported() if metrics is None else metrics
    lines = []
    for _, row in _order(rows).iterrows():
        by_note: dict[str, list[str]] = {}
        for metric in metrics:
            value, note = row.get(metric), row.get(f"{metric}_note")
            if metric in row and pd.isna(value) and isinstance(note, str) and note:
                by_note.setdefault(note, []).append(label_of(metric))
        if by_note:
            parts = [f"{', '.join(columns)}: {note}" for note, columns in by_note.items()]
            lines.append(f"{row['_model']} on Test {labels.get(str(row['test_set']), row['test_set'])}: "
                         + "; ".join(parts))
    return lines


def named_tables(rows: pd.DataFrame, *, pooled: bool = False) -> dict[str, tuple[str, pd.DataFrame, list[str]]]:
    """Per file stem (``table2``, ``tableA1_resnet18``, ...): caption, table and its notes (why each ``n/a``, then
    the full name of each test set shown by a label). ``pooled``: ``rows`` are :func:`pool_seeds` rows."""
    threshold_note = ("threshold chosen a priori on each model's validation split by the rule shown; "
                      "'at 0.5': the same at the paper's fixed 0.5, where the threshold differs")
    if pooled:
        summary_values = table_values = "mean ± half-width of the Student-t 95 % interval over the seeds of each cell"
    else:
        summary_values, table_values = f"95 % CI, {BOOTSTRAP_METHOD}", interval_captions()
    labels = labels_of(rows)
    named = {"table2": (f"Table 2: {metric_spec(SUMMARY_METRIC).name} of every model on every test set "
                        f"({summary_values}; {threshold_note}; {UNDEFINED_LEGEND}; {NOT_EVALUATED_LEGEND})",
                        summary_table(rows),
                        undefined_notes(rows, (SUMMARY_METRIC,), labels) + legend(labels, "Test "))}
    ordered = _order(rows)
    for index, (architecture, table) in enumerate(architecture_tables(rows).items(), 1):
        title = display_name(architecture)
        group = ordered[ordered["architecture"].astype(str) == architecture].drop(columns="_model")
        shown = {name: labels[name] for name in dict.fromkeys(group["test_set"].astype(str))}
        named[f"tableA{index}_{architecture}"] = (f"Table A{index}: {title}, model x test set ({table_values}; "
                                                  f"{threshold_note}; {UNDEFINED_LEGEND})", table,
                                                  undefined_notes(group, labels=labels) + legend(shown, "Test "))
    return named


def write_tables(rows: pd.DataFrame, out: str | Path, formats: tuple[str, ...] = FORMATS, *,
                 aggregate_seeds: bool = False) -> list[Path]:
    """Write Table 2 and Tables A1..An; CSV keeps raw numbers (every column of ``rows``: both the bootstrap
    and the Wilson bounds, the notes). ``aggregate_seeds``: pool the seeds of each cell (mean ± t-interval
    half-width; ``results_by_cell.csv``)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    tabulated = pool_seeds(rows) if aggregate_seeds else rows
    for stem, (caption, table, notes) in named_tables(tabulated, pooled=aggregate_seeds).items():
        if "md" in formats:
            written.append(write_text_atomic(out / f"{stem}.md", markdown_table(table, caption, notes)))
        if "tex" in formats:
            written.append(write_text_atomic(out / f"{stem}.tex", latex_table(table, caption, f"tab:{stem}", notes)))
    if "csv" in formats:
        labelled = with_labels(rows)
        written.append(write_text_atomic(out / "results.csv", labelled.to_csv(index=False, lineterminator="\n")))
        if aggregate_seeds:
            written.append(write_text_atomic(out / "results_by_cell.csv",
                                             tabulated.to_csv(index=False, lineterminator="\n")))
    return written


def json_rows(rows: pd.DataFrame) -> list[dict[str, object]]:
    """Rows for JSON: NaN -> null, +-infinity -> "inf"/"-inf" (JSON has no infinity; the DOR can be one)."""
    def clean(value: object) -> object:
        if isinstance(value, (float, np.floating)):
            if math.isnan(value):
                return None
            if math.isinf(value):
                return "inf" if value > 0 else "-inf"
            return float(value)
        if isinstance(value, np.integer):
            return int(value)
        return None if value is pd.NA else value
    return [{key: clean(value) for key, value in row.items()} for row in rows.to_dict(orient="records")]
