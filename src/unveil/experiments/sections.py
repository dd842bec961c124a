"""The typed sections of an experiment file (``data``, ``synthetic``, ``pretraining``, ``grid``, ``evaluation``,
``audit``, ``tracking`` and the top level), checked by :mod:`unveil.schema` and read by
:func:`unveil.experiments.config.load_experiment`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from unveil.audit.run import AuditThresholds
from unveil.thresholds import ThresholdRequest, ThresholdRule
from unveil.tracking import TrackingSettings


@dataclass(frozen=True)
class DataRole:
    """One role's dataset: a loader (``unveil data check`` names them), its root and loader options."""

    source: str
    path: str
    options: dict[str, Any] = field(default_factory=dict)
    optional: bool = False  # left out (with a note) when its folder does not exist


@dataclass(frozen=True)
class SyntheticData:
    """A synthetic benchmark generated into OUT/data, binding roles A, B, C and D."""

    preset: str = "paper"
    scale: float = 1.0
    image_size: int | None = None  # None: the preset's


@dataclass(frozen=True)
class PretrainingRun:
    """One pre-trained encoder: the roles it learns from (default: its label) and TrainConfig overrides.
    ``init_weights``: a local weights file the encoder starts from (a torchvision or torchxrayvision state dict;
    never downloaded); with ``data: []`` the cells start from that file directly, with no pre-training run."""

    data: list[str] | None = None
    training: dict[str, Any] = field(default_factory=dict)
    classes: list[str] | None = None  # None: the source's default classes
    init_weights: str | None = None


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

    def threshold_request(self) -> ThresholdRequest:
        """The rule, fixed value and target sensitivity as the one request the evaluation takes."""
        return ThresholdRequest(ThresholdRule.parse(self.threshold_rule), self.threshold, self.target_sensitivity)


@dataclass(frozen=True)
class AuditSettings:
    """Which cells are audited (by training composition, or ``all``) and on which test sets."""

    compositions: list[str] | Literal["all"] = field(default_factory=list)
    test_sets: list[str] | None = None  # None: each cell's own training composition
    mask: str = "segment"
    resamples: int = 1000
    saliency_samples: int = 2
    thresholds: AuditThresholds = field(default_factory=AuditThresholds)
    #: roles whose every labelled image is an external audit set (SOURCE:PATH for `audit`), except for a cell
    #: trained on that role
    external: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class MitigationSection:
    """The mitigated arm: each grid cell of ``compositions`` trained again with each ``debias`` method
    (`unveil train --debias`), evaluated and audited like its unmitigated twin, and compared with it side by side
    (source probe, transfer drop, external AUC: `unveil.reports.mitigation`)."""

    debias: list[Literal["balanced", "group-dro", "end"]] = field(default_factory=list)
    compositions: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class TrackingSection:
    """Experiment trackers every pre-training and cell logs to (``unveil reproduce --track`` replaces them):
    ``track`` names (tensorboard: each run's OUT/.../tensorboard; mlflow: one MLflow experiment named after the
    experiment, in OUT/mlruns unless ``uri`` gives a tracking URI)."""

    track: list[str] = field(default_factory=list)
    uri: str | None = None

    def __post_init__(self) -> None:
        self.settings()  # an unknown tracker, a URI without mlflow, a missing package: refused at the file's line

    def settings(self) -> TrackingSettings | None:
        """As :class:`unveil.tracking.TrackingSettings` (None: no tracker)."""
        if not self.track and self.uri is None:
            return None
        return TrackingSettings(tuple(self.track), self.uri)


@dataclass(frozen=True)
class ExperimentFile:
    """The top level of an experiment file."""

    data: dict[str, Any]
    grid: Grid
    name: str | None = None
    description: str = ""
    seed: int = 0
    seeds: list[int] | None = None  # several seeds: one full run per seed (OUT/seed-N), then aggregated over seeds
    recipes: str | None = None
    preprocess: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    pretraining: dict[str, PretrainingRun] = field(default_factory=dict)
    evaluation: EvaluationSettings = field(default_factory=EvaluationSettings)
    audit: AuditSettings = field(default_factory=AuditSettings)
    jobs: int = 1
    tracking: TrackingSection = field(default_factory=TrackingSection)
    mitigation: MitigationSection = field(default_factory=MitigationSection)
