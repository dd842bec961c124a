"""`unveil predict`: score new images with a model bundle, with evidence and warnings per image.

Each image is read (PNG, JPEG, DICOM), pre-processed exactly as the bundle says (resize, histogram
equalization, lung segmentation with the shipped or given lung model, blurred mask, [0, 1]),
scored, and checked: a lung mask whose area or shape is implausible, or encoder features far from
every training source (out of distribution), is ``rejected``: its probability is recorded but it gets
no decision, with the reason in ``warnings`` (``decide_anyway`` decides it anyway, status ``flagged``).
A bundle recorded as collapsed at training (validation probabilities of negligible spread,
:mod:`unveil.training.collapse`) gives no image a decision, for the same reason. Files stream through
in batches, so memory stays flat for folders of thousands; unreadable files are
listed and skipped (or stop the run with ``strict``). Outputs go through
:class:`unveil.io.outputs.OutputFolder`: an output folder overlapping the inputs is refused, one run
at a time, and ``predictions.csv``/``evidence/`` replace the previous ones only when the run completes.
"""

from __future__ import annotations

import csv
import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from unveil.data.sources.base import IMAGE_SUFFIXES
from unveil.errors import UnveilError
from unveil.explain.saliency import display_image, gradcam_maps, save_overlay
from unveil.io import DEFAULT_MAX_PIXELS, ImageReadError, read_image
from unveil.io.outputs import OutputFolder
from unveil.preprocess.cache import resolve_settings
from unveil.progress import bar as progress_bar
from unveil.provenance import write_text_atomic
from unveil.segmentation import LungSegmenter
from unveil.thresholds import ThresholdChoice, ThresholdRequest, ThresholdRule
from unveil.training.bundle import ModelBundle, load_bundle
from unveil.training.loop import encoder_features, probabilities_from_features
from unveil.training.ood import OodReference, OodReferenceOutdated
from unveil.transforms import paper_pipeline, resize_image

log = logging.getLogger(__name__)

COLUMNS = ("file", "status", "probability", "decision", "threshold", "threshold_rule", "lung_area", "lung_check",
           "ood_distance", "ood_threshold", "nearest_source", "ood_flag", "warnings", "overlay", "error")


class PredictionError(UnveilError, RuntimeError):
    """Strict mode: some files could not be read (the message lists them)."""

    exit_code = 1  # some inputs could not be used: a partial failure, not a mistake


class MissingInputError(PredictionError):
    """An input file or folder does not exist (the message names it)."""


@dataclass(frozen=True)
class LungCheck:
    """Plausibility of a lung mask at the working resolution."""

    min_area: float = 0.08
    max_area: float = 0.60
    min_component_share: float = 0.15  # the smaller lung holds at least this share of the mask

    def problems(self, mask: np.ndarray) -> list[str]:
        area = float(mask.mean())
        found = []
        if not self.min_area <= area <= self.max_area:
            found.append(f"lung mask area {area:.2f} outside [{self.min_area}, {self.max_area}]")
        labels, count = ndimage.label(mask)
        if count != 2:
            found.append(f"lung mask has {count} component(s), not 2")
            return found
        sizes = ndimage.sum(mask, labels, [1, 2])
        if sizes.min() / sizes.sum() < self.min_component_share:
            found.append(f"one lung holds only {sizes.min() / sizes.sum():.0%} of the mask")
        columns = [c[1] for c in ndimage.center_of_mass(mask, labels, [1, 2])]
        middle = mask.shape[1] / 2
        if not (min(columns) < middle < max(columns)):
            found.append("both lung components lie on one side of the image")
        return found


@dataclass(frozen=True)
class InputCheck:
    """Plausibility of the image as read, before any model sees it: a chest radiograph is roughly square
    (detectors are 1:1 to 1:1.3) and has contrast. A 100x900 strip or a flat gray field is no radiograph,
    whatever probability the model gives it."""

    max_aspect: float = 2.0  # longer side / shorter side
    min_contrast: float = 0.02  # standard deviation of the [0, 1] pixels

    def problems(self, pixels: np.ndarray) -> list[str]:
        found = []
        height, width = pixels.shape[:2]
        if max(height, width) > self.max_aspect * min(height, width):
            found.append(f"image is {width}x{height} pixels, aspect ratio over {self.max_aspect:g}:1 (not a chest "
                         "radiograph's)")
        contrast = float(np.std(pixels))
        if contrast < self.min_contrast:
            found.append(f"image has almost no contrast (standard deviation {contrast:.3f} < {self.min_contrast})")
        return found


