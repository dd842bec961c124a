"""Chest X-ray classifiers by name: torchvision ResNets/DenseNet (initialised from local torchvision or
torchxrayvision weights), Conv-8 and a COVID-Net re-implementation."""

from unveil.models.classifier import CxrClassifier, ModelError
from unveil.models.registry import MODEL_NAMES, build_model, load_encoder_state

__all__ = ["MODEL_NAMES", "CxrClassifier", "ModelError", "build_model", "load_encoder_state"]
