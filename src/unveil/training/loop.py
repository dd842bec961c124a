"""The training loop: in-memory batches, batch augmentation, checkpoint every epoch, exact resume.

A run directory holds ``checkpoint.pt`` (written atomically after every epoch: weights, optimizer,
scheduler, best weights, history) and ``metrics.jsonl`` (one line per epoch). Every random draw of
an epoch comes from a generator seeded by (seed, epoch), so a run killed at any point and resumed
from its last checkpoint ends with the same weights as an uninterrupted run with the same seed.
Under ``torchrun`` (several processes) the model is wrapped in DistributedDataParallel and each
rank takes its share of every global batch.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

from unveil.errors import UnveilError
from unveil.progress import bar as progress_bar
from unveil.progress import duration, progress_log
from unveil.thresholds import PAPER_THRESHOLD, ThresholdChoice, choose_threshold, fixed_threshold
from unveil.training.config import THRESHOLD_OPTIONS, TrainConfig
from unveil.training.data import ImageSet, apply_affine, random_rigid_affine, to_model_input

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
METRICS_LOG = "metrics.jsonl"


class CheckpointError(UnveilError, RuntimeError):
    """A checkpoint cannot be resumed (unreadable, or from a different configuration)."""


@dataclass
class FitResult:
    best_epoch: int
    best_metrics: dict[str, float]
    history: list[dict[str, Any]]
    best_state: dict[str, torch.Tensor]
    val_probabilities: np.ndarray
    resumed_from_epoch: int


def resolve_device(name: str) -> torch.device:
    """``auto`` -> this rank's CUDA device when available, else CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} requested but CUDA is not available on this machine")
    return device


def bf16_supported(device: torch.device) -> bool:
    """bf16 autocast pays off: any CUDA device, or a CPU with native bf16 (AVX512-BF16 / AMX)."""
    if device.type == "cuda":
        return True
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside ``torchrun``."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed() -> bool:
    """Join the process group when launched by ``torchrun`` (gloo on CPU, nccl on CUDA)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or (dist.is_available() and dist.is_initialized()):
        return False
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend=backend)
    return True


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The random stream of one epoch (shuffling, sampling, augmentation)."""
    state = np.random.SeedSequence([seed, epoch]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state & 0x7FFF_FFFF_FFFF_FFFF))


def epoch_order(labels: torch.Tensor, sampler: str, generator: torch.Generator) -> torch.Tensor:
    """Indices of one epoch: a permutation, or class-balanced draws with replacement."""
    if sampler == "balanced":
        counts = torch.bincount(labels).double()
        weights = 1.0 / counts[labels]
        return torch.multinomial(weights, len(labels), replacement=True, generator=generator)
    return torch.randperm(len(labels), generator=generator)


def make_loss(config: TrainConfig) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if config.loss == "focal":
        from monai.losses import FocalLoss

        focal = FocalLoss(to_onehot_y=True, use_softmax=True, gamma=config.focal_gamma)
        return lambda logits, labels: focal(logits.float(), labels[:, None])
    return lambda logits, labels: torch.nn.functional.cross_entropy(logits.float(), labels)


def make_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "adam":
        return torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                           weight_decay=config.weight_decay)


def make_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig) -> Any:
    if config.scheduler == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=config.plateau_factor,
                                                          patience=config.plateau_patience)
    if config.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    return None


@torch.inference_mode()
def predict_probabilities(model: torch.nn.Module, images: torch.Tensor, mean: float, std: float, *,
                          device: torch.device, batch_size: int = 64, amp: bool = False,
                          channels_last: bool = False) -> np.ndarray:
    """Softmax probabilities (N x classes) of uint8 images, in eval mode (fp32 unless ``amp``)."""
    was_training = model.training
    model.eval()
    out = []
    for chunk in torch.split(images, batch_size):
        batch = to_model_input(chunk.to(device, non_blocking=True), mean, std)
        if channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(batch)
        out.append(torch.softmax(logits.float(), dim=1).cpu())
    model.train(was_training)
    return torch.cat(out).numpy().astype(np.float64)


