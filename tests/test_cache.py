"""`unveil preprocess`: content-addressed cache, reruns, settings changes, failures, CLI."""

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from unveil.cli import app
from unveil.data.sources import load_source
from unveil.preprocess.cache import (
    PreprocessError,
    PreprocessSettings,
    PreprocessSettingsError,
    load_cached,
    preprocess_records,
    resolve_settings,
)
from unveil.segmentation import default_model_path
from unveil.synth.config import load_config
from unveil.synth.generate import generate

runner = CliRunner()


@pytest.fixture(scope="module")
def lungs(tmp_path_factory):
    """A small Shenzhen-layout set with true masks (synthetic)."""
    out = tmp_path_factory.mktemp("bench")
    config = load_config("clean")
    lungs = replace(config.datasets["lungs"], classes={"normal": 6})
    config = replace(config, image_size=64, datasets={"lungs": lungs})
    generate(config, out, seed=0)
    return out / "lungs"


def test_cache_is_filled_then_hit_and_images_are_masked(lungs, tmp_path):
    records = load_source("shenzhen", lungs).records
    settings = PreprocessSettings(size=32, mask="truth")
    first = preprocess_records(records, tmp_path / "cache", settings)
    assert first.counts() == {"processed": 6}
    second = preprocess_records(records, tmp_path / "cache", settings, workers=2)
    assert second.counts() == {"hit": 6}
    assert first.manifest["cache_path"].tolist() == second.manifest["cache_path"].tolist()
    image = load_cached(first.manifest["cache_path"][0])
    assert image.shape == (32, 32) and image.min() == 0.0 and image.max() == pytest.approx(1.0, abs=1e-4)
    assert image[0, 0] < 1e-3  # outside the lungs: masked out (up to the blur's far tail)
    assert 0.1 < first.manifest["lung_fraction"][0] < 0.6


def test_a_settings_change_never_reuses_files(lungs, tmp_path):
    records = load_source("shenzhen", lungs).records
    a = preprocess_records(records, tmp_path, PreprocessSettings(size=32, mask="truth"))
    b = preprocess_records(records, tmp_path, PreprocessSettings(size=32, mask="truth", blur_radius=1.0))
    c = preprocess_records(records, tmp_path, PreprocessSettings(size=32, mask="none", equalize="clahe"))
    assert b.counts() == {"processed": 6} and c.counts() == {"processed": 6}
    assert not set(a.manifest["cache_path"]) & set(b.manifest["cache_path"])
    assert len({a.manifest_path, b.manifest_path, c.manifest_path}) == 3


def test_failures_are_named_skipped_and_strict_fails(lungs, tmp_path):
    records = load_source("shenzhen", lungs).records
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    extra = records.iloc[:1].assign(record_id="x/broken.png", path=str(broken))
    table = pd.concat([records, extra], ignore_index=True)
    report = preprocess_records(table, tmp_path / "cache", PreprocessSettings(size=32, mask="truth"))
    assert report.counts() == {"processed": 6, "failed": 1}
    assert "broken.png" in report.failures[0]
    with pytest.raises(PreprocessError, match="broken.png"):
        preprocess_records(table, tmp_path / "cache", PreprocessSettings(size=32, mask="truth"), strict=True)
    no_mask = records.assign(mask_path=None)
    report = preprocess_records(no_mask.iloc[:1], tmp_path / "c2", PreprocessSettings(size=32, mask="truth"))
    assert "no mask_path" in report.failures[0]


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="equalize"):
        resolve_settings(PreprocessSettings(equalize="magic"))
    with pytest.raises(PreprocessSettingsError, match="not found"):
        resolve_settings(PreprocessSettings(mask="segment", model="/nowhere/model.safetensors"))


def test_preprocess_into_a_log_file_prints_lines_not_a_bar(lungs, tmp_path):
    """stderr redirected (a log, CI, Slurm): time-stamped start, interval and end lines; no tqdm bar."""
    import os
    import re
    import subprocess
    import sys

    log = tmp_path / "preprocess.log"
    env = {**os.environ, "UNVEIL_PROGRESS_INTERVAL": "0.01"}
    with log.open("w") as stream:
        done = subprocess.run([sys.executable, "-m", "unveil.cli", "preprocess", "shenzhen", str(lungs), "--cache",
                               str(tmp_path / "cache"), "--image-size", "64", "--workers", "1"], stderr=stream,
                              stdout=subprocess.PIPE, env=env, timeout=300)
    text = log.read_text()
    assert done.returncode == 0, text
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"
    assert re.search(stamp + r" preprocess: started \(6 img\)", text)
    assert re.search(stamp + r" preprocess: done, 6 img in \d+ s", text)
    assert "\r" not in text and "img/s]" not in text


@pytest.mark.skipif(not default_model_path().is_file(), reason="shipped lung model not built")
def test_cli_preprocess_with_the_shipped_segmenter(lungs, tmp_path):
    result = runner.invoke(app, ["preprocess", "shenzhen", str(lungs), "--cache", str(tmp_path / "cache"),
                                 "--image-size", "64", "--workers", "1"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["counts"] == {"processed": 6} and document["failed"] == []
    manifest = pd.read_csv(document["manifest"])
    assert (manifest["lung_fraction"] > 0.05).all()
    settings = json.loads(next((tmp_path / "cache").glob("settings-*.json")).read_text())
    assert len(settings["model_sha256"]) == 64
    assert np.isfinite(manifest["lung_fraction"]).all()


@pytest.mark.skipif(not default_model_path().is_file(), reason="shipped lung model not built")
def test_the_lung_convention_is_resolved_checked_and_keyed(lungs, tmp_path):
    default = resolve_settings(PreprocessSettings(mask="segment"))
    described = json.loads(default_model_path().with_suffix(".json").read_text())
    assert default.convention == described["default_convention"]
    keys = {c: resolve_settings(PreprocessSettings(mask="segment", convention=c)).key()
            for c in described["conventions"]}
    assert len(set(keys.values())) == len(described["conventions"]) >= 2  # one cache entry per convention
    assert keys[default.convention] == default.key()  # the default, named or not, is the same cache entry
    assert resolve_settings(PreprocessSettings(mask="none", convention="full")).convention is None
    with pytest.raises(ValueError, match="lung convention must be one of .*'anatomic'"):
        resolve_settings(PreprocessSettings(mask="segment", convention="anatomic"))
    masks = {}
    for convention in described["conventions"]:
        result = runner.invoke(app, ["preprocess", "shenzhen", str(lungs), "--cache", str(tmp_path / "cache"),
                                     "--image-size", "64", "--workers", "1", "--lung-convention", convention])
        assert result.exit_code == 0, result.output
        manifest = pd.read_csv(json.loads(result.stdout)["manifest"])
        masks[convention] = np.stack([np.asarray(Image.open(p)) for p in manifest["mask_path"]])
        settings = json.loads(next(p for p in (tmp_path / "cache").glob("settings-*.json")
                                   if json.loads(p.read_text())["convention"] == convention).read_text())
        assert settings["convention"] == convention
    visible, full = masks["visible"] > 0, masks["full"] > 0
    assert (visible != full).any()  # the convention reaches the segmenter: the masks differ
    result = runner.invoke(app, ["preprocess", "shenzhen", str(lungs), "--cache", str(tmp_path / "cache"),
                                 "--lung-convention", "anatomic"])
    assert result.exit_code == 2 and "anatomic" in result.output
