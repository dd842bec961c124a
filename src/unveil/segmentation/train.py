"""Train the lung U-Net on any lung-mask sources, with patient-exclusive validation and test parts.

Each training source is split by patient (test, then validation from the rest); held-out sources
are only evaluated. Images are decoded once, resized and equalized into memory (a few hundred
images at 256x256 is a few tens of MB); augmentation (rigid + scale, tone, noise) runs batched in
torch. The best validation Dice selects the weights. Figures are computed at each image's own
resolution and reported per source.
"""

from __future__ import annotations

import csv
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss
from PIL import Image

from unveil.data.records import concat_records
from unveil.data.sources import load_source
from unveil.data.splits import drop_duplicate_images, patient_exclusive_split
from unveil.io import ImageReadError, read_image
from unveil.progress import bar as progress_bar
from unveil.progress import duration, progress_log
from unveil.provenance import environment_versions
from unveil.segmentation.infer import LungSegmenter, prepare_input, to_tensor
from unveil.segmentation.metrics import mask_figures
from unveil.segmentation.model import (
    CONVENTIONS,
    DEFAULT_ARCHITECTURE,
    DEFAULT_CONVENTION,
    architecture_spec,
    build_network,
    convention_of,
    save_lung_bundle,
)
from unveil.synth.config import DatasetSpec, load_config
from unveil.synth.generate import generate

log = logging.getLogger(__name__)


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


def read_mask(path: str | Path) -> np.ndarray:
    """A lung mask file as booleans (anti-aliased masks are thresholded at 127)."""
    with Image.open(path) as image:
        return np.asarray(image.convert("L")) > 127


def mask_records(specs: Sequence[tuple[str, str | Path]]) -> pd.DataFrame:
    """Records of every (source, path) that have a lung mask."""
    tables = []
    for source, path in specs:
        records = load_source(source, path).records
        tables.append(records[records["mask_path"].notna()])
    records, removed = drop_duplicate_images(concat_records(tables))  # e.g. shenzhen/ inside lung-segmentation/
    for message in removed:
        log.warning("%s", message)
    return records


def assign_parts(records: pd.DataFrame, *, seed: int, test_fraction: float, val_fraction: float) -> pd.Series:
    """Patient-exclusive train / val / test parts, stratified by source."""
    return patient_exclusive_split(records, seed=seed, test_fraction=test_fraction, val_fraction=val_fraction,
                                   stratify_by=("source",))


def load_arrays(records: pd.DataFrame, size: int) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    """Prepared images and masks at ``size``, the source of each, and the skipped pairs (named)."""
    images, masks, problems, sources = [], [], [], []
    for row in progress_bar(records.itertuples(), total=len(records), desc="load", unit="img", leave=False):
        try:
            image = read_image(row.path).pixels
            mask = read_mask(row.mask_path)
        except (ImageReadError, OSError) as error:
            problems.append(f"{row.record_id}: {error}")
            continue
        if mask.shape != image.shape:
            problems.append(f"{row.record_id}: mask {mask.shape} and image {image.shape} differ in size")
            continue
        images.append(prepare_input(image, size))
        resized = Image.fromarray(mask.astype(np.uint8) * 255).resize((size, size), Image.Resampling.BILINEAR)
        masks.append(np.asarray(resized) > 127)
        sources.append(str(row.source))
    if not images:
        return np.zeros((0, size, size), np.float32), np.zeros((0, size, size), np.float32), problems, sources
    return np.stack(images).astype(np.float32), np.stack(masks).astype(np.float32), problems, sources


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
    loss_function = DiceCELoss(sigmoid=True)
    images = torch.from_numpy(train_images)[:, None]
    masks = torch.from_numpy(train_masks)[:, None]

    def channels_of(groups: Sequence[str] | None, count: int) -> torch.Tensor:
        names = [convention_of(g) for g in groups] if groups is not None else [DEFAULT_CONVENTION] * count
        return torch.tensor([CONVENTIONS.index(n) for n in names], dtype=torch.long)

    train_channels = channels_of(train_groups, len(images))
    val_channels = channels_of(val_groups, len(val_images))
    val_x = to_tensor(val_images) if len(val_images) else None
    val_y = torch.from_numpy(val_masks)[:, None] if len(val_masks) else None
    best, best_state = -1.0, None
    weights = None
    if train_groups is not None and config.balance_sources and len(set(train_groups)) > 1:
        groups = pd.Series(list(train_groups))
        weights = torch.tensor((1.0 / groups.map(groups.value_counts())).to_numpy(), dtype=torch.float64)
    for epoch in progress_bar(range(1, config.epochs + 1), desc="lungs train", unit="epoch"):
        network.train()
        if weights is None:
            order = torch.randperm(len(images), generator=generator)[:draws]
        else:
            order = torch.multinomial(weights, draws, replacement=True, generator=generator)
        started, total = time.perf_counter(), 0.0
        for start in range(0, len(order), config.batch_size):
            index = order[start:start + config.batch_size]
            x, y = augment(images[index], masks[index], generator, config.anisotropic)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = loss_function(_select(network((x - 0.5) / 0.29), train_channels[index].to(device)), y)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            scheduler.step()
            total += float(loss.detach()) * len(index)
        row: dict[str, Any] = {"epoch": epoch, "loss": round(total / len(order), 5),
                               "seconds": round(time.perf_counter() - started, 2)}
        if val_x is not None and (epoch % config.validate_every == 0 or epoch == config.epochs):
            network.eval()
            with torch.inference_mode():
                logits = torch.cat([network(val_x[i:i + 16].to(device)).cpu() for i in range(0, len(val_x), 16)])
                score = _dice_batch(_select(logits, val_channels), val_y)
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


