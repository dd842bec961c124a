"""Training throughput on a CUDA device: our loop (`unveil.training.fit`, bf16 autocast, channels-last)
against the model-only limit on the same device (forward + backward + step on one batch already on the
GPU). Needs a CUDA device (exit code 2 without one). Every architecture of the model catalog runs by
default (``--arch``, repeatable, chooses some; ``--width`` applies to those whose width scales); one JSON
object per architecture (both rates and ``share_of_model_only`` = ours / model-only), then a Markdown table.

    python benchmarks/gpu_speed.py --arch resnet18 --arch densenet121 --data chestxray:../shared/data/chest_xray

The images stay on the host and each batch is copied to the GPU (as in `unveil train`); the pre-processing
(CPU) is done once, before timing. Throughput is images/s of the last epoch.

``--profile PATH`` also runs `torch.profiler` over ``--profile-steps`` steps of the last epoch of our loop and
over as many steps of the model-only loop, and writes their summaries (:mod:`gpu_profile`: GPU idle
fraction, host-side markers, top operators by self CUDA time) to PATH (JSON) and PATH with ``.txt``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_profile import ProfileError, ops_from_profiler, profile_summary, profile_text  # noqa: E402
from train_speed import load_images, ratio, select_architectures, width_for  # noqa: E402

from unveil.errors import UnveilError  # noqa: E402
from unveil.models import build_model, display_name, model_names  # noqa: E402
from unveil.provenance import write_text_atomic  # noqa: E402
from unveil.training import TrainConfig, fit, fit_normalization  # noqa: E402
from unveil.training.data import ImageSet  # noqa: E402
from unveil.training.loop import make_loss, make_optimizer  # noqa: E402

NO_CUDA = "error: gpu_speed.py needs a CUDA device and none is visible (torch.cuda.is_available() is False)"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line (``argv``: default ``sys.argv[1:]``)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="chestxray:../shared/data/chest_xray", help="SOURCE:PATH")
    parser.add_argument("--arch", action="append", default=None,
                        help=f"architecture (repeatable; default: all of {', '.join(model_names())})")
    parser.add_argument("--width", type=float, default=1.0, help="width of the architectures whose width scales")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--images", type=int, default=None, help="a random subset of this many (default: all)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--mask", default="none")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="write the figures as a JSON list here")
    parser.add_argument("--profile", type=Path, default=None,
                        help="profile both loops; summaries to this JSON file and beside it as .txt")
    parser.add_argument("--profile-steps", type=int, default=10, help="steps profiled per loop")
    return parser.parse_args(argv)


class StepProfiler:
    """Profiles ``steps`` consecutive steps of a loop: call :meth:`step` after each of its steps; profiling
    starts after step ``start`` and stops ``steps`` steps later (the device synchronised at both ends).
    ``activities``: what the profiler records (default: CPU and CUDA)."""

    def __init__(self, start: int, steps: int, activities: Sequence[Any] | None = None) -> None:
        self.start, self.steps, self.seen, self.wall_us = start, steps, 0, 0.0
        self.activities = list(activities or [torch.profiler.ProfilerActivity.CPU,
                                              torch.profiler.ProfilerActivity.CUDA])
        self.profiler: torch.profiler.profile | None = None
        self._started = 0.0

    def step(self) -> None:
        """One step of the loop is done."""
        self.seen += 1
        if self.seen == self.start:
            torch.cuda.synchronize()
            self.profiler = torch.profiler.profile(activities=self.activities)
            self.profiler.start()
            self._started = time.perf_counter()
        elif self.seen == self.start + self.steps and self.profiler is not None:
            torch.cuda.synchronize()
            self.wall_us = (time.perf_counter() - self._started) * 1e6
            self.profiler.stop()

    def summary(self, batch_size: int, **context: Any) -> dict[str, Any]:
        """The profile's :func:`gpu_profile.profile_summary`; an error if fewer steps ran than were asked for."""
        if self.profiler is None or not self.wall_us:
            raise ProfileError(f"{context}: the loop ran {self.seen} steps, fewer than the {self.start} + "
                               f"{self.steps} the profile needs (lower --profile-steps or add --images)")
        return profile_summary(ops_from_profiler(self.profiler), self.wall_us, self.steps, batch_size, **context)


def ours_cuda(data: ImageSet, config: TrainConfig, run_dir: Path, profiler: StepProfiler | None = None) -> float:
    """Images/s of the last epoch of `unveil.training.fit` on the GPU (``profiler`` sees every step)."""
    torch.manual_seed(config.seed)
    model = build_model(config.architecture, num_classes=len(data.classes), width=config.width)
    small_val = ImageSet(data.images[:8], data.labels[:8], data.records.iloc[:8], data.classes)
    on_step = (lambda _epoch, _step: profiler.step()) if profiler is not None else None
    result = fit(model, data, small_val, config, run_dir, normalization=fit_normalization(data.images),
                 resume=False, on_step=on_step)
    return float(result.history[-1]["train_images_per_second"])


