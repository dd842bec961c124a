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
audit: {compositions: [AB, AC], test_sets: [AB, AC], masks: segment, thresholds: {occlusion_auc: 0.7}}
jobs: 1                     # cells trained in parallel processes
```
Relative paths are resolved against the experiment file's folder.

Every section is a typed dataclass below (``training`` takes the fields of
:class:`~unveil.training.config.TrainConfig`, ``audit.thresholds`` those of
:class:`~unveil.audit.run.AuditThresholds`). A file with an unknown key, a value of the wrong type or
a composition whose roles have no data is refused with one error naming the file, the line and the
key path. Keys must be plain names: YAML 1.1 reads ``on``, ``off``, ``yes``, ``no`` as booleans, so
such keys are refused with an explanation (the audit's test sets are ``test_sets``, not ``on``).
"""

from __future__ import annotations

import typing
from dataclasses import MISSING, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, Literal

import yaml

from unveil.audit.run import MASK_SOURCES, AuditThresholds
from unveil.data.compose import RecipeBook, RecipeError, load_recipes
from unveil.data.spec import DataSpec
from unveil.errors import UnveilError
from unveil.preprocess.cache import EQUALIZATIONS, MASK_MODES, PreprocessSettings
from unveil.thresholds import ThresholdRule
from unveil.training.config import ConfigError, TrainConfig

#: the roles a synthetic benchmark binds
SYNTHETIC_ROLES = ("A", "B", "C", "D")
#: TrainConfig fields an experiment sets itself (from grid.architectures, seed, preprocess.size)
SET_BY_EXPERIMENT = {"architecture": "grid.architectures", "seed": "seed", "image_size": "preprocess.size"}
#: PreprocessSettings fields that are computed, never written by hand
COMPUTED_PREPROCESS = ("model_sha256",)
STRING_TAG = "tag:yaml.org,2002:str"


class ExperimentError(UnveilError, ValueError):
    """An invalid experiment file (the message names the file, the line and the key)."""


@dataclass(frozen=True)
class DataRole:
    """One role's dataset: a loader (``unveil data check`` names them), its root and loader options."""

    source: str
    path: str
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SyntheticData:
    """A synthetic benchmark generated into OUT/data, binding roles A, B, C and D."""

    preset: str = "paper"
    scale: float = 1.0
    image_size: int | None = None  # None: the preset's


@dataclass(frozen=True)
class PretrainingRun:
    """One pre-trained encoder: the roles it learns from (default: its label) and TrainConfig overrides."""

    data: list[str] | None = None
    training: dict[str, Any] = field(default_factory=dict)
    classes: list[str] | None = None  # None: the source's default classes


@dataclass(frozen=True)
class Grid:
    """The training cells (architecture x encoder x composition) and the test sets every cell meets."""

    architectures: list[str]
    compositions: list[str]
    tests: list[str]
    encoders: list[str] = field(default_factory=lambda: ["none"])


@dataclass(frozen=True)
class EvaluationSettings:
    """How every cell is scored on every test set (``unveil evaluate``'s options)."""

    resamples: int = 2000
    threshold_rule: str = "bundle"
    threshold: float = 0.5
    target_sensitivity: float = 0.9


@dataclass(frozen=True)
class AuditSettings:
    """Which cells are audited (by training composition, or ``all``) and on which test sets."""

    compositions: list[str] | Literal["all"] = field(default_factory=list)
    test_sets: list[str] | None = None  # None: each cell's own training composition
    masks: str = "segment"
    resamples: int = 1000
    saliency_samples: int = 2
    thresholds: AuditThresholds = field(default_factory=AuditThresholds)


@dataclass(frozen=True)
class ExperimentFile:
    """The top level of an experiment file."""

    data: dict[str, Any]
    grid: Grid
    name: str | None = None
    description: str = ""
    seed: int = 0
    recipes: str | None = None
    preprocess: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    pretraining: dict[str, PretrainingRun] = field(default_factory=dict)
    evaluation: EvaluationSettings = field(default_factory=EvaluationSettings)
    audit: AuditSettings = field(default_factory=AuditSettings)
    jobs: int = 1


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

    def train_config(self, architecture: str, overrides: dict[str, Any] | None = None) -> TrainConfig:
        values = {**self.training, **(overrides or {}), "architecture": architecture, "seed": self.seed,
                  "image_size": self.preprocess.size}
        try:
            return TrainConfig.from_dict(values)
        except (ConfigError, TypeError) as error:
            raise ExperimentError(f"{self.source}: training options: {error}") from None

    def cells(self) -> list[tuple[str, str, str]]:
        """(architecture, encoder, composition) of every training cell."""
        return [(a, e, c) for a in self.architectures for e in self.encoders for c in self.compositions]

    def recipe_book(self) -> RecipeBook:
        return load_recipes(self.recipes)

    def pretraining_roles(self, label: str) -> list[str]:
        return list(self.pretraining[label].data or [label])


SHIPPED = ("demo", "paper")


def experiment_path(name: str | Path) -> Path:
    """A file path, or the name of a shipped experiment (``demo``, ``paper``)."""
    path = Path(name)
    if not path.exists() and str(name) in SHIPPED:
        return Path(__file__).with_name(f"{name}.yaml")
    return path


class _Where:
    """Turns a key path into ``FILE:LINE: key.path: problem`` using the YAML node tree's marks."""

    def __init__(self, origin: str, root: yaml.Node) -> None:
        self.origin, self.root = origin, root

    def line(self, path: tuple[Any, ...]) -> int:
        node = self.root
        for part in path:
            if isinstance(node, yaml.MappingNode):
                match = next((value for key, value in node.value if key.value == str(part)), None)
                if match is None:
                    break
                node = match
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
                node = node.value[part]
            else:
                break
        return node.start_mark.line + 1

    def error(self, path: tuple[Any, ...], problem: str) -> ExperimentError:
        key = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")
        return ExperimentError(f"{self.origin}:{self.line(path)}: {key + ': ' if key else ''}{problem}")


def _check_keys(node: yaml.Node, path: tuple[Any, ...], where: _Where) -> None:
    """Every mapping key is a plain string, and appears once (PyYAML silently keeps the last)."""
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key, value in node.value:
            if key.tag == "tag:yaml.org,2002:merge":
                continue
            if key.tag != STRING_TAG:
                read = yaml.safe_load(key.value) if isinstance(key, yaml.ScalarNode) else key.value
                kind = "boolean" if isinstance(read, bool) else type(read).__name__
                raise ExperimentError(
                    f"{where.origin}:{key.start_mark.line + 1}: {'.'.join(map(str, path)) or 'top level'}: the key "
                    f"{key.value!r} is read by YAML as the {kind} {read!r}, not as a name (YAML 1.1 reads on, off, "
                    "yes, no, true, false as booleans and digits as numbers). Use a plain name (the audit's test "
                    f"sets are `test_sets:`) or quote it ('{key.value}':).")
            if key.value in seen:
                place = ".".join(map(str, (*path, key.value)))
                raise ExperimentError(f"{where.origin}:{key.start_mark.line + 1}: {place}: this key appears twice "
                                      "in the same mapping (YAML would silently keep the last)")
            seen.add(key.value)
            _check_keys(value, (*path, key.value), where)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _check_keys(item, (*path, index), where)


def _typed(kind: Any, value: Any, path: tuple[Any, ...], where: _Where) -> Any:
    """``value`` checked against the type annotation ``kind`` (strict: no string-to-number, no bool-as-int)."""
    if kind is Any:
        return value
    from pydantic import TypeAdapter, ValidationError

    try:
        return TypeAdapter(kind).validate_python(value, strict=True)
    except ValidationError as error:
        problems = error.errors()
        inner = tuple(p for p in problems[0]["loc"] if isinstance(p, int))
        expected = " or ".join(dict.fromkeys(p["msg"].removeprefix("Input should be ") for p in problems))
        raise where.error((*path, *inner), f"should be {expected}; got {value!r}") from None


def _section(cls: type, value: Any, path: tuple[Any, ...], where: _Where, *,
             exclude: dict[str, str] | None = None) -> Any:
    """A mapping checked against dataclass ``cls``: known keys, required keys, typed values (nested)."""
    exclude = exclude or {}
    names = [f.name for f in fields(cls) if f.init and f.name not in exclude]
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise where.error(path, f"should be a mapping of {', '.join(names)}; got {value!r}")
    for key in value:
        if key in exclude:
            raise where.error((*path, key), f"not set here: {exclude[key]}")
        if key not in names:
            raise where.error((*path, key), f"unknown key; known: {', '.join(names)}")
    required = [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING]
    missing = [name for name in required if name not in value]
    if missing:
        raise where.error(path, f"missing key(s) {', '.join(missing)}")
    hints = typing.get_type_hints(cls)
    values = {}
    for key, item in value.items():
        kind = hints[key]
        if is_dataclass(kind):
            values[key] = _section(kind, item, (*path, key), where)
        elif typing.get_origin(kind) is dict and is_dataclass(typing.get_args(kind)[1]):
            entries = _typed(dict[str, Any], item if item is not None else {}, (*path, key), where)
            values[key] = {name: _section(typing.get_args(kind)[1], entry, (*path, key, name), where)
                           for name, entry in entries.items()}
        else:
            values[key] = _typed(kind, item, (*path, key), where)
    try:
        return cls(**values)
    except (ConfigError, ValueError, TypeError) as error:
        raise where.error(path, str(error)) from None


def _choice(value: Any, allowed: tuple[str, ...], path: tuple[Any, ...], where: _Where) -> None:
    if value not in allowed:
        raise where.error(path, f"should be one of {', '.join(allowed)}; got {value!r}")


def _training(values: dict[str, Any], path: tuple[Any, ...], where: _Where) -> dict[str, Any]:
    """TrainConfig options: the keys are TrainConfig's fields (less those the experiment sets), typed."""
    hints = typing.get_type_hints(TrainConfig)
    known = [f.name for f in fields(TrainConfig) if f.name not in SET_BY_EXPERIMENT]
    checked = {}
    for key, value in values.items():
        if key in SET_BY_EXPERIMENT:
            raise where.error((*path, key), f"not set here: it comes from {SET_BY_EXPERIMENT[key]}")
        if key not in known:
            raise where.error((*path, key), f"unknown training option; known: {', '.join(known)}")
        checked[key] = _typed(hints[key], value, (*path, key), where)
    return checked


def _read(path: Path) -> tuple[dict[str, Any], _Where]:
    """The document and its node tree (for line numbers); keys checked before anything is built."""
    origin = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ExperimentError(f"{origin}: experiment file not found") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ExperimentError(f"{origin}: unreadable experiment file ({error})") from None
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        if root is None or not isinstance(root, yaml.MappingNode):
            raise ExperimentError(f"{origin}: an experiment file is a mapping (name, data, grid, ...)")
        where = _Where(origin, root)
        _check_keys(root, (), where)
        document = loader.construct_document(root)
    except yaml.YAMLError as error:
        raise ExperimentError(f"{origin}: not valid YAML ({error})") from None
    finally:
        loader.dispose()
    return document, where


def _roles_bound(names: list[str], book: RecipeBook, bound: set[str], path: tuple[Any, ...], where: _Where,
                 what: str) -> None:
    for index, name in enumerate(names):
        if name not in book.recipes:
            raise where.error((*path, index), f"unknown composition {name!r}; known: {', '.join(book.recipes)}")
        missing = [role for role in book.recipe(name).roles if role not in bound]
        if missing:
            raise where.error((*path, index), f"{what} {name} needs data for role(s) {', '.join(missing)}, which "
                                              f"data does not bind (bound: {', '.join(sorted(bound)) or 'none'})")


def load_experiment(path: str | Path, *, seed: int | None = None) -> Experiment:
    """Read and check an experiment file (or a shipped one by name); ``seed`` overrides the file's."""
    path = experiment_path(path)
    document, where = _read(path)
    top = _section(ExperimentFile, document, (), where)
    base = path.parent

    def resolve(text: str) -> str:
        root = Path(text).expanduser()
        return str(root if root.is_absolute() else base / root)

    data: dict[str, DataSpec] = {}
    synthetic = None
    for role, spec in top.data.items():
        if role == "synthetic":
            synthetic = _section(SyntheticData, spec, ("data", role), where)
        else:
            entry = _section(DataRole, spec, ("data", role), where)
            data[role] = DataSpec(entry.source, resolve(entry.path), dict(entry.options))
    if synthetic is None and not data:
        raise where.error(("data",), "needs datasets (A, B, C, D) or a synthetic benchmark")
    bound = set(data) | (set(SYNTHETIC_ROLES) if synthetic is not None else set())

    preprocess = _section(PreprocessSettings, top.preprocess, ("preprocess",), where,
                          exclude={name: "computed from the model" for name in COMPUTED_PREPROCESS})
    _choice(preprocess.equalize, EQUALIZATIONS, ("preprocess", "equalize"), where)
    _choice(preprocess.mask, MASK_MODES, ("preprocess", "mask"), where)
    if preprocess.model is not None:
        preprocess = replace(preprocess, model=resolve(preprocess.model))

    recipes = Path(resolve(top.recipes)) if top.recipes is not None else None
    try:
        book = load_recipes(recipes)
    except RecipeError as error:
        raise where.error(("recipes",), str(error)) from None

    grid = top.grid
    for index, encoder in enumerate(grid.encoders):
        if encoder != "none" and encoder not in top.pretraining:
            raise where.error(("grid", "encoders", index), f"encoder {encoder} has no pretraining entry "
                                                           f"(pretraining defines: {', '.join(top.pretraining)})")
    _roles_bound(grid.compositions, book, bound, ("grid", "compositions"), where, "composition")
    _roles_bound(grid.tests, book, bound, ("grid", "tests"), where, "test set")
    training = _training(top.training, ("training",), where)
    for label, run in top.pretraining.items():
        roles = run.data or [label]
        for index, role in enumerate(roles):
            if role not in bound:
                key = ("pretraining", label, "data", index) if run.data else ("pretraining", label)
                raise where.error(key, f"pre-training on role {role}, which data does not bind "
                                       f"(bound: {', '.join(sorted(bound))})")
        _training(run.training, ("pretraining", label, "training"), where)

    if top.jobs < 1:
        raise where.error(("jobs",), f"should be at least 1; got {top.jobs}")
    rules = tuple(rule.value for rule in ThresholdRule)
    _choice(top.evaluation.threshold_rule, rules, ("evaluation", "threshold_rule"), where)
    audit = top.audit
    _choice(audit.masks, MASK_SOURCES, ("audit", "masks"), where)
    if audit.compositions != "all":
        for index, name in enumerate(audit.compositions):
            if name not in grid.compositions:
                raise where.error(("audit", "compositions", index), f"{name} is not a training composition of the "
                                                                    f"grid ({', '.join(grid.compositions)})")
    _roles_bound(list(audit.test_sets or []), book, bound, ("audit", "test_sets"), where, "audit test set")

    experiment = Experiment(
        name=top.name or path.stem, seed=seed if seed is not None else top.seed, data=data, synthetic=synthetic,
        preprocess=preprocess, training=training, pretraining=dict(top.pretraining), encoders=list(grid.encoders),
        architectures=list(grid.architectures), compositions=list(grid.compositions), tests=list(grid.tests),
        evaluation=top.evaluation, audit=audit, jobs=top.jobs, recipes=recipes, source=path, document=document)
    for architecture in experiment.architectures:  # fails early on options TrainConfig refuses together
        try:
            TrainConfig.from_dict({**training, "architecture": architecture, "seed": experiment.seed,
                                   "image_size": preprocess.size})
        except (ConfigError, TypeError) as error:
            raise where.error(("training",), str(error)) from None
        for label, run in top.pretraining.items():
            try:
                TrainConfig.from_dict({**training, **run.training, "architecture": architecture,
                                       "seed": experiment.seed, "image_size": preprocess.size})
            except (ConfigError, TypeError) as error:
                raise where.error(("pretraining", label, "training"), str(error)) from None
    return experiment
