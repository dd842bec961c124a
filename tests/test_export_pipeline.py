"""The whole-chain export (`unveil export --format pipeline`): each torch/numpy step equals the step of `unveil
predict` it replaces, the exported folder gives predict's probabilities with onnxruntime and numpy only, it is a
new folder (never the bundle's), and no absolute path of the building machine is written into it."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from scipy import ndimage
from typer.testing import CliRunner

from unveil.cli import app
from unveil.inference import ExportError, Predictor, export_pipeline, graph, pipeline_runtime, predict_files
from unveil.inference.pipeline import build_stages, check_images, reference_probabilities
from unveil.io import read_image
from unveil.segmentation.postprocess import clean_lung_mask
from unveil.transforms import blur_mask, equalize_histogram, normalize_intensity, resize_image

from conftest import shared

REPO = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-4  # float32 throughout; measured differences are ~1e-7 (see docs/inference.md)


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory) -> Path:
    """An untrained conv8 at 48 px, its head's weights scaled up so that probabilities differ between images by
    far more than the tolerance (an agreement check on near-constant outputs could not fail)."""
    from unveil.models import build_model
    from unveil.preprocess.cache import PreprocessSettings
    from unveil.training.bundle import save_bundle

    torch.manual_seed(1)
    model = build_model("conv8", num_classes=2, width=0.25)
    with torch.no_grad():
        model.head.weight.mul_(3000.0)
        model.head.bias.zero_()
    return save_bundle(tmp_path_factory.mktemp("pipeline-bundle") / "model", model, width=0.25,
                       classes=["covid-", "covid+"], positive_class="covid+", image_size=48,
                       preprocess=PreprocessSettings(size=48), normalization=(0.3, 0.2))


@pytest.fixture(scope="module")
def exported(tiny_bundle) -> Path:
    """The pipeline exported by the CLI with its defaults (synthetic check images, MODEL-pipeline)."""
    result = CliRunner().invoke(app, ["export", str(tiny_bundle), "--format", "pipeline"])
    assert result.exit_code == 0, result.output
    folder = tiny_bundle.with_name("model-pipeline")
    assert result.stdout.startswith(f"exported pipeline: {folder} (verified on 4 image(s): probabilities within ")
    return folder


@pytest.mark.parametrize("shape,size", [((300, 280), 128), ((50, 70), 128), ((1000, 900), 256), ((77, 600), 64),
                                        ((96, 96), 96)])
def test_resize_matches_pillow(shape, size):
    image = np.random.default_rng(0).random(shape, dtype=np.float32)
    got = graph.pil_resize(torch.from_numpy(image)[None, None], size)[0, 0].numpy()
    assert got.shape == (size, size)
    assert np.abs(got - resize_image(image, size)).max() <= 1.2e-7  # one float32 step at most


@pytest.mark.parametrize("kind", ["uniform", "8-bit", "few levels", "skewed", "constant"])
@pytest.mark.parametrize("masked", [False, True])
def test_equalization_blur_and_min_max_equal_the_numpy_chain(kind, masked):
    rng = np.random.default_rng(len(kind))
    image = rng.random((70, 70), dtype=np.float32)
    image = {"uniform": image, "8-bit": np.round(image * 255) / 255, "few levels": np.round(image * 7) / 7 * 0.3 + 0.2,
             "skewed": image ** 4, "constant": np.full_like(image, 0.3)}[kind].astype(np.float32)
    mask = np.zeros(image.shape, dtype=bool)
    mask[10:60, 8:30] = mask[12:58, 40:62] = True
    tensor, mask_tensor = torch.from_numpy(image)[None, None], torch.from_numpy(mask.astype(np.float32))[None, None]
    got = graph.equalize(tensor, mask_tensor if masked else None)[0, 0].numpy()
    np.testing.assert_array_equal(got, equalize_histogram(image, mask if masked else None))
    blurred = graph.blur(mask_tensor, torch.from_numpy(graph.blur_matrix(70, 3.0)))[0, 0].numpy()
    np.testing.assert_array_equal(blurred, blur_mask(mask, 3.0))
    scaled = image * 0.5 + 0.1
    np.testing.assert_array_equal(graph.min_max(torch.from_numpy(scaled)[None, None])[0, 0].numpy(),
                                  normalize_intensity(scaled))


def test_empty_mask_equalizes_the_whole_image():
    image = np.random.default_rng(2).random((40, 40), dtype=np.float32)
    got = graph.equalize(torch.from_numpy(image)[None, None], torch.zeros(1, 1, 40, 40))[0, 0].numpy()
    np.testing.assert_array_equal(got, equalize_histogram(image))


def test_numpy_mask_clean_up_equals_scipy():
    rng = np.random.default_rng(1)
    for trial in range(60):
        side = int(rng.integers(6, 70))
        mask = rng.random((side, side)) < rng.uniform(0.2, 0.8)
        if trial % 2:
            mask = ndimage.binary_opening(mask)
        labels, count = ndimage.label(mask, structure=np.ones((3, 3)))
        mine, found = pipeline_runtime.label_components(mask, 8)
        assert found == count and np.array_equal(mine, labels)
        np.testing.assert_array_equal(pipeline_runtime.clean_lung_mask(mask), clean_lung_mask(mask))
    holed = np.zeros((40, 40), dtype=bool)
    holed[5:35, 5:18] = holed[5:35, 22:35] = True
    holed[10:14, 10:13] = False  # a hole, filled
    holed[0:3, 0:3] = True  # a speck under 5 % of the largest lung, dropped
    cleaned = pipeline_runtime.clean_lung_mask(holed)
    assert cleaned[11, 11] and not cleaned[1, 1] and cleaned.sum() == 30 * 26


def test_runtime_file_imports_only_numpy_and_onnxruntime():
    tree = ast.parse(Path(pipeline_runtime.__file__).read_text(encoding="utf-8"))
    modules = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
               for alias in node.names}
    modules |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert modules <= {"__future__", "json", "pathlib", "typing", "numpy", "onnxruntime"}


def test_torch_stages_give_predicts_probabilities(tiny_bundle):
    predictor = Predictor(tiny_bundle)
    lungs, classifier = build_stages(predictor)
    images = check_images(3)
    expected = reference_probabilities(predictor, images)
    got = []
    with torch.inference_mode():
        for image in images:
            resized, raw = lungs(torch.from_numpy(image)[None, None])
            mask = pipeline_runtime.clean_lung_mask(raw[0, 0].numpy())
            got.append(classifier(resized, torch.from_numpy(mask.astype(np.float32))[None, None])[0].numpy())
    assert np.abs(np.stack(got) - expected).max() <= 1e-6
    assert np.ptp(expected[:, 1]) > 100 * TOLERANCE  # the images give different probabilities: the check can fail


def test_exported_folder_contract(exported, tiny_bundle):
    names = sorted(p.name for p in exported.iterdir() if not p.name.startswith("."))  # .unveil.lock: the guard's
    assert names == ["classifier.onnx", "lungs.onnx", "pipeline.json", "preprocess.py"]
    description = json.loads((exported / "pipeline.json").read_text())
    assert description["check"]["max_abs_difference_vs_predict"] <= TOLERANCE
    assert description["input"]["shape"] == ["N", 1, "H", "W"] and description["output"]["positive_index"] == 1
    assert description["threshold"]["rule"] == "fixed" and description["threshold"]["value"] == 0.5
    from unveil.provenance import file_sha256

    assert description["sha256"] == {name: file_sha256(exported / name) for name in
                                     ("lungs.onnx", "classifier.onnx", "preprocess.py")}
    assert description["sources"]["bundle_sha256"]["model.safetensors"] == file_sha256(
        tiny_bundle / "model.safetensors")
    assert not any(p.name.endswith(".onnx") for p in tiny_bundle.iterdir())  # nothing written into the bundle


def test_no_absolute_path_of_the_build_machine(exported, tiny_bundle):
    needles = {str(REPO), str(Path.home()), tempfile.gettempdir(), str(tiny_bundle), str(tiny_bundle.parent),
               sys.prefix, str(Path(np.__file__).parents[1]), "/work/", "/tmp/", "/root/", "/home/"}
    for file in exported.iterdir():
        data = file.read_bytes()
        for needle in needles:
            assert needle.encode() not in data, f"{file.name} holds {needle}"


def test_exported_pipeline_runs_without_unveil_and_matches_predict(exported, tiny_bundle, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    arrays = check_images(3, seed=5)
    for index, image in enumerate(arrays):
        Image.fromarray(np.round(image * 255).astype(np.uint8)).save(images / f"x{index}.png")
    predict_files(tiny_bundle, [images], tmp_path / "predicted", evidence=False)
    expected = pd.read_csv(tmp_path / "predicted" / "predictions.csv")["probability"].to_numpy()
    np.savez(tmp_path / "inputs.npz", *[read_image(images / f"x{i}.png").pixels for i in range(3)])
    script = ("import sys, json, numpy as np; sys.path.insert(0, sys.argv[1]); import preprocess; "
              "p = preprocess.Pipeline(sys.argv[1]); x = np.load(sys.argv[2]); "
              "print(json.dumps([p.probability(x[k]) for k in x.files])); "
              "assert not [m for m in sys.modules if m.startswith(('unveil', 'torch', 'scipy'))]")
    run = subprocess.run([sys.executable, "-c", script, str(exported), str(tmp_path / "inputs.npz")],
                         capture_output=True, text=True, cwd=tmp_path, check=False)
    assert run.returncode == 0, run.stderr
    got = np.array(json.loads(run.stdout))
    assert np.abs(got - expected).max() <= TOLERANCE  # the CSV rounds to 6 decimals


def test_refuses_the_bundle_folder_and_clahe(exported, tiny_bundle, tmp_path):
    runner = CliRunner()
    for out in (tiny_bundle, tiny_bundle / "pipeline"):
        result = runner.invoke(app, ["export", str(tiny_bundle), "--format", "pipeline", "--out", str(out)])
        assert result.exit_code == 2 and "error:" in result.output, result.output
    with pytest.raises(ExportError, match="new folder"):
        export_pipeline(tiny_bundle, tiny_bundle / "inside")
    assert not (tiny_bundle / "inside").exists() and not (tiny_bundle / "pipeline").exists()
    description = json.loads((tiny_bundle / "bundle.json").read_text())
    clahe = tmp_path / "clahe"
    clahe.mkdir()
    for name in ("model.safetensors",):
        (clahe / name).write_bytes((tiny_bundle / name).read_bytes())
    description["preprocess"]["equalize"] = "clahe"
    (clahe / "bundle.json").write_text(json.dumps(description))
    with pytest.raises(ExportError, match="clahe"):
        export_pipeline(clahe, tmp_path / "out")
    bad = runner.invoke(app, ["export", str(tiny_bundle), "--format", "tflite"])
    assert bad.exit_code == 2 and "onnx, torchscript or pipeline" in bad.output


@pytest.mark.realdata
def test_realdata_exported_pipeline_matches_predict(exported, tiny_bundle, tmp_path):
    files = [*sorted((shared("covid-chestxray") / "images").glob("*"))[:3],
             *sorted((shared("chest_xray") / "train" / "PNEUMONIA").glob("*"))[:3]]
    predict_files(tiny_bundle, files, tmp_path / "predicted", evidence=False)
    expected = pd.read_csv(tmp_path / "predicted" / "predictions.csv")["probability"].to_numpy()
    runner = pipeline_runtime.Pipeline(exported)
    got = np.array([runner.probability(read_image(path).pixels) for path in files])
    assert np.abs(got - expected).max() <= TOLERANCE
