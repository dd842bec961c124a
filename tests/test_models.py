"""The model registry: every architecture builds, loads local weights, reuses encoders and works with Grad-CAM."""

import pytest
import torch
from monai.visualize import GradCAM
from safetensors.torch import save_file
from torchvision.models import densenet121, resnet18

from unveil.models import MODEL_NAMES, CxrClassifier, ModelError, build_model, load_encoder_state

WIDTH = {"conv8": 0.25, "covidnet": 0.25}  # tiny variants keep the tests fast


def tiny(name: str, **kwargs) -> CxrClassifier:
    return build_model(name, width=WIDTH.get(name, 1.0), **kwargs)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_shapes_and_composition(name):
    torch.manual_seed(0)
    for num_classes, in_channels in ((2, 1), (3, 3)):
        model = tiny(name, num_classes=num_classes, in_channels=in_channels).eval()
        assert (model.architecture, model.num_classes, model.in_channels) == (name, num_classes, in_channels)
        x = torch.randn(2, in_channels, 64, 64)
        with torch.no_grad():
            logits, features = model(x), model.features(x)
            assert logits.shape == (2, num_classes)
            assert features.shape == (2, model.feature_dim) == (2, model.head.in_features)
            torch.testing.assert_close(model.head(model.encoder(x)), logits)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_gradcam_on_target_layer(name):
    torch.manual_seed(0)
    model = tiny(name)
    assert isinstance(dict(model.named_modules())[model.target_layer], torch.nn.Module)
    cam = GradCAM(nn_module=model, target_layers=model.target_layer)(torch.randn(2, 1, 64, 80))
    assert cam.shape == (2, 1, 64, 80) and torch.isfinite(cam).all()


def test_bad_arguments():
    with pytest.raises(ModelError, match="known models: resnet18, resnet50, densenet121, conv8, covidnet"):
        build_model("vgg16")
    with pytest.raises(ModelError, match="width"):
        build_model("resnet18", width=0.5)
    assert issubclass(ModelError, ValueError)


def test_replace_head():
    torch.manual_seed(0)
    model = tiny("conv8", num_classes=3)
    encoder = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    model.replace_head(5)
    for key, value in model.encoder.state_dict().items():
        assert torch.equal(value, encoder[key])
    assert model.num_classes == 5 and model.head.out_features == 5 and model(torch.randn(2, 1, 64, 64)).shape == (2, 5)


def test_resnet18_init_weights_from_torchvision(tmp_path):
    torch.manual_seed(0)
    saved = resnet18(weights=None).state_dict()  # 3-channel conv1, 1000-class fc
    path = tmp_path / "resnet18.pth"
    torch.save(saved, path)
    model = build_model("resnet18", init_weights=path)
    encoder = model.encoder.state_dict()
    torch.testing.assert_close(encoder["conv1.weight"], saved["conv1.weight"].sum(1, keepdim=True))
    for key in ("layer1.0.conv1.weight", "layer4.1.bn2.running_var", "bn1.bias"):
        assert torch.equal(encoder[key], saved[key])
    assert model.head.weight.shape == (2, 512)
    assert not torch.equal(model.head.weight, saved["fc.weight"][:2])
    rgb = build_model("resnet18", in_channels=3, init_weights=path)
    assert torch.equal(rgb.encoder.conv1.weight, saved["conv1.weight"])
    same_head = build_model("resnet18", num_classes=1000, in_channels=3, init_weights=path)
    assert torch.equal(same_head.head.weight, saved["fc.weight"])


