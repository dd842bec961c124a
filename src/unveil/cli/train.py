"""`unveil preprocess`, `unveil pretrain` and `unveil train`: from datasets to a model bundle."""

from __future__ import annotations

import functools
import inspect
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from unveil.cli.options import (
    CacheOption,
    CommandLineError,
    DataOption,
    DebiasOption,
    DeviceOption,
    EqualizeOption,
    ImageSizeOption,
    JsonOption,
    LearningRateOption,
    LoaderOption,
    LungConventionOption,
    LungModelOption,
    MaskOption,
    MaxPixelsOption,
    ProgressOption,
    RecipesOption,
    RequiredCacheOption,
    SeedOption,
    StrictOption,
    TrackingUriOption,
    TrackOption,
    WorkersOption,
    finite_float,
    key_values,
    plain_options,
    role_bindings,
    source_specs,
    tracking_settings,
    writes_output,
)
from unveil.models.catalog import arch_help, model_names, width_help


@writes_output("path", "option", "lung_model", out="cache", lock=False)
def preprocess(
    source: Annotated[str, typer.Argument(help="Dataset source name.")],
    path: Annotated[Path, typer.Argument(help="Dataset root folder.")],
    cache: RequiredCacheOption,
    option: LoaderOption = None,
    image_size: ImageSizeOption = 256,
    equalize: EqualizeOption = "global",
    mask: MaskOption = "segment",
    blur_radius: Annotated[float, typer.Option(
        parser=finite_float, help="Blur of the lung mask, pixels (the paper: 3).")] = 3.0,
    lung_model: LungModelOption = None,
    workers: WorkersOption = 2,
    strict: StrictOption = False,
    lung_convention: LungConventionOption = None,
    max_pixels: MaxPixelsOption = 50_000_000,
) -> None:
    """Pre-process a dataset into the cache (equalize, segment, blurred mask, [0, 1]); a rerun is free."""
    from unveil.data.sources import load_source
    from unveil.preprocess.cache import PreprocessSettings, preprocess_records

    records = load_source(source, path, **plain_options(option)).records
    settings = PreprocessSettings(size=image_size or 256, equalize=equalize, mask=mask, blur_radius=blur_radius,
                                  model=str(lung_model) if lung_model else None, convention=lung_convention)
    report = preprocess_records(records, cache, settings, workers=workers, progress=True, strict=strict,
                                max_pixels=max_pixels)
    typer.echo(json.dumps({"manifest": str(report.manifest_path), "counts": report.counts(),
                           "failed": report.failures}, indent=2))


def _train_config(values: dict[str, Any], config_file: Path | None, overrides: list[str] | None):
    """TrainConfig from a YAML or JSON file (checked like an experiment file: FILE:LINE: key: problem), then the
    options given explicitly, then --set KEY=VALUE overrides."""
    from unveil.documents import load_yaml_text
    from unveil.schema import read_document, section
    from unveil.training import ConfigError, TrainConfig

    merged: dict[str, Any] = {}
    if config_file is not None:
        loaded, where = read_document(config_file, ConfigError, "training configuration")
        if not isinstance(loaded, dict):
            raise ConfigError(f"{config_file}: a training configuration is a mapping of option: value "
                              f"(options: {', '.join(TrainConfig.__dataclass_fields__)})")
        section(TrainConfig, loaded, (), where)  # every problem of the file, with its line
        merged.update(loaded)
    merged.update({k: v for k, v in values.items() if v is not None})
    merged.update({key: load_yaml_text(value, f"--set {key}", CommandLineError)
                   for key, value in key_values(overrides, "--set").items()})
    return TrainConfig.from_dict(merged)


def _given(context: typer.Context | None, parameter: str) -> bool:
    """Whether the option ``parameter`` was given on the command line (or by its environment variable), not left
    at its default: a default must not override a value of the --config file."""
    source = context.get_parameter_source(parameter) if context is not None else None
    return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")


OutOption = Annotated[Path, typer.Option(help="Run folder (bundle in OUT/model).")]


def registered_model(value: str) -> str:
    """``--arch``'s parser: a model registered (:mod:`unveil.models.catalog`) when the command line is parsed."""
    if value not in model_names():
        raise CommandLineError(f"{value!r} is no known model; choose one of {', '.join(model_names())}")
    return value


ArchOption = Annotated[str | None, typer.Option("--arch", parser=registered_model, help=arch_help())]
WidthOption = Annotated[float | None, typer.Option(parser=finite_float, help=width_help())]
EpochsOption = Annotated[int | None, typer.Option(help="Epochs (default 30).")]
BatchOption = Annotated[int | None, typer.Option(help="Global batch size (default 32).")]
ConfigOption = Annotated[Path | None, typer.Option(
    "--config", help="YAML or JSON file of training options (explicit options and --set win over it).")]
SetOption = Annotated[list[str] | None, typer.Option(
    "--set", help="Any training option KEY=VALUE (repeatable), e.g. --set loss=cross-entropy, "
                  "--set threshold_rule=fixed --set threshold_value=0.5 (default rule: youden on validation).")]
ResumeOption = Annotated[bool, typer.Option(help="Continue from OUT/checkpoint.pt when present.")]
InitOption = Annotated[Path | None, typer.Option(
    "--init-weights", help="Local state-dict file for the initial weights: torchvision, or a torchxrayvision "
                           "DenseNet-121/ResNet-50 (never downloaded).")]


