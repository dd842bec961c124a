"""Experiment tracking (unveil.tracking): what TensorBoard and MLflow hold, read back with their own readers, is
what metrics.jsonl (or the lung model's history.csv) says, epoch for epoch; off by default nothing more is written."""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from unveil.cli import app
from unveil.models import build_model
from unveil.tracking import (
    Trackers,
    TrackingError,
    TrackingSettings,
    local_mlflow_uri,
    numbers,
    open_trackers,
)
from unveil.training import TrainConfig, fit, fit_normalization
from unveil.training.loop import METRICS_LOG

from conftest import toy_set

pytest.importorskip("tensorboard")
pytest.importorskip("mlflow")

TINY = TrainConfig(architecture="conv8", width=0.25, image_size=32, epochs=2, batch_size=8, eval_batch_size=16)
BOTH = TrackingSettings(("tensorboard", "mlflow"))


def tensorboard_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar tag's (step, value) events in ``folder``, as TensorBoard reads them (purged steps dropped)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def mlflow_runs(uri: str, experiment: str = "unveil") -> list:
    """The MLflow runs of ``experiment`` at ``uri``, oldest first."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no MLflow experiment {experiment} at {uri}"
    return sorted(client.search_runs([found.experiment_id]), key=lambda run: run.info.start_time)


def mlflow_history(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    from mlflow.tracking import MlflowClient

    return sorted((m.step, m.value) for m in MlflowClient(tracking_uri=uri).get_metric_history(run_id, key))


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def assert_tracked_like(records: list[dict], run_dir: Path, uri: str, run_id: str, step: str = "epoch") -> None:
    """Every numeric figure of every record is in TensorBoard (float32) and MLflow at its epoch, once."""
    scalars = tensorboard_scalars(run_dir / "tensorboard")
    keys = set().union(*(numbers(r) for r in records))
    assert keys and keys <= set(scalars), keys - set(scalars)
    for key in keys:
        expected = [(int(r[step]), float(r[key])) for r in records if key in r]
        assert [s for s, _ in scalars[key]] == [s for s, _ in expected], key
        assert [v for _, v in scalars[key]] == pytest.approx([v for _, v in expected], rel=1e-6, nan_ok=True), key
        logged = mlflow_history(uri, run_id, key)
        assert [s for s, _ in logged] == [s for s, _ in expected], key
        assert [v for _, v in logged] == pytest.approx([v for _, v in expected], rel=1e-12, nan_ok=True), key


def _fit(run_dir: Path, config: TrainConfig = TINY, **kwargs):
    torch.manual_seed(config.seed)
    model = build_model(config.architecture, num_classes=2, width=config.width)
    train_set, val_set = toy_set(40, 0), toy_set(16, 1)
    return fit(model, train_set, val_set, config, run_dir, normalization=fit_normalization(train_set.images),
               **kwargs)


def test_fit_logs_every_epoch_to_tensorboard_and_mlflow_as_metrics_jsonl_says(tmp_path):
    run_dir = tmp_path / "run"
    result = _fit(run_dir, tracking=BOTH, params={"task": "toy", "preprocess": {"size": 32}})
    records = read_jsonl(run_dir / METRICS_LOG)
    assert [r["epoch"] for r in records] == [1, 2] and records == result.history
    uri = local_mlflow_uri(run_dir)
    assert uri == f"sqlite:///{(run_dir / 'mlruns' / 'mlflow.db').resolve()}"
    [run] = mlflow_runs(uri)
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    params = run.data.params
    assert params["lr"] == "0.01" and params["architecture"] == "conv8" and params["epochs"] == "2"
    assert params["task"] == "toy" and params["preprocess.size"] == "32"
    assert run.data.metrics["val_auc"] == pytest.approx(records[-1]["val_auc"], rel=1e-12)
    assert_tracked_like(records, run_dir, uri, run.info.run_id)
    _fit(run_dir, tracking=BOTH)  # finished: nothing to train, so no empty MLflow run
    assert len(mlflow_runs(uri)) == 1 and read_jsonl(run_dir / METRICS_LOG) == records


def test_off_by_default_writes_only_the_checkpoint_and_metrics_jsonl(tmp_path):
    _fit(tmp_path / "run", replace(TINY, epochs=1))
    assert {p.name for p in (tmp_path / "run").iterdir()} == {"checkpoint.pt", METRICS_LOG}


class Interrupted(Exception):
    pass


def test_a_resumed_or_restarted_run_keeps_one_event_per_epoch(tmp_path):
    """A run killed in epoch 2 and resumed: TensorBoard and metrics.jsonl hold epochs 1-3 once each, the killed
    MLflow run is FAILED and the resumed one holds the epochs it trained; a rerun from scratch (resume=False)
    purges the earlier events, as it rewrites metrics.jsonl."""
    run_dir, config = tmp_path / "run", replace(TINY, epochs=3)

    def interrupt(epoch: int, step: int) -> None:
        if (epoch, step) == (1, 1):
            raise Interrupted

    with pytest.raises(Interrupted):
        _fit(run_dir, config, tracking=BOTH, on_step=interrupt)
    _fit(run_dir, config, tracking=BOTH)
    records = read_jsonl(run_dir / METRICS_LOG)
    uri = local_mlflow_uri(run_dir)
    killed, resumed = mlflow_runs(uri)
    assert killed.info.status == "FAILED" and resumed.info.status == "FINISHED"
    assert mlflow_history(uri, killed.info.run_id, "val_loss") == [(1, records[0]["val_loss"])]
    assert resumed.data.tags["unveil.first_epoch"] == "2"
    scalars = tensorboard_scalars(run_dir / "tensorboard")
    assert [step for step, _ in scalars["val_loss"]] == [1, 2, 3]
    assert [v for _, v in scalars["val_loss"]] == pytest.approx([r["val_loss"] for r in records], rel=1e-6)

    _fit(run_dir, replace(TINY, epochs=1), tracking=TrackingSettings(("tensorboard",)), resume=False)
    assert [step for step, _ in tensorboard_scalars(run_dir / "tensorboard")["val_loss"]] == [1]
    assert [r["epoch"] for r in read_jsonl(run_dir / METRICS_LOG)] == [1]


def test_settings_refuse_unknown_trackers_a_lone_uri_and_missing_packages(monkeypatch):
    with pytest.raises(TrackingError, match="unknown tracker 'wandb'; choose from tensorboard, mlflow"):
        TrackingSettings(("wandb",))
    with pytest.raises(TrackingError, match="is for MLflow: add --track mlflow"):
        TrackingSettings(("tensorboard",), uri="sqlite:///x.db")
    assert TrackingSettings(("MLflow", "mlflow")).track == ("mlflow",) == TrackingSettings("mlflow").track
    assert not TrackingSettings().enabled
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    with pytest.raises(TrackingError, match=r"--track mlflow needs the package\(s\) mlflow.*pip install mlflow-skinny"):
        TrackingSettings(("mlflow",))


class Failing:
    """A tracker whose every call fails as a server gone away would."""

    def __init__(self) -> None:
        self.calls = 0

    def log_params(self, params) -> None:
        self.calls += 1

    def log_metrics(self, step, metrics) -> None:
        self.calls += 1
        raise TrackingError("http://gone:5000: connection refused")

    def close(self, failed: bool = False) -> None:
        self.calls += 1


class Recording(Failing):
    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[int, dict]] = []

    def log_metrics(self, step, metrics) -> None:
        self.rows.append((step, dict(metrics)))


def test_a_failing_tracker_is_dropped_with_a_warning_the_run_log_goes_on(caplog):
    own, failing = Recording(), Failing()
    with caplog.at_level(logging.WARNING, logger="unveil.tracking"), Trackers([own], [failing]) as trackers:
        trackers.log_metrics(1, {"epoch": 1, "val_auc": 0.5})
        trackers.log_metrics(2, {"epoch": 2, "val_auc": 0.75})
    assert own.rows == [(1, {"epoch": 1, "val_auc": 0.5}), (2, {"epoch": 2, "val_auc": 0.75})]
    assert failing.calls == 1  # dropped at its first failure: not called again, not closed
    assert "tracking stopped for this run: http://gone:5000: connection refused" in caplog.text
    broken = Trackers([Failing()])
    with pytest.raises(TrackingError, match="connection refused"):  # the run's own log may not fail silently
        broken.log_metrics(1, {"val_auc": 0.5})


def test_a_refused_tracking_uri_fails_before_training(tmp_path):
    with pytest.raises(TrackingError, match="MLflow tracking URI"):
        open_trackers(TrackingSettings(("mlflow",), uri="nosuchscheme://x"), tmp_path / "run")


def test_numbers_keep_numeric_figures_only():
    assert numbers({"epoch": 3, "val_auc": 0.5, "selectable": True, "note": "x", "optimizer_steps": 4}) == \
        {"val_auc": 0.5, "optimizer_steps": 4.0}


#: A one-cell grid (test_experiments.py's tiny grid, less pre-training and audit), one epoch.
GRID = {
    "name": "tiny", "seed": 0,
    "data": {"synthetic": {"preset": "paper", "scale": 0.1, "image_size": 48}},
    "preprocess": {"size": 32, "mask": "none"},
    "training": {"width": 0.25, "epochs": 1, "batch_size": 16},
    "grid": {"encoders": ["none"], "architectures": ["conv8"], "compositions": ["AB"], "tests": ["AB"]},
    "evaluation": {"resamples": 20},
}


# --- the commands ------------------------------------------------------------------------------

def _lung_set(folder: Path) -> Path:
    from unveil.synth.config import load_config
    from unveil.synth.generate import generate

    config = load_config("clean")
    lungs = replace(config.datasets["lungs"], classes={"normal": 10})
    generate(replace(config, image_size=48, datasets={"lungs": lungs}), folder, seed=0)
    return folder / "lungs"


def test_cli_lungs_train_tracks_history_csv(tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["lungs", "train", "--data", f"shenzhen:{_lung_set(tmp_path / 'bench')}",
                                      "--out", str(out), "--epochs", "2", "--image-size", "32", "--batch-size", "4",
                                      "--track", "tensorboard", "--track", "mlflow"])
    assert result.exit_code == 0, result.output
    with (out / "history.csv").open(newline="") as stream:
        rows = [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(stream)]
    assert [row["epoch"] for row in rows] == [1, 2] and "val_dice" in rows[-1]
    uri = local_mlflow_uri(out)
    [run] = mlflow_runs(uri)
    assert run.data.params["epochs"] == "2" and run.data.params["size"] == "32"
    assert_tracked_like(rows, out, uri, run.info.run_id)


def test_cli_refuses_a_tracking_uri_without_mlflow_in_one_line(tmp_path):
    result = CliRunner().invoke(app, ["train", "AB", "--data", "A=x", "--out", str(tmp_path / "o"),
                                      "--tracking-uri", "sqlite:///x.db"])
    assert result.exit_code == 2 and "is for MLflow: add --track mlflow" in result.output
    result = CliRunner().invoke(app, ["train", "AB", "--data", "A=x", "--out", str(tmp_path / "o"),
                                      "--track", "wandb"])
    assert result.exit_code == 2 and "wandb" in result.output


def test_experiment_file_tracking_key_is_checked_at_its_line(tmp_path):
    from unveil.experiments import ExperimentError, load_experiment

    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump({**GRID, "tracking": {"track": ["tensorboard", "wandb"]}}))
    with pytest.raises(ExperimentError, match=r"exp.yaml:\d+: tracking: unknown tracker 'wandb'"):
        load_experiment(path)
    path.write_text(yaml.safe_dump({**GRID, "tracking": {"track": ["mlflow"], "uri": "sqlite:///t.db"}}))
    assert load_experiment(path).tracking.settings() == TrackingSettings(("mlflow",), "sqlite:///t.db")
    path.write_text(yaml.safe_dump(GRID))
    assert load_experiment(path).tracking.settings() is None


@pytest.mark.slow
def test_reproduce_tracks_every_run_of_the_grid_in_one_mlflow_experiment(tmp_path):
    from unveil.experiments import load_experiment, reproduce

    document = {**GRID, "tracking": {"track": ["tensorboard", "mlflow"]}}
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(document))
    out = tmp_path / "out"
    reproduce(load_experiment(path), out, report=False)
    cell = out / "cells" / "conv8-none-AB"
    uri = local_mlflow_uri(out)
    [run] = mlflow_runs(uri, experiment="tiny")
    assert run.info.run_name == "conv8-none-AB" and run.data.params["task"] == "train:AB"
    assert not (cell / "mlruns").exists()  # the grid's runs share OUT/mlruns
    assert_tracked_like(read_jsonl(cell / METRICS_LOG), cell, uri, run.info.run_id)
