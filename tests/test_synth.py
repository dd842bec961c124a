"""The synthetic benchmark: phantoms, findings, signatures, configuration, generation, evidence."""

import hashlib
import json
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from unveil.cli import app
from unveil.data.sources import load_source
from unveil.errors import UnveilError
from unveil.synth.config import SynthConfigError, load_config, parse_config
from unveil.synth.evidence import bias_gap
from unveil.synth.findings import finding_opacity
from unveil.synth.generate import BenchmarkFolderError, attach_truth, dataset_roots, generate, read_truth
from unveil.synth.phantom import render_anatomy, sample_anatomy
from unveil.synth.render import render_image
from unveil.synth.signature import (
    Acquisition,
    SignatureError,
    apply_acquisition,
    knob,
    sample_acquisition,
    validate_signature,
)


def phantom(seed=0, age="adult", view="PA", size=128):
    rng = np.random.default_rng(seed)
    return render_anatomy(sample_anatomy(rng, age, view), size, rng)


def test_phantom_has_two_lungs_inside_the_image_and_is_deterministic():
    image, geometry = phantom()
    assert image.dtype == np.float32 and image.min() >= 0.0 and image.max() <= 1.0
    assert geometry.right_lung.sum() > 500 and geometry.left_lung.sum() > 500
    assert not (geometry.right_lung & geometry.left_lung).any()
    lungs = geometry.lungs > 0.5
    # lungs are dark: aerated lung is darker than the soft tissue around it
    assert image[lungs].mean() < image[~lungs & (image > 0.2)].mean()
    again, _ = phantom()
    assert np.array_equal(image, again)


def test_heart_is_larger_on_ap_and_in_children():
    adult_pa = sample_anatomy(np.random.default_rng(1), "adult", "PA")
    adult_ap = sample_anatomy(np.random.default_rng(1), "adult", "AP")
    child_pa = sample_anatomy(np.random.default_rng(1), "pediatric", "PA")
    assert adult_ap.heart_width > adult_pa.heart_width and child_pa.heart_width > adult_pa.heart_width


@pytest.mark.parametrize("finding", ["covid", "bacterial", "viral", "pneumonia"])
def test_findings_live_inside_the_lungs(finding):
    _, geometry = phantom(2)
    opacity = finding_opacity(geometry, finding, 1.0, np.random.default_rng(0))
    assert opacity.sum() > 0
    assert np.all(opacity[geometry.lungs == 0] == 0)


def test_covid_is_bilateral_peripheral_and_basal_bacterial_is_one_sided():
    _, geometry = phantom(3, size=160)
    covid = finding_opacity(geometry, "covid", 1.0, np.random.default_rng(0))
    right, left = covid[geometry.right_lung].sum(), covid[geometry.left_lung].sum()
    assert min(right, left) > 0.3 * max(right, left)  # both lungs
    lungs = geometry.lungs > 0.5
    rows = np.nonzero(lungs.any(axis=1))[0]
    middle = (rows.min() + rows.max()) // 2
    assert covid[middle:][lungs[middle:]].mean() > 2 * covid[:middle][lungs[:middle]].mean()  # lower zones
    bacterial = finding_opacity(geometry, "bacterial", 1.0, np.random.default_rng(0))
    sides = bacterial[geometry.right_lung].sum(), bacterial[geometry.left_lung].sum()
    assert min(sides) == 0 and max(sides) > 0


def test_severity_scales_the_opacity():
    _, geometry = phantom(4)
    weak = finding_opacity(geometry, "covid", 0.2, np.random.default_rng(0)).sum()
    strong = finding_opacity(geometry, "covid", 1.0, np.random.default_rng(0)).sum()
    assert strong > 3 * weak > 0
    assert finding_opacity(geometry, "normal", 1.0, np.random.default_rng(0)).sum() == 0


def test_knobs_by_class_and_prevalence():
    spec = {"ecg": {"covid": 1.0, "default": 0.0}, "text": 1.0, "ap": 0.0}
    assert knob(spec, "ecg", "covid") == 1.0 and knob(spec, "ecg", "normal") == 0.0
    rng = np.random.default_rng(0)
    sick = [sample_acquisition(spec, "covid", rng) for _ in range(20)]
    well = [sample_acquisition(spec, "normal", rng) for _ in range(20)]
    assert all("ecg" in a.devices for a in sick) and not any("ecg" in a.devices for a in well)
    assert all(a.text and a.view == "PA" for a in sick + well)
    with pytest.raises(SignatureError, match="unknown knob"):
        validate_signature("x", {"colour": 1})
    with pytest.raises(SignatureError, match="range"):
        validate_signature("x", {"gamma": [1, 2, 3]})


def test_padding_moves_mask_with_the_image_and_collimation_blanks_borders():
    image, geometry = phantom(5)
    mask = geometry.lungs > 0.5
    padded, padded_mask = apply_acquisition(image, mask, Acquisition(noise=0.0, padding=0.1),
                                            np.random.default_rng(0))
    assert padded[:10].max() == 0 and not padded_mask[:10].any()
    assert abs(padded_mask.sum() - mask.sum() * 0.8**2) < 0.05 * mask.sum()
    shuttered, _ = apply_acquisition(image, mask, Acquisition(noise=0.0, collimation=(0.1, 0, 0, 0),
                                                              collimation_value=1.0), np.random.default_rng(0))
    assert np.all(shuttered[:12] == 1.0)


def test_render_image_upsamples_to_the_requested_size():
    image = render_image("covid", 0.8, {}, size=300, rng=np.random.default_rng(0))
    assert image.pixels.shape == (300, 300) and image.mask.shape == (300, 300) and image.mask.any()


