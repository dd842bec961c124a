"""Docs that run: every code block of README.md, docs/*.md and the lung model card, executed.

One test per Markdown file runs its blocks in document order in a fresh working copy of the
repository (so ``runs/...`` and ``../shared/data`` resolve as they do for a reader at the repository
root): ``python`` blocks in one namespace per file, ``bash`` blocks line by line (an ``unveil ...``
line runs in this process through the CLI runner, which spares a 5-10 s interpreter start per
command; any other line, or one with pipes or substitutions, runs through ``bash``), ``yaml`` blocks
are parsed. A block that fails fails the test, with its file, line and output.

Marking a block (an HTML comment right before its fence; invisible in the rendered page):

- ``<!-- docs-test: skip REASON -->``: not run (slow, or needs data we do not have). It is still
  checked: Python is compiled, every ``unveil`` command is parsed against the CLI (command and option
  names, types, required options) and every ``make`` target must exist.
- ``<!-- docs-test: setup`` + shell lines + ``-->``: run before the block, for what it assumes exists
  (a model trained elsewhere in the docs, say).

Data: blocks run on tiny stand-ins declared in ``SUBSTITUTIONS`` below (applied to every block and
setup line before it runs): the datasets under ``/data/...`` become a small synthetic benchmark, and
long trainings become one tiny epoch. ``../shared/data`` is the real samples (found like
``tests/conftest.py`` does), with ``REAL_DATA_SUBSETS`` trimmed for time; a file whose blocks need
them is skipped, after its other blocks ran, when they are absent.

Run alone: ``pytest tests/test_docs.py`` (``-k README`` for one file).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pytest
import typer.main
import yaml
from typer.testing import CliRunner

from unveil.cli import app

from conftest import SHARED_DATA

REPO = Path(__file__).resolve().parents[1]
MARKDOWN = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")),
            REPO / "src" / "unveil" / "segmentation" / "weights" / "MODEL_CARD.md"]
SHELL = {"bash", "sh", "shell", "console"}

# (pattern, replacement, why): the tiny stand-ins. {data} is the synthetic benchmark generated once
# per session (`unveil synth generate --preset paper --scale 0.1 --image-size 64`: A-D in the real layouts).
SUBSTITUTIONS: list[tuple[str, str, str]] = [
    (r"(?<![\w.-])/data/corda\b", "{data}/A", "CORDA (role A): the synthetic hospital set, hospital-csv layout"),
    (r"(?<![\w.-])/data/chest_xray\b", "{data}/B", "ChestXRay (role B): synthetic, Kermany folders"),
    (r"(?<![\w.-])/data/rsna\b", "{data}/C", "RSNA (role C): synthetic, RSNA CSV + DICOM"),
    (r"(?<![\w.-])/data/cohen\b", "{data}/D", "COVID-ChestXRay (role D): synthetic, metadata.csv layout"),
    (r"(?<![\w.-])/data/new_xrays\b", "{data}/D/images", "new radiographs to score"),
    (r"--arch resnet18\b", "--arch conv8 --width 0.25 --image-size 32 --epochs 1",
     "a tiny model, one epoch, instead of a ResNet-18 at 224 px for 30 epochs"),
    (r"--scale 1(?=\s|$)", "--scale 0.1 --image-size 64", "a tenth of the synthetic benchmark at 64 px"),
    (r"--epochs 150\b", "--epochs 1 --samples-per-epoch 4 --image-size 64", "lung U-Net: one tiny epoch"),
    (r"\bepochs=6\b", "epochs=1", "Python examples: one epoch"),
]
# Real samples (../shared/data) a block may name, trimmed so the module stays within ~2 minutes.
REAL_DATA_SUBSETS = {"covid-chestxray": "every third row of metadata.csv (about 70 images)"}


@dataclass
class Block:
    """One fenced code block and what the Markdown says about it."""

    file: Path
    line: int
    language: str
    code: str
    skip: str | None = None
    setup: list[str] = field(default_factory=list)

    @property
    def where(self) -> str:
        return f"{self.file.relative_to(REPO)}:{self.line} ({self.language} block)"


FENCE = re.compile(r"^```([\w-]*)[^\n]*\n(.*?)^```[ \t]*$", re.M | re.S)
DIRECTIVE = re.compile(r"<!--\s*docs-test:\s*(\w+)(.*?)-->$", re.S)


def read_blocks(path: Path) -> list[Block]:
    """The fenced blocks of a Markdown file with the ``docs-test`` directives just before each."""
    text = path.read_text(encoding="utf-8")
    blocks = []
    for match in FENCE.finditer(text):
        block = Block(path, text.count("\n", 0, match.start()) + 1, match.group(1).lower(), match.group(2))
        before = text[:match.start()].rstrip()
        while before.endswith("-->") and (directive := DIRECTIVE.match(before, before.rfind("<!--"))):
            kind, body = directive.group(1), directive.group(2).strip()
            if kind == "skip":
                if not body:
                    raise AssertionError(f"{block.where}: `docs-test: skip` needs a reason")
                block.skip = body
            elif kind == "setup":
                block.setup = shell_lines(body) + block.setup
            else:
                raise AssertionError(f"{block.where}: unknown directive docs-test: {kind} (skip or setup)")
            before = before[:directive.start()].rstrip()
        blocks.append(block)
    return blocks


def shell_lines(code: str) -> list[str]:
    """Logical command lines: continuations joined, comments and blank lines dropped."""
    lines = []
    for line in code.replace("\\\n", " ").splitlines():
        tokens = shlex.shlex(line, posix=True, punctuation_chars=True)
        tokens.whitespace_split = True
        if list(tokens):  # comments only: nothing to run
            lines.append(line.strip())
    return lines


def substitute(code: str, data: Path) -> str:
    for pattern, replacement, _ in SUBSTITUTIONS:
        code = re.sub(pattern, replacement.replace("{data}", str(data)), code)
    return code


def split_command(line: str) -> list[str]:
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    return list(lexer)


OPERATORS = {"|", "||", "&", "&&", ";", "<", ">>", "(", ")"}
# Commands the harness refuses to run (they install a virtual environment, or run for minutes).
NEVER_RUN = {"make": "make targets install .venv and run for minutes", "pip": "installs packages",
             "torchrun": "starts several processes"}


def run_line(line: str, env: dict[str, str]) -> str | None:
    """Run one command line; None when it succeeded, else what went wrong."""
    tokens = split_command(line)
    if tokens[0] in NEVER_RUN:
        return f"`{line}`: {NEVER_RUN[tokens[0]]}; mark the block `<!-- docs-test: skip REASON -->`"
    if tokens[0] == "unveil" and not OPERATORS & set(tokens) and "$(" not in line and "`" not in line:
        target = None
        if ">" in tokens:  # `unveil ... > FILE`
            at = tokens.index(">")
            if at != len(tokens) - 2:
                return f"`{line}`: only `> FILE` at the end is supported"
            tokens, target = tokens[:at], tokens[at + 1]
        result = CliRunner().invoke(app, tokens[1:], prog_name="unveil")
        if result.exit_code != 0:
            trace = ""
            if result.exc_info and not isinstance(result.exception, SystemExit):
                import traceback

                trace = "".join(traceback.format_exception(*result.exc_info))
            return f"`{line}` exited {result.exit_code}:\n{result.output[-3000:]}{trace[-3000:]}"
        if target is not None:
            Path(target).write_text(result.stdout, encoding="utf-8")
        return None
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", line], env=env, capture_output=True, text=True,
                          timeout=300)
    if done.returncode != 0:
        return f"`{line}` exited {done.returncode}:\n{(done.stdout + done.stderr)[-3000:]}"
    return None


def check_statically(block: Block) -> list[str]:
    """For blocks that are not run: compile Python; parse every unveil command; find make targets."""
    if block.language == "python":
        compile(block.code, block.where, "exec")
        return []
    problems = []
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    for line in shell_lines(block.code) if block.language in SHELL else []:
        tokens = split_command(line)
        if tokens[0] == "make":
            problems += [f"{block.where}: `{line}`: no make target {t!r}" for t in tokens[1:]
                         if "=" not in t and not t.startswith("-") and not re.search(rf"^{re.escape(t)}:", makefile,
                                                                                       re.M)]
        elif tokens[0] == "unveil" and (error := parse_cli(tokens[1:])):
            problems.append(f"{block.where}: `{line}`: {error}")
    return problems


def parse_cli(args: list[str]) -> str | None:
    """Parse a command line as `unveil` would, without running it; the parser's complaint, if any."""
    args = args[:args.index(">")] if ">" in args else args
    command = typer.main.get_command(app)
    try:
        context = command.make_context("unveil", list(args))
        while hasattr(command, "commands"):
            rest = [*getattr(context, "_protected_args", []), *context.args]
            _, command, rest = command.resolve_command(context, rest)
            context = command.make_context(command.name, rest, parent=context)
    except Exception as error:  # the parser's usage errors (typer's vendored click)
        return f"{type(error).__name__}: {getattr(error, 'message', error)}"
    return None


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory) -> Path:
    """The stand-in for /data/...: the `paper` benchmark, a tenth of its size, at 64 px."""
    root = tmp_path_factory.mktemp("docs-data") / "bench"
    result = CliRunner().invoke(app, ["synth", "generate", "--out", str(root), "--preset", "paper", "--scale", "0.1",
                                      "--image-size", "64", "--seed", "0"])
    assert result.exit_code == 0, result.output
    return root


