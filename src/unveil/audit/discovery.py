"""Source discovery: do the model's encoder features fall into clusters that follow the label and the acquisition?

Without a source column the sources of a pooled set are still there in the features: images of one hospital
crowd together. The encoder features are standardized, reduced by PCA and clustered with k-means, ``k`` chosen
by the silhouette over a small range. Three measurements:

* **label alignment**: the adjusted mutual information (AMI, 0 = independent, 1 = the same partition) between the
  clusters and the label, with a patient-bootstrap interval and a permutation p-value (patients' labels
  permuted among patients with as many images, so a patient's images move together);
* **acquisition alignment**: the clusters split into those with more COVID+ than the whole set and the rest; a
  cross-validated random forest on the file properties (:mod:`unveil.audit.fingerprint`) tells the two apart,
  balanced accuracy with its interval;
* **who is in each cluster**: size, COVID+ share, the most common file format, size and colour mode, and the
  images nearest its centre (record ids, and a montage).

Clusters that follow the label are what any model that separates the classes produces, a model that learned the
disease included; clusters that follow the label *and* the file properties are the features grouping images by
how they were acquired, the signature of merged sources.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.metrics import adjusted_mutual_info_score, silhouette_score

from unveil.audit.fingerprint import NAMES, forest_probe, property_matrix, varying_properties
from unveil.audit.protocol import InsufficientData
from unveil.audit.verdict import NOT_APPLICABLE, Verdict

#: the numbers of clusters tried (the silhouette chooses)
K_RANGE = (2, 6)
#: principal components kept before clustering: k-means in hundreds of dimensions on tens of images is noise
COMPONENTS = 10
#: images shown (and listed) per cluster: the nearest to its centre
REPRESENTATIVES = 4
#: the permutation test's level
SIGNIFICANCE = 0.05
MEASURE = "adjusted mutual information (k-means clusters of the features vs label)"
ACQUISITION_MEASURE = "balanced accuracy (random forest on file properties, out of fold)"


@dataclass(frozen=True)
class Clustering:
    """k-means clusters of the features: one cluster per image, the silhouette of each k tried, and each image's
    distance to its cluster's centre (in the reduced space)."""

    assignment: np.ndarray
    k: int
    silhouette: float
    by_k: dict[int, float]
    distance: np.ndarray


def cluster_features(features: np.ndarray, *, seed: int, k_range: tuple[int, int] = K_RANGE) -> Clustering:
    """Standardize, PCA to :data:`COMPONENTS`, k-means for each k of ``k_range`` (at most n - 1); the k of the
    highest silhouette. Raises :class:`InsufficientData` with fewer than 3 images or features all alike."""
    n = len(features)
    spread = features.std(0)
    if n < 3 or not (spread > 0).any():
        raise InsufficientData(f"clustering needs at least 3 images whose features differ ({n} images)")
    scaled = (features[:, spread > 0] - features[:, spread > 0].mean(0)) / spread[spread > 0]
    reduced = PCA(n_components=min(COMPONENTS, n - 1, scaled.shape[1]), random_state=seed).fit_transform(scaled)
    fits, by_k = {}, {}
    for k in range(k_range[0], min(k_range[1], n - 1) + 1):
        model = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(reduced)
        if len(np.unique(model.labels_)) < 2:
            continue
        fits[k], by_k[k] = model, float(silhouette_score(reduced, model.labels_))
    if not fits:
        raise InsufficientData("k-means found no two distinct clusters in the features")
    k = max(by_k, key=lambda key: (by_k[key], -key))
    model = fits[k]
    distance = np.linalg.norm(reduced - model.cluster_centers_[model.labels_], axis=1)
    return Clustering(model.labels_.astype(int), k, by_k[k], by_k, distance)