def test_init_weights_errors(tmp_path):
    saved = resnet18(weights=None).state_dict()
    saved["layer9.weight"] = saved.pop("layer1.0.conv1.weight")
    wrong = tmp_path / "wrong.pth"
    torch.save(saved, wrong)
    offending = r"wrong\.pth.*missing keys: layer1\.0\.conv1\.weight.*unexpected keys: layer9"
    with pytest.raises(ModelError, match=offending):
        build_model("resnet18", init_weights=wrong)
    with pytest.raises(ModelError, match="absent.pth"):
        build_model("resnet18", init_weights=tmp_path / "absent.pth")
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(torch.randint(0, 256, (4096,), dtype=torch.uint8).numpy().tobytes())
    with pytest.raises(ModelError, match=r"corrupt\.pth"):
        build_model("resnet18", init_weights=corrupt)
    corrupt_st = tmp_path / "corrupt.safetensors"
    corrupt_st.write_bytes(b"\x00" * 100)
    with pytest.raises(ModelError, match=r"corrupt\.safetensors"):
        build_model("conv8", width=0.25, init_weights=corrupt_st)
    with pytest.raises(ModelError, match="resnet50 encoder"):  # right file, wrong architecture
        build_model("resnet50", init_weights=tmp_path / "wrong.pth")


def test_densenet121_init_weights_including_legacy_keys(tmp_path):
    torch.manual_seed(0)
    saved = densenet121(weights=None).state_dict()
    # the published torchvision .pth files use the old "norm.1" naming; both must load
    legacy = {k.replace("denselayer1.norm1", "denselayer1.norm.1"): v for k, v in saved.items()}
    torch.save(legacy, tmp_path / "densenet121.pt")
    model = build_model("densenet121", init_weights=tmp_path / "densenet121.pt")
    encoder = model.encoder.state_dict()
    torch.testing.assert_close(encoder["features.conv0.weight"], saved["features.conv0.weight"].sum(1, keepdim=True))
    for key in ("features.denseblock1.denselayer1.norm1.weight", "features.denseblock4.denselayer16.conv2.weight",
                "features.norm5.running_mean"):
        assert torch.equal(encoder[key], saved[key])
    assert model(torch.randn(2, 1, 64, 64)).shape == (2, 2)


def test_safetensors_init_weights_spreads_channels(tmp_path):
    torch.manual_seed(0)
    source = tiny("conv8", in_channels=3)
    save_file(source.encoder.state_dict(), tmp_path / "conv8.safetensors")
    model = tiny("conv8", in_channels=2, init_weights=tmp_path / "conv8.safetensors")
    expected = source.encoder.conv1[0].weight.sum(1, keepdim=True).repeat(1, 2, 1, 1) / 2
    torch.testing.assert_close(model.encoder.conv1[0].weight, expected)
    assert torch.equal(model.encoder.conv8[0].weight, source.encoder.conv8[0].weight)


@pytest.mark.parametrize("name", ["resnet18", "covidnet"])
def test_load_encoder_state_for_fine_tuning(name):
    torch.manual_seed(0)
    pretrained, model = tiny(name, num_classes=3), tiny(name, num_classes=2)
    head = {k: v.clone() for k, v in model.head.state_dict().items()}
    load_encoder_state(model, pretrained.state_dict(), source="pneumonia.safetensors")
    for key, value in pretrained.encoder.state_dict().items():
        assert torch.equal(model.encoder.state_dict()[key], value)
    for key, value in model.head.state_dict().items():
        assert torch.equal(value, head[key])


def test_load_encoder_state_rejects_other_architectures():
    with pytest.raises(ModelError, match="pneumonia.pt.*covidnet encoder"):
        load_encoder_state(tiny("covidnet"), tiny("conv8").state_dict(), source="pneumonia.pt")
    with pytest.raises(ModelError, match="shape-mismatched keys: conv1.weight"):
        load_encoder_state(tiny("resnet18"), tiny("resnet18", in_channels=3).state_dict())


def test_parameter_counts():
    def count(model):
        return sum(p.numel() for p in model.parameters())

    assert count(build_model("resnet18")) == 11_171_266  # torchvision's 11.69 M - 1000-class fc - 2 conv1 channels
    assert count(build_model("conv8")) == 1_367_714
    assert count(build_model("covidnet")) == 1_428_682
