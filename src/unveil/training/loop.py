"""The training loop: batches from the (memory-mapped) image set, augmentation, checkpoints, exact resume.

A run directory holds ``checkpoint.pt`` (written atomically after every epoch: weights, optimizer,
scheduler, best weights, history) and ``metrics.jsonl`` (one line per epoch). Every random draw of
an epoch comes from a generator seeded by (seed, epoch), so a run killed at any point and resumed
from its last checkpoint ends with the same weights as an uninterrupted run with the same seed.
Under ``torchrun`` (several processes) the model is wrapped in DistributedDataParallel and each
rank takes its share of every global batch.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from unveil.progress import bar as progress_bar
from unveil.progress import duration, progress_log
from unveil.tracking import JsonlLog, Trackers, TrackingSettings, open_trackers
from unveil.training.checkpoint import (  # CheckpointError: re-exported
    CheckpointError,  # noqa: F401
    check_resumable,
    load_checkpoint,
    save_checkpoint,
)
from unveil.training.collapse import check_collapse
from unveil.training.config import ConfigError, TrainConfig
from unveil.training.data import ImageSet, apply_affine, random_rigid_affine, to_model_input
from unveil.training.debias import Mitigation, mitigation
from unveil.training.device import (  # init_distributed, resolve_device: re-exported (the CLI, training/run.py)
    bf16_supported,
    init_distributed,  # noqa: F401
    resolve_device,
    world,
)
from unveil.training.optimization import (  # re-exported: they lived here
    epoch_generator,
    epoch_order,
    make_loss,
    make_optimizer,
    make_scheduler,
)
from unveil.training.scoring import (  # re-exported: scoring lived here
    classification_scores,
    decision_threshold,  # noqa: F401
    encoder_features,  # noqa: F401
    predict_probabilities,
    probabilities_from_features,  # noqa: F401
)

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
METRICS_LOG = "metrics.jsonl"


@dataclass
class FitResult:
    best_epoch: int
    best_metrics: dict[str, float]
    history: list[dict[str, Any]]
    best_state: dict[str, torch.Tensor]
    val_probabilities: np.ndarray
    resumed_from_epoch: int
    debias: dict[str, Any] | None = None  # the mitigation used (Mitigation.describe), None without


def _is_better(candidate: dict[str, float], best: dict[str, float] | None, selection: str) -> bool:
    if best is None or selection == "last":
        return True
    if selection == "auc" and not (math.isnan(candidate["auc"]) or math.isnan(best["auc"])) \
            and candidate["auc"] != best["auc"]:
        return candidate["auc"] > best["auc"]
    return candidate["val_loss"] < best["val_loss"]


def epoch_line(run: str, record: dict[str, Any], epochs: int) -> str:
    """One finished epoch in one line: ``run epoch 3/15: train loss .., val loss .., AUC .., BA .., spread .., lr ..,
    12 s`` (spread: standard deviation of the validation probabilities; near 0, the model has collapsed)."""
    best = " (best so far)" if record["best_epoch"] == record["epoch"] else ""
    return (f"{run} epoch {record['epoch']}/{epochs}: train loss {record['train_loss']:.4f}, "
            f"val loss {record['val_loss']:.4f}, val AUC {record['val_auc']:.3f}, "
            f"val BA {record['val_balanced_accuracy']:.3f}, val spread {record.get('val_spread', math.nan):.2g}, "
            f"lr {record['lr']:.2g}, {duration(record['train_seconds'])}{best}")


def _cpu_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


@dataclass
class _Engine:
    """What every step of one fit shares: the model (and its DDP wrapper), the optimisation, where it runs."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    device: torch.device
    amp: bool
    channels_last: bool
    normalization: tuple[float, float]
    network: torch.nn.Module | None = None  # the model, wrapped in DistributedDataParallel under torchrun
    rank: int = 0
    world_size: int = 1
    debias: Mitigation | None = None  # training against a shortcut (config.debias); None: the plain loss

    def probabilities(self, images: torch.Tensor, batch_size: int) -> np.ndarray:
        """Validation scores in fp32 whatever ``amp``: the threshold chosen on them is applied by ``evaluate``
        and ``predict`` in fp32, and bf16 scores of a model near 0.5 rank the images differently."""
        return predict_probabilities(self.model, images, *self.normalization, device=self.device,
                                     batch_size=batch_size, amp=False, channels_last=self.channels_last)


