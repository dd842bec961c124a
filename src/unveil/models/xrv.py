"""torchxrayvision checkpoints as encoders: recognise their state dicts, map their layers, keep their input convention.

torchxrayvision (Cohen et al., the field's most used chest X-ray model zoo) trains a 1-channel DenseNet-121
(224 px) and ResNet-50 (512 px) on about 18 pathologies, with intensities scaled to [-1024, 1024]. Our
pipeline gives [0, 1] images normalized as ``(x - mean) / std``; for such an encoder the normalization is
not fitted on the training split but fixed to ``mean = 0.5, std = 1/2048``, so that the model input is
exactly ``2048 x - 1024``: one transform, recorded in the bundle and applied everywhere the bundle is
used (training, predict, audit, export), never stacked on a fitted one.

Only local state dicts are read (``torch.load(weights_only=True)``); torchxrayvision is never asked to
download anything. Save the weights once beforehand::

    model = xrv.models.DenseNet(weights="densenet121-res224-all")   # downloads, with internet
    torch.save(model.state_dict(), "xrv-densenet121-all.pt")

The ResNet-50 file torchxrayvision downloads (``...resnet50-test512-e400-state.pt``) already is a state dict.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from torch import Tensor

from unveil.models.catalog import display_name
from unveil.models.classifier import CxrClassifier, ModelError

log = logging.getLogger(__name__)

FORMAT = "torchxrayvision"
#: The (mean, std) our normalization takes for a torchxrayvision encoder: (x - 0.5) * 2048 maps [0, 1] to
#: torchxrayvision's [-1024, 1024].
XRV_NORMALIZATION = (0.5, 1.0 / 2048.0)
#: The resolution each torchxrayvision model was trained at.
NATIVE_SIZE = {"densenet121": 224, "resnet50": 512}
#: torchxrayvision's pathology count (its heads' outputs), part of the signature of its checkpoints.
XRV_CLASSES = 18


def detect(state: dict[str, Tensor]) -> str | None:
    """The architecture (``densenet121``/``resnet50``) of a torchxrayvision state dict, or None if ``state`` is not
    one.

    Recognised: ``xrv.models.DenseNet(...).state_dict()`` (``features.*``, ``classifier.*``, ``op_threshs`` once
    pre-trained weights are loaded), ``xrv.models.ResNet(...).state_dict()`` (``model.*`` and ``op_threshs``) and
    the downloaded ResNet file (torchvision keys). Without ``op_threshs`` or the ``model.`` wrapper, a checkpoint is
    torchxrayvision's when its stem takes one channel and its head has 18 outputs (a torchvision checkpoint has
    3 channels and 1000 classes).
    """
    keys = set(state)
    wrapped = any(key.startswith("model.") for key in keys)
    plain = {key.removeprefix("model."): value for key, value in state.items()}
    if "features.conv0.weight" in plain and "features.norm5.weight" in plain:
        architecture, stem, head = "densenet121", "features.conv0.weight", "classifier.weight"
    elif "conv1.weight" in plain and "layer4.0.conv1.weight" in plain and "fc.weight" in plain:
        blocks = len({key.split(".")[1] for key in plain if key.startswith("layer3.")})
        if blocks not in (6, 23):  # torchxrayvision ships ResNet-50 and ResNet-101 only
            return None
        architecture, stem, head = f"resnet{50 if blocks == 6 else 101}", "conv1.weight", "fc.weight"
    else:
        return None
    signature = (plain[stem].ndim == 4 and plain[stem].shape[1] == 1 and head in plain
                 and plain[head].shape[0] == XRV_CLASSES)
    return architecture if "op_threshs" in keys or (wrapped and architecture != "densenet121") or signature else None


def encoder_state(state: dict[str, Tensor], architecture: str, built: str, source: str) -> dict[str, Tensor]:
    """The encoder weights (our ``encoder.*`` names) of a torchxrayvision checkpoint of ``architecture`` for the
    ``built`` architecture: its pathology head and ``op_threshs`` are dropped; any other architecture raises
    ModelError naming ``source``."""
    if architecture != built:
        known = " or ".join(f"{display_name(a)} ({a})" for a in NATIVE_SIZE)
        what = display_name(architecture)
        hint = f"; build {architecture} instead" if architecture in NATIVE_SIZE else f"; unveil maps {known} only"
        raise ModelError(f"weights file {source} holds a torchxrayvision {what} checkpoint, not a {built} one{hint}")
    head = "classifier." if architecture == "densenet121" else "fc."
    return {key: value for key, value in ((k.removeprefix("model."), v) for k, v in state.items())
            if key != "op_threshs" and not key.startswith(head)}


def source_record(architecture: str, path: Path, sha256: str) -> dict[str, Any]:
    """What the bundle records of a torchxrayvision encoder (``encoder_source`` in bundle.json)."""
    mean, std = XRV_NORMALIZATION
    return {"format": FORMAT, "architecture": architecture, "file": path.name, "sha256": sha256,
            "native_size": NATIVE_SIZE[architecture], "input_range": [-1024, 1024],
            "normalization": {"mean": mean, "std": std}}


def check_image_size(model: CxrClassifier, image_size: int) -> None:
    """Warn when ``model``'s encoder came from a checkpoint trained at another resolution than ``image_size``.

    A warning, not an error: the encoders pool globally and run at any size, and the small CPU experiments
    train at 128 px; but features learned at 224 or 512 px transfer less well to other scales.
    """
    source = model.encoder_source or {}
    native = source.get("native_size")
    if native is not None and int(native) != int(image_size):
        log.warning("the %s encoder from %s was trained on %d px images; training at %d px (set image_size to %d "
                    "to use it at its native resolution)", source.get("architecture", model.architecture),
                    source.get("file", "its checkpoint"), native, image_size, native)
