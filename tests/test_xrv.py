"""torchxrayvision encoders: exact layer mapping, its [-1024, 1024] input convention, clear errors, the bundle record.

torchxrayvision models are built without pretrained weights (nothing is downloaded): what is tested is that a
checkpoint in its format lands in our encoder so that our pipeline's input ([0, 1] images, the bundle's
normalization) gives the same features as torchxrayvision given its own input (its ``normalize`` to
[-1024, 1024]) for the same image.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import replace

import numpy as np
import pytest
import torch
import torchvision
import torchxrayvision as xrv

from unveil.models import ModelError, build_model
from unveil.models.xrv import NATIVE_SIZE, XRV_NORMALIZATION, check_image_size, detect
from unveil.preprocess.cache import PreprocessSettings
from unveil.training import BundleError, TrainConfig, load_bundle, pretrain, save_bundle, train
from unveil.training.data import to_model_input


def images(size: int, count: int = 2, seed: int = 0) -> np.ndarray:
    """uint8 gray images (N x 1 x S x S), as our pre-processing cache stores them."""
    return np.random.default_rng(seed).integers(0, 256, (count, 1, size, size), dtype=np.uint8)


def ours_vs_theirs(model, theirs, pixels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Our encoder's features of ``pixels`` in our convention, and torchxrayvision's in its own."""
    mean, std = model.input_normalization
    with torch.no_grad():
        ours = model.eval().features(to_model_input(torch.from_numpy(pixels), mean, std))
        their_input = torch.from_numpy(xrv.utils.normalize(pixels, 255))  # [0, 255] -> [-1024, 1024]
        features = theirs.features2 if isinstance(theirs, xrv.models.DenseNet) else theirs.features
        return ours, features(their_input)


def assert_same_features(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    assert ours.shape == theirs.shape and float(theirs.abs().max()) > 0
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5 * float(theirs.abs().max()))


def xrv_densenet(op_threshs: bool = False) -> xrv.models.DenseNet:
    torch.manual_seed(0)
    model = xrv.models.DenseNet(weights=None).eval()
    if op_threshs:  # what a model with pretrained weights carries, and therefore its saved state dict
        model.op_threshs = torch.rand(18)
    return model


@pytest.fixture
def xrv_resnet50(tmp_path, monkeypatch):
    """torchxrayvision's ResNet-50, loading a seeded file in the format it downloads (no download: its weights
    lookup is pointed at the local file) and running at the test's size (its resize to 512 px is disabled)."""
    torch.manual_seed(0)
    inner = torchvision.models.resnet50(num_classes=18, weights=None)
    inner.conv1 = torch.nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    for module in inner.modules():  # non-trivial BatchNorm statistics, so the comparison can fail
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 2.0)
    path = tmp_path / "pc-nih-rsna-siim-vin-resnet50-test512-e400-state.pt"
    torch.save(inner.state_dict(), path)
    monkeypatch.setattr(xrv.models, "get_weights", lambda weights, cache_dir=None: str(path))
    monkeypatch.setattr(xrv.utils, "fix_resolution", lambda x, resolution, model: x)
    return xrv.models.ResNet(weights="resnet50-res512-all").eval(), path


@pytest.mark.parametrize("op_threshs", [False, True])
def test_densenet121_features_equal_torchxrayvision(tmp_path, op_threshs):
    theirs = xrv_densenet(op_threshs)
    path = tmp_path / "xrv-densenet.pt"
    torch.save(theirs.state_dict(), path)
    model = build_model("densenet121", init_weights=path)
    assert model.input_normalization == XRV_NORMALIZATION
    assert_same_features(*ours_vs_theirs(model, theirs, images(64)))
    assert model(torch.zeros(1, 1, 64, 64)).shape == (1, 2)  # its 18-pathology head is not ours


@pytest.mark.parametrize("saved_as", ["downloaded file", "wrapper state dict"])
def test_resnet50_features_equal_torchxrayvision(xrv_resnet50, tmp_path, saved_as):
    theirs, downloaded = xrv_resnet50
    path = downloaded
    if saved_as == "wrapper state dict":  # xrv.models.ResNet(...).state_dict(): model.* keys and op_threshs
        path = tmp_path / "xrv-resnet50-wrapper.pt"
        torch.save(theirs.state_dict(), path)
        assert "op_threshs" in theirs.state_dict()
    model = build_model("resnet50", init_weights=path)
    assert_same_features(*ours_vs_theirs(model, theirs, images(64, count=1)))


def test_torchvision_checkpoints_are_not_taken_for_torchxrayvision():
    torch.manual_seed(0)
    assert detect(torchvision.models.densenet121(weights=None).state_dict()) is None  # 3 channels, 1000 classes
    assert detect(build_model("densenet121").encoder.state_dict()) is None  # our own encoder
    assert detect(xrv_densenet().state_dict()) == "densenet121"


