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

    .venv/bin/python benchmarks/train_speed.py --arch resnet18 --data chestxray:../shared/data/chest_xray
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from unveil.models import build_model
from unveil.preprocess.cache import PreprocessSettings, preprocess_records
from unveil.training import TrainConfig, fit, fit_normalization, load_image_set
from unveil.training.data import ImageSet
from unveil.training.loop import bf16_supported, make_loss, make_optimizer


def load_images(spec: str, size: int, cache: Path, mask: str) -> ImageSet:
    from unveil.data.sources import load_source

    source, _, root = spec.partition(":")
    records = load_source(source, root).records
    classes = sorted(records["finding"].unique())
    report = preprocess_records(records, cache, PreprocessSettings(size=size, mask=mask), workers=2)
    labels = records["finding"].map({c: i for i, c in enumerate(classes)}).to_numpy()
    return load_image_set(records, report.manifest, labels, tuple(classes), size=size)


def ours(data: ImageSet, config: TrainConfig, run_dir: Path) -> float:
    torch.manual_seed(config.seed)
    model = build_model(config.architecture, num_classes=len(data.classes), width=config.width)
    small_val = ImageSet(data.images[:8], data.labels[:8], data.records.iloc[:8], data.classes)
    result = fit(model, data, small_val, config, run_dir, normalization=fit_normalization(data.images), resume=False)
    return float(result.history[-1]["train_images_per_second"])


def paper_loop(data: ImageSet, config: TrainConfig, folder: Path, epochs: int, workers: int) -> float:
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
    torch.manual_seed(config.seed)
    model = build_model(config.architecture, num_classes=len(data.classes), width=config.width)
    model = model.to(memory_format=torch.channels_last)
    optimizer, loss_fn = make_optimizer(model, config), make_loss(config)
    inputs = torch.randn(config.batch_size, 1, config.image_size, config.image_size).contiguous(
        memory_format=torch.channels_last)
    labels = data.labels[:config.batch_size]
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="chestxray:../shared/data/chest_xray", help="SOURCE:PATH")
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--images", type=int, default=256, help="images per epoch (a subset of the data)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--mask", default="segment")
    parser.add_argument("--paper-workers", type=int, default=0, help="DataLoader workers of the paper loop")
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    config = TrainConfig(architecture=args.arch, width=args.width, image_size=args.size, epochs=args.epochs,
                         seed=args.seed)
    with tempfile.TemporaryDirectory() as temporary:
        temporary = Path(temporary)
        data = load_images(args.data, args.size, temporary / "cache", args.mask)
        rng = np.random.default_rng(args.seed)
        keep = torch.as_tensor(np.sort(rng.choice(len(data), min(args.images, len(data)), replace=False)))
        data = ImageSet(data.images[keep], data.labels[keep], data.records.iloc[keep.numpy()], data.classes)
        figures = {"ours": ours(data, config, temporary / "run")}
        (temporary / "files").mkdir()
        figures["paper"] = paper_loop(data, replace(config, amp=False), temporary / "files", args.epochs,
                                      args.paper_workers)
        figures["model_only"] = model_only(data, config, steps=max(3, len(data) // config.batch_size))
    result = {"arch": args.arch, "width": args.width, "size": args.size, "images": len(data), "data": args.data,
              "threads": torch.get_num_threads(), "bf16": bool(config.amp and bf16_supported(torch.device("cpu"))),
              "images_per_second": {k: round(v, 2) for k, v in figures.items()},
              "speedup_vs_paper": round(figures["ours"] / figures["paper"], 2),
              "share_of_model_only": round(figures["ours"] / figures["model_only"], 3)}
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
