"""The options shared by several commands, each declared once (name, type, help), and their parsers.

A command takes a shared concept only through the alias below, so sibling commands cannot drift
(tests/test_cli_help.py holds every alias's name, type and help equal wherever it appears).
"""

from __future__ import annotations

import enum
import functools
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from unveil.errors import NotFiniteError, UnveilError, finite
from unveil.thresholds import ThresholdRequest, ThresholdRule, rules_help
from unveil.tracking import TrackingSettings

if TYPE_CHECKING:
    from unveil.training import DataSpec


class CommandLineError(UnveilError, ValueError):
    """A malformed option value (the message names the option and the value)."""


def finite_float(value: Any) -> float:
    """A float option's value: Click's FLOAT accepts ``nan`` and ``inf``, which pass every range check as False,
    so every float option parses with this (``parser=finite_float``; the error names the option)."""
    if not isinstance(value, (int, float)):
        try:
            value = float(str(value).strip())
        except ValueError:
            raise NotFiniteError(f"{value!r} is not a number") from None
    try:
        return finite(value, "value")
    except NotFiniteError:
        raise NotFiniteError(f"{value!r} is not a finite number") from None


# Help is Click's plain formatter (rich_markup_mode=None): it wraps help text to the terminal and never
# cuts an option name, where rich's tables ellipsize long names at 80 columns.
HELP_STYLE: dict[str, Any] = {"rich_markup_mode": None, "no_args_is_help": True}

DataOption = Annotated[list[str] | None, typer.Option(
    "--data", "-d", help="A dataset (repeatable): SOURCE:PATH, or ROLE=SOURCE:PATH on the commands that bind "
                         "roles of a composition (ROLE=PATH: the role's default source).")]
LoaderOption = Annotated[list[str] | None, typer.Option(
    "--option", "-o", help="Dataset loader option (repeatable): KEY=VALUE for the command's SOURCE:PATH "
                           "datasets, ROLE.KEY=VALUE for a role bound with --data ROLE=...; e.g. "
                           "-o label_column=diagnosis.")]
RecipesOption = Annotated[Path | None, typer.Option(
    "--recipes", help="Recipe YAML file of the compositions (default: the paper's Table 1).")]
_SEED = typer.Option("--seed", help="Random seed (same seed, same result).")
SeedOption = Annotated[int, _SEED]
FileSeedOption = Annotated[int | None, _SEED]  # `reproduce`: None keeps the experiment file's seed
WorkersOption = Annotated[int, typer.Option(
    "--workers", help="Worker processes (decoding, rendering or pre-processing images; the result does not "
                      "depend on it).")]
_CACHE = typer.Option(
    "--cache", help="Pre-processing cache folder (content-addressed, shared by runs; default when training: "
                    "OUT/cache, when testing a model: the one it was trained with).")
CacheOption = Annotated[Path | None, _CACHE]
RequiredCacheOption = Annotated[Path, _CACHE]  # `preprocess`: the cache is what it makes
LungModelOption = Annotated[Path | None, typer.Option(
    "--lung-model", help="Lung model: a bundle file, its base name or a `unveil lungs train` run folder "
                         "(default: the one the inputs were made with, else the shipped model).")]
LungConventionOption = Annotated[str | None, typer.Option(
    "--lung-convention", help="Lung-mask convention: visible (lung field, heart excluded; the paper's) or full "
                              "(lung behind the heart included). Default: the lung model's default.")]
MaskOption = Annotated[str, typer.Option(
    "--mask", help="Lung mask: segment (the lung model), truth (the dataset's masks) or none.")]
EqualizeOption = Annotated[str, typer.Option(
    "--equalize", help="Histogram equalization: global, lungs, clahe or none.")]
MaxPixelsOption = Annotated[int, typer.Option(
    "--max-pixels", min=1, help="Refuse images whose header declares more pixels (width x height), before decoding "
                                "(a guard against decompression bombs). Default: 50000000, e.g. 7000 x 7000; the "
                                "largest radiograph detectors give about 4300 x 4300.")]
ImageSizeOption = Annotated[int | None, typer.Option(
    "--image-size", help="Image side in pixels the command works at (no default shown: the configuration's).")]
