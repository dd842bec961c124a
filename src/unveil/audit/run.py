"""`unveil audit`: did the model learn the disease, or the dataset? Evidence and numbers.

Four tests on the model's unseen test images, each reported with its value, interval, the threshold
it is compared with and what it suggests — no single score:

1. feature map: t-SNE of the encoder features, coloured by source and by label (the paper's Fig. 4);
2. source identifiability: a cross-validated linear probe telling two sources apart *within one
   class* (and, for reference, the same probe predicting the label);
3. lung occlusion: the model's AUC with the lung content replaced by a neutral fill (on lung-masked input: the
   lungs' silhouette kept, the content hidden; see :mod:`unveil.audit.occlusion`);
4. saliency: the share of Grad-CAM mass inside the lung mask.

Then the shortcuts of the data and the sets (:mod:`~unveil.audit.transfer`, :mod:`~unveil.audit.metadata`,
:mod:`~unveil.audit.contamination`), and the merged sources no column names: the label from the image files alone
(:mod:`~unveil.audit.fingerprint`) and clusters of the features that follow the label and the files
(:mod:`~unveil.audit.discovery`).
"""

from __future__ import annotations

import itertools
import logging
import math
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image

from unveil.audit.bootstrap import patient_bootstrap_mean
from unveil.audit.contamination import contamination_section
from unveil.audit.discovery import discovery_verdicts
from unveil.audit.embedding import plot_embedding, tsne_map
from unveil.audit.fingerprint import fingerprint_verdicts, property_table
from unveil.audit.infection import infection_verdicts
from unveil.audit.metadata import metadata_verdicts
from unveil.audit.occlusion import (
    lung_mean,
    occlude,
    occlusion_masks,
    same_for_every_image,
    silhouettes,
    soft_silhouettes,
)
from unveil.audit.outputs import (
    audit_document,  # noqa: F401 (re-exported: `unveil audit --json` uses it)
    write_audit_files,
    write_cluster_montage,
    write_overlays,
)
from unveil.audit.probes import ProbeResult, linear_probe
from unveil.audit.saliency import lung_saliency_fraction
from unveil.audit.transfer import own_composition, transfer_section
from unveil.audit.verdict import (
    AuditResult,
    Verdict,
    label_probe_verdict,
    occlusion_not_applicable,
    occlusion_verdict,
    saliency_verdict,
    separation_kept,
    source_probe_verdict,
    summary_sentence,
)
from unveil.data.spec import DataSpec
from unveil.errors import UnveilError, finite
from unveil.evaluation.evaluate import cached_images, model_bindings, training_cache, unseen_test_set
from unveil.evaluation.metrics import evaluate_scores
from unveil.evaluation.names import bound_labels
from unveil.explain.saliency import gradcam_maps
from unveil.preprocess.cache import preprocess_records
from unveil.progress import bar as progress_bar
from unveil.training.bundle import ModelBundle, load_bundle
from unveil.training.data import ImageSet
from unveil.training.loop import encoder_features, probabilities_from_features

log = logging.getLogger(__name__)

MASK_SOURCES = ("segment", "truth")


class AuditError(UnveilError, ValueError):
    """The audit cannot run on these inputs (the message says why)."""


