"""Out-of-distribution check: is a new image like the images the model was trained on?

Two views of each image are compared with the training split, each by its own detector:

* ``encoder``: the model's pooled encoder features (what the head sees);
* ``image``: statistics of the pre-processed image itself (intensity histogram and quantiles inside
  the lung mask, mask area, saturation, gradient/Laplacian energy at three scales: the texture and
  noise an acquisition leaves; and the mean intensity on an 8 x 8 grid: the anatomy's layout). A
  shift the encoder was never trained to notice, such as real radiographs for a model trained on
  synthetic ones, shows here even when the encoder maps it near the training features.

Each view is standardised, reduced by PCA (fitted on the training split), and each training source
with enough images gets a Gaussian with a Ledoit-Wolf shrunk covariance (well conditioned with few
images per dimension). A view's distance is the Mahalanobis distance to the nearest source in the
PCA space combined with the (scaled) distance from that space, so a shift along directions the
training images never varied in is not projected away. Calibration uses images the fit did not see
(the validation split, and each training image scored by a 5-fold fit without it): each view's
distance is divided by its median there, the image's score is the largest of the two, and the
flag threshold is the split-conformal ``1 - false_alarm`` quantile of the calibration scores, so
about ``false_alarm`` (default 5 %) of in-distribution images are flagged.
``benchmarks/ood_shift.py`` measures the false-alarm rate on held-out images and the detection
rate of a synthetic-to-real shift (figures in docs/inference.md).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unveil.documents import load_json
from unveil.errors import UnveilError, first_non_finite
from unveil.provenance import write_text_atomic

OOD_WEIGHTS = "ood.safetensors"
OOD_DESCRIPTION = "ood.json"
OOD_VERSION = 2
#: Share of in-distribution images the check is calibrated to flag (the validation quantile it uses).
FALSE_ALARM_TARGET = 0.05
VIEWS = ("encoder", "image")
#: The image view's layout: mean intensity on a LAYOUT x LAYOUT grid (where the lungs, heart and ribs are).
LAYOUT = 8


class OodReferenceOutdated(UnveilError, RuntimeError):
    """The bundle's reference was written by an older unveil, with a detector this version no longer uses."""


class OodReferenceError(UnveilError, ValueError):
    """The bundle's reference holds a value no detector can use (NaN or infinity); it is refused, not skipped."""


class OodReferenceUnreadable(UnveilError, RuntimeError):
    """The bundle's ``ood.safetensors`` is truncated, replaced or does not match ``ood.json`` (names the file)."""


