"""Training throughput: our loop vs a faithful re-creation of the paper's loop, same model, data, machine.

Issue figures: our loop >= 3x the paper's loop, and >= 85 % of the model-only limit.

- ours:       `unveil.training.fit` (images decoded once into memory, batch rigid augmentation with one
              affine_grid/grid_sample, batch 32, channels-last, bf16 autocast where the hardware has it);
- paper:      every epoch, PIL decodes each image file, torchvision transforms it (RandomAffine,
              ToTensor, Normalize), DataLoader batches of 4, fp32, default memory format. The files it
              decodes are the same pre-processed images written as 8-bit PNG at the working size (the
              cheapest possible decode: the paper's own files were larger);
- model-only: forward + backward + optimizer step on one batch already in memory, with our loop's
              settings: the upper bound of any loop on this model and machine.

Throughput is images/s over the last epoch (the first warms up); validation is not counted.

Every architecture of the model catalog (:mod:`unveil.models.catalog`) runs by default (``--arch``, repeatable,
chooses some); ``--width`` applies to the architectures whose width scales (the others run at 1.0). For each it
prints one JSON object: the three rates, ``speedup_vs_paper`` (ours / paper) and ``share_of_model_only``
(ours / model-only); then a Markdown table of them all. ``--out`` writes the list of objects as JSON.

    .venv/bin/python benchmarks/train_speed.py --arch resnet18 --data chestxray:../shared/data/chest_xray
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from unveil.errors import UnveilError
from unveil.models import build_model, display_name, model_names, model_spec
from unveil.preprocess.cache import PreprocessSettings, preprocess_records
from unveil.provenance import write_text_atomic
from unveil.training import TrainConfig, fit, fit_normalization, load_image_set
from unveil.training.data import ImageSet
from unveil.training.loop import bf16_supported, make_loss, make_optimizer


def load_images(spec: str, size: int, cache: Path, mask: str, images: int | None = None, seed: int = 0) -> ImageSet:
    """The images of source ``SOURCE:PATH`` pre-processed at ``size``; with ``images``, a random subset of that
    many (drawn with ``seed`` before pre-processing, so that only they are decoded). Classes: all the source's."""
    from unveil.data.sources import load_source

    source, _, root = spec.partition(":")
    records = load_source(source, root).records
    classes = sorted(records["finding"].unique())
    if images is not None:
        rng = np.random.default_rng(seed)
        records = records.iloc[np.sort(rng.choice(len(records), min(images, len(records)), replace=False))]
    report = preprocess_records(records, cache, PreprocessSettings(size=size, mask=mask), workers=2)
    labels = records["finding"].map({c: i for i, c in enumerate(classes)}).to_numpy()
    return load_image_set(records, report.manifest, labels, tuple(classes), size=size)


def select_architectures(chosen: Sequence[str] | None) -> tuple[str, ...]:
    """The architectures to run: ``chosen`` (each checked against the catalog, duplicates dropped) or, when none
    is given, every architecture of the catalog in its table order."""
    if not chosen:
        return model_names()
    for name in chosen:
        model_spec(name)  # a ModelError naming the known models
    return tuple(dict.fromkeys(chosen))


def width_for(architecture: str, width: float) -> float:
    """``width`` for an architecture whose channels it scales; 1.0 for the others (their only width)."""
    return width if model_spec(architecture).scalable_width else 1.0


def ratio(numerator: float, denominator: float, digits: int) -> float | None:
    """``numerator / denominator`` rounded to ``digits``; None when the denominator is not positive."""
    return round(numerator / denominator, digits) if denominator > 0 else None


def ours(data: ImageSet, config: TrainConfig, run_dir: Path) -> float:
    """Images/s of the last epoch of `unveil.training.fit` (validation on 8 images, not counted)."""
    torch.manual_seed(config.seed)
    model = build_model(config.architecture, num_classes=len(data.classes), width=config.width)
    small_val = ImageSet(data.images[:8], data.labels[:8], data.records.iloc[:8], data.classes)
    result = fit(model, data, small_val, config, run_dir, normalization=fit_normalization(data.images), resume=False)
    return float(result.history[-1]["train_images_per_second"])