@dataclass(frozen=True)
class AuditThresholds:
    """When a test raises a flag. Documented defaults; all configurable (``--threshold KEY=VALUE``)."""

    #: within one class, a probe telling two sources apart with this balanced accuracy (chance 0.5)
    source_probe: float = 0.75
    #: the model's ROC AUC with the lungs hidden (chance 0.5)
    occlusion_auc: float = 0.70
    #: flag when the Grad-CAM mass inside the lungs, divided by the lungs' share of the image, is below
    #: this (1 = no more saliency in the lungs than a uniform map would put there). Off by default:
    #: at the last convolution's resolution (1/8 to 1/32 of the image) Grad-CAM follows the lung area
    #: within about 15 % for biased and unbiased synthetic models alike (measured: 1.01 for `paper`,
    #: 0.88 for `clean`), so it is shown as evidence, and the occlusion test is the causal one.
    lung_saliency: float | None = None
    #: sources with fewer images than this within a class are not probed
    min_images: int = 10
    #: "does not transfer": AUC (or balanced accuracy) on an external set this much lower than on the model's
    #: own test split, with the interval of the drop above 0
    transfer_drop: float = 0.10
    #: "below chance": the external AUC's upper bound under this
    below_chance: float = 0.5
    #: within one class, a probe telling two values of a metadata factor apart with this balanced accuracy
    metadata_probe: float = 0.75
    #: the label predicted from all metadata factors together (own test split) with this AUC; None: informative
    metadata_only_auc: float | None = 0.80
    #: flag when the saliency maximum lies in the infected region on fewer COVID+ images than this share;
    #: off by default (no measured reference yet)
    infection_pointing: float | None = None
    #: flag a test set with at least this many images that duplicate the model's training images
    contamination: int = 1
    #: acquisition fingerprint (a data flag): the label predicted from the image files alone (width, height, format,
    #: bit depth, JPEG quality, DICOM Manufacturer ...; own test split) with this ROC AUC, the interval's lower bound
    #: above 0.5; None: informative
    fingerprint_auc: float | None = 0.80
    #: source discovery: k-means clusters of the encoder features sharing this much adjusted mutual information
    #: with the label (permutation p < 0.05), and the file properties telling them apart (next); None: informative.
    #: Measured: 0.01 for the synthetic `clean` AB model, 0.30 for `paper` (a COVID- only cluster of B's images
    #: beside a mixed one), 0.83 for a conv8 on COVID-ChestXRay COVID+ and Kermany COVID- in one CSV
    discovery_ami: float | None = 0.20
    #: source discovery: the balanced accuracy at which the file properties tell the COVID+-leaning clusters from the
    #: others (chance 0.5)
    discovery_acquisition: float = 0.75

    def __post_init__(self) -> None:
        """Every threshold given is a finite number (a NaN threshold would silently never flag)."""
        for field in fields(self):
            value = getattr(self, field.name)
            if value is not None:
                number = finite(value, f"audit threshold {field.name}", AuditError)
                if field.type == "int" and number != int(number):
                    raise AuditError(f"audit threshold {field.name} must be a whole number; got {value!r}")


def load_masks(records: pd.DataFrame, manifest: pd.DataFrame, size: int) -> np.ndarray:
    """The cached lung masks of ``records`` (bool, N x size x size)."""
    by_id = manifest.set_index("record_id")
    masks = []
    for record_id in records["record_id"]:
        path = by_id.loc[record_id, "mask_path"] if record_id in by_id.index else None
        if path is None or pd.isna(path):
            raise AuditError(f"{record_id}: no lung mask could be made for this image")
        with Image.open(path) as stored:
            mask = np.asarray(stored.convert("L").resize((size, size), Image.Resampling.NEAREST)) > 127
        masks.append(mask)
    return np.stack(masks)


def _probe_verdict(probe: ProbeResult, thresholds: AuditThresholds, within: str,
                   training_groups: set[str] | None = None) -> Verdict:
    """A source probe flags when it separates two groups of the model's own test split (two of its training
    sources: the shortcut a model can learn); a probe involving an external set measures a shift, shown as
    evidence (see the transfer test). ``training_groups`` None: every pair may flag (no own test split)."""
    external = training_groups is not None and not {probe.negative, probe.positive} <= training_groups
    return source_probe_verdict(probe, thresholds.source_probe, within, external=external)


