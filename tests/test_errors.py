"""One error family: every error a user can cause is an UnveilError, which the CLI prints as one line."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest
import torch

import unveil
from unveil.errors import UnveilError
from unveil.evaluation.store import ResultsStore, StoreError
from unveil.preprocess.cache import PreprocessSettings, PreprocessSettingsError, resolve_settings
from unveil.segmentation.model import LungModelError, architecture_spec, resolve_bundle
from unveil.training.config import ConfigError, TrainConfig
from unveil.training.device import DeviceError, resolve_device


def _modules():
    for info in pkgutil.walk_packages(unveil.__path__, "unveil."):
        if not info.name.startswith("unveil.cli"):
            yield importlib.import_module(info.name)


def test_every_error_class_of_the_library_is_an_unveil_error():
    classes = {cls for module in _modules() for _, cls in inspect.getmembers(module, inspect.isclass)
               if cls.__module__.startswith("unveil.") and issubclass(cls, Exception)}
    outside = sorted(f"{cls.__module__}.{cls.__qualname__}" for cls in classes if not issubclass(cls, UnveilError))
    assert len(classes) > 20 and outside == []


def test_the_message_is_the_first_argument_not_a_quoted_repr():
    assert str(UnveilError("bad 'x'")) == "bad 'x'"
    assert UnveilError("m").exit_code == 2


@pytest.mark.parametrize("call, kind, text", [
    (lambda tmp: resolve_settings(PreprocessSettings(equalize="sharpen")), PreprocessSettingsError, "equalize"),
    (lambda tmp: resolve_settings(PreprocessSettings(model=str(tmp / "nope.safetensors"))), PreprocessSettingsError,
     "not found"),
    (lambda tmp: architecture_spec("unet99"), LungModelError, "unet99"),
    (lambda tmp: resolve_bundle(tmp), LungModelError, "no lung bundle"),
    (lambda tmp: TrainConfig.from_dict({"epochs": "ten"}), ConfigError, "training options"),
    (lambda tmp: resolve_device("gpu0"), DeviceError, "gpu0"),
    (lambda tmp: ResultsStore(tmp / "r.sqlite").table("nope"), StoreError, "tables: experiment"),
])
def test_user_mistakes_raise_unveil_errors_naming_the_value(tmp_path, call, kind, text):
    with pytest.raises(kind, match=text) as raised:
        call(tmp_path)
    assert isinstance(raised.value, UnveilError)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_asking_for_cuda_without_it_is_a_user_error():
    with pytest.raises(DeviceError, match="CUDA is not available"):
        resolve_device("cuda")
