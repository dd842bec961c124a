"""Training: batch augmentation, normalization, the loop (exact resume), bundles, pretrain -> train, DDP."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from unveil.cli import app
from unveil.models import build_model
from unveil.preprocess.cache import PreprocessSettings
from unveil.thresholds import ThresholdRule, choose_threshold, fixed_threshold
from unveil.training import (
    BundleError,
    BundleInputError,
    CheckpointError,
    ConfigError,
    DataSpec,
    TrainConfig,
    TrainingDataError,
    fit,
    fit_normalization,
    load_bundle,
    load_image_set,
    pretrain,
    save_bundle,
    train,
)
from unveil.training.data import apply_affine, random_rigid_affine
from unveil.training.loop import CHECKPOINT, METRICS_LOG, classification_scores, epoch_order

from conftest import toy_set

TINY = TrainConfig(architecture="conv8", width=0.25, image_size=32, epochs=3, batch_size=8, eval_batch_size=16)


# --- augmentation and normalization ------------------------------------------------------------

def test_rigid_affine_identity_flip_and_fill():
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(4, 1, 16, 16)
    identity = random_rigid_affine(4, generator, rotation_degrees=0, translate=0, hflip=False)
    assert torch.allclose(apply_affine(images, identity, fill=0.0), images, atol=1e-5)
    flipped = torch.tensor([[[-1.0, 0, 0], [0, 1, 0]]]).repeat(4, 1, 1)
    assert torch.allclose(apply_affine(images, flipped, fill=0.0), images.flip(-1), atol=1e-5)
    shifted_out = torch.tensor([[[1.0, 0, 5.0], [0, 1, 0]]]).repeat(4, 1, 1)  # sample far outside the image
    assert torch.allclose(apply_affine(images, shifted_out, fill=-2.5), torch.full_like(images, -2.5))


def test_rigid_affine_draws_are_bounded_and_seeded():
    theta = random_rigid_affine(500, torch.Generator().manual_seed(1), rotation_degrees=5, translate=0.05, hflip=False)
    again = random_rigid_affine(500, torch.Generator().manual_seed(1), rotation_degrees=5, translate=0.05, hflip=False)
    assert torch.equal(theta, again)
    angles = torch.rad2deg(torch.atan2(theta[:, 1, 0], theta[:, 0, 0]))
    assert angles.abs().max() <= 5.0 + 1e-4 and angles.abs().max() > 4.0
    assert theta[:, :, 2].abs().max() <= 0.1 + 1e-6  # 5 % of the size = 0.1 in [-1, 1] coordinates
    assert (theta[:, 0, 0] > 0).all()  # no flip unless asked


def test_fit_normalization_matches_numpy():
    images = torch.randint(0, 256, (7, 1, 9, 9), dtype=torch.uint8)
    mean, std = fit_normalization(images)
    values = images.numpy().astype(np.float64) / 255
    assert mean == pytest.approx(values.mean(), abs=1e-9)
    assert std == pytest.approx(values.std(), abs=1e-9)


def test_balanced_sampler_evens_out_classes():
    labels = torch.tensor([0] * 90 + [1] * 10)
    order = epoch_order(labels, "balanced", torch.Generator().manual_seed(0))
    share = labels[order].float().mean().item()
    assert 0.4 < share < 0.6
    assert sorted(epoch_order(labels, "shuffle", torch.Generator().manual_seed(0)).tolist()) == list(range(100))


def test_load_image_set_skips_failures_and_names_them(tmp_path):
    from PIL import Image

    paths = []
    for index in range(3):
        path = tmp_path / f"{index}.png"
        Image.fromarray(np.full((8, 8), index * 100, dtype=np.uint16)).save(path)
        paths.append(str(path))
    records = pd.DataFrame({"record_id": ["a", "b", "c", "d"]})
    manifest = pd.DataFrame({"record_id": ["a", "b", "c"], "status": ["ok", "failed", "cached"],
                             "error": [None, "b.png: truncated file", None], "cache_path": [paths[0], None, paths[2]]})
    loaded = load_image_set(records, manifest, [0, 1, 0, 1], ("x", "y"), size=4)
    assert loaded.images.shape == (2, 1, 4, 4) and loaded.images.dtype == torch.uint8
    assert list(loaded.records["record_id"]) == ["a", "c"]
    assert loaded.skipped == ["b.png: truncated file", "d: not in the pre-processing manifest"]
    with pytest.raises(TrainingDataError, match="truncated"):
        load_image_set(records.iloc[1:2], manifest, [1], ("x", "y"))


def test_config_rejects_bad_options():
    with pytest.raises(ConfigError, match="loss"):
        TrainConfig(loss="hinge")
    with pytest.raises(ConfigError, match="rigid"):
        TrainConfig(rotation_degrees=90)
    with pytest.raises(ConfigError, match="unknown training option"):
        TrainConfig.from_dict({"epocs": 3})


def test_config_threshold_rule():
    assert TrainConfig().threshold_rule == "youden"  # the documented a-priori default
    assert TrainConfig.from_dict({"threshold_rule": "FIXED", "threshold_value": 0.5}).threshold_rule == "fixed"
    assert TrainConfig(threshold_rule=ThresholdRule.SENSITIVITY).threshold_rule == "sensitivity"
    with pytest.raises(ConfigError, match="unknown threshold rule 'median'"):
        TrainConfig(threshold_rule="median")
    with pytest.raises(ConfigError, match="choose one of fixed, youden, sensitivity"):
        TrainConfig(threshold_rule="bundle")  # only evaluation/predict can defer to a bundle
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        TrainConfig(threshold_rule="fixed", threshold_value=2.0)
    with pytest.raises(ConfigError, match="target_sensitivity"):
        TrainConfig(target_sensitivity=0.0)
    # The threshold is chosen after training: it never makes a checkpoint or a recipe different.
    assert TINY.same_training(replace(TINY, threshold_rule="fixed").to_dict())
    assert not TINY.same_training(replace(TINY, lr=0.5).to_dict())
    old = {k: v for k, v in TINY.to_dict().items() if k not in ("threshold_rule", "threshold_value",
                                                                "target_sensitivity")}
    assert TINY.same_training(old)  # a checkpoint written before the options existed
    assert TINY.recipe_key() == replace(TINY, seed=3, device="cpu").recipe_key() != replace(TINY, lr=0.5).recipe_key()


def test_classification_scores_against_sklearn():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 50)
    positive = np.clip(labels * 0.3 + rng.random(50) * 0.7, 0, 1)
    scores = classification_scores(np.stack([1 - positive, positive], 1), labels)
    assert scores["auc"] == pytest.approx(roc_auc_score(labels, positive))
    three = rng.dirichlet([1, 1, 1], 60)
    multi = rng.integers(0, 3, 60)
    assert classification_scores(three, multi)["auc"] == pytest.approx(
        roc_auc_score(multi, three, multi_class="ovr", average="macro"))
    assert np.isnan(classification_scores(three[:5], np.zeros(5, dtype=int))["auc"])


def test_validation_balanced_accuracy_uses_the_configured_threshold():
    # Focal loss keeps probabilities near 0.5: ranked perfectly, but all below 0.5.
    labels = np.array([0, 0, 0, 1, 1, 1])
    positive = np.array([0.40, 0.42, 0.44, 0.46, 0.47, 0.49])
    probabilities = np.stack([1 - positive, positive], 1)
    assert classification_scores(probabilities, labels)["balanced_accuracy"] == 0.5  # argmax = the fixed 0.5
    youden = classification_scores(probabilities, labels, TINY)
    assert youden["balanced_accuracy"] == 1.0 and youden["threshold"] == 0.46
    assert youden["balanced_accuracy_at_0.5"] == 0.5 and youden["auc"] == 1.0
    fixed = classification_scores(probabilities, labels, replace(TINY, threshold_rule="fixed"))
    assert fixed["balanced_accuracy"] == 0.5 and fixed["threshold"] == 0.5
    one_class = classification_scores(probabilities[:3], labels[:3], TINY)  # Youden impossible: the fixed 0.5
    assert one_class["threshold"] == 0.5


# --- the loop ----------------------------------------------------------------------------------

def _fit(run_dir: Path, config: TrainConfig = TINY, **kwargs):
    torch.manual_seed(config.seed)
    model = build_model(config.architecture, num_classes=2, width=config.width)
    train_set, val_set = toy_set(40, 0), toy_set(16, 1)
    return fit(model, train_set, val_set, config, run_dir, normalization=fit_normalization(train_set.images),
               **kwargs), model


class Interrupted(Exception):
    pass


def _interrupt_at(epoch: int, step: int):
    def hook(current_epoch: int, current_step: int) -> None:
        if (current_epoch, current_step) == (epoch, step):
            raise Interrupted
    return hook


@pytest.mark.parametrize("where", [(0, 2), (1, 0), (2, 4)])
def test_resume_after_interruption_gives_the_same_weights(tmp_path, where):
    reference, _ = _fit(tmp_path / "uninterrupted")
    with pytest.raises(Interrupted):
        _fit(tmp_path / "killed", on_step=_interrupt_at(*where))
    (tmp_path / "killed" / (CHECKPOINT + ".tmp")).write_bytes(b"half-written")  # a kill during a write
    resumed, _ = _fit(tmp_path / "killed")
    assert resumed.resumed_from_epoch == where[0]
    assert resumed.best_epoch == reference.best_epoch
    for name, tensor in reference.best_state.items():
        assert torch.equal(tensor, resumed.best_state[name]), name
    assert [h["val_loss"] for h in resumed.history] == [h["val_loss"] for h in reference.history]
    lines = (tmp_path / "killed" / METRICS_LOG).read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]


def test_the_loop_learns_and_selects_by_validation_auc(tmp_path):
    result, model = _fit(tmp_path / "run", replace(TINY, epochs=4))
    aucs = [h["val_auc"] for h in result.history]
    assert max(aucs) > 0.8
    best = max(result.history, key=lambda h: (h["val_auc"], -h["val_loss"]))  # ties: lower validation loss
    assert result.best_epoch == best["epoch"]
    assert result.val_probabilities.shape == (16, 2)


def test_checkpoint_from_another_configuration_or_corrupt_is_refused(tmp_path):
    _fit(tmp_path / "run", replace(TINY, epochs=1))
    with pytest.raises(CheckpointError, match="different configuration"):
        _fit(tmp_path / "run", replace(TINY, epochs=1, lr=0.5))
    (tmp_path / "run" / CHECKPOINT).write_bytes(b"\x00not a checkpoint")
    with pytest.raises(CheckpointError, match="checkpoint.pt"):
        _fit(tmp_path / "run", replace(TINY, epochs=1))
    result, _ = _fit(tmp_path / "run", replace(TINY, epochs=1), resume=False)
    assert result.resumed_from_epoch == 0


def test_a_finished_run_extends_to_more_epochs_as_if_trained_that_long(tmp_path):
    reference, _ = _fit(tmp_path / "four", replace(TINY, epochs=4))
    _fit(tmp_path / "run", replace(TINY, epochs=2))
    extended, _ = _fit(tmp_path / "run", replace(TINY, epochs=4))  # the plateau schedule continues
    assert extended.resumed_from_epoch == 2 and [h["epoch"] for h in extended.history] == [1, 2, 3, 4]
    assert extended.best_epoch == reference.best_epoch  # chosen over all four epochs
    for name, tensor in reference.best_state.items():
        assert torch.equal(tensor, extended.best_state[name]), name
    lines = (tmp_path / "run" / METRICS_LOG).read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3, 4]
    with pytest.raises(CheckpointError, match=r"4 epoch\(s\) already trained, more than the 3 asked for"):
        _fit(tmp_path / "run", replace(TINY, epochs=3))
    again, _ = _fit(tmp_path / "run", replace(TINY, epochs=4))  # same epochs: nothing to train
    assert again.resumed_from_epoch == 4 and again.best_epoch == reference.best_epoch
    _fit(tmp_path / "cosine", replace(TINY, epochs=1, scheduler="cosine"))
    with pytest.raises(CheckpointError, match="cosine schedule spans the 1 planned epoch"):
        _fit(tmp_path / "cosine", replace(TINY, epochs=2, scheduler="cosine"))
    with pytest.raises(CheckpointError, match=r"different configuration \(lr 0.01 -> 0.5\)"):
        _fit(tmp_path / "run", replace(TINY, epochs=5, lr=0.5))


def test_every_epoch_logs_one_line_with_validation_figures(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="unveil.progress")
    result, _ = _fit(tmp_path / "run", replace(TINY, epochs=2))
    lines = [r.getMessage() for r in caplog.records if r.name == "unveil.progress"]
    assert len(lines) == 2 and lines[0].startswith("run epoch 1/2: train loss ")
    assert f"val AUC {result.history[1]['val_auc']:.3f}" in lines[1] and "val BA " in lines[1]
    caplog.clear()
    _fit(tmp_path / "run", replace(TINY, epochs=3))
    lines = [r.getMessage() for r in caplog.records if r.name == "unveil.progress"]
    assert lines[0] == "run: resuming after epoch 2 of 3 (extended from 2 to 3 epochs)"
    assert lines[1].startswith("run epoch 3/3: ")


# --- bundles -----------------------------------------------------------------------------------

def test_bundle_round_trip_and_errors(tmp_path):
    torch.manual_seed(0)
    model = build_model("conv8", num_classes=2, width=0.25)
    images = toy_set(6, 3).images
    save_bundle(tmp_path / "b", model, width=0.25, classes=["covid-", "covid+"], positive_class="covid+",
                image_size=32, preprocess=PreprocessSettings(size=32, mask="none"), normalization=(0.4, 0.2),
                provenance={"seed": 0})
    bundle = load_bundle(tmp_path / "b")
    assert bundle.normalization == (0.4, 0.2) and bundle.positive_index == 1 and bundle.threshold == 0.5
    assert bundle.description["threshold"]["rule"] == "fixed"
    assert bundle.threshold_choice == fixed_threshold(0.5)
    assert bundle.preprocess_settings.mask == "none"
    from unveil.training.loop import predict_probabilities

    expected = predict_probabilities(model, images, 0.4, 0.2, device=torch.device("cpu"))
    assert np.allclose(bundle.predict_probabilities(images), expected, atol=1e-6)

    description = json.loads((tmp_path / "b" / "bundle.json").read_text())
    (tmp_path / "b" / "bundle.json").write_text(json.dumps({**description, "architecture": "resnet18", "width": 1}))
    with pytest.raises(BundleError, match="do not match"):
        load_bundle(tmp_path / "b")
    (tmp_path / "b" / "bundle.json").write_text(json.dumps({**description, "format": "something-else"}))
    with pytest.raises(BundleError, match="not an unveil classifier"):
        load_bundle(tmp_path / "b")
    (tmp_path / "b" / "bundle.json").write_text(json.dumps(description))
    (tmp_path / "b" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(BundleError, match="model.safetensors"):
        load_bundle(tmp_path / "b")
    with pytest.raises(BundleError, match="not a model bundle"):
        load_bundle(tmp_path)


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_bundle_takes_uint8_or_unit_floats_at_its_own_size_only(tmp_path, kind):
    torch.manual_seed(0)
    save_bundle(tmp_path / "b", build_model("conv8", num_classes=2, width=0.25), width=0.25,
                classes=["covid-", "covid+"], positive_class="covid+", image_size=32,
                preprocess=PreprocessSettings(size=32, mask="none"), normalization=(0.4, 0.2))
    bundle = load_bundle(tmp_path / "b")
    images = toy_set(4, 5).images  # uint8 N x 1 x 32 x 32
    expected = bundle.predict_probabilities(images)
    as_kind = (lambda x: x.numpy()) if kind == "numpy" else (lambda x: x)
    assert np.allclose(bundle.predict_probabilities(as_kind(images)), expected, atol=1e-6)
    assert np.allclose(bundle.predict_probabilities(as_kind(images[:, 0])), expected, atol=1e-6)  # N x S x S
    assert np.allclose(bundle.predict_probabilities(as_kind(images[0, 0])), expected[:1], atol=1e-6)  # S x S
    unit = images.float() / 255.0  # the transforms' [0, 1] floats score like the cache's uint8
    assert np.allclose(bundle.predict_probabilities(as_kind(unit)), expected, atol=1e-5)
    with pytest.raises(BundleInputError, match="64x64 pixels; this model takes 32x32"):
        bundle.predict_probabilities(as_kind(torch.rand(2, 1, 64, 64)))
    with pytest.raises(BundleInputError, match=r"in \[0, 1\]"):
        bundle.predict_probabilities(as_kind(unit * 255.0))
    with pytest.raises(BundleInputError, match="dtype"):
        bundle.predict_probabilities(as_kind(images.to(torch.int32)))
    with pytest.raises(BundleInputError, match="shape"):
        bundle.predict_probabilities(as_kind(images.expand(-1, 3, -1, -1).contiguous()))


# --- pretrain -> train on the synthetic benchmark ----------------------------------------------

@pytest.fixture(scope="module")
def benchmark(tmp_path_factory):
    from unveil.synth.config import load_config
    from unveil.synth.generate import dataset_roots, generate

    out = tmp_path_factory.mktemp("bench")
    generate(replace(load_config("paper"), image_size=48), out, seed=0, scale=0.12)
    return {name: DataSpec(source, root) for name, (source, root) in dataset_roots(out).items()}


RUN = replace(TINY, epochs=2, batch_size=16)
NO_MASK = PreprocessSettings(mask="none")


def test_pretrain_then_fine_tune(benchmark, tmp_path):
    cache = tmp_path / "cache"
    pre = pretrain([benchmark["B"]], tmp_path / "pre", config=RUN, preprocess=NO_MASK, cache=cache)
    assert set(pre.counts["train"]) == {"normal", "bacterial", "viral"}
    assert load_bundle(pre.bundle).classes == ["normal", "bacterial", "viral"]

    # A learning rate of ~0 keeps the convolutions where the encoder left them: proof it was loaded.
    frozen_in_practice = replace(RUN, lr=1e-12, epochs=1)
    run = train("AB", {"A": benchmark["A"], "B": benchmark["B"]}, tmp_path / "ab", config=frozen_in_practice,
                preprocess=NO_MASK, encoder=pre.bundle, cache=cache)
    tuned, pretrained = load_bundle(run.bundle), load_bundle(pre.bundle)
    conv = "encoder.conv3.0.weight"
    assert torch.allclose(tuned.model.state_dict()[conv], pretrained.model.state_dict()[conv], atol=1e-6)
    assert tuned.classes == ["covid-", "covid+"] and tuned.description["positive_class"] == "covid+"

    provenance = tuned.description["provenance"]
    assert provenance["encoder_init"]["bundle"] == str(pre.bundle)
    assert provenance["task"] == "train:AB"
    splits = tmp_path / "ab" / "splits.csv"
    assert provenance["split_sha256"] == hashlib.sha256(splits.read_bytes()).hexdigest()
    assert set(pd.read_csv(splits)["split"]) == {"train", "val", "test"}
    meta = json.loads((tmp_path / "ab" / "run.meta.json").read_text())
    assert meta["config"]["train"]["lr"] == 1e-12 and "torch" in meta["versions"]

    # Normalization statistics come from the training split only.
    from unveil.preprocess.cache import resolve_settings

    settings = resolve_settings(replace(NO_MASK, size=RUN.image_size))
    manifest = pd.read_csv(cache / f"manifest-{settings.key()}.csv")
    table = pd.read_csv(splits, dtype=str)
    train_ids = table.loc[table["split"] == "train", "record_id"]
    train_images = load_image_set(pd.DataFrame({"record_id": train_ids}), manifest, np.zeros(len(train_ids)),
                                  ("a",)).images
    assert tuned.normalization[0] == pytest.approx(fit_normalization(train_images)[0], abs=1e-9)
    val = pd.read_csv(tmp_path / "ab" / "val_predictions.csv")
    assert list(val.columns[-2:]) == ["p_covid-", "p_covid+"] and len(val) == sum(run.counts["val"].values())
    assert pretrained.description["threshold"]["description"].startswith("unused: pre-training")


@pytest.mark.parametrize("rule", ["youden", "fixed", "sensitivity"])
def test_the_bundle_threshold_is_chosen_on_validation_by_the_configured_rule(benchmark, tmp_path, rule):
    config = replace(RUN, epochs=1, threshold_rule=rule, threshold_value=0.3, target_sensitivity=0.8)
    run = train("AB", {"A": benchmark["A"], "B": benchmark["B"]}, tmp_path / "ab", config=config,
                preprocess=NO_MASK)
    recorded = json.loads((run.bundle / "bundle.json").read_text())["threshold"]
    val = pd.read_csv(tmp_path / "ab" / "val_predictions.csv")
    expected = choose_threshold(val["label"], val["p_covid+"], rule, value=0.3, target_sensitivity=0.8)
    assert recorded == expected.as_dict() and run.threshold == expected
    assert recorded["rule"] == rule and recorded["chosen_on"] == ("fixed" if rule == "fixed" else "validation")
    assert load_bundle(run.bundle).threshold_choice == expected
    epoch = json.loads((tmp_path / "ab" / METRICS_LOG).read_text().splitlines()[-1])
    assert epoch["val_threshold"] == pytest.approx(expected.value) and "val_balanced_accuracy_at_0.5" in epoch


def test_cli_train_takes_the_threshold_rule(benchmark, tmp_path):
    runner = CliRunner()
    a, b = (f"{role}={benchmark[role].source}:{benchmark[role].root}" for role in ("A", "B"))
    common = ["train", "AB", "--data", a, "--data", b, "--mask", "none", "--arch", "conv8", "--width", "0.25",
              "--image-size", "32", "--epochs", "1", "--batch-size", "16", "--no-progress"]
    result = runner.invoke(app, [*common, "--out", str(tmp_path / "y"), "--set", "threshold_rule=youden", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["threshold"]["rule"] == "youden"
    result = runner.invoke(app, [*common, "--out", str(tmp_path / "y2"), "--set", "threshold_rule=fixed"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()  # a readable summary without --json
    assert lines[0].startswith("trained in ") and " train " in lines[0] and " val " in lines[0]
    assert lines[1].startswith("best epoch 1: validation AUC ") and "spread of the probabilities" in lines[1]
    assert lines[2] == "decision threshold 0.5000 (fixed 0.5)" and lines[-1] == f"bundle: {tmp_path / 'y2' / 'model'}"
    result = runner.invoke(app, [*common, "--out", str(tmp_path / "z"), "--set", "threshold_rule=otsu"])
    assert result.exit_code == 2 and "unknown threshold rule 'otsu'" in result.output


def test_train_refuses_an_encoder_of_another_architecture(benchmark, tmp_path):
    pre = pretrain([benchmark["B"]], tmp_path / "pre", config=replace(RUN, epochs=1), preprocess=NO_MASK)
    with pytest.raises(TrainingDataError, match="encoder of a conv8"):
        train("AB", {"A": benchmark["A"], "B": benchmark["B"]}, tmp_path / "ab",
              config=replace(RUN, architecture="covidnet"), preprocess=NO_MASK, encoder=pre.bundle,
              cache=tmp_path / "pre" / "cache")


def test_cli_train_reports_clear_errors(benchmark, tmp_path):
    runner = CliRunner()
    a = f"A={benchmark['A'].source}:{benchmark['A'].root}"
    result = runner.invoke(app, ["train", "AB", "--data", a, "--out", str(tmp_path / "x"), "--mask", "none"])
    assert result.exit_code == 2 and "needs data for role(s) B" in result.output
    result = runner.invoke(app, ["train", "A", "--data", a, "--out", str(tmp_path / "x"), "--set", "epocs=2"])
    assert result.exit_code == 2 and "unknown training option(s) epocs" in result.output
    result = runner.invoke(app, ["train", "A", "--data", a, "--out", str(tmp_path / "x"), "--arch", "vgg"])
    assert result.exit_code == 2 and "resnet18" in result.output
    result = runner.invoke(app, ["pretrain", "--data", f"hospital-csv:{benchmark['A'].root}", "--out",
                                 str(tmp_path / "y")])
    assert result.exit_code == 2 and "no default classes" in result.output


@pytest.mark.slow
def test_torchrun_two_processes_gloo(benchmark, tmp_path):
    """DDP on CPU: two processes, gloo; both ranks end with identical weights."""
    a, b = benchmark["A"], benchmark["B"]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "unveil.cli", "train", "AB", "--data", f"A={a.source}:{a.root}", "--data",
               f"B={b.source}:{b.root}", "--out", str(tmp_path / "ddp"), "--arch", "conv8", "--width", "0.25",
               "--image-size", "32", "--epochs", "2", "--batch-size", "16", "--mask", "none", "--no-progress", "--json"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count('"bundle"') == 1  # rank 0 reports
    meta = json.loads((tmp_path / "ddp" / "run.meta.json").read_text())
    assert meta["world_size"] == 2 and meta["ranks_in_sync"] is True
    assert load_bundle(tmp_path / "ddp" / "model").description["provenance"]["world_size"] == 2
