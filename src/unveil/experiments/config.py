"""Experiment files: datasets, pre-processing, pre-training runs and the grid, in one YAML file.

```yaml
name: demo
seed: 0
data:                       # roles A B C D: real datasets ...
  A: {source: hospital-csv, path: /data/corda, options: {label_column: covid}}
  # ... or a synthetic benchmark generated into OUT/data (roles A, B, C, D)
  synthetic: {preset: paper, scale: 1.0, image_size: 256}
recipes: my_recipes.yaml    # optional: custom compositions (default: the paper's Table 1)
preprocess: {size: 128, mask: segment, equalize: global, blur_radius: 3}
training: {epochs: 15, batch_size: 32, threshold_rule: youden}   # TrainConfig options for every run
pretraining:                # encoder label -> the roles it is pre-trained on (+ optional overrides)
  B: {data: [B], training: {epochs: 5}}
grid:
  encoders: [none, B]       # "none" = from scratch
  architectures: [conv8]
  compositions: [AB, AC]    # training compositions (Table 1)
  tests: [A, AB, AC]        # every cell is tested on all of these
evaluation: {resamples: 1000, threshold_rule: bundle}
tracking: {track: [tensorboard, mlflow]}   # optional: TensorBoard / MLflow besides metrics.jsonl (default: none)
audit: {compositions: [AB, AC], test_sets: [AB, AC], mask: segment, thresholds: {occlusion_auc: 0.7}}
jobs: 1                     # cells trained in parallel processes
seeds: [0, 1, 2]            # optional: one full run per seed (OUT/seed-N), Table 2 aggregated over seeds
mitigation: {debias: [end], compositions: [AB]}   # optional: the mitigated arm, compared side by side
```
Relative paths are resolved against the experiment file's folder, except in a shipped experiment
(``demo``, ``paper``, ``public``, ``public-full``), whose data paths resolve against the current
directory (its ``recipes:`` file ships beside it). ``load_experiment(..., data=...)`` (``unveil
reproduce --data ROLE=SOURCE:PATH``) binds or replaces roles.

A role marked ``optional: true`` whose folder does not exist is left out, and so is everything that
needs it (compositions, test sets, encoders, audit sets), each named in ``Experiment.notes``; a
required role's missing folder is refused when the data are read. ``audit.external`` names roles
whose every labelled image is an external audit set (transfer and source verdicts); a cell trained
on such a role leaves it out.

Every section is a typed dataclass below (``training`` takes the fields of
:class:`~unveil.training.config.TrainConfig`, ``audit.thresholds`` those of
:class:`~unveil.audit.run.AuditThresholds`). A file with an unknown key, a value of the wrong type or
a composition whose roles have no data is refused with one error naming the file, the line and the
key path. Keys must be plain names: YAML 1.1 reads ``on``, ``off``, ``yes``, ``no`` as booleans, so
such keys are refused with an explanation (the audit's test sets are ``test_sets``, not ``on``).
"""

from __future__ import annotations

import os
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from unveil.audit.run import MASK_SOURCES
from unveil.data.compose import RecipeBook, RecipeError, load_recipes
from unveil.data.spec import DataSpec
from unveil.experiments.sections import (
    AuditSettings,
    DataRole,
    EvaluationSettings,
    ExperimentFile,
    MitigationSection,
    PretrainingRun,
    SyntheticData,
    TrackingSection,
)
from unveil.preprocess.cache import EQUALIZATIONS, MASK_MODES, PreprocessSettings
from unveil.schema import Problem, SchemaError, Where, check_value, choice, read_document, section
from unveil.thresholds import ThresholdRule
from unveil.training.config import ConfigError, TrainConfig

#: the roles a synthetic benchmark binds
SYNTHETIC_ROLES = ("A", "B", "C", "D")
#: TrainConfig fields an experiment sets itself (from grid.architectures, seed, preprocess.size)
SET_BY_EXPERIMENT = {"architecture": "grid.architectures", "seed": "seed", "image_size": "preprocess.size"}
#: PreprocessSettings fields that are computed, never written by hand
COMPUTED_PREPROCESS = ("model_sha256",)


class ExperimentError(SchemaError):
    """An invalid experiment file (the message names the file, the line and the key)."""


