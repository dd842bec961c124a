"""The one list of classifier architectures: a :class:`ModelSpec` per model, read without loading torch.

Everything that names an architecture derives from it: ``MODEL_NAMES`` and :func:`build_model` (models),
the bundle's ``architecture`` field check (training), the tables' and the report's architecture names and
order (evaluation, reports), and ``--arch``/``--width`` on the command line (whose ``--help`` must not load
torch: this module imports nothing but the standard library). A spec names its builder as an entry point,
``module:function`` (the builder lives in the model's own module, which imports torch), resolved only when
a model is built.

>>> model_spec("conv8").display_name
'Conv8'
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import EntryPoint
from typing import Any

from unveil.errors import UnveilError


class ModelError(UnveilError, ValueError):
    """A model cannot be built or its weights cannot be loaded (the message names the cause and file)."""


@dataclass(frozen=True)
class ModelSpec:
    """What unveil knows of one architecture.

    ``builder``: the function ``(in_channels, width) -> EncoderParts`` (:mod:`unveil.models.classifier`), as an
    entry point ``"package.module:function"`` (loaded on first use, so that listing models costs no torch
    import) or as the callable itself. ``scalable_width``: ``width`` scales its channels (else only 1.0 is
    accepted). The order of registration is the order of the tables."""

    name: str
    display_name: str
    builder: str | Callable[[int, float], Any]
    scalable_width: bool = False
    description: str = ""

    def load_builder(self) -> Callable[[int, float], Any]:
        """The builder function (an entry point is imported here, once per process by Python's module cache)."""
        if callable(self.builder):
            return self.builder
        loaded = EntryPoint(name=self.name, value=self.builder, group="unveil.models").load()
        if not callable(loaded):
            raise ModelError(f"model {self.name}: builder {self.builder!r} is not a function")
        return loaded


_SPECS: dict[str, ModelSpec] = {}


def register_model(spec: ModelSpec, *, replace: bool = False) -> ModelSpec:
    """Add ``spec`` to the registry (after the models already there); a second spec of one name is refused
    unless ``replace``. Returns ``spec`` (so a model module can keep it as a constant)."""
    if not spec.name or spec.name != spec.name.strip().lower() or " " in spec.name:
        raise ModelError(f"a model name is one lower-case word; got {spec.name!r}")
    if spec.name in _SPECS and not replace:
        raise ModelError(f"model {spec.name!r} is registered already")
    _SPECS[spec.name] = spec
    return spec


def unregister_model(name: str) -> None:
    """Remove a model from the registry (tests register fakes and take them out again)."""
    _SPECS.pop(name, None)


def model_names() -> tuple[str, ...]:
    """The registered architectures, in registration (= table) order."""
    return tuple(_SPECS)


def model_specs() -> tuple[ModelSpec, ...]:
    """Every registered spec, in registration order."""
    return tuple(_SPECS.values())


def model_spec(name: str) -> ModelSpec:
    """The spec of architecture ``name``; a :class:`ModelError` listing the known ones otherwise."""
    try:
        return _SPECS[name]
    except (KeyError, TypeError):
        raise ModelError(f"unknown model {name!r}; known models: {', '.join(_SPECS)}") from None


def display_name(name: object) -> str:
    """``ResNet-18`` for ``resnet18``: an architecture as the tables and the report print it (a name no
    spec knows is printed as it is)."""
    spec = _SPECS.get(str(name))
    return spec.display_name if spec is not None else str(name)


def table_rank(name: object) -> int:
    """Position of architecture ``name`` in the tables (registration order; unknown names last)."""
    names = model_names()
    return names.index(str(name)) if str(name) in names else len(names)


def scalable_width_names() -> tuple[str, ...]:
    """The architectures whose channel width ``width`` scales (the others take 1.0 only)."""
    return tuple(spec.name for spec in _SPECS.values() if spec.scalable_width)


def _or_list(names: tuple[str, ...]) -> str:
    return ", ".join(names[:-1]) + f" or {names[-1]}" if len(names) > 1 else "".join(names)


def arch_help() -> str:
    """The help of ``--arch``: every registered architecture."""
    return f"{_or_list(model_names())}."


def width_help() -> str:
    """The help of ``--width``: the architectures it applies to."""
    return f"Channel-width multiplier ({', '.join(scalable_width_names())})."


# The shipped architectures, in the tables' order. Adding one: its module under unveil/models/ (with its
# builder and a test in tests/test_models.py) and its line here.
for _spec in (
    ModelSpec("resnet18", "ResNet-18", "unveil.models.torchvision_nets:resnet18",
              description="torchvision ResNet-18, one-channel stem"),
    ModelSpec("resnet50", "ResNet-50", "unveil.models.torchvision_nets:resnet50",
              description="torchvision ResNet-50, one-channel stem"),
    ModelSpec("densenet121", "DenseNet-121", "unveil.models.torchvision_nets:densenet121",
              description="torchvision DenseNet-121, one-channel stem"),
    ModelSpec("conv8", "Conv8", "unveil.models.conv8:build_encoder", scalable_width=True,
              description="the paper's 8-layer all-convolutional network (after ALL-CNN-C)"),
    ModelSpec("covidnet", "COVID-Net", "unveil.models.covidnet:build_encoder", scalable_width=True,
              description="a re-implementation of COVID-Net's design"),
):
    register_model(_spec)

#: The shipped architectures' names (``model_names()`` also lists models registered at run time).
MODEL_NAMES: tuple[str, ...] = model_names()