@dataclass
class _State:
    """What a checkpoint holds besides the optimisation: every epoch's record and the best epoch so far."""

    history: list[dict[str, Any]]
    best: dict[str, Any] | None
    best_state: dict[str, torch.Tensor]
    start_epoch: int = 0


def _engine(model: torch.nn.Module, config: TrainConfig, normalization: tuple[float, float]) -> _Engine:
    """Place the model on its device and build its optimizer, scheduler and loss."""
    rank, world_size = world()
    device = resolve_device(config.device)
    channels_last = config.channels_last if config.channels_last is not None else True
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, config)
    return _Engine(model, optimizer, make_scheduler(optimizer, config), make_loss(config), device,
                   config.amp and bf16_supported(device), channels_last, normalization, rank=rank,
                   world_size=world_size)


def _distribute(engine: _Engine) -> None:
    """Wrap the model in DistributedDataParallel under torchrun (after a resume: DDP broadcasts rank 0's weights)."""
    engine.network = engine.model
    if engine.world_size > 1:
        device = engine.device
        engine.network = torch.nn.parallel.DistributedDataParallel(
            engine.model, device_ids=[device.index] if device.type == "cuda" else None)


def _resume(engine: _Engine, config: TrainConfig, run_dir: Path, resume: bool) -> _State:
    """The state of the last checkpoint in ``run_dir`` (model, optimizer and scheduler restored), or a fresh
    one."""
    state = _State([], None, _cpu_state(engine.model))
    path = run_dir / CHECKPOINT
    if resume and path.exists():
        saved = load_checkpoint(path)
        check_resumable(saved, config, path)
        engine.model.load_state_dict(saved["model"])
        engine.optimizer.load_state_dict(saved["optimizer"])
        if engine.scheduler is not None:
            engine.scheduler.load_state_dict(saved["scheduler"])
        state = _State(list(saved["history"]), saved["best"], saved["best_state"], int(saved["epoch"]))
        if engine.debias is not None:
            engine.debias.load_state_dict(saved.get("debias") or {}, str(path))
        if engine.rank == 0:
            planned = int(saved["config"]["epochs"])
            extended = f" (extended from {planned} to {config.epochs} epochs)" if planned != config.epochs else ""
            progress_log.info("%s: resuming after epoch %d of %d%s", run_dir.name, state.start_epoch, config.epochs,
                              extended)
    return state


#: the progress bar's running loss is read from the device every this many steps (each read waits for the device)
LOSS_SHOWN_EVERY = 10


