"""Training throughput on a CUDA device: our loop (`unveil.training.fit`, bf16 autocast, channels-last)
against the model-only limit on the same device (forward + backward + step on one batch already on the
GPU). Needs a CUDA device; prints one JSON object per architecture.

    python benchmarks/gpu_speed.py --arch resnet18 --arch densenet121 --data chestxray:../shared/data/chest_xray

On a GPU the whole set sits in GPU memory after the first epoch's transfer, so the figure is the
training step itself; the pre-processing (CPU) is done once, before timing.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_speed import load_images, ours  # noqa: E402  (the CPU benchmark's data and loop helpers)

from unveil.models import build_model  # noqa: E402
from unveil.training import TrainConfig  # noqa: E402
from unveil.training.loop import make_loss, make_optimizer  # noqa: E402


def model_only_cuda(classes: int, config: TrainConfig, steps: int) -> float:
    """Images/s of forward + backward + step with bf16 autocast and channels-last, batch on the GPU."""
    device = torch.device("cuda")
    torch.manual_seed(config.seed)
    model = build_model(config.architecture, num_classes=classes, width=config.width).to(device)
    model = model.to(memory_format=torch.channels_last)
    optimizer, loss_fn = make_optimizer(model, config), make_loss(config)
    inputs = torch.randn(config.batch_size, 1, config.image_size, config.image_size, device=device).contiguous(
        memory_format=torch.channels_last)
    labels = torch.randint(0, classes, (config.batch_size,), device=device)
    model.train()
    for step in range(steps + 5):
        if step == 5:
            torch.cuda.synchronize()
            started = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model(inputs)
        loss = loss_fn(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    torch.cuda.synchronize()
    return steps * config.batch_size / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="chestxray:../shared/data/chest_xray", help="SOURCE:PATH")
    parser.add_argument("--arch", action="append", default=None)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--mask", default="none")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("error: no CUDA device")
    with tempfile.TemporaryDirectory() as temporary:
        data = load_images(args.data, args.size, Path(temporary) / "cache", args.mask)
        for architecture in args.arch or ["resnet18"]:
            config = TrainConfig(architecture=architecture, image_size=args.size, epochs=args.epochs,
                                 batch_size=args.batch_size, seed=args.seed, device="cuda")
            loop = ours(data, config, Path(temporary) / f"run-{architecture}")
            limit = model_only_cuda(len(data.classes), replace(config), steps=max(10, len(data) // args.batch_size))
            print(json.dumps({"arch": architecture, "device": torch.cuda.get_device_name(), "size": args.size,
                              "images": len(data), "batch_size": args.batch_size, "torch": torch.__version__,
                              "images_per_second": {"ours": round(loop, 1), "model_only": round(limit, 1)},
                              "share_of_model_only": round(loop / limit, 3)}), flush=True)


if __name__ == "__main__":
    main()