def paper_loop(data: ImageSet, config: TrainConfig, folder: Path, epochs: int, workers: int) -> float:
    """Images/s of the last epoch of the paper's loop (PIL decode of 8-bit PNGs written to ``folder``,
    torchvision transforms, DataLoader batches of 4 with ``workers`` workers, fp32)."""
    from torch.utils.data import DataLoader, Dataset
    from torchvision import transforms

    paths = []
    for index, image in enumerate(data.images[:, 0].numpy()):
        path = folder / f"{index:05d}.png"
        Image.fromarray(image).save(path)
        paths.append(path)
    mean, std = fit_normalization(data.images)
    pipeline = transforms.Compose([
        transforms.Resize(config.image_size),
        transforms.RandomAffine(degrees=config.rotation_degrees, translate=(config.translate, config.translate)),
        transforms.ToTensor(), transforms.Normalize([mean], [std])])

    class Files(Dataset):
        def __len__(self) -> int:
            return len(paths)

        def __getitem__(self, index: int):
            with Image.open(paths[index]) as image:
                return pipeline(image.convert("L")), int(data.labels[index])

    torch.manual_seed(config.seed)
    model = build_model(config.architecture, num_classes=len(data.classes), width=config.width)
    optimizer, loss_fn = make_optimizer(model, config), make_loss(config)
    loader = DataLoader(Files(), batch_size=4, shuffle=True, num_workers=workers, persistent_workers=workers > 0)
    model.train()
    rate = 0.0
    for _ in range(epochs):
        started, seen = time.perf_counter(), 0
        for inputs, labels in loader:
            loss = loss_fn(model(inputs), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            seen += len(labels)
        rate = seen / (time.perf_counter() - started)
    return rate


def model_only(data: ImageSet, config: TrainConfig, steps: int) -> float:
    """Images/s of ``steps`` forward + backward + optimizer steps on one in-memory batch (after 3 warm-up steps)."""
    torch.manual_seed(config.seed)
    model = build_model(config.architecture, num_classes=len(data.classes), width=config.width)
    model = model.to(memory_format=torch.channels_last)
    optimizer, loss_fn = make_optimizer(model, config), make_loss(config)
    inputs = torch.randn(config.batch_size, 1, config.image_size, config.image_size).contiguous(
        memory_format=torch.channels_last)
    labels = data.labels[torch.arange(config.batch_size) % len(data)]  # = the first batch_size labels
    amp = config.amp and bf16_supported(torch.device("cpu"))
    model.train()
    for step in range(steps + 3):
        if step == 3:
            started = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            logits = model(inputs)
        loss = loss_fn(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return steps * config.batch_size / (time.perf_counter() - started)


def speed_row(architecture: str, figures: dict[str, float], **context: Any) -> dict[str, Any]:
    """One architecture's JSON object: ``context`` (width, size, ...), the rates (images/s, 2 decimals) and the two
    ratios, ours / paper (``speedup_vs_paper``, 2 decimals) and ours / model-only (``share_of_model_only``, 3)."""
    return {"arch": architecture, **context, "images_per_second": {k: round(v, 2) for k, v in figures.items()},
            "speedup_vs_paper": ratio(figures["ours"], figures["paper"], 2),
            "share_of_model_only": ratio(figures["ours"], figures["model_only"], 3)}


def _cell(value: float | None, suffix: str = "", scale: float = 1.0, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value * scale:,.{digits}f}{suffix}"


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """The rows of :func:`speed_row` as the Markdown table of docs/training.md (images/s, ratios)."""
    lines = ["| model | width | ours | paper's loop | model-only limit | ours / paper | ours / model-only |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        rates = row["images_per_second"]
        lines.append(f"| {display_name(row['arch'])} | {row.get('width', 1.0):g} | {_cell(rates['ours'])} | "
                     f"{_cell(rates['paper'])} | {_cell(rates['model_only'])} | "
                     f"{_cell(row['speedup_vs_paper'], '×', digits=2)} | "
                     f"{_cell(row['share_of_model_only'], ' %', 100.0, 0)} |")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line (``argv``: default ``sys.argv[1:]``)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="chestxray:../shared/data/chest_xray", help="SOURCE:PATH")
    parser.add_argument("--arch", action="append", default=None,
                        help=f"architecture (repeatable; default: all of {', '.join(model_names())})")
    parser.add_argument("--width", type=float, default=1.0, help="width of the architectures whose width scales")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--images", type=int, default=256, help="images per epoch (a subset of the data)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--mask", default="segment")
    parser.add_argument("--paper-workers", type=int, default=0, help="DataLoader workers of the paper loop")
    parser.add_argument("--out", type=Path, default=None, help="write the figures as a JSON list here")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def measure(data: ImageSet, config: TrainConfig, temporary: Path, paper_workers: int) -> dict[str, float]:
    """Ours, paper loop and model-only images/s of ``config.architecture`` on ``data`` (scratch in ``temporary``)."""
    figures = {"ours": ours(data, config, temporary / "run")}
    (temporary / "files").mkdir()
    figures["paper"] = paper_loop(data, replace(config, amp=False), temporary / "files", config.epochs, paper_workers)
    figures["model_only"] = model_only(data, config, steps=max(3, len(data) // config.batch_size))
    return figures


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Measure every chosen architecture on one subset of the data; print each row as it comes, then the table."""
    architectures = select_architectures(args.arch)
    rows = []
    with tempfile.TemporaryDirectory() as temporary:
        temporary = Path(temporary)
        data = load_images(args.data, args.size, temporary / "cache", args.mask, images=args.images, seed=args.seed)
        for architecture in architectures:
            width = width_for(architecture, args.width)
            config = TrainConfig(architecture=architecture, width=width, image_size=args.size, epochs=args.epochs,
                                 seed=args.seed)
            (temporary / architecture).mkdir()
            figures = measure(data, config, temporary / architecture, args.paper_workers)
            rows.append(speed_row(architecture, figures, width=width, size=args.size, images=len(data),
                                  data=args.data, threads=torch.get_num_threads(),
                                  bf16=bool(config.amp and bf16_supported(torch.device("cpu")))))
            print(json.dumps(rows[-1], indent=2), flush=True)
    print(markdown_table(rows))
    if args.out:
        write_text_atomic(args.out, json.dumps(rows, indent=2) + "\n")
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: 0 on success, 2 with one line on a user's mistake (an unknown architecture, bad data)."""
    args = parse_args(argv)
    try:
        run(args)
    except UnveilError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