def model_only_cuda(classes: int, config: TrainConfig, steps: int,
                    on_step: Callable[[], None] | None = None) -> float:
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
        if on_step is not None:
            on_step()
    torch.cuda.synchronize()
    return steps * config.batch_size / (time.perf_counter() - started)


def gpu_row(architecture: str, ours: float, limit: float, **context: Any) -> dict[str, Any]:
    """One architecture's JSON object: ``context``, both rates (images/s, 1 decimal) and ours / model-only (3)."""
    return {"arch": architecture, **context,
            "images_per_second": {"ours": round(ours, 1), "model_only": round(limit, 1)},
            "share_of_model_only": ratio(ours, limit, 3)}


def gpu_table(rows: Sequence[dict[str, Any]]) -> str:
    """The rows of :func:`gpu_row` as the Markdown table of docs/training.md."""
    lines = ["| model | width | ours | model-only limit | ours / model-only |", "|---|---|---|---|---|"]
    for row in rows:
        rates, share = row["images_per_second"], row["share_of_model_only"]
        lines.append(f"| {display_name(row['arch'])} | {row.get('width', 1.0):g} | {rates['ours']:,.1f} | "
                     f"{rates['model_only']:,.1f} | {'n/a' if share is None else f'{share * 100:.0f} %'} |")
    return "\n".join(lines)


def steps_per_epoch(images: int, batch_size: int) -> int:
    """The optimizer steps of one epoch of `fit` on one device: the full batches, and a last one of 2 or more."""
    full, left = divmod(images, batch_size)
    return full + (1 if left >= 2 or (full == 0 and left) else 0)


def profile(data: ImageSet, config: TrainConfig, run_dir: Path, steps: int) -> list[dict[str, Any]]:
    """Profiles of ``steps`` steps of our loop's last epoch (after its first step) and of the model-only loop."""
    per_epoch = steps_per_epoch(len(data), config.batch_size)
    if per_epoch < 3 or steps < 1:
        raise ProfileError(f"--profile needs 3 or more steps an epoch and --profile-steps >= 1; {len(data)} images "
                           f"in batches of {config.batch_size} make {per_epoch}, --profile-steps is {steps}")
    ours_profile = StepProfiler(start=(config.epochs - 1) * per_epoch + 1, steps=min(steps, per_epoch - 2))
    ours_cuda(data, config, run_dir, ours_profile)
    limit_profile = StepProfiler(start=6, steps=steps)
    model_only_cuda(len(data.classes), config, steps + 2, limit_profile.step)
    context = {"arch": config.architecture, "width": config.width, "size": config.image_size}
    return [ours_profile.summary(config.batch_size, **context, loop="ours"),
            limit_profile.summary(config.batch_size, **context, loop="model_only")]


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Measure (and profile) every chosen architecture; print each row as it comes, then the table."""
    architectures = select_architectures(args.arch)
    rows, profiles = [], []
    with tempfile.TemporaryDirectory() as temporary:
        data = load_images(args.data, args.size, Path(temporary) / "cache", args.mask, images=args.images,
                           seed=args.seed)
        for architecture in architectures:
            width = width_for(architecture, args.width)
            config = TrainConfig(architecture=architecture, width=width, image_size=args.size, epochs=args.epochs,
                                 batch_size=args.batch_size, seed=args.seed, device="cuda")
            run_dir = Path(temporary) / f"run-{architecture}"
            loop = ours_cuda(data, config, run_dir)
            limit = model_only_cuda(len(data.classes), config, steps=max(10, len(data) // args.batch_size))
            if args.profile:  # separate runs: the figures above carry no profiler overhead
                profiles += profile(data, config, run_dir.with_name(f"{run_dir.name}-profile"), args.profile_steps)
            rows.append(gpu_row(architecture, loop, limit, width=width, device=torch.cuda.get_device_name(),
                                size=args.size, images=len(data), batch_size=args.batch_size,
                                torch=torch.__version__))
            print(json.dumps(rows[-1]), flush=True)
    print(gpu_table(rows))
    if args.out:
        write_text_atomic(args.out, json.dumps(rows, indent=2) + "\n")
    if args.profile:
        write_text_atomic(args.profile, json.dumps(profiles, indent=2) + "\n")
        write_text_atomic(args.profile.with_suffix(".txt"), profile_text(profiles))
        print(profile_text(profiles))
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: 0 on success; 2 with one line without a CUDA device or on a user's mistake."""
    args = parse_args(argv)
    if not torch.cuda.is_available():
        print(NO_CUDA, file=sys.stderr)
        return 2
    try:
        run(args)
    except UnveilError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