@torch.inference_mode()
def encoder_features(model: torch.nn.Module, images: torch.Tensor, mean: float, std: float, *,
                     device: torch.device = torch.device("cpu"), batch_size: int = 64) -> np.ndarray:
    """Encoder features (N x feature_dim, before the head) of uint8 images, in eval mode, fp32."""
    was_training = model.training
    model.eval()
    chunks = [model.features(to_model_input(chunk.to(device), mean, std)).float().cpu().numpy()
              for chunk in torch.split(images, batch_size)]
    model.train(was_training)
    return np.concatenate(chunks).astype(np.float64)


@torch.inference_mode()
def probabilities_from_features(model: torch.nn.Module, features: np.ndarray) -> np.ndarray:
    """Softmax of the head applied to encoder features: scores without a second encoder pass."""
    logits = model.head(torch.as_tensor(features, dtype=torch.float32))
    return torch.softmax(logits.float(), dim=1).numpy().astype(np.float64)


def classification_scores(probabilities: np.ndarray, labels: np.ndarray,
                          config: TrainConfig | None = None) -> dict[str, float]:
    """Validation AUC (binary, or macro one-vs-rest), accuracy and balanced accuracy.
    AUC is NaN when the validation split holds a single class.

    Binary tasks with ``config``: accuracy and balanced accuracy at the threshold ``config.threshold_rule``
    picks on these predictions (``threshold``; what the bundle will record), and balanced accuracy at the
    fixed 0.5 beside it (``balanced_accuracy_at_0.5``). Otherwise the decision is the most probable class."""
    predicted = probabilities.argmax(axis=1)
    extra: dict[str, float] = {}
    present = np.unique(labels)
    if config is not None and probabilities.shape[1] == 2:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            at_half = (probabilities[:, 1] >= PAPER_THRESHOLD).astype(np.int64)
            extra["balanced_accuracy_at_0.5"] = float(balanced_accuracy_score(labels, at_half))
        choice = decision_threshold(probabilities[:, 1], labels, config)
        extra["threshold"] = choice.value
        predicted = (probabilities[:, 1] >= choice.value).astype(np.int64)
    with warnings.catch_warnings():  # a class never predicted or absent is a fact here, not a warning
        warnings.simplefilter("ignore", UserWarning)
        balanced = float(balanced_accuracy_score(labels, predicted))
    scores = {"accuracy": float((predicted == labels).mean()), "balanced_accuracy": balanced, **extra}
    if len(present) < 2:
        scores["auc"] = math.nan
    elif probabilities.shape[1] == 2:
        scores["auc"] = float(roc_auc_score(labels, probabilities[:, 1]))
    else:
        columns = probabilities[:, present] / probabilities[:, present].sum(axis=1, keepdims=True)
        scores["auc"] = float(roc_auc_score(labels, columns, multi_class="ovr", average="macro", labels=present)
                              if len(present) > 2 else roc_auc_score(labels == present[1], columns[:, 1]))
    return scores


def decision_threshold(probabilities: np.ndarray, labels: np.ndarray, config: TrainConfig) -> ThresholdChoice:
    """The threshold ``config.threshold_rule`` chooses on validation ``probabilities`` (of the positive
    class); when the rule cannot apply (one class only in validation), the paper's fixed 0.5, saying why."""
    try:
        return choose_threshold(labels, probabilities, config.threshold_rule, value=config.threshold_value,
                                target_sensitivity=config.target_sensitivity)
    except ValueError as error:
        fallback = fixed_threshold()
        return replace(fallback, description=f"{fallback.description} ({config.threshold_rule} impossible: {error})")


def _is_better(candidate: dict[str, float], best: dict[str, float] | None, selection: str) -> bool:
    if best is None or selection == "last":
        return True
    if selection == "auc" and not (math.isnan(candidate["auc"]) or math.isnan(best["auc"])):
        if candidate["auc"] != best["auc"]:
            return candidate["auc"] > best["auc"]
    return candidate["val_loss"] < best["val_loss"]