@dataclass
class PredictionSummary:
    scored: int = 0
    unreadable: list[str] = field(default_factory=list)
    positives: int = 0
    ood_flagged: int = 0
    lung_flagged: int = 0
    rejected: int = 0  # failed the lung or OOD check: no decision
    csv: Path | None = None
    threshold: dict[str, Any] | None = None  # the decision threshold used and its rule

    def to_text(self) -> str:
        """What a user reads at the end of `unveil predict`."""
        decided = self.scored - self.rejected
        lines = [f"scored {self.scored} image(s)" + (f", {len(self.unreadable)} unreadable" if self.unreadable else "")
                 + f": {decided} decided ({self.positives} positive), {self.rejected} rejected without a decision",
                 f"checks: {self.lung_flagged} implausible lung mask(s), {self.ood_flagged} out of distribution"]
        if self.threshold is not None:
            lines.append(f"decision threshold {float(self.threshold['value']):.4f} "
                         f"({self.threshold.get('description') or self.threshold.get('rule')})")
        lines.append(f"predictions: {self.csv}")
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        return {"scored": self.scored, "unreadable": len(self.unreadable), "positives": self.positives,
                "ood_flagged": self.ood_flagged, "lung_flagged": self.lung_flagged,
                "rejected": self.rejected, "csv": str(self.csv),
                "threshold": self.threshold}


def expand_inputs(inputs: Sequence[str | Path]) -> list[Path]:
    """Files as given; folders searched recursively for image files (sorted). A path that does not exist is
    an error naming it (a mistyped folder must not yield an empty, successful run)."""
    missing = [str(p) for p in map(Path, inputs) if not p.exists()]
    if missing:
        raise MissingInputError(f"input path not found: {', '.join(missing)}")
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            files.extend(sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES))
        else:
            files.append(item)
    return files


def _safe_stem(path: Path) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", path.stem)[:60] or "image"