def image_statistics(images: np.ndarray | torch.Tensor) -> np.ndarray:
    """Per-image statistics of pre-processed images (N x 1 x S x S or N x S x S; uint8, or float in [0, 1]):
    16-bin histogram, quantiles, mean and spread inside the lung mask, mask area and saturation, mean
    absolute gradient and Laplacian at full, 1/2 and 1/4 resolution (texture and noise), and the mean
    intensity on an 8 x 8 grid (the layout of the anatomy: lung shape, heart, ribs)."""
    array = images.numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    array = array.reshape(len(array), array.shape[-2], array.shape[-1])
    scale = 255.0 if array.dtype == np.uint8 else 1.0
    rows = []
    for stored in array:  # one image at a time: the set may be a memory map larger than RAM
        image = stored.astype(np.float32) / scale
        inside = image[image > 1.5 / 255.0]
        inside = inside if inside.size >= 16 else image.ravel()
        histogram = np.histogram(image, bins=16, range=(0.0, 1.0))[0] / image.size
        quantiles = np.quantile(inside, [0.05, 0.25, 0.5, 0.75, 0.95])
        texture = []
        level = image
        for _ in range(3):
            texture += [np.abs(np.diff(level, axis=0)).mean() + np.abs(np.diff(level, axis=1)).mean(),
                        np.abs(4 * level[1:-1, 1:-1] - level[:-2, 1:-1] - level[2:, 1:-1] - level[1:-1, :-2]
                               - level[1:-1, 2:]).mean()]
            h, w = (level.shape[0] // 2) * 2, (level.shape[1] // 2) * 2
            level = level[:h, :w].reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))
        h, w = (image.shape[0] // LAYOUT) * LAYOUT, (image.shape[1] // LAYOUT) * LAYOUT
        layout = image[:h, :w].reshape(LAYOUT, h // LAYOUT, LAYOUT, w // LAYOUT).mean(axis=(1, 3)).ravel()
        rows.append(np.concatenate([histogram, quantiles, [inside.mean(), inside.std(), (image > 1.5 / 255.0).mean(),
                                                           (image > 254.5 / 255.0).mean()],
                                    np.log(np.asarray(texture) + 1e-6), layout]))
    return np.asarray(rows, dtype=np.float64).reshape(len(array), -1)


@dataclass
class ViewReference:
    """One view's detector: standardisation, PCA, a Gaussian per training source, distance scales."""

    center: np.ndarray  # (D,)
    scale: np.ndarray  # (D,)
    components: np.ndarray  # (K, D) PCA axes of the standardised features
    residual_scale: float  # typical squared distance from the PCA space, per remaining dimension
    source_means: dict[str, np.ndarray]  # (K,)
    source_precisions: dict[str, np.ndarray]  # (K, K)
    typical: float = 1.0  # median validation distance

    def distances(self, features: np.ndarray) -> tuple[np.ndarray, list[str]]:
        """Distance of each row to its nearest training source (in typical units), and that source."""
        standardised = (np.asarray(features, dtype=np.float64) - self.center) / self.scale
        projected = standardised @ self.components.T
        residual = np.square(standardised - projected @ self.components).sum(axis=1)
        extra = max(standardised.shape[1] - self.components.shape[0], 1)
        residual_term = residual / (self.residual_scale * extra) if self.residual_scale > 0 else 0.0
        names = sorted(self.source_means)
        squared = np.stack([np.einsum("nk,kl,nl->n", projected - self.source_means[n], self.source_precisions[n],
                                      projected - self.source_means[n]) for n in names], axis=1)
        nearest = squared.argmin(axis=1)
        chosen = squared[np.arange(len(features)), nearest]
        return np.sqrt(np.maximum(chosen + residual_term, 0.0)) / self.typical, [names[i] for i in nearest]


def fit_view(train: np.ndarray, sources: np.ndarray, *, dimensions: int, min_images: int) -> ViewReference:
    """Fit one view on the training split's features."""
    from sklearn.covariance import LedoitWolf
    from sklearn.decomposition import PCA

    train = np.asarray(train, dtype=np.float64)
    center = train.mean(axis=0)
    spread = train.std(axis=0)
    scale = np.where(spread > 1e-8 * max(float(spread.max()), 1e-12), spread, 1.0)
    standardised = (train - center) / scale
    k = int(max(1, min(dimensions, len(train) // 4, train.shape[1])))  # >= 4 images per dimension
    pca = PCA(n_components=k, random_state=0).fit(standardised)
    components = pca.components_
    projected = standardised @ components.T
    residual = np.square(standardised - projected @ components).sum(axis=1)
    residual_scale = float(residual.mean() / max(train.shape[1] - k, 1))
    groups = {s: projected[sources == s] for s in np.unique(sources)}
    usable = {s: x for s, x in groups.items() if len(x) >= min_images} or {"training": projected}
    means, precisions = {}, {}
    for name, points in usable.items():
        estimator = LedoitWolf().fit(points)
        means[name], precisions[name] = estimator.location_, estimator.precision_
    return ViewReference(center, scale, components, residual_scale, means, precisions)


@dataclass
class OodReference:
    """The bundle's out-of-distribution detector: one :class:`ViewReference` per view, and the threshold."""

    views: dict[str, ViewReference]
    threshold: float
    false_alarm: float

    def view_distances(self, features: np.ndarray, images: np.ndarray | torch.Tensor | None = None
                       ) -> dict[str, np.ndarray]:
        """Each view's distance (in units of its median validation distance)."""
        inputs = {"encoder": features}
        if "image" in self.views:
            if images is None:
                raise ValueError("this reference also compares the pre-processed images: pass them")
            inputs["image"] = image_statistics(images)
        return {name: view.distances(inputs[name])[0] for name, view in self.views.items()}

    def distances(self, features: np.ndarray, images: np.ndarray | torch.Tensor | None = None
                  ) -> tuple[np.ndarray, list[str]]:
        """Score of each image (the largest of its view distances; flagged above ``threshold``) and the
        nearest training source in encoder features."""
        per_view = self.view_distances(features, images)
        _, nearest = self.views["encoder"].distances(features)
        return np.max(np.stack(list(per_view.values()), axis=1), axis=1), nearest

    def explain(self, features: np.ndarray, images: np.ndarray | torch.Tensor | None = None) -> list[str]:
        """Per image, the views whose distance exceeds the threshold, in words."""
        per_view = self.view_distances(features, images)
        words = {"encoder": "encoder features", "image": "image statistics"}
        return [", ".join(f"{words[name]} {values[i]:.1f}" for name, values in per_view.items()
                          if values[i] > self.threshold) for i in range(len(features))]

    def save(self, directory: str | Path) -> None:
        from safetensors.torch import save_file

        directory = Path(directory)
        tensors: dict[str, np.ndarray] = {}
        described: dict[str, dict] = {}
        for name, view in self.views.items():
            tensors.update({f"{name}/center": view.center, f"{name}/scale": view.scale,
                            f"{name}/components": view.components})
            for source in view.source_means:
                tensors[f"{name}/mean/{source}"] = view.source_means[source]
                tensors[f"{name}/precision/{source}"] = view.source_precisions[source]
            described[name] = {"sources": sorted(view.source_means), "dimensions": int(view.components.shape[0]),
                               "features": int(view.center.shape[0]), "residual_scale": view.residual_scale,
                               "typical": view.typical}
        temporary = directory / f".{OOD_WEIGHTS}.tmp"
        save_file({k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float64)) for k, v in tensors.items()},
                  str(temporary))
        temporary.replace(directory / OOD_WEIGHTS)
        write_text_atomic(directory / OOD_DESCRIPTION, json.dumps({
            "version": OOD_VERSION, "threshold": self.threshold, "false_alarm_target": self.false_alarm,
            "score": "largest view distance (Mahalanobis to the nearest training source + distance from the PCA "
                     "space), each in units of its median validation distance", "views": described,
        }, indent=2) + "\n")

    @classmethod
    def load(cls, directory: str | Path) -> OodReference | None:
        """The bundle's reference; None when it has none; :class:`OodReferenceOutdated` for a reference of an
        older unveil (its detector missed real shifts; fit a new one with
        :func:`unveil.inference.refit_ood_reference`)."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        directory = Path(directory)
        if not (directory / OOD_WEIGHTS).is_file() or not (directory / OOD_DESCRIPTION).is_file():
            return None
        described = load_json(directory / OOD_DESCRIPTION, OodReferenceError, "out-of-distribution reference")
        if int(described.get("version", 1)) != OOD_VERSION:
            raise OodReferenceOutdated(
                f"{directory / OOD_DESCRIPTION}: out-of-distribution reference version {described.get('version', 1)}, "
                f"this unveil reads version {OOD_VERSION}; not used (refit it: "
                f"python -c \"from unveil.inference import refit_ood_reference; refit_ood_reference('{directory}')\")")
        try:
            tensors = {k: v.numpy() for k, v in load_file(str(directory / OOD_WEIGHTS)).items()}
        except (OSError, SafetensorError, ValueError) as error:  # truncated, replaced or foreign bytes
            raise OodReferenceUnreadable(f"{directory / OOD_WEIGHTS}: unreadable out-of-distribution reference "
                                         f"({error}); refit it or restore the bundle") from None
        _check_finite(directory, described, tensors)
        views = {}
        try:
            for name, spec in described["views"].items():
                views[name] = ViewReference(
                    tensors[f"{name}/center"], tensors[f"{name}/scale"], tensors[f"{name}/components"],
                    float(spec["residual_scale"]), {s: tensors[f"{name}/mean/{s}"] for s in spec["sources"]},
                    {s: tensors[f"{name}/precision/{s}"] for s in spec["sources"]}, float(spec["typical"]))
        except KeyError as error:  # a valid file of other tensors: not this reference's
            raise OodReferenceUnreadable(f"{directory / OOD_WEIGHTS}: out-of-distribution reference lacks tensor "
                                         f"{error.args[0]} named in {OOD_DESCRIPTION}; refit it or restore the "
                                         "bundle") from None
        return cls(views, float(described["threshold"]), float(described["false_alarm_target"]))


def _check_finite(directory: Path, described: dict[str, Any], tensors: dict[str, np.ndarray]) -> None:
    """Every number of a saved reference is finite: a NaN threshold or distance is never exceeded, which would
    switch the check off while every image reads ``ok``."""
    found = first_non_finite(described)
    if found:
        raise OodReferenceError(f"{directory / OOD_DESCRIPTION}: {'.'.join(map(str, found[0]))} is {found[1]!r}; "
                                "an out-of-distribution reference holds finite numbers only (refit it)")
    for name, values in tensors.items():
        if not np.isfinite(values).all():
            raise OodReferenceError(f"{directory / OOD_WEIGHTS}: {name} holds NaN or infinite values; an "
                                    "out-of-distribution reference holds finite numbers only (refit it)")


def _out_of_fold(train: np.ndarray, sources: np.ndarray, *, dimensions: int, min_images: int,
                 folds: int = 5) -> np.ndarray:
    """Distance of each training image to a view fitted without it (``folds``-fold): calibration data the
    fit did not see, so that the threshold does not rest on a small validation split alone."""
    from sklearn.model_selection import KFold

    distances = np.empty(len(train))
    for fitted, held in KFold(folds, shuffle=True, random_state=0).split(train):
        view = fit_view(train[fitted], sources[fitted], dimensions=dimensions, min_images=min_images)
        distances[held] = view.distances(train[held])[0]
    return distances


def fit_ood_reference(train_features: np.ndarray, train_sources: np.ndarray, val_features: np.ndarray,
                      train_images: np.ndarray | torch.Tensor | None = None,
                      val_images: np.ndarray | torch.Tensor | None = None, *, dimensions: int = 64,
                      false_alarm: float = FALSE_ALARM_TARGET, min_images: int = 20) -> OodReference:
    """Fit on the training split (encoder features, and pre-processed images for the ``image`` view; a
    Gaussian per source), then calibrate on images the fit did not see: the validation split and, when the
    training split has 20 images or more, each training image scored by a fit without it (5-fold). Each
    view is scaled by its median calibration distance; the threshold is the split-conformal quantile of
    the calibration scores (level ``ceil((n + 1)(1 - false_alarm)) / n``), so that an in-distribution
    image is flagged with probability at most about ``false_alarm``."""
    train_sources = np.asarray(train_sources).astype(str)
    inputs = {"encoder": (np.asarray(train_features, dtype=np.float64), np.asarray(val_features, dtype=np.float64))}
    if train_images is not None and val_images is not None:
        inputs["image"] = (image_statistics(train_images), image_statistics(val_images))
    views, calibration = {}, []
    for name, (train, val) in inputs.items():
        view = fit_view(train, train_sources, dimensions=dimensions, min_images=min_images)
        pool = [view.distances(val)[0]] if len(val) else []
        if len(train) >= 20:
            pool.append(_out_of_fold(train, train_sources, dimensions=dimensions, min_images=min_images))
        pooled = np.concatenate(pool) if pool else view.distances(train)[0]
        view.typical = float(np.median(pooled)) or 1.0
        views[name] = view
        calibration.append(pooled / view.typical)
    scores = np.max(np.stack(calibration, axis=1), axis=1)
    level = min(1.0, math.ceil((len(scores) + 1) * (1.0 - false_alarm)) / len(scores))
    return OodReference(views, threshold=float(np.quantile(scores, level)), false_alarm=false_alarm)
