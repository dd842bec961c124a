"""Prediction on new files (evidence, lung check, OOD warning, unreadable files) and export."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from unveil.cli import app
from unveil.data.spec import DataSpec
from unveil.inference import (
    ExportError,
    LungCheck,
    OodReference,
    OodReferenceOutdated,
    PredictionError,
    export_model,
    predict_files,
)
from unveil.preprocess.cache import PreprocessSettings
from unveil.thresholds import ThresholdRequest
from unveil.training import TrainConfig, load_bundle, train
from unveil.training.ood import fit_ood_reference


def _two_lungs(size: int = 64) -> np.ndarray:
    mask = np.zeros((size, size), dtype=bool)
    mask[12:52, 8:28] = True
    mask[12:52, 36:56] = True
    return mask


def test_lung_check():
    check = LungCheck()
    assert check.problems(_two_lungs()) == []
    one = _two_lungs()
    one[:, 32:] = False
    assert any("1 component" in p for p in check.problems(one))
    tiny = np.zeros((64, 64), dtype=bool)
    tiny[10:14, 10:14] = tiny[10:14, 40:44] = True
    assert any("area" in p for p in check.problems(tiny))
    lopsided = np.zeros((64, 64), dtype=bool)
    lopsided[10:50, 2:14] = lopsided[10:50, 16:28] = True
    assert any("one side" in p for p in check.problems(lopsided))


def test_ood_reference_flags_far_features_and_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    train = np.concatenate([rng.normal(0, 1, (100, 20)), rng.normal(4, 1, (100, 20))])
    sources = np.repeat(["a", "b"], 100)
    val = np.concatenate([rng.normal(0, 1, (50, 20)), rng.normal(4, 1, (50, 20))])
    reference = fit_ood_reference(train, sources, val, dimensions=8)
    inside, nearest = reference.distances(rng.normal(4, 1, (400, 20)))
    outside, _ = reference.distances(rng.normal(-15, 1, (5, 20)))
    assert (inside > reference.threshold).mean() <= 0.1 and set(nearest) == {"b"}  # target: 5 % false alarms
    assert (outside > reference.threshold).all()
    # a shift along a direction the training features never varied in is not projected away by the PCA
    sideways = rng.normal(4, 1, (5, 20))
    sideways[:, :10] += np.linspace(-1, 1, 10) * 6
    assert (reference.distances(sideways)[0] > reference.threshold).all()
    reference.save(tmp_path)
    loaded = OodReference.load(tmp_path)
    assert np.allclose(loaded.distances(train[:5])[0], reference.distances(train[:5])[0])
    assert loaded.threshold == reference.threshold and loaded.false_alarm == 0.05
    assert OodReference.load(tmp_path / "nothing") is None
    (tmp_path / "ood.json").write_text(json.dumps({"threshold": 3.0, "percentile": 99.0, "sources": ["a"]}))
    with pytest.raises(OodReferenceOutdated, match="version 1.*refit_ood_reference"):
        OodReference.load(tmp_path)


def test_image_view_sees_a_shift_the_features_do_not():
    rng = np.random.default_rng(1)

    def phantoms(n: int, ribs: bool) -> np.ndarray:
        images = np.zeros((n, 1, 64, 64), dtype=np.uint8)
        for index in range(n):
            lungs = rng.uniform(90, 130)
            images[index, 0, 8:56, 6:28] = images[index, 0, 8:56, 36:58] = lungs
            if ribs:
                images[index, 0, 8:56:6, :] = np.clip(lungs + 60, 0, 255)
            images[index, 0] = np.clip(images[index, 0] + rng.normal(0, 3, (64, 64)), 0, 255)
        return images

    features = rng.normal(0, 1, (260, 12))  # the encoder sees nothing special
    train, val = phantoms(200, ribs=True), phantoms(60, ribs=True)
    reference = fit_ood_reference(features[:200], np.repeat("a", 200), features[200:], train, val)
    same, _ = reference.distances(rng.normal(0, 1, (40, 12)), phantoms(40, ribs=True))
    shifted, _ = reference.distances(rng.normal(0, 1, (40, 12)), phantoms(40, ribs=False))
    assert (same > reference.threshold).mean() <= 0.15 and (shifted > reference.threshold).mean() >= 0.9
    assert "image statistics" in reference.explain(rng.normal(0, 1, (1, 12)), phantoms(1, ribs=False))[0]
    with pytest.raises(ValueError, match="pass them"):
        reference.distances(features[:2])


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from unveil.synth.config import load_config
    from unveil.synth.generate import dataset_roots, generate

    root = tmp_path_factory.mktemp("inference")
    generate(replace(load_config("paper"), image_size=64), root / "bench", seed=0, scale=0.1)
    data = {name: DataSpec(source, path) for name, (source, path) in dataset_roots(root / "bench").items()}
    config = TrainConfig(architecture="conv8", width=0.25, image_size=32, epochs=2, batch_size=16)
    run = train("AB", {"A": data["A"], "B": data["B"]}, root / "AB", config=config,
                preprocess=PreprocessSettings(mask="segment"), cache=root / "cache")
    return {"bundle": run.bundle, "data": data, "root": root}


def test_predict_scores_files_like_training_and_lists_unreadable(model, tmp_path):
    a_records = model["data"]["A"].load().head(12)
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "broken.png").write_bytes(b"\x89PNG not really")
    rsna = sorted(Path(model["data"]["C"].root).rglob("*.dcm"))[:2]  # DICOM files
    summary = predict_files(model["bundle"], [*a_records["path"], *rsna, folder], tmp_path / "out", batch_size=5)
    table = pd.read_csv(tmp_path / "out" / "predictions.csv", keep_default_na=False)
    assert len(table) == 12 + 2 + 1 and summary.scored == 14 and len(summary.unreadable) == 1
    broken = table[table["status"] == "unreadable"].iloc[0]
    assert broken["file"].endswith("broken.png") and "broken.png" in broken["error"]
    scored = table[table["status"] != "unreadable"]
    assert scored["probability"].astype(float).between(0, 1).all()
    assert set(scored.loc[scored["status"] != "rejected", "decision"]) <= {"covid+", "covid-"}
    assert (scored.loc[scored["status"] == "rejected", "decision"] == "").all()
    assert all((tmp_path / "out" / "evidence").joinpath(p.split("/")[-1]).is_file() for p in scored["overlay"])
    assert (tmp_path / "out" / "unreadable.txt").read_text().count("broken.png") == 1

    # The prediction path pre-processes exactly as training did (the cache): same probabilities.
    from unveil.evaluation.evaluate import score_records

    bundle = load_bundle(model["bundle"])
    cached, _ = score_records(bundle, a_records, cache=model["root"] / "cache")
    by_file = dict(zip(scored["file"], scored["probability"].astype(float), strict=True))
    predicted = np.array([by_file[p] for p in a_records["path"]])
    assert np.abs(predicted - cached["probability"].to_numpy()).max() < 0.01
    assert (scored["threshold"].astype(float) == bundle.threshold).all()
    assert (scored["threshold_rule"] == bundle.threshold_choice.rule.value).all()

    with pytest.raises(PredictionError, match="broken.png"):
        predict_files(model["bundle"], [folder], tmp_path / "strict", strict=True, evidence=False)


def test_predict_threshold_options(model, tmp_path):
    files = [str(p) for p in model["data"]["A"].load().head(4)["path"]]
    bundle = load_bundle(model["bundle"])
    runner = CliRunner()

    def predict(*options: str) -> pd.DataFrame:
        out = tmp_path / f"out{len(list(tmp_path.iterdir()))}"
        result = runner.invoke(app, ["predict", str(model["bundle"]), *files, "--out", str(out), "--no-evidence",
                                     "--json", *options])
        assert result.exit_code == 0, result.output
        table = pd.read_csv(out / "predictions.csv")
        assert json.loads(result.stdout[result.stdout.index("{"):])["threshold"]["value"] == table["threshold"][0]
        return table

    table = predict("--threshold", "0.3")
    assert (table["threshold"] == 0.3).all() and (table["threshold_rule"] == "fixed").all()
    decided = table[table["status"] != "rejected"]
    assert ((decided["probability"] >= 0.3) == (decided["decision"] == "covid+")).all()
    table = predict("--threshold-rule", "sensitivity", "--target-sensitivity", "1.0")
    validation = pd.read_csv(model["bundle"].parent / "val_predictions.csv")
    expected = bundle.resolve_threshold(ThresholdRequest("sensitivity", target_sensitivity=1.0))
    assert expected.value == validation.loc[validation["label"] == 1, "p_covid+"].min()
    assert (table["threshold"] == expected.value).all() and (table["threshold_rule"] == "sensitivity").all()
    table = predict()
    assert (table["threshold"] == bundle.threshold).all() and (table["threshold_rule"] == "youden").all()
    result = runner.invoke(app, ["predict", str(model["bundle"]), *files, "--out", str(tmp_path / "x"),
                                 "--threshold", "0.3", "--threshold-rule", "youden"])
    assert result.exit_code == 2 and "does not go with --threshold-rule youden" in result.output


def test_out_of_distribution_images_are_rejected(model, tmp_path):
    noise = np.random.default_rng(0).integers(0, 255, (96, 96), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "noise.png")
    Image.fromarray(np.full((96, 96), 255, dtype=np.uint8)).save(tmp_path / "white.png")
    predict_files(model["bundle"], [tmp_path / "noise.png", tmp_path / "white.png"], tmp_path / "out",
                  evidence=False)
    table = pd.read_csv(tmp_path / "out" / "predictions.csv", keep_default_na=False)
    assert (table["status"] == "rejected").all() and (table["decision"] == "").all()
    assert table["warnings"].str.contains("out of distribution|lung mask").all()
    assert (table["lung_check"] == "implausible").any() or (table["ood_flag"] == "True").any()
    predict_files(model["bundle"], [tmp_path / "noise.png", tmp_path / "white.png"], tmp_path / "out",
                  evidence=False, decide_anyway=True)  # asked for: decided, still marked
    table = pd.read_csv(tmp_path / "out" / "predictions.csv", keep_default_na=False)
    assert (table["status"] == "flagged").all() and table["decision"].isin(["covid+", "covid-"]).all()


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_matches_pytorch_on_sample_images(model, tmp_path, fmt):
    from unveil.evaluation.evaluate import cached_images

    bundle = load_bundle(model["bundle"])
    records = model["data"]["A"].load().head(6)
    images, _ = cached_images(bundle, records, cache=model["root"] / "cache")
    inputs = images.images.numpy().astype(np.float32) / 255.0
    folder = tmp_path / "export"
    target = folder / f"model.{fmt}"
    export_model(bundle, fmt, target, check_images=inputs)
    description = export_model(bundle, fmt, target, check_images=inputs)  # a re-export replaces, leaves nothing
    assert sorted(p.name for p in folder.iterdir()) == [f"model.{fmt}", f"model.{fmt}.json"]
    written = (folder / f"model.{fmt}.json").read_text()
    assert json.loads(written)["format"] == fmt
    assert str(model["bundle"].parent) not in written and json.loads(written)["bundle"] == model["bundle"].name
    assert set(json.loads(written)["bundle_sha256"]) >= {"bundle.json"}  # the threshold's file, hashed
    assert description["max_abs_difference_vs_pytorch"] <= 1e-4 and description["files"] == [f"model.{fmt}"]
    alone = tmp_path / "elsewhere"  # the exported file, copied alone, is a complete model
    alone.mkdir()
    target = Path(shutil.copy2(target, alone / "copy"))
    expected = bundle.predict_probabilities(images.images)
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(target), providers=["CPUExecutionProvider"])
        got = session.run(None, {"image": inputs})[0]
    else:
        import warnings

        import torch

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated upstream, still exported
            got = torch.jit.load(str(target))(torch.from_numpy(inputs)).detach().numpy()
    assert np.abs(got - expected).max() < 1e-4


def test_refused_export_leaves_no_file(model, tmp_path):
    folder = tmp_path / "export"
    with pytest.raises(ExportError, match="differs from PyTorch"):
        export_model(model["bundle"], "onnx", folder / "model.onnx", tolerance=-1.0)
    assert list(folder.iterdir()) == []


def test_export_and_predict_cli(model, tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["export", str(model["bundle"]), "--format", "onnx", "--out",
                                 str(tmp_path / "m.onnx")])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"exported onnx: {tmp_path / 'm.onnx'} (verified: probabilities within ")
    result = runner.invoke(app, ["export", str(model["bundle"]), "--format", "onnx", "--out",
                                 str(tmp_path / "m2.onnx"), "--json"])
    assert json.loads(result.stdout)["max_abs_difference_vs_pytorch"] <= 1e-4
    bad = runner.invoke(app, ["export", str(model["bundle"]), "--format", "tflite"])
    assert bad.exit_code == 2 and "onnx, torchscript" in bad.output
    with pytest.raises(ExportError, match="format"):
        export_model(model["bundle"], "keras", tmp_path / "x")
    empty = tmp_path / "empty"
    empty.mkdir()
    result = runner.invoke(app, ["predict", str(model["bundle"]), str(empty), "--out", str(tmp_path / "p")])
    assert result.exit_code == 1 and "no image files" in result.output
    missing = tmp_path / "new_xrays_typo"
    result = runner.invoke(app, ["predict", str(model["bundle"]), str(missing), "--out", str(tmp_path / "q")])
    assert result.exit_code == 2 and str(missing) in result.output and not (tmp_path / "q").exists()
    with pytest.raises(PredictionError, match="new_xrays_typo"):
        predict_files(model["bundle"], [missing], tmp_path / "q")
    run_folder = Path(model["bundle"]).parent  # a run folder is a model argument too
    a_file = model["data"]["A"].load()["path"].iloc[0]
    result = runner.invoke(app, ["predict", str(run_folder), a_file, "--out", str(tmp_path / "r"), "--no-evidence"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("scored 1 image(s): ") and "decision threshold " in result.stdout
    assert f"predictions: {tmp_path / 'r' / 'predictions.csv'}" in result.stdout
    result = runner.invoke(app, ["predict", str(run_folder), a_file, "--out", str(tmp_path / "r"), "--no-evidence",
                                 "--json"])
    assert json.loads(result.stdout)["scored"] == 1


@pytest.mark.realdata
@pytest.mark.slow
def test_synthetic_trained_model_flags_real_radiographs(model, tmp_path):
    """The shift `benchmarks/ood_shift.py` measures, in small: the reference of a model trained on synthetic
    images only (the module's tiny AB model; reference fitted on 200 synthetic images as training does) flags
    real radiographs through `predict`, and few held-out synthetic images."""
    import torch

    from unveil.inference.predict import Predictor
    from unveil.synth.config import load_config
    from unveil.synth.generate import dataset_roots, generate
    from unveil.training.loop import encoder_features

    from conftest import shared

    real = [*sorted(shared("covid-chestxray/images").iterdir())[:12],
            *sorted((shared("chest_xray") / "train" / "NORMAL").glob("*.jpeg"))[:12],
            *sorted(shared("covid-qu-ex").rglob("images/*.png"))[::25],
            *sorted(shared("figure1/images").iterdir())[:12]]
    generate(replace(load_config("paper"), image_size=128), tmp_path / "bench", seed=1, scale=0.45)
    roots = dataset_roots(tmp_path / "bench")
    records = pd.concat([DataSpec(*roots[role]).load() for role in ("A", "B")]).sample(frac=1.0, random_state=0)
    bundle = tmp_path / "model"
    shutil.copytree(model["bundle"], bundle)
    predictor = Predictor(bundle)
    paths = [Path(p) for p in records["path"]]
    images = torch.cat([predictor.prepare(paths[i:i + 64])[1] for i in range(0, 320, 64)])[:320]
    features = encoder_features(predictor.bundle.model, images, *predictor.bundle.normalization)
    fit_ood_reference(features[:200], records["source"].to_numpy()[:200], features[200:260], images[:200],
                      images[200:260]).save(bundle)
    summary = predict_files(bundle, real, tmp_path / "real", evidence=False)
    assert summary.scored == len(real) >= 40
    assert summary.ood_flagged / summary.scored >= 0.85
    summary = predict_files(bundle, paths[260:320], tmp_path / "held_out", evidence=False)
    assert summary.ood_flagged / summary.scored <= 0.2


def test_outdated_reference_still_predicts_and_says_so(model, tmp_path):
    bundle = tmp_path / "model"
    shutil.copytree(model["bundle"], bundle)
    (bundle / "ood.json").write_text(json.dumps({"threshold": 3.0, "percentile": 99.0, "sources": ["A"]}))
    a_file = model["data"]["A"].load()["path"].iloc[0]
    predict_files(bundle, [a_file], tmp_path / "out", evidence=False)
    table = pd.read_csv(tmp_path / "out" / "predictions.csv", keep_default_na=False)
    assert table.loc[0, "status"] != "unreadable" and str(table.loc[0, "ood_flag"]) == "False"
    assert "reference version 1" in table.loc[0, "warnings"]


def test_predict_lung_convention_other_than_training_is_noted(model, tmp_path):
    files = [str(p) for p in model["data"]["A"].load().head(2)["path"]]
    out = tmp_path / "full"
    result = CliRunner().invoke(app, ["predict", str(model["bundle"]), *files, "--out", str(out), "--no-evidence",
                                      "--lung-convention", "full"])
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out / "predictions.csv")
    assert table["warnings"].str.contains("lungs segmented in the full convention").all()
    result = CliRunner().invoke(app, ["predict", str(model["bundle"]), *files, "--out", str(tmp_path / "bad"),
                                      "--lung-convention", "anatomic"])
    assert result.exit_code == 2 and "anatomic" in result.output
