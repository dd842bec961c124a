"""The clinician's tables of an evaluation, beside Table 2: calibration, subgroups and paired comparisons.

``unveil evaluate --out`` writes, from its results rows and predictions:

- ``calibration.md``: ECE and Brier score per model x test set with their patient-bootstrap intervals (the
  numbers themselves are the ``ece*``/``brier*`` columns of ``results.csv``);
- ``subgroups.csv`` / ``subgroups.md``: :mod:`unveil.evaluation.subgroups` per model x test set;
- ``comparisons.csv`` / ``comparisons.md``: with several models, each later model against each earlier one on
  the test sets they share (:mod:`unveil.evaluation.paired`).

Every file is written atomically; a table with nothing to show is not written.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from unveil.evaluation.calibration import BIN_RULE, BINS
from unveil.evaluation.paired import all_pairs, comparison_line
from unveil.evaluation.subgroups import AGE_GROUPS, RULE, prediction_subgroups, subgroup_display
from unveil.provenance import write_text_atomic

CALIBRATION_CAPTION = (f"Calibration: expected calibration error (ECE, {BINS} {BIN_RULE}) and Brier score, 95 % CI "
                       "from a patient bootstrap (percentile); 0 is perfect for both")
SUBGROUP_CAPTION = ("Subgroups: sensitivity and specificity (95 % CI: Wilson on the patient-effective sample size), "
                    "AUC (95 % CI: patient bootstrap), each model at its own threshold; age groups "
                    + ", ".join(label for label, _, _ in AGE_GROUPS) + f" (years); {RULE}")
COMPARISON_CAPTION = ("Paired comparisons (second model minus first, on the images both scored): AUC difference with "
                      "DeLong's test and a paired patient-bootstrap 95 % CI, balanced-accuracy difference (each model "
                      "at its own threshold) with its paired patient-bootstrap 95 % CI")


def _interval(value: float, low: float, high: float, digits: int = 3, sign: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    bounds = "" if low is None or math.isnan(float(low)) else f" [{low:{sign}.{digits}f}, {high:{sign}.{digits}f}]"
    return f"{value:{sign}.{digits}f}{bounds}"


def calibration_display(rows: pd.DataFrame) -> pd.DataFrame:
    """Model, test set, ECE [95 % CI], Brier [95 % CI], bins, images: as the Markdown table and the report show
    them; empty when the rows carry no calibration columns (results written before them)."""
    if "ece" not in rows:
        return pd.DataFrame()
    rows = rows[rows["ece"].notna()]  # rows merged from a run written before calibration: none
    if rows.empty:
        return pd.DataFrame()
    labels = rows["test_set_label"] if "test_set_label" in rows else rows["test_set"]
    return pd.DataFrame({"Model": rows["model"].astype(str), "Test set": labels.astype(str),
                         "ECE": [_interval(r["ece"], r["ece_low"], r["ece_high"]) for _, r in rows.iterrows()],
                         "Brier": [_interval(r["brier"], r["brier_low"], r["brier_high"]) for _, r in rows.iterrows()],
                         "Bins": rows["ece_bins"].astype(int), "Images": rows["images"].astype(int)})


def comparison_display(comparisons: pd.DataFrame) -> pd.DataFrame:
    """One row per comparison: second vs first model, test set, AUC difference [CI], DeLong p, BA difference [CI]."""
    return pd.DataFrame({
        "Second vs first": comparisons["model_b"].astype(str) + " vs " + comparisons["model_a"].astype(str),
        "Test set": comparisons["test_set"].astype(str),
        "AUC (second, first)": [f"{r['auc_b']:.3f}, {r['auc_a']:.3f}" for _, r in comparisons.iterrows()],
        "AUC difference": [_interval(r["auc_difference"], r["auc_difference_low"], r["auc_difference_high"], 3, "+")
                           for _, r in comparisons.iterrows()],
        "DeLong p": [f"{p:.2g}" for p in comparisons["delong_p"]],
        "BA difference": [_interval(r["balanced_accuracy_difference"], r["balanced_accuracy_difference_low"],
                                    r["balanced_accuracy_difference_high"], 3, "+") for _, r in comparisons.iterrows()],
        "Patients": comparisons["patients"].astype(int)})


def _markdown(table: pd.DataFrame, caption: str, lines: list[str] | None = None) -> str:
    text = f"**{caption}**\n\n" + table.to_markdown(index=False) + "\n"
    return text + ("\n" + "".join(f"- {line}\n" for line in lines) if lines else "")


def write_clinical_tables(rows: pd.DataFrame, predictions: pd.DataFrame, out: str | Path, *, resamples: int = 2000,
                          seed: int = 0) -> dict[str, Path]:
    """Write calibration.md, subgroups.csv/.md and comparisons.csv/.md (those with content) into ``out``; by name,
    the paths written."""
    out = Path(out)
    written: dict[str, Path] = {}
    calibrated = calibration_display(rows)
    if not calibrated.empty:
        written["calibration.md"] = write_text_atomic(out / "calibration.md", _markdown(calibrated,
                                                                                       CALIBRATION_CAPTION))
    subgroups = prediction_subgroups(predictions, resamples=resamples, seed=seed)
    if not subgroups.empty:
        written["subgroups.csv"] = write_text_atomic(out / "subgroups.csv", subgroups.to_csv(index=False,
                                                                                            lineterminator="\n"))
        written["subgroups.md"] = write_text_atomic(out / "subgroups.md", _markdown(subgroup_display(subgroups),
                                                                                   SUBGROUP_CAPTION))
    comparisons = all_pairs(predictions, resamples=resamples, seed=seed)
    if not comparisons.empty:
        written["comparisons.csv"] = write_text_atomic(out / "comparisons.csv", comparisons.to_csv(
            index=False, lineterminator="\n"))
        lines = [comparison_line(row) for _, row in comparisons.iterrows()]
        written["comparisons.md"] = write_text_atomic(out / "comparisons.md", _markdown(
            comparison_display(comparisons), COMPARISON_CAPTION, lines))
    return written