def epoch_line(run: str, record: dict[str, Any], epochs: int) -> str:
    """One finished epoch in one line: ``run epoch 3/15: train loss .., val loss .., AUC .., BA .., lr .., 12 s``."""
    best = " (best so far)" if record["best_epoch"] == record["epoch"] else ""
    return (f"{run} epoch {record['epoch']}/{epochs}: train loss {record['train_loss']:.4f}, "
            f"val loss {record['val_loss']:.4f}, val AUC {record['val_auc']:.3f}, "
            f"val BA {record['val_balanced_accuracy']:.3f}, lr {record['lr']:.2g}, "
            f"{duration(record['train_seconds'])}{best}")


def _save_checkpoint(path: Path, document: dict[str, Any]) -> None:
    """Atomic: a kill during the write leaves the previous checkpoint intact."""
    temporary = path.with_name(path.name + ".tmp")
    torch.save(document, temporary)
    os.replace(temporary, path)


def load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a truncated or foreign file: say which and why
        raise CheckpointError(f"{path}: not a readable unveil checkpoint ({type(error).__name__}: {error})") from None


def check_resumable(state: dict[str, Any], config: TrainConfig, path: Path) -> None:
    """A checkpoint continues only the same configuration, except ``epochs``: more extends the run
    (the optimizer and LR schedule continue where they stopped, and the best epoch is chosen over
    all epochs), fewer than already trained is refused. A cosine schedule spans the planned epochs,
    so with it ``epochs`` cannot change."""
    saved = dict(state.get("config") or {})
    wanted = config.to_dict()
    keys = dict.fromkeys([*saved, *wanted])
    ignored = {"epochs", *THRESHOLD_OPTIONS}  # the threshold is chosen after training
    differing = [key for key in keys if key not in ignored and saved.get(key) != wanted.get(key)]
    if differing:
        changes = ", ".join(f"{key} {saved.get(key)!r} -> {wanted.get(key)!r}" for key in differing)
        raise CheckpointError(f"{path}: written by a run with a different configuration ({changes}); "
                              "use a new run directory (or --no-resume to start over)")
    done, planned = int(state["epoch"]), int(saved.get("epochs", config.epochs))
    if config.epochs < done:
        raise CheckpointError(f"{path}: {done} epoch(s) already trained, more than the {config.epochs} asked for; "
                              f"ask for at least {done} (more extends the run), or use a new run directory "
                              "(or --no-resume to start over)")
    if config.epochs != planned and config.scheduler == "cosine":
        raise CheckpointError(f"{path}: the cosine schedule spans the {planned} planned epoch(s), so epochs cannot "
                              f"change to {config.epochs}; use a new run directory (or --no-resume)")


