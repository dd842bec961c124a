"""The report's clinician sections, from the results store: calibration (ECE, Brier and reliability diagrams),
confusion matrices at each model's threshold, subgroup metrics and the paired comparisons of pre-trained cells
with their from-scratch twins ("pre-training helps", with an interval). Kept apart from `reports.html`, which
lays out the paper's tables; both hand the template already formatted values."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandas as pd
from markupsafe import Markup

from unveil.evaluation.calibration import BINS
from unveil.evaluation.clinical import (
    CALIBRATION_CAPTION,
    COMPARISON_CAPTION,
    SUBGROUP_CAPTION,
    calibration_display,
    comparison_display,
)
from unveil.evaluation.paired import comparison_line
from unveil.evaluation.store import ResultsStore
from unveil.evaluation.subgroups import subgroup_display
from unveil.reports.mitigation import CAPTION as MITIGATION_CAPTION
from unveil.reports.mitigation import headline, mitigation_rows, run_table


def _table(table: pd.DataFrame, kind: str) -> Markup:
    return Markup(table.to_html(index=False, escape=True, na_rep="—", border=0, classes=["data", kind]))


def _figures(files: pd.DataFrame, kind: str, cells: pd.DataFrame, labels: dict[str, str], cell_labels: dict[str, str],
             pictures: Callable[..., list[Any]]) -> list[dict[str, Any]]:
    """Per cell, its pictures of ``kind`` (one per test set, captioned ``cell on Test X``)."""
    found = []
    for cell_id in cells["cell_id"]:
        chosen = files[(files["kind"] == kind) & (files["cell_id"] == cell_id)]
        shown = []
        for test in sorted(chosen["label"].astype(str)):
            caption = f"{cell_labels.get(cell_id, cell_id)} on Test {labels.get(test, test)}"
            shown += pictures(chosen[chosen["label"].astype(str) == test], kind, cell_id, caption)
        if shown:
            found.append({"label": cell_labels.get(cell_id, cell_id), "pictures": shown})
    return found


def clinical_context(store: ResultsStore, wide: pd.DataFrame, cells: pd.DataFrame, files: pd.DataFrame,
                     labels: dict[str, str], cell_labels: dict[str, str],
                     pictures: Callable[..., list[Any]]) -> dict[str, Any]:
    """What the template's calibration, confusion, subgroup and comparison sections show. ``labels``: test set ->
    its short label; ``cell_labels``: cell id -> ``Conv8 / B / AB``; ``pictures(files, kind, cell_id, caption)``:
    the embedded pictures of some ``files`` rows."""
    calibrated = pd.DataFrame()
    if not wide.empty and "ece" in wide:
        shown = wide.assign(model=wide["model"].map(lambda m: cell_labels.get(m, m)), ece_bins=BINS)
        calibrated = calibration_display(shown)
    subgroups = store.table("subgroups")
    comparisons = store.table("comparisons")
    lines = []
    if not comparisons.empty:
        comparisons = comparisons.assign(test_set_label=comparisons["test_set"].map(lambda t: labels.get(t, t)))
        lines = [comparison_line(row, row["claim"] or None) for _, row in comparisons.iterrows()]
        comparisons = comparisons.assign(**{c: comparisons[c].map(lambda m: cell_labels.get(m, m))
                                            for c in ("model_a", "model_b")}, test_set=comparisons["test_set_label"])
    if not subgroups.empty:
        subgroups = subgroups.assign(model=subgroups["cell_id"].map(lambda m: cell_labels.get(m, m)),
                                     test_set=subgroups["test_set"].map(lambda t: labels.get(t, t)))
    arm = mitigation_rows(store)
    mitigation = None if arm.empty else {
        "caption": MITIGATION_CAPTION, "headline": headline(arm),
        "html": _table(run_table(arm.assign(cell=arm["cell"].map(lambda m: cell_labels.get(m, m)))), "mitigation")}
    return {
        "mitigation": mitigation,
        "calibration": {"caption": CALIBRATION_CAPTION, "html": _table(calibrated, "calibration")
                        if not calibrated.empty else None,
                        "figures": _figures(files, "reliability", cells, labels, cell_labels, pictures)},
        "confusion": _figures(files, "confusion", cells, labels, cell_labels, pictures),
        "subgroups": {"caption": SUBGROUP_CAPTION, "html": _table(subgroup_display(subgroups), "subgroups")
                      if not subgroups.empty else None},
        "comparisons": {"caption": COMPARISON_CAPTION, "lines": lines, "html": _table(
            comparison_display(comparisons), "comparisons") if not comparisons.empty else None},
    }
