"""Build chest X-ray classifiers by name, optionally from local torchvision-style weights (never downloaded)."""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Literal, NamedTuple

import torch
from safetensors.torch import load_file
from torch import Tensor, nn
from torchvision import models as tvm

from unveil.models import xrv
from unveil.models.classifier import CxrClassifier, ModelError
from unveil.models.conv8 import Conv8Encoder
from unveil.models.covidnet import CovidNetEncoder
from unveil.provenance import file_sha256

MODEL_NAMES = ("resnet18", "resnet50", "densenet121", "conv8", "covidnet")

#: Old torchvision DenseNet checkpoints (the published .pth files) name layers "norm.1" instead of "norm1".
_LEGACY_DENSENET_KEY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.([12]\.(?:weight|bias|running_mean|"
                                  r"running_var|num_batches_tracked))$")


class _Spec(NamedTuple):
    """What build_model needs to know of an architecture."""

    encoder: nn.Module
    feature_dim: int
    target_layer: str  # relative to the encoder
    first_conv: str  # state-dict key of the first convolution's weight (input channels are adapted on load)
    classifier: str  # key prefix of the classifier layer in the architecture's own (torchvision) state dicts


def _stem_conv(in_channels: int, mode: Literal["fan_in", "fan_out"]) -> nn.Conv2d:
    """torchvision's 7x7/2, 64-channel stem for ``in_channels`` inputs, initialised as torchvision does."""
    conv = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
    nn.init.kaiming_normal_(conv.weight, mode=mode, nonlinearity="relu")
    return conv


def _resnet(depth: int) -> Callable[[int, float], _Spec]:
    def build(in_channels: int, width: float) -> _Spec:
        net = getattr(tvm, f"resnet{depth}")(weights=None)
        net.conv1 = _stem_conv(in_channels, "fan_out")
        names = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool")
        layers = [(name, getattr(net, name)) for name in names] + [("flatten", nn.Flatten())]
        encoder = nn.Sequential(OrderedDict(layers))
        return _Spec(encoder, net.fc.in_features, f"layer4.{len(net.layer4) - 1}", "conv1.weight", "fc")
    return build


def _densenet121(in_channels: int, width: float) -> _Spec:
    net = tvm.densenet121(weights=None)
    net.features.conv0 = _stem_conv(in_channels, "fan_in")
    # torchvision's forward: features -> ReLU -> pool; the ReLU is not in-place so hooks on norm5 (Grad-CAM) work
    encoder = nn.Sequential(OrderedDict(features=net.features, relu=nn.ReLU(), pool=nn.AdaptiveAvgPool2d(1),
                                        flatten=nn.Flatten()))
    return _Spec(encoder, net.classifier.in_features, "features.norm5", "features.conv0.weight", "classifier")


def _own(encoder_class: type[Conv8Encoder] | type[CovidNetEncoder], first_conv: str) -> Callable[[int, float], _Spec]:
    def build(in_channels: int, width: float) -> _Spec:
        encoder = encoder_class(in_channels, width)
        return _Spec(encoder, encoder.feature_dim, encoder.target_layer, first_conv, "head")
    return build


_BUILDERS: dict[str, Callable[[int, float], _Spec]] = {
    "resnet18": _resnet(18), "resnet50": _resnet(50), "densenet121": _densenet121,
    "conv8": _own(Conv8Encoder, "conv1.0.weight"), "covidnet": _own(CovidNetEncoder, "stem.0.weight")}
_FIXED_WIDTH = ("resnet18", "resnet50", "densenet121")


def build_model(name: str, num_classes: int = 2, in_channels: int = 1, init_weights: str | Path | None = None,
                width: float = 1.0) -> CxrClassifier:
    """A freshly initialised classifier ``name`` (one of MODEL_NAMES) for ``in_channels``-channel images.

    ``width`` scales the channels of conv8 and covidnet (torchvision models accept only 1.0). ``init_weights`` is a
    local state dict (.pth/.pt or .safetensors) of the torchvision model (or of this architecture's encoder): a
    first-conv weight with another channel count is summed over channels (RGB -> grayscale) and spread evenly over
    ``in_channels``; the classifier (fc/classifier/head) is used only if its shape fits the head; any other
    mismatch raises ModelError. A torchxrayvision DenseNet-121 / ResNet-50 state dict is recognised from its keys
    (:mod:`unveil.models.xrv`): its pathology head is ignored and the model's ``input_normalization`` is set to
    torchxrayvision's input range. ``encoder_source`` records the file (format, name, SHA-256) for the bundle.
    """
    if name not in _BUILDERS:
        raise ModelError(f"unknown model {name!r}; known models: {', '.join(MODEL_NAMES)}")
    if num_classes < 1 or in_channels < 1 or not width > 0:
        raise ModelError(f"{name}: num_classes ({num_classes}), in_channels ({in_channels}) and width ({width}) "
                         "must be positive")
    if name in _FIXED_WIDTH and width != 1.0:
        raise ModelError(f"{name} has a fixed width; width={width} is only honoured by conv8 and covidnet")
    spec = _BUILDERS[name](in_channels, width)
    model = CxrClassifier(name, spec.encoder, spec.feature_dim, num_classes, in_channels,
                          f"encoder.{spec.target_layer}")
    if init_weights is not None:
        path = Path(init_weights)
        state = read_state(path)
        xrv_architecture = xrv.detect(state)
        if xrv_architecture is not None:  # a torchxrayvision checkpoint: its layers and its input convention
            _load_pretrained(model, xrv.encoder_state(state, xrv_architecture, name, str(path)), spec, str(path),
                             head=False)
            model.input_normalization = xrv.XRV_NORMALIZATION
            model.encoder_source = xrv.source_record(xrv_architecture, path, file_sha256(path))
        else:
            _load_pretrained(model, state, spec, str(path))
            model.encoder_source = {"format": "state dict", "file": path.name, "sha256": file_sha256(path)}
    return model


def read_state(path: str | Path) -> dict[str, Tensor]:
    """The tensors of a local state-dict file (.safetensors, else torch.load with weights_only=True)."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"weights file {path} does not exist")
    try:
        state = load_file(path) if path.suffix == ".safetensors" else torch.load(path, "cpu", weights_only=True)
    except Exception as exc:  # corrupt or foreign files fail in many ways (pickle, zip, safetensors, ...)
        text = str(exc).strip()
        first_line = (text.splitlines() or [""])[0]
        hint = ""
        if "Unsupported global" in text or "weights_only" in text:  # a pickled object, e.g. a whole model
            hint = (" (it holds pickled Python objects, e.g. a whole model as torchxrayvision's downloaded "
                    "DenseNet files do; unveil never unpickles code, it reads state dicts only "
                    "(weights_only=True): load the model once and save torch.save(model.state_dict(), FILE))")
        raise ModelError(f"cannot read weights file {path}: {type(exc).__name__}: {first_line}{hint}") from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):  # a training checkpoint
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()):
        raise ModelError(f"weights file {path} does not hold a state dict of tensors")
    return state


def _load_pretrained(model: CxrClassifier, state: dict[str, Tensor], spec: _Spec, source: str, *,
                     head: bool = True) -> None:
    """Load a torchvision-style state dict into ``model``'s encoder (and head, when ``head`` and its shape fits)."""
    state = {_LEGACY_DENSENET_KEY.sub(r"\1\2", key.removeprefix("module.").removeprefix("encoder.")): value
             for key, value in state.items()}
    is_head = {key for key in state if key.split(".")[0] in (spec.classifier, "head")}
    head_state = {key.split(".", 1)[1]: state[key] for key in is_head} if head else {}
    encoder = {key: value for key, value in state.items() if key not in is_head}
    weight = encoder.get(spec.first_conv)
    if weight is not None and weight.ndim == 4 and weight.shape[1] != model.in_channels:
        encoder[spec.first_conv] = weight.sum(1, keepdim=True).repeat(1, model.in_channels, 1, 1) / model.in_channels
    _load_checked(model.encoder, encoder, f"weights file {source}", model.architecture)
    own_head = model.head.state_dict()
    if head_state.keys() == own_head.keys() and all(head_state[k].shape == own_head[k].shape for k in head_state):
        model.head.load_state_dict(head_state)


def load_encoder_state(model: CxrClassifier, state: dict[str, Tensor], *, source: str = "state") -> None:
    """Load the ``encoder.*`` weights of another CxrClassifier's state dict (same architecture, any head size) into
    ``model``; ``head.*`` keys are ignored. This is how fine-tuning starts from a pre-trained encoder."""
    encoder = {key.removeprefix("encoder."): value for key, value in state.items() if not key.startswith("head.")}
    _load_checked(model.encoder, encoder, source, model.architecture)


def _load_checked(module: nn.Module, state: dict[str, Tensor], source: str, architecture: str) -> None:
    """``module.load_state_dict(state)``, after a ModelError naming ``source`` and the first offending keys if the
    keys or shapes differ (BatchNorm counters may be missing: old checkpoints lack them)."""
    own = module.state_dict()
    missing = [key for key in own if key not in state and not key.endswith("num_batches_tracked")]
    unexpected = [key for key in state if key not in own]
    mismatched = [f"{key} {tuple(value.shape)} != {tuple(own[key].shape)}" for key, value in state.items()
                  if key in own and value.shape != own[key].shape]
    problems = [f"{label} keys: {', '.join(keys[:4])}" + (f" (+{len(keys) - 4} more)" if len(keys) > 4 else "")
                for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape-mismatched", mismatched))
                if keys]
    if problems:
        raise ModelError(f"{source} does not fit the {architecture} encoder: {'; '.join(problems)}")
    module.load_state_dict(state)
