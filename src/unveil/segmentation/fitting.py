"""The lung U-Net's training configuration and optimisation loop (:func:`fit`), used by
:func:`unveil.segmentation.train.train_lung_model`.

Augmentation (rigid + scale, tone, noise) runs batched in torch on the CPU, so the random draws are
the same on any device; each image supervises its source's annotation convention channel; the best
validation Dice selects the weights.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss

from unveil.errors import UnveilError
from unveil.progress import bar as progress_bar
from unveil.progress import duration, progress_log
from unveil.segmentation.infer import to_tensor
from unveil.segmentation.model import (
    ARCHITECTURES,
    CONVENTIONS,
    DEFAULT_ARCHITECTURE,
    DEFAULT_CONVENTION,
    build_network,
    convention_of,
)


class LungTrainingError(UnveilError, ValueError):
    """Lung-model training cannot start as asked: an unknown network size, no image with a mask, or an
    excluded source that is not in the data."""


@dataclass(frozen=True)
class LungTrainingConfig:
    size: int = 256
    epochs: int = 150
    batch_size: int = 8
    learning_rate: float = 3e-3
    weight_decay: float = 1e-4
    test_fraction: float = 0.3
    val_fraction: float = 0.15
    validate_every: int = 5
    balance_sources: bool = True  # each training source contributes equally per epoch
    samples_per_epoch: int | None = None  # images drawn per epoch (default: the training set's size)
    anisotropic: bool = False  # also stretch width and height independently (±10 %) when augmenting
    architecture: str = DEFAULT_ARCHITECTURE  # a name of unveil.segmentation.model.ARCHITECTURES
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.architecture, str) and self.architecture not in ARCHITECTURES:
            raise LungTrainingError(f"unknown lung network size {self.architecture!r}; "
                                    f"choose one of {', '.join(ARCHITECTURES)}")


def augment(images: torch.Tensor, masks: torch.Tensor, generator: torch.Generator,
            anisotropic: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Random rotation (±10°), scale (0.85-1.15; with ``anisotropic`` also ±10 % per axis),
    translation (±8 %), tone, noise — batched."""
    n = images.shape[0]

    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(n, generator=generator)

    angle = uniform(-10, 10) * math.pi / 180
    scale = uniform(0.85, 1.15)
    stretch = uniform(0.9, 1.1) if anisotropic else torch.ones(n)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos / stretch, -sin / stretch, uniform(-0.16, 0.16)], 1),
                         torch.stack([sin * stretch, cos * stretch, uniform(-0.16, 0.16)], 1)], 1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    images = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    masks = F.grid_sample(masks, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    gamma = torch.exp(uniform(-0.4, 0.4)).view(n, 1, 1, 1)
    images = images.clamp(0, 1) ** gamma
    images = (images - 0.5) * uniform(0.75, 1.25).view(n, 1, 1, 1) + 0.5 + uniform(-0.1, 0.1).view(n, 1, 1, 1)
    images = images + uniform(0, 0.04).view(n, 1, 1, 1) * torch.randn(images.shape, generator=generator)
    return images, masks


def _select(logits: torch.Tensor, channels: torch.Tensor) -> torch.Tensor:
    """Each image's own convention channel: (N, C, H, W) -> (N, 1, H, W)."""
    return logits.gather(1, channels.view(-1, 1, 1, 1).expand(-1, 1, *logits.shape[2:]))


def _dice_batch(logits: torch.Tensor, masks: torch.Tensor) -> float:
    predicted = (logits > 0).float()
    intersection = (predicted * masks).sum((1, 2, 3))
    total = predicted.sum((1, 2, 3)) + masks.sum((1, 2, 3))
    return float(torch.where(total > 0, 2 * intersection / total.clamp_min(1), torch.ones_like(total)).mean())


def fit(train_images: np.ndarray, train_masks: np.ndarray, val_images: np.ndarray, val_masks: np.ndarray,
        config: LungTrainingConfig, *, history: Callable[[dict[str, Any]], None] | None = None,
        train_groups: Sequence[str] | None = None, val_groups: Sequence[str] | None = None,
        device: str = "cpu") -> torch.nn.Module:
    """Train from scratch; return the network with the best validation Dice (last if no validation).

    With ``train_groups`` (one source name per training image) and ``config.balance_sources``, each
    epoch draws its images so that every source contributes equally (a 10-image source is not
    drowned by a 100-image one). Each image supervises only its source's convention channel
    (:func:`unveil.segmentation.model.convention_of`; all "visible" without groups). Augmentation
    runs on the CPU (same random draws on any ``device``); the network runs on ``device``.
    """
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    network = build_network(config.architecture).to(device)
    optimiser = torch.optim.AdamW(network.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    draws = config.samples_per_epoch or len(train_images)
    steps = max(1, math.ceil(draws / config.batch_size))
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=config.learning_rate,
                                                    total_steps=config.epochs * steps, pct_start=0.15)
    train = _Batches(torch.from_numpy(train_images)[:, None], torch.from_numpy(train_masks)[:, None],
                     _channels_of(train_groups, len(train_images)), _source_weights(train_groups, config))
    val = (to_tensor(val_images), torch.from_numpy(val_masks)[:, None], _channels_of(val_groups, len(val_images))) \
        if len(val_images) else None
    step = _TrainingStep(network, optimiser, scheduler, DiceCELoss(sigmoid=True), device)
    best, best_state = -1.0, None
    for epoch in progress_bar(range(1, config.epochs + 1), desc="lungs train", unit="epoch"):
        started = time.perf_counter()
        loss = _train_epoch(step, train, draws, config, generator)
        row: dict[str, Any] = {"epoch": epoch, "loss": round(loss, 5),
                               "seconds": round(time.perf_counter() - started, 2)}
        if val is not None and (epoch % config.validate_every == 0 or epoch == config.epochs):
            score = _validation_dice(network, *val, device)
            row["val_dice"] = round(score, 5)
            if score > best:
                best, best_state = score, {k: v.detach().clone() for k, v in network.state_dict().items()}
        if history is not None:
            history(row)
        validation = f", val Dice {row['val_dice']:.4f}" if "val_dice" in row else ""
        progress_log.info("lungs epoch %d/%d: loss %.4f%s, %s%s", epoch, config.epochs, row["loss"], validation,
                          duration(row["seconds"]), " (best so far)" if row.get("val_dice") == round(best, 5) else "")
    if best_state is not None:
        network.load_state_dict(best_state)
    return network.cpu().eval()


@dataclass(frozen=True)
class _Batches:
    """Training images and masks (N, 1, H, W), each image's convention channel, and per-image draw weights
    (None: a uniform permutation each epoch)."""

    images: torch.Tensor
    masks: torch.Tensor
    channels: torch.Tensor
    weights: torch.Tensor | None


@dataclass(frozen=True)
class _TrainingStep:
    """What one optimisation step needs."""

    network: torch.nn.Module
    optimiser: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    loss_function: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    device: str


def _channels_of(groups: Sequence[str] | None, count: int) -> torch.Tensor:
    """The convention channel each image supervises (its source's convention; the default without groups)."""
    names = [convention_of(g) for g in groups] if groups is not None else [DEFAULT_CONVENTION] * count
    return torch.tensor([CONVENTIONS.index(n) for n in names], dtype=torch.long)


def _source_weights(groups: Sequence[str] | None, config: LungTrainingConfig) -> torch.Tensor | None:
    """Per-image draw weights 1 / (images of its source), so that every source contributes equally; None
    when balancing is off or there is one source."""
    if groups is None or not config.balance_sources or len(set(groups)) <= 1:
        return None
    series = pd.Series(list(groups))
    return torch.tensor((1.0 / series.map(series.value_counts())).to_numpy(), dtype=torch.float64)


def _train_epoch(step: _TrainingStep, train: _Batches, draws: int, config: LungTrainingConfig,
                 generator: torch.Generator) -> float:
    """One epoch of ``draws`` augmented images in batches; returns the mean training loss per image."""
    step.network.train()
    if train.weights is None:
        order = torch.randperm(len(train.images), generator=generator)[:draws]
    else:
        order = torch.multinomial(train.weights, draws, replacement=True, generator=generator)
    total = 0.0
    for start in range(0, len(order), config.batch_size):
        index = order[start:start + config.batch_size]
        x, y = augment(train.images[index], train.masks[index], generator, config.anisotropic)
        x, y = x.to(step.device, non_blocking=True), y.to(step.device, non_blocking=True)
        loss = step.loss_function(_select(step.network((x - 0.5) / 0.29), train.channels[index].to(step.device)), y)
        step.optimiser.zero_grad(set_to_none=True)
        loss.backward()
        step.optimiser.step()
        step.scheduler.step()
        total += float(loss.detach()) * len(index)
    return total / len(order)


def _validation_dice(network: torch.nn.Module, images: torch.Tensor, masks: torch.Tensor, channels: torch.Tensor,
                     device: str) -> float:
    """Mean Dice of the network's masks (each in its image's convention channel) on the validation images."""
    network.eval()
    with torch.inference_mode():
        logits = torch.cat([network(images[i:i + 16].to(device)).cpu() for i in range(0, len(images), 16)])
        return _dice_batch(_select(logits, channels), masks)
