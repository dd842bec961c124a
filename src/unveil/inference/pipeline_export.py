"""`unveil export --format pipeline`: the whole chain of `unveil predict` for ONNX Runtime, checked against it.

A new folder receives ``lungs.onnx`` (raw image -> resized image, raw lung mask), ``classifier.onnx`` (image and
cleaned mask -> probabilities), ``preprocess.py`` (the mask clean-up in numpy and the glue:
:mod:`unveil.inference.pipeline_runtime`, copied unchanged) and ``pipeline.json`` (input contract, classes,
threshold and its rule, versions, SHA-256 of every file, measured agreement). Before the files are kept, a copy
of the folder alone elsewhere scores check images through onnxruntime and the result is compared with
`unveil predict`'s path; an export that differs by more than ``tolerance`` is refused. No absolute path of the
building machine is written: files are named relative to the folder, the bundle and lung model by name and hash,
and the ONNX graphs' per-node metadata and doc strings (where exporters may record source locations) are removed.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import tempfile
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

import unveil
from unveil.errors import UnveilError
from unveil.inference import pipeline_runtime
from unveil.inference.export import TOLERANCE, ExportError
from unveil.inference.pipeline import build_stages, check_images, reference_probabilities
from unveil.inference.predict import Predictor
from unveil.io import read_image
from unveil.io.outputs import check_no_overlap
from unveil.provenance import file_sha256, write_text_atomic
from unveil.segmentation.infer import default_model_path
from unveil.segmentation.model import resolve_bundle
from unveil.training.bundle import ModelBundle, load_bundle

FILES = {"lungs": "lungs.onnx", "classifier": "classifier.onnx", "runtime": "preprocess.py"}
DESCRIPTION = "pipeline.json"


def _strip_locations(path: Path) -> None:
    """Remove the exporter's per-node metadata (source files and stack traces of the building machine) and doc
    strings from an ONNX file, in place."""
    import onnx

    model = onnx.load(str(path))
    graphs = [model.graph, *(function for function in model.functions)]
    for graph in graphs:
        for node in graph.node:
            del node.metadata_props[:]
            node.doc_string = ""
    del model.graph.metadata_props[:]
    model.doc_string = ""
    del model.metadata_props[:]
    onnx.save(model, str(path))


def _export(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], names: list[str], outputs: list[str],
            dynamic: dict[str, dict[int, Any]], target: Path) -> None:
    program = torch.onnx.export(module, inputs, None, dynamo=True, input_names=names, output_names=outputs,
                                dynamic_shapes=dynamic, verbose=False)
    if program is None:  # only with dynamo=False or an output path given, neither here
        raise ExportError(f"{target.name}: torch.onnx.export returned no program")
    program.save(str(target))
    _strip_locations(target)


def _write_graphs(predictor: Predictor, folder: Path) -> None:
    """``lungs.onnx`` and ``classifier.onnx`` of ``predictor``'s chain into ``folder``."""
    lungs, classifier = build_stages(predictor)
    size = predictor.bundle.image_size
    batch = torch.export.Dim("batch", min=1)
    height, width = torch.export.Dim("height", min=2, max=16384), torch.export.Dim("width", min=2, max=16384)
    example = torch.rand(1, 1, size + 37, size + 11)
    with torch.inference_mode():
        _export(lungs, (example,), ["image"], ["resized", "raw_lung_mask"],
                {"image": {0: batch, 2: height, 3: width}}, folder / FILES["lungs"])
        resized, raw = lungs(example)
        _export(classifier, (resized, raw.float()), ["image", "lung_mask"], ["probabilities"],
                {"image": {0: batch}, "lung_mask": {0: batch}}, folder / FILES["classifier"])


