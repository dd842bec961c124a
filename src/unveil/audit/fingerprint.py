"""Acquisition fingerprint: how well is the label predicted from the image files alone?

Most pooled sets carry no source column, yet their files often name the source: COVID-ChestXRay's positives are
PNGs and JPEGs of 200-4000 px, Kermany's pediatric negatives 224 x 224 RGB JPEGs written at quality 75. A model
can read that instead of the lungs (after resizing, through the interpolation, the JPEG blocks, the grey levels).
Each image's :class:`~unveil.io.FileProperties` (header only, no patient field) feed a cross-validated random
forest (patients kept within a fold, class-balanced), alone per property and all together; the out-of-fold
probabilities get the patient bootstrap of every probe (:func:`unveil.audit.probes.cross_validated_probe`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from sklearn.ensemble import RandomForestClassifier

from unveil.audit.metadata import one_hot
from unveil.audit.probes import ProbeResult, cross_validated_probe
from unveil.audit.protocol import InsufficientData
from unveil.audit.verdict import NOT_APPLICABLE, Verdict
from unveil.io import ImageReadError, read_file_properties

#: numeric properties (a missing value, e.g. the JPEG quality of a PNG, becomes :data:`MISSING`: its own level)
NUMERIC = ("width", "height", "aspect_ratio", "bit_depth", "file_size_kb", "jpeg_quality", "pixel_spacing_mm")
#: categorical properties (one-hot; a missing value is the level ``unknown``)
CATEGORICAL = ("format", "colour_mode", "manufacturer", "modality")
#: every property, in the order they are reported
PROPERTIES = ("width", "height", "aspect_ratio", "bit_depth", "colour_mode", "format", "file_size_kb",
              "jpeg_quality", "manufacturer", "modality", "pixel_spacing_mm")
#: how a reviewer names each property
NAMES = {"width": "image width", "height": "image height", "aspect_ratio": "aspect ratio", "bit_depth": "bit depth",
         "colour_mode": "colour mode", "format": "file format", "file_size_kb": "file size",
         "jpeg_quality": "JPEG quality", "manufacturer": "DICOM Manufacturer", "modality": "DICOM Modality",
         "pixel_spacing_mm": "pixel spacing"}
MISSING = -1.0
#: a property alone reaching this AUC, its interval's lower bound above 0.5, "carries" the label: it gets its own
#: (informative) row in the table
CARRIES = 0.70
MEASURE = "ROC AUC (random forest on file properties, out of fold)"


def property_table(records: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """One row per record (same index), one column per :data:`PROPERTIES`; and the read errors (a file whose
    header cannot be read keeps missing values)."""
    rows: list[dict[str, Any]] = []
    errors: list[str] = []
    for path in records["path"]:
        try:
            found = read_file_properties(path)
        except ImageReadError as error:
            errors.append(str(error))
            rows.append({})
            continue
        rows.append({"width": found.width, "height": found.height,
                     "aspect_ratio": round(found.width / found.height, 3) if found.height else None,
                     "bit_depth": found.bit_depth, "colour_mode": found.colour_mode, "format": found.format,
                     "file_size_kb": found.file_size / 1024, "jpeg_quality": found.jpeg_quality,
                     "manufacturer": found.manufacturer, "modality": found.modality,
                     "pixel_spacing_mm": found.pixel_spacing})
    table = pd.DataFrame(rows, index=records.index, columns=list(PROPERTIES))
    for column in NUMERIC:
        table[column] = pd.to_numeric(table[column], errors="coerce").astype(float)
    for column in CATEGORICAL:
        table[column] = table[column].astype("string")
    return table, errors


def property_matrix(table: pd.DataFrame, properties: list[str] | tuple[str, ...]) -> np.ndarray:
    """The classifier's input: numeric properties as they are (missing: :data:`MISSING`), categorical ones
    one-hot (:func:`unveil.audit.metadata.one_hot`)."""
    numeric = [p for p in properties if p in NUMERIC]
    categorical = [p for p in properties if p in CATEGORICAL]
    parts = [table[numeric].fillna(MISSING).to_numpy(dtype=float)] if numeric else []
    if categorical:
        parts.append(one_hot(table, categorical))
    return np.hstack(parts) if parts else np.zeros((len(table), 1))


def varying_properties(table: pd.DataFrame) -> list[str]:
    """The properties with at least two values among these files (missing counts as a value)."""
    return [p for p in PROPERTIES if table[p].astype("string").fillna("unknown").nunique() >= 2]


def forest_probe(inputs: np.ndarray, target: np.ndarray, groups: np.ndarray, *, name: str, negative: str,
                 positive: str, seed: int, resamples: int) -> ProbeResult:
    """A small class-balanced random forest, cross-validated by patient: it finds thresholds (a width of 224)
    and interactions a linear probe misses."""
    def make_model() -> RandomForestClassifier:
        return RandomForestClassifier(n_estimators=50, max_depth=4, class_weight="balanced", random_state=seed,
                                      n_jobs=1)

    return cross_validated_probe(inputs, target, groups, make_model, name=name, negative=negative,
                                 positive=positive, seed=seed, resamples=resamples)


def _metric(probe: ProbeResult, key: str = "roc_auc") -> dict[str, float]:
    metric = probe.evaluation.metrics[key]
    return {"value": metric.value, "low": metric.low, "high": metric.high}


def fingerprint_probes(table: pd.DataFrame, labels: np.ndarray, groups: np.ndarray, *, seed: int,
                       resamples: int) -> tuple[ProbeResult, dict[str, ProbeResult]]:
    """The label from all varying properties together, and from each alone (sorted by AUC, highest first).
    Raises :class:`InsufficientData` when a class has images of fewer than 2 patients."""
    varying = varying_properties(table)
    combined = forest_probe(property_matrix(table, varying or list(PROPERTIES)), labels, groups,
                            name="fingerprint", negative="COVID-", positive="COVID+", seed=seed, resamples=resamples)
    alone = {p: forest_probe(property_matrix(table, [p]), labels, groups, name=f"fingerprint {p}",
                             negative="COVID-", positive="COVID+", seed=seed, resamples=resamples) for p in varying}
    ranked = sorted(alone, key=lambda p: -np.nan_to_num(alone[p].evaluation.metrics["roc_auc"].value, nan=0.0))
    return combined, {p: alone[p] for p in ranked}


def carries(probe: ProbeResult) -> bool:
    """Whether one property alone carries the label: AUC >= :data:`CARRIES`, the lower bound above chance (with a
    dozen properties tried, one reaching 0.70 by chance on a small set is common)."""
    metric = probe.evaluation.metrics["roc_auc"]
    return bool(metric.value >= CARRIES and metric.low > 0.5)


def carriers_text(alone: dict[str, ProbeResult], limit: int = 3) -> str:
    """"image width alone AUC 0.98; file format alone AUC 0.90": the (first ``limit``) properties that carry the
    label."""
    carrying = [p for p, probe in alone.items() if carries(probe)][:limit]
    return "; ".join(f"{NAMES[p]} alone AUC {alone[p].evaluation.metrics['roc_auc'].value:.2f}" for p in carrying)


def _plain(value: object) -> str | float | None:
    """A table cell as JSON-ready data (missing: None)."""
    return None if pd.isna(value) else value if isinstance(value, str) else float(value)  # type: ignore[arg-type]


def fingerprint_rule_text(rule: float | None) -> str:
    return ("informative (no flag unless fingerprint_auc is set)" if rule is None else
            f"AUC >= {rule:g} with its lower bound > 0.5 flags")


def fingerprint_verdicts(table: pd.DataFrame, labels: np.ndarray, groups: np.ndarray, *, rule: float | None,
                         scope: str, seed: int, resamples: int) -> tuple[list[Verdict], dict]:
    """The acquisition-fingerprint verdict of these images (``scope`` names them, e.g. "own test split"): the label
    from all file properties (flags at ``rule``, a data flag), then, when those beat chance (lower bound > 0.5), one
    informative row per property that alone carries the label (:func:`carries`). Too few patients: one "not
    applicable" verdict saying so."""
    subject = f"label from file properties ({scope})"
    varying = varying_properties(table)
    figures: dict = {"scope": scope, "images": int(len(table)), "varying": varying,
                     "constant": {p: _plain(table[p].iloc[0]) for p in PROPERTIES if p not in varying and len(table)}}
    try:
        combined, alone = fingerprint_probes(table, labels, groups, seed=seed, resamples=resamples)
    except InsufficientData as error:
        figures["not_applicable"] = str(error)
        return [Verdict("acquisition fingerprint", subject, math.nan, math.nan, math.nan,
                        f"{NOT_APPLICABLE}: too few patients", None,
                        f"not applicable: too few patients to cross-validate ({error})", measure=MEASURE)], figures
    auc = combined.evaluation.metrics["roc_auc"]
    accuracy = combined.evaluation.metrics["balanced_accuracy"].value
    figures.update(combined={**_metric(combined), "balanced_accuracy": _metric(combined, "balanced_accuracy")},
                   properties=[{"property": p, **_metric(probe)} for p, probe in alone.items()])
    signal = bool(auc.low > 0.5)  # the properties together beat chance: only then is any one of them named
    flagged = None if rule is None else bool(auc.value >= rule and signal)
    named = {p: probe for p, probe in alone.items() if signal and carries(probe)}
    carriers = carriers_text(named)
    found = f"AUC {auc.value:.2f}, balanced accuracy {accuracy:.2f}" + (f"; {carriers}" if carriers else "")
    suggests = (f"the label is predictable from the image files alone ({found}): a model can read the acquisition "
                "(merged sources) instead of the lungs, whatever it was trained on" if flagged else
                f"the file properties carry {'part' if signal else 'no more than chance'} of the label ({found})")
    verdicts = [Verdict("acquisition fingerprint", subject, auc.value, auc.low, auc.high, fingerprint_rule_text(rule),
                        flagged, suggests, measure=MEASURE)]
    for p, probe in named.items():
        metric = probe.evaluation.metrics["roc_auc"]
        verdicts.append(Verdict(
            "acquisition fingerprint", f"label from {NAMES[p]} alone ({scope})", metric.value, metric.low,
            metric.high, "informative (the combined row flags)", None,
            f"the label is predictable from {NAMES[p]} alone (AUC {metric.value:.2f})", measure=MEASURE))
    return verdicts, figures