@dataclass(frozen=True)
class TrainingRequest:
    """What `pretrain` and `train` share, resolved from their common options."""

    config: Any  # TrainConfig
    preprocess: Any  # PreprocessSettings
    cache: Path | None
    workers: int
    progress: bool
    resume: bool
    init_weights: Path | None
    as_json: bool = False  # the summary as JSON on stdout (else readable lines)
    tracking: Any = None  # TrackingSettings: TensorBoard / MLflow besides metrics.jsonl; None: off

    def arguments(self) -> dict[str, Any]:
        return {"config": self.config, "preprocess": self.preprocess, "cache": self.cache, "workers": self.workers,
                "progress": self.progress, "resume": self.resume, "init_weights": self.init_weights,
                "tracking": self.tracking}


def _shared_training_options(
    *, arch: ArchOption = None, width: WidthOption = None, epochs: EpochsOption = None, batch_size: BatchOption = None,
    learning_rate: LearningRateOption = None, image_size: ImageSizeOption = None, device: DeviceOption = None,
    config: ConfigOption = None, set_option: SetOption = None, mask: MaskOption = "segment",
    equalize: EqualizeOption = "global", lung_convention: LungConventionOption = None, cache: CacheOption = None,
    workers: WorkersOption = 2, resume: ResumeOption = True, init_weights: InitOption = None,
    progress: ProgressOption = True, seed: SeedOption = 0, as_json: JsonOption = False, track: TrackOption = None,
    tracking_uri: TrackingUriOption = None, debias: DebiasOption = None,
    context: typer.Context = None,  # type: ignore[assignment]  # given by Typer: which options were given
) -> TrainingRequest:
    """The options every training command takes (declared once), as one request."""
    from unveil.preprocess.cache import PreprocessSettings

    settings = _train_config({"architecture": arch, "width": width, "epochs": epochs, "batch_size": batch_size,
                              "lr": learning_rate, "image_size": image_size, "device": device, "debias": debias,
                              "seed": seed if config is None or _given(context, "seed") else None},
                             config, set_option)
    return TrainingRequest(settings, PreprocessSettings(mask=mask, equalize=equalize, convention=lung_convention),
                           cache, workers, progress, resume, init_weights, as_json,
                           tracking_settings(track, tracking_uri))


def training_options(command: Callable[..., None]) -> Callable[..., None]:
    """Decorator: ``command`` declares only its own options and a keyword ``request``; the training options
    shared by `pretrain` and `train` are added to its signature (what Typer reads) and given to it resolved,
    as one :class:`TrainingRequest` (mednet's shared option decorators, with Typer's annotations)."""
    shared = inspect.signature(_shared_training_options, eval_str=True).parameters
    own = inspect.signature(command, eval_str=True)
    parameters = [p for name, p in own.parameters.items() if name != "request"] + list(shared.values())

    @functools.wraps(command)
    def wrapper(**values: Any) -> None:
        request = _shared_training_options(**{name: values.pop(name) for name in shared})
        command(**values, request=request)

    wrapper.__signature__ = own.replace(parameters=parameters)  # type: ignore[attr-defined]
    return wrapper


def _run_training(action, as_json: bool, **kwargs) -> None:
    from unveil.io.outputs import ensure_writable
    from unveil.training.loop import world

    ensure_writable(kwargs["out"])  # a read-only run folder: one line before any work, not a traceback
    result = action(**kwargs)
    if world()[0] != 0:  # under torchrun, rank 0 reports
        return
    typer.echo(json.dumps(result.as_dict(), indent=2) if as_json else result.summary())


@writes_output("data", "option", "init_weights", "config")
@training_options
def pretrain_command(
    data: DataOption,
    out: OutOption,
    classes: Annotated[str | None, typer.Option(
        help="Comma-separated findings to learn (default: chestxray normal,bacterial,viral; rsna normal,pneumonia).")
    ] = None,
    option: LoaderOption = None,
    *, request: TrainingRequest,
) -> None:
    """Pre-train an encoder on a pneumonia task, on --data SOURCE:PATH (the paper: ChestXRay 3-class, or
    RSNA 2-class)."""
    from unveil.training import pretrain

    _run_training(pretrain, request.as_json, data=source_specs(data, plain_options(option)), out=out,
                  classes=tuple(c.strip() for c in classes.split(",")) if classes else None, **request.arguments())


@writes_output("data", "option", "recipes", "init_weights", "config", models=("encoder",))
@training_options
def train_command(
    recipe: Annotated[str, typer.Argument(help="Training composition: A, AB, AC, AD, D (or one of --recipes).")],
    data: DataOption,
    out: OutOption,
    encoder: Annotated[Path | None, typer.Option(
        help="Pre-training bundle (OUT/model of `unveil pretrain`) to start the encoder from; default: scratch.")
    ] = None,
    option: LoaderOption = None,
    recipes: RecipesOption = None,
    *, request: TrainingRequest,
) -> None:
    """Fine-tune a COVID+/COVID- classifier on a composition, its roles bound with --data ROLE=SOURCE:PATH
    (encoder never frozen)."""
    from unveil.training import train

    _run_training(train, request.as_json, recipe=recipe, data=role_bindings(data, option, recipes), out=out,
                  encoder=encoder, recipes=recipes, **request.arguments())
