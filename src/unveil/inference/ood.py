"""Out-of-distribution check: how far an image's encoder features lie from the training sources.

Features are reduced by PCA (fitted on the training split), then each training source with enough
images gets a Gaussian with a Ledoit-Wolf shrunk covariance (stable with few images per dimension);
an image's distance is its Mahalanobis distance to the nearest source. The flag threshold is a high
percentile of the validation images' distances (calibrated on data the model did not fit).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

OOD_WEIGHTS = "ood.safetensors"
OOD_DESCRIPTION = "ood.json"


@dataclass
class OodReference:
    mean: np.ndarray  # (D,) feature mean before PCA
    components: np.ndarray  # (K, D) PCA axes
    source_means: dict[str, np.ndarray]  # per source, (K,)
    source_precisions: dict[str, np.ndarray]  # per source, (K, K)
    threshold: float
    percentile: float

    def distances(self, features: np.ndarray) -> tuple[np.ndarray, list[str]]:
        """Mahalanobis distance of each row of ``features`` to its nearest training source, and that source."""
        projected = (features - self.mean) @ self.components.T
        names = sorted(self.source_means)
        all_distances = np.stack([np.sqrt(np.maximum(np.einsum(
            "nk,kl,nl->n", projected - self.source_means[n], self.source_precisions[n],
            projected - self.source_means[n]), 0.0)) for n in names], axis=1)
        nearest = all_distances.argmin(axis=1)
        return all_distances[np.arange(len(features)), nearest], [names[i] for i in nearest]

    def save(self, directory: str | Path) -> None:
        from safetensors.torch import save_file

        directory = Path(directory)
        tensors = {"mean": self.mean, "components": self.components}
        for name in self.source_means:
            tensors[f"mean/{name}"] = self.source_means[name]
            tensors[f"precision/{name}"] = self.source_precisions[name]
        save_file({k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float64)) for k, v in tensors.items()},
                  str(directory / OOD_WEIGHTS))
        (directory / OOD_DESCRIPTION).write_text(json.dumps({
            "threshold": self.threshold, "percentile": self.percentile, "sources": sorted(self.source_means),
            "dimensions": int(self.components.shape[0]), "distance": "Mahalanobis to the nearest training source",
        }, indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, directory: str | Path) -> OodReference | None:
        """The bundle's reference, or None when it has none (bundles from older versions)."""
        from safetensors.torch import load_file

        directory = Path(directory)
        if not (directory / OOD_WEIGHTS).is_file() or not (directory / OOD_DESCRIPTION).is_file():
            return None
        tensors = {k: v.numpy() for k, v in load_file(str(directory / OOD_WEIGHTS)).items()}
        described = json.loads((directory / OOD_DESCRIPTION).read_text(encoding="utf-8"))
        sources = described["sources"]
        return cls(tensors["mean"], tensors["components"], {s: tensors[f"mean/{s}"] for s in sources},
                   {s: tensors[f"precision/{s}"] for s in sources}, float(described["threshold"]),
                   float(described["percentile"]))


def fit_ood_reference(train_features: np.ndarray, train_sources: np.ndarray, val_features: np.ndarray, *,
                      dimensions: int = 16, percentile: float = 99.0, min_images: int = 20) -> OodReference:
    """Fit on the training split's features (per source), calibrate the threshold on validation."""
    from sklearn.covariance import LedoitWolf
    from sklearn.decomposition import PCA

    k = int(min(dimensions, len(train_features) - 1, train_features.shape[1]))
    pca = PCA(n_components=k, random_state=0).fit(train_features)
    projected = pca.transform(train_features)
    train_sources = np.asarray(train_sources).astype(str)
    groups = {s: projected[train_sources == s] for s in np.unique(train_sources)}
    usable = {s: x for s, x in groups.items() if len(x) >= min_images}
    if not usable:  # too few images per source: one pooled Gaussian
        usable = {"training": projected}
    means, precisions = {}, {}
    for name, points in usable.items():
        estimator = LedoitWolf().fit(points)
        means[name], precisions[name] = estimator.location_, estimator.precision_
    reference = OodReference(pca.mean_, pca.components_, means, precisions, threshold=np.inf, percentile=percentile)
    distances, _ = reference.distances(val_features if len(val_features) else train_features)
    reference.threshold = float(np.percentile(distances, percentile))
    return reference
