"""ROC curves per model, one figure each: its curve on every test set, the AUC in the legend and the point of
its decision threshold (the figures beside the tables and in the report)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd


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
            fpr, tpr, _ = roc_curve(part["label"], part["probability"])
            auc = roc_auc_score(part["label"], part["probability"])
            axis.plot(fpr, tpr, label=f"{test_set} (AUC {auc:.2f}, n={len(part)})")
            threshold = float(part["threshold"].iloc[0])
            predicted = part["probability"] >= threshold
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
