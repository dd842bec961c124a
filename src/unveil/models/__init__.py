"""Chest X-ray classifiers by name: torchvision ResNets/DenseNet (initialised from local torchvision or
torchxrayvision weights), Conv-8 and a COVID-Net re-implementation.

The architectures' specs (:mod:`unveil.models.catalog`) are importable without torch, so that the command
line's ``--help`` can list them quickly; the names that need torch (the classifier, ``build_model``) are
imported on first use (PEP 562).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from unveil.models.catalog import (
    MODEL_NAMES,
    ModelError,
    ModelSpec,
    display_name,
    model_names,
    model_spec,
    model_specs,
    register_model,
)

if TYPE_CHECKING:  # for type checkers; at run time __getattr__ below imports these on first use
    from unveil.models.classifier import CxrClassifier, EncoderParts
    from unveil.models.registry import build_model, load_encoder_state

#: Names served from the torch-importing modules, loaded when first asked for.
_TORCH_NAMES = {"CxrClassifier": "unveil.models.classifier", "EncoderParts": "unveil.models.classifier",
                "build_model": "unveil.models.registry", "load_encoder_state": "unveil.models.registry"}

__all__ = ["MODEL_NAMES", "CxrClassifier", "EncoderParts", "ModelError", "ModelSpec", "build_model", "display_name",
           "load_encoder_state", "model_names", "model_spec", "model_specs", "register_model"]


def __getattr__(name: str) -> Any:
    if name in _TORCH_NAMES:
        value = getattr(importlib.import_module(_TORCH_NAMES[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'unveil.models' has no attribute {name!r}")