@pytest.fixture(scope="session")
def real_data(tmp_path_factory) -> Path | None:
    """../shared/data for the working copies: links to the real samples, REAL_DATA_SUBSETS trimmed."""
    if not SHARED_DATA.is_dir():
        return None
    shared = tmp_path_factory.mktemp("docs-shared")
    (shared / "data").mkdir()
    for entry in SHARED_DATA.iterdir():
        if entry.name not in REAL_DATA_SUBSETS:
            (shared / "data" / entry.name).symlink_to(entry)
    cohen = shared / "data" / "covid-chestxray"
    cohen.mkdir()
    for entry in (SHARED_DATA / "covid-chestxray").iterdir():
        if entry.name != "metadata.csv":
            (cohen / entry.name).symlink_to(entry)
    metadata = pd.read_csv(SHARED_DATA / "covid-chestxray" / "metadata.csv", dtype=str, keep_default_na=False)
    metadata.iloc[::3].to_csv(cohen / "metadata.csv", index=False)
    return shared


def working_copy(root: Path, real: Path | None) -> Path:
    """A copy of the repository (no VCS, venv or outputs) with ../shared beside it."""
    repo = root / "repo"
    shutil.copytree(REPO, repo, ignore=shutil.ignore_patterns(
        ".git", ".venv", "runs", "outputs", "__pycache__", ".pytest_cache", "*.egg-info", "build", "dist", ".whl",
        ".gl", ".ruff_cache", "shared"))
    if real is not None:
        (root / "shared").symlink_to(real)
    return repo


