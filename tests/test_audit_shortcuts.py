"""Audit tests of issue 15: transfer verdict, metadata shortcuts, infection evidence, contamination, the lead
sentence; and the acceptance on real data (a shortcut model is flagged on its own sources and elsewhere)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from unveil.audit.infection import infection_mass_ratio, pointing_hits
from unveil.audit.metadata import metadata_table, one_hot, probe_target
from unveil.audit.transfer import ScoredSet, below_chance, compare_transfer, does_not_transfer
from unveil.audit.verdict import summary_sentence
from unveil.data.near_duplicates import cross_pairs, near_duplicates

from conftest import shared


def _scored(name: str, separation: float, n: int = 120, seed: int = 0) -> ScoredSet:
    rng = np.random.default_rng(seed)
    labels = np.repeat([0, 1], n // 2)
    scores = 1 / (1 + np.exp(-(rng.normal(size=n) + separation * (labels - 0.5) * 2)))
    return ScoredSet(name, labels, scores, np.array([f"{name}{i}" for i in range(n)]))


def test_transfer_flags_a_real_drop_and_not_noise():
    home = _scored("home", 2.0)
    dropped = compare_transfer(home, _scored("away", -0.8, seed=1), threshold=0.5, resamples=400)
    auc = dropped.differences["roc_auc"]
    assert auc.drop > 0.5 and auc.low > 0 and does_not_transfer(auc, 0.10)
    assert below_chance(dropped, 0.5)  # the external AUC is confidently under 0.5
    same = compare_transfer(home, _scored("twin", 2.0, seed=2), threshold=0.5, resamples=400)
    auc = same.differences["roc_auc"]
    assert auc.low < 0 < auc.high and not does_not_transfer(auc, 0.10) and not below_chance(same, 0.5)
    # the difference's interval is wider than either set's own: both sets' patients are resampled
    assert auc.high - auc.low > same.evaluation.metrics["roc_auc"].high - same.evaluation.metrics["roc_auc"].low
    with pytest.raises(ValueError, match="one class only"):
        compare_transfer(home, ScoredSet("neg", np.zeros(4), np.zeros(4), np.arange(4)), threshold=0.5)


def test_metadata_table_and_probe_targets():
    records = pd.DataFrame({"source": ["a", "a", "b", "b"], "view": ["PA", "AP", pd.NA, "PA"],
                            "sex": ["M", "F", "F", pd.NA], "age": pd.array([4.0, 40.0, None, 17.9], dtype="Float64"),
                            "location": ["x", "y", "z", "x"]})
    table = metadata_table(records)
    assert table["age_group"].tolist()[:2] == ["pediatric", "adult"] and pd.isna(table["age_group"][2])
    assert table["age_group"][3] == "pediatric"
    negative, positive, target = probe_target(table["view"], min_images=1)
    assert (negative, positive) == ("AP", "PA") and np.isnan(target[2]) and target.tolist()[:2] == [1.0, 0.0]
    assert probe_target(table["view"], min_images=2) is None  # one AP image only
    assert probe_target(table["location"], min_images=1)[:2] == ("other", "x")  # most common vs the rest
    encoded = one_hot(table, ["view"])  # AP, PA, unknown
    assert encoded.shape == (4, 3) and encoded.sum(1).tolist() == [1, 1, 1, 1]


def test_infection_ratio_and_pointing_game_by_hand():
    maps = np.zeros((3, 4, 4))
    maps[0, 0, 0] = 1.0  # all mass on one pixel inside the mask
    maps[1, 3, 3] = 1.0  # peak outside
    masks = np.zeros((3, 4, 4), dtype=bool)
    masks[:, :2, :2] = True  # a quarter of the image
    ratio = infection_mass_ratio(maps, masks)
    assert ratio[0] == pytest.approx(4.0) and ratio[1] == 0 and np.isnan(ratio[2])  # flat map: no mass
    hits = pointing_hits(maps, masks)
    assert hits[0] == 1 and hits[1] == 0 and np.isnan(hits[2])


def test_a_pointing_game_of_no_hits_has_an_interval_above_zero():
    from unveil.audit.infection import hit_rate_interval

    rate, low, high = hit_rate_interval(np.zeros(12), np.arange(12))  # 0 of 12, one image per patient
    assert (rate, low) == (0.0, 0.0) and high == pytest.approx(0.2425, abs=1e-4)  # Wilson, not [0, 0]
    rate, low, high = hit_rate_interval(np.array([1.0, np.nan, 0.0, 1.0]), np.array([0, 1, 2, 3]))
    assert rate == pytest.approx(2 / 3) and 0 < low < rate < high < 1


def _png(path, array):
    Image.fromarray(array.astype(np.uint8)).save(path)
    return str(path)


def test_near_duplicates_find_resized_copies_and_not_others(tmp_path):
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:256, 0:256]
    first = (127 + 80 * np.sin(xx / 17.0) * np.cos(yy / 23.0) + rng.normal(0, 3, (256, 256))).clip(0, 255)
    other = (127 + 80 * np.sin(yy / 9.0 + xx / 31.0)).clip(0, 255)
    training = pd.DataFrame({"record_id": ["t/a", "t/b"], "path": [_png(tmp_path / "a.png", first),
                                                                  _png(tmp_path / "b.png", other)]})
    copy = np.asarray(Image.fromarray(first.astype(np.uint8)).resize((180, 180)))
    test = pd.DataFrame({"record_id": ["x/copy", "x/new", "x/same"],
                         "path": [_png(tmp_path / "copy.png", copy),
                                  _png(tmp_path / "new.png", rng.integers(0, 255, (256, 256))),
                                  str(tmp_path / "a.png")]})
    pairs = near_duplicates(test, training, cache=tmp_path / "cache")
    assert set(pairs["record_id"]) == {"x/copy", "x/same"} and set(pairs["training_record_id"]) == {"t/a"}
    assert pairs.set_index("record_id").loc["x/same", "exact"] and not pairs.set_index("record_id").loc[
        "x/copy", "exact"]
    assert (tmp_path / "cache" / "fingerprints.csv").is_file()
    again = near_duplicates(test, training, cache=tmp_path / "cache")  # from the cache: same answer
    pd.testing.assert_frame_equal(pairs, again)
    assert cross_pairs([], ["0" * 64]) == []


def test_summary_sentence_names_each_fired_test():
    assert summary_sentence([("source probe", False), ("label probe", None)]).startswith("No flag fired")
    text = summary_sentence([("source probe", True), ("source probe", True), ("below chance", True),
                             ("lung occlusion", False)])
    assert text.startswith("3 flags fired on the model") and "source probe (x2)" in text and "inverted" in text
    assert "lung occlusion" not in text and "On the data" not in text
    data_only = summary_sentence([("source probe", False), ("metadata only", True), ("contamination", True)])
    assert data_only.startswith("No flag fired on the model (1 kind of") and "On the data: metadata only" in data_only


# --- acceptance on real data --------------------------------------------------------------------------------


@pytest.mark.realdata
def test_realdata_shortcut_model_is_flagged(tmp_path):
    """COVID-ChestXRay (A) completed with pediatric Kermany COVID- (B), recipe AB; audited with its own test split
    (by default) and COVID-QU-Ex + Figure 1 as external sets."""
    from unveil.audit import audit
    from unveil.cli import app
    from unveil.data.spec import DataSpec
    from unveil.preprocess.cache import PreprocessSettings
    from unveil.training import TrainConfig, train

    cohen, kermany = shared("covid-chestxray"), shared("chest_xray")
    qu_ex, figure1 = shared("covid-qu-ex"), shared("figure1")
    run = train("AB", {"A": DataSpec("covid-chestxray", str(cohen)), "B": DataSpec("chestxray", str(kermany))},
                tmp_path / "AB", config=TrainConfig(architecture="conv8", width=0.5, image_size=64, epochs=8,
                                                    batch_size=32, seed=0),
                preprocess=PreprocessSettings(mask="none"), cache=tmp_path / "cache")
    external = [f"covid-qu-ex:{qu_ex}", f"figure1:{figure1}"]
    result = audit(run.bundle, external, tmp_path / "audit", cache=tmp_path / "cache", seed=0, resamples=500,
                   saliency_samples=1)
    by_test: dict[str, list] = {}
    for verdict in result.verdicts:
        by_test.setdefault(verdict.test, []).append(verdict)
    # the source probe, on the model's own sources (not only on the external sets)
    own = [v for v in by_test["source probe"]
           if v.subject.startswith("chestxray (test split of AB) vs covid-chestxray (test split of AB)")]
    assert own and own[0].flagged and own[0].low <= own[0].value <= own[0].high
    # the transfer verdict, with the interval of the drop above 0
    transfer = [v for v in by_test["transfer (AUC)"] + by_test["transfer (balanced accuracy)"] if v.flagged]
    assert transfer and all(v.low > 0 for v in transfer)
    assert result.figures["summary"].split(" ")[0].isdigit() and "transfer (AUC)" in result.figures["summary"]
    # metadata factors that COVID-ChestXRay carries, and COVID-QU-Ex's infection masks
    assert any(v.subject.startswith("view") for v in by_test["metadata probe"])
    assert by_test["pointing game"][0].subject.endswith("(100 COVID+ images)")
    assert {v.subject.split(" vs ")[0] for v in by_test["contamination"]} == {"AB", *external}
    document = json.loads((tmp_path / "audit" / "audit.json").read_text())
    assert document["figures"]["transfer"][0]["in_source"] == "AB"
    assert (tmp_path / "audit" / "audit.md").read_text().splitlines()[2].startswith(f"**{result.figures['summary']}")
    # `unveil evaluate` refuses an external set holding copies of training images, or flags/excludes them
    runner = CliRunner()
    base = ["evaluate", str(run.bundle), "--on", external[0], "--cache", str(tmp_path / "cache"), "--resamples", "50"]
    copies = result.figures["contamination"][external[0]]
    refused = runner.invoke(app, base)
    if copies:
        assert refused.exit_code == 2 and "near-duplicates of training images" in refused.output
        flagged = runner.invoke(app, [*base, "--duplicates", "flag", "--json"])
        assert flagged.exit_code == 0, flagged.output
        assert json.loads(flagged.stdout)[0]["near_duplicates_of_training"] == copies
        assert "warning:" in flagged.stderr
        excluded = runner.invoke(app, [*base, "--duplicates", "exclude", "--json"])
        row = json.loads(excluded.stdout)[0]
        assert row["near_duplicates_excluded"] == copies and row["images"] == 300 - copies
    else:
        assert refused.exit_code == 0, refused.output


def test_new_thresholds_on_the_cli_and_in_experiment_files(tmp_path):
    import yaml

    from unveil.cli import app
    from unveil.experiments import ExperimentError, load_experiment
    from unveil.experiments.config import experiment_path

    runner = CliRunner()
    base = ["audit", str(tmp_path), "--out", str(tmp_path / "o")]
    refused = runner.invoke(app, [*base, "--audit-threshold", "source_probe=none"])
    assert refused.exit_code == 2 and "cannot be turned off" in refused.output
    parsed = runner.invoke(app, [*base, "--audit-threshold", "transfer_drop=0.2", "--audit-threshold",
                                 "contamination=2", "--audit-threshold", "metadata_only_auc=none"])
    assert parsed.exit_code == 2 and "not a model bundle" in parsed.output  # thresholds parsed, then the bundle
    document = yaml.safe_load(experiment_path("demo").read_text())
    document.setdefault("audit", {})["thresholds"] = {"transfer_drop": 0.15, "metadata_only_auc": None}
    path = tmp_path / "e.yaml"
    path.write_text(yaml.safe_dump(document))
    thresholds = load_experiment(str(path)).audit.thresholds
    assert thresholds.transfer_drop == 0.15 and thresholds.metadata_only_auc is None
    document["audit"]["thresholds"] = {"transfer_dop": 0.15}
    path.write_text(yaml.safe_dump(document))
    with pytest.raises(ExperimentError, match="transfer_dop: unknown key; known: .*transfer_drop"):
        load_experiment(str(path))


def test_transfer_section_keeps_records_shared_by_two_sets():
    """AB and AC share A's test images: AC's comparison uses them too (not only its C images)."""
    from unveil.audit.run import AuditThresholds
    from unveil.audit.transfer import transfer_section

    home, away = _scored("a", 2.0, n=60), _scored("c", -1.0, n=60, seed=3)
    records = pd.DataFrame({"record_id": [*(f"a{i}" for i in range(60)), *(f"c{i}" for i in range(60))]})
    records["test_set"] = ["AB"] * 60 + ["AC"] * 60  # what the deduplicated union records
    members = {"AB": set(records["record_id"][:60]), "AC": set(records["record_id"])}
    figures: dict = {}
    verdicts = transfer_section(records, members, np.concatenate([home.labels, away.labels]),
                                np.concatenate([home.probability, away.probability]),
                                np.concatenate([home.patients, away.patients]), "AB", 0.5, AuditThresholds(),
                                figures, seed=0, resamples=200)
    assert [v.test for v in verdicts] == ["transfer (AUC)", "transfer (balanced accuracy)", "below chance"]
    assert figures["transfer"][0]["external_images"] == 120 and figures["transfer"][0]["in_source_images"] == 60
    assert transfer_section(records, {"AC": members["AC"]}, home.labels, home.probability, home.patients, None, 0.5,
                            AuditThresholds(), figures, seed=0, resamples=10) == []
    assert "no in-source test split" in figures["transfer_notes"][0]