def _train_epoch(engine: _Engine, train: ImageSet, images: torch.Tensor, labels: torch.Tensor, config: TrainConfig,
                 epoch: int, *, progress: bool,
                 on_step: Callable[[int, int], None] | None) -> tuple[float, int, int, int]:
    """One epoch of optimizer steps (``images``/``labels``: the training set on the device), then precise BN;
    returns the summed loss, the number of images this rank saw, the steps and the images BN was computed on."""
    rank, world_size = engine.rank, engine.world_size
    mean, std = engine.normalization
    generator = epoch_generator(config.seed, epoch)
    debias = engine.debias
    order = debias.order(generator) if debias and debias.reorders else epoch_order(train.labels, config.sampler,
                                                                                   generator)
    batches = list(torch.split(order, config.batch_size))
    if len(batches) > 1 and len(batches[-1]) < 2 * world_size:
        batches = batches[:-1]  # a last batch too small to share (or for batch norm) is dropped
    network = engine.network or engine.model
    network.train()
    # The summed loss stays on the device: reading it (float()) would make the host wait for the device at every
    # step; it is read every LOSS_SHOWN_EVERY steps for the bar, and once at the end. float64 (float32 on MPS,
    # which has no float64) sums exactly as the Python float it replaces.
    total_loss = torch.zeros((), dtype=torch.float32 if engine.device.type == "mps" else torch.float64,
                             device=engine.device)
    seen = 0
    shown = progress and rank == 0
    bar = progress_bar(batches, desc=f"epoch {epoch + 1}/{config.epochs}", unit="batch", leave=False,
                       enabled=shown)
    for step, batch_indices in enumerate(bar):
        theta = random_rigid_affine(len(batch_indices), generator, config.rotation_degrees, config.translate,
                                    config.hflip)
        mine = slice(rank, None, world_size)
        local = batch_indices[mine]  # the batch is gathered on the host (the set may be a memory map), then moved
        inputs = to_model_input(images[local].to(engine.device, non_blocking=True), mean, std)
        local = local.to(engine.device)
        if config.rotation_degrees or config.translate or config.hflip:
            inputs = apply_affine(inputs, theta[mine], (0.0 - mean) / std)
        if engine.channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        with torch.autocast(engine.device.type, dtype=torch.bfloat16, enabled=engine.amp):
            logits = network(inputs)
        loss = debias.loss(logits, labels[local], local) if debias else engine.loss_fn(logits, labels[local])
        engine.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        engine.optimizer.step()
        total_loss += loss.detach().to(total_loss.dtype) * len(local)
        seen += len(local)
        if shown and (step % LOSS_SHOWN_EVERY == 0 or step == len(batches) - 1):
            bar.set_postfix(loss=f"{float(total_loss) / max(seen, 1):.4f}")
        if on_step is not None:
            on_step(epoch, step)
    bn_images = recalibrate_batch_norm(engine, images, config)
    if world_size > 1:  # batch-norm statistics are per rank: take rank 0's so every rank validates alike
        for buffer in engine.model.buffers():
            dist.broadcast(buffer, src=0)
    return float(total_loss), seen, len(batches), bn_images