@dataclass
class Experiment:
    name: str
    seed: int
    data: dict[str, DataSpec]
    synthetic: SyntheticData | None
    preprocess: PreprocessSettings
    training: dict[str, Any]
    pretraining: dict[str, PretrainingRun]
    encoders: list[str]
    architectures: list[str]
    compositions: list[str]
    tests: list[str]
    evaluation: EvaluationSettings = field(default_factory=EvaluationSettings)
    audit: AuditSettings = field(default_factory=AuditSettings)
    jobs: int = 1
    recipes: Path | None = None  # custom recipe file; None: the paper's Table 1
    source: Path | None = None
    document: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # what was left out (optional roles not found) and why
    tracking: TrackingSection = field(default_factory=TrackingSection)  # the file's `tracking:` (default: none)
    seeds: list[int] = field(default_factory=list)  # the seeds of the run (one full run each); [] = [seed]
    mitigation: MitigationSection = field(default_factory=MitigationSection)  # the mitigated arm (default: none)

    @property
    def all_seeds(self) -> list[int]:
        """The seeds to run: ``seeds`` when the file lists several, else ``[seed]``."""
        return list(self.seeds) or [self.seed]

    def for_seed(self, seed: int) -> Experiment:
        """This experiment with one seed (one full run of a several-seed experiment)."""
        return replace(self, seed=seed, seeds=[seed])

    def train_config(self, architecture: str, overrides: dict[str, Any] | None = None) -> TrainConfig:
        values = {**self.training, **(overrides or {}), "architecture": architecture, "seed": self.seed,
                  "image_size": self.preprocess.size}
        try:
            return TrainConfig.from_dict(values)
        except (ConfigError, TypeError) as error:
            raise ExperimentError(f"{self.source}: {error}") from None  # "training options: KEY: problem"

    def cells(self) -> list[tuple[str, str, str]]:
        """(architecture, encoder, composition) of every training cell (the unmitigated grid)."""
        return [(a, e, c) for a in self.architectures for e in self.encoders for c in self.compositions]

    def mitigated_cells(self) -> list[tuple[str, str, str, str]]:
        """(architecture, encoder, composition, debias) of every cell of the mitigated arm, after the grid's."""
        return [(a, e, c, d) for d in self.mitigation.debias for a in self.architectures for e in self.encoders
                for c in self.compositions if c in self.mitigation.compositions]

    def recipe_book(self) -> RecipeBook:
        return load_recipes(self.recipes)

    def pretraining_roles(self, label: str) -> list[str]:
        """The roles encoder ``label`` is pre-trained on: its ``data`` (``[]``: none, it is a weights file)."""
        data = self.pretraining[label].data
        return [label] if data is None else list(data)


SHIPPED = ("demo", "paper", "public", "public-full", "public-scale")


def experiment_path(name: str | Path) -> Path:
    """A file path, or the name of a shipped experiment (``demo``, ``paper``, ``public``, ``public-full``,
    ``public-scale``)."""
    path = Path(name)
    if not path.exists() and str(name) in SHIPPED:
        return Path(__file__).with_name(f"{name}.yaml")
    return path


def is_shipped(path: Path) -> bool:
    """Whether ``path`` is one of the experiment files shipped in the package."""
    return path.resolve().parent == Path(__file__).resolve().parent and path.stem in SHIPPED


def _training(values: dict[str, Any], path: tuple[Any, ...], where: Where) -> dict[str, Any]:
    """TrainConfig options: the keys are TrainConfig's fields (less those the experiment sets), typed and in
    range (the checks TrainConfig's annotations declare); every problem at once."""
    hints = typing.get_type_hints(TrainConfig, include_extras=True)
    known = [f.name for f in fields(TrainConfig) if f.name not in SET_BY_EXPERIMENT]
    checked, problems = {}, []
    for key, value in values.items():
        if key in SET_BY_EXPERIMENT:
            problems.append(Problem((*path, key), f"not set here: it comes from {SET_BY_EXPERIMENT[key]}"))
        elif key not in known:
            problems.append(Problem((*path, key), f"unknown training option; known: {', '.join(known)}"))
        else:
            checked[key], found = check_value(hints[key], value, (*path, key))
            problems += found
    where.refuse(problems)
    return checked


