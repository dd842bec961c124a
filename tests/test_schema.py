"""One schema machinery (unveil.schema) for training options, `train --config` and synthetic configurations:
every problem at once, each as FILE:LINE: key.path: problem; got VALUE."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from typing import Annotated

import pytest
from typer.testing import CliRunner

from unveil.cli import app
from unveil.schema import Field, SchemaError, Where, parse_text, read_document, section
from unveil.synth.config import SynthConfigError, load_config
from unveil.thresholds import ThresholdRule
from unveil.training.config import DEBIAS_OPTIONS, ConfigError, TrainConfig


@dataclass(frozen=True)
class Part:
    count: Annotated[int, Field(ge=0)]
    ratio: Annotated[float, Field(gt=0, lt=1)] = 0.5


@dataclass(frozen=True)
class Whole:
    parts: dict[str, Part] = field(default_factory=dict)
    name: str = "x"


WHOLE = """\
name: 3
parts:
  a: {count: -1, ratio: .nan}
  b:
    count: two
    colour: red
  c: 4
"""


def test_every_problem_of_a_document_at_once_with_its_line():
    document, where = parse_text(WHOLE, "w.yaml", SchemaError)
    with pytest.raises(SchemaError) as caught:
        section(Whole, document, (), where)
    assert caught.value.problems == [
        "w.yaml:1: name: should be a valid string; got 3",
        "w.yaml:3: parts.a.count: should be greater than or equal to 0; got -1",
        "w.yaml:3: parts.a.ratio: should be a finite number; got nan",
        "w.yaml:6: parts.b.colour: unknown key; known: count, ratio",
        "w.yaml:5: parts.b.count: should be a valid integer; got 'two'",
        "w.yaml:7: parts.c: should be a mapping of count, ratio; got 4",
    ]


def test_a_valid_document_is_built_and_values_from_python_have_no_line():
    document, where = parse_text("parts: {a: {count: 2}}\n", "ok.yaml", SchemaError)
    assert section(Whole, document, (), where) == Whole({"a": Part(2)})
    with pytest.raises(SchemaError, match=r"^values: parts.a: missing key\(s\) count$"):
        section(Whole, {"parts": {"a": {}}}, (), Where("values"))


def test_a_key_given_twice_in_json_is_refused_with_its_line(tmp_path):
    path = tmp_path / "twice.json"
    path.write_text('{\n  "name": "a",\n  "name": "b"\n}\n')
    with pytest.raises(SchemaError, match=rf"^{path}:3: name: this key appears twice"):
        read_document(path, SchemaError, "file")


# ------------------------------------------------------------------------------------------ TrainConfig


@pytest.mark.parametrize("values, message", [
    ({"lr": 0.0}, "training options: lr: should be greater than 0; got 0.0"),
    ({"epochs": "ten"}, "training options: epochs: should be a valid integer; got 'ten'"),
    ({"hflip": 1}, "training options: hflip: should be a valid boolean; got 1"),
    ({"optimizer": "rmsprop"}, "training options: optimizer: should be 'sgd' or 'adam'; got 'rmsprop'"),
    ({"momentum": float("nan")}, "training options: momentum: should be a finite number; got nan"),
    ({"translate": 0.5}, "training options: translate: should be less than 0.5 (augmentation must stay rigid and "
                         "small); got 0.5"),
    ({"bn_recalibration_images": -1}, "training options: bn_recalibration_images: should be greater than or equal "
                                      "to 0 (0 turns precise BN off); got -1"),
])
def test_a_bad_value_from_python_names_the_field_and_the_value(values, message):
    with pytest.raises(ConfigError) as caught:
        TrainConfig(**values)
    assert str(caught.value) == message and isinstance(caught.value, SchemaError)


def test_every_bad_option_is_named_at_once():
    with pytest.raises(ConfigError) as caught:
        TrainConfig(epochs=0, loss="hinge", collapse_tolerance=1.0)
    assert [line.split(":")[1].strip() for line in caught.value.problems] == ["epochs", "loss", "collapse_tolerance"]


def test_train_config_round_trips_and_keeps_its_numbers():
    config = TrainConfig(architecture="conv8", width=1, threshold_rule=ThresholdRule.SENSITIVITY, epochs=3)
    assert config.threshold_rule == "sensitivity" and type(config.threshold_rule) is str
    assert config.width == 1 and type(config.width) is int  # as given: the recipe key hashes what was stored
    stored = json.loads(json.dumps(config.to_dict()))  # what bundle.json and the checkpoint hold
    assert TrainConfig.from_dict(stored) == config and replace(config, epochs=4).epochs == 4
    assert TrainConfig.from_dict(stored).recipe_key() == config.recipe_key()
    # every option, less a mitigation's when there is none (`debias: none` configurations stay as they were)
    assert TrainConfig().to_dict() == {k: v for k, v in asdict(TrainConfig(**TrainConfig().to_dict())).items()
                                       if k not in DEBIAS_OPTIONS}
    mitigated = TrainConfig(debias="end", end_beta=0.5)
    assert mitigated.to_dict() == asdict(mitigated) and TrainConfig.from_dict(mitigated.to_dict()) == mitigated


# ------------------------------------------------------------------------------------- train --config

BAD_TRAINING = """\
epochs: 3
optimiser: adam
lr: fast
momentum: 1.5
"""


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_train_config_file_problems_name_the_file_line_and_option(tmp_path, suffix):
    from unveil.cli.train import _train_config

    path = tmp_path / f"training{suffix}"
    path.write_text(BAD_TRAINING if suffix == ".yaml" else
                    '{\n  "epochs": 3,\n  "optimiser": "adam",\n  "lr": "fast",\n  "momentum": 1.5\n}\n')
    first = 1 if suffix == ".yaml" else 2
    with pytest.raises(ConfigError) as caught:
        _train_config({}, path, None)
    assert caught.value.problems[0].startswith(f"{path}:{first + 1}: optimiser: unknown key; known: architecture, ")
    assert caught.value.problems[1:] == [f"{path}:{first + 2}: lr: should be a valid number; got 'fast'",
                                         f"{path}:{first + 3}: momentum: should be less than 1; got 1.5"]


@pytest.fixture()
def captured_training(monkeypatch, tmp_path):
    """`unveil train` up to the training call, which records the resolved configuration instead of training."""
    seen = {}

    class Result:
        def summary(self) -> str:
            return "trained"

    def fake_train(**kwargs):
        seen["config"] = kwargs["config"]
        return Result()

    monkeypatch.setattr("unveil.training.train", fake_train)
    data = tmp_path / "corda"
    data.mkdir()

    def run(*args: str) -> TrainConfig:
        result = CliRunner().invoke(app, ["train", "A", "--data", f"A=hospital-csv:{data}", "--out",
                                          str(tmp_path / "run"), *args])
        assert result.exit_code == 0, result.output
        return seen.pop("config")

    return run


def test_train_config_file_values_are_used_and_explicit_options_win(tmp_path, captured_training):
    path = tmp_path / "training.yaml"
    path.write_text("seed: 5\nepochs: 2\nloss: cross-entropy\narchitecture: conv8\n")
    config = captured_training("--config", str(path))
    assert (config.seed, config.epochs, config.loss, config.architecture) == (5, 2, "cross-entropy", "conv8")
    config = captured_training("--config", str(path), "--seed", "0", "--epochs", "4", "--set", "loss=focal")
    assert (config.seed, config.epochs, config.loss, config.architecture) == (0, 4, "focal", "conv8")
    assert captured_training("--epochs", "4").seed == 0


def test_a_bad_train_config_file_is_a_user_error_naming_the_line(tmp_path):
    path = tmp_path / "training.yaml"
    path.write_text("epochs: 3\nscheduler: step\n")
    data = tmp_path / "corda"
    data.mkdir()
    result = CliRunner().invoke(app, ["train", "A", "--data", f"A=hospital-csv:{data}", "--out", str(tmp_path / "o"),
                                      "--config", str(path)])
    assert result.exit_code == 2 and result.output.strip() == (
        f"error: {path}:2: scheduler: should be 'plateau', 'cosine' or 'none'; got 'step'")


# ---------------------------------------------------------------------------------- synthetic configurations

BAD_SYNTH = """\
name: mine
datasets:
  A:
    layout: hospital-csv
    classes: {normal: many, covid: 3}
  x: 3