LearningRateOption = Annotated[float | None, typer.Option(
    "--learning-rate", parser=finite_float, help="Peak learning rate (no default shown: the configuration's).")]
DeviceOption = Annotated[str | None, typer.Option("--device", help="Torch device: auto, cpu, cuda or cuda:N.")]
DebiasOption = Annotated[str | None, typer.Option(
    "--debias", help="Train against the source shortcut: none, balanced (each class x source group drawn equally), "
                     "group-dro (--set debias_eta=0.01) or end (--set end_alpha=1 --set end_beta=1). No default "
                     "shown: the configuration's (none). Judge it by re-auditing the model.")]
ProgressOption = Annotated[bool, typer.Option("--progress/--no-progress", help="Progress bars.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")]
StrictOption = Annotated[bool, typer.Option(
    "--strict", help="Exit with status 1 if any input file is unreadable, missing or invalid.")]
ResamplesOption = Annotated[int, typer.Option(
    "--resamples", help="Bootstrap resamples (of patients) for the 95 % intervals.")]
AllowOverlapOption = Annotated[bool, typer.Option(
    "--allow-overlap", help="Test even on patients of the model's own training or validation split.")]
ThresholdRuleOption = Annotated[ThresholdRule, typer.Option("--threshold-rule", help=rules_help())]
ThresholdOption = Annotated[float | None, typer.Option(
    "--threshold", parser=finite_float,
    help="A fixed decision threshold (implies --threshold-rule fixed; default with fixed: 0.5).")]
TargetSensitivityOption = Annotated[float, typer.Option(
    "--target-sensitivity", parser=finite_float, help="Target for --threshold-rule sensitivity.")]
RebindOption = Annotated[bool, typer.Option(
    "--rebind", help="Let --data replace a role the model was trained with (default: each model keeps its own "
                     "bindings and --data only adds roles it lacks); the rows say which roles were rebound.")]
DuplicatesOption = Annotated[str, typer.Option(
    "--duplicates", help="External images that are near-duplicates of the model's training images: refuse (stop "
                         "with an error), flag (score them; a row column and a warning) or exclude (leave them out).")]


class TrackerName(enum.StrEnum):
    """The experiment trackers of :mod:`unveil.tracking`."""

    tensorboard = "tensorboard"
    mlflow = "mlflow"


TrackOption = Annotated[list[TrackerName] | None, typer.Option(
    "--track", help="Also log the parameters and every epoch's figures to an experiment tracker (repeatable; off "
                    "by default): tensorboard (event files in OUT/tensorboard) or mlflow (a SQLite database in "
                    "OUT/mlruns, or --tracking-uri). Needs pip install 'unveil-cxr[tracking]'.")]
TrackingUriOption = Annotated[str | None, typer.Option(
    "--tracking-uri", help="MLflow tracking URI for --track mlflow, e.g. sqlite:///runs/mlflow.db or a server's "
                           "http://host:5000 (default: OUT/mlruns; nothing leaves the machine).")]


def tracking_settings(track: list[TrackerName] | None, uri: str | None) -> TrackingSettings | None:
    """--track and --tracking-uri as settings (None: no tracker asked for); a URI without mlflow is refused."""
    if not track and uri is None:
        return None
    return TrackingSettings(tuple(TrackerName(name).value for name in track or ()), uri)


def key_values(pairs: list[str] | None, option: str) -> dict[str, str]:
    """``KEY=VALUE`` strings to a dict of raw strings (keys: dashes become underscores)."""
    parsed: dict[str, str] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise CommandLineError(f"{option} expects KEY=VALUE, got {pair!r}")
        parsed[key.strip().replace("-", "_")] = value
    return parsed


def loader_values(pairs: dict[str, str]) -> dict[str, Any]:
    """Loader option values: comma-separated values become tuples."""
    return {k: tuple(v.strip() for v in value.split(",")) if "," in value else value for k, value in pairs.items()}


