"""Training/test compositions (the paper's Table 1: A, AB, AC, AD, D) from declarative recipes.

A recipe (see ``compositions.yaml``) names roles; the caller binds each role to a record table.
:func:`compose` splits each role's table patient-exclusively and then balances every split.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from unveil.data.leakage import check_leakage
from unveil.data.records import concat_records
from unveil.data.splits import SPLITS, drop_duplicate_images, patient_exclusive_split
from unveil.documents import load_yaml_text, read_document_text
from unveil.errors import UnveilError

Balance = Literal["add_negatives", "subsample", "none"]


class RecipeError(UnveilError, ValueError):
    """A recipe file or a role binding is wrong (the message says which and why)."""


@dataclass(frozen=True)
class Role:
    name: str
    description: str
    default_source: str | None = None


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    bases: tuple[str, ...]
    negatives_from: tuple[str, ...] = ()
    balance: Balance = "subsample"
    positives_from: tuple[str, ...] = ()  # roles contributing only their COVID+ images (a shortcut by design)

    @property
    def roles(self) -> tuple[str, ...]:
        named = self.bases + self.positives_from + self.negatives_from
        return tuple(dict.fromkeys(named))

    @property
    def pooled(self) -> tuple[str, ...]:
        """The roles whose images form the pool every split balances: the bases and the positives-only roles."""
        return self.bases + tuple(r for r in self.positives_from if r not in self.bases)


@dataclass(frozen=True)
class RecipeBook:
    roles: dict[str, Role]
    recipes: dict[str, Recipe]

    def recipe(self, name: str) -> Recipe:
        if name not in self.recipes:
            raise RecipeError(f"unknown composition {name!r}; known: {', '.join(self.recipes)}")
        return self.recipes[name]


def load_recipes(path: str | Path | None = None) -> RecipeBook:
    """Recipes from a YAML file; the shipped Table 1 recipes when ``path`` is None."""
    if path is None:
        text = resources.files("unveil.data").joinpath("compositions.yaml").read_text(encoding="utf-8")
        origin = "unveil/data/compositions.yaml"
    else:
        text = read_document_text(path, RecipeError, "recipe file")
        origin = str(path)
    document = load_yaml_text(text, origin, RecipeError) or {}
    if not isinstance(document, dict):
        raise RecipeError(f"{origin}: a recipe file is a mapping (roles, recipes)")
    roles = {name: Role(name, str(spec.get("description", "")), spec.get("default_source"))
             for name, spec in (document.get("roles") or {}).items()}
    recipes: dict[str, Recipe] = {}
    for name, spec in (document.get("recipes") or {}).items():
        bases = tuple(spec.get("bases") or ())
        negatives = tuple(spec.get("negatives_from") or ())
        positives = tuple(spec.get("positives_from") or ())
        if not bases and not positives:
            raise RecipeError(f"{origin}: recipe {name} names no bases (and no positives_from): it has no COVID+ "
                              "images")
        both = sorted(set(positives) & (set(bases) | set(negatives)))
        if both:
            raise RecipeError(f"{origin}: recipe {name} names role(s) {', '.join(both)} in positives_from and in "
                              "bases or negatives_from; a role contributes both classes (bases) or one")
        balance = spec.get("balance", "subsample")
        if balance not in ("add_negatives", "subsample", "none"):
            raise RecipeError(f"{origin}: recipe {name} has unknown balance {balance!r}")
        if balance == "add_negatives" and not negatives:
            raise RecipeError(f"{origin}: recipe {name} balances with add_negatives but names no negatives_from")
        undefined = [r for r in bases + positives + negatives if roles and r not in roles]
        if undefined:
            raise RecipeError(f"{origin}: recipe {name} uses undefined role(s) {', '.join(undefined)}")
        recipes[str(name)] = Recipe(str(name), str(spec.get("description", "")), bases, negatives, balance,
                                       positives)
    return RecipeBook(roles, recipes)


@dataclass
class Composition:
    """The records of one composition with ``split`` (train/val/test) and ``role`` columns."""

    recipe: Recipe
    seed: int
    records: pd.DataFrame
    warnings: list[str] = field(default_factory=list)

    def split(self, name: str) -> pd.DataFrame:
        return self.records[self.records["split"] == name].reset_index(drop=True)

    def counts(self) -> dict[str, Any]:
        """Per split: totals and COVID+/COVID- counts, overall and by source."""
        summary: dict[str, Any] = {}
        for split in SPLITS:
            part = self.records[self.records["split"] == split]
            by_source = {}
            for source, group in part.groupby("source", sort=True):
                by_source[str(source)] = {"covid+": int((group["covid"] == 1).sum()),
                                          "covid-": int((group["covid"] == 0).sum())}
            summary[split] = {"total": int(len(part)), "covid+": int((part["covid"] == 1).sum()),
                              "covid-": int((part["covid"] == 0).sum()),
                              "patients": int((part["source"] + "::" + part["patient_id"]).nunique()),
                              "by_source": by_source}
        return summary


def _rng(seed: int, *labels: str) -> np.random.Generator:
    """Generator for one purpose, independent of others (string labels hashed with CRC32)."""
    return np.random.default_rng([seed, *(zlib.crc32(label.encode()) for label in labels)])


def _sample(frame: pd.DataFrame, n: int, rng: np.random.Generator) -> pd.DataFrame:
    """``n`` rows without replacement, independent of the incoming row order."""
    ordered = frame.sort_values("record_id").reset_index(drop=True)
    if n >= len(ordered):
        return ordered
    return ordered.iloc[np.sort(rng.choice(len(ordered), size=n, replace=False))]


def split_role(records: pd.DataFrame, role: str, *, seed: int, test_fraction: float,
               val_fraction: float, warnings: list[str] | None = None) -> pd.DataFrame:
    """A role's labelled records with their patient-exclusive split (same for every recipe); duplicate images
    (by resolved path or content) are removed first, each named in ``warnings``."""
    labelled, removed = drop_duplicate_images(records[records["covid"].notna()].reset_index(drop=True))
    if labelled.empty:
        raise RecipeError(f"role {role}: no record with a COVID label to split")
    if warnings is not None:
        warnings.extend(f"role {role}: {message}" for message in removed)
    split = patient_exclusive_split(labelled, seed=zlib.crc32(f"{seed}:{role}".encode()),
                                    test_fraction=test_fraction, val_fraction=val_fraction)
    return labelled.assign(split=split.to_numpy(), role=role)


def compose(recipe: Recipe, tables: dict[str, pd.DataFrame], *, seed: int, test_fraction: float = 0.3,
            val_fraction: float = 0.2) -> Composition:
    """Build ``recipe`` from record tables bound to its roles (``{"A": records, "B": records}``)."""
    missing = [role for role in recipe.roles if role not in tables]
    if missing:
        raise RecipeError(f"composition {recipe.name} needs data for role(s) {', '.join(missing)}")
    warnings: list[str] = []
    split_tables = {}
    for role in recipe.roles:
        table = tables[role]
        unlabelled = int(table["covid"].isna().sum())
        if unlabelled:
            warnings.append(f"role {role}: {unlabelled} record(s) without a COVID label left out")
        if role not in recipe.pooled:
            table = table[table["covid"] == 0]
        split = split_role(table, role, seed=seed, test_fraction=test_fraction, val_fraction=val_fraction,
                           warnings=warnings)
        if role in recipe.positives_from:  # split first, as in a recipe where it is a base: the same test part
            split = split[split["covid"] == 1].reset_index(drop=True)
        split_tables[role] = split
    parts = []
    for split in SPLITS:
        rng = _rng(seed, recipe.name, split)
        pool = concat_records(t[t["split"] == split] for r, t in split_tables.items() if r in recipe.pooled)
        positives, negatives = pool[pool["covid"] == 1], pool[pool["covid"] == 0]
        if recipe.balance == "subsample" or (recipe.balance == "add_negatives" and len(negatives) > len(positives)):
            size = min(len(positives), len(negatives))
            positives, negatives = _sample(positives, size, rng), _sample(negatives, size, rng)
        elif recipe.balance == "add_negatives":
            deficit = len(positives) - len(negatives)
            donors = [split_tables[r][split_tables[r]["split"] == split] for r in recipe.negatives_from]
            shares = [deficit // len(donors) + (1 if i < deficit % len(donors) else 0) for i in range(len(donors))]
            added = []
            for role, donor, share in zip(recipe.negatives_from, donors, shares, strict=True):
                if share > len(donor):
                    warnings.append(f"{split}: role {role} has {len(donor)} COVID- image(s), {share} needed; "
                                    "the split stays unbalanced")
                added.append(_sample(donor, share, rng))
            negatives = concat_records([negatives, *added])
        parts.append(concat_records([positives, negatives]))
    records = concat_records(parts)
    check_leakage(records)
    return Composition(recipe, seed, records, warnings)
