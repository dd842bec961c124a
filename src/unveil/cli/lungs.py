"""`unveil lungs train|evaluate` and `unveil segment`: the lung U-Net."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from unveil.cli.options import (
    HELP_STYLE,
    DataOption,
    DeviceOption,
    ImageSizeOption,
    JsonOption,
    LearningRateOption,
    LungConventionOption,
    LungModelOption,
    MaxPixelsOption,
    SeedOption,
    TrackingUriOption,
    TrackOption,
    require,
    source_specs,
    tracking_settings,
    writes_output,
)

app = typer.Typer(help="Lung segmentation: train and evaluate the U-Net.", **HELP_STYLE)


def _pairs(values: list[str] | None, option: str = "--data") -> list[tuple[str, str]]:
    return [(spec.source, spec.root) for spec in source_specs(values, option=option)]


@app.command("train")
@writes_output("data", "holdout")
def lungs_train(
    data: DataOption,
    out: Annotated[Path, typer.Option(help="Run folder: lung_unet.safetensors/.json, figures.csv, history.csv.")],
    holdout: Annotated[list[str] | None, typer.Option(
        help="Evaluation-only source SOURCE:PATH (repeatable), never trained on.")] = None,
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = 150,
    image_size: ImageSizeOption = 256,
    batch_size: Annotated[int, typer.Option(help="Images per step.")] = 8,
    learning_rate: LearningRateOption = 3e-3,
    threads: Annotated[int | None, typer.Option(help="Torch CPU threads (default: torch's).")] = None,
    synthetic: Annotated[int, typer.Option(
        help="Also train on this many generated phantoms with masks (a third source, training only).")] = 0,
    samples_per_epoch: Annotated[int | None, typer.Option(
        help="Images drawn per epoch (default: the training set's size).")] = None,
    architecture: Annotated[str, typer.Option(
        help="Network size: unet16 (1.6 M parameters) or unet8 (0.21 M).")] = "unet16",
    exclude: Annotated[list[str] | None, typer.Option(
        help="Record source never trained on, evaluated whole as the part 'excluded' (repeatable; e.g. "
             "montgomery from lung-segmentation, for a cross-dataset figure).")] = None,
    device: DeviceOption = None,
    seed: SeedOption = 0,
    track: TrackOption = None,
    tracking_uri: TrackingUriOption = None,
) -> None:
    """Train the lung U-Net on sources with lung masks (--data SOURCE:PATH, split by patient into
    train/val/test; on the CPU unless --device says otherwise); report Dice (mean, 10th percentile), IoU
    and HD95 per source on the held-out parts."""
    import torch

    from unveil.segmentation.train import LungTrainingConfig, train_lung_model
    from unveil.training.loop import resolve_device

    tracking = tracking_settings(track, tracking_uri)  # a missing package: refused before any work
    device = str(resolve_device(device or "cpu"))
    if threads:
        torch.set_num_threads(threads)
    config = LungTrainingConfig(size=image_size or 256, epochs=epochs, batch_size=batch_size,
                                learning_rate=learning_rate or 3e-3, samples_per_epoch=samples_per_epoch,
                                architecture=architecture, seed=seed)
    command = "unveil lungs train " + " ".join(sys.argv[3:]) if len(sys.argv) > 3 else "unveil lungs train"
    description = train_lung_model(_pairs(data), out, holdout=_pairs(holdout, "--holdout"), config=config,
                                   synthetic_images=synthetic, exclude=exclude or [], device=device, command=command,
                                   tracking=tracking)
    typer.echo(json.dumps({"bundle": str(out / "lung_unet.safetensors"), "validation": description["validation"],
                           "images": description["training"]["images"]}, indent=2))


def _model_beside(parts: Path | None, lung_model: Path | None) -> Path | None:
    """With --parts and no --lung-model: the run that wrote the parts file, not the shipped model."""
    from unveil.segmentation.model import bundles_in

    if lung_model is not None or parts is None:
        return lung_model
    if bundles_in(parts.parent):
        typer.echo(f"model: the lung model of {parts.parent} (beside {parts.name})", err=True)
        return parts.parent  # resolved like any run folder; several bundles and no lung_unet: refused
    typer.echo(f"note: no lung model beside {parts}; scoring the shipped model", err=True)
    return None


@app.command("evaluate")
def lungs_evaluate(
    data: DataOption,
    lung_model: LungModelOption = None,
    parts: Annotated[Path | None, typer.Option(
        help="parts.csv of a training run: evaluate only its 'test' and 'excluded' records (held out); "
             "the lung model defaults to the run's.")] = None,
    as_json: JsonOption = False,
    figures_out: Annotated[Path | None, typer.Option(
        "--figures", help="Write the per-image figures (CSV) here.")] = None,
    worst: Annotated[int, typer.Option(
        help="Render the N lowest-Dice images as overlays (truth green, prediction red) into --overlays.")] = 0,
    overlays: Annotated[Path | None, typer.Option(help="Folder for the --worst overlays.")] = None,
) -> None:
    """Dice (mean, 10th percentile, minimum), IoU and HD95 of a lung model against the masks of the
    given sources (--data SOURCE:PATH), per source, each scored in its source's convention."""
    from unveil.provenance import write_text_atomic
    from unveil.segmentation import LungSegmenter
    from unveil.segmentation.train import evaluate, held_out_records, mask_records, summarise_figures

    require(not worst or overlays is not None, "--worst needs --overlays FOLDER")
    records = mask_records(_pairs(data))
    if parts is not None:
        records = held_out_records(records, parts)
    segmenter = LungSegmenter.load(_model_beside(parts, lung_model))
    figures = evaluate(segmenter, records)
    summary = summarise_figures(figures)
    if figures_out is not None:
        figures_out.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(figures_out, figures.to_csv(index=False))
    if worst and overlays is not None:  # (--worst without --overlays is refused above)
        from unveil.segmentation.overlay import write_worst_overlays

        written = write_worst_overlays(segmenter, records, figures, overlays, worst)
        typer.echo(f"{len(written)} overlays of the lowest-Dice images in {overlays}", err=True)
    typer.echo(json.dumps(summary, indent=2) if as_json else
               "\n".join(f"{k}: {v}" for k, v in summary.items()))


