"""Hostile outputs and faults (issue 25, classes 4 and 6): every writing command through the one output guard,
and a full disk or a damaged file named in one line.

Class 4: an ``--out`` that is, holds or lies inside an input (data roots, label CSVs, model bundles) or is a
model bundle is refused by every command that writes; a second run into a busy folder is refused with one
line and the first run's results are not mixed with it. Class 6: a full disk during predict, preprocess or
train is one ``error:`` line naming the file, no half-written file is left looking complete, and a rerun
after freeing space succeeds; a damaged OOD reference, an edited split file or a changed lung model is one
line naming the file.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from test_hostile import one_line_error, tree_hashes
from unveil.cli import app

runner = CliRunner()
TRAIN = ["--arch", "conv8", "--width", "0.25", "--epochs", "2", "--batch-size", "16", "--image-size", "32",
         "--mask", "none", "--set", "eval_batch_size=32", "--no-progress", "--workers", "1"]


def save_png(path: Path, seed: int = 0, size: int = 64) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size, size), dtype=np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """A tiny synthetic benchmark and a conv8 trained on its AB composition (with its OOD reference)."""
    from unveil.data.spec import DataSpec
    from unveil.preprocess.cache import PreprocessSettings
    from unveil.synth.config import load_config
    from unveil.synth.generate import dataset_roots, generate
    from unveil.training import TrainConfig, train

    root = tmp_path_factory.mktemp("outputs")
    generate(replace(load_config("paper"), image_size=48), root / "bench", seed=0, scale=0.12)
    data = {name: DataSpec(source, path) for name, (source, path) in dataset_roots(root / "bench").items()}
    config = TrainConfig(architecture="conv8", width=0.25, image_size=32, epochs=2, batch_size=16, eval_batch_size=32)
    run = train("AB", {"A": data["A"], "B": data["B"]}, root / "AB", config=config,
                preprocess=PreprocessSettings(mask="none"), cache=root / "cache")
    return {"data": data, "run": root / "AB", "bundle": run.bundle, "root": root, "cache": root / "cache"}


def roles(bench, *names: str) -> list[str]:
    """``--data ROLE=SOURCE:PATH`` for the benchmark's datasets ``names``."""
    specs = [(name, bench["data"][name]) for name in names]
    return [arg for name, spec in specs for arg in ("--data", f"{name}={spec.source}:{spec.root}")]


@pytest.fixture()
def small_disk(tmp_path):
    """A 32 MiB tmpfs (root only; filled by each test with :func:`fill`): a real ENOSPC. Skipped where mounting
    is not allowed."""
    mount = tmp_path / "disk"
    mount.mkdir()
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(mount)], capture_output=True)
    except OSError as error:
        pytest.skip(f"cannot mount a tmpfs ({error})")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.decode(errors='replace').strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path, leave: int) -> Path:
    """Fill ``disk`` until about ``leave`` bytes are free; returns the filler (delete it to free the space)."""
    filler = disk / "filler"
    free = shutil.disk_usage(disk).free
    with filler.open("wb") as stream:
        stream.write(b"\0" * max(0, free - leave))
    return filler


# --- class 4: every writing command through the one output guard -----------------------------------------

