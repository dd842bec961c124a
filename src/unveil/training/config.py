"""Training configuration: the paper's recipe as the default, every choice an option."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import Any

from unveil.errors import UnveilError, finite
from unveil.thresholds import ThresholdRule, fixed_threshold
from unveil.training.collapse import DEFAULT_COLLAPSE_TOLERANCE

LOSSES = ("focal", "cross-entropy")
OPTIMIZERS = ("sgd", "adam")
SCHEDULERS = ("plateau", "cosine", "none")
SELECTIONS = ("auc", "loss", "last")
SAMPLERS = ("shuffle", "balanced")


THRESHOLD_OPTIONS = ("threshold_rule", "threshold_value", "target_sensitivity")
#: Options applied after the weights are trained (a checkpoint resumes under other values).
AFTER_TRAINING = (*THRESHOLD_OPTIONS, "collapse_tolerance")
#: Options that do not make a different model (seed aside, only speed or hardware).
NOT_RECIPE = ("seed", "device", "amp", "channels_last", "eval_batch_size")
#: The range of each numeric option that has no check of its own below (torch refuses values outside).
RANGES: dict[str, tuple[str, Callable[[float], bool]]] = {
    "width": ("(0, inf)", lambda v: v > 0), "momentum": ("[0, 1)", lambda v: 0 <= v < 1),
    "weight_decay": ("[0, inf)", lambda v: v >= 0), "focal_gamma": ("[0, inf)", lambda v: v >= 0),
    "plateau_factor": ("(0, 1)", lambda v: 0 < v < 1)}


class ConfigError(UnveilError, ValueError):
    """An invalid training option (the message names it)."""


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
    """

    architecture: str = "resnet18"
    width: float = 1.0
    image_size: int = 224
    epochs: int = 30
    batch_size: int = 32
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    optimizer: str = "sgd"
    loss: str = "focal"
    focal_gamma: float = 2.0
    scheduler: str = "plateau"
    plateau_patience: int = 5
    plateau_factor: float = 0.1
    selection: str = "auc"
    sampler: str = "shuffle"
    rotation_degrees: float = 5.0
    translate: float = 0.05
    hflip: bool = False
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = True  # bf16 autocast on CUDA, and on CPUs with native bf16 (AMX / AVX512-BF16)
    channels_last: bool | None = None  # None: yes (faster with cuDNN and with oneDNN on CPU)
    eval_batch_size: int = 64
    seed: int = 0
    threshold_rule: str = ThresholdRule.YOUDEN.value  # youden | fixed | sensitivity
    threshold_value: float = 0.5  # for threshold_rule fixed
    target_sensitivity: float = 0.9  # for threshold_rule sensitivity
    bn_recalibration_images: int = 4096  # precise BN after every epoch (0: keep the running averages)
    collapse_tolerance: float = DEFAULT_COLLAPSE_TOLERANCE  # validation probability std below it: collapsed

    def __post_init__(self) -> None:
        self.check_numbers()
        choices = {"optimizer": OPTIMIZERS, "loss": LOSSES, "scheduler": SCHEDULERS, "selection": SELECTIONS,
                   "sampler": SAMPLERS}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} must be one of {', '.join(allowed)}; got {getattr(self, name)!r}")
        for name in ("epochs", "batch_size", "image_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1; got {getattr(self, name)}")
        if self.bn_recalibration_images < 0:
            raise ConfigError(f"bn_recalibration_images must be 0 (off) or more; got {self.bn_recalibration_images}")
        if not 0 <= self.collapse_tolerance < 1:
            raise ConfigError(f"collapse_tolerance must lie in [0, 1); got {self.collapse_tolerance}")
        if self.lr <= 0:
            raise ConfigError(f"lr must be positive; got {self.lr}")
        if not 0 <= self.translate < 0.5:
            raise ConfigError(f"augmentation must stay rigid and small: translate in [0, 0.5); got {self.translate}")
        if not 0 <= self.rotation_degrees <= 45:
            raise ConfigError("augmentation must stay rigid and small: rotation_degrees in [0, 45]; got "
                              f"{self.rotation_degrees}")
        try:  # stored as the rule's plain name: configs are JSON and checkpoints load with weights_only
            object.__setattr__(self, "threshold_rule", ThresholdRule.parse(self.threshold_rule,
                                                                           allow_bundle=False).value)
            fixed_threshold(self.threshold_value)
        except ValueError as error:
            raise ConfigError(f"threshold_rule / threshold_value: {error}") from None
        if not 0 < self.target_sensitivity <= 1:
            raise ConfigError(f"target_sensitivity must lie in (0, 1]; got {self.target_sensitivity}")

    def check_numbers(self) -> None:
        """Every numeric option is a finite number (NaN passes every range check below as False, and a NaN
        learning rate would train for an epoch before anything noticed), in the range torch accepts."""
        for field in fields(self):
            if field.type in ("int", "float"):
                number = finite(getattr(self, field.name), f"training options: {field.name}", ConfigError)
                if field.type == "int" and number != int(number):
                    raise ConfigError(f"{field.name} must be a whole number; got {getattr(self, field.name)!r}")
                if field.type == "int" and not isinstance(getattr(self, field.name), int):
                    object.__setattr__(self, field.name, int(number))  # 2.0 epochs are 2 (range() needs an int)
        for name, (text, inside) in RANGES.items():
            if not inside(getattr(self, name)):
                raise ConfigError(f"{name} must lie in {text}; got {getattr(self, name)}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

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
        try:
            return cls(**values)
        except TypeError as error:  # a value of the wrong type met a comparison in __post_init__
            raise ConfigError(f"training options: {error}") from None