def batch_norm_layers(model: torch.nn.Module) -> list[torch.nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


def recalibrate_batch_norm(engine: _Engine, images: torch.Tensor, config: TrainConfig) -> int:
    """Precise BN: recompute every batch-norm layer's statistics as the average over batches of up to
    ``config.bn_recalibration_images`` training images (a fixed draw of the seed, un-augmented, in training
    batches), weights untouched; returns the number of images used (0: off, or no batch norm).

    With 54 images (2 steps an epoch) the running averages of an early epoch still hold mostly their initial
    values (variance 0.70 where the batches had 0.0023), and every image then scores alike. The pass is
    torch's own ``swa_utils.update_bn``; it is deterministic, so resuming stays exact."""
    if not config.bn_recalibration_images or not batch_norm_layers(engine.model):
        return 0
    from torch.optim.swa_utils import update_bn

    count = min(len(images), config.bn_recalibration_images)
    chosen = torch.randperm(len(images), generator=torch.Generator().manual_seed(config.seed))[:count]
    mean, std = engine.normalization

    def batches():
        for indices in torch.split(chosen, config.batch_size):
            batch = to_model_input(images[indices].to(engine.device, non_blocking=True), mean, std)
            yield batch.contiguous(memory_format=torch.channels_last) if engine.channels_last else batch

    with torch.no_grad():
        update_bn(batches(), engine.model, device=None)
    return count


def running_bn_steps_needed(model: torch.nn.Module, weight: float = 0.05) -> int:
    """Optimizer steps after which the running batch-norm averages keep under ``weight`` of their initial
    values: (1 - momentum)^steps <= weight (29 steps at torch's momentum 0.1)."""
    momenta = [m.momentum for m in batch_norm_layers(model) if m.momentum]
    if not momenta:
        return 0
    return math.ceil(math.log(weight) / math.log(1.0 - min(momenta)))


def _validate(engine: _Engine, val: ImageSet, config: TrainConfig, epoch: int, trained: tuple[float, int, int, int],
              steps_before: int, seconds: float) -> dict[str, Any]:
    """The epoch's record: training loss, validation loss and scores (fp32), the spread of the validation
    probabilities, what the batch-norm statistics were computed on, learning rate and speed."""
    total_loss, seen, steps, bn_images = trained
    probabilities = engine.probabilities(val.images, config.eval_batch_size)
    val_loss = float(engine.loss_fn(torch.log(torch.as_tensor(probabilities).clamp_min(1e-12)).float(), val.labels))
    scores = classification_scores(probabilities, val.labels.numpy(), config)
    return {"epoch": epoch + 1, "train_loss": total_loss / max(seen, 1), "val_loss": val_loss,
            **{f"val_{k}": v for k, v in scores.items()},
            "val_spread": check_collapse(probabilities, tolerance=config.collapse_tolerance,
                                         positive_index=1 if probabilities.shape[1] == 2 else None).spread,
            "optimizer_steps": steps_before + steps, "bn_statistics_images": bn_images,
            "lr": float(engine.optimizer.param_groups[0]["lr"]), "train_seconds": round(seconds, 3),
            "train_images_per_second": round(seen * engine.world_size / max(seconds, 1e-9), 2)}


def bn_statistics_settled(record: dict[str, Any], steps_needed: int) -> bool:
    """May this epoch be selected? Its batch-norm statistics were recomputed (precise BN), or their running
    averages have seen ``steps_needed`` steps (records written before these fields: yes)."""
    return bool(record.get("bn_statistics_images", 1)) or int(record.get("optimizer_steps", steps_needed)) >= \
        steps_needed


def _select(engine: _Engine, state: _State, record: dict[str, Any], selection: str) -> None:
    """Keep the epoch's weights when they are the best so far among epochs whose batch-norm statistics have
    settled (an unsettled epoch is kept only until a settled one exists: ``provisional``); note the best
    epoch in ``record``."""
    settled = bn_statistics_settled(record, running_bn_steps_needed(engine.model))
    record["selectable"] = settled
    candidate = {"auc": record["val_auc"], "val_loss": record["val_loss"]}
    provisional = state.best is not None and state.best.get("provisional", False)
    if state.best is None or (settled and provisional):
        better = True  # the first epoch, or the first settled one after unsettled ones
    elif settled or provisional:  # compared with its peers: settled with settled, unsettled with unsettled
        better = _is_better(candidate, state.best, selection)
    else:
        better = False  # an unsettled epoch never replaces a settled one
    if better or state.best is None:  # (the first epoch is always better)
        state.best = {"epoch": record["epoch"], **candidate, **({} if settled else {"provisional": True})}
        state.best_state = _cpu_state(engine.model)
    record["best_epoch"] = state.best["epoch"]


def _step_scheduler(engine: _Engine, val_loss: float) -> None:
    if isinstance(engine.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        engine.scheduler.step(val_loss)
    elif engine.scheduler is not None:
        engine.scheduler.step()


def _checkpoint(engine: _Engine, state: _State, config: TrainConfig, run_dir: Path, record: dict[str, Any],
                trackers: Trackers) -> None:
    """Rank 0: the checkpoint (atomic), the epoch to the trackers (one line of metrics.jsonl, and TensorBoard or
    MLflow when asked) and the epoch's progress line."""
    if engine.rank != 0:
        return
    save_checkpoint(run_dir / CHECKPOINT, {
        "epoch": record["epoch"], "config": config.to_dict(), "model": _cpu_state(engine.model),
        "optimizer": engine.optimizer.state_dict(),
        "scheduler": engine.scheduler.state_dict() if engine.scheduler else {},
        "history": state.history, "best": state.best, "best_state": state.best_state,
        **({"debias": engine.debias.state_dict()} if engine.debias else {})})
    trackers.log_metrics(record["epoch"], record)
    progress_log.info("%s", epoch_line(run_dir.name, record, config.epochs))


def _epochs(engine: _Engine, state: _State, config: TrainConfig, run_dir: Path, train: ImageSet, val: ImageSet,
            images: torch.Tensor, labels: torch.Tensor, trackers: Trackers, progress: bool,
            on_step: Callable[[int, int], None] | None) -> None:
    """The epochs still to train: each trained, validated, selected or not, checkpointed and logged."""
    for epoch in range(state.start_epoch, config.epochs):
        started = time.perf_counter()
        trained = _train_epoch(engine, train, images, labels, config, epoch, progress=progress, on_step=on_step)
        steps_before = int(state.history[-1].get("optimizer_steps", 0)) if state.history else 0
        record = _validate(engine, val, config, epoch, trained, steps_before, time.perf_counter() - started)
        _select(engine, state, record, config.selection)
        _step_scheduler(engine, record["val_loss"])
        state.history.append(record)
        _checkpoint(engine, state, config, run_dir, record, trackers)
        if engine.world_size > 1:
            dist.barrier()


def fit(model: torch.nn.Module, train: ImageSet, val: ImageSet, config: TrainConfig, run_dir: str | Path, *,
        normalization: tuple[float, float], resume: bool = True, progress: bool = False,
        on_step: Callable[[int, int], None] | None = None, tracking: TrackingSettings | None = None,
        params: dict[str, Any] | None = None) -> FitResult:
    """Train ``model`` on ``train``, select the best epoch on ``val``; checkpoints in ``run_dir``.

    ``on_step(epoch, step)`` is called after every optimizer step (tests use it to interrupt a run). Every epoch's
    record goes to metrics.jsonl and to the trackers ``tracking`` asks for, with the configuration (and ``params``).
    """
    run_dir = Path(run_dir)
    engine = _engine(model, config, normalization)
    engine.debias = mitigation(config, train, engine.model, engine.loss_fn, engine.device)
    state = _resume(engine, config, run_dir, resume)
    _distribute(engine)
    images, labels = train.images, train.labels.to(engine.device)  # images stay on the host: one batch at a time
    tracking = tracking if state.start_epoch < config.epochs else None  # nothing to train: no empty tracker run
    trackers = open_trackers(tracking, run_dir, base=[JsonlLog(run_dir / METRICS_LOG, state.history)],
                             params={**config.to_dict(), **(params or {})}, first_step=state.start_epoch + 1) \
        if engine.rank == 0 else Trackers()
    with trackers:
        _epochs(engine, state, config, run_dir, train, val, images, labels, trackers, progress, on_step)
    if state.best is None:  # only when no epoch was asked for and none was resumed
        raise ConfigError(f"{run_dir}: no epoch was trained (epochs = {config.epochs})")
    if state.best.get("provisional") and engine.rank == 0:
        log.warning("%s: no epoch's batch-norm statistics settled (running averages after %d of the %d steps "
                    "needed, bn_recalibration_images = 0): epoch %d kept, its scores are unreliable", run_dir.name,
                    state.history[-1].get("optimizer_steps", 0), running_bn_steps_needed(engine.model),
                    state.best["epoch"])
    model.load_state_dict(state.best_state)
    best_metrics = next(h for h in state.history if h["epoch"] == state.best["epoch"])
    return FitResult(int(state.best["epoch"]), best_metrics, state.history, state.best_state,
                     engine.probabilities(val.images, config.eval_batch_size), state.start_epoch,
                     engine.debias.describe() if engine.debias else None)
