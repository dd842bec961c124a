"""Subgroup metrics: does the model work as well for women as for men, for the old, on AP films, at each site?

For each subgroup of sex, age group, view and site (the record table's ``sex``, ``age``, ``view`` and
``location``, where the test set has them): sensitivity and specificity with the patient-aware Wilson interval
(:mod:`unveil.evaluation.proportions`), ROC AUC with the patient-bootstrap interval, and the counts behind
them. Age groups: :data:`AGE_GROUPS` (``<18``, ``18-39``, ``40-59``, ``60-79``, ``80+``; years, lower bound
included). Images whose attribute is not recorded form the subgroup ``unknown``; an attribute no image records is
left out.

A subgroup too small to say anything is ``n/a`` with the reason, never a number: a metric needs at least
:data:`MIN_PATIENTS` patients of each class it reads (sensitivity COVID+ patients, specificity COVID−, AUC
both): below that, a Wilson interval spans most of [0, 1] and a bootstrap AUC interval is meaningless.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from unveil.errors import UnveilError
from unveil.evaluation.metrics import evaluate_scores

#: Age groups (label, lower bound included, upper bound excluded), in years.
AGE_GROUPS: tuple[tuple[str, float, float], ...] = (("<18", 0, 18), ("18-39", 18, 40), ("40-59", 40, 60),
                                                    ("60-79", 60, 80), ("80+", 80, math.inf))
#: Subgroup attributes (the column they are read from, the name tables show).
ATTRIBUTES: dict[str, str] = {"sex": "sex", "age_group": "age group", "view": "view", "location": "site"}
#: Record columns predictions carry so that subgroups can be computed from them.
RECORD_COLUMNS = ("sex", "age", "view", "location")
#: Fewest patients of a class a metric needs in a subgroup.
MIN_PATIENTS = 5
UNKNOWN = "unknown"
METRICS = ("sensitivity", "specificity", "roc_auc")
#: The classes each metric reads.
NEEDS = {"sensitivity": ("COVID+",), "specificity": ("COVID-",), "roc_auc": ("COVID+", "COVID-")}
RULE = (f"n/a below {MIN_PATIENTS} patients of a class the metric reads (sensitivity: COVID+, specificity: COVID-, "
        "AUC: both)")


class SubgroupError(UnveilError, ValueError):
    """Predictions cannot be split into subgroups (the message names the missing columns)."""


def age_group(ages: pd.Series) -> pd.Series:
    """Each age's group label (:data:`AGE_GROUPS`), ``unknown`` where the age is missing."""
    numbers = pd.to_numeric(ages, errors="coerce").astype("float64")
    edges = [low for _, low, _ in AGE_GROUPS] + [math.inf]
    groups = pd.cut(numbers, edges, right=False, labels=[label for label, _, _ in AGE_GROUPS])
    return groups.astype(object).where(numbers.notna(), UNKNOWN)


def subgroup_columns(scored: pd.DataFrame) -> dict[str, pd.Series]:
    """Attribute -> each image's subgroup label, for the attributes at least one image records."""
    columns: dict[str, pd.Series] = {}
    for attribute in ATTRIBUTES:
        source = "age" if attribute == "age_group" else attribute
        if source not in scored:
            continue
        values = scored[source]
        if values.isna().all():
            continue
        columns[attribute] = age_group(values) if attribute == "age_group" else values.astype(object).where(
            values.notna(), UNKNOWN).astype(str)
    return columns


def _class_reasons(positive_patients: int, negative_patients: int) -> dict[str, str]:
    """Per class too small to read a metric from, why: ``no COVID- images``, ``too small: 2 COVID+ patients (fewer
    than 5)``."""
    reasons = {}
    for name, count in (("COVID+", positive_patients), ("COVID-", negative_patients)):
        if count == 0:
            reasons[name] = f"no {name} images"
        elif count < MIN_PATIENTS:
            reasons[name] = f"too small: {count} {name} patient{'s' if count > 1 else ''} (fewer than {MIN_PATIENTS})"
    return reasons


def _row(part: pd.DataFrame, threshold: float, resamples: int, confidence: float, seed: int) -> dict[str, object]:
    """One subgroup's counts and metrics (n/a where too small, the note saying which and why)."""
    patients = (part["source"].astype(str) + "::" + part["patient_id"].astype(str)).to_numpy()
    result = evaluate_scores(part["label"].to_numpy(), part["probability"].to_numpy(), patients,
                             threshold=threshold, resamples=resamples, confidence=confidence, seed=seed)
    row: dict[str, object] = {"images": result.images, "patients": result.patients,
                              "positive_patients": result.positive_patients,
                              "negative_patients": result.negative_patients}
    reasons = _class_reasons(result.positive_patients, result.negative_patients)
    missing = []
    for metric in METRICS:
        value = result.metrics[metric]
        low, high = (value.low, value.high) if metric == "roc_auc" else (value.wilson_low, value.wilson_high)
        if any(name in reasons for name in NEEDS[metric]):
            missing.append("AUC" if metric == "roc_auc" else metric)
            row.update({metric: math.nan, f"{metric}_low": math.nan, f"{metric}_high": math.nan})
        else:
            row.update({metric: value.value, f"{metric}_low": low, f"{metric}_high": high})
    row["note"] = f"{', '.join(missing)} n/a: {'; '.join(reasons.values())}" if missing else None
    return row