class Predictor:
    """A bundle, its lung segmenter and OOD reference, ready to score batches of files."""

    def __init__(self, bundle: str | Path | ModelBundle, *, segmenter: str | Path | None = None,
                 lung_check: LungCheck = LungCheck(), input_check: InputCheck = InputCheck(),
                 threshold: ThresholdChoice | None = None,
                 lung_convention: str | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                 decide_anyway: bool = False) -> None:
        from monai.transforms import Compose

        self.bundle = bundle if isinstance(bundle, ModelBundle) else load_bundle(bundle)
        if self.bundle.positive_index is None:
            raise PredictionError(f"{self.bundle.path}: a pre-training model; predict with a COVID classifier")
        self.threshold = threshold or self.bundle.threshold_choice  # the decision threshold and its rule
        settings = self.bundle.preprocess_settings
        self.notes = []
        if lung_convention is not None and lung_convention != settings.convention:
            self.notes.append(f"lungs segmented in the {lung_convention} convention; the model was trained with "
                              f"{settings.convention or 'its lung model default'} masks")
            settings = replace(settings, convention=lung_convention)
        self.settings = settings
        if segmenter is None and settings.mask == "segment" and settings.model_sha256:
            resolve_settings(settings)  # the bundle's lung model, checked against its recorded SHA-256
        self.segmenter = LungSegmenter.load(segmenter or settings.model)
        ood_note = "bundle has no out-of-distribution reference"
        try:
            self.ood = OodReference.load(self.bundle.path) if self.bundle.path is not None else None
        except OodReferenceOutdated as error:  # still predicts; every row says why it has no OOD check
            self.ood, ood_note = None, str(error)
            log.warning("%s", error)
        self.lung_check = lung_check
        self.input_check = input_check
        self.max_pixels = max_pixels
        self.decide_anyway = decide_anyway  # decide images that fail the lung or OOD check (status flagged)
        self.pipeline = Compose(paper_pipeline(self.bundle.image_size, blur_radius=settings.blur_radius,
                                               equalize=settings.equalize, mask=settings.mask != "none"))
        if settings.mask == "truth":
            self.notes.append("model trained with dataset masks; lungs segmented here")
        if self.ood is None:
            self.notes.append(ood_note)

    def prepare(self, paths: Sequence[Path], *, displays: list[np.ndarray] | None = None
                ) -> tuple[list[int], torch.Tensor, np.ndarray, list[str]]:
        """Read and pre-process; returns the readable positions, uint8 images, lung masks, errors. With
        ``displays``, each readable original is also appended to it, resized for an overlay."""
        images, kept, errors = [], [], []
        self.input_problems: list[list[str]] = []  # per readable image, aligned with ``kept``
        for position, path in enumerate(paths):
            try:
                pixels = read_image(path, max_pixels=self.max_pixels).pixels
                images.append(resize_image(pixels, self.bundle.image_size))
                if displays is not None:
                    displays.append(display_image(pixels))
                self.input_problems.append(self.input_check.problems(pixels))
                kept.append(position)
            except ImageReadError as error:
                errors.append(str(error))
            except OSError as error:
                errors.append(f"{path}: cannot read file ({error.strerror or error})")
        if not images:
            size = self.bundle.image_size
            return kept, torch.zeros((0, 1, size, size), dtype=torch.uint8), np.zeros((0, size, size), bool), errors
        array, masks = self.preprocess(images)
        return kept, array, masks, errors

    def preprocess(self, images: Sequence[np.ndarray]) -> tuple[torch.Tensor, np.ndarray]:
        """Images already resized to the bundle's size -> the model's uint8 N x 1 x S x S input and the lung
        masks: segmentation, the bundle's pre-processing, rounding to 8 bits (what training stored)."""
        masks = np.stack(self.segmenter.segment_batch(images, convention=self.settings.convention))
        processed = [self.pipeline({"image": image, "mask": mask})["image"]
                     for image, mask in zip(images, masks, strict=True)]
        array = np.clip(np.rint(np.stack(processed) * 255.0), 0, 255).astype(np.uint8)
        return torch.from_numpy(array[:, None]), masks

    def _model_outputs(self, images: torch.Tensor, *, evidence: bool
                       ) -> tuple[np.ndarray, np.ndarray, list[str], list[str], np.ndarray | None]:
        """Per image: the probability of the positive class, the OOD score, nearest training source and reason,
        and (``evidence``) the Grad-CAM map."""
        positive = self.bundle.positive_column
        mean, std = self.bundle.normalization
        features = encoder_features(self.bundle.model, images, mean, std)
        probabilities = probabilities_from_features(self.bundle.model, features)[:, positive]
        count = len(images)
        distances, nearest = self.ood.distances(features, images) if self.ood else (
            np.full(count, np.nan), ["" for _ in range(count)])
        reasons = self.ood.explain(features, images) if self.ood else ["" for _ in range(count)]
        maps = None
        if evidence:
            maps = gradcam_maps(self.bundle, images, positive)
        return probabilities, distances, nearest, reasons, maps

    def _row(self, path: Path, problems: list[str], mask: np.ndarray, probability: float, distance: float,
             nearest: str, reason: str, overlay: str) -> dict[str, Any]:
        """One scored image's CSV row: its decision unless a check failed (then flagged or rejected)."""
        positive = self.bundle.positive_column
        lung_problems = self.lung_check.problems(mask)
        ood_flag = bool(self.ood is not None and distance > self.ood.threshold)
        collapsed = [self.bundle.collapse_reason] if self.bundle.collapse_reason else []  # no image can pass
        warnings = list(self.notes) + collapsed + problems + lung_problems
        if ood_flag and self.ood is not None:
            warnings.append(f"out of distribution: score {distance:.1f} > {self.ood.threshold:.1f} "
                            f"({reason}; nearest training source {nearest})")
        if not np.isfinite(probability):
            warnings.append("model output is not a finite probability")
        failed = bool(warnings[len(self.notes):])
        threshold = self.threshold.value
        decision = self.bundle.classes[positive] if probability >= threshold else self.bundle.classes[1 - positive]
        if failed and not (self.decide_anyway and np.isfinite(probability)):
            decision = ""  # an implausible image gets no decision unless the user asks for one
        return {
            "file": str(path),
            "status": ("flagged" if decision else "rejected") if failed else "ok",
            "probability": round(probability, 6) if np.isfinite(probability) else None,
            "decision": decision, "threshold": threshold, "threshold_rule": self.threshold.rule.value,
            "lung_area": round(float(mask.mean()), 4), "lung_check": "ok" if not lung_problems else "implausible",
            "ood_distance": None if np.isnan(distance) else round(float(distance), 3),
            "ood_threshold": None if self.ood is None else round(self.ood.threshold, 3),
            "nearest_source": nearest, "ood_flag": ood_flag, "warnings": "; ".join(warnings),
            "overlay": overlay, "error": ""}

    def score(self, paths: Sequence[Path], *, evidence_dir: Path | None = None,
              start_index: int = 0) -> Iterator[dict[str, Any]]:
        """One CSV row per path (unreadable files included, with their error)."""
        displays: list[np.ndarray] | None = [] if evidence_dir is not None else None
        kept, images, masks, errors = self.prepare(paths, displays=displays)
        error_iter = iter(errors)
        rows: dict[int, dict[str, Any]] = {}
        if len(kept):
            probabilities, distances, nearest, reasons, maps = self._model_outputs(images,
                                                                                  evidence=evidence_dir is not None)
            for row_index, position in enumerate(kept):
                path, probability = paths[position], float(probabilities[row_index])
                overlay = ""
                if maps is not None and evidence_dir is not None and displays is not None:  # all three: evidence
                    target = evidence_dir / f"{start_index + position:06d}_{_safe_stem(path)}.png"
                    save_overlay(images[row_index, 0].numpy(), maps[row_index], masks[row_index],
                                 f"{path.name[:40]}  p={probability:.2f}", target, display=displays[row_index])
                    overlay = str(target)
                rows[position] = self._row(path, self.input_problems[row_index], masks[row_index], probability,
                                           distances[row_index], nearest[row_index], reasons[row_index], overlay)
        for position, path in enumerate(paths):
            if position in rows:
                yield rows[position]
            else:
                yield {**dict.fromkeys(COLUMNS, ""), "file": str(path), "status": "unreadable",
                       "error": next(error_iter, "")}