def _read(path: Path) -> tuple[dict[str, Any], Where]:
    """The document and its node tree (for line numbers); keys checked before anything is built."""
    document, where = read_document(path, ExperimentError, "experiment file")
    if not isinstance(document, dict):
        raise ExperimentError(f"{path}: an experiment file is a mapping (name, data, grid, ...)")
    return document, where


def _roles_bound(names: list[str], book: RecipeBook, bound: set[str], path: tuple[Any, ...], where: Where,
                 what: str) -> None:
    for index, name in enumerate(names):
        if name not in book.recipes:
            raise where.error((*path, index), f"unknown composition {name!r}; known: {', '.join(book.recipes)}")
        missing = [role for role in book.recipe(name).roles if role not in bound]
        if missing:
            raise where.error((*path, index), f"{what} {name} needs data for role(s) {', '.join(missing)}, which "
                                              f"data does not bind (bound: {', '.join(sorted(bound)) or 'none'})")


def _data(top: ExperimentFile, where: Where, resolve: Callable[[str], str]
          ) -> tuple[dict[str, DataSpec], SyntheticData | None, set[str], set[str]]:
    """The ``data`` section: role bindings, an optional synthetic benchmark, every role bound, and the
    optional roles."""
    data: dict[str, DataSpec] = {}
    optional: set[str] = set()
    synthetic = None
    for role, spec in top.data.items():
        if role == "synthetic":
            synthetic = section(SyntheticData, spec, ("data", role), where)
        else:
            entry = section(DataRole, spec, ("data", role), where)
            data[role] = DataSpec(entry.source, resolve(entry.path), dict(entry.options))
            if entry.optional:
                optional.add(role)
    if synthetic is None and not data:
        raise where.error(("data",), "needs datasets (A, B, C, D) or a synthetic benchmark")
    return data, synthetic, set(data) | (set(SYNTHETIC_ROLES) if synthetic is not None else set()), optional


def _preprocess(top: ExperimentFile, where: Where, resolve: Callable[[str], str]) -> PreprocessSettings:
    preprocess = section(PreprocessSettings, top.preprocess, ("preprocess",), where,
                         exclude=dict.fromkeys(COMPUTED_PREPROCESS, "computed from the model"))
    choice(preprocess.equalize, EQUALIZATIONS, ("preprocess", "equalize"), where)
    choice(preprocess.mask, MASK_MODES, ("preprocess", "mask"), where)
    return replace(preprocess, model=resolve(preprocess.model)) if preprocess.model is not None else preprocess


def _check_grid(top: ExperimentFile, book: RecipeBook, bound: set[str], where: Where) -> None:
    """Encoders have a pre-training entry; compositions and test sets are known and their roles bound."""
    grid = top.grid
    for index, encoder in enumerate(grid.encoders):
        if encoder != "none" and encoder not in top.pretraining:
            raise where.error(("grid", "encoders", index), f"encoder {encoder} has no pretraining entry "
                                                           f"(pretraining defines: {', '.join(top.pretraining)})")
    _roles_bound(grid.compositions, book, bound, ("grid", "compositions"), where, "composition")
    _roles_bound(grid.tests, book, bound, ("grid", "tests"), where, "test set")


def _check_pretraining(top: ExperimentFile, bound: set[str], where: Where) -> None:
    for label, run in top.pretraining.items():
        roles = [label] if run.data is None else run.data
        if not roles and run.init_weights is None:
            raise where.error(("pretraining", label, "data"), "no data to pre-train on and no init_weights to start "
                                                              "from: give one of them")
        for index, role in enumerate(roles):
            if role not in bound:
                key = ("pretraining", label, "data", index) if run.data else ("pretraining", label)
                raise where.error(key, f"pre-training on role {role}, which data does not bind "
                                       f"(bound: {', '.join(sorted(bound))})")
        _training(run.training, ("pretraining", label, "training"), where)


def _weights_resolved(top: ExperimentFile, where: Where, resolve: Callable[[str], str]) -> dict[str, PretrainingRun]:
    """The pre-training entries with their ``init_weights`` resolved like every path, and checked to exist."""
    runs = {}
    for label, run in top.pretraining.items():
        if run.init_weights is not None:
            weights = resolve(run.init_weights)
            if not Path(weights).is_file():
                raise where.error(("pretraining", label, "init_weights"), f"no such weights file: {weights}")
            run = replace(run, init_weights=weights)
        runs[label] = run
    return runs


