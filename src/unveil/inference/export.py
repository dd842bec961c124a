"""`unveil export`: a bundle as ONNX or TorchScript, checked against PyTorch before it is kept.

The exported graph takes the pre-processed image in [0, 1] (N x 1 x S x S float32: the bundle's
equalization and lung masking already applied) and returns class probabilities; normalization and
softmax are inside it. A JSON file beside it gives the input specification, classes and threshold.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from unveil.training.bundle import ModelBundle, load_bundle

FORMATS = ("onnx", "torchscript")
TOLERANCE = 1e-4


class ExportError(RuntimeError):
    """Export failed, or the exported model disagrees with PyTorch (the message says by how much)."""


class ProbabilityModel(nn.Module):
    """[0, 1] image -> class probabilities (normalization and softmax included)."""

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


def export_model(model: str | Path | ModelBundle, fmt: str, out: str | Path, *,
                 check_images: np.ndarray | None = None, tolerance: float = TOLERANCE) -> dict[str, Any]:
    """Export ``model`` to ``out``; verify it on ``check_images`` (N x 1 x S x S in [0, 1]; random images
    when None) against PyTorch; refuse (and delete) an export that differs by more than ``tolerance``."""
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
    temporary = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        if fmt == "onnx":
            batch = torch.export.Dim("batch", min=1)
            torch.onnx.export(wrapper, (example,), str(temporary), dynamo=True, input_names=["image"],
                              output_names=["probabilities"], dynamic_shapes={"image": {0: batch}}, verbose=False)
        else:
            with torch.inference_mode(), warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated upstream, still asked for
                traced = torch.jit.trace(wrapper, example)
            traced.save(str(temporary))
        with torch.inference_mode():
            expected = wrapper(torch.from_numpy(check_images)).numpy()
        got = _exported_probabilities(temporary, fmt, check_images)
    except ExportError:
        raise
    except Exception as error:  # exporters fail in many ways; say which model and format
        temporary.unlink(missing_ok=True)
        raise ExportError(f"{bundle.path}: {fmt} export failed ({type(error).__name__}: {error})") from error
    difference = float(np.abs(got - expected).max())
    if difference > tolerance:
        temporary.unlink(missing_ok=True)
        raise ExportError(f"{bundle.path}: the {fmt} export differs from PyTorch by {difference:.2e} "
                          f"(> {tolerance:g}); not written")
    os.replace(temporary, out)
    description = {"format": fmt, "file": out.name, "input": {"name": "image", "shape": ["N", 1, size, size],
                   "dtype": "float32", "range": [0, 1], "preprocessing": bundle.description["preprocess"]},
                   "output": {"name": "probabilities", "classes": bundle.classes},
                   "positive_class": bundle.description.get("positive_class"),
                   "threshold": bundle.description["threshold"], "normalization": bundle.description["normalization"],
                   "architecture": bundle.description["architecture"], "bundle": str(bundle.path),
                   "max_abs_difference_vs_pytorch": difference, "checked_images": int(len(check_images))}
    Path(str(out) + ".json").write_text(json.dumps(description, indent=2) + "\n", encoding="utf-8")
    return description
