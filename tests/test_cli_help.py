"""`--help` of every command is readable at 80 columns (no option name cut); `reproduce --show`."""

from __future__ import annotations

from typing import Any

import pytest
import typer.main
from typer.testing import CliRunner

from unveil.cli import app


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
    ("--max-pixels", ["segment", "preprocess", "predict", "data check"]),
])
def test_shared_options_are_one_option_wherever_they_appear(flag, commands):
    """Every command that makes lung masks (or decodes user images) takes the same option: same name,
    type, default and help text."""
    by_name = {" ".join(path): command for path, command in COMMANDS}
    found = {name: _option(by_name[name], flag) for name in commands}
    assert all(found.values()), [name for name, option in found.items() if option is None]
    described = {(str(o.bare_type), o.default, o.help) for o in found.values()}
    assert len(described) == 1, described
