"""Training configuration: the paper's recipe as the default, every choice an option."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator

from unveil.schema import Field, SchemaError, check_fields
from unveil.thresholds import ThresholdRule
from unveil.training.collapse import DEFAULT_COLLAPSE_TOLERANCE

LOSSES = ("focal", "cross-entropy")
OPTIMIZERS = ("sgd", "adam")
SCHEDULERS = ("plateau", "cosine", "none")
SELECTIONS = ("auc", "loss", "last")
SAMPLERS = ("shuffle", "balanced")
#: Training against a shortcut (:mod:`unveil.training.debias`); the bias groups are the records' ``source``.
DEBIAS = ("none", "balanced", "group-dro", "end")
#: Options of a mitigation: left out of :meth:`TrainConfig.to_dict` with ``debias: none`` (today's runs unchanged).
DEBIAS_OPTIONS = ("debias", "debias_eta", "end_alpha", "end_beta")


THRESHOLD_OPTIONS = ("threshold_rule", "threshold_value", "target_sensitivity")
#: Options applied after the weights are trained (a checkpoint resumes under other values).
AFTER_TRAINING = (*THRESHOLD_OPTIONS, "collapse_tolerance")
#: Options that do not make a different model (seed aside, only speed or hardware).
NOT_RECIPE = ("seed", "device", "amp", "channels_last", "eval_batch_size")


class ConfigError(SchemaError):
    """An invalid training option (the message names it, its value and, from a file, the line)."""


def _training_rule(value: Any) -> str:
    """A threshold rule given by name or as a :class:`ThresholdRule`, stored as its plain name (configs are JSON and
    checkpoints load with ``weights_only``); ``bundle`` is refused (only evaluation and prediction defer to one)."""
    return ThresholdRule.parse(value, allow_bundle=False).value


# The checks of every option, declared once (unveil.schema reads them for TrainConfig(...), experiment files and
# `unveil train --config`); torch refuses values outside these ranges, or they make no sense.
Count = Annotated[int, Field(ge=1)]
Positive = Annotated[float, Field(gt=0)]
NonNegative = Annotated[float, Field(ge=0)]
Rigid = "augmentation must stay rigid and small"
Rule = Annotated[str, BeforeValidator(_training_rule)]


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one training run.

    Defaults follow Tartaglione et al. 2020 as we read it: focal loss, SGD with momentum and weight
    decay, learning rate divided by 10 when the validation loss plateaus, the epoch with the best
    validation AUC kept, rigid augmentation only (small rotation and translation, no flip: a
    flipped heart is not a chest). ``batch_size`` is the global batch (split across DDP ranks).

    The decision threshold recorded in the bundle is chosen a priori on the model's own validation
    predictions by ``threshold_rule``: ``youden`` by default (focal loss keeps probabilities near 0.5,
    where a fixed 0.5 can make every decision one-sided), ``fixed`` (``threshold_value``, the paper's 0.5)
    or ``sensitivity`` (the highest threshold reaching ``target_sensitivity``). It does not change the
    weights, so a checkpoint resumes under another rule.

    Batch-norm statistics are recomputed after every epoch on up to ``bn_recalibration_images`` training
    images, without augmentation ("precise BN": the running averages of a few steps are far from the
    statistics the weights produce, and on a small set they decide every score). With 0 they are the running
    averages, and an epoch is eligible for selection only once they have seen enough steps to forget their
    initial values. Validation, the threshold, evaluation and prediction all score in fp32 (``amp`` speeds
    training steps only), so the threshold is chosen in the precision it is applied in. A model whose
    validation probabilities have a standard deviation below ``collapse_tolerance`` is recorded as collapsed.

    ``debias`` trains against the source shortcut (:mod:`unveil.training.debias`): ``balanced`` epochs over the
    (class x source) groups, ``group-dro`` (step ``debias_eta``) or ``end`` (weights ``end_alpha``, ``end_beta``);
    ``none``, the default, is the training above, unchanged.
    """

    architecture: str = "resnet18"
    width: Positive = 1.0
    image_size: Count = 224
    epochs: Count = 30
    batch_size: Count = 32
    lr: Positive = 0.01
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.9
    weight_decay: NonNegative = 5e-4
    optimizer: Literal[OPTIMIZERS] = "sgd"  # type: ignore[valid-type]
    loss: Literal[LOSSES] = "focal"  # type: ignore[valid-type]
    focal_gamma: NonNegative = 2.0
    scheduler: Literal[SCHEDULERS] = "plateau"  # type: ignore[valid-type]
    plateau_patience: int = 5
    plateau_factor: Annotated[float, Field(gt=0, lt=1)] = 0.1
    selection: Literal[SELECTIONS] = "auc"  # type: ignore[valid-type]
    sampler: Literal[SAMPLERS] = "shuffle"  # type: ignore[valid-type]
    rotation_degrees: Annotated[float, Field(ge=0, le=45, description=Rigid)] = 5.0
    translate: Annotated[float, Field(ge=0, lt=0.5, description=Rigid)] = 0.05
    hflip: bool = False
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = True  # bf16 autocast on CUDA, and on CPUs with native bf16 (AMX / AVX512-BF16)
    channels_last: bool | None = None  # None: yes (faster with cuDNN and with oneDNN on CPU)
    eval_batch_size: Count = 64
    seed: int = 0
    threshold_rule: Rule = ThresholdRule.YOUDEN.value  # youden | fixed | sensitivity
    #: for threshold_rule fixed
    threshold_value: Annotated[float, Field(ge=0, le=1, description="a fixed threshold is a probability in [0, 1]")] \
        = 0.5
    target_sensitivity: Annotated[float, Field(gt=0, le=1)] = 0.9  # for threshold_rule sensitivity
    #: precise BN after every epoch (0: keep the running averages)
    bn_recalibration_images: Annotated[int, Field(ge=0, description="0 turns precise BN off")] = 4096
    #: validation probability std below it: collapsed
    collapse_tolerance: Annotated[float, Field(ge=0, lt=1)] = DEFAULT_COLLAPSE_TOLERANCE
    #: none | balanced (each class x source group drawn equally) | group-dro | end
    debias: Literal[DEBIAS] = "none"  # type: ignore[valid-type]
    #: group DRO's step size (Sagawa et al. 2020)
    debias_eta: Annotated[float, Field(gt=0, description="group DRO's step size is positive")] = 0.01
    #: EnD's weights (Tartaglione et al. 2021): disentangle same-source pairs, entangle same-class ones
    end_alpha: NonNegative = 1.0
    end_beta: NonNegative = 1.0

    def __post_init__(self) -> None:
        """Every option checked against its declaration above (types, choices, finite numbers in range), every
        problem in one :class:`ConfigError`."""
        check_fields(self, ConfigError, "training options")

    def to_dict(self) -> dict[str, Any]:
        """Every option; without a mitigation (``debias: none``) its options are left out, so checkpoints, bundles
        and recipe keys of such runs are what they were before mitigations existed."""
        values = asdict(self)
        if self.debias == "none":
            for key in DEBIAS_OPTIONS:
                values.pop(key)
        return values

    def same_training(self, other: dict[str, Any] | None) -> bool:
        """Would ``other`` (a config dict from a checkpoint) train the same weights? The threshold options
        are chosen after training, so they may differ (older checkpoints lack them)."""
        if not isinstance(other, dict):
            return False
        mine = {k: v for k, v in self.to_dict().items() if k not in AFTER_TRAINING}
        return mine == {k: v for k, v in other.items() if k not in AFTER_TRAINING}

    def recipe_key(self) -> str:
        """A short hash of every option except the seed and the hardware ones: runs with equal keys differ
        only by seed (what ``unveil tables --aggregate-seeds`` may pool)."""
        import hashlib
        import json

        values = {k: v for k, v in self.to_dict().items() if k not in NOT_RECIPE}
        return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:12]

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown training option(s) {', '.join(unknown)}")
        return cls(**values)
