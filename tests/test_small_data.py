"""Numbers on small data: one scoring precision, precise batch-norm statistics, collapsed models (issue 23)."""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

from unveil.data.records import concat_records
from unveil.evaluation.evaluate import evaluate_models, score_records
from unveil.inference import predict_files
from unveil.models import build_model
from unveil.preprocess.cache import PreprocessSettings
from unveil.training import DataSpec, TrainConfig, fit, fit_normalization, load_bundle, train
from unveil.training.collapse import check_collapse
from unveil.training.loop import bn_statistics_settled, running_bn_steps_needed

from conftest import shared, toy_set

TINY = TrainConfig(architecture="conv8", width=0.25, image_size=32, epochs=2, batch_size=16, eval_batch_size=16)


def _fit(run_dir, config: TrainConfig):
    torch.manual_seed(config.seed)
    model = build_model(config.architecture, num_classes=2, width=config.width)
    train_set, val_set = toy_set(40, 0), toy_set(16, 1)
    normalization = fit_normalization(train_set.images)
    return fit(model, train_set, val_set, config, run_dir, normalization=normalization), model, train_set, \
        normalization


@pytest.fixture(scope="module")
def benchmark(tmp_path_factory):
    from unveil.synth.config import load_config
    from unveil.synth.generate import dataset_roots, generate

    out = tmp_path_factory.mktemp("bench")
    generate(replace(load_config("paper"), image_size=48), out, seed=0, scale=0.12)
    return {name: DataSpec(source, root) for name, (source, root) in dataset_roots(out).items()}


# --- 1. one precision ----------------------------------------------------------------------------

def test_validation_scores_are_fp32_and_evaluate_reproduces_the_threshold_decisions(benchmark, tmp_path,
                                                                                    monkeypatch):
    # bf16 autocast for the training steps, as on a CPU with AMX or on CUDA (forced on where bf16 is emulated)
    monkeypatch.setattr("unveil.training.loop.bf16_supported", lambda device: True)
    config = replace(TINY, amp=True, epochs=2)
    data = {"A": benchmark["A"], "B": benchmark["B"]}
    run = train("AB", data, tmp_path / "ab", config=config, preprocess=PreprocessSettings(mask="none"),
                cache=tmp_path / "cache")
    stored = pd.read_csv(tmp_path / "ab" / "val_predictions.csv")
    records = concat_records(spec.load() for spec in data.values())
    val = records.set_index("record_id").loc[stored["record_id"]].reset_index()
    bundle = load_bundle(run.bundle)
    rescored, _ = score_records(bundle, val, cache=tmp_path / "cache")  # what `unveil evaluate` computes
    assert list(rescored["record_id"]) == list(stored["record_id"])
    np.testing.assert_allclose(rescored["probability"], stored["p_covid+"], rtol=0, atol=1e-6)
    threshold = bundle.threshold
    assert ((rescored["probability"] >= threshold) == (stored["p_covid+"] >= threshold)).all()
    assert bundle.description["scoring_precision"] == "float32"


# --- 2. batch-norm statistics --------------------------------------------------------------------

def _bn_inputs(model: torch.nn.Module, images: torch.Tensor, normalization) -> torch.Tensor:
    """What the first batch-norm layer sees for ``images`` as one training-mode batch."""
    from unveil.training.data import to_model_input

    seen = {}
    layer = model.encoder.conv1[1]
    handle = layer.register_forward_hook(lambda module, args, output: seen.setdefault("x", args[0].detach()))
    model.train()
    with torch.no_grad():
        model(to_model_input(images, *normalization))
    handle.remove()
    model.eval()
    return seen["x"]