def evaluate(segmenter: LungSegmenter, records: pd.DataFrame) -> pd.DataFrame:
    """Per-image Dice, IoU and HD95 at each image's own resolution, after post-processing, each
    against the model output in its source's annotation convention."""
    rows = []
    for row in progress_bar(records.itertuples(), total=len(records), desc="lungs evaluate", unit="img", leave=False):
        image = read_image(row.path).pixels
        truth = read_mask(row.mask_path)
        predicted = segmenter.segment(image, convention=convention_of(row.source))
        rows.append({"record_id": row.record_id, "source": row.source, "convention": convention_of(row.source),
                     "height": image.shape[0],
                     "width": image.shape[1], **mask_figures(predicted, truth)})
    return pd.DataFrame(rows)


def summarise_figures(figures: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Per source and overall: mean, 10th percentile and minimum Dice, mean IoU, mean and median
    HD95 (pixels of a 256-pixel-wide resampling), with the convention each source was scored in."""
    summary = {}
    for name, group in [*figures.groupby("source"), ("all", figures)]:
        conventions = sorted(set(group["convention"].astype(str))) if "convention" in group else []
        summary[str(name)] = {"images": int(len(group)),
                              "convention": conventions[0] if len(conventions) == 1 else "mixed",
                              "dice_mean": round(float(group["dice"].mean()), 4),
                              "dice_p10": round(float(group["dice"].quantile(0.1)), 4),
                              "dice_min": round(float(group["dice"].min()), 4),
                              "iou_mean": round(float(group["iou"].mean()), 4),
                              "hd95_px256_mean": round(float(group["hd95_px256"].mean()), 3),
                              "hd95_px256_median": round(float(group["hd95_px256"].median()), 3)}
    return summary


SYNTHETIC_SOURCE = "synthetic-lungs"


def synthetic_lung_records(out: Path, images: int, *, size: int, seed: int) -> pd.DataFrame:
    """Generate ``images`` synthetic radiographs with masks (every `paper` signature, all findings)
    under ``out`` and return their records (source ``synthetic-lungs``, "visible" convention)."""
    config = load_config("paper")
    quarter = max(1, images // 4)
    spec = DatasetSpec("lungs", "shenzhen", tuple(s for s in config.signatures if s != "neutral"),
                       {"normal": images - 3 * quarter, "covid": quarter, "bacterial": quarter, "viral": quarter})
    generate(replace(config, image_size=size, datasets={"lungs": spec}), out, seed=seed, overwrite=True)
    return load_source("shenzhen", out / "lungs", source_name=SYNTHETIC_SOURCE).records


def train_lung_model(sources: Sequence[tuple[str, str | Path]], out: str | Path, *,
                     holdout: Sequence[tuple[str, str | Path]] = (), config: LungTrainingConfig = LungTrainingConfig(),
                     synthetic_images: int = 0, exclude: Sequence[str] = (), device: str = "cpu",
                     command: str = "") -> dict[str, Any]:
    """Train on ``sources`` (plus ``synthetic_images`` generated phantoms, training only), evaluate
    on the real sources' patient-exclusive test parts and on ``holdout``; write the bundle
    (``lung_unet.*``), per-image figures, history and metadata under ``out``.

    Records whose ``source`` is in ``exclude`` (e.g. ``montgomery`` from the pooled
    ``lung-segmentation`` collection) never reach training or validation: they are all evaluated
    as the part ``excluded`` (a cross-dataset figure). The split is drawn before the exclusion, so
    the other sources' parts are those of the run without it."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    records = mask_records(sources)
    if records.empty:
        raise ValueError("no image with a lung mask in the training sources")
    unknown = sorted(set(exclude) - set(records["source"].astype(str)))
    if unknown:
        raise ValueError(f"--exclude {', '.join(unknown)}: no such source in the training data "
                         f"(sources: {', '.join(sorted(set(records['source'].astype(str))))})")
    parts = assign_parts(records, seed=config.seed, test_fraction=config.test_fraction,
                         val_fraction=config.val_fraction).to_numpy()
    records = records.assign(part=parts)
    records.loc[records["source"].isin(list(exclude)), "part"] = "excluded"
    if synthetic_images:
        synthetic = synthetic_lung_records(out / "synthetic", synthetic_images, size=config.size, seed=config.seed)
        records = concat_records([records, synthetic.assign(part="train")])
    train, val = records[records["part"] == "train"], records[records["part"] == "val"]
    tests = {"test": records[records["part"] == "test"], "excluded": records[records["part"] == "excluded"]}
    if holdout:
        tests["holdout"] = mask_records(holdout)
    train_x, train_y, problems, train_sources = load_arrays(train, config.size)
    val_x, val_y, val_problems, val_sources = load_arrays(val, config.size)
    problems += val_problems
    history_path = out / "history.csv"
    history_path.unlink(missing_ok=True)

    def write_history(row: dict[str, Any]) -> None:
        new = not history_path.exists()
        with history_path.open("a", newline="") as stream:
            writer = csv.DictWriter(stream, fieldnames=["epoch", "loss", "seconds", "val_dice"])
            if new:
                writer.writeheader()
            writer.writerow(row)

    started = time.perf_counter()
    network = fit(train_x, train_y, val_x, val_y, config, history=write_history, train_groups=train_sources,
                  val_groups=val_sources, device=device)
    training_seconds = time.perf_counter() - started
    description = {
        "architecture": architecture_spec(config.architecture),
        "architecture_name": config.architecture,
        "parameters": int(sum(p.numel() for p in network.parameters())),
        "input": {"size": config.size, "equalize": True, "channels": 1, "range": "[0, 1] after equalization",
                  "standardise": {"mean": 0.5, "std": 0.29}},
        "threshold": 0.5,
        "conventions": list(CONVENTIONS),
        "default_convention": DEFAULT_CONVENTION,
        "postprocess": "two largest components, holes filled",
        "training": {"sources": [f"{s}:{p}" for s, p in sources], "holdout": [f"{s}:{p}" for s, p in holdout],
                     "images": {part: int((records["part"] == part).sum())
                                for part in ("train", "val", "test", "excluded")},
                     "excluded_sources": sorted(exclude),
                     "synthetic_images": synthetic_images,
                     "config": asdict(config), "seconds": round(training_seconds, 1), "command": command,
                     "skipped": problems},
        "versions": environment_versions(),
    }
    segmenter = LungSegmenter(network, description)
    figures = []
    for name, part in tests.items():
        if len(part):
            figures.append(evaluate(segmenter, part).assign(part=name))
    figures_table = pd.concat(figures, ignore_index=True) if figures else pd.DataFrame()
    description["validation"] = {name: summarise_figures(group) for name, group in figures_table.groupby("part")} \
        if len(figures_table) else {}
    save_lung_bundle(out / "lung_unet", network, description)
    figures_table.to_csv(out / "figures.csv", index=False)
    records[["record_id", "source", "patient_id", "part"]].to_csv(out / "parts.csv", index=False)
    return description
