"""Every model against every test set: build the test sets, score them, compute the metrics.

A test set is either a composition's test split (``AB``: rebuilt with the model's own seed and
fractions, so the test part of A is the one the model never saw) or a whole labelled dataset
(``SOURCE:PATH``, e.g. another hospital). Before scoring, the test patients are checked against
the model's own train/val split file: a model is never evaluated on patients it trained on.
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
from unveil.data.records import patient_keys
from unveil.evaluation.metrics import choose_threshold, evaluate_scores
from unveil.preprocess.cache import preprocess_records
from unveil.progress import bar as progress_bar
from unveil.training.bundle import ModelBundle, load_bundle
from unveil.training.data import ImageSet, load_image_set
from unveil.training.run import DataSpec

log = logging.getLogger(__name__)

THRESHOLD_CHOICES = ("bundle", "fixed", "youden", "sensitivity")


class EvaluationError(ValueError):
    """A test set or a model cannot be evaluated (the message says which and why)."""


@dataclass
class TestSet:
    name: str
    records: pd.DataFrame
    origin: dict[str, Any]


@dataclass
class EvaluationRun:
    rows: pd.DataFrame  # one row per (model, test set)
    predictions: pd.DataFrame  # one row per (model, test set, image)
    skipped: list[str] = field(default_factory=list)


def model_identity(bundle: ModelBundle) -> dict[str, Any]:
    """How tables name a model: run folder, architecture, pre-trained encoder, training composition."""
    provenance = bundle.description.get("provenance", {})
    task = str(provenance.get("task", ""))
    encoder = provenance.get("encoder_init") or {}
    run = bundle.path.parent.name if bundle.path is not None else "model"
    return {"model": run, "architecture": bundle.description["architecture"],
            "encoder": encoder.get("label", "pretrained") if encoder else "none",
            "training_set": task.split(":", 1)[1] if task.startswith("train:") else task or "unknown",
            "bundle": str(bundle.path)}


def training_bindings(bundle: ModelBundle) -> dict[str, DataSpec]:
    """The role -> dataset bindings the model was trained with (from its provenance)."""
    roles = bundle.description.get("provenance", {}).get("data", {}).get("roles", {})
    return {role: DataSpec(spec["source"], spec["root"], dict(spec.get("options") or {}))
            for role, spec in roles.items()}


def build_test_set(name: str, bindings: dict[str, DataSpec], *, seed: int, test_fraction: float = 0.3,
                   val_fraction: float = 0.2, recipes: str | Path | None = None) -> TestSet:
    """``name`` = a composition (its test split) or ``SOURCE:PATH`` (every labelled image of a dataset)."""
    if ":" in name:
        spec = DataSpec.parse(name)
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
    if bundle.path is None or not (bundle.path.parent / "splits.csv").is_file():
        return set()
    table = pd.read_csv(bundle.path.parent / "splits.csv", dtype=str, keep_default_na=False)
    fitted = table[table["split"].isin(["train", "val"])]
    return set(fitted["source"] + "::" + fitted["patient_id"])


def training_cache(bundle: ModelBundle) -> Path:
    """The pre-processing cache the model's run used (from its run.meta.json), else RUN/cache."""
    run = bundle.path.parent if bundle.path is not None else Path(".")
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
    """COVID+ probability of every record (pre-processed with the bundle's own settings)."""
    positive = bundle.positive_index
    if positive is None:
        raise EvaluationError(f"{bundle.path}: a pre-training model (classes {bundle.classes}); evaluate COVID "
                              "classifiers from `unveil train`")
    images, _ = cached_images(bundle, records, cache=cache, workers=workers, progress=progress, strict=strict)
    probabilities = bundle.predict_probabilities(images.images)
    scored = images.records[["record_id", "source", "patient_id"]].assign(
        label=images.labels.numpy(), score=probabilities[:, positive])
    return scored, images.skipped


