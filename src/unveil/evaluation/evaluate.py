"""Every model against every test set: build the test sets, score them, compute the metrics.

A test set is either a composition's test split (``AB``: rebuilt with the model's own seed and
fractions, so the test part of A is the one the model never saw) or a whole labelled dataset
(``SOURCE:PATH``, e.g. another hospital). Before scoring, the test patients are checked against
the model's own train/val split file: a model is never evaluated on patients it trained on.

A model's compositions are always built with its own role bindings (from its bundle's provenance);
``data`` only adds roles the model was not trained with, unless ``rebind`` replaces them on purpose
(and every row says which roles were rebound). A whole dataset (``SOURCE:PATH``) is also checked for
near-duplicates of the model's training images (perceptual hash; pooled sets such as COVID-QU-Ex re-use
images of other public sets): refused by default, or scored with the copies flagged, or without them
(``duplicates``). Each row names the threshold's rule and, where the threshold is not 0.5, also carries the
threshold-dependent metrics at 0.5 (``m_at_0.5``), and the calibration (ECE, Brier; `.calibration`).
``test_set`` is the name as given (the key of every file and of the results store); ``test_set_label`` is the
short name the tables show (a ``SOURCE:PATH`` set by its role, else its source; `unveil.evaluation.names`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from unveil.data.compose import compose, load_recipes
from unveil.data.near_duplicates import near_duplicates
from unveil.data.records import patient_keys
from unveil.data.spec import DataSpec
from unveil.data.splits import read_split_file
from unveil.errors import UnveilError
from unveil.evaluation.calibration import calibration
from unveil.evaluation.metrics import (
    ThresholdChoice,
    ThresholdRule,
    evaluate_scores,
    metrics_at_paper_threshold,
)
from unveil.evaluation.names import bound_labels
from unveil.evaluation.subgroups import with_record_columns
from unveil.preprocess.cache import preprocess_records
from unveil.progress import bar as progress_bar
from unveil.thresholds import ThresholdRequest
from unveil.training.bundle import BundleError, ModelBundle, load_verified_bundle
from unveil.training.config import ConfigError, TrainConfig
from unveil.training.data import ImageSet, load_image_set

log = logging.getLogger(__name__)


class EvaluationError(UnveilError, ValueError):
    """A test set or a model cannot be evaluated (the message says which and why)."""


DUPLICATE_POLICIES = ("refuse", "flag", "exclude")  #: what is done with external copies of training images


@dataclass
class TestSet:
    name: str
    records: pd.DataFrame
    origin: dict[str, Any]


@dataclass
class EvaluationRun:
    rows: pd.DataFrame  # one row per (model, test set)
    predictions: pd.DataFrame  # one row per (model, test set, image), with its record's sex, age, view, site
    skipped: list[str] = field(default_factory=list)


def model_identity(bundle: ModelBundle) -> dict[str, Any]:
    """How tables name a model: run folder, architecture, pre-trained encoder, training composition, and
    the training seed and recipe key (equal keys: runs that differ only by seed)."""
    provenance = bundle.description.get("provenance", {})
    task = str(provenance.get("task", ""))
    encoder = provenance.get("encoder_init") or {}
    run = bundle.path.parent.name if bundle.path is not None else "model"
    try:
        recipe = TrainConfig.from_dict(dict(provenance.get("config") or {})).recipe_key()
    except (ConfigError, TypeError):
        recipe = ""
    return {"model": run, "architecture": bundle.description["architecture"],
            "encoder": encoder.get("label", "pretrained") if encoder else "none",
            "training_set": task.split(":", 1)[1] if task.startswith("train:") else task or "unknown",
            "model_seed": provenance.get("seed"), "recipe_key": recipe,
            "debias": str((provenance.get("config") or {}).get("debias", "none")), "bundle": str(bundle.path)}


def distinct_names(paths: list[str | Path]) -> dict[str, str]:
    """A short, distinct name per bundle path: its run folder, with as many parent folders as it takes
    to tell two bundles apart (``seed0/AB`` and ``seed1/AB`` rather than ``AB`` twice)."""
    parts = {str(p): Path(p).resolve().parts[:-1] if Path(p).name == "model" else Path(p).resolve().parts
             for p in paths}
    names: dict[str, str] = {}
    for path, own in parts.items():
        depth = 1
        while depth < len(own) and any(other != own and other[-depth:] == own[-depth:] for other in parts.values()):
            depth += 1
        names[path] = "/".join(own[-depth:])
    return names


def training_bindings(bundle: ModelBundle) -> dict[str, DataSpec]:
    """The role -> dataset bindings the model was trained with (from its provenance)."""
    roles = bundle.description.get("provenance", {}).get("data", {}).get("roles", {})
    return {role: DataSpec(spec["source"], spec["root"], dict(spec.get("options") or {}))
            for role, spec in roles.items()}


def training_split_table(bundle: ModelBundle) -> pd.DataFrame | None:
    """The run folder's split file beside the bundle (None without one), checked against the SHA-256 its
    provenance recorded: an edited or replaced split file is a :class:`SplitFileError` naming it."""
    if bundle.path is None or not (bundle.path.parent / "splits.csv").is_file():
        return None
    path = bundle.path.parent / "splits.csv"
    return read_split_file(path, expected_hash=bundle.description.get("provenance", {}).get("split_sha256"),
                           as_text=True)


def training_records(bundle: ModelBundle) -> pd.DataFrame:
    """The model's training and validation images (record id, source, path), from its run folder's split file
    and the datasets of its provenance; empty when the split file is not beside the bundle."""
    table = training_split_table(bundle)
    if table is None:
        return pd.DataFrame(columns=["record_id", "source", "path"])
    fitted = set(table.loc[table["split"].isin(["train", "val"]), "record_id"])
    parts = [spec.load()[["record_id", "source", "path"]] for spec in training_bindings(bundle).values()]
    if not parts:
        return pd.DataFrame(columns=["record_id", "source", "path"])
    records = pd.concat(parts, ignore_index=True).drop_duplicates("record_id")
    return records[records["record_id"].isin(fitted)].reset_index(drop=True)


def _same_dataset(first: DataSpec, second: DataSpec) -> bool:
    return first.source == second.source and Path(first.root).resolve() == Path(second.root).resolve()


@dataclass(frozen=True)
class Bindings:
    """The datasets one model is tested with: its own bindings, roles added by ``data`` and, on purpose
    only, roles rebound by ``data``; ``ignored`` are ``data`` roles the model has bound otherwise."""

    specs: dict[str, DataSpec]
    added: tuple[str, ...] = ()
    rebound: tuple[str, ...] = ()
    ignored: tuple[str, ...] = ()

    def describe(self, roles: list[str] | tuple[str, ...]) -> str:
        """``A=source:root (model); B=... (--data)`` for the roles a test set uses."""
        def origin(role: str) -> str:
            if role in self.rebound:
                return "rebound by --data"
            if role in self.added:
                return "--data"
            return "model's own; --data not used" if role in self.ignored else "model's own"
        return "; ".join(f"{r}={self.specs[r].source}:{self.specs[r].root} ({origin(r)})" for r in roles
                         if r in self.specs)


def model_bindings(bundle: ModelBundle, data: dict[str, DataSpec] | None = None, *,
                   rebind: bool = False) -> Bindings:
    """The model's own role bindings plus ``data``'s other roles; ``rebind`` lets ``data`` replace the
    model's own (a deliberate choice: e.g. the same hospital's data from another export)."""
    own = training_bindings(bundle)
    specs, added, rebound, ignored = dict(own), [], [], []
    for role, spec in (data or {}).items():
        if role not in own:
            specs[role] = spec
            added.append(role)
        elif not _same_dataset(own[role], spec):
            if rebind:
                specs[role] = spec
                rebound.append(role)
            else:
                ignored.append(role)
    return Bindings(specs, tuple(added), tuple(rebound), tuple(ignored))


def build_test_set(name: str, bindings: dict[str, DataSpec], *, seed: int, test_fraction: float = 0.3,
                   val_fraction: float = 0.2, recipes: str | Path | None = None,
                   options: dict[str, Any] | None = None) -> TestSet:
    """``name`` = a composition (its test split) or ``SOURCE:PATH`` (every labelled image of a dataset, read
    with the loader ``options``, e.g. a hospital CSV's ``label_column``)."""
    if ":" in name:
        spec = DataSpec.parse(name, options)
        records = spec.load()
        labelled = records[records["covid"].notna()].reset_index(drop=True)
        if labelled.empty:
            raise EvaluationError(f"test set {name}: no image with a COVID label")
        return TestSet(name, labelled, {"kind": "dataset", "source": spec.source, "root": spec.root,
                                        "unlabelled_left_out": int(len(records) - len(labelled))})
    recipe = load_recipes(recipes).recipe(name)
    missing = [role for role in recipe.roles if role not in bindings]
    if missing:
        raise EvaluationError(f"test set {name} needs data for role(s) {', '.join(missing)}: bind with "
                              f"--data ROLE=SOURCE:PATH")
    tables = {role: bindings[role].load() for role in recipe.roles}
    composition = compose(recipe, tables, seed=seed, test_fraction=test_fraction, val_fraction=val_fraction)
    return TestSet(name, composition.split("test"), {"kind": "composition", "recipe": name, "seed": seed,
                                                     "test_fraction": test_fraction, "val_fraction": val_fraction,
                                                     "roles": {r: bindings[r].source for r in recipe.roles}})


def training_patients(bundle: ModelBundle) -> set[str]:
    """Patients (source::id) of the model's train and val splits, from its run folder's split file."""
    table = training_split_table(bundle)
    if table is None:
        return set()
    fitted = table[table["split"].isin(["train", "val"])]
    return set(fitted["source"] + "::" + fitted["patient_id"])


def training_cache(bundle: ModelBundle) -> Path:
    """The pre-processing cache the model's run used (from its run.meta.json), else RUN/cache."""
    run = bundle.path.parent if bundle.path is not None else Path()
    try:
        return Path(json.loads((run / "run.meta.json").read_text(encoding="utf-8"))["config"]["cache"])
    except (OSError, ValueError, KeyError, TypeError):
        return run / "cache"


def cached_images(bundle: ModelBundle, records: pd.DataFrame, *, cache: str | Path, workers: int = 1,
                  progress: bool = False, strict: bool = False) -> tuple[ImageSet, pd.DataFrame]:
    """The records' images pre-processed with the bundle's settings (cached), COVID labels attached;
    also the cache manifest (its ``mask_path`` holds the lung mask each image was processed with)."""
    report = preprocess_records(records, cache, bundle.preprocess_settings, workers=workers, progress=progress,
                                strict=strict)
    labels = records["covid"].astype("int64").to_numpy()
    images = load_image_set(records, report.manifest, labels, tuple(bundle.classes), size=bundle.image_size)
    return images, report.manifest


def score_records(bundle: ModelBundle, records: pd.DataFrame, *, cache: str | Path, workers: int = 1,
                  progress: bool = False, strict: bool = False) -> tuple[pd.DataFrame, list[str]]:
    """COVID+ ``probability`` and true ``label`` of every record (pre-processed with the bundle's settings)."""
    positive = bundle.positive_index
    if positive is None:
        raise EvaluationError(f"{bundle.path}: a pre-training model (classes {bundle.classes}); evaluate COVID "
                              "classifiers from `unveil train`")
    images, _ = cached_images(bundle, records, cache=cache, workers=workers, progress=progress, strict=strict)
    probabilities = bundle.predict_probabilities(images.images)
    scored = images.records[["record_id", "source", "patient_id"]].assign(
        label=images.labels.numpy(), probability=probabilities[:, positive])
    return scored, images.skipped


def resolve_threshold(bundle: ModelBundle, request: ThresholdRequest | ThresholdRule | str = ThresholdRule.BUNDLE
                      ) -> ThresholdChoice:
    """The decision threshold ``request`` asks for, chosen a priori: the bundle's own (``bundle``), a fixed
    value, or on the model's validation predictions (``youden``, ``sensitivity``)."""
    try:
        return bundle.resolve_threshold(request)
    except BundleError as error:
        raise EvaluationError(str(error)) from None


def unseen_test_set(bundle: ModelBundle, name: str, *, data: dict[str, DataSpec] | None = None,
                    recipes: str | Path | None = None, allow_overlap: bool = False,
                    built: dict[tuple, TestSet] | None = None, rebind: bool = False,
                    options: dict[str, Any] | None = None) -> tuple[TestSet, int]:
    """Test set ``name`` as seen by ``bundle`` (its seed, fractions and own data bindings; ``data`` adds
    roles it lacks, or replaces its own with ``rebind``), refused when it shares patients with the
    model's training/validation split (unless allowed). Returns the test set and the number of shared
    patients; the test set's origin says which dataset each role was bound to and how.
    ``options``: loader options of a ``SOURCE:PATH`` test set. ``built`` memoises test sets."""
    provenance = bundle.description.get("provenance", {})
    described = provenance.get("data", {})
    chosen = model_bindings(bundle, data, rebind=rebind)
    bindings = chosen.specs
    key = (name, int(provenance.get("seed", 0)), described.get("test_fraction", 0.3),
           described.get("val_fraction", 0.2), tuple(sorted((r, s.source, s.root) for r, s in bindings.items())),
           repr(sorted((options or {}).items())))
    built = {} if built is None else built
    if key not in built:
        built[key] = build_test_set(name, bindings, seed=key[1], test_fraction=key[2], val_fraction=key[3],
                                    recipes=recipes, options=options)
    test_set = built[key]
    roles = list(test_set.origin.get("roles", {}))
    test_set = TestSet(test_set.name, test_set.records, {
        **test_set.origin, "bindings": chosen.describe(roles),
        "rebound": [r for r in chosen.rebound if r in roles], "ignored": [r for r in chosen.ignored if r in roles]})
    for role in test_set.origin["ignored"]:
        log.warning("%s: test set %s uses the model's own %s (%s:%s); --data %s is not used for it (--rebind "
                    "replaces it)", bundle.path, name, role, bindings[role].source, bindings[role].root, role)
    overlap = sorted(set(patient_keys(test_set.records)) & training_patients(bundle))
    if overlap and not allow_overlap:
        raise EvaluationError(f"test set {name} shares {len(overlap)} patient(s) with the training/validation "
                              f"split of {model_identity(bundle)['model']} (e.g. {overlap[0]}); a model is only "
                              "tested on unseen patients")
    return test_set, len(overlap)


def _without_training_copies(bundle: ModelBundle, test_set: TestSet, policy: str, *, cache: str | Path,
                             workers: int) -> tuple[pd.DataFrame, set[str]]:
    """The records to score and the ids of those that duplicate a training image (whole datasets only:
    a composition's test split is patient-exclusive by construction and checked by the audit)."""
    if test_set.origin.get("kind") != "dataset":
        return test_set.records, set()
    pairs = near_duplicates(test_set.records, training_records(bundle), cache=cache, workers=workers)
    copies = set(pairs["record_id"])
    if copies and policy == "refuse":
        example = pairs.iloc[0]
        raise EvaluationError(
            f"test set {test_set.name}: {len(copies)} image(s) are near-duplicates of training images of "
            f"{model_identity(bundle)['model']} (e.g. {example['record_id']} ~ {example['training_record_id']}, "
            f"{example['distance']} pHash bits); --duplicates flag scores them (flagged), --duplicates exclude "
            "leaves them out")
    if policy == "exclude":
        return test_set.records[~test_set.records["record_id"].isin(copies)].reset_index(drop=True), copies
    return test_set.records, copies


def evaluate_models(models: list[str | Path], test_sets: list[str], *, data: dict[str, DataSpec] | None = None,
                    cache: str | Path | None = None,
                    threshold: ThresholdRequest | ThresholdRule | str = ThresholdRule.BUNDLE, resamples: int = 2000,
                    seed: int = 0, workers: int = 1, recipes: str | Path | None = None, allow_overlap: bool = False,
                    rebind: bool = False, progress: bool = False, duplicates: str = "refuse",
                    options: dict[str, Any] | None = None) -> EvaluationRun:
    """Evaluate each model on each test set, each model with its own role bindings; ``data`` binds roles
    a model was not trained with (``rebind``: also replaces the model's own, and the rows say so).
    ``threshold``: a :class:`~unveil.thresholds.ThresholdRequest` (or a bare rule): ``bundle`` (the threshold
    chosen at training time), ``fixed`` (its value), ``youden`` or ``sensitivity`` (re-chosen on the model's
    validation predictions).
    ``cache``: pre-processing cache (default: the one the model was trained with).
    ``duplicates``: what to do when a whole dataset holds near-duplicates of the model's training images:
    ``refuse`` (an error naming them), ``flag`` (score them; column ``near_duplicate_of_training``), ``exclude``.
    ``options``: loader options of the ``SOURCE:PATH`` test sets (e.g. a hospital CSV's column names)."""
    if duplicates not in DUPLICATE_POLICIES:
        raise EvaluationError(f"duplicates must be one of {', '.join(DUPLICATE_POLICIES)}; got {duplicates!r}")
    if not models or not test_sets:
        raise EvaluationError("give at least one model and one test set")
    try:
        threshold = ThresholdRequest.of(threshold)
    except ValueError as error:
        raise EvaluationError(str(error)) from None
    names = distinct_names([str(m) for m in models])
    rows, predictions, skipped, roles = [], [], [], list((data or {}).items())
    built: dict[tuple, TestSet] = {}
    steps = progress_bar(total=len(models) * len(test_sets), desc="evaluate", unit="test", enabled=progress)
    for model_path in models:
        bundle = load_verified_bundle(model_path)
        identity = {**model_identity(bundle), "model": names[str(model_path)]}
        chosen = resolve_threshold(bundle, threshold)
        if bundle.collapse_reason:  # still evaluated (its AUC is evidence), but every row says it
            log.warning("%s: %s", identity["model"], bundle.collapse_reason)
        model_cache = cache or training_cache(bundle)
        roles += training_bindings(bundle).items()  # what names a SOURCE:PATH set
        for name in test_sets:
            test_set, overlap = unseen_test_set(bundle, name, data=data, recipes=recipes, allow_overlap=allow_overlap,
                                                built=built, rebind=rebind, options=options)
            row, scored, missed = _scored_test_set(bundle, identity, test_set, overlap, chosen, policy=duplicates,
                                                   cache=model_cache, workers=workers, progress=progress,
                                                   resamples=resamples, seed=seed)
            rows.append(row)
            predictions.append(scored)
            skipped.extend(missed)
            steps.update()
    steps.close()
    return EvaluationRun(_labelled(pd.DataFrame(rows), test_sets, roles), pd.concat(predictions, ignore_index=True),
                         skipped)


def _scored_test_set(bundle: ModelBundle, identity: dict[str, Any], test_set: TestSet, overlap: int,
                     chosen: ThresholdChoice, *, policy: str, cache: str | Path, workers: int, progress: bool,
                     resamples: int, seed: int) -> tuple[dict[str, Any], pd.DataFrame, list[str]]:
    """One model on one test set: its results row, its per-image predictions and the images it skipped."""
    records, copies = _without_training_copies(bundle, test_set, policy, cache=cache, workers=workers)
    scored, missed = score_records(bundle, records, cache=cache, workers=workers, progress=progress)
    scored["near_duplicate_of_training"] = scored["record_id"].isin(copies)
    labels, probabilities = scored["label"].to_numpy(), scored["probability"].to_numpy()
    patients = (scored["source"] + "::" + scored["patient_id"]).to_numpy()
    result = evaluate_scores(labels, probabilities, patients, threshold=chosen, resamples=resamples, seed=seed)
    row = {**identity, "test_set": test_set.name, "test_kind": test_set.origin["kind"],
           "bindings": test_set.origin.get("bindings", ""), "rebound": ",".join(test_set.origin.get("rebound", [])),
           "skipped_images": len(missed), "overlap_patients": overlap, "near_duplicates_of_training": len(copies),
           "near_duplicates_excluded": len(copies) if policy == "exclude" else 0,
           "model_collapsed": bundle.collapse_reason, **result.as_row(),
           **metrics_at_paper_threshold(labels, probabilities), "resamples": resamples, "seed": seed,
           **calibration(labels, probabilities, patients, resamples=resamples, seed=seed).as_row()}
    positive = bundle.positive_column
    decision = np.where(probabilities >= chosen.value, bundle.classes[positive], bundle.classes[1 - positive])
    log.info("%s on %s: balanced accuracy %.3f at threshold %.3f (%s)", identity["model"], test_set.name,
             result.metrics["balanced_accuracy"].value, chosen.value, chosen.description)
    return row, with_record_columns(scored.assign(  # then the record's sex, age, view, site (subgroups)
        decision=decision, model=identity["model"], test_set=test_set.name, threshold=chosen.value,
        threshold_rule=chosen.rule.value), records), missed


def _labelled(rows: pd.DataFrame, test_sets: list[str], roles: list[tuple[str, DataSpec]]) -> pd.DataFrame:
    """``rows`` with ``test_set_label`` after ``test_set``: each set's short name, its role where one of ``roles``
    (the first binding of a role wins) binds the same dataset (:mod:`unveil.evaluation.names`)."""
    bound: dict[str, DataSpec] = {}
    for role, spec in roles:
        bound.setdefault(role, spec)
    labels = bound_labels(test_sets, bound)
    rows.insert(rows.columns.get_loc("test_set") + 1, "test_set_label", rows["test_set"].map(labels))
    return rows
