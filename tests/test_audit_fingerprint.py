"""Audit tests of issue 24 (3): merged sources found without a source column. The acquisition fingerprint (the
label from the image files alone), source discovery (clusters of the features that follow the label and the
files), the DICOM metadata factors; and the acceptance on a real mixed CSV (COVID-ChestXRay positives + Kermany
negatives, no source column)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from unveil.audit.discovery import cluster_features, discovery_verdicts, label_alignment, patient_permutation
from unveil.audit.fingerprint import PROPERTIES, fingerprint_verdicts, property_table
from unveil.audit.metadata import informative_fields, metadata_table
from unveil.audit.outputs import write_cluster_montage
from unveil.io import read_file_properties, write_dicom
from unveil.io.properties import ijg_table, jpeg_quality

from conftest import shared


def _table(n: int, **columns) -> pd.DataFrame:
    """A property table of ``n`` files: the given columns, every other property missing."""
    table = pd.DataFrame({p: columns.get(p, [None] * n) for p in PROPERTIES})
    for column in ("format", "colour_mode", "manufacturer", "modality"):
        table[column] = table[column].astype("string")
    for column in ("width", "height", "aspect_ratio", "bit_depth", "file_size_kb", "jpeg_quality",
                   "pixel_spacing_mm"):
        table[column] = table[column].astype(float)
    return table


def test_file_properties_from_headers_jpeg_quality_and_no_patient_field(tmp_path):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (40, 60)).astype(np.uint8)
    for quality in (30, 75, 95):
        Image.fromarray(pixels).save(tmp_path / f"q{quality}.jpg", quality=quality)
        found = read_file_properties(tmp_path / f"q{quality}.jpg")
        assert (found.format, found.width, found.height, found.colour_mode, found.jpeg_quality) == \
            ("JPEG", 60, 40, "L", quality)
    assert jpeg_quality(ijg_table(50)) == 50 and jpeg_quality(ijg_table(100)) == 100
    Image.fromarray(pixels.astype(np.uint16) * 256).save(tmp_path / "deep.png")
    deep = read_file_properties(tmp_path / "deep.png")
    assert (deep.format, deep.bit_depth, deep.colour_mode, deep.jpeg_quality) == ("PNG", 16, "I;16", None)
    assert deep.file_size == (tmp_path / "deep.png").stat().st_size
    write_dicom(tmp_path / "IM1", rng.integers(0, 4096, (30, 20), dtype=np.uint16),
                header={"PatientID": "SECRET-P001", "Manufacturer": "Acme", "PixelSpacing": "0.2\\0.2"})
    dicom = read_file_properties(tmp_path / "IM1")
    assert (dicom.format, dicom.width, dicom.height, dicom.bit_depth, dicom.colour_mode) == \
        ("DICOM", 20, 30, 12, "MONOCHROME2")
    assert (dicom.manufacturer, dicom.modality, dicom.pixel_spacing) == ("Acme", "DX", 0.2)
    assert "SECRET" not in repr(dicom)
    (tmp_path / "bad.png").write_bytes(b"not an image")
    records = pd.DataFrame({"path": [str(tmp_path / "q75.jpg"), str(tmp_path / "bad.png")]})
    table, errors = property_table(records)
    assert table.loc[0, "aspect_ratio"] == 1.5 and pd.isna(table.loc[1, "width"])
    assert len(errors) == 1 and "bad.png" in errors[0]


def test_fingerprint_names_a_perfectly_separating_width_and_not_noise():
    n = 40
    labels = np.repeat([0, 1], n // 2)
    groups = np.array([f"p{i}" for i in range(n)])
    rng = np.random.default_rng(0)
    widths = np.where(labels == 1, rng.integers(400, 1000, n), 224)
    table = _table(n, width=widths, height=rng.integers(200, 300, n), format=rng.choice(["PNG", "JPEG"], n))
    verdicts, figures = fingerprint_verdicts(table, labels, groups, rule=0.8, scope="s", seed=0, resamples=200)
    combined = verdicts[0]
    assert combined.test == "acquisition fingerprint" and combined.flagged and combined.value == 1.0
    assert combined.state == "FLAGGED" and "image width alone AUC 1.00" in combined.suggests
    assert [v.subject for v in verdicts[1:]] == ["label from image width alone (s)"]
    assert figures["properties"][0]["property"] == "width" and figures["properties"][0]["value"] == 1.0
    assert figures["varying"] == ["width", "height", "format"] and figures["constant"]["bit_depth"] is None
    noise = _table(n, width=rng.integers(200, 300, n), height=rng.integers(200, 300, n),
                   format=rng.choice(["PNG", "JPEG"], n))
    verdicts, _ = fingerprint_verdicts(noise, labels, groups, rule=0.8, scope="s", seed=0, resamples=200)
    assert verdicts[0].flagged is False and verdicts[0].state == "ok" and len(verdicts) == 1
    informative, _ = fingerprint_verdicts(table, labels, groups, rule=None, scope="s", seed=0, resamples=50)
    assert informative[0].state == "informative"
    few, figures = fingerprint_verdicts(table.iloc[19:21], labels[19:21], groups[19:21], rule=0.8, scope="s",
                                        seed=0, resamples=50)
    assert len(few) == 1 and few[0].state == "not applicable" and "too few patients" in few[0].suggests


def test_patient_permutation_moves_patients_whole_and_label_alignment():
    groups = np.array(["a", "b", "a", "b", "c", "d"])
    seen = set()
    for seed in range(20):
        permutation = patient_permutation(groups, np.random.default_rng(seed))
        assert sorted(permutation) == list(range(6))
        assert groups[permutation[0]] == groups[permutation[2]]  # a's two images land on one patient's two
        assert {permutation[4], permutation[5]} == {4, 5}  # one-image patients trade only with each other
        seen.add(tuple(permutation))
    assert len(seen) == 4  # (a, b) swapped or not, times (c, d) swapped or not
    labels = np.repeat([0, 1], 20)
    patients = np.array([f"p{i}" for i in range(40)])
    same = label_alignment(labels.copy(), labels, patients, resamples=200, seed=0)
    assert same["value"] == 1.0 and same["low"] == 1.0 and same["p_value"] == pytest.approx(1 / 201)
    unrelated = label_alignment(np.tile([0, 1], 20), labels, patients, resamples=200, seed=0)
    assert unrelated["value"] < 0.05 and unrelated["p_value"] > 0.2


def _features(labels: np.ndarray, separation: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(len(labels), 32))
    features[:, :4] += separation * labels[:, None]
    return features


def test_discovery_flags_clusters_that_follow_the_label_and_the_files(tmp_path):
    n = 40
    labels = np.repeat([0, 1], n // 2)
    groups = np.array([f"p{i // 2}" for i in range(n)])
    records = pd.DataFrame({"record_id": [f"r{i}" for i in range(n)], "path": [f"/x/{i}.png" for i in range(n)]})
    merged = _table(n, width=np.where(labels == 1, 800, 224), format=np.where(labels == 1, "PNG", "JPEG"))
    options = {"ami_rule": 0.3, "acquisition_rule": 0.75, "min_images": 10, "scope": "s", "seed": 0,
               "resamples": 200}
    verdicts, figures, clusters = discovery_verdicts(_features(labels, 6.0), records, labels, groups, merged,
                                                     **options)
    assert cluster_features(_features(labels, 6.0), seed=0).k == 2 and figures["k"] == 2
    assert (clusters == clusters[0]).sum() == 20 and (clusters[:20] == clusters[0]).all()  # the two classes
    assert verdicts[0].flagged and verdicts[0].value == 1.0 and verdicts[0].test == "source discovery"
    assert verdicts[1].value == 1.0 and verdicts[1].state == "informative"
    assert [c["covid_positive_share"] for c in figures["clusters"]] in ([0.0, 1.0], [1.0, 0.0])
    negatives = next(c for c in figures["clusters"] if c["covid_positive_share"] == 0)
    assert negatives["images"] == 20 and "JPEG (100%)" in negatives["acquisition"] and "224 px" in negatives[
        "acquisition"] and len(negatives["representatives"]) == 4
    same_files = _table(n, width=[224] * n, format=["JPEG"] * n)  # the clusters follow the label, not the files
    verdicts, _, _ = discovery_verdicts(_features(labels, 6.0), records, labels, groups, same_files, **options)
    assert verdicts[0].flagged is False and "may be the disease" in verdicts[0].suggests
    noise, _, _ = discovery_verdicts(_features(labels, 0.0), records, labels, groups, merged, **options)
    assert noise[0].flagged is False and noise[0].value < 0.3
    few, figures, clusters = discovery_verdicts(_features(labels, 6.0)[:12], records[:12], labels[:12], groups[:12],
                                                merged[:12], **options)
    assert few[0].state == "not applicable" and "too few" in few[0].suggests and clusters is None
    images = []
    for index in range(2):
        Image.fromarray(np.full((30, 40), 60 + 100 * index, np.uint8)).save(tmp_path / f"{index}.png")
        images.append(str(tmp_path / f"{index}.png"))
    summaries = [{"cluster": c, "images": 1, "covid_positive_share": float(c), "paths": [images[c]]} for c in (0, 1)]
    montage = write_cluster_montage(summaries, tmp_path / "clusters.png")
    assert montage is not None and Image.open(montage).size[0] > 50
    assert write_cluster_montage([], tmp_path / "clusters.png") is None and not montage.exists()


def test_metadata_factors_include_the_dicom_manufacturer_and_station():
    records = pd.DataFrame({"source": ["dicom-folder"] * 4, "manufacturer": ["Acme", "Acme", "Other", "Other"],
                            "station_name": ["ST1", "ST1", "ST1", "ST2"]})
    table = metadata_table(records)
    assert table["manufacturer"].tolist() == ["Acme", "Acme", "Other", "Other"]
    assert {"manufacturer", "station_name"} <= set(informative_fields(table))
    assert table["location"].isna().all()  # absent columns stay missing


# --- acceptance on real data --------------------------------------------------------------------------------


def _mixed_csv(path) -> int:
    """60 COVID-ChestXRay positives and 60 Kermany (pediatric) normals, absolute paths, no source column."""
    from unveil.data.sources import load_source

    cohen = load_source("covid-chestxray", shared("covid-chestxray")).records
    positives = cohen[cohen["covid"] == 1].sort_values("record_id").head(60)
    normals = sorted((shared("chest_xray") / "train" / "NORMAL").glob("*.jpeg"))[:60]
    rows = ["path,patient,label"]
    rows += [f"{p},{patient},positive" for p, patient in zip(positives["path"], positives["patient_id"], strict=True)]
    rows += [f"{p.resolve()},{p.stem},normal" for p in normals]
    path.write_text("\n".join(rows) + "\n")
    return len(rows) - 1


@pytest.mark.realdata
def test_realdata_mixed_csv_without_source_column_is_flagged(tmp_path):
    """The classic shortcut in one hospital CSV: the audit finds the two sources from the files and the features."""
    from typer.testing import CliRunner

    from unveil.audit import audit
    from unveil.cli import app
    from unveil.data.spec import DataSpec
    from unveil.preprocess.cache import PreprocessSettings
    from unveil.training import TrainConfig, train

    csv = tmp_path / "labels.csv"
    rows = _mixed_csv(csv)
    checked = CliRunner().invoke(app, ["data", "check", "hospital-csv", str(csv), "--json"])
    assert checked.exit_code == 0, checked.output
    report = json.loads(checked.stdout)
    assert report["records"] == rows == 120 and report["sources"] == ["hospital-csv"]
    assert report["unreadable"] == report["missing"] == report["invalid"] == []
    run = train("A", {"A": DataSpec("hospital-csv", str(csv))}, tmp_path / "A",
                config=TrainConfig(architecture="conv8", width=0.25, image_size=64, epochs=3, batch_size=32, seed=0),
                preprocess=PreprocessSettings(mask="none"), cache=tmp_path / "cache")
    result = audit(run.bundle, [], tmp_path / "audit", cache=tmp_path / "cache", seed=0, resamples=300,
                   saliency_samples=1)
    by_test: dict[str, list] = {}
    for verdict in result.verdicts:
        by_test.setdefault(verdict.test, []).append(verdict)
    assert "source probe" not in by_test and "metadata only" not in by_test  # one source, no metadata to read
    fingerprint = by_test["acquisition fingerprint"][0]
    assert fingerprint.flagged and fingerprint.low > 0.5 and fingerprint.subject.endswith("(own test split)")
    assert any("image width alone" in v.subject for v in by_test["acquisition fingerprint"][1:])
    discovery = by_test["source discovery"][0]
    assert discovery.flagged and discovery.low <= discovery.value <= discovery.high
    clusters = result.figures["discovery"]["clusters"]
    assert min(c["covid_positive_share"] for c in clusters) < 0.2 < 0.8 < max(c["covid_positive_share"]
                                                                                 for c in clusters)
    assert "acquisition fingerprint" in result.figures["summary"].split("On the data:")[1]
    document = json.loads((tmp_path / "audit" / "audit.json").read_text())
    assert {v["test"] for v in document["verdicts"] if v["state"] == "FLAGGED"} >= {"acquisition fingerprint",
                                                                                    "source discovery"}
    assert (tmp_path / "audit" / "clusters.png").is_file()
    markdown = (tmp_path / "audit" / "audit.md").read_text()
    assert "| acquisition fingerprint |" in markdown and "![clusters_montage](clusters.png)" in markdown
    images = pd.read_csv(tmp_path / "audit" / "audit_images.csv")
    assert set(images["cluster"]) == set(range(len(clusters)))


def test_the_new_thresholds_are_named_and_parsed():
    from unveil.audit import AuditThresholds
    from unveil.audit.verdict import DATA_TESTS, MEANINGS, summary_sentence
    from unveil.cli.audit import audit_thresholds

    defaults = AuditThresholds()
    assert (defaults.fingerprint_auc, defaults.discovery_ami, defaults.discovery_acquisition) == (0.80, 0.20, 0.75)
    chosen = audit_thresholds(["fingerprint_auc=none", "discovery_ami=0.5", "discovery_acquisition=0.9"])
    assert (chosen.fingerprint_auc, chosen.discovery_ami, chosen.discovery_acquisition) == (None, 0.5, 0.9)
    assert "acquisition fingerprint" in DATA_TESTS and "source discovery" not in DATA_TESTS
    text = summary_sentence([("acquisition fingerprint", True), ("source discovery", True)])
    assert text.startswith("1 flag fired on the model — source discovery: " + MEANINGS["source discovery"])
    assert text.endswith(f"On the data: acquisition fingerprint: {MEANINGS['acquisition fingerprint']}.")