def _commands(bench, tmp_path: Path) -> dict[str, tuple[list[str], Path]]:
    """command -> (arguments with an --out overlapping an input, the input tree that must stay untouched)."""
    hospital = tmp_path / "hospital"
    save_png(hospital / "a.png")
    (hospital / "predictions.csv").write_text("file,pid,diagnosis\na.png,p1,covid\n")  # the hospital's labels
    run, bundle, a_root = bench["run"], bench["bundle"], Path(bench["data"]["A"].root)
    experiment = tmp_path / "exp"
    experiment.mkdir()
    (experiment / "mine.yaml").write_text("name: mine\n")
    results = tmp_path / "results"
    results.mkdir()
    (results / "results.sqlite").write_bytes(b"SQLite format 3\0")
    table = tmp_path / "res"
    table.mkdir()
    (table / "results.csv").write_text("model,test_set\n")
    hospital_csv = ["-o", "path_column=file", "-o", "patient_column=pid", "-o", "label_column=diagnosis",
                    "-o", f"csv={hospital / 'predictions.csv'}"]
    return {
        "train": (["train", "AB", *roles(bench, "A", "B"), "--out", str(a_root / "run"), *TRAIN], a_root),
        "pretrain": (["pretrain", "--data", f"{bench['data']['A'].source}:{a_root}", "--out", str(a_root), *TRAIN],
                     a_root),
        "evaluate labels": (["evaluate", str(bundle), "--on", f"hospital-csv:{hospital}", *hospital_csv,
                             "--out", str(hospital)], hospital),
        "evaluate bundle": (["evaluate", str(bundle), "--on", "AB", "--out", str(run)], run),
        "audit": (["audit", str(bundle), "--out", str(bundle / "audit")], run),
        "preprocess": (["preprocess", bench["data"]["A"].source, str(a_root), "--cache", str(a_root / "c")], a_root),
        "reproduce": (["reproduce", str(experiment / "mine.yaml"), "--out", str(experiment)], experiment),
        "report": (["report", str(results), "--out", str(results / "results.sqlite")], results),
        "export": (["export", str(bundle), "--out", str(bundle / "model.safetensors")], run),
        "lungs train": (["lungs", "train", "--data", f"{bench['data']['A'].source}:{a_root}", "--out",
                         str(a_root / "lungs")], a_root),
        "predict": (["predict", str(run), str(hospital), "--out", str(run)], run),
        "tables": (["tables", str(table / "results.csv"), "--out", str(table)], table),
    }


COMMANDS = ["train", "pretrain", "evaluate labels", "evaluate bundle", "audit", "preprocess", "reproduce", "report",
            "export", "lungs train", "predict", "tables"]


@pytest.mark.parametrize("name", COMMANDS)
def test_every_writing_command_refuses_an_output_overlapping_its_inputs(bench, tmp_path, name):
    arguments, tree = _commands(bench, tmp_path)[name]
    before = tree_hashes(tree)
    result = runner.invoke(app, arguments)
    assert result.exit_code == 2, result.output
    line = one_line_error(result, "output folder")
    assert "input" in line, line
    assert tree_hashes(tree) == before  # nothing written into, or over, the inputs


def test_a_model_bundle_is_never_an_output_folder(bench, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(bench["bundle"], other)
    save_png(tmp_path / "in" / "a.png")
    before = tree_hashes(other)
    for command in (["predict", str(bench["bundle"]), str(tmp_path / "in")],
                    ["evaluate", str(bench["bundle"]), "--on", "AB"], ["audit", str(bench["bundle"])]):
        result = runner.invoke(app, [*command, "--out", str(other)])
        assert result.exit_code == 2, result.output
        one_line_error(result, str(other), "model bundle")
    assert tree_hashes(other) == before


def test_a_run_folder_model_guards_its_bundle_and_files_and_a_composition_name_is_no_path(bench, monkeypatch):
    from unveil.cli.options import input_paths
    from unveil.io.outputs import OutputError, check_no_overlap

    run = bench["run"]
    paths = input_paths({"model": run}, (), models=("model",))
    check_no_overlap(run / "eval", paths)  # RUN/eval: a valid output folder beside the model
    for out in (run, run / "model", run / "model" / "eval", run / "splits.csv"):
        with pytest.raises(OutputError, match="input"):
            check_no_overlap(out, paths)
    monkeypatch.chdir(bench["root"])  # holds a folder named AB: --on AB still names the composition
    assert input_paths({"on": ["AB"], "data": [f"A=hospital-csv:{run}"]}, ("on", "data")) == [run]


HOLD = """
import sys, time
from pathlib import Path
import {module} as target
original = target.{name}
def slow(*args, **kwargs):
    Path(sys.argv[1]).write_text("started")
    time.sleep(float(sys.argv[2]))
    return original(*args, **kwargs)
target.{name} = slow
from unveil.cli import app
app(sys.argv[3:], prog_name="unveil")
"""


def _first_run(tmp_path: Path, module: str, name: str, arguments: list[str]) -> tuple[subprocess.Popen, Path]:
    """A first run in its own process, held inside ``module.name`` for a while (so it owns its folder)."""
    marker = tmp_path / "started"
    script = textwrap.dedent(HOLD.format(module=module, name=name))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "src"),
                                                        os.environ.get("PYTHONPATH", "")])}
    process = subprocess.Popen([sys.executable, "-c", script, str(marker), "4", *arguments], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.1)
    return process, marker


