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
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image

from unveil.data.records import concat_records
from unveil.data.sources import load_source
from unveil.data.splits import drop_duplicate_images, patient_exclusive_split
from unveil.io import ImageReadError, read_image
from unveil.progress import bar as progress_bar
from unveil.provenance import environment_versions
from unveil.segmentation.fitting import (  # noqa: F401 - augment, _select: importable here as before the split
    LungTrainingConfig,
    LungTrainingError,
    _select,
    augment,
    fit,
)
from unveil.segmentation.infer import LungSegmenter, SegmenterError, prepare_input
from unveil.segmentation.metrics import mask_figures
from unveil.segmentation.model import (
    CONVENTIONS,
    DEFAULT_CONVENTION,
    architecture_spec,
    convention_of,
    save_lung_bundle,
)
from unveil.synth.config import DatasetSpec, load_config
from unveil.synth.generate import generate
from unveil.tracking import TrackingSettings, open_trackers

log = logging.getLogger(__name__)


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


def held_out_records(records: pd.DataFrame, parts: str | Path) -> pd.DataFrame:
    """``records`` less those a training run trained or validated on, by its ``parts.csv``: only its
    'test' and 'excluded' records and records it never saw remain (an honest, held-out evaluation)."""
    parts = Path(parts)
    if not parts.is_file():
        raise SegmenterError(f"{parts}: parts file not found")
    table = pd.read_csv(parts)
    held_out = set(table.loc[table["part"].isin(["test", "excluded"]), "record_id"])
    trained = set(table["record_id"]) - held_out
    return records[~records["record_id"].isin(trained)]


def summarise_figures(figures: pd.DataFrame) -> dict[str, dict[str, Any]]:
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
                     command: str = "", tracking: TrackingSettings | None = None) -> dict[str, Any]:
    """Train on ``sources`` (plus ``synthetic_images`` generated phantoms, training only), evaluate
    on the real sources' patient-exclusive test parts and on ``holdout``; write the bundle
    (``lung_unet.*``), per-image figures, history and metadata under ``out``.

    Records whose ``source`` is in ``exclude`` (e.g. ``montgomery`` from the pooled
    ``lung-segmentation`` collection) never reach training or validation: they are all evaluated
    as the part ``excluded`` (a cross-dataset figure). The split is drawn before the exclusion, so
    the other sources' parts are those of the run without it. Every epoch goes to ``history.csv`` and to the
    trackers ``tracking`` asks for (TensorBoard, MLflow: :mod:`unveil.tracking`)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    records = _records_in_parts(sources, exclude, config)
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
    started = time.perf_counter()
    with open_trackers(tracking, out, base=[_HistoryFile(out / "history.csv")],
                       params={**asdict(config), "device": device}) as trackers:
        network = fit(train_x, train_y, val_x, val_y, config, train_groups=train_sources, val_groups=val_sources,
                      history=lambda row: trackers.log_metrics(row["epoch"], row), device=device)
    description = _bundle_description(network, config, sources=sources, holdout=holdout, records=records,
                                      exclude=exclude, synthetic_images=synthetic_images, problems=problems,
                                      seconds=time.perf_counter() - started, command=command)
    segmenter = LungSegmenter(network, description)
    figures = [evaluate(segmenter, part).assign(part=name) for name, part in tests.items() if len(part)]
    figures_table = pd.concat(figures, ignore_index=True) if figures else pd.DataFrame()
    description["validation"] = {name: summarise_figures(group) for name, group in figures_table.groupby("part")} \
        if len(figures_table) else {}
    save_lung_bundle(out / "lung_unet", network, description)
    figures_table.to_csv(out / "figures.csv", index=False)
    records[["record_id", "source", "patient_id", "part"]].to_csv(out / "parts.csv", index=False)
    return description


def _records_in_parts(sources: Sequence[tuple[str, str | Path]], exclude: Sequence[str],
                      config: LungTrainingConfig) -> pd.DataFrame:
    """The sources' records with a mask, each with its ``part`` (train / val / test, or excluded)."""
    records = mask_records(sources)
    if records.empty:
        raise LungTrainingError("no image with a lung mask in the training sources")
    known = set(records["source"].astype(str))
    unknown = sorted(set(exclude) - known)
    if unknown:
        raise LungTrainingError(f"--exclude {', '.join(unknown)}: no such source in the training data "
                                f"(sources: {', '.join(sorted(known))})")
    parts = assign_parts(records, seed=config.seed, test_fraction=config.test_fraction,
                         val_fraction=config.val_fraction).to_numpy()
    records = records.assign(part=parts)
    records.loc[records["source"].isin(list(exclude)), "part"] = "excluded"
    return records


class _HistoryFile:
    """Appends one row per epoch to ``history.csv`` (started afresh), readable while training runs: the lung
    trainer's own log among its trackers (:class:`unveil.tracking.Tracker`)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.unlink(missing_ok=True)

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Nothing: the configuration is in the bundle's description."""

    def log_metrics(self, step: int, metrics: Mapping[str, Any]) -> None:
        self(dict(metrics))

    def close(self, failed: bool = False) -> None:
        """Nothing to close: every row is written whole when logged."""

    def __call__(self, row: dict[str, Any]) -> None:
        new = not self.path.exists()
        with self.path.open("a", newline="") as stream:
            writer = csv.DictWriter(stream, fieldnames=["epoch", "loss", "seconds", "val_dice"])
            if new:
                writer.writeheader()
            writer.writerow(row)


def _bundle_description(network: torch.nn.Module, config: LungTrainingConfig, *,
                        sources: Sequence[tuple[str, str | Path]], holdout: Sequence[tuple[str, str | Path]],
                        records: pd.DataFrame, exclude: Sequence[str], synthetic_images: int, problems: list[str],
                        seconds: float, command: str) -> dict[str, Any]:
    """The lung bundle's description: network, input contract, conventions and how it was trained."""
    return {
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
                     "config": asdict(config), "seconds": round(seconds, 1), "command": command,
                     "skipped": problems},
        "versions": environment_versions(),
    }
