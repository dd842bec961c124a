"""`unveil reproduce --cluster`: pre-trainings and cells as tasks of a Dask cluster give the local runner's figures,
and a worker killed mid-cell changes nothing (the cell is retried and resumes from its checkpoint)."""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

import unveil.experiments.cluster as cluster
from unveil.cli import app
from unveil.experiments import ExperimentError, ResultsStore, load_experiment, reproduce
from unveil.experiments.jobs import ATTEMPTS_LOG, Cell, CellJob, PretrainJob
from unveil.preprocess.cache import PreprocessSettings
from unveil.training.config import TrainConfig

# Two cells: one from scratch, one from an encoder pre-trained on B (a task dependency). Twelve short epochs, so
# that a worker can be killed between the cell's first checkpoint and its end.
TINY = {
    "name": "tiny-cluster",
    "seed": 0,
    "data": {"synthetic": {"preset": "paper", "scale": 0.1, "image_size": 48}},
    "preprocess": {"size": 32, "mask": "none"},
    "training": {"width": 0.25, "epochs": 12, "batch_size": 16},
    "pretraining": {"B": {"data": ["B"], "training": {"epochs": 1}}},
    "grid": {"encoders": ["none", "B"], "architectures": ["conv8"], "compositions": ["AB"], "tests": ["AB"]},
    "evaluation": {"resamples": 20},
    "audit": {},
}
VICTIM = "conv8-none-AB"
TIMEOUT = 600  # seconds for one reproduce; far above its ~1 min on a loaded 2-core machine