def _check_seeds_and_mitigation(top: ExperimentFile, where: Where) -> None:
    """``seeds`` distinct; the mitigated arm's compositions are grid compositions, with at least one method."""
    if top.seeds is not None:
        if not top.seeds:
            raise where.error(("seeds",), "lists no seed: give one or more, or leave seeds out (seed: N)")
        repeated = sorted({s for s in top.seeds if top.seeds.count(s) > 1})
        if repeated:
            raise where.error(("seeds",), f"seed(s) {', '.join(map(str, repeated))} listed twice")
    mitigation = top.mitigation
    for index, name in enumerate(mitigation.compositions):
        if name not in top.grid.compositions:
            raise where.error(("mitigation", "compositions", index), f"{name} is not a training composition of "
                                                                      f"the grid ({', '.join(top.grid.compositions)})")
    if bool(mitigation.compositions) != bool(mitigation.debias):
        key = "debias" if mitigation.compositions else "compositions"
        raise where.error(("mitigation", key), "the mitigated arm needs both debias methods and compositions")


def _check_evaluation_and_audit(top: ExperimentFile, book: RecipeBook, bound: set[str], where: Where) -> None:
    """``jobs``, the evaluation's threshold rule and the audit's mask, compositions and test sets."""
    if top.jobs < 1:
        raise where.error(("jobs",), f"should be at least 1; got {top.jobs}")
    choice(top.evaluation.threshold_rule, tuple(rule.value for rule in ThresholdRule),
           ("evaluation", "threshold_rule"), where)
    audit = top.audit
    choice(audit.mask, MASK_SOURCES, ("audit", "mask"), where)
    if audit.compositions != "all":
        for index, name in enumerate(audit.compositions):
            if name not in top.grid.compositions:
                raise where.error(("audit", "compositions", index), f"{name} is not a training composition of the "
                                                                    f"grid ({', '.join(top.grid.compositions)})")
    _roles_bound(list(audit.test_sets or []), book, bound, ("audit", "test_sets"), where, "audit test set")
    for index, role in enumerate(audit.external):
        if role not in bound or role == "synthetic":
            raise where.error(("audit", "external", index), f"external audit set {role!r} is not a role data "
                                                            f"binds (bound: {', '.join(sorted(bound))})")
        options = top.data.get(role, {}).get("options") if isinstance(top.data.get(role), dict) else None
        if options:
            raise where.error(("audit", "external", index), f"role {role} has loader options, but an external "
                                                            "audit set is read as SOURCE:PATH with the loader's "
                                                            "defaults")


def _check_train_configs(experiment: Experiment, top: ExperimentFile, where: Where) -> None:
    """Fail early on options TrainConfig refuses together (for every architecture and pre-training run)."""
    for architecture in experiment.architectures:
        runs: list[tuple[tuple[str, ...], dict[str, Any]]] = [(("training",), {})]
        runs += [(("pretraining", label, "training"), run.training) for label, run in top.pretraining.items()]
        for key, overrides in runs:
            try:
                TrainConfig.from_dict({**experiment.training, **overrides, "architecture": architecture,
                                       "seed": experiment.seed, "image_size": experiment.preprocess.size})
            except (ConfigError, TypeError) as error:
                raise where.error(key, str(error)) from None


