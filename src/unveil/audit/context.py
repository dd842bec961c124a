"""What every audit test reads: the audited images, gathered once (:func:`gather`), and the run's
:class:`AuditContext` (those images, the settings, the output folder and the costly resources computed once).

Every test set unseen by the model is rebuilt (a composition's test split from the bundle's provenance, or a whole
``SOURCE:PATH`` dataset), pre-processed as the model was trained (cached) and given its lung masks; a record id
that two datasets share (the same relative path under two roots) is made distinct, so two images are never one.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from unveil.audit.fingerprint import property_table
from unveil.audit.settings import AuditError, AuditThresholds
from unveil.data.spec import DataSpec
from unveil.evaluation.evaluate import cached_images, training_cache, unseen_test_set
from unveil.explain.saliency import gradcam_maps
from unveil.preprocess.cache import preprocess_records
from unveil.training.bundle import ModelBundle
from unveil.training.data import ImageSet
from unveil.training.loop import encoder_features, probabilities_from_features


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
    seen: dict[str, Any] = {}
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



@dataclass(frozen=True)
class OwnSplit:
    """The images the data tests (acquisition fingerprint, source discovery) read: the model's own test split, or
    every audited image when the audit has none."""

    chosen: np.ndarray  # bool, one per audited image
    scope: str  # "own test split" or "all audited images": how verdicts name these images
    records: pd.DataFrame  # their records, index 0..n-1


@dataclass
class AuditContext:
    """What the audit tests read (:data:`unveil.audit.protocol.RESOURCES`): the gathered images, the run's settings
    and output folder, and the costly resources (features, probabilities, Grad-CAM maps, file properties), each
    computed once, when the first test that needs it asks. No test changes any of it."""

    audited: AuditedImages
    out: Path
    thresholds: AuditThresholds = AuditThresholds()
    seed: int = 0
    resamples: int = 1000
    workers: int = 1
    saliency_samples: int = 4

    @property
    def bundle(self) -> ModelBundle:
        return self.audited.bundle

    @property
    def records(self) -> pd.DataFrame:
        return self.audited.records

    @property
    def images(self) -> ImageSet:
        return self.audited.images

    @property
    def lungs(self) -> np.ndarray:
        return self.audited.lungs

    @property
    def model_masks(self) -> np.ndarray | None:
        return self.audited.model_masks

    @property
    def sets(self) -> dict[str, set[str]]:
        """The record ids of each audited set (the model's own test split: :attr:`own`)."""
        return self.audited.members

    @property
    def own(self) -> str | None:
        return self.audited.own

    @property
    def is_positive(self) -> np.ndarray:
        return self.audited.is_positive

    @property
    def groups(self) -> np.ndarray:
        return self.audited.groups

    @cached_property
    def features(self) -> np.ndarray:
        """The encoder features of every image (one pass of the encoder)."""
        bundle = self.bundle
        return encoder_features(bundle.model, self.images.images, *bundle.normalization)

    @cached_property
    def probability(self) -> np.ndarray:
        """The model's probability of COVID+ per image, from the features (no second encoder pass)."""
        return probabilities_from_features(self.bundle.model, self.features)[:, self.bundle.positive_column]

    @cached_property
    def saliency_maps(self) -> np.ndarray:
        """Grad-CAM maps of the COVID+ output (MONAI, :mod:`unveil.explain`), one per image."""
        return gradcam_maps(self.bundle, self.images.images, self.bundle.positive_column)

    @cached_property
    def own_split(self) -> OwnSplit:
        chosen = self.records["record_id"].isin(self.sets.get(self.own, set())).to_numpy()  # type: ignore[arg-type]
        scope = "own test split" if chosen.any() else "all audited images"
        chosen = chosen if chosen.any() else np.ones(len(self.records), dtype=bool)
        return OwnSplit(chosen, scope, self.records[chosen].reset_index(drop=True))

    @cached_property
    def file_properties(self) -> tuple[pd.DataFrame, list[str]]:
        """What the headers of the :attr:`own_split` files say (:func:`unveil.audit.fingerprint.property_table`),
        and the files that could not be read."""
        return property_table(self.own_split.records)
