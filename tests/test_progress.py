"""Feedback on long work: step lines on stderr, per-cell ETA, quiet bars off a terminal, no dependency warnings."""

from __future__ import annotations

import logging
import re
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from unveil.experiments.jobs import _run_jobs
from unveil.progress import bar, configure_logging, duration, progress_log


@pytest.fixture
def cli_logging():
    """The CLI's logging set-up, undone afterwards (handlers are process-wide)."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level, list(progress_log.handlers), progress_log.level)
    configure_logging(verbose=False)
    yield
    root.handlers[:], _, progress_log.handlers[:], _ = saved
    root.setLevel(saved[1])
    progress_log.setLevel(saved[3])


def test_step_lines_reach_stderr_bare_and_once(cli_logging, capsys):
    progress_log.info("cell %d/%d %s", 1, 2, "conv8-B-AB")
    logging.getLogger("unveil.training.loop").info("an info line, hidden without --verbose")
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == "cell 1/2 conv8-B-AB\n"


def test_no_bar_is_drawn_off_a_terminal(cli_logging, capsys):
    for _ in bar(range(3), desc="work"):
        pass
    err = capsys.readouterr().err  # pytest's stderr is not a terminal
    assert "\r" not in err and "it/s]" not in err and "%|" not in err
    for _ in bar(range(3), desc="quiet", enabled=False):
        pass
    assert capsys.readouterr().err == ""


def test_a_phase_left_open_by_an_exception_stops_its_heartbeat(monkeypatch):
    import gc

    monkeypatch.setenv("UNVEIL_PROGRESS_INTERVAL", "0.02")
    threads = []

    def failing() -> None:
        progress = bar(total=3, desc="evaluate")
        threads.append(progress._beat)
        progress.update()
        raise RuntimeError("a test set failed")

    with pytest.raises(RuntimeError):
        failing()
    gc.collect()
    threads[0].join(timeout=2)
    assert not threads[0].is_alive()


STAMP = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"


def test_off_a_terminal_a_phase_prints_time_stamped_lines_not_a_bar(cli_logging, capsys, monkeypatch):
    import time

    monkeypatch.setenv("UNVEIL_PROGRESS_INTERVAL", "0.05")
    for _ in bar(range(3), desc="preprocess", unit="img"):
        time.sleep(0.12)
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert re.fullmatch(STAMP + r" preprocess: started \(3 img\)", lines[0])
    assert re.fullmatch(STAMP + r" preprocess: done, 3 img in 0 s", lines[-1])
    middle = lines[1:-1]
    assert middle and all(re.fullmatch(STAMP + r" preprocess: \d/3 img \(\d+ %\), [\d.]+ img/s(, ETA .+)?", line)
                          for line in middle)
    assert "\r" not in err and "it/s]" not in err and "|" not in err  # no tqdm bar in a redirected file


def test_nested_bars_print_only_interval_lines_and_phases_their_duration(cli_logging, capsys, monkeypatch):
    import time

    from unveil.progress import phase

    monkeypatch.setenv("UNVEIL_PROGRESS_INTERVAL", "0.05")
    progress = bar(total=4, desc="epoch 1/2", unit="batch", leave=False)
    progress.update(2)
    progress.set_postfix(loss="0.1234")
    time.sleep(0.15)
    progress.close()
    err = capsys.readouterr().err
    assert "started" not in err and "done" not in err
    assert re.search(STAMP + r" epoch 1/2: 2/4 batch \(50 %\), .* ETA .*, loss=0.1234", err)
    with phase("export onnx"):
        time.sleep(0.12)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].endswith("export onnx: started") and "export onnx: running, 0 s so far" in "\n".join(lines)
    assert lines[-1].endswith("export onnx: done, in 0 s")
    time.sleep(0.12)  # the heartbeat stopped with the phase
    assert capsys.readouterr().err == ""


def test_a_phase_over_within_the_grace_prints_nothing(cli_logging, capsys, monkeypatch):
    monkeypatch.setenv("UNVEIL_PROGRESS_INTERVAL", "30")
    for _ in bar(range(50), desc="preprocess", unit="img"):  # a cache hit: instant
        pass
    assert capsys.readouterr().err == ""


@dataclass(frozen=True)
class _Job:
    """A stand-in for PretrainJob/CellJob: a name and run()."""

    name: str
    result: dict[str, Any]

    def run(self) -> dict[str, Any]:
        return self.result


def test_run_jobs_numbers_every_cell_and_gives_an_eta():
    messages: list[str] = []
    done: list[str] = []
    jobs = [_Job("conv8-none-AB", {}), _Job("conv8-B-AB", {"attempt": 2, "resumed_after_epoch": 3}),
            _Job("conv8-B-AC", {"attempt": 1})]
    _run_jobs(jobs, 1, messages.append, lambda job, result: done.append(job.name))
    assert done == ["conv8-none-AB", "conv8-B-AB", "conv8-B-AC"]
    assert messages[0] == "  cell 1/3 conv8-none-AB ..."
    assert re.fullmatch(r"  cell 1/3 conv8-none-AB done in \d+ s; ETA \d+ s for the 2 left", messages[1])
    # a job that did not finish in its first process says so
    assert re.fullmatch(r"  cell 2/3 conv8-B-AB done in \d+ s \(attempt 2, resumed after epoch 3\); ETA .*",
                        messages[3])
    assert re.fullmatch(r"  cell 3/3 conv8-B-AC done in \d+ s", messages[-1])


@pytest.mark.parametrize("seconds, text", [(42.4, "42 s"), (210, "3.5 min"), (4 * 3600, "4.0 h")])
def test_durations_read_like_a_person_would_say_them(seconds, text):
    assert duration(seconds) == text


def test_hd95_raises_no_monai_deprecation_warning():
    from unveil.segmentation.metrics import hausdorff95

    mask = np.zeros((32, 32), bool)
    mask[8:24, 8:24] = True
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert hausdorff95(mask, np.roll(mask, 2, axis=1)) == pytest.approx(16.0, abs=1.0)
