"""`unveil audit`: did the model learn the disease, or the dataset? Evidence and numbers.

Four tests on the model's unseen test images, each reported with its value, interval, the threshold
it is compared with and what it suggests — no single score:

1. feature map: t-SNE of the encoder features, coloured by source and by label (the paper's Fig. 4);
2. source identifiability: a cross-validated linear probe telling two sources apart *within one
   class* (and, for reference, the same probe predicting the label);
3. lung occlusion: the model's AUC with the lung fields replaced by a neutral fill;
4. saliency: the share of Grad-CAM mass inside the lung mask.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from unveil.audit.bootstrap import patient_bootstrap_mean
from unveil.audit.contamination import contamination_section
from unveil.audit.embedding import plot_embedding, tsne_map
from unveil.audit.infection import infection_verdicts
from unveil.audit.metadata import metadata_verdicts
from unveil.audit.occlusion import occlude, occlusion_masks
from unveil.audit.probes import ProbeResult, linear_probe
from unveil.audit.saliency import lung_saliency_fraction
from unveil.audit.transfer import own_composition, transfer_section
from unveil.audit.verdict import Verdict, summary_sentence
from unveil.data.spec import DataSpec
from unveil.errors import UnveilError
from unveil.evaluation.evaluate import cached_images, training_cache, unseen_test_set
from unveil.evaluation.metrics import evaluate_scores
from unveil.explain.saliency import display_image, gradcam_maps, save_overlay
from unveil.io import ImageReadError, read_image
from unveil.preprocess.cache import preprocess_records
from unveil.progress import bar as progress_bar
from unveil.provenance import write_run_metadata, write_text_atomic
from unveil.training.bundle import load_bundle
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


@dataclass
class AuditResult:
    verdicts: list[Verdict]
    figures: dict[str, Any]
    files: dict[str, str] = field(default_factory=dict)

    @property
    def flagged(self) -> list[Verdict]:
        return [v for v in self.verdicts if v.flagged]


def load_masks(records: pd.DataFrame, manifest: pd.DataFrame, size: int) -> np.ndarray:
    """The cached lung masks of ``records`` (bool, N x size x size)."""
    by_id = manifest.set_index("record_id")
    masks = []
    for record_id in records["record_id"]:
        path = by_id.loc[record_id, "mask_path"] if record_id in by_id.index else None
        if path is None or pd.isna(path):
            raise AuditError(f"{record_id}: no lung mask could be made for this image")
        with Image.open(path) as stored:
            mask = np.asarray(stored.convert("L").resize((size, size), Image.NEAREST)) > 127
        masks.append(mask)
    return np.stack(masks)


def _probe_verdict(probe: ProbeResult, thresholds: AuditThresholds, within: str,
                   training_sources: set[str] | None = None) -> Verdict:
    """A source probe flags when it separates two of the model's own training sources (the shortcut a model
    can learn); a probe involving an external set measures a shift, shown as evidence (see the transfer test).
    ``training_sources`` None: every pair may flag (no own test split to tell them apart)."""
    metric = probe.evaluation.metrics["balanced_accuracy"]
    external = training_sources is not None and not {probe.negative, probe.positive} <= training_sources
    separated = bool(metric.value >= thresholds.source_probe)
    accuracy = probe.evaluation.metrics["accuracy"].value
    counts = ", ".join(f"{source}: {n} images" for source, n in probe.counts.items())
    detail = f"(accuracy {accuracy:.2f}, majority rate {probe.majority_rate:.2f}; {counts})"
    if external:
        rule = "informative: an external set (flags only between training sources)"
        suggests = (f"the features {'tell' if separated else 'hardly tell'} {probe.positive} from {probe.negative} "
                    f"among {within} images {detail}: a shift between a training source and an external set; "
                    "whether it costs accuracy is the transfer test's question")
        separated_flag = None  # informative only
    else:
        rule = f"balanced accuracy >= {thresholds.source_probe:g} flags"
        suggests = (f"the features tell {probe.positive} from {probe.negative} among {within} images {detail}: the "
                    "model carries the dataset, so cross-source results may reflect the source, not the disease"
                    if separated else
                    f"no strong {probe.negative}/{probe.positive} signature among {within} images {detail}")
        separated_flag = separated
    return Verdict("source probe", f"{probe.negative} vs {probe.positive} ({within} images)", metric.value, metric.low,
                   metric.high, rule, separated_flag, suggests, measure="balanced accuracy (linear probe, out of fold)")


def audit(model: str | Path, test_sets: list[str], out: str | Path, *, data: dict[str, DataSpec] | None = None,
          masks: str = "segment", cache: str | Path | None = None, thresholds: AuditThresholds = AuditThresholds(),
          seed: int = 0, resamples: int = 1000, saliency_samples: int = 4, workers: int = 1,
          recipes: str | Path | None = None, allow_overlap: bool = False, progress: bool = False,
          lung_convention: str | None = None, own: bool = True) -> AuditResult:
    """Run the tests of ``model`` on its own composition's test split (``own``, rebuilt from its provenance)
    plus every set of ``test_sets``, in one feature space; write PNGs, JSON and Markdown.
    ``lung_convention``: of the segmented masks (default: the one the model was trained with)."""
    if masks not in MASK_SOURCES:
        raise AuditError(f"masks must be one of {', '.join(MASK_SOURCES)}; got {masks!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    bundle = load_bundle(model)
    if bundle.positive_index is None:
        raise AuditError(f"{model}: a pre-training model; audit COVID classifiers from `unveil train`")
    own_name = own_composition(bundle) if own else None
    test_sets = list(dict.fromkeys([*([own_name] if own_name else []), *test_sets]))
    if not test_sets:
        raise AuditError("nothing to audit: give a test set with --on, or keep the model's own test split")
    parts, members = [], {}
    for name in test_sets:
        test_set, _ = unseen_test_set(bundle, name, data=data, recipes=recipes, allow_overlap=allow_overlap)
        members[name] = set(test_set.records["record_id"])  # a record may belong to several sets (AB, AC)
        parts.append(test_set.records.assign(test_set=name))
    records = pd.concat(parts, ignore_index=True).drop_duplicates("record_id").reset_index(drop=True)
    # the model's own sources: those of its composition's test split (None without it: every pair may flag)
    training_sources = (set(records.loc[records["record_id"].isin(members[own_name]), "source"].astype(str))
                        if own_name else None)
    cache = Path(cache) if cache else training_cache(bundle)
    images, _ = cached_images(bundle, records, cache=cache, workers=workers, progress=progress)
    kept = images.records
    mask_settings = replace(bundle.preprocess_settings, mask=masks,
                            convention=lung_convention or bundle.preprocess_settings.convention)
    mask_report = preprocess_records(kept, cache, mask_settings, workers=workers, progress=progress)
    lungs = load_masks(kept, mask_report.manifest, bundle.image_size)
    positive = bundle.positive_index
    labels = images.labels.numpy()
    is_positive = (labels == positive).astype(int)
    groups = (kept["source"] + "::" + kept["patient_id"]).to_numpy()
    label_names = np.where(is_positive == 1, "COVID+", "COVID-")

    figures: dict[str, Any] = {"images": len(kept), "patients": int(len(set(groups))),
                               "by_source": {str(k): int(v) for k, v in kept["source"].value_counts().items()},
                               "skipped": images.skipped, "masks": masks, "thresholds": asdict(thresholds)}
    files: dict[str, str] = {}
    verdicts: list[Verdict] = []

    # 1. Feature map.
    stages = progress_bar(total=4, desc="audit", unit="test", enabled=progress)
    stages.set_postfix_str("t-SNE")
    features = encoder_features(bundle.model, images.images, *bundle.normalization)
    try:
        points = tsne_map(features, seed=seed)
        files["tsne_by_source"] = str(plot_embedding(points, kept["source"], "encoder features by source",
                                                     out / "tsne_by_source.png"))
        files["tsne_by_label"] = str(plot_embedding(points, pd.Series(label_names), "encoder features by label",
                                                    out / "tsne_by_label.png"))
    except ValueError as error:
        points = np.full((len(kept), 2), np.nan)
        figures["tsne_note"] = str(error)
        for stale in ("tsne_by_source.png", "tsne_by_label.png"):  # an earlier run's maps are not this run's
            (out / stale).unlink(missing_ok=True)

    # 2. Probes: the label (reference), then source pairs within each class.
    stages.update()
    stages.set_postfix_str("probes")
    probes = []
    try:
        label_probe = linear_probe(features, is_positive, groups, name="label", negative="COVID-",
                                   positive="COVID+", seed=seed, resamples=resamples)
        probes.append(label_probe.figures())
        metric = label_probe.evaluation.metrics["roc_auc"]
        verdicts.append(Verdict("label probe", "COVID- vs COVID+ (all images)", metric.value, metric.low, metric.high,
                                "informative (no flag)", None,
                                "how linearly the features separate the labels (compare with the source probes)",
                                measure="ROC AUC (linear probe, out of fold)"))
    except ValueError as error:
        figures["label_probe_note"] = str(error)
    for value, within in ((0, "COVID-"), (1, "COVID+")):
        in_class = is_positive == value
        sources = kept.loc[in_class, "source"].value_counts()
        sources = sorted(s for s, n in sources.items() if n >= thresholds.min_images)
        for first, second in itertools.combinations(sources, 2):
            chosen = in_class & kept["source"].isin([first, second]).to_numpy()
            try:
                probe = linear_probe(features[chosen], (kept.loc[chosen, "source"] == second).to_numpy(),
                                     groups[chosen], name=f"source {within}", negative=first, positive=second,
                                     seed=seed, resamples=resamples)
            except ValueError as error:
                figures.setdefault("probe_notes", []).append(str(error))
                continue
            probes.append(probe.figures())
            verdicts.append(_probe_verdict(probe, thresholds, within, training_sources))
    figures["probes"] = probes

    # 3. Lung occlusion: hide the (slightly grown) lung fields behind the training mean.
    stages.update()
    stages.set_postfix_str("lung occlusion")
    fill = int(round(bundle.normalization[0] * 255))
    hidden = occlusion_masks(lungs, dilation=max(1, bundle.image_size // 64))
    original = probabilities_from_features(bundle.model, features)[:, positive]  # no second encoder pass
    occluded = bundle.predict_probabilities(occlude(images.images, hidden, fill))[:, positive]
    if len(np.unique(is_positive)) == 2:
        before = evaluate_scores(is_positive, original, groups, resamples=resamples, seed=seed)
        after = evaluate_scores(is_positive, occluded, groups, resamples=resamples, seed=seed)
        auc_before, auc_after = before.metrics["roc_auc"], after.metrics["roc_auc"]
        figures["occlusion"] = {"auc": auc_before.value, "auc_occluded": auc_after.value,
                                "auc_occluded_low": auc_after.low, "auc_occluded_high": auc_after.high,
                                "fill": fill, "dilation_px": max(1, bundle.image_size // 64),
                                "hidden_fraction": float(hidden.mean())}
        flagged = bool(auc_after.value >= thresholds.occlusion_auc)
        verdicts.append(Verdict(
            "lung occlusion", "COVID- vs COVID+ (lungs hidden)", auc_after.value, auc_after.low, auc_after.high,
            f"AUC >= {thresholds.occlusion_auc:g} flags",
            flagged, (f"with the lungs hidden the model still separates the classes (AUC {auc_after.value:.2f}, "
                      f"{auc_before.value:.2f} with them): it uses evidence outside the lungs") if flagged else
            f"hiding the lungs takes the AUC from {auc_before.value:.2f} to {auc_after.value:.2f}",
            measure="ROC AUC (model, lungs hidden)"))
    else:
        figures["occlusion_note"] = "one class only among the audited images: no AUC"

    # Transfer, metadata shortcuts, contamination (audit/transfer.py, metadata.py, contamination.py).
    in_own = kept["record_id"].isin(members.get(own_name, set())).to_numpy()
    verdicts += transfer_section(kept, members, is_positive, original, groups, own_name, bundle.threshold, thresholds,
                                 figures, seed=seed, resamples=resamples)
    found, figures["metadata"] = metadata_verdicts(
        features, kept, is_positive, groups, in_own, probe_rule=thresholds.metadata_probe,
        only_rule=thresholds.metadata_only_auc, min_images=thresholds.min_images, seed=seed, resamples=resamples)
    verdicts += found
    duplicated = contamination_section(bundle, kept, members, thresholds, figures, verdicts, cache=cache,
                                       workers=workers)

    # 4. Saliency.
    stages.update()
    stages.set_postfix_str("Grad-CAM")
    maps = gradcam_maps(bundle, images.images, positive)
    inside = lung_saliency_fraction(maps, lungs)
    area = lungs.reshape(len(lungs), -1).mean(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        enrichment = np.where(area > 0, inside / area, np.nan)
    mean, low, high = patient_bootstrap_mean(enrichment, groups, resamples=resamples, seed=seed)
    share = float(np.nanmean(inside)) if np.isfinite(inside).any() else math.nan
    lung_area = float(area.mean())
    figures["saliency"] = {"enrichment_mean": mean, "low": low, "high": high, "share_inside_lungs": share,
                           "lung_area_fraction": lung_area, "layer": bundle.model.target_layer}
    rule = thresholds.lung_saliency
    flagged = None if rule is None else bool(mean < rule)
    reading = ("more than" if mean > 1 else "no more than") + " a uniform map would put there"
    verdicts.append(Verdict(
        "saliency in lungs", f"Grad-CAM mass in lungs / lung area ({bundle.model.target_layer})", mean, low, high,
        "informative (no flag unless lung_saliency is set)" if rule is None else f"ratio < {rule:g} flags",
        flagged, f"{share:.0%} of the Grad-CAM mass lies in the lungs, which cover {lung_area:.0%} of the image: "
        f"{reading}", measure="ratio (Grad-CAM share in lungs / lung area share)"))
    rng = np.random.default_rng(seed)
    overlay_dir = out / "saliency"
    staging = Path(tempfile.mkdtemp(dir=out, prefix=".saliency.", suffix=".tmp"))
    overlays = []
    try:  # a rerun replaces the whole folder: no overlay of an earlier run is left beside the new ones
        for value in np.unique(labels):
            candidates = np.flatnonzero(labels == value)
            for index in sorted(rng.choice(candidates, min(saliency_samples, len(candidates)), replace=False)):
                name = f"{label_names[index]}_{index:05d}.png"
                title = f"{kept.loc[index, 'source']} {label_names[index]} p={original[index]:.2f}"
                save_overlay(images.images[index, 0].numpy(), maps[index], lungs[index], title, staging / name,
                             display=_display(kept.loc[index, "path"]))
                overlays.append(str(overlay_dir / name))
        _replace_folder(staging, overlay_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    files["saliency_overlays"] = overlays  # type: ignore[assignment]
    found, figures["infection"] = infection_verdicts(maps, kept, is_positive, groups, size=bundle.image_size,
                                                     pointing_rule=thresholds.infection_pointing, seed=seed,
                                                     resamples=resamples)
    verdicts += found
    stages.update()
    stages.close()

    per_image = kept[["record_id", "source", "patient_id", "test_set"]].assign(
        label=is_positive, probability=original, probability_lungs_hidden=occluded, lung_saliency=inside,
        tsne_x=points[:, 0], tsne_y=points[:, 1], near_duplicate_of_training=duplicated)
    write_text_atomic(out / "audit_images.csv", per_image.to_csv(index=False, lineterminator="\n"))
    figures["summary"] = summary_sentence((v.test, v.flagged) for v in verdicts)
    result = AuditResult(verdicts, figures, files)
    write_text_atomic(out / "audit.json", json.dumps(audit_document(result), indent=2, default=str) + "\n")
    write_text_atomic(out / "audit.md", audit_markdown(result, out))
    write_run_metadata(out / "audit.meta.json", "unveil audit", {
        "model": str(model), "on": test_sets, "own": own_name, "masks": masks, "seed": seed, "resamples": resamples,
        "thresholds": asdict(thresholds), "cache": str(cache)}, extra={"flagged": len(result.flagged)})
    return result


def _display(path: str) -> np.ndarray | None:
    """The original radiograph resized for an overlay; None (the pre-processed image is drawn) if unreadable."""
    try:
        return display_image(read_image(path).pixels)
    except (ImageReadError, OSError):
        return None


def _replace_folder(new: Path, target: Path) -> None:
    """Put folder ``new`` in place of ``target`` (renames, so ``target`` is never half written)."""
    new.chmod(0o755)
    if target.exists():
        old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.old.", suffix=".tmp"))
        os.replace(target, old / target.name)
        os.replace(new, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(new, target)


def _number(value: float) -> float | str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return "inf" if isinstance(value, float) and math.isinf(value) else value


def audit_document(result: AuditResult) -> dict[str, Any]:
    """Everything as JSON-ready data (NaN -> null)."""
    verdicts = [{k: _number(v) if isinstance(v, float) else v for k, v in asdict(verdict).items()}
                for verdict in result.verdicts]
    return {"verdicts": verdicts, "flagged": len(result.flagged), "figures": result.figures, "files": result.files}


def audit_markdown(result: AuditResult, out: Path) -> str:
    """The section a report includes: the verdict table, then the pictures."""
    summary = result.figures.get("summary") or summary_sentence((v.test, v.flagged) for v in result.verdicts)
    lines = ["## Bias audit", "", f"**{summary}**", "",
             f"{result.figures['images']} test images of {result.figures['patients']} "
             f"patients ({', '.join(f'{k}: {v}' for k, v in result.figures['by_source'].items())}).", "",
             "| test | subject | measure | value [95 % CI] | flag rule | flagged | what it suggests |",
             "|---|---|---|---|---|---|---|"]
    for v in result.verdicts:
        value = "n/a" if math.isnan(v.value) else f"{v.value:.2f} [{v.low:.2f}, {v.high:.2f}]"
        flag = "—" if v.flagged is None else ("**yes**" if v.flagged else "no")
        cells = [v.test, v.subject, v.measure, value, v.threshold, flag, v.suggests]
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")
    lines.append("")
    for key in ("tsne_by_source", "tsne_by_label"):
        if key in result.files:
            lines.append(f"![{key}]({Path(result.files[key]).relative_to(out)})")
    lines.append("")
    return "\n".join(lines) + "\n"
