"""The mitigated arm side by side: did training against the shortcut (``--debias``) improve what the audit
measured? Per mitigated cell and its unmitigated twin (same architecture, encoder and composition): the source
probe, the transfer drop and the external AUC, each with its interval, and the paired AUC difference on every
test set (DeLong) from the results store; then the same aggregated over the seeds of an experiment.

A verdict is read from the intervals, never from the point estimates: ``improved`` / ``worse`` when the two
models' intervals do not overlap (for the paired AUC difference: when its interval excludes 0) in the better /
worse direction, else ``not shown``. Over seeds: the mean of the per-seed differences and its Student-t 95 %
interval, ``improved`` / ``worse`` when that interval excludes 0, else ``not shown``. A mitigation that does
not help is reported as not helping.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from unveil.evaluation.names import relabel
from unveil.evaluation.store import ResultsStore


@dataclass(frozen=True)
class Measure:
    """One row family of the panel: the audit test it reads, its label and which direction is better."""

    test: str
    label: str
    lower_is_better: bool
    what: str


#: what the panel compares (the audit's verdict tests, docs/audit.md)
MEASURES = (
    Measure("source probe", "source probe (BA)", True,
            "how well a linear probe on the encoder features tells the sources apart within a class (0.5: it cannot)"),
    Measure("transfer (AUC)", "transfer drop (AUC)", True, "in-source AUC minus the AUC on an external set"),
    Measure("below chance", "external AUC", False, "the model's AUC on an external set"),
)
PAIRED = "paired AUC difference (DeLong)"
CAPTION = ("Each cell of the mitigated arm beside its unmitigated twin (same architecture, encoder and training set): "
           "the source probe (balanced accuracy of a linear probe telling sources apart within a class; lower is "
           "better, 0.5 = cannot), the transfer drop (in-source minus external AUC; lower is better) and the external "
           "AUC (higher is better), each with its audit interval, and the paired AUC difference on each test set "
           "(mitigated minus unmitigated, DeLong). Verdict from the intervals: improved / worse when they do not "
           "overlap (the paired difference: when its interval excludes 0), else not shown.")
COLUMNS = ("cell", "twin", "debias", "measure", "subject", "twin_value", "twin_low", "twin_high", "value", "low",
           "high", "difference", "difference_low", "difference_high", "verdict", "note")


def _verdict(better: bool | None, worse: bool | None) -> str:
    return "improved" if better else "worse" if worse else "not shown"


def _unpaired(measure: Measure, twin: pd.Series, mine: pd.Series) -> tuple[str, str]:
    """Verdict and note of one measure from two intervals (non-overlap in a direction)."""
    bounds = [twin["low"], twin["high"], mine["low"], mine["high"]]
    if any(b is None or (isinstance(b, float) and math.isnan(b)) for b in bounds):
        return "not shown", "an interval is missing (too few images)"
    t_low, t_high, m_low, m_high = (float(b) for b in bounds)
    if measure.lower_is_better:
        return _verdict(m_high < t_low, m_low > t_high), "intervals compared"
    return _verdict(m_low > t_high, m_high < t_low), "intervals compared"


def _pairs(cells: pd.DataFrame) -> list[tuple[pd.Series, pd.Series]]:
    """(mitigated cell, its unmitigated twin) for every cell trained with a debias method."""
    if "debias" not in cells:
        return []
    methods = cells["debias"].fillna("none")
    grid = cells[methods == "none"]
    pairs = []
    for _, cell in cells[methods != "none"].iterrows():
        twin = grid[(grid["architecture"] == cell["architecture"]) & (grid["encoder"] == cell["encoder"])
                    & (grid["training_set"] == cell["training_set"])]
        if len(twin):
            pairs.append((cell, twin.iloc[0]))
    return pairs


def mitigation_rows(store: ResultsStore) -> pd.DataFrame:
    """The side-by-side rows of one run (one seed): every measure of every mitigated cell against its twin."""
    cells, audits, comparisons = store.table("cells"), store.table("audits"), store.table("comparisons")
    # an external set is named SOURCE:PATH by the audit: by its role here, the same in every seed's run
    roles = {f"{r.source}:{r.path}": str(r.role) for r in store.table("datasets").itertuples()}
    audits = audits.assign(subject=[relabel(str(s), roles) for s in audits["subject"]])
    rows = []
    for cell, twin in _pairs(cells):
        base = {"cell": cell["cell_id"], "twin": twin["cell_id"], "debias": cell["debias"]}
        for measure in MEASURES:
            mine = audits[(audits["cell_id"] == cell["cell_id"]) & (audits["test"] == measure.test)]
            theirs = audits[(audits["cell_id"] == twin["cell_id"]) & (audits["test"] == measure.test)]
            for _, row in mine.iterrows():
                match = theirs[theirs["subject"] == row["subject"]]
                if match.empty:
                    continue
                other = match.iloc[0]
                if pd.isna(other["value"]) and pd.isna(row["value"]):
                    continue  # not applicable to either model (too few images): nothing to compare
                verdict, note = _unpaired(measure, other, row)
                rows.append({**base, "measure": measure.label, "subject": row["subject"],
                             "twin_value": other["value"], "twin_low": other["low"], "twin_high": other["high"],
                             "value": row["value"], "low": row["low"], "high": row["high"],
                             "difference": row["value"] - other["value"], "difference_low": math.nan,
                             "difference_high": math.nan, "verdict": verdict, "note": note})
        paired = comparisons[(comparisons["model_a"] == twin["cell_id"]) & (comparisons["model_b"] == cell["cell_id"])]
        for _, row in paired.iterrows():
            low, high = row["auc_difference_low"], row["auc_difference_high"]
            known = not (pd.isna(low) or pd.isna(high))
            rows.append({**base, "measure": PAIRED, "subject": row["test_set"], "twin_value": row["auc_a"],
                         "twin_low": math.nan, "twin_high": math.nan, "value": row["auc_b"], "low": math.nan,
                         "high": math.nan, "difference": row["auc_difference"], "difference_low": low,
                         "difference_high": high,
                         "verdict": _verdict(known and low > 0, known and high < 0) if known else "not shown",
                         "note": f"DeLong p={row['delong_p']:.2g}, {int(row['patients'])} patients"
                         if known else str(row["note"] or "not compared")})
    return pd.DataFrame(rows, columns=list(COLUMNS))


def over_seeds(by_seed: dict[int, pd.DataFrame]) -> pd.DataFrame:
    """Per (cell, measure, subject): the mean over seeds of the mitigated value, of the twin's and of their
    difference, the difference's Student-t 95 % interval, and the verdict (``improved`` / ``worse`` when the
    interval excludes 0 in that direction; a measure seen in one seed only is ``not shown``)."""
    from scipy.stats import t as student_t

    frames = [frame.assign(seed=seed) for seed, frame in by_seed.items() if not frame.empty]
    if not frames:
        return pd.DataFrame(columns=["cell", "twin", "debias", "measure", "subject", "seeds", "twin_mean", "mean",
                                     "difference", "difference_low", "difference_high", "verdict"])
    rows = []
    lower = {m.label: m.lower_is_better for m in MEASURES} | {PAIRED: False}
    for (cell, twin, debias, measure, subject), group in pd.concat(frames).groupby(
            ["cell", "twin", "debias", "measure", "subject"], sort=False):
        differences = group["difference"].to_numpy(dtype=np.float64)
        differences = differences[np.isfinite(differences)]
        n, mean = len(differences), float(np.mean(differences)) if len(differences) else math.nan
        half = float(student_t.ppf(0.975, n - 1) * np.std(differences, ddof=1) / math.sqrt(n)) if n > 1 else math.nan
        low, high = mean - half, mean + half
        if n < 2 or math.isnan(half):
            verdict = "not shown"
        elif lower[measure]:
            verdict = _verdict(high < 0, low > 0)
        else:
            verdict = _verdict(low > 0, high < 0)
        rows.append({"cell": cell, "twin": twin, "debias": debias, "measure": measure, "subject": subject,
                     "seeds": ", ".join(str(s) for s in group["seed"]), "twin_mean": float(group["twin_value"].mean()),
                     "mean": float(group["value"].mean()), "difference": mean, "difference_low": low,
                     "difference_high": high, "verdict": verdict})
    return pd.DataFrame(rows)


def _number(value: float, digits: int = 2) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _interval(value: float, low: float, high: float) -> str:
    if any(v is None or (isinstance(v, float) and math.isnan(v)) for v in (low, high)):
        return _number(value)
    return f"{_number(value)} [{_number(low)}, {_number(high)}]"


def run_table(rows: pd.DataFrame) -> pd.DataFrame:
    """One seed's panel for reading: twin and mitigated values with their intervals, the verdict."""
    return pd.DataFrame({
        "Mitigated cell": rows["cell"], "Measure": rows["measure"], "On": rows["subject"],
        "Unmitigated": [_interval(r.twin_value, r.twin_low, r.twin_high) for r in rows.itertuples()],
        "Mitigated": [_interval(r.value, r.low, r.high) for r in rows.itertuples()],
        "Difference": [_interval(r.difference, r.difference_low, r.difference_high) for r in rows.itertuples()],
        "Verdict": rows["verdict"]})


