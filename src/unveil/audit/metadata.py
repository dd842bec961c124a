"""Metadata shortcuts: what the features encode besides the disease, and what metadata alone predicts.

DeGrave, Janizek and Lee (2021, *Nature Machine Intelligence* 3: 610-619, "AI for radiographic COVID-19
detection selects shortcuts over signal") showed COVID-19 classifiers trained on pooled public sets
reading the projection (AP/PA, supine), patient age (pediatric negatives), sex, the hospital and its
markers instead of the lungs. Two measurements per factor, where the records carry it:

* a **feature probe**: within one class, a cross-validated linear probe (patients kept within a fold)
  predicting the factor from the encoder features (e.g. AP vs PA among COVID+ images);
* a **metadata-only baseline**: a cross-validated logistic regression predicting the label from the
  one-hot metadata alone (a missing value is its own level, since which sets lack a field is itself a
  shortcut). Its AUC is the ceiling a model could reach without looking at the lungs.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from unveil.audit.probes import linear_probe
from unveil.audit.protocol import InsufficientData
from unveil.audit.verdict import Verdict

#: pediatric below this age (years); the Kermany set (ChestXRay) is of children aged 1-5
ADULT_AGE = 18.0

#: the factors, in the order they are reported; ``manufacturer`` and ``station_name`` come from DICOM headers
#: (``dicom-folder``), ``location`` from a site column or InstitutionName
FIELDS = ("source", "view", "sex", "age_group", "location", "manufacturer", "station_name")

#: factors read as they are from the record column of the same name, where the loader gives one
PLAIN_FIELDS = ("location", "manufacturer", "station_name")

UNKNOWN = "unknown"


def metadata_table(records: pd.DataFrame) -> pd.DataFrame:
    """One column per factor of :data:`FIELDS` (strings; <NA> where the record does not say).

    ``age_group`` is ``pediatric`` (< 18 years) or ``adult`` from ``age``; ``location`` (the hospital or city),
    ``manufacturer`` and ``station_name`` (the DICOM Manufacturer and StationName) are the loader's columns where
    present."""
    table = pd.DataFrame(index=records.index)
    table["source"] = records["source"].astype("string")
    table["view"] = records["view"].astype("string") if "view" in records else pd.NA
    table["sex"] = records["sex"].astype("string") if "sex" in records else pd.NA
    if "age" in records:
        age = pd.to_numeric(records["age"], errors="coerce").astype(float)
        table["age_group"] = pd.Series(np.where(age < ADULT_AGE, "pediatric", "adult"), index=records.index,
                                       dtype="string").where(age.notna())
    else:
        table["age_group"] = pd.NA
    for column in PLAIN_FIELDS:
        table[column] = records[column].astype("string") if column in records else pd.NA
    for column in FIELDS:
        table[column] = table[column].astype("string").str.strip().replace("", pd.NA)
    return table


def probe_target(values: pd.Series, min_images: int) -> tuple[str, str, np.ndarray] | None:
    """A two-sided target for a feature probe on one factor among known values: the two most common levels
    when the factor has two (view PA/AP, sex M/F, age group), else the most common level against the rest
    (location). ``(negative, positive, target)`` with target 1 = positive, 0 = negative, nan = unknown;
    None when either side has fewer than ``min_images`` images."""
    known = values.dropna()
    counts = known.value_counts()
    if len(counts) < 2:
        return None
    top = str(counts.index[0])
    if len(counts) == 2:
        negative, positive = str(counts.index[1]), top
        rest = known != top
    else:
        negative, positive, rest = "other", top, known != top
    if min(int(rest.sum()), int((~rest).sum())) < min_images:
        return None
    target = pd.Series(np.nan, index=values.index)
    target[known.index] = (~rest).astype(float)
    return negative, positive, target.to_numpy()


def one_hot(table: pd.DataFrame, fields: tuple[str, ...] | list[str]) -> np.ndarray:
    """One-hot encoding of ``fields`` (a missing value is the level ``unknown``); a factor with a single
    level gives a constant column (no information), kept so that the shape is predictable."""
    filled = table[list(fields)].astype("string").fillna(UNKNOWN).astype(str)
    return pd.get_dummies(filled, columns=list(fields), dtype=float).to_numpy()


def informative_fields(table: pd.DataFrame) -> list[str]:
    """The factors with at least two levels (missing counts as a level) among these records."""
    return [f for f in FIELDS if table[f].astype("string").fillna(UNKNOWN).nunique() >= 2]


def metadata_verdicts(features: np.ndarray, records: pd.DataFrame, is_positive: np.ndarray, groups: np.ndarray,
                      own: np.ndarray, *, probe_rule: float, only_rule: float | None, min_images: int, seed: int,
                      resamples: int) -> tuple[list, dict]:
    """Feature probes per factor within each class (all audited images), and metadata-only baselines of the
    label on the model's own test split (``own``: a bool per image). Returns verdicts and figures."""
    table = metadata_table(records)
    figures: dict[str, list] = {"probes": [], "only": [], "notes": []}
    verdicts = _feature_probe_verdicts(features, table, is_positive, groups, figures, probe_rule=probe_rule,
                                       min_images=min_images, seed=seed, resamples=resamples)
    own = np.asarray(own, dtype=bool)
    verdicts += _metadata_only_verdicts(table[own], is_positive[own], groups[own], figures, only_rule=only_rule,
                                        seed=seed, resamples=resamples)
    return verdicts, figures