def test_precise_bn_statistics_are_the_training_batch_statistics(tmp_path):
    config = replace(TINY, epochs=1, batch_size=64)  # one step; the recalibration batch is the whole set
    result, model, train_set, normalization = _fit(tmp_path / "run", config)
    inputs = _bn_inputs(model, train_set.images, normalization)
    layer = model.encoder.conv1[1]
    torch.testing.assert_close(layer.running_mean, inputs.mean(dim=(0, 2, 3)), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(layer.running_var, inputs.var(dim=(0, 2, 3), unbiased=True), rtol=1e-3, atol=1e-6)
    assert result.history[0]["bn_statistics_images"] == 40


def test_running_bn_statistics_of_too_few_steps_are_never_selected(tmp_path, caplog):
    assert running_bn_steps_needed(build_model("conv8", num_classes=2, width=0.25)) == 29  # 0.9^29 < 0.05
    assert not bn_statistics_settled({"bn_statistics_images": 0, "optimizer_steps": 28}, 29)
    assert bn_statistics_settled({"bn_statistics_images": 0, "optimizer_steps": 29}, 29)
    assert bn_statistics_settled({"bn_statistics_images": 40, "optimizer_steps": 1}, 29)

    # 20 steps an epoch: epoch 1 has seen 20 < 29 steps, epoch 2 has seen 40
    config = replace(TINY, epochs=3, batch_size=2, bn_recalibration_images=0, selection="loss")
    result, *_ = _fit(tmp_path / "running", config)
    assert [h["selectable"] for h in result.history] == [False, True, True]
    assert result.best_epoch >= 2 and result.history[0]["best_epoch"] == 1  # kept only provisionally
    caplog.set_level(logging.WARNING, logger="unveil.training.loop")
    short = replace(TINY, epochs=2, batch_size=64, bn_recalibration_images=0)  # 2 steps in all: none settles
    result, *_ = _fit(tmp_path / "short", short)
    assert result.best_epoch in (1, 2)
    assert any("no epoch's batch-norm statistics settled" in r.getMessage() for r in caplog.records)


# --- 3. collapsed models -------------------------------------------------------------------------

def test_collapse_check():
    flat = np.stack([1 - np.full(18, 0.4941), np.linspace(0.494096, 0.494180, 18)], 1)
    check = check_collapse(flat, positive_index=1)
    assert check.collapsed and check.spread < 1e-4 and "model collapsed" in check.reason and "18 images" in check.reason
    spread = np.stack([np.linspace(0.2, 0.7, 18), np.linspace(0.8, 0.3, 18)], 1)
    assert not check_collapse(spread, positive_index=1).collapsed and check_collapse(spread).reason == ""
    assert check_collapse(flat, tolerance=0.0).collapsed is False
    assert check_collapse(np.zeros((0, 2))).collapsed  # nothing to measure: never trusted


def test_a_collapsed_model_is_recorded_and_predict_gives_no_decision(benchmark, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="unveil.training.run")
    config = replace(TINY, epochs=1, collapse_tolerance=0.99)  # every spread is below: collapsed on purpose
    run = train("AB", {"A": benchmark["A"], "B": benchmark["B"]}, tmp_path / "ab", config=config,
                preprocess=PreprocessSettings(mask="none"), cache=tmp_path / "cache")
    assert run.collapse is not None and run.collapse.collapsed
    assert any("model collapsed" in r.getMessage() for r in caplog.records)
    bundle = load_bundle(run.bundle)
    assert bundle.description["collapse"]["collapsed"] is True and "model collapsed" in bundle.collapse_reason

    files = [str(p) for p in benchmark["A"].load().head(3)["path"]]
    predict_files(run.bundle, files, tmp_path / "out", evidence=False)
    table = pd.read_csv(tmp_path / "out" / "predictions.csv", keep_default_na=False)
    assert (table["status"] == "rejected").all() and (table["decision"] == "").all()
    assert table["warnings"].str.contains("model collapsed").all()
    assert table["probability"].astype(float).between(0, 1).all()  # the score is still recorded

    healthy = tmp_path / "healthy"
    shutil.copytree(run.bundle, healthy)
    description = json.loads((healthy / "bundle.json").read_text())
    description["collapse"]["collapsed"] = False
    (healthy / "bundle.json").write_text(json.dumps(description))
    assert load_bundle(healthy).collapse_reason == ""

    rows = evaluate_models([run.bundle], ["AB"], resamples=50).rows
    assert rows["model_collapsed"].str.contains("model collapsed").all()


# --- the real radiographs of the issue ------------------------------------------------------------

@pytest.mark.realdata
@pytest.mark.slow
def test_a_small_real_training_set_gives_spread_test_probabilities(tmp_path):
    """54 training images of COVID-ChestXRay (2 steps an epoch): before precise BN every test image scored
    0.4968 +- 3e-5 (seed 0, 128 px); the test probabilities must now spread (issue 23: std > 0.01)."""
    data = {"D": DataSpec("covid-chestxray", str(shared("covid-chestxray")))}
    config = TrainConfig(architecture="conv8", image_size=64, epochs=6, seed=0)
    run = train("D", data, tmp_path / "d", config=config, cache=tmp_path / "cache")
    rows = evaluate_models([run.bundle], ["D"], resamples=50)
    probabilities = rows.predictions["probability"]
    assert len(probabilities) >= 20 and probabilities.std() > 0.01
    assert not run.collapse.collapsed