def patient_permutation(groups: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """An index that moves every patient's images, in order, onto another patient's with as many images: applied
    to the labels, it permutes patients, not images (a patient's images stay together)."""
    groups = np.asarray(groups)
    members: dict[object, list[int]] = {}
    for index, group in enumerate(groups):
        members.setdefault(group, []).append(index)
    by_size: dict[int, list[list[int]]] = {}
    for images in members.values():
        by_size.setdefault(len(images), []).append(images)
    permutation = np.arange(len(groups))
    for patients in by_size.values():
        for target, source in zip(patients, (patients[i] for i in rng.permutation(len(patients))), strict=True):
            permutation[target] = source
    return permutation


def label_alignment(clusters: np.ndarray, labels: np.ndarray, groups: np.ndarray, *, resamples: int,
                    seed: int) -> dict[str, float]:
    """AMI of the clusters and the labels; its patient-bootstrap 95 % interval; the permutation p-value (share of
    ``resamples`` patient permutations with an AMI at least as high, the observed one counted)."""
    value = float(adjusted_mutual_info_score(labels, clusters))
    rng = np.random.default_rng(seed)
    codes, inverse = np.unique(groups, return_inverse=True)
    images = [np.flatnonzero(inverse == code) for code in range(len(codes))]
    draws = []
    for _ in range(resamples):
        index = np.concatenate([images[i] for i in rng.integers(0, len(codes), len(codes))])
        draws.append(adjusted_mutual_info_score(labels[index], clusters[index]))
    beaten = sum(adjusted_mutual_info_score(labels[patient_permutation(groups, rng)], clusters) >= value - 1e-12
                 for _ in range(resamples))
    low, high = (float(np.percentile(draws, q)) for q in (2.5, 97.5)) if draws else (math.nan, math.nan)
    return {"value": value, "low": low, "high": high, "p_value": (1 + beaten) / (1 + resamples)}


def _most_common(values: pd.Series) -> str:
    counts = values.astype("string").fillna("unknown").value_counts(normalize=True)
    return f"{counts.index[0]} ({counts.iloc[0]:.0%})"


def cluster_summaries(clustering: Clustering, records: pd.DataFrame, labels: np.ndarray, groups: np.ndarray,
                      properties: pd.DataFrame) -> list[dict]:
    """Per cluster: images, patients, COVID+ share, its usual file format, colour mode and width, and the
    :data:`REPRESENTATIVES` images nearest its centre (record ids and paths)."""
    summaries = []
    for cluster in range(clustering.k):
        chosen = clustering.assignment == cluster
        if not chosen.any():
            continue
        nearest = np.flatnonzero(chosen)[np.argsort(clustering.distance[chosen], kind="stable")][:REPRESENTATIVES]
        width = properties["width"][chosen].median()
        acquisition = (f"format {_most_common(properties['format'][chosen])}, colour mode "
                       f"{_most_common(properties['colour_mode'][chosen])}, median width "
                       + ("unknown" if pd.isna(width) else f"{width:.0f} px"))
        summaries.append({"cluster": cluster, "images": int(chosen.sum()), "patients": int(len(set(groups[chosen]))),
                          "covid_positive_share": float(labels[chosen].mean()), "acquisition": acquisition,
                          "representatives": records["record_id"].iloc[nearest].astype(str).tolist(),
                          "paths": records["path"].iloc[nearest].astype(str).tolist()})
    return summaries


def clusters_text(summaries: list[dict]) -> str:
    """"cluster 0: 18 images, 0 % COVID+, format JPEG (100 %) ..." for every cluster."""
    return "; ".join(f"cluster {s['cluster']}: {s['images']} images, {s['covid_positive_share']:.0%} COVID+, "
                     f"{s['acquisition']}" for s in summaries)


def acquisition_alignment(clustering: Clustering, labels: np.ndarray, groups: np.ndarray, properties: pd.DataFrame,
                          *, seed: int, resamples: int) -> dict[str, Any]:
    """How well the file properties tell the clusters with more COVID+ than the whole set from the others
    (balanced accuracy of a cross-validated forest, with its interval). Raises InsufficientData when a side has images
    of fewer than 2 patients."""
    shares = pd.Series(labels).groupby(clustering.assignment).mean()
    leaning = np.isin(clustering.assignment, shares.index[shares > labels.mean()]).astype(int)
    varying = varying_properties(properties)
    probe = forest_probe(property_matrix(properties, varying), leaning, groups, name="discovery acquisition",
                         negative="other clusters", positive="COVID+-leaning clusters", seed=seed,
                         resamples=resamples)
    metric = probe.evaluation.metrics["balanced_accuracy"]
    return {"value": metric.value, "low": metric.low, "high": metric.high, "properties": varying}


def discovery_rule_text(ami_rule: float | None, acquisition_rule: float) -> str:
    return ("informative (no flag unless discovery_ami is set)" if ami_rule is None else
            f"AMI >= {ami_rule:g} (permutation p < {SIGNIFICANCE:g}) and the file properties telling the clusters "
            f"apart (balanced accuracy >= {acquisition_rule:g}) flags")


def _not_applicable(subject: str, reason: str) -> Verdict:
    return Verdict("source discovery", subject, math.nan, math.nan, math.nan,
                   f"{NOT_APPLICABLE}: too few images, patients or distinct features to cluster", None,
                   f"not applicable: {reason}", measure=MEASURE)


def _suggests(k: int, clustering: Clustering, label: dict, acquired: dict | None, summaries: list[dict], *,
              aligned: bool, flagged: bool | None) -> str:
    following = ("that follow" if aligned else "that follow only partly" if label["p_value"] < SIGNIFICANCE
                 else "that do not follow")
    found = (f"the encoder features fall into {k} clusters (silhouette {clustering.silhouette:.2f}) {following} "
             f"the label (AMI {label['value']:.2f}, permutation p {label['p_value']:.3f})")
    files = ("" if acquired is None else
             f"the file properties tell the COVID+-leaning clusters from the others with balanced accuracy "
             f"{acquired['value']:.2f}")
    if flagged:
        return f"{found} and {files}: {clusters_text(summaries)}; merged sources the model's features tell apart"
    if aligned:
        return (f"{found}, but {files or 'the file properties could not be compared'}: the clusters may be the "
                f"disease, or a source the files do not show (see the source probes); {clusters_text(summaries)}")
    return f"{found}; {clusters_text(summaries)}"


def discovery_verdicts(features: np.ndarray, records: pd.DataFrame, labels: np.ndarray, groups: np.ndarray,
                       properties: pd.DataFrame, *, ami_rule: float | None, acquisition_rule: float, min_images: int,
                       scope: str, seed: int, resamples: int) -> tuple[list[Verdict], dict, np.ndarray | None]:
    """The source-discovery verdicts of these images (``scope`` names them): the clusters against the label
    (flags at ``ami_rule`` with the acquisition rule, see the module), then the file properties against the
    clusters (informative). Returns verdicts, figures and the cluster of each image (None: not applicable)."""
    subject = f"clusters of the encoder features vs the label ({scope})"
    per_class = [len(set(groups[labels == value])) for value in (0, 1)]
    if len(labels) < 2 * min_images or min(per_class) < 2:
        reason = (f"too few images or patients to cluster ({len(labels)} images; patients COVID-: {per_class[0]}, "
                  f"COVID+: {per_class[1]}; at least {2 * min_images} images and 2 patients per class)")
        return [_not_applicable(subject, reason)], {"scope": scope, "not_applicable": reason}, None
    try:
        clustering = cluster_features(features, seed=seed)
    except InsufficientData as error:
        return [_not_applicable(subject, str(error))], {"scope": scope, "not_applicable": str(error)}, None
    label = label_alignment(clustering.assignment, labels, groups, resamples=resamples, seed=seed)
    summaries = cluster_summaries(clustering, records, labels, groups, properties)
    figures: dict = {"scope": scope, "k": clustering.k, "silhouette": clustering.silhouette,
                     "silhouette_by_k": clustering.by_k, "label": label, "clusters": summaries}
    try:
        acquired = acquisition_alignment(clustering, labels, groups, properties, seed=seed, resamples=resamples)
    except InsufficientData as error:
        acquired, figures["acquisition_note"] = None, str(error)
    figures["acquisition"] = acquired
    aligned = bool(label["p_value"] < SIGNIFICANCE and (ami_rule is None or label["value"] >= ami_rule))
    flagged = None if ami_rule is None else bool(aligned and acquired is not None
                                                 and acquired["value"] >= acquisition_rule)
    verdicts = [Verdict("source discovery", f"{clustering.k} {subject}", label["value"], label["low"], label["high"],
                        discovery_rule_text(ami_rule, acquisition_rule), flagged,
                        _suggests(clustering.k, clustering, label, acquired, summaries, aligned=aligned,
                                  flagged=flagged), measure=MEASURE)]
    if acquired is not None:
        verdicts.append(Verdict(
            "source discovery", f"file properties: COVID+-leaning clusters vs the others ({scope})", acquired["value"],
            acquired["low"], acquired["high"], "informative (the clusters' row flags)", None,
            f"how well the files tell the clusters apart, from {', '.join(NAMES[p] for p in acquired['properties'])}"
            if acquired["properties"] else "every file has the same properties: they cannot tell the clusters apart",
            measure=ACQUISITION_MEASURE))
    return verdicts, figures, clustering.assignment
