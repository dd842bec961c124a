"""Audit tests that must be able to fire (issue 23): lung occlusion on lung-masked models (the silhouette variant,
or "not applicable" with its reason), contamination printed as a count, and source probes that keep two sets of
one source apart."""

from __future__ import annotations

import math
import re
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from unveil.audit import AuditThresholds, audit
from unveil.data.spec import DataSpec
from unveil.preprocess.cache import PreprocessSettings
from unveil.training import TrainConfig, load_bundle, train

TINY = TrainConfig(architecture="conv8", width=0.25, image_size=32, epochs=2, batch_size=16, eval_batch_size=32)


@pytest.fixture(scope="module")
def masked(tmp_path_factory):
    """A conv8 trained on AB with the default lung masking (``mask=segment``), audited on its own test split and on
    another set of B's source (a second synthetic ChestXRay, ``chestxray:PATH``)."""
    from unveil.synth.config import load_config
    from unveil.synth.generate import dataset_roots, generate

    root = tmp_path_factory.mktemp("applicable")
    config = replace(load_config("paper"), image_size=48)
    generate(config, root / "bench", seed=0, scale=0.12)
    generate(replace(config, datasets={"B": config.datasets["B"]}), root / "other", seed=1, scale=0.05)
    data = {name: DataSpec(source, path) for name, (source, path) in dataset_roots(root / "bench").items()}
    run = train("AB", {"A": data["A"], "B": data["B"]}, root / "AB", config=TINY,
                preprocess=PreprocessSettings(mask="segment"), cache=root / "cache")
    external = f"chestxray:{dataset_roots(root / 'other')['B'][1]}"
    # two synthetic benchmarks number their patients alike: the overlap check cannot tell them apart
    result = audit(run.bundle, [external], root / "audit", cache=root / "cache", resamples=100, saliency_samples=1,
                   thresholds=AuditThresholds(min_images=5), allow_overlap=True)
    return {"root": root, "bundle": run.bundle, "external": external, "result": result}


def _one(result, test: str):
    found = [v for v in result.verdicts if v.test == test]
    assert len(found) == 1, [v.test for v in result.verdicts]
    return found[0]


def _gathered(masked):
    """The model's own test split, gathered as the audit does (images as the model saw them, masks)."""
    from unveil.audit.run import gather

    return gather(load_bundle(masked["bundle"]), ["AB"], "AB", data=None, mask="segment",
                  cache=masked["root"] / "cache", recipes=None, allow_overlap=False, workers=1, progress=False,
                  lung_convention=None)


def test_occlusion_of_a_lung_masked_model_keeps_the_silhouette_and_says_so(masked):
    verdict = _one(masked["result"], "lung occlusion")
    figures = masked["result"].figures["occlusion"]
    assert figures["variant"] == "silhouette" and 0 < figures["fill"] < 255
    assert "silhouette kept" in verdict.subject and "silhouette" in verdict.measure
    assert verdict.flagged is not None and math.isfinite(verdict.value) and verdict.state in ("ok", "FLAGGED")
    assert "outside the lungs is not tested" in verdict.suggests  # the masking removed it: said, not implied


def test_occluded_masked_input_holds_nothing_but_the_silhouette(masked):
    from unveil.audit.suite.lung_occlusion import occluded_inputs
    from unveil.transforms import blur_mask

    audited = _gathered(masked)
    occluded, figures = occluded_inputs(audited)
    assert audited.model_masks is not None and occluded.shape == audited.images.images.shape
    soft = np.stack([blur_mask(m, audited.bundle.preprocess_settings.blur_radius) for m in audited.model_masks])
    pixels = occluded[:, 0].numpy().astype(float)
    assert np.abs(pixels - figures["fill"] * soft).max() <= 0.5  # the fill, shaped by the model's own mask
    assert (pixels[soft < 1e-4] == 0).all() and len(np.unique(pixels[soft == soft.max()])) == 1
    # noise in place of the radiographs changes nothing: no content is left, only the mask's shape and size
    noise = torch_uint8(np.random.default_rng(0).integers(0, 256, audited.images.images.shape))
    again, _ = occluded_inputs(replace(audited, images=replace(audited.images, images=noise)), fill=figures["fill"])
    assert (again == occluded).all()


def torch_uint8(array: np.ndarray):
    import torch

    return torch.from_numpy(array.astype(np.uint8))


def test_occlusion_with_one_silhouette_for_every_image_is_not_applicable(masked):
    from unveil.audit.context import AuditContext
    from unveil.audit.run import AuditResult
    from unveil.audit.suite.lung_occlusion import LungOcclusion

    audited = _gathered(masked)
    same = np.repeat(audited.model_masks[:1], len(audited.model_masks), axis=0)
    context = AuditContext(replace(audited, model_masks=same), masked["root"], AuditThresholds(), seed=0, resamples=50)
    context.probability = np.linspace(0.1, 0.9, len(same))  # the model's own scores, as the runner would give them
    outcome = LungOcclusion().run(context)
    result = AuditResult(outcome.verdicts, outcome.figures)
    verdict = _one(result, "lung occlusion")
    assert verdict.state == "not applicable" and verdict.flagged is None and math.isnan(verdict.value)
    assert verdict.threshold.startswith("not applicable") and "same input for every image" in verdict.suggests
    assert result.figures["occlusion"]["variant"] == "silhouette"