def resolve_threshold(bundle: ModelBundle, rule: str, *, value: float = 0.5,
                      target_sensitivity: float = 0.9) -> tuple[float, str]:
    """The decision threshold, chosen a priori: the bundle's own, a fixed value, or on the model's
    validation predictions (Youden, or a target sensitivity)."""
    if rule not in THRESHOLD_CHOICES:
        raise EvaluationError(f"threshold rule must be one of {', '.join(THRESHOLD_CHOICES)}; got {rule!r}")
    if rule == "bundle":
        return bundle.threshold, str(bundle.description["threshold"]["rule"])
    if rule == "fixed":
        return choose_threshold(np.array([0, 1]), np.array([0.0, 1.0]), "fixed", value=value)
    path = bundle.path.parent / "val_predictions.csv" if bundle.path is not None else None
    if path is None or not path.is_file():
        raise EvaluationError(f"{bundle.path}: no val_predictions.csv beside the bundle to choose a {rule} threshold")
    validation = pd.read_csv(path)
    column = f"p_{bundle.classes[bundle.positive_index or 0]}"
    try:
        return choose_threshold(validation["label"].to_numpy(), validation[column].to_numpy(), rule,
                                target_sensitivity=target_sensitivity)
    except ValueError as error:
        raise EvaluationError(f"{path}: {error}") from None


def unseen_test_set(bundle: ModelBundle, name: str, *, data: dict[str, DataSpec] | None = None,
                    recipes: str | Path | None = None, allow_overlap: bool = False,
                    built: dict[tuple, TestSet] | None = None) -> tuple[TestSet, int]:
    """Test set ``name`` as seen by ``bundle`` (its seed, fractions and data bindings, ``data`` added),
    refused when it shares patients with the model's training/validation split (unless allowed).
    Returns the test set and the number of shared patients. ``built`` memoises test sets."""
    provenance = bundle.description.get("provenance", {})
    described = provenance.get("data", {})
    bindings = {**training_bindings(bundle), **(data or {})}
    key = (name, int(provenance.get("seed", 0)), described.get("test_fraction", 0.3),
           described.get("val_fraction", 0.2), tuple(sorted((r, s.source, s.root) for r, s in bindings.items())))
    built = {} if built is None else built
    if key not in built:
        built[key] = build_test_set(name, bindings, seed=key[1], test_fraction=key[2], val_fraction=key[3],
                                    recipes=recipes)
    test_set = built[key]
    overlap = sorted(set(patient_keys(test_set.records)) & training_patients(bundle))
    if overlap and not allow_overlap:
        raise EvaluationError(f"test set {name} shares {len(overlap)} patient(s) with the training/validation "
                              f"split of {model_identity(bundle)['model']} (e.g. {overlap[0]}); a model is only "
                              "tested on unseen patients")
    return test_set, len(overlap)


def evaluate_models(models: list[str | Path], test_sets: list[str], *, data: dict[str, DataSpec] | None = None,
                    cache: str | Path | None = None, threshold_rule: str = "bundle", threshold: float = 0.5,
                    target_sensitivity: float = 0.9, resamples: int = 2000, seed: int = 0, workers: int = 1,
                    recipes: str | Path | None = None, allow_overlap: bool = False,
                    progress: bool = False) -> EvaluationRun:
    """Evaluate each model on each test set; ``data`` binds roles the models were not trained with.
    ``cache``: pre-processing cache (default: the one the model was trained with)."""
    if not models or not test_sets:
        raise EvaluationError("give at least one model and one test set")
    rows, predictions, skipped = [], [], []
    built: dict[tuple, TestSet] = {}
    steps = progress_bar(total=len(models) * len(test_sets), desc="evaluate", unit="test", enabled=progress)
    for model_path in models:
        bundle = load_bundle(model_path)
        identity = model_identity(bundle)
        chosen, rule = resolve_threshold(bundle, threshold_rule, value=threshold,
                                         target_sensitivity=target_sensitivity)
        model_cache = cache or training_cache(bundle)
        for name in test_sets:
            test_set, overlap = unseen_test_set(bundle, name, data=data, recipes=recipes, allow_overlap=allow_overlap,
                                                built=built)
            scored, missed = score_records(bundle, test_set.records, cache=model_cache, workers=workers,
                                           progress=progress)
            skipped.extend(missed)
            result = evaluate_scores(scored["label"].to_numpy(), scored["score"].to_numpy(),
                                     (scored["source"] + "::" + scored["patient_id"]).to_numpy(), threshold=chosen,
                                     threshold_rule=rule, resamples=resamples, seed=seed)
            rows.append({**identity, "test_set": name, "test_kind": test_set.origin["kind"],
                         "skipped_images": len(missed), "overlap_patients": overlap, **result.as_row(),
                         "resamples": resamples, "seed": seed})
            predictions.append(scored.assign(model=identity["model"], test_set=name, threshold=chosen))
            log.info("%s on %s: balanced accuracy %.3f", identity["model"], name,
                     result.metrics["balanced_accuracy"].value)
            steps.update()
    steps.close()
    return EvaluationRun(pd.DataFrame(rows), pd.concat(predictions, ignore_index=True), skipped)
