"""The figures a clinician reads beside the ROC curve, one per model x test set: a reliability diagram and a
confusion matrix at the model's own threshold (``reliability_<model>__<test set>.png``,
``confusion_<model>__<test set>.png``, written by ``unveil evaluate`` beside ``roc_<model>.png``).

Figures are drawn on a ``matplotlib.figure.Figure`` (no pyplot state, no GUI backend) and written atomically.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from unveil.evaluation.calibration import BINS, Calibration, calibration_summary, reliability_table
from unveil.provenance import write_bytes_atomic

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: Figure kinds (file prefix) this module writes.
KINDS = ("reliability", "confusion")


def safe_name(text: object) -> str:
    """``text`` as a file-name part: letters, digits and ``-_.`` kept, anything else ``_``."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in str(text))


def figure_stem(kind: str, model: object, test_set: object) -> str:
    """``reliability_<model>__<test set>``: one file per kind, model and test set."""
    return f"{kind}_{safe_name(model)}__{safe_name(test_set)}"


def _save(figure: Figure, out: Path, stem: str, formats: tuple[str, ...]) -> list[Path]:
    written = []
    for extension in formats:
        buffer = io.BytesIO()
        figure.savefig(buffer, format=extension, metadata={"Software": None} if extension == "png" else None)
        written.append(write_bytes_atomic(out / f"{stem}.{extension}", buffer.getvalue()))
    return written


def reliability_figure(labels: np.ndarray, scores: np.ndarray, *, title: str, bins: int = BINS,
                       summary: str | None = None) -> Figure:
    """Fraction COVID+ against mean predicted probability per bin (marker area ~ images), the diagonal, and a
    histogram of the probabilities below; ``summary`` (ECE, Brier) under the title."""
    from matplotlib.figure import Figure

    table = reliability_table(labels, scores, bins)
    used = table[table["images"] > 0]
    figure = Figure(figsize=(4.4, 4.8), dpi=120)  # fixed margins: a layout engine costs a second per figure
    top, bottom = figure.subplots(2, 1, sharex=True, height_ratios=(3, 1),
                                  gridspec_kw={"left": 0.15, "right": 0.97, "top": 0.9, "bottom": 0.1, "hspace": 0.08})
    top.plot([0, 1], [0, 1], ":", color="grey", linewidth=0.8, label="perfectly calibrated")
    top.plot(used["mean_probability"], used["fraction_positive"], "-", color="C0", linewidth=1)
    top.scatter(used["mean_probability"], used["fraction_positive"], s=12 + 60 * used["images"] / used["images"].max(),
                color="C0", label="bins (area ~ images)", zorder=3)
    top.set(ylabel="fraction COVID+", xlim=(0, 1), ylim=(-0.02, 1.02),
            title=title if summary is None else f"{title}\n{summary}")
    top.title.set_fontsize(8)
    top.legend(loc="upper left", fontsize=7)
    edges = np.linspace(0, 1, bins + 1)
    bottom.bar(edges[:-1], table["images"], width=1 / bins, align="edge", color="C0", alpha=0.6, edgecolor="white")
    bottom.set(xlabel=f"predicted COVID+ probability ({bins} equal-width bins)", ylabel="images")
    return figure


def confusion_figure(labels: np.ndarray, scores: np.ndarray, threshold: float, *, title: str) -> Figure:
    """The 2 x 2 confusion matrix (rows: truth, columns: decision; COVID− first) at ``threshold``, counts and
    row percentages in the cells (scikit-learn's ``ConfusionMatrixDisplay``)."""
    from matplotlib.figure import Figure
    from sklearn.metrics import ConfusionMatrixDisplay, confusion_matrix

    decided = (np.asarray(scores) >= threshold).astype(int)
    matrix = confusion_matrix(np.asarray(labels).astype(int), decided, labels=[0, 1])
    figure = Figure(figsize=(4.0, 3.6), dpi=120)
    axis = figure.subplots(gridspec_kw={"left": 0.22, "right": 0.95, "top": 0.86, "bottom": 0.15})
    display = ConfusionMatrixDisplay(matrix, display_labels=["COVID−", "COVID+"])
    display.plot(ax=axis, colorbar=False, cmap="Blues", values_format="d")
    totals = matrix.sum(axis=1, keepdims=True)
    for (i, j), text in np.ndenumerate(display.text_):
        share = f"{100 * matrix[i, j] / totals[i, 0]:.0f} %" if totals[i, 0] else "—"
        text.set_text(f"{matrix[i, j]}\n({share} of row)")
    axis.set(xlabel="decision", ylabel="truth")
    axis.set_title(title, fontsize=8)
    return figure


def _title(model: object, test_set: object, group: pd.DataFrame) -> tuple[str, str]:
    """The figure title and the threshold text of one model on one test set."""
    threshold = float(group["threshold"].iloc[0])
    rule = str(group["threshold_rule"].iloc[0]) if "threshold_rule" in group else "fixed"
    return f"{model} on {test_set}", f"threshold {threshold:.3f} ({rule} rule), {len(group)} images"


def plot_clinical_figures(predictions: pd.DataFrame, out: str | Path, formats: tuple[str, ...] = ("png", "svg"), *,
                          bins: int = BINS, calibration_rows: pd.DataFrame | None = None) -> dict[str, list[Path]]:
    """A reliability diagram and a confusion matrix per (model, test set) of ``predictions`` (``label``,
    ``probability``, ``threshold``, optional ``threshold_rule``), into ``out``; by kind, the paths written.
    ``calibration_rows``: results rows whose ``ece``/``brier`` columns go under the reliability title."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, list[Path]] = {kind: [] for kind in KINDS}
    summaries = {}
    if calibration_rows is not None and "ece" in calibration_rows:
        for _, row in calibration_rows[calibration_rows["ece"].notna()].iterrows():  # rows of older runs: none
            summaries[(str(row["model"]), str(row["test_set"]))] = calibration_summary(Calibration(
                row["ece"], row["ece_low"], row["ece_high"], row["brier"], row["brier_low"], row["brier_high"],
                int(row.get("ece_bins", bins)), int(row.get("resamples", 0))))
    for (model, test_set), group in predictions.groupby(["model", "test_set"], sort=True):
        labels, scores = group["label"].to_numpy(), group["probability"].to_numpy()
        title, threshold_text = _title(model, test_set, group)
        figure = reliability_figure(labels, scores, title=title, bins=bins,
                                    summary=summaries.get((str(model), str(test_set))))
        written["reliability"] += _save(figure, out, figure_stem("reliability", model, test_set), formats)
        figure = confusion_figure(labels, scores, float(group["threshold"].iloc[0]),
                                  title=f"{title}\n{threshold_text}")
        written["confusion"] += _save(figure, out, figure_stem("confusion", model, test_set), formats)
    return written
