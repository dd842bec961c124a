"""The install paths: the Makefile's CPU-only install takes the torch and torchvision that pyproject.toml pins."""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _pins() -> dict[str, str]:
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["dependencies"]
    return dict(d.split("==") for d in dependencies if d.startswith(("torch==", "torchvision==")))


def test_the_cpu_install_takes_the_pinned_torch_from_the_cpu_index(tmp_path):
    dry = subprocess.run(["make", "-n", "-C", str(ROOT), "install", f"VENV={tmp_path / 'venv'}",
                          "TORCH_INDEX=https://download.pytorch.org/whl/cpu"], capture_output=True, text=True)
    assert dry.returncode == 0, dry.stderr
    [line] = [line for line in dry.stdout.splitlines() if "--index-url" in line]
    assert "--index-url https://download.pytorch.org/whl/cpu" in line
    assert dict(re.findall(r"(torch|torchvision)==(\S+)", line)) == _pins() == {"torch": "2.14.1",
                                                                                "torchvision": "0.29.1"}
    lines = dry.stdout.splitlines()
    assert lines.index(line) < next(i for i, text in enumerate(lines) if "-e '.[dev]'" in text)  # torch first


def test_the_default_install_is_unchanged(tmp_path):
    dry = subprocess.run(["make", "-n", "-C", str(ROOT), "install", f"VENV={tmp_path / 'venv'}"],
                         capture_output=True, text=True)
    assert dry.returncode == 0, dry.stderr
    assert "--index-url" not in dry.stdout and f"{tmp_path / 'venv'}/bin/pip install --quiet -e '.[dev]'" in dry.stdout
    cpu = subprocess.run(["make", "-n", "-C", str(ROOT), "install-cpu", f"VENV={tmp_path / 'venv'}"],
                         capture_output=True, text=True)
    assert "TORCH_INDEX=https://download.pytorch.org/whl/cpu" in cpu.stdout