def test_bad_checkpoints_give_clear_errors_naming_the_file(tmp_path, xrv_resnet50):
    path = tmp_path / "xrv-densenet.pt"
    torch.save(xrv_densenet().state_dict(), path)
    with pytest.raises(ModelError, match=r"xrv-densenet\.pt holds a torchxrayvision DenseNet-121 checkpoint, not a "
                                         r"resnet50 one; build densenet121"):
        build_model("resnet50", init_weights=path)
    with pytest.raises(ModelError, match=r"xrv-resnet50.*\.pt holds a torchxrayvision ResNet-50 checkpoint"):
        build_model("densenet121", init_weights=xrv_resnet50[1].rename(tmp_path / "xrv-resnet50.pt"))
    whole = tmp_path / "whole-model.pt"  # how torchxrayvision ships its DenseNet weights: a pickled model
    torch.save(xrv_densenet(), whole)
    with pytest.raises(ModelError, match=r"whole-model\.pt.*pickled.*state_dict\(\)"):
        build_model("densenet121", init_weights=whole)
    truncated = {k: v for k, v in xrv_densenet().state_dict().items() if "denseblock4" not in k}
    torch.save(truncated, tmp_path / "truncated.pt")
    with pytest.raises(ModelError, match=r"truncated\.pt does not fit the densenet121 encoder: missing keys"):
        build_model("densenet121", init_weights=tmp_path / "truncated.pt")


def test_the_bundle_records_the_source_and_keeps_the_convention(tmp_path):
    theirs = xrv_densenet(op_threshs=True)
    path = tmp_path / "xrv-densenet121-all.pt"
    torch.save(theirs.state_dict(), path)
    model = build_model("densenet121", init_weights=path)
    with pytest.raises(BundleError, match="requires"):  # a fitted normalization would stack on the convention
        save_bundle(tmp_path / "bad", model, width=1.0, classes=["covid-", "covid+"], positive_class="covid+",
                    image_size=64, preprocess=PreprocessSettings(), normalization=(0.45, 0.2))
    save_bundle(tmp_path / "bundle", model, width=1.0, classes=["covid-", "covid+"], positive_class="covid+",
                image_size=64, preprocess=PreprocessSettings(), normalization=model.input_normalization)
    bundle = load_bundle(tmp_path / "bundle")
    source = bundle.description["encoder_source"]
    assert source["format"] == "torchxrayvision" and source["file"] == path.name
    assert source["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert source["native_size"] == NATIVE_SIZE["densenet121"] == 224
    assert bundle.normalization == XRV_NORMALIZATION == bundle.model.input_normalization
    assert bundle.description["normalization"]["fitted_on"].startswith("fixed by the encoder's source")
    assert_same_features(*ours_vs_theirs(bundle.model, theirs, images(64)))


def test_a_training_size_other_than_the_native_one_is_warned(tmp_path, caplog):
    path = tmp_path / "xrv-densenet.pt"
    torch.save(xrv_densenet().state_dict(), path)
    model = build_model("densenet121", init_weights=path)
    with caplog.at_level(logging.WARNING, logger="unveil.models.xrv"):
        check_image_size(model, 224)
        assert not caplog.records
        check_image_size(model, 32)
    assert "trained on 224 px images; training at 32 px" in caplog.text


@pytest.mark.slow
def test_pretrain_from_torchxrayvision_then_fine_tune_keep_its_input_convention(tmp_path):
    from unveil.synth.config import load_config
    from unveil.synth.generate import dataset_roots, generate
    from unveil.training import DataSpec

    generate(replace(load_config("paper"), image_size=32), tmp_path / "bench", seed=0, scale=0.06)
    data = {name: DataSpec(source, root) for name, (source, root) in dataset_roots(tmp_path / "bench").items()}
    path = tmp_path / "xrv-densenet.pt"
    torch.save(xrv_densenet().state_dict(), path)
    config = TrainConfig(architecture="densenet121", image_size=32, epochs=1, batch_size=16, eval_batch_size=32)
    settings = PreprocessSettings(mask="none")
    pre = pretrain([data["B"]], tmp_path / "pre", config=config, preprocess=settings, init_weights=path,
                   cache=tmp_path / "cache")
    tuned = train("AB", {"A": data["A"], "B": data["B"]}, tmp_path / "ab", config=config, preprocess=settings,
                  encoder=pre.bundle, cache=tmp_path / "cache")
    for bundle in (load_bundle(pre.bundle), load_bundle(tuned.bundle)):
        assert bundle.normalization == XRV_NORMALIZATION  # not fitted on the training split
        assert bundle.description["encoder_source"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