def loader_options(items: list[str] | None) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """``--option`` values as (KEY=VALUE options for SOURCE:PATH datasets, ROLE.KEY=VALUE options per role)."""
    plain: list[str] = []
    per_role: dict[str, list[str]] = {}
    for item in items or []:
        head = item.partition("=")[0]
        role, dot, rest = item.partition(".")
        if dot and "." in head:
            per_role.setdefault(role.strip(), []).append(rest)
        else:
            plain.append(item)
    return (loader_values(key_values(plain, "--option")),
            {role: loader_values(key_values(values, "--option")) for role, values in per_role.items()})


def plain_options(items: list[str] | None) -> dict[str, Any]:
    """``--option`` of a command without roles: KEY=VALUE only."""
    plain, per_role = loader_options(items)
    if per_role:
        raise CommandLineError(f"--option ROLE.KEY=VALUE needs --data ROLE=...; this command has no roles "
                               f"(got role(s) {', '.join(per_role)})")
    return plain


def source_spec(text: str, options: dict[str, Any] | None = None, *, option: str = "--data") -> DataSpec:
    """``SOURCE:PATH`` (the one parser, :meth:`DataSpec.parse`) with loader options; an error names ``option``."""
    from unveil.training import DataSpec, TrainingDataError  # torch: loaded when a command runs, not for --help

    try:
        return DataSpec.parse(text, options)
    except TrainingDataError as error:
        raise CommandLineError(f"{option}: {error}") from None


def source_specs(values: list[str] | None, options: dict[str, Any] | None = None, *,
                 option: str = "--data") -> list[DataSpec]:
    return [source_spec(value, options, option=option) for value in values or []]


def role_bindings(bindings: list[str] | None, items: list[str] | None,
                  recipes: Path | None) -> dict[str, DataSpec]:
    """``--data ROLE=SOURCE:PATH`` (or ``ROLE=PATH``: the role's default source) with ``--option ROLE.KEY=VALUE``,
    on a command whose datasets are all roles."""
    plain, per_role = loader_options(items)
    if plain:
        raise CommandLineError(f"--option with --data ROLE=...: write ROLE.KEY=VALUE, got {', '.join(plain)}")
    return bind_roles(bindings, per_role, recipes)


def bind_roles(bindings: list[str] | None, per_role: dict[str, dict[str, Any]],
               recipes: Path | None) -> dict[str, DataSpec]:
    """``--data ROLE=SOURCE:PATH`` values with each role's loader options."""
    from unveil.data.compose import load_recipes

    book = load_recipes(recipes)
    parsed: dict[str, DataSpec] = {}
    for binding in bindings or []:
        role, sep, rest = (part.strip() for part in binding.partition("="))
        if not sep or not rest:
            raise CommandLineError(f"--data expects ROLE=SOURCE:PATH or ROLE=PATH, got {binding!r}")
        if ":" not in rest:  # ROLE=PATH: the role's default source
            default = book.roles.get(role)
            if default is None or not default.default_source:
                raise CommandLineError(f"--data {binding!r}: role {role} has no default source; "
                                       f"write {role}=SOURCE:PATH")
            rest = f"{default.default_source}:{rest}"
        parsed[role] = source_spec(rest, per_role.get(role))
    unbound = sorted(set(per_role) - set(parsed))
    if unbound:
        raise CommandLineError(f"--option for role(s) {', '.join(unbound)} that no --data ROLE=... binds")
    return parsed


def threshold_request(threshold: float | None, rule: ThresholdRule, target_sensitivity: float) -> ThresholdRequest:
    """--threshold / --threshold-rule / --target-sensitivity as one request: a --threshold alone means the fixed
    rule."""
    if threshold is not None and rule not in (ThresholdRule.BUNDLE, ThresholdRule.FIXED):
        raise CommandLineError(f"--threshold is a fixed threshold; it does not go with --threshold-rule {rule.value}")
    if threshold is None:
        return ThresholdRequest(rule, target_sensitivity=target_sensitivity)
    return ThresholdRequest(ThresholdRule.FIXED, threshold, target_sensitivity)


def require(condition: bool, message: str) -> None:
    """A user's mistake the library cannot see (an option combination): one line, exit 2."""
    if not condition:
        raise CommandLineError(message)