def environment(root: Path) -> dict[str, str]:
    """For lines run through bash: `unveil` is this interpreter on the sources under test."""
    bin_dir = root / "bin"
    bin_dir.mkdir()
    (bin_dir / "unveil").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m unveil.cli "$@"\n')
    (bin_dir / "unveil").chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "OMP_NUM_THREADS": "1",
            "MPLBACKEND": "Agg", "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}


def test_every_block_has_a_known_language_and_marks_parse():
    blocks = [block for path in MARKDOWN for block in read_blocks(path)]
    assert len(blocks) > 10
    unknown = [block.where for block in blocks if block.language not in {*SHELL, "python", "yaml", "text"}]
    assert not unknown, f"blocks without a language the docs test knows (python, bash, yaml, text): {unknown}"
    problems = [problem for block in blocks for problem in check_statically(block)]
    assert not problems, "\n".join(problems)


def test_static_check_catches_a_mistyped_option_and_a_missing_target(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("<!-- docs-test: skip slow -->\n```bash\nunveil train AB --data A=x:y --out o --epoch 3\n"
                    "make no-such-target\n```\n\n<!-- docs-test: setup\nmkdir -p runs\n-->\n```python\nx = 1\n```\n")
    skipped, plain = read_blocks(page)
    assert skipped.skip == "slow" and plain.skip is None and plain.setup == ["mkdir -p runs"]
    skipped.file = plain.file = REPO / "page.md"
    problems = check_statically(skipped)
    assert any("--epoch" in p for p in problems) and any("no-such-target" in p for p in problems)
    assert parse_cli(["train", "AB", "--data", "A=x:y", "--out", "o", "--epochs", "3"]) is None
    assert "--outt" in parse_cli(["data", "split", "chestxray", "x", "--outt", "y"])  # sub-commands too
    assert "No such command" in parse_cli(["data", "splitt"])
    assert "integer" in parse_cli(["train", "AB", "--data", "A=x:y", "--out", "o", "--epochs", "three"])


def test_a_failing_or_forbidden_line_is_reported(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    env = environment(tmp_path)
    assert "exited 2" in run_line("unveil data split no-such-source /nowhere --out x.csv", env)
    assert "exited 1" in run_line("test -e no-such-file", env)
    assert "mark the block" in run_line("make demo", env)
    assert run_line("unveil reproduce --show demo > demo.yaml", env) is None
    assert yaml.safe_load((tmp_path / "demo.yaml").read_text())["name"] == "demo"
    assert run_line("unveil --help | grep -q Usage", env) is None  # through bash: the wrapper on PATH
    assert substitute("--data B=chestxray:/data/chest_xray ../shared/data/chest_xray", Path("/x")) == \
        "--data B=chestxray:/x/B ../shared/data/chest_xray"


@pytest.mark.slow
@pytest.mark.parametrize("path", MARKDOWN, ids=lambda p: str(p.relative_to(REPO)))
def test_markdown_blocks_run(path, tmp_path, monkeypatch, synthetic_data, real_data):
    blocks = read_blocks(path)
    repo = working_copy(tmp_path, real_data)
    env = environment(tmp_path)
    monkeypatch.chdir(repo)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    namespace: dict[str, object] = {"__name__": "__docs__"}
    failures: list[str] = []
    needs_real: list[str] = []
    for block in blocks:
        if block.skip is not None:
            failures += check_statically(block)
            continue
        code = substitute(block.code, synthetic_data)
        setup = [substitute(line, synthetic_data) for line in block.setup]
        python_after_skip = block.language == "python" and any(w.endswith("(python block)") for w in needs_real)
        if real_data is None and ("../shared/data" in code + "\n".join(setup) or python_after_skip):
            needs_real.append(block.where)  # (a Python block shares the namespace of the ones before it)
            continue
        started = time.perf_counter()
        try:
            for line in setup:
                if error := run_line(line, env):
                    raise AssertionError(f"setup: {error}")
            if block.language == "python":
                exec(compile(code, block.where, "exec"), namespace)
            elif block.language in SHELL:
                for line in shell_lines(code):
                    if error := run_line(line, env):
                        raise AssertionError(error)
            elif block.language == "yaml":
                yaml.safe_load(code)
        except Exception as error:  # noqa: BLE001 - every failure is reported with the block it came from
            failures.append(f"{block.where}: {type(error).__name__}: {error}")
        print(f"{block.where}: {time.perf_counter() - started:.1f} s")  # shown with -s or on failure
    assert not failures, "\n\n".join(failures)
    if needs_real:
        pytest.skip(f"real data {SHARED_DATA} absent; not run: {', '.join(needs_real)}")