@dataclass
class AuditedImages:
    """The audited images, gathered once (step 0); every test reads them and none changes them."""

    bundle: ModelBundle
    records: pd.DataFrame  # one row per image, with ``test_set`` (the first audited set that holds it), ``audited_as``
    images: ImageSet  # pre-processed as the model saw them
    lungs: np.ndarray  # bool lung masks (``--mask``), N x size x size
    model_masks: np.ndarray | None  # the masks the model's own pre-processing cut its input with (None: mask=none)
    members: dict[str, set[str]]  # record ids of each audited set (a record may be in several: AB, AC)
    own: str | None  # the model's own composition, audited on its test split
    training_groups: set[str] | None  # probe groups of the own test split (None: every group pair may flag)
    cache: Path

    @property
    def labels(self) -> np.ndarray:
        return self.images.labels.numpy()

    @property
    def own_members(self) -> set[str]:
        """Record ids of the model's own test split (none when it is not audited)."""
        return self.members.get(self.own, set()) if self.own is not None else set()

    @property
    def is_positive(self) -> np.ndarray:
        return (self.labels == self.bundle.positive_index).astype(int)

    @property
    def groups(self) -> np.ndarray:
        """Patient keys (source::patient) for the patient bootstrap."""
        return (self.records["source"] + "::" + self.records["patient_id"]).to_numpy()

    @property
    def label_names(self) -> np.ndarray:
        return np.where(self.is_positive == 1, "COVID+", "COVID-")


def audited_as(records: pd.DataFrame, kinds: dict[str, str]) -> pd.Series:
    """Per image, the group the source probes compare, named by the role of the set that holds it (``test_set``),
    so one source in two sets is two groups, never one: "chestxray (test split of AB)" for a composition's test
    split ("hospital-csv (A, test split of AD)" where two of its roles share a source), the set's own name for a
    whole dataset ("chestxray:/data/other"). ``kinds``: "composition" or "dataset" per set."""
    role = records["role"].astype("string") if "role" in records else pd.Series(pd.NA, index=records.index)
    shared = records.assign(role=role).groupby(["test_set", "source"])["role"].transform("nunique") > 1
    split = "test split of " + records["test_set"].astype(str)
    names = np.where(shared, records["source"] + " (" + role.fillna("?") + ", " + split + ")",
                     records["source"] + " (" + split + ")")
    whole = records["test_set"].map(kinds).eq("dataset")
    return pd.Series(np.where(whole, records["test_set"], names), index=records.index, name="audited_as")


def _distinct_ids(part: pd.DataFrame, seen: dict[str, str], name: str) -> pd.DataFrame:
    """``part`` with every record id that already names another file (two datasets of one source hold the same
    relative path, e.g. two hospitals' ``images/1.png``) made distinct by the set's name: two images, never one."""
    other = part["record_id"].map(seen)
    clash = other.notna() & (other != part["path"])
    if clash.any():
        part = part.assign(record_id=part["record_id"].where(~clash, part["record_id"] + f" ({name})"))
    seen.update(zip(part["record_id"], part["path"], strict=True))
    return part


def gather(bundle: ModelBundle, test_sets: list[str], own: str | None, *, data: dict[str, DataSpec] | None,
           mask: str, cache: str | Path | None, recipes: str | Path | None, allow_overlap: bool, workers: int,
           progress: bool, lung_convention: str | None, options: dict[str, Any] | None = None) -> AuditedImages:
    """Rebuild every test set unseen by the model, pre-process its images and lung masks (cached);
    ``options``: loader options of the ``SOURCE:PATH`` test sets."""
    parts, members, kinds = [], {}, {}
    seen: dict[str, str] = {}  # record id -> path, over the sets so far
    for name in test_sets:
        test_set, _ = unseen_test_set(bundle, name, data=data, recipes=recipes, allow_overlap=allow_overlap,
                                      options=options)
        part = _distinct_ids(test_set.records, seen, name)
        members[name], kinds[name] = set(part["record_id"]), str(test_set.origin.get("kind", "composition"))
        parts.append(part.assign(test_set=name))
    records = pd.concat(parts, ignore_index=True).drop_duplicates("record_id").reset_index(drop=True)
    records["audited_as"] = audited_as(records, kinds)
    training_groups = (set(records.loc[records["record_id"].isin(members[own]), "audited_as"].astype(str))
                       if own else None)
    cache = Path(cache) if cache else training_cache(bundle)
    images, manifest = cached_images(bundle, records, cache=cache, workers=workers, progress=progress)
    settings = bundle.preprocess_settings
    model_masks = None if settings.mask == "none" else load_masks(images.records, manifest, settings.size)
    mask_settings = replace(settings, mask=mask, convention=lung_convention or settings.convention)
    mask_report = preprocess_records(images.records, cache, mask_settings, workers=workers, progress=progress)
    lungs = load_masks(images.records, mask_report.manifest, bundle.image_size)
    return AuditedImages(bundle, images.records, images, lungs, model_masks, members, own, training_groups, cache)