def seeds_table(rows: pd.DataFrame) -> pd.DataFrame:
    """The panel aggregated over seeds, for reading."""
    return pd.DataFrame({
        "Mitigated cell": rows["cell"], "Measure": rows["measure"], "On": rows["subject"], "Seeds": rows["seeds"],
        "Unmitigated (mean)": [_number(v) for v in rows["twin_mean"]],
        "Mitigated (mean)": [_number(v) for v in rows["mean"]],
        "Difference (mean, t 95 %)": [_interval(r.difference, r.difference_low, r.difference_high)
                                      for r in rows.itertuples()],
        "Verdict": rows["verdict"]})


def headline(rows: pd.DataFrame) -> str:
    """One sentence: which mitigations improved a measure, and that the others were not shown to help."""
    if rows.empty:
        return "No mitigated arm was compared."
    improved = rows[rows["verdict"] == "improved"]
    worse = rows[rows["verdict"] == "worse"]
    parts = []
    for name, group in ((("improved"), improved), (("worse"), worse)):
        if not group.empty:
            items = sorted({f"{r.measure} of {r.cell} on {r.subject}" for r in group.itertuples()})
            parts.append(f"{name}: " + "; ".join(items))
    if not parts:
        return ("No mitigation was shown to help: every compared measure's interval includes no change "
                f"({len(rows)} comparisons).")
    return f"Of {len(rows)} comparisons, " + " — ".join(parts) + "; the others: not shown."