def _feature_probe_verdicts(features: np.ndarray, table: pd.DataFrame, is_positive: np.ndarray, groups: np.ndarray,
                            figures: dict[str, list], *, probe_rule: float, min_images: int, seed: int,
                            resamples: int) -> list:
    """Per metadata factor and class: can a linear probe on the features tell the factor's levels apart?"""
    verdicts = []
    for field_name in FIELDS[1:]:  # the source has its own probes
        for value, within in ((0, "COVID-"), (1, "COVID+")):
            in_class = is_positive == value
            chosen = probe_target(table.loc[in_class, field_name], min_images)
            if chosen is None:
                continue
            negative, positive, target = chosen
            known = ~np.isnan(target)
            index = np.flatnonzero(in_class)[known]
            try:
                probe = linear_probe(features[index], target[known].astype(int), groups[index],
                                     name=f"{field_name} {within}", negative=negative, positive=positive, seed=seed,
                                     resamples=resamples)
            except InsufficientData as error:  # too few patients on a side: noted, no verdict
                figures["notes"].append(str(error))
                continue
            figures["probes"].append({"field": field_name, **probe.figures()})
            metric = probe.evaluation.metrics["balanced_accuracy"]
            flagged = bool(metric.value >= probe_rule)
            counts = ", ".join(f"{k}: {n} images" for k, n in probe.counts.items())
            verdicts.append(Verdict(
                "metadata probe", f"{field_name}: {negative} vs {positive} ({within} images)", metric.value, metric.low,
                metric.high, f"balanced accuracy >= {probe_rule:g} flags", flagged,
                (f"the features encode the {field_name} among {within} images ({counts}): a classifier on them can "
                 f"use it as a shortcut where it differs between classes") if flagged else
                f"no strong {field_name} signature among {within} images ({counts})",
                measure="balanced accuracy (linear probe, out of fold)"))
    return verdicts


def _metadata_only_verdicts(mine: pd.DataFrame, labels: np.ndarray, patients: np.ndarray, figures: dict[str, list],
                            *, only_rule: float | None, seed: int, resamples: int) -> list:
    """How well the label is predicted from the metadata alone (each informative field, then all together),
    on the model's own test split: the shortcut ceiling of these factors."""
    verdicts = []
    fields_here = informative_fields(mine)
    candidates = [(f, [f]) for f in fields_here]
    if len(fields_here) > 1:
        candidates.append(("all", fields_here))
    for name, chosen_fields in candidates:
        try:
            probe = linear_probe(one_hot(mine, chosen_fields), labels, patients, name=f"metadata only {name}",
                                 negative="COVID-", positive="COVID+", seed=seed, resamples=resamples,
                                 regularization=1.0)
        except InsufficientData as error:  # too few patients on a side: noted, no verdict
            figures["notes"].append(str(error))
            continue
        metric = probe.evaluation.metrics["roc_auc"]
        combined = len(chosen_fields) > 1 or len(fields_here) == 1
        flagged = None if only_rule is None or not combined else bool(metric.value >= only_rule)
        figures["only"].append({"fields": list(chosen_fields), "roc_auc": metric.value, "low": metric.low,
                                "high": metric.high})
        rule = ("informative (the combined baseline flags)" if not combined else
                "informative (no flag unless metadata_only_auc is set)" if only_rule is None else
                f"AUC >= {only_rule:g} flags")
        verdicts.append(Verdict(
            "metadata only", f"label from {', '.join(chosen_fields)} (own test split)", metric.value, metric.low,
            metric.high, rule, flagged,
            f"from {', '.join(chosen_fields)} alone (missing = its own level) the label reaches "
            f"AUC {metric.value:.2f}: "
            + ("a shortcut this strong is available without looking at the lungs; compare with the model's AUC"
               if flagged else "the shortcut ceiling of these factors"),
            measure="ROC AUC (logistic regression on one-hot metadata, out of fold)"))
    return verdicts