def test_two_trainings_into_one_folder_one_proceeds_one_is_refused(bench, tmp_path):
    out = tmp_path / "run"
    arguments = ["train", "AB", *roles(bench, "A", "B"), "--out", str(out), "--cache", str(bench["cache"]), *TRAIN]
    first, _ = _first_run(tmp_path, "unveil.training.run", "compose", arguments)
    second = runner.invoke(app, arguments[:-len(TRAIN)] + [*TRAIN[:5], "3", *TRAIN[6:]])  # another config
    assert second.exit_code == 2, second.output
    one_line_error(second, str(out), "another unveil run")
    stdout, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr
    epochs = [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(epochs) == 2 and len(set(epochs)) == 2  # the first run's two epochs, nothing of the second


def test_two_evaluations_into_one_folder_one_proceeds_one_is_refused(bench, tmp_path):
    out = tmp_path / "eval"
    arguments = ["evaluate", str(bench["bundle"]), "--on", "AB", "--resamples", "20", "--out", str(out)]
    first, _ = _first_run(tmp_path, "unveil.evaluation.evaluate", "evaluate_models", arguments)
    second = runner.invoke(app, [*arguments[:2], "--on", "AC", *roles(bench, "C"), *arguments[5:]])
    assert second.exit_code == 2, second.output
    one_line_error(second, str(out), "another unveil run")
    stdout, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr
    results = pd.read_csv(out / "results.csv")
    assert list(results["test_set"]) == ["AB"]  # the first run's result only
    assert not (out / ".unveil-partial").exists()


# --- class 6: faults named in one line -----------------------------------------------------------------

def test_atomic_writers_on_a_full_disk_raise_one_error_and_leave_no_temporary(small_disk):
    import torch

    from unveil.errors import DiskFullError
    from unveil.provenance import write_text_atomic
    from unveil.training.checkpoint import save_checkpoint

    fill(small_disk, 4096)
    with pytest.raises(DiskFullError, match="no space left") as raised:
        write_text_atomic(small_disk / "a.json", "x" * 100_000)
    assert str(small_disk / "a.json") in str(raised.value)
    with pytest.raises(DiskFullError, match="no space left") as raised:
        save_checkpoint(small_disk / "checkpoint.pt", {"weights": torch.zeros(100_000)})
    assert str(small_disk / "checkpoint.pt") in str(raised.value)
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler"]  # no temporary, no half file


def test_predict_on_a_full_disk_is_one_line_and_a_rerun_succeeds(bench, small_disk, tmp_path):
    for seed in range(8):
        save_png(tmp_path / "in" / f"x{seed}.png", seed, size=128)
    out = small_disk / "out"
    filler = fill(small_disk, 24_000)
    command = ["predict", str(bench["bundle"]), str(tmp_path / "in"), "--out", str(out)]
    result = runner.invoke(app, command)
    assert result.exit_code == 2, result.output
    one_line_error(result, str(out), "no space left")
    assert not (out / "predictions.csv").exists() and not (out / ".unveil-partial").exists()
    filler.unlink()
    again = runner.invoke(app, command)
    assert again.exit_code == 0, again.output
    assert len(pd.read_csv(out / "predictions.csv")) == 8


def test_preprocess_on_a_full_disk_is_one_line_and_a_rerun_succeeds(bench, small_disk):
    root = Path(bench["data"]["A"].root)
    cache = small_disk / "cache"
    filler = fill(small_disk, 20_000)
    command = ["preprocess", bench["data"]["A"].source, str(root), "--cache", str(cache), "--mask", "none",
               "--image-size", "64", "--workers", "1"]
    result = runner.invoke(app, command)
    assert result.exit_code == 2, result.output
    one_line_error(result, str(cache), "no space left")
    assert not list(cache.rglob("*.tmp")) and not list(cache.glob("manifest-*.csv"))
    filler.unlink()
    again = runner.invoke(app, command)
    assert again.exit_code == 0, again.output


def test_train_on_a_full_disk_is_one_line_and_a_rerun_succeeds(bench, small_disk):
    out = small_disk / "run"
    filler = fill(small_disk, 60_000)  # room for the split file, not for the checkpoint
    command = ["train", "AB", *roles(bench, "A", "B"), "--out", str(out), "--cache", str(bench["cache"]), *TRAIN]
    result = runner.invoke(app, command)
    assert result.exit_code == 2, result.output
    one_line_error(result, str(out), "no space left")
    assert not (out / "checkpoint.pt").exists() and not list(out.rglob("*.tmp"))
    filler.unlink()
    again = runner.invoke(app, command)
    assert again.exit_code == 0, again.output
    assert (out / "model" / "bundle.json").is_file()


@pytest.mark.parametrize("damage", ["truncated", "replaced"])
def test_a_damaged_ood_reference_is_one_line(bench, tmp_path, damage):
    import torch
    from safetensors.torch import save_file

    bundle = tmp_path / "model"
    shutil.copytree(bench["bundle"], bundle)
    weights = bundle / "ood.safetensors"
    if damage == "truncated":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    else:
        save_file({"other": torch.zeros(3)}, str(weights))
    save_png(tmp_path / "in" / "a.png")
    result = runner.invoke(app, ["predict", str(bundle), str(tmp_path / "in"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    one_line_error(result, str(weights), "out-of-distribution reference")


def test_an_edited_split_file_is_refused_by_name(bench, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(bench["run"], run, ignore=shutil.ignore_patterns("cache"))
    splits = run / "splits.csv"
    table = pd.read_csv(splits, dtype=str, keep_default_na=False)
    moved = table.index[table["split"] == "test"][0]
    table.loc[moved, "split"] = "train"  # one test image moved into training: a silent leak
    table.to_csv(splits, index=False, lineterminator="\n")
    result = runner.invoke(app, ["evaluate", str(run / "model"), "--on", "AB", "--resamples", "20",
                                 "--cache", str(bench["cache"])])
    assert result.exit_code == 2, result.output
    one_line_error(result, str(splits), "hash")


def test_a_changed_lung_model_is_refused_by_name(bench, tmp_path):
    from unveil.preprocess.cache import PreprocessSettings, resolve_settings
    from unveil.segmentation import default_model_path
    from unveil.training.bundle import DESCRIPTION_FILE

    lung = tmp_path / "lung" / "lung_unet.safetensors"
    lung.parent.mkdir()
    shutil.copy(default_model_path().with_suffix(".safetensors"), lung)
    shutil.copy(default_model_path().with_suffix(".json"), lung.with_suffix(".json"))
    bundle = tmp_path / "model"
    shutil.copytree(bench["bundle"], bundle)
    description = json.loads((bundle / DESCRIPTION_FILE).read_text())
    settings = resolve_settings(PreprocessSettings(size=32, model=str(lung)))
    description["preprocess"] = {**description["preprocess"], "mask": "segment", "model": str(lung),
                                 "model_sha256": settings.model_sha256, "convention": settings.convention}
    (bundle / DESCRIPTION_FILE).write_text(json.dumps(description))
    save_png(tmp_path / "in" / "a.png")
    command = ["predict", str(bundle), str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--no-evidence"]
    assert runner.invoke(app, command).exit_code == 0
    with lung.open("ab") as stream:
        stream.write(b"\0")  # another lung model under the recorded name
    result = runner.invoke(app, command)
    assert result.exit_code == 2, result.output
    one_line_error(result, str(lung), "lung model changed")