def _sources(bundle: ModelBundle, predictor: Predictor, segmenter: str | Path | None) -> dict[str, Any]:
    """The bundle and lung model the graphs were built from, by name and content hash (no path)."""
    weights = ([bundle.path / "bundle.json", *sorted(bundle.path.glob("*.safetensors"))]  # threshold + weights
               if bundle.path is not None else [])
    lung_file = resolve_bundle(segmenter or predictor.settings.model or default_model_path()).with_suffix(
        ".safetensors")
    return {"bundle": bundle.path.name if bundle.path is not None else None,
            "bundle_sha256": {path.name: file_sha256(path) for path in weights},
            "architecture": bundle.description["architecture"],
            "lung_model": {"file": lung_file.name, "sha256": file_sha256(lung_file),
                           "input_size": predictor.segmenter.input_size, "threshold": predictor.segmenter.threshold,
                           "convention": predictor.settings.convention or predictor.segmenter.default_convention}}


def _describe(predictor: Predictor, folder: Path, segmenter: str | Path | None) -> dict[str, Any]:
    """pipeline.json without the check: contract, decision, steps, versions, hashes."""
    bundle, settings = predictor.bundle, predictor.settings
    size = bundle.image_size
    masking = f"blurred (radius {settings.blur_radius} px) and applied" if settings.mask != "none" else "not applied"
    versions = {"unveil": unveil.__version__, "torch": torch.__version__}
    for package in ("onnx", "onnxruntime", "onnxscript", "numpy"):
        versions[package] = metadata.version(package)
    preprocess = {key: value for key, value in bundle.description["preprocess"].items() if key != "model"}
    return {
        "format": "unveil-pipeline", "version": 1, "files": dict(FILES),
        "input": {"name": "image", "shape": ["N", 1, "H", "W"], "dtype": "float32", "range": [0, 1],
                  "meaning": "one gray radiograph (any H and W, 2 to 16384) as unveil.io.read_image gives it: "
                             "float32 in [0, 1], 0 black; N images of one size per call"},
        "output": {"name": "probabilities", "shape": ["N", len(bundle.classes)], "classes": bundle.classes,
                   "positive_class": bundle.description.get("positive_class"),
                   "positive_index": bundle.positive_index},
        "threshold": predictor.threshold.as_dict(),
        "decision": "positive_class iff probability of positive_class >= threshold.value",
        "steps": {"lungs.onnx": f"resize to {size}x{size} (Pillow bilinear), lung U-Net on its resized view "
                                f"({'histogram-equalized' if predictor.segmenter.equalize else 'as is'}), lung "
                                "probability resized back, thresholded",
                  "preprocess.py": "lung mask: two largest 8-connected components, holes filled (numpy)",
                  "classifier.onnx": f"equalization {settings.equalize}, lung mask {masking}, min-max to [0, 1], "
                                     "rounded to 8 bits, classifier, softmax"},
        "not_included": ["image file decoding (PNG/JPEG/DICOM: read it to float32 [0, 1] gray yourself)",
                         "the input, lung-mask and out-of-distribution checks of unveil predict (no rejection)",
                         "Grad-CAM evidence"],
        "preprocess": preprocess, "sources": _sources(bundle, predictor, segmenter), "versions": versions,
        "opset": _opset(folder / FILES["classifier"]),
        "sha256": {name: file_sha256(folder / name) for name in FILES.values()},
    }


def _opset(path: Path) -> int:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return int(next(item.version for item in model.opset_import if item.domain in ("", "ai.onnx")))


def _load_images(images: Sequence[np.ndarray | str | Path] | None) -> tuple[list[np.ndarray], list[str]]:
    """Check images as arrays, and how pipeline.json names them (file names only, never a path)."""
    if images is None:
        synthetic = check_images()
        return synthetic, [f"synthetic phantom {image.shape[1]}x{image.shape[0]}" for image in synthetic]
    arrays, names = [], []
    for item in images:
        if isinstance(item, (str, Path)):
            arrays.append(read_image(item).pixels)
            names.append(Path(item).name)
        else:
            arrays.append(np.asarray(item, dtype=np.float32))
            names.append(f"array {arrays[-1].shape[1]}x{arrays[-1].shape[0]}")
    if not arrays:
        raise ExportError("no check images given")
    return arrays, names


