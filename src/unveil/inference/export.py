"""`unveil export`: a bundle as ONNX or TorchScript, checked against PyTorch before it is kept.

The exported graph takes the pre-processed image in [0, 1] (N x 1 x S x S float32: the bundle's
equalization and lung masking already applied) and returns class probabilities; normalization and
softmax are inside it. A JSON file beside it gives the input specification, classes and threshold.
The exported file is self-contained (weights embedded) and checked by loading a copy of it alone.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from unveil.errors import UnveilError
from unveil.provenance import file_sha256, write_text_atomic
from unveil.training.bundle import ModelBundle, load_bundle

FORMATS = ("onnx", "torchscript")
TOLERANCE = 1e-4
#: Weights above this size cannot live inside one ONNX protobuf (2 GB limit): they go to ``<name>.onnx.data``
#: beside the model, which must then travel with it. Every model of the registry is far below it.
EMBED_LIMIT_BYTES = 1_800_000_000


class ExportError(UnveilError, RuntimeError):
    """Export failed, or the exported model disagrees with PyTorch (the message says by how much)."""


class ProbabilityModel(nn.Module):
    """[0, 1] image -> class probabilities (normalization and softmax included)."""

    mean: torch.Tensor  # buffers (registered below)
    std: torch.Tensor

    def __init__(self, model: nn.Module, mean: float, std: float) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model((image - self.mean) / self.std), dim=1)


def _exported_probabilities(path: Path, fmt: str, images: np.ndarray) -> np.ndarray:
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(None, {"image": images})[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        loaded = torch.jit.load(str(path), map_location="cpu")
    with torch.inference_mode():
        return loaded(torch.from_numpy(images)).numpy()


def _weights_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])


def _write_export(wrapper: nn.Module, fmt: str, example: torch.Tensor, target: Path) -> list[Path]:
    """Write the exported model to ``target`` (its final name, inside a private folder); returns every file
    written: the model, and for ONNX models too large to embed (> 1.8 GB), ``<name>.data`` beside it."""
    if fmt == "onnx":
        batch = torch.export.Dim("batch", min=1)
        external = _weights_bytes(wrapper) > EMBED_LIMIT_BYTES
        program = torch.onnx.export(wrapper, (example,), None, dynamo=True, input_names=["image"],
                                    output_names=["probabilities"], dynamic_shapes={"image": {0: batch}},
                                    verbose=False)
        if program is None:  # the dynamo exporter returns the program it made
            raise ExportError(f"{target}: torch.onnx.export returned no ONNX program")
        program.save(str(target), external_data=external)
    else:
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated upstream, still asked for
            traced = torch.jit.trace(wrapper, example)
        traced.save(str(target))
    return sorted(target.parent.iterdir())


def _check_alone(files: list[Path], model_file: Path, fmt: str, images: np.ndarray) -> np.ndarray:
    """Probabilities of a copy of the exported files, alone in a fresh folder: proves the export needs no
    other file (ONNX external data left behind, a temporary name inside the graph)."""
    with tempfile.TemporaryDirectory(prefix="unveil-export-check-") as folder:
        for file in files:
            shutil.copy2(file, Path(folder) / file.name)
        return _exported_probabilities(Path(folder) / model_file.name, fmt, images)


def export_model(model: str | Path | ModelBundle, fmt: str, out: str | Path, *,
                 check_images: np.ndarray | None = None, tolerance: float = TOLERANCE) -> dict[str, Any]:
    """Export ``model`` to ``out`` (one self-contained file; see :data:`EMBED_LIMIT_BYTES`); verify a copy of it,
    loaded alone from another folder, on ``check_images`` (N x 1 x S x S in [0, 1]; random images when None)
    against PyTorch; refuse an export that differs by more than ``tolerance``. Files appear under their final
    names only once verified (written in a temporary folder beside ``out``, then renamed; the temporary folder
    is removed whatever happens)."""
    if fmt not in FORMATS:
        raise ExportError(f"format must be one of {', '.join(FORMATS)}; got {fmt!r}")
    bundle = model if isinstance(model, ModelBundle) else load_bundle(model)
    size = bundle.image_size
    wrapper = ProbabilityModel(bundle.model.float().eval(), *bundle.normalization).eval()
    if check_images is None:
        check_images = np.random.default_rng(0).random((4, 1, size, size), dtype=np.float32)
    check_images = np.ascontiguousarray(check_images, dtype=np.float32)
    example = torch.from_numpy(check_images[:2])
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        try:
            written = _write_export(wrapper, fmt, example, staging / out.name)
            with torch.inference_mode():
                expected = wrapper(torch.from_numpy(check_images)).numpy()
            got = _check_alone(written, staging / out.name, fmt, check_images)
        except Exception as error:  # exporters fail in many ways; say which model and format
            raise ExportError(f"{bundle.path}: {fmt} export failed ({type(error).__name__}: {error})") from error
        difference = float(np.abs(got - expected).max())
        if difference > tolerance:
            raise ExportError(f"{bundle.path}: the {fmt} export differs from PyTorch by {difference:.2e} "
                              f"(> {tolerance:g}); not written")
        data_file = out.with_name(out.name + ".data")
        for file in written:  # external data (if any) first, the model last: the model never points to nothing
            if file.name != out.name:
                file.chmod(0o644)
                file.replace(out.with_name(file.name))
        (staging / out.name).chmod(0o644)
        (staging / out.name).replace(out)
        if fmt == "onnx" and not any(f.name == data_file.name for f in written):
            data_file.unlink(missing_ok=True)  # a stale external-data file from an older export
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    description = {"format": fmt, "file": out.name,
                   "files": [out.name] + [f.name for f in written if f.name != out.name],
                   "input": {"name": "image", "shape": ["N", 1, size, size],
                             "dtype": "float32", "range": [0, 1], "preprocessing": bundle.description["preprocess"]},
                   "output": {"name": "probabilities", "classes": bundle.classes},
                   "positive_class": bundle.description.get("positive_class"),
                   "threshold": bundle.description["threshold"], "normalization": bundle.description["normalization"],
                   "architecture": bundle.description["architecture"],
                   "bundle": bundle.path.name if bundle.path is not None else None,  # no path of this machine
                   "bundle_sha256": _bundle_hashes(bundle),
                   "max_abs_difference_vs_pytorch": difference, "checked_images": int(len(check_images)),
                   "checked": "a copy of the exported file(s) alone in another folder, against PyTorch"}
    write_text_atomic(Path(str(out) + ".json"), json.dumps(description, indent=2) + "\n")
    return description


def _bundle_hashes(bundle: ModelBundle) -> dict[str, str]:
    """SHA-256 of the bundle's bundle.json (its threshold, classes, pre-processing) and weights, by file name."""
    if bundle.path is None:
        return {}
    files = [bundle.path / "bundle.json", *sorted(bundle.path.glob("*.safetensors"))]
    return {path.name: file_sha256(path) for path in files if path.is_file()}