def _cpu_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def fit(model: torch.nn.Module, train: ImageSet, val: ImageSet, config: TrainConfig, run_dir: str | Path, *,
        normalization: tuple[float, float], resume: bool = True, progress: bool = False,
        on_step: Callable[[int, int], None] | None = None) -> FitResult:
    """Train ``model`` on ``train``, select the best epoch on ``val``; checkpoints in ``run_dir``.

    ``on_step(epoch, step)`` is called after every optimizer step (tests use it to interrupt a run).
    """
    run_dir = Path(run_dir)
    rank, world_size = world()
    device = resolve_device(config.device)
    channels_last = config.channels_last if config.channels_last is not None else True
    amp = config.amp and bf16_supported(device)
    mean, std = normalization
    fill = (0.0 - mean) / std
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, config)
    scheduler = make_scheduler(optimizer, config)
    loss_fn = make_loss(config)

    history: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    best_state = _cpu_state(model)
    start_epoch = 0
    checkpoint_path = run_dir / CHECKPOINT
    if resume and checkpoint_path.exists():
        state = load_checkpoint(checkpoint_path)
        check_resumable(state, config, checkpoint_path)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(state["scheduler"])
        history, best, best_state = list(state["history"]), state["best"], state["best_state"]
        start_epoch = int(state["epoch"])
        if rank == 0:
            planned = int(state["config"]["epochs"])
            extended = f" (extended from {planned} to {config.epochs} epochs)" if planned != config.epochs else ""
            progress_log.info("%s: resuming after epoch %d of %d%s", run_dir.name, start_epoch, config.epochs,
                              extended)
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / METRICS_LOG).write_text("".join(json.dumps(h) + "\n" for h in history), encoding="utf-8")

    network: torch.nn.Module = model
    if world_size > 1:
        network = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    images_on_device = train.images.to(device)
    labels_on_device = train.labels.to(device)
    val_labels = val.labels.numpy()

    for epoch in range(start_epoch, config.epochs):
        started = time.perf_counter()
        generator = epoch_generator(config.seed, epoch)
        order = epoch_order(train.labels, config.sampler, generator)
        batches = list(torch.split(order, config.batch_size))
        if len(batches) > 1 and len(batches[-1]) < 2 * world_size:
            batches = batches[:-1]  # a last batch too small to share (or for batch norm) is dropped
        network.train()
        total_loss, seen = 0.0, 0
        bar = progress_bar(batches, desc=f"epoch {epoch + 1}/{config.epochs}", unit="batch", leave=False,
                           enabled=progress and rank == 0)
        for step, batch_indices in enumerate(bar):
            theta = random_rigid_affine(len(batch_indices), generator, config.rotation_degrees, config.translate,
                                        config.hflip)
            mine = slice(rank, None, world_size)
            local = batch_indices[mine].to(device)
            inputs = to_model_input(images_on_device[local], mean, std)
            if config.rotation_degrees or config.translate or config.hflip:
                inputs = apply_affine(inputs, theta[mine], fill)
            if channels_last:
                inputs = inputs.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                logits = network(inputs)
            loss = loss_fn(logits, labels_on_device[local])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total_loss += float(loss.detach()) * len(local)
            seen += len(local)
            bar.set_postfix(loss=f"{total_loss / max(seen, 1):.4f}")
            if on_step is not None:
                on_step(epoch, step)
        train_seconds = time.perf_counter() - started
        if world_size > 1:  # batch-norm statistics are per rank: take rank 0's so every rank validates alike
            for buffer in model.buffers():
                dist.broadcast(buffer, src=0)

        probabilities = predict_probabilities(model, val.images, mean, std, device=device,
                                              batch_size=config.eval_batch_size, amp=amp,
                                              channels_last=channels_last)
        val_loss = float(loss_fn(torch.log(torch.as_tensor(probabilities).clamp_min(1e-12)).float(),
                                 val.labels))
        record = {"epoch": epoch + 1, "train_loss": total_loss / max(seen, 1), "val_loss": val_loss,
                  **{f"val_{k}": v for k, v in classification_scores(probabilities, val_labels, config).items()},
                  "lr": float(optimizer.param_groups[0]["lr"]), "train_seconds": round(train_seconds, 3),
                  "train_images_per_second": round(seen * world_size / max(train_seconds, 1e-9), 2)}
        candidate = {"auc": record["val_auc"], "val_loss": val_loss}
        if _is_better(candidate, best, config.selection):
            best = {"epoch": epoch + 1, **candidate}
            best_state = _cpu_state(model)
        record["best_epoch"] = best["epoch"]
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            scheduler.step(val_loss)
        elif scheduler is not None:
            scheduler.step()
        history.append(record)
        if rank == 0:
            _save_checkpoint(checkpoint_path, {
                "epoch": epoch + 1, "config": config.to_dict(), "model": _cpu_state(model),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict() if scheduler else {},
                "history": history, "best": best, "best_state": best_state})
            with open(run_dir / METRICS_LOG, "a", encoding="utf-8") as stream:
                stream.write(json.dumps(record) + "\n")
            progress_log.info("%s", epoch_line(run_dir.name, record, config.epochs))
        if world_size > 1:
            dist.barrier()

    assert best is not None, "no epoch was run"
    model.load_state_dict(best_state)
    probabilities = predict_probabilities(model, val.images, mean, std, device=device,
                                          batch_size=config.eval_batch_size, amp=amp, channels_last=channels_last)
    best_metrics = next(h for h in history if h["epoch"] == best["epoch"])
    return FitResult(int(best["epoch"]), best_metrics, history, best_state, probabilities, start_epoch)