def _check_alone(staging: Path, images: list[np.ndarray]) -> np.ndarray:
    """Probabilities of a copy of the staged folder, alone elsewhere, through onnxruntime and preprocess.py."""
    with tempfile.TemporaryDirectory(prefix="unveil-pipeline-check-") as folder:
        for file in staging.iterdir():
            shutil.copy2(file, Path(folder) / file.name)
        spec = importlib.util.spec_from_file_location("unveil_exported_preprocess", Path(folder) / FILES["runtime"])
        if spec is None or spec.loader is None:
            raise ExportError(f"{FILES['runtime']}: the exported runtime file cannot be imported")
        runtime = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(runtime)  # the shipped copy, not unveil's module
        runner = runtime.Pipeline(folder)
        return np.stack([runner.run(image)["probabilities"] for image in images])


def _refuse_bundle_folder(out: Path, bundle: ModelBundle) -> None:
    """The export is a new folder: never the bundle's folder, inside it, or holding it."""
    if bundle.path is None:
        return
    try:
        check_no_overlap(out, [bundle.path])
    except UnveilError as error:
        raise ExportError(f"{out}: a pipeline is exported into a new folder, not the model bundle's "
                          f"({error})") from None


def export_pipeline(model: str | Path | ModelBundle, out: str | Path, *,
                    images: Sequence[np.ndarray | str | Path] | None = None, segmenter: str | Path | None = None,
                    lung_convention: str | None = None, tolerance: float = TOLERANCE) -> dict[str, Any]:
    """Export ``model``'s whole prediction chain into the folder ``out`` (created; never the bundle's folder) and
    verify it on ``images`` (arrays in [0, 1] or image files; synthetic radiographs when None): the largest
    absolute difference of probabilities between onnxruntime on a copy of the folder and `unveil predict`'s path
    is recorded in pipeline.json, and an export above ``tolerance`` is refused (nothing written). Returns the
    description written to pipeline.json."""
    bundle = model if isinstance(model, ModelBundle) else load_bundle(model)
    out = Path(out)
    _refuse_bundle_folder(out, bundle)
    predictor = Predictor(bundle, segmenter=segmenter, lung_convention=lung_convention)
    if predictor.settings.equalize == "clahe":
        raise ExportError(f"{bundle.path}: equalize=clahe (CLAHE) has no exported form; export a bundle trained "
                          "with global, lungs or no equalization")
    arrays, names = _load_images(images)
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out, prefix=".pipeline-", suffix=".tmp"))
    try:
        try:
            _write_graphs(predictor, staging)
            shutil.copyfile(pipeline_runtime.__file__, staging / FILES["runtime"])
            description = _describe(predictor, staging, segmenter)
            write_text_atomic(staging / DESCRIPTION, json.dumps(description, indent=2) + "\n")
            got = _check_alone(staging, arrays)
        except UnveilError:
            raise
        except Exception as error:  # exporters and runtimes fail in many ways; say which model
            raise ExportError(f"{bundle.path}: pipeline export failed ({type(error).__name__}: {error})") from error
        expected = reference_probabilities(predictor, arrays)
        difference = float(np.abs(got - expected).max())
        if not difference <= tolerance:
            raise ExportError(f"{bundle.path}: the exported pipeline differs from unveil predict by {difference:.2e} "
                              f"(> {tolerance:g}); not written")
        description["check"] = {
            "max_abs_difference_vs_predict": difference, "tolerance": tolerance, "images": names,
            "how": "a copy of this folder alone, onnxruntime + preprocess.py, against unveil predict's "
                   "pre-processing and model in PyTorch, all classes' probabilities"}
        write_text_atomic(staging / DESCRIPTION, json.dumps(description, indent=2) + "\n")
        for file in sorted(staging.iterdir()):
            file.chmod(0o644)
            file.replace(out / file.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return description