def require_paths(inputs: list[Path]) -> None:
    """A missing input path is a user's mistake (exit 2, naming it), never an empty run."""
    missing = [str(p) for p in inputs if not p.exists()]
    require(not missing, f"input path not found: {', '.join(missing)}")


def segment(
    images: Annotated[list[Path], typer.Argument(help="Image files or folders (PNG, JPEG, DICOM).")],
    out: Annotated[Path, typer.Option(help="Folder for <name>_mask.png and <name>_overlay.png.")],
    lung_model: LungModelOption = None,
    lung_convention: LungConventionOption = None,
    max_pixels: MaxPixelsOption = 50_000_000,
) -> None:
    """Segment the lungs: write a 0/255 mask and an overlay (lung contour in red) per image. OUT must lie
    outside the inputs; two inputs with one stem (a.png, a.jpeg) keep their extension in the output names."""
    from unveil.inference.predict import expand_inputs
    from unveil.io import ImageReadError, read_image
    from unveil.io.outputs import OutputFolder
    from unveil.segmentation import LungSegmenter
    from unveil.segmentation.overlay import output_stems, write_mask_and_overlay

    require_paths(images)
    segmenter = LungSegmenter.load(lung_model)
    files = expand_inputs(images)
    require(bool(files), "no image files found in the given paths")
    failed = 0
    stems = output_stems(files)
    with OutputFolder(out, images) as staged:
        for path in files:
            try:
                image = read_image(path, max_pixels=max_pixels).pixels
            except ImageReadError as error:  # reported and counted: the other images are still segmented
                typer.echo(f"skipped: {error}", err=True)
                failed += 1
                continue
            mask = segmenter.segment(image, convention=lung_convention)
            mask_path, overlay_path = write_mask_and_overlay(image, mask, staged.stage, stems[path])
            typer.echo(f"{path}: lungs {100 * mask.mean():.1f} % of the image -> {mask_path.name}, "
                       f"{overlay_path.name}")
    if failed:
        typer.echo(f"{failed} of {len(files)} image(s) could not be read", err=True)
        raise typer.Exit(1)
