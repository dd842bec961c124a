"""Bias audit: probes, occlusion, saliency, feature maps, and the acceptance on the synthetic benchmark."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from unveil.audit import AuditThresholds, audit
from unveil.audit.bootstrap import patient_bootstrap_mean
from unveil.audit.embedding import tsne_map
from unveil.audit.occlusion import occlude, occlusion_masks
from unveil.audit.probes import linear_probe
from unveil.audit.saliency import lung_saliency_fraction
from unveil.cli import app
from unveil.data.spec import DataSpec
from unveil.preprocess.cache import PreprocessSettings
from unveil.training import TrainConfig, train


def test_occlusion_hides_the_grown_lungs_only():
    masks = np.zeros((1, 9, 9), dtype=bool)
    masks[0, 4, 4] = True
    grown = occlusion_masks(masks, dilation=1)
    assert grown.sum() == 5 and grown[0, 3, 4] and not grown[0, 3, 3]
    images = torch.full((1, 1, 9, 9), 200, dtype=torch.uint8)
    hidden = occlude(images, grown, fill=90)
    assert (hidden[0, 0][torch.from_numpy(grown[0])] == 90).all() and (hidden[0, 0][~torch.from_numpy(grown[0])]
                                                                       == 200).all()
    assert images.max() == 200  # the input is not modified


def test_lung_saliency_fraction():
    maps = np.zeros((2, 4, 4))
    maps[0, :2] = 1.0  # top half salient
    masks = np.zeros((2, 4, 4), dtype=bool)
    masks[:, :1] = True  # top quarter is "lung"
    fraction = lung_saliency_fraction(maps, masks)
    assert fraction[0] == pytest.approx(0.5) and np.isnan(fraction[1])


def test_patient_bootstrap_mean_resamples_patients():
    values = np.array([1.0, 1.0, 1.0, 0.0, np.nan])
    groups = np.array(["a", "a", "a", "b", "b"])
    mean, low, high = patient_bootstrap_mean(values, groups, resamples=500, seed=0)
    assert mean == pytest.approx(0.75) and low == 0.0 and high == 1.0  # a resample may hold only a or only b
    assert patient_bootstrap_mean(values, groups, resamples=500, seed=0) == (mean, low, high)


def test_linear_probe_reads_a_signal_and_not_noise():
    rng = np.random.default_rng(0)
    target = np.repeat([0, 1], 60)
    groups = np.array([f"p{i // 2}" for i in range(120)])  # two images per patient
    signal = rng.normal(size=(120, 16)) + target[:, None] * 1.5
    strong = linear_probe(signal, target, groups, name="s", negative="A", positive="B", resamples=200)
    assert strong.evaluation.metrics["balanced_accuracy"].value > 0.9
    assert strong.evaluation.patients == 60
    noise = linear_probe(rng.normal(size=(120, 16)), target, groups, name="n", negative="A", positive="B",
                         resamples=200)
    metric = noise.evaluation.metrics["balanced_accuracy"]
    assert abs(metric.value - 0.5) < 0.15 and metric.low < 0.5 < metric.high
    with pytest.raises(ValueError, match="at least 2 patients"):
        linear_probe(signal[:3], np.array([0, 0, 1]), np.array(["a", "b", "c"]), name="x", negative="A",
                     positive="B")


def test_tsne_map_is_seeded():
    features = np.random.default_rng(0).normal(size=(40, 8))
    first, again = tsne_map(features, seed=3), tsne_map(features, seed=3)
    assert first.shape == (40, 2) and np.allclose(first, again)
    with pytest.raises(ValueError, match="at least 5"):
        tsne_map(features[:3])


# --- acceptance: the paper preset's AB model is flagged, the clean one is not -----------------------

ACCEPTANCE = TrainConfig(architecture="conv8", width=0.5, image_size=64, epochs=12, batch_size=32)


def _audited(preset: str, root, seed: int = 0):
    from unveil.synth.config import load_config
    from unveil.synth.generate import dataset_roots, generate

    bench = root / preset
    generate(replace(load_config(preset), image_size=128), bench, seed=seed, scale=0.6)
    data = {name: DataSpec(source, path) for name, (source, path) in dataset_roots(bench).items()}
    run = train("AB", {"A": data["A"], "B": data["B"]}, root / f"{preset}-AB", config=replace(ACCEPTANCE, seed=seed),
                preprocess=PreprocessSettings(mask="none"), cache=root / "cache")
    # the model's own test split (AB) is audited by default; D (another hospital, COVID+ and COVID-, the whole
    # dataset) is the external set of the transfer verdict
    external = f"{data['D'].source}:{data['D'].root}"
    result = audit(run.bundle, [external], root / f"{preset}-audit", cache=root / "cache", seed=seed, resamples=300,
                   thresholds=AuditThresholds(min_images=5), saliency_samples=1)
    return run, result


def _verdict(result, test: str, subject: str = ""):
    found = [v for v in result.verdicts if v.test == test and v.subject.startswith(subject)]
    assert found, f"no {test} verdict in {[v.test for v in result.verdicts]}"
    return found[0]


@pytest.mark.slow
def test_acceptance_paper_is_flagged_clean_is_not(tmp_path):
    _, paper = _audited("paper", tmp_path)
    own = ("chestxray (test split of AB)", "hospital-csv (test split of AB)")  # the model's own sources
    probe = next(p for p in paper.figures["probes"] if p["name"] == "source COVID-"
                 and {p["negative"], p["positive"]} == set(own))
    assert probe["balanced_accuracy"]["value"] >= 0.9  # the measure the source-probe verdict reads
    assert _verdict(paper, "source probe", " vs ".join(own)).flagged
    assert _verdict(paper, "lung occlusion").flagged
    assert _verdict(paper, "transfer (AUC)").flagged  # D, another hospital without B's signature

    _, clean = _audited("clean", tmp_path)
    assert not _verdict(clean, "source probe", " vs ".join(own)).flagged
    assert not _verdict(clean, "lung occlusion").flagged
    transfer = [v for v in clean.verdicts if v.test.startswith("transfer") or v.test == "below chance"]
    assert len(transfer) == 3 and not any(v.flagged for v in transfer), transfer

    out = tmp_path / "paper-audit"
    document = json.loads((out / "audit.json").read_text())
    assert document["flagged"] >= 2 and {"tsne_by_source", "tsne_by_label"} <= set(document["files"])
    assert (out / "tsne_by_source.png").stat().st_size > 1000 and list((out / "saliency").glob("*.png"))
    assert "| source probe |" in (out / "audit.md").read_text()
    measures = {v["test"]: v["measure"] for v in document["verdicts"]}
    assert measures["lung occlusion"].startswith("ROC AUC") and measures["source probe"].startswith("balanced")
    assert measures["saliency in lungs"].startswith("ratio") and "{" not in (out / "audit.md").read_text()
    images = pd.read_csv(out / "audit_images.csv")
    assert {"probability", "probability_lungs_hidden", "label"} <= set(images.columns)
    assert set(images["label"]) <= {0, 1}

    # a rerun into the same folder (other samples) leaves exactly its own overlays
    again = audit(tmp_path / "paper-AB", ["AB"], out, cache=tmp_path / "cache", seed=5, resamples=50,
                  thresholds=AuditThresholds(min_images=5), saliency_samples=2)
    assert sorted(map(str, (out / "saliency").glob("*.png"))) == sorted(again.files["saliency_overlays"])
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_verdicts_name_their_measure_and_print_no_raw_dict(tmp_path):
    from unveil.audit.outputs import audit_markdown
    from unveil.audit.run import AuditResult
    from unveil.audit.suite.source_probes import probe_verdict as _probe_verdict

    rng = np.random.default_rng(0)
    target = np.arange(40) % 2
    features = rng.normal(size=(40, 4)) + target[:, None]
    probe = linear_probe(features, target, np.arange(40).astype(str), name="source COVID-", negative="hospital-csv",
                         positive="chestxray", resamples=20)
    verdict = _probe_verdict(probe, AuditThresholds(), "COVID-")
    assert verdict.measure.startswith("balanced accuracy")
    assert "{" not in verdict.suggests and "hospital-csv: 20 images, chestxray: 20 images" in verdict.suggests
    result = AuditResult([verdict], {"images": 40, "patients": 40, "by_source": {"hospital-csv": 20, "chestxray": 20}})
    text = audit_markdown(result, tmp_path)
    assert "| test | subject | measure | value [95 % CI] |" in text and "| balanced accuracy (linear probe" in text
    assert "{" not in text


def test_overlay_is_drawn_on_the_original_radiograph_with_a_scale(tmp_path):
    from PIL import Image

    from unveil.audit.outputs import _replace_folder
    from unveil.explain.saliency import display_image, save_overlay

    model_input = np.full((32, 32), 100, dtype=np.uint8)
    saliency = np.zeros((32, 32), dtype=np.float32)
    saliency[:, 16:] = 1.0  # the right half is salient
    lungs = np.zeros((32, 32), dtype=bool)
    lungs[8:24, 4:12] = lungs[8:24, 20:28] = True
    original = np.full((600, 300), 0.5, dtype=np.float32)  # portrait, as acquired
    display = display_image(original)
    assert display.shape == (384, 192)
    picture = np.asarray(Image.open(save_overlay(model_input, saliency, lungs, "t", tmp_path / "o.png",
                                                 display=display)).convert("RGB")).astype(int)
    assert picture.shape[0] == 384 + 14 and 192 < picture.shape[1] < 192 + 60  # the radiograph's shape, + scale
    left, right = picture[200, 40], picture[200, 150]
    assert right.sum() > left.sum() and right[0] > right[2]  # inferno: salient = warm and bright
    bar = picture[14 + 12:14 + 384 - 12, 192 + 4 + 6]
    assert bar[0].sum() > bar[-1].sum()  # the colour scale runs from bright (1, top) to dark (0, bottom)
    old = tmp_path / "saliency"
    old.mkdir()
    (old / "stale.png").write_bytes(b"x")
    new = tmp_path / "new"
    new.mkdir()
    (new / "fresh.png").write_bytes(b"y")
    _replace_folder(new, old)
    assert [p.name for p in old.iterdir()] == ["fresh.png"] and not new.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.png", "saliency"]


def test_cli_audit_errors(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["audit", str(tmp_path), "--on", "AB", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "not a model bundle" in result.output
    result = runner.invoke(app, ["audit", str(tmp_path), "--on", "AB", "--out", str(tmp_path / "o"),
                                 "--audit-threshold", "magic=3"])
    assert result.exit_code == 2 and "source_probe" in result.output


def test_a_source_probe_flags_training_sources_only():
    from unveil.audit.suite.source_probes import probe_verdict as _probe_verdict

    rng = np.random.default_rng(0)
    target = np.arange(40) % 2
    features = rng.normal(size=(40, 4)) + 3 * target[:, None]  # perfectly separable sources
    probe = linear_probe(features, target, np.arange(40).astype(str), name="source COVID-", negative="hospital-csv",
                         positive="chestxray", resamples=20)
    assert _probe_verdict(probe, AuditThresholds(), "COVID-", {"hospital-csv", "chestxray"}).flagged
    assert _probe_verdict(probe, AuditThresholds(), "COVID-", None).flagged
    external = _probe_verdict(probe, AuditThresholds(), "COVID-", {"hospital-csv", "rsna"})
    assert external.flagged is None and external.threshold.startswith("informative") and "transfer" in external.suggests
