"""`--help` of every command is readable at 80 columns (no option name cut); the shared options of
unveil.cli.options keep one name, type and help everywhere; `reproduce --show`; user errors vs bugs."""

from __future__ import annotations

import os
import subprocess
import sys
import typing
from pathlib import Path
from typing import Any

import pytest
import typer.main
from typer.models import OptionInfo
from typer.testing import CliRunner

from unveil.cli import app
from unveil.cli import options as shared_options


def _commands(group: Any, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    """(command path, command) for every command and group below ``group``."""
    found = []
    for name, command in sorted(group.commands.items()):
        found.append(((*path, name), command))
        if hasattr(command, "commands"):
            found.extend(_commands(command, (*path, name)))
    return found


COMMANDS = _commands(typer.main.get_command(app))


def test_every_command_is_walked():
    names = {" ".join(path) for path, _ in COMMANDS}
    assert {"train", "evaluate", "audit", "data compose", "lungs evaluate", "synth generate"} <= names


@pytest.mark.parametrize("path,command", [((), None), *COMMANDS], ids=lambda v: " ".join(v) if isinstance(v, tuple)
                         else None)
def test_help_at_80_columns_names_every_option_whole(path, command):
    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "80", "TERMINAL_WIDTH": "80"})
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert max(len(line) for line in lines) <= 80, result.output
    assert "…" not in result.output, result.output
    words = set(result.output.replace(",", " ").replace("/", " ").split())
    for param in (command.params if command is not None else typer.main.get_command(app).params):
        for name in [*param.opts, *param.secondary_opts]:
            if name.startswith("-"):
                assert name in words, f"{' '.join(path)} --help: option {name} missing or cut\n{result.output}"


def test_reproduce_show_prints_a_shipped_experiment_to_copy(tmp_path):
    from unveil.experiments import experiment_path

    shown = CliRunner().invoke(app, ["reproduce", "--show", "paper"])
    assert shown.exit_code == 0 and shown.stdout == experiment_path("paper").read_text(encoding="utf-8")
    missing = CliRunner().invoke(app, ["reproduce", "--show", str(tmp_path / "nope.yaml")])
    assert missing.exit_code == 2 and "nope.yaml" in missing.output and "shipped: demo, paper" in missing.output
    no_out = CliRunner().invoke(app, ["reproduce", "demo"])
    assert no_out.exit_code == 2 and "--out" in no_out.output


def _option(command: Any, flag: str) -> Any:
    return next((p for p in command.params if flag in getattr(p, "opts", [])), None)


@pytest.mark.parametrize("flag,commands", [
    ("--lung-convention", ["segment", "preprocess", "pretrain", "train", "audit", "predict"]),
    ("--lung-model", ["segment", "preprocess", "lungs evaluate", "predict"]),
    ("--max-pixels", ["segment", "preprocess", "predict", "data check"]),
    ("--recipes", ["data compose", "train", "evaluate", "audit"]),
    ("--option", ["data check", "data split", "data compose", "preprocess", "pretrain", "train", "evaluate",
                  "audit"]),
    ("--track", ["pretrain", "train", "lungs train", "reproduce"]),
    ("--tracking-uri", ["pretrain", "train", "lungs train", "reproduce"]),
])
def test_shared_options_are_one_option_wherever_they_appear(flag, commands):
    """Every command that makes lung masks, decodes user images or reads datasets takes the same option:
    same name, type, default and help text."""
    by_name = {" ".join(path): command for path, command in COMMANDS}
    found = {name: _option(by_name[name], flag) for name in commands}
    assert all(found.values()), [name for name, option in found.items() if option is None]
    described = {(o.bare_type(), o.multiple, o.help) for o in found.values()}
    assert len(described) == 1, described


def _shared_declarations() -> dict[str, tuple[set[str], str]]:
    """Alias name -> (option names, help) of every Annotated typer option declared in unveil.cli.options."""
    declared = {}
    for name, value in vars(shared_options).items():
        if typing.get_origin(value) is not typing.Annotated:
            continue
        for info in value.__metadata__:
            if isinstance(info, OptionInfo):  # in Annotated, typer takes a first string as the first name
                decls = [info.default, *info.param_decls] if isinstance(info.default, str) else info.param_decls
                names = {part for decl in decls for part in decl.split("/")}
                declared[name] = (names, info.help)
    return declared


SHARED = _shared_declarations()


def test_the_shared_options_are_found():
    assert {"DataOption", "LoaderOption", "RecipesOption", "SeedOption", "WorkersOption", "CacheOption",
            "LungModelOption", "LungConventionOption", "MaxPixelsOption", "DeviceOption", "ThresholdOption",
            "ThresholdRuleOption", "MaskOption", "ImageSizeOption", "LearningRateOption"} <= set(SHARED)


@pytest.mark.parametrize("alias", sorted(SHARED))
def test_a_shared_option_has_one_name_type_and_help_everywhere(alias):
    """Any command option that uses a shared option's name IS that option: all its names, its type and
    its help text are the declared ones (a sibling command cannot drift, nor reuse the name for another
    meaning)."""
    names, help_text = SHARED[alias]
    uses = [(" ".join(path), param) for path, command in COMMANDS for param in command.params
            if names & {*param.opts, *param.secondary_opts}]
    assert uses, f"{alias} ({', '.join(sorted(names))}) is used by no command"
    for where, param in uses:
        assert {*param.opts, *param.secondary_opts} == names, (where, param.opts, param.secondary_opts)
        assert param.help == help_text, (where, param.help)
    kinds = {(param.bare_type(), param.multiple, param.is_flag) for _, param in uses}
    assert len(kinds) == 1, (alias, kinds)