def feature_map(audited: AuditedImages, features: np.ndarray, out: Path, result: AuditResult, *,
                seed: int) -> np.ndarray:
    """Test 1: t-SNE of the encoder features, drawn by source and by label; the points (NaN if impossible)."""
    try:
        points = tsne_map(features, seed=seed)
        result.files["tsne_by_source"] = str(plot_embedding(points, audited.records["source"],
                                                            "encoder features by source", out / "tsne_by_source.png"))
        result.files["tsne_by_label"] = str(plot_embedding(points, pd.Series(audited.label_names),
                                                           "encoder features by label", out / "tsne_by_label.png"))
    except ValueError as error:
        points = np.full((len(audited.records), 2), np.nan)
        result.figures["tsne_note"] = str(error)
        for stale in ("tsne_by_source.png", "tsne_by_label.png"):  # an earlier run's maps are not this run's
            (out / stale).unlink(missing_ok=True)
    return points


def probe_tests(audited: AuditedImages, features: np.ndarray, thresholds: AuditThresholds, result: AuditResult, *,
                seed: int, resamples: int) -> None:
    """Test 2: the label probe (reference), then a source probe for every pair of groups (a source within one
    audited set, :func:`audited_as`) within each class."""
    kept, is_positive, groups = audited.records, audited.is_positive, audited.groups
    probes = []
    try:
        label_probe = linear_probe(features, is_positive, groups, name="label", negative="COVID-",
                                   positive="COVID+", seed=seed, resamples=resamples)
        probes.append(label_probe.figures())
        result.verdicts.append(label_probe_verdict(label_probe.evaluation.metrics["roc_auc"]))
    except ValueError as error:
        result.figures["label_probe_note"] = str(error)
    for value, within in ((0, "COVID-"), (1, "COVID+")):
        in_class = is_positive == value
        sources = kept.loc[in_class, "audited_as"].value_counts()
        sources = sorted(s for s, n in sources.items() if n >= thresholds.min_images)
        for first, second in itertools.combinations(sources, 2):
            chosen = in_class & kept["audited_as"].isin([first, second]).to_numpy()
            try:
                probe = linear_probe(features[chosen], (kept.loc[chosen, "audited_as"] == second).to_numpy(),
                                     groups[chosen], name=f"source {within}", negative=first, positive=second,
                                     seed=seed, resamples=resamples)
            except ValueError as error:
                result.figures.setdefault("probe_notes", []).append(str(error))
                continue
            probes.append(probe.figures())
            result.verdicts.append(_probe_verdict(probe, thresholds, within, audited.training_groups))
    result.figures["probes"] = probes


