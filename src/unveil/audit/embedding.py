"""The t-SNE map of encoder features (:func:`unveil.training.loop.encoder_features`) and the paper's Fig. 4 style
plots."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from unveil.audit.protocol import InsufficientData


def tsne_map(features: np.ndarray, seed: int = 0, perplexity: float = 30.0) -> np.ndarray:
    """2-D openTSNE embedding (PCA to 50 dimensions first, perplexity capped for small sets); fewer than 5 images:
    :class:`InsufficientData`."""
    from openTSNE import TSNE  # lazy: openTSNE and matplotlib are slow to import; only the audit's maps need them
    from sklearn.decomposition import PCA

    n = len(features)
    if n < 5:
        raise InsufficientData(f"t-SNE needs at least 5 images, got {n}")
    reduced = PCA(n_components=min(50, n - 1, features.shape[1]), random_state=seed).fit_transform(
        (features - features.mean(0)) / (features.std(0) + 1e-8))
    perplexity = min(perplexity, max(2.0, (n - 1) / 3.0 - 1))
    return np.asarray(TSNE(perplexity=perplexity, random_state=seed, n_jobs=1, verbose=False).fit(reduced))


def plot_embedding(points: np.ndarray, colours: pd.Series, title: str, path: str | Path) -> Path:
    """A scatter plot of the 2-D map, one colour per value of ``colours`` (source, or label)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5.2, 4.6), dpi=120)
    palette = plt.get_cmap("tab10")
    for index, value in enumerate(sorted(colours.astype(str).unique())):
        chosen = (colours.astype(str) == value).to_numpy()
        axis.scatter(points[chosen, 0], points[chosen, 1], s=9, alpha=0.75, color=palette(index % 10),
                     label=f"{value} ({int(chosen.sum())})", linewidths=0)
    axis.set(title=title, xticks=[], yticks=[])
    axis.legend(fontsize=7, markerscale=1.6, loc="best")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return Path(path)