def _candidates(value: Any) -> Iterable[Path]:
    """The existing paths an option value names: a path, or a string SOURCE:PATH, ROLE=SOURCE:PATH, KEY=VALUE."""
    if value is None:
        return
    if isinstance(value, (list, tuple)):
        for item in value:
            yield from _candidates(item)
        return
    if isinstance(value, Path):
        if os.path.lexists(value):
            yield value
        return
    text = str(value)  # a bare word names a file (an experiment file), never a folder: "AB" is a composition
    after_equal = text.partition("=")[2]
    if Path(text).is_file() or os.sep in text and os.path.lexists(text):
        yield Path(text)
    for part in {after_equal, text.partition(":")[2], after_equal.partition(":")[2]} - {"", text}:
        if os.path.lexists(part):
            yield Path(part)


def input_paths(values: dict[str, Any], names: Iterable[InputsOf], models: Iterable[str] = ()) -> list[Path]:
    """The input files and folders of a command's option values: data roots, label CSVs, configuration files
    (``names``: an option, or a function of all the values) and model bundles (``models``: a bundle folder, or a
    run folder holding one: its ``model/`` and its files, so that ``RUN/eval`` is a valid output, ``RUN`` not)."""
    from unveil.training.bundle import DESCRIPTION_FILE, resolve_bundle_dir  # torch: only when a command runs

    found = [path for name in names
             for path in (name(values) if callable(name) else _candidates(values.get(name)))]
    for path in (path for name in models for path in _candidates(values.get(name))):
        bundle = resolve_bundle_dir(path)
        if (bundle / DESCRIPTION_FILE).is_file():  # the bundle, and the run folder's own files (splits.csv...)
            found += [bundle, *(sorted(p for p in path.iterdir() if p.is_file()) if bundle != path else [])]
    return found


InputsOf = str | Callable[[dict[str, Any]], Iterable[Path]]


def bundle_files(model: Path) -> list[Path]:
    """The files a model bundle is read from (its description, weights, OOD reference): a one-file output such as
    an export may sit beside them, never replace them."""
    from unveil.training.bundle import resolve_bundle_dir

    folder = resolve_bundle_dir(model)
    return [path for path in sorted(folder.glob("*")) if path.suffix in (".json", ".safetensors")]


def writes_output(*inputs: InputsOf, models: tuple[str, ...] = (), out: str = "out", staged: bool = False,
                  lock: bool = True, file: bool = False) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Decorator: the one output guard of a command that writes (:class:`unveil.io.outputs.OutputFolder`).

    The folder named by the option ``out`` must not be, hold or lie inside an input (the options ``inputs``
    and the bundles ``models``) nor be a model bundle; one run at a time holds its lock; a full disk is one
    line. ``staged``: the command writes into the staging folder (given to it as ``out``), moved into place when
    it completes; else (runs that resume in place) straight into ``out``. ``file``: ``out`` is one file, checked
    against the inputs (its writer is atomic). Without ``out`` the command's default applies, unguarded."""

    def decorate(command: Callable[..., None]) -> Callable[..., None]:
        @functools.wraps(command)
        def wrapper(**values: Any) -> None:
            from unveil.io.outputs import OutputFolder, check_no_overlap

            target = values.get(out)
            if target is None:
                return command(**values)
            paths = input_paths(values, inputs, models)
            if file:
                check_no_overlap(target, paths)
                return _one_file(command, values, target)
            rank0 = os.environ.get("RANK", "0") == "0"  # under torchrun, rank 0 holds the lock for all
            with OutputFolder(target, paths, staged=staged, lock=lock and rank0) as folder:
                command(**{**values, out: folder.stage})
        return wrapper

    return decorate


def _one_file(command: Callable[..., None], values: dict[str, Any], target: Path) -> None:
    """Run a command writing one file: a full disk while writing it is one line naming it."""
    from unveil.errors import disk_full, no_space

    try:
        command(**values)
    except OSError as error:
        if no_space(error):
            raise disk_full(getattr(error, "filename", None) or target, error) from error
        raise


def final_folder(out: Path) -> Path:
    """The folder a staged command's results land in (``out`` is its staging folder, see :func:`writes_output`)."""
    from unveil.io.outputs import STAGING_DIR

    return out.parent if out.name == STAGING_DIR else out
