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
    format: Annotated[str, typer.Option("--format", help="onnx, torchscript, or pipeline (lung model, "
                                                         "pre-processing and classifier, for ONNX Runtime).")] = "onnx",
    out: Annotated[Path | None, typer.Option(
        help="Output file (default: MODEL/model.onnx or model.pt); for pipeline a new folder (default: "
             "MODEL-pipeline beside MODEL).")] = None,
    check_image: Annotated[list[Path] | None, typer.Option(
        "--check-image", help="pipeline: an image file to verify the export on against unveil predict "
                              "(repeatable; default: synthetic radiographs).")] = None,
    lung_model: LungModelOption = None,
    lung_convention: LungConventionOption = None,
    as_json: JsonOption = False,
) -> None:
    """Export a bundle, verified within 1e-4: onnx/torchscript (pre-processed image in [0, 1] -> probabilities,
    against PyTorch) or pipeline (raw gray image -> probabilities, the whole chain, against unveil predict)."""
    from unveil.inference import ExportError, export_model
    from unveil.progress import phase
    from unveil.training.bundle import resolve_bundle_dir

    if format not in ("onnx", "torchscript", "pipeline"):
        raise ExportError(f"--format must be onnx, torchscript or pipeline; got {format!r}")
    if format == "pipeline":
        folder = out or resolve_bundle_dir(model).with_name(resolve_bundle_dir(model).name + "-pipeline")
        require_paths(check_image or [])
        _export_pipeline(model=model, out=folder, check_image=check_image, lung_model=lung_model,
                         lung_convention=lung_convention, as_json=as_json, target=folder)
        return
    target = out or resolve_bundle_dir(model) / ("model.onnx" if format == "onnx" else "model.pt")
    with phase(f"export {format}"):
        description = export_model(model, format, target)
    difference = description["max_abs_difference_vs_pytorch"]
    if as_json:
        typer.echo(json.dumps({"file": str(target), "format": format, "max_abs_difference_vs_pytorch": difference},
                              indent=2))
    else:
        typer.echo(f"exported {format}: {target} (verified: probabilities within {difference:.2g} of PyTorch)")


@writes_output("check_image", models=("model",), staged=True)
def _export_pipeline(model: Path, out: Path, check_image: list[Path] | None, lung_model: Path | None,
                     lung_convention: str | None, as_json: bool, target: Path) -> None:
    """The pipeline export into the guarded folder ``out`` (staged; ``target`` is where it lands)."""
    from unveil.inference import export_pipeline
    from unveil.progress import phase

    with phase("export pipeline"):
        description = export_pipeline(model, out, images=check_image, segmenter=lung_model,
                                      lung_convention=lung_convention)
    check = description["check"]
    if as_json:
        typer.echo(json.dumps({"folder": str(target), "format": "pipeline", **check}, indent=2))
    else:
        typer.echo(f"exported pipeline: {target} (verified on {len(check['images'])} image(s): probabilities "
                   f"within {check['max_abs_difference_vs_predict']:.2g} of unveil predict)")
