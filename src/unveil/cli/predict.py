"""`unveil predict` and `unveil export`: use a trained model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from unveil.cli.lungs import require_paths
from unveil.cli.options import (
    JsonOption,
    LungConventionOption,
    LungModelOption,
    MaxPixelsOption,
    StrictOption,
    TargetSensitivityOption,
    ThresholdOption,
    ThresholdRuleOption,
    bundle_files,
    threshold_request,
    writes_output,
)
from unveil.thresholds import ThresholdRule

ModelArgument = Annotated[Path, typer.Argument(help="Model bundle: a `unveil train` run folder or its model/ folder.")]


def predict_command(
    model: ModelArgument,
    inputs: Annotated[list[Path], typer.Argument(help="Image files or folders (PNG, JPEG, DICOM; recursive).")],
    out: Annotated[Path, typer.Option(help="Folder for predictions.csv and evidence/*.png.")],
    batch_size: Annotated[int, typer.Option(help="Images per batch (memory stays flat).")] = 32,
    evidence: Annotated[bool, typer.Option(help="Write an overlay per image: lung contour and Grad-CAM.")] = True,
    lung_model: LungModelOption = None,
    strict: StrictOption = False,
    threshold: ThresholdOption = None,
    threshold_rule: ThresholdRuleOption = ThresholdRule.BUNDLE,
    target_sensitivity: TargetSensitivityOption = 0.9,
    lung_convention: LungConventionOption = None,
    max_pixels: MaxPixelsOption = 50_000_000,
    decide_anyway: Annotated[bool, typer.Option(
        "--decide-anyway", help="Also decide images that fail the lung-mask or out-of-distribution check (status "
                                "flagged); by default they are rejected: probability, reason, no decision.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Score new images: probability, decision at the bundle's threshold (or one chosen by --threshold /
    --threshold-rule), lung check, OOD check (failing images are rejected). The lung model defaults to the
    bundle's. OUT must lie outside the inputs; the previous predictions are replaced only when the run
    completes."""
    from unveil.inference import predict_files

    require_paths(inputs)
    request = threshold_request(threshold, threshold_rule, target_sensitivity)
    summary = predict_files(model, inputs, out, batch_size=batch_size, evidence=evidence, segmenter=lung_model,
                            strict=strict, progress=True, threshold=request, lung_convention=lung_convention,
                            max_pixels=max_pixels, decide_anyway=decide_anyway)
    typer.echo(json.dumps(summary.as_dict(), indent=2) if as_json else summary.to_text())
    for line in summary.unreadable:
        typer.echo(f"skipped: {line}", err=True)


@writes_output(lambda values: bundle_files(values["model"]), file=True)
def export_command(
    model: ModelArgument,
    format: Annotated[str, typer.Option("--format", help="onnx or torchscript.")] = "onnx",
    out: Annotated[Path | None, typer.Option(help="Output file (default: MODEL/model.onnx or model.pt).")] = None,
    as_json: JsonOption = False,
) -> None:
    """Export a bundle (image in [0, 1] -> probabilities), verified against PyTorch within 1e-4."""
    from unveil.inference import export_model
    from unveil.progress import phase
    from unveil.training.bundle import resolve_bundle_dir

    target = out or resolve_bundle_dir(model) / ("model.onnx" if format == "onnx" else "model.pt")
    with phase(f"export {format}"):
        description = export_model(model, format, target)
    difference = description["max_abs_difference_vs_pytorch"]
    if as_json:
        typer.echo(json.dumps({"file": str(target), "format": format, "max_abs_difference_vs_pytorch": difference},
                              indent=2))
    else:
        typer.echo(f"exported {format}: {target} (verified: probabilities within {difference:.2g} of PyTorch)")
