"""Refit a bundle's out-of-distribution reference from its own training run.

The reference itself (what it measures, how it is fitted, saved and loaded) is :mod:`unveil.training.ood`,
fitted at the end of every training run; refitting rebuilds the training composition and reads the
pre-processing cache, which needs the evaluation layer, so it lives here, above both.
"""

from __future__ import annotations

from pathlib import Path

from unveil.data.compose import compose, load_recipes
from unveil.evaluation.evaluate import cached_images, training_bindings, training_cache, training_split_table
from unveil.training.bundle import BundleError, load_bundle
from unveil.training.loop import encoder_features
from unveil.training.ood import FALSE_ALARM_TARGET, OodReference, fit_ood_reference


def refit_ood_reference(model: str | Path, *, false_alarm: float = FALSE_ALARM_TARGET) -> OodReference:
    """Fit a bundle's reference again from its own training run (the composition rebuilt from its provenance,
    images from its pre-processing cache) and save it in the bundle: for bundles whose reference is missing or
    outdated. Only for COVID classifiers trained on a composition (`unveil train`)."""
    bundle = load_bundle(model)
    provenance = bundle.description.get("provenance", {})
    described = provenance.get("data", {})
    if "recipe" not in described:
        raise BundleError(f"{bundle.path}: not trained on a composition; its reference cannot be rebuilt")
    recipe = load_recipes(None).recipe(described["recipe"])
    bindings = training_bindings(bundle)
    composition = compose(recipe, {role: bindings[role].load() for role in recipe.roles},
                          seed=int(provenance.get("seed", 0)), test_fraction=described.get("test_fraction", 0.3),
                          val_fraction=described.get("val_fraction", 0.2))
    split_file = bundle.directory.parent / "splits.csv"
    recorded = training_split_table(bundle)
    if recorded is not None:
        rebuilt = composition.records.astype({"record_id": str})
        if set(zip(recorded["record_id"], recorded["split"], strict=True)) != \
                set(zip(rebuilt["record_id"], rebuilt["split"], strict=True)):
            raise BundleError(f"{split_file}: the composition rebuilt from the bundle's provenance has other splits "
                              "(data changed?); the reference was not refitted")
    sets = {split: cached_images(bundle, composition.split(split), cache=training_cache(bundle))[0]
            for split in ("train", "val")}
    features = {split: encoder_features(bundle.model, s.images, *bundle.normalization) for split, s in sets.items()}
    reference = fit_ood_reference(features["train"], sets["train"].records["source"].to_numpy(), features["val"],
                                  sets["train"].images, sets["val"].images, false_alarm=false_alarm)
    reference.save(bundle.directory)
    return reference