def test_contamination_is_printed_as_a_count(masked, tmp_path):
    from unveil.audit.contamination import contamination_verdict
    from unveil.audit.outputs import audit_markdown
    from unveil.audit.verdict import AuditResult
    from unveil.cli import app

    output = CliRunner().invoke(app, ["audit", str(masked["bundle"]), "--out", str(tmp_path / "cli"), "--on",
                                      masked["external"], "--allow-overlap", "--resamples", "30", "--cache",
                                      str(masked["root"] / "cache"), "--audit-threshold", "min_images=5",
                                      "--saliency-samples", "1", "--workers", "1"])
    assert output.exit_code == 0, output.output
    printed = output.output[re.search(r"^(No flag|\d+ flags?) fired on the model", output.output, re.M).start():]
    assert max(len(line) for line in printed.splitlines()) <= 100  # wrapped: one block per verdict
    blocks = [" ".join(b.split()) for b in printed.split("\n\n") if b.startswith("[")]
    lines = [b for b in blocks if re.match(r"\[\w[\w ]*\] contamination — ", b)]
    assert len(lines) == 2 and all(re.search(r": \d+ of \d+ images; rule: ", line) for line in lines), lines
    assert "chestxray (B) vs training images" in printed  # the external set by its label (its source and folder)
    assert f"chestxray (B) = {masked['external']}" in " ".join(printed.split())  # and its full name in the legend
    assert "nan" not in output.output

    pairs = pd.DataFrame({"record_id": ["f/1"], "training_record_id": ["t/9"], "distance": [3], "exact": [False]})
    verdict = contamination_verdict("F", 180, pairs, rule=1, checked=True)
    assert verdict.shown == "1 of 180 images" and verdict.flagged and verdict.state == "FLAGGED"
    none = contamination_verdict("F", 180, pairs.iloc[:0], rule=1, checked=True)
    assert none.shown == "0 of 180 images" and none.state == "ok"
    unchecked = contamination_verdict("F", 180, pairs, rule=1, checked=False)
    assert unchecked.shown == "n/a" and unchecked.state == "not checked"
    text = audit_markdown(AuditResult([verdict], {"images": 180, "patients": 90, "by_source": {"f": 180}}), tmp_path)
    assert "| 1 of 180 images |" in text and "nan" not in text


def test_two_sets_of_one_source_are_two_groups(masked):
    """The own test split's ChestXRay images and an external ChestXRay set: two probe groups, and every image of
    both is audited (same relative paths under two roots are two images)."""
    result, external = masked["result"], masked["external"]
    own = "chestxray (test split of AB)"
    probes = [v for v in result.verdicts if v.test == "source probe"]
    between = [v for v in probes if own in v.subject and external in v.subject]
    assert between and all(v.flagged is None and v.threshold.startswith("informative") for v in between), probes
    figures = [p for p in result.figures["probes"] if {p.get("negative"), p.get("positive")} == {own, external}]
    images = pd.read_csv(masked["root"] / "audit" / "audit_images.csv")
    in_external = (images["test_set"] == external).sum()
    assert figures and figures[0]["counts"][external] == in_external
    assert set(images["audited_as"]) >= {own, external, "hospital-csv (test split of AB)"}
    own_split = pd.read_csv(masked["root"] / "AB" / "splits.csv", dtype=str)
    external_count = len(DataSpec.parse(external).load())
    assert len(images) == (own_split["split"] == "test").sum() + external_count  # none dropped as a "duplicate"


def test_the_report_prints_a_contamination_count_as_a_count(tmp_path):
    from unveil.audit.contamination import contamination_verdict
    from unveil.evaluation.store import ResultsStore
    from unveil.reports import write_report

    pairs = pd.DataFrame({"record_id": ["f/1"], "training_record_id": ["t/9"], "distance": [3], "exact": [False]})
    with ResultsStore(tmp_path / "results.sqlite") as store:
        store.set_experiment({"name": "x", "seed": 0})
        store.put_cell({"cell_id": "c", "architecture": "conv8", "encoder": "none", "training_set": "D",
                        "run_dir": "r", "bundle": "b", "status": "done", "seconds": 1.0, "best_epoch": 1,
                        "val_auc": 0.7, "config": {}})
        store.put_audit("c", [contamination_verdict("F", 180, pairs, rule=1, checked=True)])
    html = write_report(tmp_path).read_text(encoding="utf-8")
    row = html[html.index("<td>contamination</td>"):]
    row = row[:row.index("</tr>")]
    assert "<td>1 image</td>" in row and "1 of 180 images" in row and "1.000" not in row
