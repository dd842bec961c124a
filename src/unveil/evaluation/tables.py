"""Results tables in the paper's layout, as CSV, Markdown and LaTeX; ROC curves per model.

- Table 2 (summary): one row per model (architecture, pre-trained encoder, training set), one
  column per test set, balanced accuracy with its 95 % interval: the cross-dataset matrix.
- Tables A1...An: one per architecture (in the registry's order), rows pre-trained encoder x
  training set x test set, columns the seven metrics with intervals, the Haldane-Anscombe
  corrected DOR (finite when the paper's is infinite), and the counts behind them.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from unveil.evaluation.metrics import METRICS
from unveil.models import MODEL_NAMES
from unveil.provenance import write_text_atomic

LABELS = {"sensitivity": "Sensitivity", "specificity": "Specificity", "f1": "F1", "accuracy": "Accuracy",
          "balanced_accuracy": "BA", "roc_auc": "AUC", "dor": "DOR"}
ARCHITECTURE_NAMES = {"resnet18": "ResNet-18", "resnet50": "ResNet-50", "densenet121": "DenseNet-121",
                      "conv8": "Conv8", "covidnet": "COVID-Net"}
FORMATS = ("csv", "md", "tex")


def format_value(value: float, digits: int = 2, infinity: str = "∞") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if math.isinf(value):
        return infinity if value > 0 else "-" + infinity
    return f"{value:.{digits}f}"


def format_with_interval(row: pd.Series, metric: str, infinity: str = "∞") -> str:
    digits = 2
    point = format_value(row[metric], digits, infinity)
    low, high = row.get(f"{metric}_low"), row.get(f"{metric}_high")
    if pd.isna(row[metric]) or low is None or high is None or (pd.isna(low) and pd.isna(high)):
        return point
    return f"{point} [{format_value(low, digits, infinity)}, {format_value(high, digits, infinity)}]"


def _order(rows: pd.DataFrame) -> pd.DataFrame:
    rank = {name: i for i, name in enumerate(MODEL_NAMES)}
    return rows.assign(_arch=rows["architecture"].map(lambda a: rank.get(a, len(rank)))).sort_values(
        ["_arch", "encoder", "training_set", "test_set"]).drop(columns="_arch")


def summary_table(rows: pd.DataFrame, metric: str = "balanced_accuracy", infinity: str = "∞") -> pd.DataFrame:
    """Table 2: models x test sets, ``metric`` with its interval."""
    rows = _order(rows)
    table = rows.assign(value=[format_with_interval(r, metric, infinity) for _, r in rows.iterrows()],
                        Architecture=rows["architecture"].map(lambda a: ARCHITECTURE_NAMES.get(a, a)))
    pivot = table.pivot_table(index=["Architecture", "encoder", "training_set"], columns="test_set", values="value",
                              aggfunc="first", sort=False)
    pivot.index.names = ["Architecture", "Pre-trained", "Trained on"]
    pivot.columns = [f"Test {c}" for c in pivot.columns]
    return pivot.reset_index()


def architecture_tables(rows: pd.DataFrame, infinity: str = "∞") -> dict[str, pd.DataFrame]:
    """Tables A1..An: per architecture, encoder x training set x test set x the seven metrics."""
    tables = {}
    for architecture, group in _order(rows).groupby("architecture", sort=False):
        table = pd.DataFrame({"Pre-trained": group["encoder"], "Trained on": group["training_set"],
                              "Tested on": group["test_set"]})
        for metric in METRICS:
            table[LABELS[metric]] = [format_with_interval(r, metric, infinity) for _, r in group.iterrows()]
        if "dor_corrected" in group:  # finite even when a confusion cell is zero
            table["DOR (HA)"] = [format_with_interval(r, "dor_corrected", infinity) for _, r in group.iterrows()]
        table["Patients"] = group["patients"].to_numpy()
        table["Images"] = group["images"].to_numpy()
        tables[str(architecture)] = table.reset_index(drop=True)
    return tables


def _latex(table: pd.DataFrame, caption: str, label: str) -> str:
    escaped = table.copy()
    escaped.columns = [str(c).replace("_", r"\_") for c in escaped.columns]
    for column in escaped.columns:
        escaped[column] = escaped[column].map(lambda v: str(v).replace("_", r"\_").replace("∞", r"$\infty$"))
    return escaped.style.hide(axis="index").to_latex(caption=caption, label=label, hrules=True,
                                                     column_format="l" * len(escaped.columns))


def write_tables(rows: pd.DataFrame, out: str | Path, formats: tuple[str, ...] = FORMATS) -> list[Path]:
    """Write Table 2 and Tables A1..An; CSV keeps raw numbers (every column of ``rows``)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    named = {"table2": ("Table 2: balanced accuracy of every model on every test set (95 % CI, patient bootstrap)",
                        summary_table(rows))}
    for index, (architecture, table) in enumerate(architecture_tables(rows).items(), 1):
        title = ARCHITECTURE_NAMES.get(architecture, architecture)
        named[f"tableA{index}_{architecture}"] = (f"Table A{index}: {title}, pre-trained encoder x training set x "
                                                  "test set (95 % CI)", table)
    for stem, (caption, table) in named.items():
        if "md" in formats:
            text = f"**{caption}**\n\n" + table.to_markdown(index=False) + "\n"
            written.append(write_text_atomic(out / f"{stem}.md", text))
        if "tex" in formats:
            written.append(write_text_atomic(out / f"{stem}.tex", _latex(table, caption, f"tab:{stem}")))
    if "csv" in formats:
        written.append(write_text_atomic(out / "results.csv", rows.to_csv(index=False, lineterminator="\n")))
    return written


def plot_roc_curves(predictions: pd.DataFrame, out: str | Path,
                    formats: tuple[str, ...] = ("png", "svg")) -> list[Path]:
    """One figure per model: its ROC curve on every test set, AUC in the legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_auc_score, roc_curve

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for model, group in predictions.groupby("model", sort=True):
        figure, axis = plt.subplots(figsize=(4.6, 4.4), dpi=120)
        for test_set, part in group.groupby("test_set", sort=True):
            if part["label"].nunique() < 2:
                continue
            fpr, tpr, _ = roc_curve(part["label"], part["score"])
            auc = roc_auc_score(part["label"], part["score"])
            axis.plot(fpr, tpr, label=f"{test_set} (AUC {auc:.2f}, n={len(part)})")
            threshold = float(part["threshold"].iloc[0])
            predicted = part["score"] >= threshold
            sensitivity = float(predicted[part["label"] == 1].mean())
            specificity = float((~predicted)[part["label"] == 0].mean())
            axis.plot([1 - specificity], [sensitivity], "o", color=axis.lines[-1].get_color(), markersize=4)
        axis.plot([0, 1], [0, 1], ":", color="grey", linewidth=0.8)
        axis.set(xlabel="1 - specificity", ylabel="sensitivity", title=f"ROC: {model}", xlim=(0, 1), ylim=(0, 1.01))
        axis.legend(loc="lower right", fontsize=7)
        figure.tight_layout()
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(model))
        for extension in formats:
            path = out / f"roc_{safe}.{extension}"
            figure.savefig(path)
            written.append(path)
        plt.close(figure)
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