def _leave_out_missing(experiment: Experiment, optional: set[str], book: RecipeBook) -> None:
    """Drop the optional roles whose folder does not exist, and everything that needs them (each named in
    ``experiment.notes``); refuse a grid left with no composition or no test set."""
    missing = sorted(role for role in optional if role in experiment.data and
                     not Path(experiment.data[role].root).exists())
    if not missing:
        return
    gone = set(missing)

    def needs(name: str) -> bool:
        return bool(gone & set(book.recipe(name).roles))

    for role in missing:
        spec = experiment.data.pop(role)
        experiment.notes.append(f"optional role {role} ({spec.source}) not found at {spec.root}: left out "
                                f"(bind it with --data {role}={spec.source}:PATH)")
    left: dict[str, dict[str, Iterable[str]]] = {
        "composition": {c: book.recipe(c).roles for c in experiment.compositions if needs(c)},
        "test set": {t: book.recipe(t).roles for t in experiment.tests if needs(t)},
        "encoder": {e: experiment.pretraining_roles(e) for e in experiment.encoders
                    if e != "none" and gone & set(experiment.pretraining_roles(e))}}
    for what, names in left.items():
        for name, roles in names.items():
            experiment.notes.append(f"skipped {what} {name}: needs {', '.join(r for r in roles if r in gone)}")
    experiment.compositions = [c for c in experiment.compositions if not needs(c)]
    experiment.tests = [t for t in experiment.tests if not needs(t)]
    experiment.encoders = [e for e in experiment.encoders if e not in left["encoder"]]
    audit = experiment.audit
    experiment.audit = replace(
        audit, compositions=audit.compositions if audit.compositions == "all" else
        [c for c in audit.compositions if c in experiment.compositions],
        test_sets=None if audit.test_sets is None else [t for t in audit.test_sets if not needs(t)],
        external=[r for r in audit.external if r not in gone])
    arm = experiment.mitigation
    kept = [c for c in arm.compositions if c in experiment.compositions]
    experiment.mitigation = replace(arm, compositions=kept, debias=arm.debias if kept else [])
    if not experiment.compositions or not experiment.tests:
        raise ExperimentError(f"{experiment.source}: without the optional role(s) {', '.join(missing)} the grid "
                              "has no composition or no test set left")


def recipes_path(text: str, folder: Path) -> Path:
    """The ``recipes:`` file, relative to the experiment's folder; a bare name of a recipe file shipped with the
    experiments (``public_recipes.yaml``) that is not there names the shipped one, so a ``--show`` copy runs."""
    path = Path(text).expanduser()
    path = path if path.is_absolute() else folder / path
    if not path.exists() and Path(text).name == text and text.endswith("_recipes.yaml") and \
            Path(__file__).with_name(text).is_file():
        return Path(__file__).with_name(text)
    return path


def load_experiment(path: str | Path, *, seed: int | None = None,
                    data: dict[str, DataSpec] | None = None) -> Experiment:
    """Read and check an experiment file (or a shipped one by name); ``seed`` overrides the file's, ``data``
    binds or replaces roles (``--data``). Relative data paths resolve against the file's folder, or against the
    current directory for a shipped experiment."""
    path = experiment_path(path)
    document, where = _read(path)
    top = section(ExperimentFile, document, (), where)
    data_base = Path.cwd() if is_shipped(path) else path.parent

    def resolve(text: str, base: Path = data_base) -> str:
        root = Path(text).expanduser()
        return os.path.normpath(root if root.is_absolute() else base / root)  # no "x/../" in names and logs

    bindings, synthetic, bound, optional = _data(top, where, resolve)
    for role, spec in (data or {}).items():
        bindings[role] = spec
        optional.discard(role)
    bound |= set(data or {})
    preprocess = _preprocess(top, where, resolve)
    recipes = recipes_path(top.recipes, path.parent) if top.recipes is not None else None
    try:
        book = load_recipes(recipes)
    except RecipeError as error:
        raise where.error(("recipes",), str(error)) from None
    _check_grid(top, book, bound, where)
    training = _training(top.training, ("training",), where)
    _check_pretraining(top, bound, where)
    _check_evaluation_and_audit(top, book, bound, where)
    _check_seeds_and_mitigation(top, where)
    grid = top.grid
    experiment = Experiment(
        name=top.name or path.stem, seed=seed if seed is not None else top.seed, data=bindings, synthetic=synthetic,
        preprocess=preprocess, training=training, pretraining=_weights_resolved(top, where, resolve),
        encoders=list(grid.encoders),
        architectures=list(grid.architectures), compositions=list(grid.compositions), tests=list(grid.tests),
        evaluation=top.evaluation, audit=top.audit, jobs=top.jobs, recipes=recipes, source=path, document=document,
        tracking=top.tracking, seeds=[seed] if seed is not None else list(top.seeds or []),
        mitigation=top.mitigation)
    if seed is None and top.seeds:
        experiment.seed = top.seeds[0]
    _check_train_configs(experiment, top, where)
    _leave_out_missing(experiment, optional, book)
    return experiment