def occluded_inputs(audited: AuditedImages, fill: int | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
    """The images with the lung content hidden, and how (``variant``, ``fill``, ...). The model's input already
    masked (black outside its blurred lung mask): the "silhouette" variant, the content replaced by one ``fill``
    (default: the mean lung intensity of the audited input) inside that same blurred mask. Otherwise "lungs
    hidden": the lungs (grown by size/64 px) replaced by the training mean, the rest of the radiograph kept."""
    bundle, images = audited.bundle, audited.images.images
    if audited.model_masks is not None:
        settings = bundle.preprocess_settings
        soft = soft_silhouettes(audited.model_masks, settings.blur_radius, bundle.image_size)
        fill = lung_mean(images, soft) if fill is None else fill
        return silhouettes(soft, fill), {"variant": "silhouette", "fill": fill, "blur_radius_px": settings.blur_radius,
                                         "lung_fraction": float((soft >= 0.5).mean())}
    fill = int(round(bundle.normalization[0] * 255)) if fill is None else fill
    dilation = max(1, bundle.image_size // 64)
    hidden = occlusion_masks(audited.lungs, dilation=dilation)
    return occlude(images, hidden, fill), {"variant": "lungs hidden", "fill": fill, "dilation_px": dilation,
                                           "hidden_fraction": float(hidden.mean())}


def _not_applicable(occluded: torch.Tensor, figures: dict[str, Any]) -> str | None:
    """Why the occlusion test cannot flag on these inputs whatever the model does, or None."""
    if same_for_every_image(occluded):
        what = ("every image has the same lung silhouette" if figures["variant"] == "silhouette" else
                "the grown lung masks cover the whole image")
        return (f"with the lung content hidden the model gets the same input for every image ({what}): its output "
                "cannot tell the classes apart, whatever it learned")
    if figures["variant"] == "lungs hidden" and figures["hidden_fraction"] == 0:
        return "no lung pixel was found to hide: the images are the model's own input"
    return None


def occlusion_test(audited: AuditedImages, original: np.ndarray, thresholds: AuditThresholds, result: AuditResult,
                   *, seed: int, resamples: int) -> np.ndarray:
    """Test 3: the model's AUC with the lung content hidden (:func:`occluded_inputs`; "not applicable", with the
    reason, when nothing is left to separate the classes with); returns the probabilities with the lungs hidden."""
    bundle, is_positive, groups = audited.bundle, audited.is_positive, audited.groups
    images, figures = occluded_inputs(audited)
    occluded = bundle.predict_probabilities(images)[:, bundle.positive_index]
    if len(np.unique(is_positive)) != 2:
        result.figures["occlusion_note"] = "one class only among the audited images: no AUC"
        return occluded
    before = evaluate_scores(is_positive, original, groups, resamples=resamples, seed=seed).metrics["roc_auc"]
    result.figures["occlusion"] = {**figures, "auc": before.value}
    reason = _not_applicable(images, figures)
    if reason is not None:
        result.figures["occlusion"]["not_applicable"] = reason
        result.verdicts.append(occlusion_not_applicable(figures["variant"], reason))
        return occluded
    after = evaluate_scores(is_positive, occluded, groups, resamples=resamples, seed=seed).metrics["roc_auc"]
    result.figures["occlusion"].update(auc_occluded=after.value, auc_occluded_low=after.low,
                                       auc_occluded_high=after.high,
                                       separation_kept=separation_kept(before.value, after.value))
    result.verdicts.append(occlusion_verdict(before.value, after, thresholds.occlusion_auc, figures["variant"]))
    return occluded


def shortcut_tests(audited: AuditedImages, features: np.ndarray, original: np.ndarray,
                   thresholds: AuditThresholds, result: AuditResult, *, seed: int, resamples: int,
                   workers: int) -> np.ndarray:
    """Transfer, metadata shortcuts and contamination (audit/transfer.py, metadata.py, contamination.py);
    returns, per image, whether it duplicates a training image."""
    kept, is_positive, groups = audited.records, audited.is_positive, audited.groups
    in_own = kept["record_id"].isin(audited.own_members).to_numpy()
    result.verdicts += transfer_section(kept, audited.members, is_positive, original, groups, audited.own,
                                        audited.bundle.threshold, thresholds, result.figures, seed=seed,
                                        resamples=resamples)
    found, result.figures["metadata"] = metadata_verdicts(
        features, kept, is_positive, groups, in_own, probe_rule=thresholds.metadata_probe,
        only_rule=thresholds.metadata_only_auc, min_images=thresholds.min_images, seed=seed, resamples=resamples)
    result.verdicts += found
    return contamination_section(audited.bundle, kept, audited.members, thresholds, result.figures, result.verdicts,
                                 cache=audited.cache, workers=workers)


def acquisition_tests(audited: AuditedImages, features: np.ndarray, thresholds: AuditThresholds,
                      result: AuditResult, out: Path, *, seed: int, resamples: int) -> np.ndarray:
    """The acquisition fingerprint (the label from the file properties) and source discovery (clusters of the
    features against the label and the files), on the model's own test split (every audited image without one);
    returns each image's cluster (-1: not clustered)."""
    kept = audited.records
    chosen = kept["record_id"].isin(audited.own_members).to_numpy()
    scope = "own test split" if chosen.any() else "all audited images"
    chosen = chosen if chosen.any() else np.ones(len(kept), dtype=bool)
    records = kept[chosen].reset_index(drop=True)
    properties, errors = property_table(records)
    labels, groups = audited.is_positive[chosen], audited.groups[chosen]
    found, result.figures["fingerprint"] = fingerprint_verdicts(properties, labels, groups,
                                                                rule=thresholds.fingerprint_auc, scope=scope,
                                                                seed=seed, resamples=resamples)
    result.figures["fingerprint"]["read_errors"] = errors
    result.verdicts += found
    found, result.figures["discovery"], clusters = discovery_verdicts(
        features[chosen], records, labels, groups, properties, ami_rule=thresholds.discovery_ami,
        acquisition_rule=thresholds.discovery_acquisition, min_images=thresholds.min_images, scope=scope, seed=seed,
        resamples=resamples)
    result.verdicts += found
    montage = write_cluster_montage(result.figures["discovery"].get("clusters", []), out / "clusters.png")
    if montage is not None:
        result.files["clusters_montage"] = str(montage)
    per_image = np.full(len(kept), -1)
    if clusters is not None:
        per_image[chosen] = clusters
    return per_image


def saliency_test(audited: AuditedImages, thresholds: AuditThresholds, result: AuditResult, *, seed: int,
                  resamples: int) -> tuple[np.ndarray, np.ndarray]:
    """Test 4: Grad-CAM maps and the share of their mass inside the lungs, relative to the lungs' area;
    returns (maps, share inside the lungs per image)."""
    bundle, lungs = audited.bundle, audited.lungs
    maps = gradcam_maps(bundle, audited.images.images, bundle.positive_column)
    inside = lung_saliency_fraction(maps, lungs)
    area = lungs.reshape(len(lungs), -1).mean(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        enrichment = np.where(area > 0, inside / area, np.nan)
    mean, low, high = patient_bootstrap_mean(enrichment, audited.groups, resamples=resamples, seed=seed)
    share = float(np.nanmean(inside)) if np.isfinite(inside).any() else math.nan
    lung_area = float(area.mean())
    layer = bundle.model.target_layer
    result.figures["saliency"] = {"enrichment_mean": mean, "low": low, "high": high, "share_inside_lungs": share,
                                  "lung_area_fraction": lung_area, "layer": layer}
    result.verdicts.append(saliency_verdict(mean, low, high, share=share, lung_area=lung_area, layer=layer,
                                            rule=thresholds.lung_saliency))
    return maps, inside


def _audited_sets(model: str | Path, bundle: ModelBundle, test_sets: list[str], own: bool) -> tuple[str | None,
                                                                                                  list[str]]:
    """(the model's own composition or None, every set to audit: the own one first)."""
    if bundle.positive_index is None:
        raise AuditError(f"{model}: a pre-training model; audit COVID classifiers from `unveil train`")
    own_name = own_composition(bundle) if own else None
    names = list(dict.fromkeys([*([own_name] if own_name else []), *test_sets]))
    if not names:
        raise AuditError("nothing to audit: give a test set with --on, or keep the model's own test split")
    return own_name, names


def audit(model: str | Path, test_sets: list[str], out: str | Path, *, data: dict[str, DataSpec] | None = None,
          mask: str = "segment", cache: str | Path | None = None, thresholds: AuditThresholds = AuditThresholds(),
          seed: int = 0, resamples: int = 1000, saliency_samples: int = 4, workers: int = 1,
          recipes: str | Path | None = None, allow_overlap: bool = False, progress: bool = False,
          lung_convention: str | None = None, own: bool = True, options: dict[str, Any] | None = None) -> AuditResult:
    """Run the tests of ``model`` on its own composition's test split (``own``, rebuilt from its provenance)
    plus every set of ``test_sets``, in one feature space; write PNGs, JSON and Markdown.
    ``lung_convention``: of the segmented masks (default: the one the model was trained with).
    ``options``: loader options of the ``SOURCE:PATH`` test sets."""
    if mask not in MASK_SOURCES:
        raise AuditError(f"mask must be one of {', '.join(MASK_SOURCES)}; got {mask!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    bundle = load_bundle(model)
    own_name, test_sets = _audited_sets(model, bundle, test_sets, own)
    audited = gather(bundle, test_sets, own_name, data=data, mask=mask, cache=cache, recipes=recipes,
                     allow_overlap=allow_overlap, workers=workers, progress=progress, lung_convention=lung_convention,
                     options=options)
    kept = audited.records
    result = AuditResult([], {"images": len(kept), "patients": int(len(set(audited.groups))),
                              "by_source": {str(k): int(v) for k, v in kept["source"].value_counts().items()},
                              "skipped": audited.images.skipped, "masks": mask, "thresholds": asdict(thresholds)})
    stages = progress_bar(total=4, desc="audit", unit="test", enabled=progress)
    stages.set_postfix_str("t-SNE")
    features = encoder_features(bundle.model, audited.images.images, *bundle.normalization)
    points = feature_map(audited, features, out, result, seed=seed)
    stages.update()
    stages.set_postfix_str("probes")
    probe_tests(audited, features, thresholds, result, seed=seed, resamples=resamples)
    stages.update()
    stages.set_postfix_str("lung occlusion")
    original = probabilities_from_features(bundle.model, features)[:, bundle.positive_index]  # no 2nd encoder pass
    occluded = occlusion_test(audited, original, thresholds, result, seed=seed, resamples=resamples)
    duplicated = shortcut_tests(audited, features, original, thresholds, result, seed=seed, resamples=resamples,
                                workers=workers)
    clusters = acquisition_tests(audited, features, thresholds, result, out, seed=seed, resamples=resamples)
    stages.update()
    stages.set_postfix_str("Grad-CAM")
    maps, inside = saliency_test(audited, thresholds, result, seed=seed, resamples=resamples)
    result.files["saliency_overlays"] = write_overlays(audited, maps, original, out, seed=seed,  # type: ignore
                                                       samples=saliency_samples)
    found, result.figures["infection"] = infection_verdicts(
        maps, kept, audited.is_positive, audited.groups, size=bundle.image_size,
        pointing_rule=thresholds.infection_pointing, seed=seed, resamples=resamples)
    result.verdicts += found
    stages.update()
    stages.close()

    per_image = kept[["record_id", "source", "patient_id", "test_set", "audited_as"]].assign(
        label=audited.is_positive, probability=original, probability_lungs_hidden=occluded, lung_saliency=inside,
        tsne_x=points[:, 0], tsne_y=points[:, 1], near_duplicate_of_training=duplicated, cluster=clusters)
    result.figures["summary"] = summary_sentence((v.test, v.flagged) for v in result.verdicts)
    result.figures["test_sets"] = bound_labels(test_sets, model_bindings(bundle, data).specs)  # names for the text
    write_audit_files(result, per_image, out, {
        "model": str(model), "on": test_sets, "own": own_name, "masks": mask, "seed": seed, "resamples": resamples,
        "thresholds": asdict(thresholds), "cache": str(audited.cache)})
    return result