"""


def test_a_synthetic_configuration_names_the_line_of_every_bad_field(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(BAD_SYNTH)
    with pytest.raises(SynthConfigError) as caught:
        load_config(path)
    assert caught.value.problems == [
        f"{path}:5: datasets.A.classes.normal: should be a valid integer; got 'many'",
        f"{path}:6: datasets.x: should be a mapping of layout, signatures, classes, follow_up, site, image_format; "
        "got 3"]
    path.write_text(BAD_SYNTH.replace("many", "2").replace("  x: 3\n", "    follow_up: 1\n    colour: red\n"))
    with pytest.raises(SynthConfigError) as caught:
        load_config(path)
    assert caught.value.problems == [f"{path}:7: datasets.A.colour: unknown key; known: layout, signatures, classes, "
                                     "follow_up, site, image_format",
                                     f"{path}:6: datasets.A.follow_up: should be less than 1; got 1"]


def _resolved(name: str) -> str:
    config = load_config(name)
    return hashlib.sha256(repr((config.name, config.image_size, config.severity, config.signatures,
                                config.datasets)).encode()).hexdigest()[:16]


def test_the_presets_resolve_exactly_as_before_the_schema():
    """Hashes of the resolved presets recorded with the hand-written parser this schema replaced (a small
    generated benchmark of each was also compared byte for byte)."""
    assert _resolved("paper") == "f8283d0509f8c869" and _resolved("clean") == "42d932285fa1da01"
    paper = load_config("paper")
    assert paper.datasets["D"].image_format == "mixed" and paper.datasets["D"].follow_up == 0.35
    assert paper.severity["covid"] == (0.2, 1.0) and type(paper.severity["covid"][1]) is float