def predict_files(model: str | Path, inputs: Sequence[str | Path], out: str | Path, *, batch_size: int = 32,
                  evidence: bool = True, segmenter: str | Path | None = None, strict: bool = False,
                  progress: bool = False, threshold: ThresholdRequest | ThresholdRule | str = ThresholdRule.BUNDLE,
                  lung_convention: str | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                  decide_anyway: bool = False) -> PredictionSummary:
    """Score every image of ``inputs`` into ``out/predictions.csv`` (+ ``out/evidence/*.png``).
    ``out`` must not overlap the inputs; the previous result is replaced only when this run completes
    (:class:`unveil.io.outputs.OutputFolder`). Images failing the lung or OOD check are ``rejected``
    (no decision) unless ``decide_anyway``; ``max_pixels`` refuses larger images before decoding.
    Decisions at the bundle's threshold, or the one ``threshold`` (a ThresholdRequest or a bare rule) asks for
    (``fixed``: its value; ``youden``/``sensitivity``: on the bundle's validation predictions, as ``unveil
    evaluate`` does)."""
    files = expand_inputs(inputs)
    if not files:
        raise PredictionError("no image files found in " + ", ".join(map(str, inputs)))
    out = Path(out)
    bundle = load_bundle(model)
    choice = bundle.resolve_threshold(threshold)
    predictor = Predictor(bundle, segmenter=segmenter, threshold=choice, lung_convention=lung_convention,
                          max_pixels=max_pixels, decide_anyway=decide_anyway)
    summary = PredictionSummary(csv=out / "predictions.csv", threshold=choice.as_dict())
    with OutputFolder(out, [*inputs, model]) as staged:  # the bundle is an input too
        evidence_dir = staged.stage / "evidence" if evidence else None
        if evidence_dir is not None:
            evidence_dir.mkdir()
        with (staged.stage / "predictions.csv").open("w", newline="", encoding="utf-8") as stream, \
                progress_bar(total=len(files), unit="img", desc="predict", enabled=progress) as bar:
            writer = csv.DictWriter(stream, fieldnames=COLUMNS, lineterminator="\n")
            writer.writeheader()
            for start in range(0, len(files), batch_size):
                batch = files[start:start + batch_size]
                for row in predictor.score(batch, evidence_dir=evidence_dir, start_index=start):
                    if row["overlay"]:  # the path it will have once the run completes
                        row["overlay"] = str(out / "evidence" / Path(row["overlay"]).name)
                    writer.writerow(row)
                    if row["status"] == "unreadable":
                        summary.unreadable.append(row["error"])
                        continue
                    summary.scored += 1
                    summary.positives += int(row["decision"] == predictor.bundle.description.get("positive_class"))
                    summary.ood_flagged += int(bool(row["ood_flag"]))
                    summary.lung_flagged += int(row["lung_check"] != "ok")
                    summary.rejected += int(row["status"] == "rejected")
                stream.flush()
                bar.update(len(batch))
        write_text_atomic(staged.stage / "unreadable.txt", "".join(f"{line}\n" for line in summary.unreadable))
    for line in summary.unreadable:  # the CLI prints them once; library users find them in the summary
        log.debug("skipped: %s", line)
    if strict and summary.unreadable:
        raise PredictionError(f"{len(summary.unreadable)} file(s) could not be read:\n  "
                              + "\n  ".join(summary.unreadable))
    return summary