def test_presets_load_and_bad_configs_are_named():
    paper, clean = load_config("paper"), load_config("clean")
    assert set(paper.datasets) == {"A", "B", "C", "D", "lungs"} == set(clean.datasets)
    assert paper.datasets["A"].classes == clean.datasets["A"].classes
    assert all(spec.signatures == ("neutral",) for spec in clean.datasets.values())
    assert paper.scaled_counts(0.1)["A"]["covid"] == 30
    bad = {"datasets": {"C": {"layout": "rsna", "classes": {"covid": 3}}}}
    with pytest.raises(SynthConfigError, match="cannot hold COVID-19"):
        parse_config(bad, "mine.yaml")
    with pytest.raises(SynthConfigError, match="undefined signature"):
        parse_config({"datasets": {"A": {"layout": "hospital-csv", "signatures": ["x"], "classes": {}}}}, "m")
    layout_error = "^m: datasets.A.layout: should be 'hospital-csv', .*; got 'tiff-folder'"
    with pytest.raises(SynthConfigError, match=layout_error):
        parse_config({"datasets": {"A": {"layout": "tiff-folder"}}}, "m")
    with pytest.raises(SynthConfigError, match="cannot read"):
        load_config("/nonexistent/config.yaml")


def _tree_hashes(root):
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small_benchmark(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "paper"
    config = replace(load_config("paper"), image_size=64)
    truth = generate(config, out, seed=7, scale=0.04)
    return config, out, truth


def test_generated_datasets_load_with_the_real_loaders(small_benchmark):
    config, out, truth = small_benchmark
    counts = config.scaled_counts(0.04)
    roots = dataset_roots(out)
    for name, (source, root) in roots.items():
        records = load_source(source, root).records
        assert len(records) == sum(counts[name].values()), name
        assert len(records) == int((truth["dataset"] == name).sum())
    a = load_source(*roots["A"]).records
    assert int((a["covid"] == 1).sum()) == counts["A"]["covid"]
    b = load_source(*roots["B"]).records
    assert b["finding"].value_counts().to_dict() == dict(counts["B"])
    c = load_source(*roots["C"]).records
    assert set(c["finding"]) == {"normal", "pneumonia"} and c["path"].str.endswith(".dcm").all()
    d = load_source(*roots["D"]).records
    assert int((d["covid"] == 1).sum()) == counts["D"]["covid"]
    lungs = load_source(*roots["lungs"]).records
    assert lungs["mask_path"].notna().all()


def test_truth_gives_every_image_a_mask_and_its_acquisition(small_benchmark):
    _, out, truth = small_benchmark
    full = read_truth(out)
    assert all(Image.open(p).size == (64, 64) for p in full["mask_path"][:5])
    assert {"view", "age_group", "text", "marker", "devices", "signature", "severity"} <= set(truth.columns)
    b = truth[truth["dataset"] == "B"]
    assert (b["age_group"] == "pediatric").all()
    records = attach_truth(load_source(*dataset_roots(out)["A"]).records, full)
    assert records["mask_path"].notna().all() and records["true_finding"].notna().all()


def test_same_seed_gives_byte_identical_output_whatever_the_workers(small_benchmark, tmp_path):
    config, out, _ = small_benchmark
    again = tmp_path / "again"
    generate(config, again, seed=7, scale=0.04, workers=2)
    assert _tree_hashes(out) == _tree_hashes(again)
    other = tmp_path / "other"
    generate(config, other, seed=8, scale=0.04)
    assert _tree_hashes(other) != _tree_hashes(out)
    with pytest.raises(BenchmarkFolderError, match="not empty"):
        generate(config, other, seed=8, scale=0.04)
    assert issubclass(BenchmarkFolderError, UnveilError) and issubclass(BenchmarkFolderError, FileExistsError)
    with pytest.raises(SynthConfigError, match="scale must be positive, got 0"):
        generate(config, tmp_path / "none", seed=8, scale=0)


def test_cli_generate_and_preview(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["synth", "generate", "--out", str(tmp_path / "b"), "--preset", "clean",
                                 "--scale", "0.02", "--image-size", "48", "--seed", "1"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "b" / "synth.meta.json").read_text())["seed"] == 1
    result = runner.invoke(app, ["synth", "preview", "--out", str(tmp_path / "p.png"), "--per-class", "1",
                                 "--tile", "48", "--image-size", "64"])
    assert result.exit_code == 0, result.output
    grid = Image.open(tmp_path / "p.png")
    assert grid.size[0] >= 4 * 48 and grid.size[1] >= 5 * 48
    result = runner.invoke(app, ["synth", "generate", "--out", str(tmp_path / "c"), "--preset", "nope.yaml"])
    assert result.exit_code == 2 and "nope.yaml" in result.output


@pytest.mark.slow
def test_bias_is_real_and_masking_the_lungs_removes_most_of_it(tmp_path):
    """The issue's figures: paper AB->AB beats AB->AC by >= 0.25; clean within 0.05; lungs-only
    masking shrinks the paper gap by at least half (pixel logistic regression, 128 px, scale 1.5)."""
    gaps = {}
    for preset in ("paper", "clean"):
        out = tmp_path / preset
        generate(replace(load_config(preset), image_size=128), out, seed=0, scale=1.5, workers=2)
        gaps[preset] = {masked: bias_gap(out, seed=0, mask_lungs=masked).gap for masked in (False, True)}
    assert gaps["paper"][False] >= 0.25
    assert abs(gaps["clean"][False]) <= 0.05
    assert gaps["paper"][True] <= 0.5 * gaps["paper"][False]