def _figures(store_path: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The cells and every (cell, test set, metric) figure of a store, without paths (the folders differ)."""
    with ResultsStore(store_path) as store:
        cells = store.table("cells")[["cell_id", "encoder", "status", "best_epoch", "val_auc"]]
        results = store.table("results").drop(columns=["provenance"])
    return (cells.sort_values("cell_id").reset_index(drop=True),
            results.sort_values(["cell_id", "test_set", "metric"]).reset_index(drop=True))


class _KillAfterFirstCheckpoint(threading.Thread):
    """Waits for ``run_dir/checkpoint.pt`` (the cell's first epoch is saved), then SIGKILLs the process that runs
    the cell: the pid its attempt wrote to attempts.jsonl, i.e. a Dask worker."""

    def __init__(self, run_dir: Path) -> None:
        super().__init__(daemon=True)
        self.run_dir, self.killed, self.stop = run_dir, None, threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.005):
            attempts = self.run_dir / ATTEMPTS_LOG
            if (self.run_dir / "checkpoint.pt").is_file() and attempts.is_file():
                self.killed = json.loads(attempts.read_text().splitlines()[-1])["pid"]
                os.kill(self.killed, signal.SIGKILL)
                return


def _reproduce_within_timeout(*args: Any, **kwargs: Any) -> Path:
    """``reproduce`` in a thread: a hung cluster fails the test instead of blocking it."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["store"] = reproduce(*args, **kwargs)
        except BaseException as error:  # handed to the test
            outcome["error"] = error

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(TIMEOUT)
    assert not thread.is_alive(), f"reproduce on the cluster did not finish within {TIMEOUT} s"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["store"]


@pytest.mark.slow
def test_cluster_gives_the_local_figures_and_survives_a_killed_worker(tmp_path, monkeypatch):
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(TINY))
    experiment = load_experiment(path)
    local = reproduce(experiment, tmp_path / "local", report=False)

    victim = tmp_path / "dask" / "cells" / VICTIM
    killer = _KillAfterFirstCheckpoint(victim)
    killer.start()
    lines: list[str] = []
    try:
        on_cluster = _reproduce_within_timeout(experiment, tmp_path / "dask", jobs=2, cluster="local", report=False,
                                               progress=lines.append)
    finally:
        killer.stop.set()
    assert killer.killed is not None, "the worker was never killed"

    # The same figures as the local runner, for the cell that lost its worker too.
    for ours, theirs in zip(_figures(on_cluster), _figures(local), strict=True):
        pd.testing.assert_frame_equal(ours, theirs, check_exact=True)
    # The cell was retried in another process and resumed from its checkpoint; its metrics log has every
    # epoch once.
    attempts = [json.loads(line) for line in (victim / ATTEMPTS_LOG).read_text().splitlines()]
    assert [a["attempt"] for a in attempts] == [1, 2] and attempts[0]["pid"] == killer.killed
    assert attempts[1]["pid"] != killer.killed and attempts[1]["resumed_after_epoch"] >= 1
    epochs = [json.loads(line)["epoch"] for line in (victim / "metrics.jsonl").read_text().splitlines()]
    assert epochs == list(range(1, TINY["training"]["epochs"] + 1))
    resumed = f"(attempt 2, resumed after epoch {attempts[1]['resumed_after_epoch']})"
    assert any(VICTIM in line and resumed in line for line in lines), lines
    # The cell from the pre-trained encoder ran after its pre-training, from its bundle; the driver wrote done.json.
    assert (tmp_path / "dask" / "pretrain" / "B-conv8" / "done.json").is_file()
    meta = json.loads((tmp_path / "dask" / "cells" / "conv8-B-AB" / "run.meta.json").read_text())
    assert meta["config"]["encoder"] == str(tmp_path / "dask" / "pretrain" / "B-conv8" / "model")
    assert json.loads((tmp_path / "dask" / "reproduce.meta.json").read_text())["config"]["cluster"] == "local"

    # A rerun has nothing left to train: it starts no cluster.
    monkeypatch.setattr(cluster, "open_client", lambda *args, **kwargs: pytest.fail("a finished grid started one"))
    reproduce(experiment, tmp_path / "dask", jobs=2, cluster="local", report=False)


class _Future:
    def __init__(self, function: Any, args: tuple[Any, ...]) -> None:
        self.function, self.args = function, args

    def result(self) -> dict[str, Any]:
        return {"bundle": "bundle", "seconds": 1.0, "best_epoch": 1, "val_auc": 0.5}


class _Client:
    """What run_grid asks of a distributed.Client: the workers' resources, submit and cancel."""

    def __init__(self, gpu: bool) -> None:
        self.gpu, self.submitted, self.cancelled = gpu, [], []

    def scheduler_info(self) -> dict[str, Any]:
        return {"workers": {"tcp://w:1": {"resources": {"GPU": 1} if self.gpu else {}}}}

    def submit(self, function: Any, *args: Any, key: str, resources: dict[str, float] | None,
               priority: int = 0) -> _Future:
        future = _Future(function, args)
        self.submitted.append({"future": future, "key": key, "resources": resources, "priority": priority})
        return future

    def cancel(self, futures: list[_Future]) -> None:
        self.cancelled.extend(futures)


def _jobs(tmp_path: Path, device: str) -> tuple[PretrainJob, list[CellJob]]:
    config = TrainConfig(architecture="conv8", device=device)
    pretraining = PretrainJob("B-conv8", [], tmp_path / "pretrain" / "B-conv8", config, PreprocessSettings(),
                              tmp_path / "cache", None, 1, False)
    cells = [CellJob(Cell("conv8", encoder, "AB", tmp_path / "cells" / f"conv8-{encoder}-AB"), {}, config,
                     PreprocessSettings(), tmp_path / "cache", bundle, 1, None, False)
             for encoder, bundle in (("none", None), ("B", str(pretraining.run_dir / "model")))]
    return pretraining, cells


@pytest.mark.parametrize("device, gpu_workers, gpu", [("cuda", False, True), ("cuda:1", True, True),
                                                       ("auto", True, True), ("auto", False, False),
                                                       ("cpu", True, False)])
def test_tasks_declare_a_gpu_when_they_train_on_cuda_and_cells_depend_on_their_pretraining(
        tmp_path, monkeypatch, device, gpu_workers, gpu):
    import distributed

    monkeypatch.setattr(distributed, "as_completed", lambda futures: iter(futures))
    client = _Client(gpu_workers)
    pretraining, cells = _jobs(tmp_path, device)
    done: list[str] = []
    cluster.run_grid(client, [pretraining], cells, on_pretrained=lambda job, result: done.append(job.name),
                     on_cell=lambda job, result: done.append(job.name))
    first, scratch, pretrained = client.submitted
    assert first["future"].function is cluster.pretrain_task and first["priority"] > scratch["priority"]
    assert scratch["future"].args == (cells[0], None)  # from scratch: no dependency
    assert pretrained["future"].args == (cells[1], first["future"])  # waits for the pre-training's result
    assert all(s["resources"] == ({"GPU": 1} if gpu else None) for s in client.submitted)
    assert len({s["key"] for s in client.submitted}) == 3 and all("conv8" in s["key"] for s in client.submitted)
    assert done == ["B-conv8", "conv8-none-AB", "conv8-B-AB"] and len(client.cancelled) == 3


def test_cell_task_takes_the_encoder_from_its_pretraining(tmp_path, monkeypatch):
    _, cells = _jobs(tmp_path, "cpu")
    ran: list[CellJob] = []
    monkeypatch.setattr(CellJob, "run", lambda job: (ran.append(job), {"bundle": "x"})[1])
    assert cluster.cell_task(cells[1], {"bundle": "/shared/out/pretrain/B-conv8/model"}) == {"bundle": "x"}
    assert ran[0].encoder == "/shared/out/pretrain/B-conv8/model"
    cluster.cell_task(cells[0], None)
    assert ran[1].encoder is None


@pytest.mark.parametrize("address", ["lcoal", "tcp://", "my host:8786", ""])
def test_a_cluster_that_is_neither_local_nor_an_address_is_refused(address):
    with pytest.raises(ExperimentError, match="neither 'local' nor a Dask scheduler address"):
        cluster.check_cluster(address)
    assert cluster.check_cluster("local") == "local" and cluster.check_cluster("tcp://10.0.0.1:8786")


def test_cli_says_in_one_line_when_no_scheduler_answers(tmp_path, monkeypatch):
    monkeypatch.setattr(cluster, "CONNECT_TIMEOUT", 1.0)
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(TINY))
    result = CliRunner().invoke(app, ["reproduce", str(path), "--out", str(tmp_path / "o"),
                                      "--cluster", "tcp://127.0.0.1:9"])
    assert result.exit_code == 2, result.output
    assert "error: --cluster tcp://127.0.0.1:9: no Dask scheduler answered within 1 s" in result.output
    assert not (tmp_path / "o").exists()  # refused before any work
    result = CliRunner().invoke(app, ["reproduce", str(path), "--out", str(tmp_path / "o"), "--cluster", "lcoal"])
    assert result.exit_code == 2 and "neither 'local' nor a Dask scheduler address" in result.output