def subgroup_metrics(scored: pd.DataFrame, *, threshold: float, resamples: int = 2000, confidence: float = 0.95,
                     seed: int = 0) -> pd.DataFrame:
    """Per attribute and subgroup of ``scored`` (one model on one test set: ``label``, ``probability``, ``source``,
    ``patient_id`` and any of ``sex``, ``age``, ``view``, ``location``): ``attribute``, ``subgroup``, the counts,
    sensitivity and specificity (Wilson on the patient-effective sample size), AUC (patient bootstrap), each
    with ``_low``/``_high``, and ``note`` (why a metric is n/a). Empty when no attribute is recorded."""
    needed = [c for c in ("label", "probability", "source", "patient_id") if c not in scored]
    if needed:
        raise SubgroupError(f"subgroups: the scored images lack column(s) {', '.join(needed)}")
    rows = []
    for attribute, groups in subgroup_columns(scored).items():
        order = [label for label, _, _ in AGE_GROUPS] if attribute == "age_group" else sorted(set(groups) - {UNKNOWN})
        for subgroup in [*(g for g in order if (groups == g).any()), *([UNKNOWN] if (groups == UNKNOWN).any() else [])]:
            part = scored[(groups == subgroup).to_numpy()]
            rows.append({"attribute": ATTRIBUTES[attribute], "subgroup": subgroup,
                         **_row(part, threshold, resamples, confidence, seed)})
    return pd.DataFrame(rows)


def prediction_subgroups(predictions: pd.DataFrame, *, resamples: int = 2000, seed: int = 0) -> pd.DataFrame:
    """:func:`subgroup_metrics` of every (model, test set) of ``predictions`` (``predictions.csv`` of ``unveil
    evaluate``, each model at its own threshold), with ``model`` and ``test_set`` first; empty when the
    predictions carry no subgroup column."""
    if not set(RECORD_COLUMNS) & set(predictions.columns) or predictions.empty:
        return pd.DataFrame()
    parts = []
    for (model, test_set), group in predictions.groupby(["model", "test_set"], sort=False):
        table = subgroup_metrics(group, threshold=float(group["threshold"].iloc[0]), resamples=resamples, seed=seed)
        if not table.empty:
            parts.append(table.assign(model=model, test_set=test_set))
    if not parts:
        return pd.DataFrame()
    table = pd.concat(parts, ignore_index=True)
    return table[["model", "test_set", *[c for c in table.columns if c not in ("model", "test_set")]]]


def subgroup_display(table: pd.DataFrame) -> pd.DataFrame:
    """The subgroup table as the report and Markdown show it: ``0.80 [0.55, 0.93]`` cells, ``n/a`` where too small."""
    def cell(row: pd.Series, metric: str) -> str:
        value = row[metric]
        if value is None or (isinstance(value, float) and np.isnan(value)):
            return "n/a"
        return f"{value:.2f} [{row[f'{metric}_low']:.2f}, {row[f'{metric}_high']:.2f}]"
    shown = pd.DataFrame({"Model": table["model"], "Test set": table["test_set"], "Attribute": table["attribute"],
                          "Subgroup": table["subgroup"], "Patients": table["patients"],
                          "COVID+ / COVID- patients": table["positive_patients"].astype(str) + " / "
                          + table["negative_patients"].astype(str)})
    for metric, label in (("sensitivity", "Sensitivity"), ("specificity", "Specificity"), ("roc_auc", "AUC")):
        shown[label] = [cell(row, metric) for _, row in table.iterrows()]
    shown["Why n/a"] = table["note"].fillna("")
    return shown


def with_record_columns(scored: pd.DataFrame, records: pd.DataFrame) -> pd.DataFrame:
    """``scored`` (one row per image, ``record_id``) with the records' subgroup columns (:data:`RECORD_COLUMNS`,
    those the records have), so that predictions can be split into subgroups later."""
    columns = [c for c in RECORD_COLUMNS if c in records.columns and c not in scored.columns]
    if not columns:
        return scored
    lookup = records.drop_duplicates("record_id").set_index("record_id")[columns]
    return scored.join(lookup, on="record_id")