def test_only_commands_that_draw_random_numbers_take_a_seed():
    with_seed = {" ".join(path) for path, command in COMMANDS if _option(command, "--seed") is not None}
    assert with_seed == {"data split", "data compose", "synth generate", "synth preview", "synth evidence",
                         "lungs train", "pretrain", "train", "evaluate", "compare", "audit", "reproduce", "demo"}


def test_renamed_options_are_gone():
    """One name per concept: no command keeps an old name."""
    every = {name for _, command in COMMANDS for p in command.params for name in [*p.opts, *p.secondary_opts]}
    assert not every & {"--masks", "--segmenter", "--model", "--size", "--lr"}


def test_a_user_error_is_one_line_and_exit_2(monkeypatch, tmp_path):
    from unveil.reports import ReportError

    def refuse(results, out=None):
        raise ReportError(f"{results}: no results store")

    monkeypatch.setattr("unveil.reports.write_report", refuse)
    result = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit)
    assert result.output.strip() == f"error: {tmp_path}: no results store"
    malformed = CliRunner().invoke(app, ["data", "check", "hospital-csv", str(tmp_path), "-o", "label_column"])
    assert malformed.exit_code == 2 and malformed.output.strip() == \
        "error: --option expects KEY=VALUE, got 'label_column'"


def test_a_partial_failure_exits_1_with_one_line(monkeypatch, tmp_path):
    from unveil.preprocess import cache

    def fail(*args, **kwargs):
        raise cache.PreprocessError("2 image(s) could not be pre-processed")

    monkeypatch.setattr(cache, "preprocess_records", fail)
    monkeypatch.setattr("unveil.data.sources.load_source", lambda *a, **k: type("Load", (), {"records": None})())
    (tmp_path / "data").mkdir()  # the cache lies outside the dataset root (inside it is refused: an input)
    result = CliRunner().invoke(app, ["preprocess", "chestxray", str(tmp_path / "data"), "--cache",
                                      str(tmp_path / "c")])
    assert result.exit_code == 1 and result.output.strip() == "error: 2 image(s) could not be pre-processed"


def test_a_bug_keeps_its_traceback(monkeypatch, tmp_path):
    """Anything but an UnveilError is a bug in unveil: not turned into a one-line error."""
    def broken(results, out=None):
        raise KeyError("a bug")

    monkeypatch.setattr("unveil.reports.write_report", broken)
    result = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert isinstance(result.exception, KeyError) and "error:" not in result.output
    script = ("import unveil.reports as r\n"
              "def broken(results, out=None): raise KeyError('a bug')\n"
              "r.write_report = broken\n"
              "from unveil.cli import main\n"
              "main()\n")
    run = subprocess.run([sys.executable, "-c", script, "report", str(tmp_path)], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")})
    assert run.returncode == 1 and "Traceback" in run.stderr and "KeyError: 'a bug'" in run.stderr, run.stderr


def _hospital_csv(root: Path) -> Path:
    """A hospital CSV whose columns are not the loader's defaults (file, pid, diagnosis)."""
    from PIL import Image

    root.mkdir()
    lines = ["file,pid,diagnosis"]
    for i in range(6):
        Image.new("L", (8, 8), i).save(root / f"img{i}.png")
        lines.append(f"img{i}.png,P{i},{'positive' if i < 3 else 'negative'}")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return root


HOSPITAL_OPTIONS = ["-o", "path_column=file", "-o", "patient_column=pid", "-o", "label_column=diagnosis"]


def test_evaluate_and_audit_pass_loader_options_to_test_sets_and_roles(monkeypatch, tmp_path):
    """-o KEY=VALUE reaches the --on SOURCE:PATH test sets, -o ROLE.KEY=VALUE the role bound by --data."""
    from unveil.evaluation import EvaluationError

    seen = {}

    def capture(*args, **kwargs):
        seen.update(kwargs)
        raise EvaluationError("captured")

    monkeypatch.setattr("unveil.evaluation.evaluate.evaluate_models", capture)
    monkeypatch.setattr("unveil.audit.audit", capture)
    common = [*HOSPITAL_OPTIONS, "--data", "C=rsna:/data/rsna", "-o", "C.csv=labels.csv"]
    for command in (["evaluate", str(tmp_path), "--on", "hospital-csv:/x"],
                    ["audit", str(tmp_path), "--out", str(tmp_path / "o"), "--on", "hospital-csv:/x"]):
        seen.clear()
        result = CliRunner().invoke(app, [*command, *common])
        assert result.exit_code == 2 and "error: captured" in result.output, result.output
        assert seen["options"] == {"path_column": "file", "patient_column": "pid", "label_column": "diagnosis"}
        spec = seen["data"]["C"]
        assert (spec.source, spec.root, spec.options) == ("rsna", "/data/rsna", {"csv": "labels.csv"})
    unbound = CliRunner().invoke(app, ["evaluate", str(tmp_path), "--on", "AB", "-o", "B.csv=x.csv"])
    assert unbound.exit_code == 2 and "role(s) B that no --data ROLE=... binds" in unbound.output


def test_a_hospital_csv_with_its_own_columns_is_a_test_set(tmp_path):
    from unveil.data.sources import DatasetLayoutError
    from unveil.evaluation.evaluate import build_test_set

    root = _hospital_csv(tmp_path / "hospital")
    test_set = build_test_set(f"hospital-csv:{root}", {}, seed=0, options={
        "path_column": "file", "patient_column": "pid", "label_column": "diagnosis"})
    assert len(test_set.records) == 6 and test_set.records["covid"].sum() == 3
    with pytest.raises(DatasetLayoutError, match="no column"):  # the loader's defaults do not fit this CSV
        build_test_set(f"hospital-csv:{root}", {}, seed=0)
