"""Training against a shortcut: source-balanced epochs, group DRO, EnD, and `debias: none` unchanged."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from unveil.cli import app
from unveil.models import build_model
from unveil.training import ConfigError, ImageSet, TrainConfig, fit, fit_normalization
from unveil.training.checkpoint import load_checkpoint
from unveil.training.debias import GroupDRO, Mitigation, balanced_order, bias_groups, end_regulariser
from unveil.training.loop import CHECKPOINT, epoch_order

from conftest import toy_set

TINY = TrainConfig(architecture="conv8", width=0.25, image_size=32, epochs=2, batch_size=8, eval_batch_size=16)


def two_source_set(n: int, seed: int) -> ImageSet:
    """The toy set with two sources, the source correlated with the class (a shortcut): 3 of 4 positives from
    "hospital", 3 of 4 negatives from "chestxray"."""
    toy = toy_set(n, seed)
    labels = toy.labels.numpy()
    sources = np.where((labels == 1) == (np.arange(n) % 8 < 6), "hospital", "chestxray")
    return ImageSet(toy.images, toy.labels, toy.records.assign(source=sources), toy.classes)


def _fit(run_dir: Path, config: TrainConfig, **kwargs):
    torch.manual_seed(config.seed)
    model = build_model(config.architecture, num_classes=2, width=config.width)
    train_set, val_set = two_source_set(40, 0), two_source_set(16, 1)
    return fit(model, train_set, val_set, config, run_dir, normalization=fit_normalization(train_set.images),
               **kwargs)


# --- source-balanced epochs --------------------------------------------------------------------

def test_bias_groups_are_class_by_source():
    groups = bias_groups(two_source_set(16, 0))
    assert groups.names == ("neg/chestxray", "neg/hospital", "pos/chestxray", "pos/hospital")
    assert groups.sources == ("chestxray", "hospital")
    assert torch.bincount(groups.group).tolist() == [6, 2, 2, 6]


def test_a_training_set_with_every_class_from_its_own_source_is_confounded_and_said_so(caplog):
    assert not bias_groups(two_source_set(16, 0)).confounded
    toy = toy_set(16, 0)
    sources = np.where(toy.labels.numpy() == 1, "covid-qu-ex", "chestxray")
    confounded = ImageSet(toy.images, toy.labels, toy.records.assign(source=sources), toy.classes)
    assert bias_groups(confounded).confounded
    one_source = ImageSet(toy.images, toy.labels, toy.records.assign(source="x"), toy.classes)
    assert not bias_groups(one_source).confounded  # one source: nothing to confound
    model = build_model("conv8", num_classes=2, width=0.25)
    with caplog.at_level("WARNING", logger="unveil.training.debias"):
        arm = Mitigation(TrainConfig(**{**TINY.to_dict(), "debias": "balanced"}), confounded, model,
                         lambda logits, labels: logits.sum(), torch.device("cpu"))
    assert "every class of the training set comes from one source" in caplog.text
    assert "source-balanced sampling is class-balanced sampling" in caplog.text
    assert arm.describe()["confounded"] is True


def test_balanced_order_draws_every_group_equally_and_walks_each_group():
    group = torch.tensor([0] * 50 + [1] * 5 + [2] * 30 + [3] * 15)
    order = balanced_order(group, torch.Generator().manual_seed(3))
    assert len(order) == 100
    assert torch.bincount(group[order]).tolist() == [25, 25, 25, 25]  # exact, whatever the group sizes
    small = order[group[order] == 1]
    assert torch.bincount(small, minlength=55)[50:55].tolist() == [5] * 5  # 5 members, 25 draws: 5 walks of all
    large = order[group[order] == 0]
    assert len(set(large.tolist())) == 25  # fewer draws than members: no image twice
    assert torch.equal(order, balanced_order(group, torch.Generator().manual_seed(3)))  # seeded
    assert not torch.equal(order, balanced_order(group, torch.Generator().manual_seed(4)))
    uneven = balanced_order(group[:98], torch.Generator().manual_seed(0))  # 98 = 4 x 24 + 2
    assert sorted(torch.bincount(group[:98][uneven]).tolist()) == [24, 24, 25, 25]


# --- group DRO ---------------------------------------------------------------------------------

def test_group_dro_upweights_the_worst_group():
    dro = GroupDRO(3, eta=0.1)
    group = torch.tensor([0, 0, 1, 1, 2, 2])
    per_sample = torch.tensor([0.2, 0.4, 0.1, 0.3, 1.0, 2.0])  # group means 0.3, 0.2, 1.5
    loss = dro.loss(per_sample, group)
    expected = np.exp(0.1 * np.array([0.3, 0.2, 1.5])) / np.exp(0.1 * np.array([0.3, 0.2, 1.5])).sum()
    assert dro.weights.numpy() == pytest.approx(expected, abs=1e-7)  # float32 losses
    assert float(loss) == pytest.approx(float(expected @ np.array([0.3, 0.2, 1.5])), abs=1e-6)
    for _ in range(50):
        dro.loss(per_sample, group)
    assert dro.weights.argmax() == 2 and dro.weights[2] > 0.9  # the worst group dominates
    partial = GroupDRO(3, eta=0.1)
    partial.loss(torch.tensor([5.0]), torch.tensor([1]))  # groups absent from a batch keep their weight
    assert partial.weights[0] == partial.weights[2] < partial.weights[1]


def test_group_dro_loss_gradient_follows_the_weights():
    dro = GroupDRO(2, eta=1.0)
    per_sample = torch.tensor([1.0, 3.0], requires_grad=True)
    dro.loss(per_sample, torch.tensor([0, 1])).backward()
    weights = np.exp([1.0, 3.0]) / np.exp([1.0, 3.0]).sum()
    assert per_sample.grad.numpy() == pytest.approx(weights, abs=1e-6)


# --- EnD ---------------------------------------------------------------------------------------

def test_end_regulariser_equals_a_hand_computation():
    features = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [3.0, 0.0]])
    bias = torch.tensor([0, 0, 1, 1])
    target = torch.tensor([0, 1, 0, 1])
    # normalised: e1, e2, (e1 + e2)/sqrt 2, e1. Same-bias pairs (0,1): cos 0 and (2,3): cos 1/sqrt 2, so
    # R_perp = (0 + 1/sqrt 2) / 2; same-class pairs across sources (0,2): 1/sqrt 2 and (1,3): 0, so
    # R_par = -(1/sqrt 2 + 0) / 2.
    half = math.sqrt(0.5) / 2
    assert float(end_regulariser(features, target, bias, 1.0, 0.0)) == pytest.approx(half, abs=1e-6)
    assert float(end_regulariser(features, target, bias, 0.0, 1.0)) == pytest.approx(-half, abs=1e-6)
    assert float(end_regulariser(features, target, bias, 1.0, 0.5)) == pytest.approx(half * 0.5, abs=1e-6)
    assert float(end_regulariser(features, target, torch.tensor([0, 1, 2, 3]), 1.0, 1.0)) == \
        pytest.approx(-(math.sqrt(0.5) + 0.0) / 2, abs=1e-6)  # no same-bias pair: R_perp is 0


def test_end_gradient_pushes_same_bias_features_apart_and_classes_together():
    features = torch.tensor([[1.0, 0.2], [0.9, 0.3], [0.1, 1.0], [0.2, 0.9]], requires_grad=True)
    bias = torch.tensor([0, 0, 1, 1])
    target = torch.tensor([0, 1, 1, 0])

    def cosine(f: torch.Tensor, i: int, j: int) -> float:
        return float(torch.nn.functional.cosine_similarity(f[i], f[j], dim=0))

    end_regulariser(features, target, bias, 1.0, 1.0).backward()
    stepped = (features - 0.1 * features.grad).detach()
    assert cosine(stepped, 0, 1) < cosine(features.detach(), 0, 1)  # same source: apart
    assert cosine(stepped, 2, 3) < cosine(features.detach(), 2, 3)
    assert cosine(stepped, 0, 3) > cosine(features.detach(), 0, 3)  # same class, other source: together


# --- the loop ----------------------------------------------------------------------------------

def test_debias_none_is_todays_training(tmp_path, monkeypatch):
    """`none` keeps the options out of the configuration (recipe keys and checkpoints as before: the keys
    below are those of the code before mitigations existed) and trains exactly what a mitigation that changes
    neither order nor loss trains, i.e. the new code path adds nothing."""
    assert TrainConfig().recipe_key() == "fb1c31128f34"
    assert TrainConfig(architecture="conv8", epochs=3).recipe_key() == "095b59e55c32"
    assert "debias" not in TrainConfig().to_dict() and TrainConfig(debias="end").to_dict()["end_alpha"] == 1.0
    one_epoch = TrainConfig(**{**TINY.to_dict(), "epochs": 1})
    plain = _fit(tmp_path / "none", one_epoch)
    assert plain.debias is None and "debias" not in load_checkpoint(tmp_path / "none" / CHECKPOINT)

    class PassThrough(Mitigation):
        reorders = True

        def order(self, generator):
            return epoch_order(self.groups.group, "shuffle", generator)

        def loss(self, logits, labels, indices):
            return self._loss_fn(logits, labels)

    def passthrough(config, train, model, loss_fn, device):
        return PassThrough(TrainConfig(**{**config.to_dict(), "debias": "balanced"}), train, model, loss_fn,
                           device)

    monkeypatch.setattr("unveil.training.loop.mitigation", passthrough)
    through = _fit(tmp_path / "through", one_epoch)
    assert through.debias is not None
    for name, tensor in plain.best_state.items():
        assert torch.equal(tensor, through.best_state[name]), name


@pytest.mark.parametrize("kind", ["balanced", "group-dro", "end"])
def test_each_mitigation_trains_and_is_recorded(tmp_path, kind):
    config = TrainConfig(**{**TINY.to_dict(), "debias": kind})
    result = _fit(tmp_path / kind, config)
    assert result.debias["debias"] == kind and result.debias["bias"] == "source"
    assert result.debias["groups"] == ["neg/chestxray", "neg/hospital", "pos/chestxray", "pos/hospital"]
    assert all(math.isfinite(h["train_loss"]) for h in result.history)
    plain = _fit(tmp_path / "none", TINY)
    assert any(not torch.equal(plain.best_state[k], result.best_state[k]) for k in plain.best_state)
    if kind == "group-dro":
        weights = load_checkpoint(tmp_path / kind / CHECKPOINT)["debias"]["group_weights"]
        assert float(weights.sum()) == pytest.approx(1.0) and result.debias["debias_eta"] == 0.01
        assert result.debias["group_weights"] == pytest.approx(weights.tolist(), abs=1e-6)


class Interrupted(Exception):
    pass


def test_resume_with_group_dro_is_exact(tmp_path):
    config = TrainConfig(**{**TINY.to_dict(), "epochs": 3, "debias": "group-dro", "debias_eta": 0.5})
    reference = _fit(tmp_path / "whole", config)

    def stop(epoch: int, step: int) -> None:
        if (epoch, step) == (1, 2):
            raise Interrupted

    with pytest.raises(Interrupted):
        _fit(tmp_path / "killed", config, on_step=stop)
    resumed = _fit(tmp_path / "killed", config)
    assert resumed.resumed_from_epoch == 1
    for name, tensor in reference.best_state.items():
        assert torch.equal(tensor, resumed.best_state[name]), name
    assert resumed.debias["group_weights"] == reference.debias["group_weights"]
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in reference.history]


def test_a_checkpoint_of_another_mitigation_is_refused(tmp_path):
    from unveil.training import CheckpointError

    _fit(tmp_path / "run", TrainConfig(**{**TINY.to_dict(), "epochs": 1}))
    with pytest.raises(CheckpointError, match="debias"):
        _fit(tmp_path / "run", TrainConfig(**{**TINY.to_dict(), "debias": "group-dro"}))


def test_invalid_debias_options_name_the_value(tmp_path):
    with pytest.raises(ConfigError, match="reweight"):
        TrainConfig(debias="reweight")
    with pytest.raises(ConfigError, match="debias_eta"):
        TrainConfig(debias="group-dro", debias_eta=0.0)
    with pytest.raises(ConfigError, match="end_alpha"):
        TrainConfig(end_alpha=-1.0)
    (tmp_path / "data").mkdir()
    result = CliRunner().invoke(app, ["train", "AB", "--data", f"A=hospital-csv:{tmp_path / 'data'}", "--out",
                                      str(tmp_path / "out"), "--debias", "reweight"])
    assert result.exit_code != 0 and "reweight" in result.output and "Traceback" not in result.output


def test_debias_needs_sources():
    toy = toy_set(8, 0)
    bare = ImageSet(toy.images, toy.labels, pd.DataFrame({"record_id": toy.records["record_id"]}), toy.classes)
    from unveil.training import TrainingDataError

    with pytest.raises(TrainingDataError, match="source"):
        bias_groups(bare)


def test_an_experiment_file_takes_debias_in_its_training_section(tmp_path):
    from unveil.experiments import ExperimentError, load_experiment

    text = ("name: mitigated\nseed: 0\ndata:\n  synthetic: {preset: paper, scale: 0.1, image_size: 64}\n"
            "training: {epochs: 2, debias: group-dro, debias_eta: 0.05}\n"
            "grid: {encoders: [none], architectures: [conv8], compositions: [AB], tests: [AB]}\n")
    (tmp_path / "good.yaml").write_text(text)
    config = load_experiment(tmp_path / "good.yaml").train_config("conv8")
    assert (config.debias, config.debias_eta) == ("group-dro", 0.05)
    (tmp_path / "bad.yaml").write_text(text.replace("group-dro", "reweight"))
    with pytest.raises(ExperimentError, match="debias.*reweight"):
        load_experiment(tmp_path / "bad.yaml")


@pytest.mark.parametrize("kind", ["none", "end"])
def test_evaluation_rows_name_the_mitigation(tmp_path, kind):
    from unveil.evaluation.evaluate import model_identity
    from unveil.preprocess.cache import PreprocessSettings
    from unveil.training import load_bundle, save_bundle

    config = TrainConfig(architecture="conv8", width=0.25, debias=kind)
    model = build_model("conv8", num_classes=2, width=0.25)
    path = save_bundle(tmp_path / kind / "model", model, width=0.25, classes=["covid-", "covid+"],
                       positive_class="covid+", image_size=32, preprocess=PreprocessSettings(size=32),
                       normalization=(0.5, 0.2), provenance={"task": "train:AB", "config": config.to_dict()})
    identity = model_identity(load_bundle(path))
    assert identity["debias"] == kind and identity["recipe_key"] == config.recipe_key()
    assert (identity["recipe_key"] == TrainConfig(architecture="conv8", width=0.25).recipe_key()) == (kind == "none")
