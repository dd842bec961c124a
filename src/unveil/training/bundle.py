"""Model bundles: one folder with everything needed to use, audit and trace a trained classifier.

``model.safetensors`` holds the weights (safetensors never unpickles anything); ``bundle.json``
the architecture, classes, pre-processing settings, normalization statistics (fitted on the
training split), decision threshold with its rule, and the training provenance (data, split file
hashes, resolved configuration, package versions, seed).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unveil.models import CxrClassifier, ModelError, build_model
from unveil.preprocess.cache import PreprocessSettings
from unveil.provenance import write_text_atomic

BUNDLE_FORMAT = "unveil-classifier"
BUNDLE_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
DESCRIPTION_FILE = "bundle.json"


class BundleError(RuntimeError):
    """A model bundle is missing, unreadable or inconsistent (the message names the file)."""


@dataclass
class ModelBundle:
    """A loaded classifier with its description."""

    model: CxrClassifier
    description: dict[str, Any]
    path: Path | None = None

    @property
    def classes(self) -> list[str]:
        return list(self.description["classes"])

    @property
    def normalization(self) -> tuple[float, float]:
        values = self.description["normalization"]
        return float(values["mean"]), float(values["std"])

    @property
    def image_size(self) -> int:
        return int(self.description["image_size"])

    @property
    def threshold(self) -> float:
        return float(self.description["threshold"]["value"])

    @property
    def positive_index(self) -> int | None:
        positive = self.description.get("positive_class")
        return self.classes.index(positive) if positive is not None else None

    @property
    def preprocess_settings(self) -> PreprocessSettings:
        return PreprocessSettings(**self.description["preprocess"])

    def predict_probabilities(self, images: torch.Tensor, *, device: str | torch.device = "cpu",
                              batch_size: int = 64, amp: bool = False) -> np.ndarray:
        """Class probabilities of pre-processed uint8 images (N x 1 x S x S) at the bundle's size
        (fp32 by default, so results match exported models; ``amp``: bf16 autocast)."""
        from unveil.training.loop import predict_probabilities

        mean, std = self.normalization
        device = torch.device(device)
        self.model.to(device)
        return predict_probabilities(self.model, images, mean, std, device=device, batch_size=batch_size, amp=amp)


def model_spec(model: CxrClassifier, width: float) -> dict[str, Any]:
    return {"architecture": model.architecture, "width": width, "num_classes": model.num_classes,
            "in_channels": model.in_channels}


def save_bundle(directory: str | Path, model: CxrClassifier, *, width: float, classes: list[str],
                positive_class: str | None, image_size: int, preprocess: PreprocessSettings,
                normalization: tuple[float, float], threshold: float = 0.5, threshold_rule: str = "fixed 0.5",
                provenance: dict[str, Any] | None = None, state: dict[str, torch.Tensor] | None = None) -> Path:
    """Write ``model.safetensors`` + ``bundle.json`` into ``directory`` (each file atomically)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if len(classes) != model.num_classes:
        raise BundleError(f"{len(classes)} class names for a model with {model.num_classes} outputs")
    tensors = {k: v.detach().cpu().contiguous() for k, v in (state or model.state_dict()).items()}
    temporary = directory / (WEIGHTS_FILE + ".tmp")
    save_file(tensors, str(temporary))
    temporary.replace(directory / WEIGHTS_FILE)
    description = {
        "format": BUNDLE_FORMAT, "format_version": BUNDLE_VERSION, **model_spec(model, width),
        "classes": list(classes), "positive_class": positive_class, "image_size": int(image_size),
        "preprocess": asdict(preprocess),
        "normalization": {"mean": float(normalization[0]), "std": float(normalization[1]),
                          "fitted_on": "training split"},
        "threshold": {"value": float(threshold), "rule": threshold_rule},
        "provenance": provenance or {},
    }
    text = json.dumps(description, indent=2, sort_keys=True, default=str) + "\n"
    write_text_atomic(directory / DESCRIPTION_FILE, text)
    return directory


def resolve_bundle_dir(directory: str | Path) -> Path:
    """The bundle folder ``directory`` names: the bundle folder itself, or a run folder holding ``model/``
    (what `unveil train` and `unveil pretrain` write), so a run folder is a valid model argument."""
    directory = Path(directory)
    if not (directory / DESCRIPTION_FILE).is_file() and (directory / "model" / DESCRIPTION_FILE).is_file():
        return directory / "model"
    return directory


def read_description(directory: str | Path) -> dict[str, Any]:
    """The bundle's ``bundle.json`` (``directory``: a bundle folder or a run folder holding ``model/``)."""
    directory = resolve_bundle_dir(directory)
    if not directory.exists():
        raise BundleError(f"{directory}: model not found (no such file or folder)")
    path = directory / DESCRIPTION_FILE
    if not path.is_file():
        raise BundleError(f"{directory}: not a model bundle (no {DESCRIPTION_FILE})")
    try:
        description = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BundleError(f"{path}: unreadable bundle description ({error})") from None
    if description.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{path}: not an unveil classifier bundle (format {description.get('format')!r})")
    if int(description.get("format_version", 0)) > BUNDLE_VERSION:
        raise BundleError(f"{path}: bundle format {description['format_version']} is newer than this unveil "
                          f"({BUNDLE_VERSION}); upgrade unveil")
    return description


def read_weights(directory: str | Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(directory) / WEIGHTS_FILE
    if not path.is_file():
        raise BundleError(f"{directory}: model bundle without {WEIGHTS_FILE}")
    try:
        return load_file(str(path))
    except (OSError, SafetensorError, ValueError) as error:
        raise BundleError(f"{path}: unreadable weights ({error})") from None


def load_bundle(directory: str | Path, device: str | torch.device = "cpu") -> ModelBundle:
    """Load a bundle folder (or a run folder holding ``model/``): rebuild the architecture, load the
    weights (no unpickling)."""
    directory = resolve_bundle_dir(directory)
    description = read_description(directory)
    try:
        model = build_model(description["architecture"], num_classes=int(description["num_classes"]),
                            in_channels=int(description.get("in_channels", 1)),
                            width=float(description.get("width", 1.0)))
        model.load_state_dict(read_weights(directory))
    except (ModelError, KeyError, RuntimeError) as error:
        if isinstance(error, BundleError):
            raise
        raise BundleError(f"{directory}: weights do not match the described model ({error})") from None
    return ModelBundle(model.to(device).eval(), description, directory)
