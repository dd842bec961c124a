"""`unveil synth`: the synthetic chest X-ray benchmark with controllable dataset bias."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from unveil.cli.options import HELP_STYLE, ImageSizeOption, JsonOption, SeedOption, WorkersOption, finite_float

app = typer.Typer(help="Synthetic chest X-ray benchmark with controllable dataset bias.", **HELP_STYLE)

PresetOption = Annotated[str, typer.Option(
    "--preset", "-p", help="Preset name (paper, clean) or a YAML configuration file.")]


def _synth_config(preset: str, image_size: int | None):
    from dataclasses import replace

    from unveil.synth.config import load_config

    config = load_config(preset)
    return replace(config, image_size=image_size) if image_size else config


@app.command("generate")
def synth_generate(
    out: Annotated[Path, typer.Option(help="Folder to write the benchmark into (new or empty).")],
    preset: PresetOption = "paper",
    scale: Annotated[float, typer.Option(parser=finite_float, help="Multiply every class count by this factor.")] = 1.0,
    image_size: ImageSizeOption = None,
    workers: WorkersOption = 1,
    overwrite: Annotated[bool, typer.Option(help="Replace an earlier benchmark in --out.")] = False,
    seed: SeedOption = 0,
) -> None:
    """Generate the synthetic datasets in the real layouts (A, B, C, D, lung masks) with ground truth."""
    from unveil.synth.generate import generate

    config = _synth_config(preset, image_size)
    truth = generate(config, out, seed=seed, scale=scale, workers=workers, progress=True, overwrite=overwrite)
    counts = truth.groupby(["dataset", "finding"]).size()
    typer.echo(f"wrote {len(truth)} images to {out} (preset {config.name}, seed {seed}, scale {scale})")
    for (dataset, finding), count in counts.items():
        typer.echo(f"  {dataset:6s} {finding:10s} {count}")


@app.command("preview")
def synth_preview(
    out: Annotated[Path, typer.Option(help="PNG file to write.")],
    preset: PresetOption = "paper",
    per_class: Annotated[int, typer.Option(help="Samples per dataset and class.")] = 2,
    tile: Annotated[int, typer.Option(help="Tile side in the grid, pixels.")] = 192,
    image_size: ImageSizeOption = None,
    seed: SeedOption = 0,
) -> None:
    """Write a grid of samples, one row per dataset and columns by class, to judge realism by eye."""
    from unveil.synth.preview import write_preview

    path = write_preview(_synth_config(preset, image_size), out, seed=seed, per_class=per_class, tile=tile)
    typer.echo(f"wrote {path}")


@app.command("evidence")
def synth_evidence(
    benchmark: Annotated[Path, typer.Argument(help="Folder written by `unveil synth generate`.")],
    pixels: Annotated[int, typer.Option(help="Images are downsampled to PIXELS x PIXELS.")] = 32,
    as_json: JsonOption = False,
    seed: SeedOption = 0,
) -> None:
    """Train a pixel logistic regression on AB; report AB->AB vs AB->AC balanced accuracy, with and
    without masking everything but the lungs."""
    from unveil.synth.evidence import bias_gap

    results: dict = {}
    for masked in (False, True):
        result = bias_gap(benchmark, seed=seed, pixels=pixels, mask_lungs=masked)
        results["lungs_only" if masked else "full_image"] = {
            "ab_on_ab": round(result.ab_on_ab, 4), "ab_on_ac": round(result.ab_on_ac, 4),
            "gap": round(result.gap, 4), "train_images": result.train_images, "test_images": result.test_images}
    full, lungs = results["full_image"]["gap"], results["lungs_only"]["gap"]
    results["gap_shrink"] = round(1 - lungs / full, 4) if full else None
    if as_json:
        typer.echo(json.dumps(results, indent=2))
        return
    for name in ("full_image", "lungs_only"):
        r = results[name]
        typer.echo(f"{name:10s} BA AB->AB {r['ab_on_ab']:.3f}  AB->AC {r['ab_on_ac']:.3f}  gap {r['gap']:+.3f}")
    if results["gap_shrink"] is not None:
        typer.echo(f"masking to the lungs shrinks the gap by {100 * results['gap_shrink']:.0f} %")
