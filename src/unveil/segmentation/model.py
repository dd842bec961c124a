"""The lung segmentation network and its bundle format (safetensors weights + JSON description).

MONAI U-Nets (5 levels, strides 2, residual units, batch norm) in named sizes
(:data:`ARCHITECTURES`): ``unet16`` (16-256 channels, two residual units per level, 1.6 M
parameters, 6.5 MB float32) and ``unet8`` (8-128 channels, one residual unit, 0.21 M parameters,
0.85 MB), the small one in the spirit of Little W-Net. The bundle is two files side by side:
``<name>.safetensors`` (weights only, nothing is unpickled) and ``<name>.json`` (architecture,
input specification, provenance, validation figures).
"""

from __future__ import annotations

import errno
import json
from pathlib import Path
from typing import Any

import torch
from monai.networks.nets import UNet
from safetensors.torch import load_file, save_file

from unveil.documents import load_json
from unveil.errors import UnveilError
from unveil.provenance import write_text_atomic

#: Lung-mask sources disagree on what "lung" is: the V7 masks of COVID-ChestXRay include the lung
#: behind the heart ("full"); JSRT-style sets (Shenzhen, Montgomery) and the synthetic phantoms
#: outline the visible lung field only ("visible"). The network predicts both, one channel each;
#: every training image supervises only its own source's channel.
CONVENTIONS: tuple[str, ...] = ("full", "visible")
SOURCE_CONVENTIONS: dict[str, str] = {"covid-chestxray": "full"}  # every other source: "visible"
DEFAULT_CONVENTION = "visible"

#: Named network sizes that `unveil lungs train --architecture` accepts.
ARCHITECTURES: dict[str, dict[str, Any]] = {
    "unet16": {"name": "monai.UNet", "spatial_dims": 2, "in_channels": 1, "out_channels": len(CONVENTIONS),
               "channels": [16, 32, 64, 128, 256], "strides": [2, 2, 2, 2], "num_res_units": 2, "norm": "batch"},
    "unet8": {"name": "monai.UNet", "spatial_dims": 2, "in_channels": 1, "out_channels": len(CONVENTIONS),
              "channels": [8, 16, 32, 64, 128], "strides": [2, 2, 2, 2], "num_res_units": 1, "norm": "batch"},
}
DEFAULT_ARCHITECTURE = "unet16"
ARCHITECTURE = ARCHITECTURES[DEFAULT_ARCHITECTURE]


class LungModelError(UnveilError, ValueError):
    """A lung model (architecture name, bundle folder or files) cannot be used."""


def architecture_spec(name_or_spec: str | dict[str, Any] | None) -> dict[str, Any]:
    """The architecture dict of a named size (:data:`ARCHITECTURES`), or ``name_or_spec`` itself."""
    if name_or_spec is None:
        return dict(ARCHITECTURE)
    if isinstance(name_or_spec, dict):
        return dict(name_or_spec)
    if name_or_spec not in ARCHITECTURES:
        raise LungModelError(f"unknown lung network size {name_or_spec!r}; known: {', '.join(ARCHITECTURES)}")
    return dict(ARCHITECTURES[name_or_spec])


def convention_of(source: str) -> str:
    """The annotation convention of a lung-mask source."""
    return SOURCE_CONVENTIONS.get(source, "visible")


def build_network(architecture: str | dict[str, Any] | None = None) -> torch.nn.Module:
    """The U-Net described by ``architecture`` (a name of :data:`ARCHITECTURES` or a spec dict;
    default :data:`ARCHITECTURE`); outputs logits, one channel per convention."""
    spec = architecture_spec(architecture)
    if spec.pop("name", "monai.UNet") != "monai.UNet":
        raise LungModelError(f"unknown segmentation architecture {architecture!r}")
    return UNet(spatial_dims=spec["spatial_dims"], in_channels=spec["in_channels"], out_channels=spec["out_channels"],
                channels=tuple(spec["channels"]), strides=tuple(spec["strides"]),
                num_res_units=spec["num_res_units"], norm=spec["norm"])


def save_lung_bundle(path: str | Path, network: torch.nn.Module, description: dict[str, Any]) -> Path:
    """Write ``path.safetensors`` and ``path.json`` (atomically); returns the weights path."""
    path = Path(path).with_suffix("")
    path.parent.mkdir(parents=True, exist_ok=True)
    weights = path.with_suffix(".safetensors")
    temporary = weights.with_name(f".{weights.name}.tmp")
    state = {k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()}
    save_file(state, str(temporary), metadata={"format": "unveil-lung-unet"})
    temporary.chmod(0o644)
    temporary.replace(weights)
    write_text_atomic(path.with_suffix(".json"), json.dumps(description, indent=2, sort_keys=True) + "\n")
    return weights


#: The bundle name `unveil lungs train` writes in its run folder.
RUN_BUNDLE_NAME = "lung_unet"


def bundles_in(folder: str | Path) -> list[Path]:
    """The lung bundles (``<name>.safetensors`` with its ``<name>.json``) directly inside ``folder``."""
    return sorted(p.with_suffix("") for p in Path(folder).glob("*.safetensors") if p.with_suffix(".json").is_file())


def resolve_bundle(path: str | Path) -> Path:
    """The bundle base path (``<folder>/<name>``) that ``path`` names: a bundle file (``.safetensors`` or
    ``.json``), its base name, or a folder holding one bundle (a `lungs train` run folder: ``lung_unet``).
    A folder with several bundles and none named ``lung_unet`` is ambiguous and refused."""
    path = Path(path)
    if path.is_dir():
        found = bundles_in(path)
        if path / RUN_BUNDLE_NAME in found:
            return path / RUN_BUNDLE_NAME
        if len(found) == 1:
            return found[0]
        if not found:
            raise LungModelError(f"{path}: no lung bundle (<name>.safetensors + <name>.json) in this folder")
        raise LungModelError(f"{path}: several lung bundles ({', '.join(p.name for p in found)}); name one")
    return path.with_suffix("") if path.suffix in (".safetensors", ".json") else path


def load_lung_bundle(path: str | Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Read a bundle written by :func:`save_lung_bundle` (no pickle involved); ``path`` as for
    :func:`resolve_bundle`."""
    base = resolve_bundle(path)
    described = base.with_suffix(".json")
    if not described.is_file():  # callers name a missing model as such (FileNotFoundError carries the file)
        raise FileNotFoundError(errno.ENOENT, "no such file", str(described))
    description = load_json(described, LungModelError, "lung model description")
    network = build_network(description.get("architecture"))
    network.load_state_dict(load_file(str(base.with_suffix(".safetensors"))))
    network.eval()
    return network, description
