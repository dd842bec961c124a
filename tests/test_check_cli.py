"""`unveil data check|split|compose` end to end, through the CLI runner."""

import json
import shutil

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from unveil.cli import app
from unveil.data.check import check_dataset
from unveil.io import write_dicom

from conftest import shared

runner = CliRunner()


def make_kermany(root, *, normals=6, viral=4, bacterial=4, size=48):
    rng = np.random.default_rng(0)
    for subset in ("train",):
        for i in range(normals):
            folder = root / subset / "NORMAL"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (size, size), dtype=np.uint8)).save(folder / f"IM-{i:04d}-0001.jpeg")
        folder = root / subset / "PNEUMONIA"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(viral):
            Image.fromarray(rng.integers(0, 255, (size, size), dtype=np.uint8)).save(
                folder / f"person{i}_virus_{i}.jpeg")
        for i in range(bacterial):
            Image.fromarray(rng.integers(0, 255, (size, size), dtype=np.uint8)).save(
                folder / f"person{100 + i}_bacteria_{i}.jpeg")
    return root


def test_check_reports_unreadable_and_duplicates(tmp_path):
    root = make_kermany(tmp_path / "kermany")
    normal = root / "train" / "NORMAL"
    (normal / "IM-9000-0001.jpeg").write_bytes(b"")                     # 0-byte
    good = (normal / "IM-0000-0001.jpeg").read_bytes()
    (normal / "IM-9001-0001.jpeg").write_bytes(good[: len(good) // 3])  # truncated
    shutil.copy(normal / "IM-0001-0001.jpeg", normal / "IM-9002-0001.jpeg")  # exact duplicate
    Image.open(normal / "IM-0002-0001.jpeg").resize((40, 40)).save(normal / "IM-9003-0001.png")  # near duplicate
    report = check_dataset("chestxray", root)
    unreadable = {issue.path.rsplit("/", 1)[-1]: issue.problem for issue in report.unreadable}
    assert set(unreadable) == {"IM-9000-0001.jpeg", "IM-9001-0001.jpeg"}
    assert "empty" in unreadable["IM-9000-0001.jpeg"] and "truncated" in unreadable["IM-9001-0001.jpeg"]
    assert report.duplicates["exact"] == [["chestxray/train/NORMAL/IM-0001-0001.jpeg",
                                           "chestxray/train/NORMAL/IM-9002-0001.jpeg"]]
    assert ["chestxray/train/NORMAL/IM-0002-0001.jpeg", "chestxray/train/NORMAL/IM-9003-0001.png"] in \
        report.duplicates["near"]
    assert report.records == 18 and report.by_class == {"bacterial": 4, "normal": 10, "viral": 4}


def test_cli_check_json_and_strict(tmp_path):
    root = make_kermany(tmp_path / "kermany")
    result = runner.invoke(app, ["data", "check", "chestxray", str(root), "--json"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["records"] == 14 and document["by_class"]["viral"] == 4
    assert document["unreadable"] == [] and document["missing"] == []
    (root / "train" / "NORMAL" / "IM-9999-0001.jpeg").write_bytes(b"not an image at all")
    strict = runner.invoke(app, ["data", "check", "chestxray", str(root), "--strict"])
    assert strict.exit_code == 1
    assert "IM-9999-0001.jpeg" in strict.stdout and "not a recognised image" in strict.stdout


def test_cli_errors_are_clear(tmp_path):
    result = runner.invoke(app, ["data", "check", "nope", str(tmp_path)])
    assert result.exit_code == 2 and "unknown dataset source 'nope'" in result.output
    result = runner.invoke(app, ["data", "check", "covid-chestxray", str(tmp_path)])
    assert result.exit_code == 2 and "metadata.csv" in result.output and "Traceback" not in result.output


@pytest.mark.realdata
def test_cli_check_covid_chestxray_sample():
    result = runner.invoke(app, ["data", "check", "covid-chestxray", str(shared("covid-chestxray")), "--json",
                                 "--workers", "2"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["records"] == 206 and document["patients"] == 133
    assert document["unreadable"] == [] and document["missing"] == []
    assert document["by_class"]["covid"] == 157


@pytest.mark.realdata
def test_cli_check_kermany_sample_counts():
    result = runner.invoke(app, ["data", "check", "chestxray", str(shared("chest_xray")), "--json", "--no-images"])
    document = json.loads(result.stdout)
    assert document["by_class"] == {"bacterial": 100, "normal": 200, "viral": 100}


def test_cli_split_is_deterministic(tmp_path):
    root = make_kermany(tmp_path / "kermany", normals=20, viral=10, bacterial=10, size=16)
    outputs = []
    for name in ("a", "b"):
        result = runner.invoke(app, ["data", "split", "chestxray", str(root), "--out", str(tmp_path / f"{name}.csv"),
                                     "--seed", "3", "--stratify", "finding"])
        assert result.exit_code == 0, result.output
        outputs.append(json.loads(result.stdout))
    assert outputs[0]["sha256"] == outputs[1]["sha256"]
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()
    meta = json.loads((tmp_path / "a.meta.json").read_text())
    assert meta["config"]["seed"] == 3 and meta["versions"]["torch"] == "2.14.1"


def test_cli_compose_with_hospital_csv_and_kermany(tmp_path):
    kermany = make_kermany(tmp_path / "kermany", normals=30, viral=10, bacterial=10, size=16)
    hospital = tmp_path / "hospital"
    hospital.mkdir()
    lines = ["file,pid,diagnosis"]
    for i in range(40):
        name = f"img{i}.dcm"
        write_dicom(hospital / name, np.full((8, 8), i, dtype=np.uint16), uid_seed=str(i))
        lines.append(f"{name},P{i},{'positive' if i < 30 else 'negative'}")
    (hospital / "labels.csv").write_text("\n".join(lines) + "\n")
    args = ["data", "compose", "AB", "--data", f"A=hospital-csv:{hospital}", "--data", f"B=chestxray:{kermany}",
            "-o", "A.path_column=file", "-o", "A.patient_column=pid", "-o", "A.label_column=diagnosis",
            "--seed", "1", "--json", "--out", str(tmp_path / "out")]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    splits = document["splits"]
    # A: 30 positives -> 9 test / 4 val / 17 train; 10 negatives -> 3 / 1 / 6; B fills the gap
    assert splits["train"]["covid+"] == 17 and splits["train"]["covid-"] == 17
    assert splits["train"]["by_source"]["chestxray"]["covid-"] == 11
    assert splits["test"]["covid+"] == 9 and splits["test"]["by_source"]["chestxray"]["covid-"] == 6
    assert (tmp_path / "out" / "AB.splits.csv").is_file() and (tmp_path / "out" / "AB.meta.json").is_file()
    from unveil.artifacts import load_artifact

    artifact = load_artifact(tmp_path / "out" / "AB.splits.csv", "split")  # AB.splits.meta.json, verified
    assert artifact.meta["command"] == "unveil data compose" and artifact.meta["config"]["seed"] == 1
    missing_role = runner.invoke(app, ["data", "compose", "AB", "--data", f"A=hospital-csv:{hospital}"])
    assert missing_role.exit_code == 2 and "needs role B" in missing_role.output


def test_cli_unknown_loader_option_is_named(tmp_path):
    root = make_kermany(tmp_path / "kermany")
    result = runner.invoke(app, ["data", "check", "chestxray", str(root), "-o", "colour=blue"])
    assert result.exit_code == 2 and "no option(s) colour" in result.output and "source_name" in result.output


def test_cli_check_finds_duplicates_across_sources(tmp_path):
    first = make_kermany(tmp_path / "first", normals=3, viral=1, bacterial=1)
    second = make_kermany(tmp_path / "second", normals=3, viral=1, bacterial=1)
    rng = np.random.default_rng(42)
    for i in range(3):  # make the second set's normals distinct from the first's
        Image.fromarray(rng.integers(0, 255, (48, 48), dtype=np.uint8)).save(
            second / "train" / "NORMAL" / f"IM-{i:04d}-0001.jpeg")
    shutil.copy(first / "train" / "NORMAL" / "IM-0000-0001.jpeg", second / "train" / "NORMAL" / "IM-0100-0001.jpeg")
    result = runner.invoke(app, ["data", "check", "chestxray", str(first), "--with", f"figure1:{tmp_path}",
                                 "--json"])
    assert result.exit_code == 2 and "metadata.csv" in result.output
    result = runner.invoke(app, ["data", "check", "chestxray", str(first), "--with", f"kermany:{second}", "--json"])
    assert result.exit_code == 2 and "duplicated record_id" in result.output  # same source name twice
    (tmp_path / "labels.csv").write_text("path,patient,label\nsecond/train/NORMAL/IM-0100-0001.jpeg,P1,0\n")
    result = runner.invoke(app, ["data", "check", "chestxray", str(first), "--with",
                                 f"hospital-csv:{tmp_path / 'labels.csv'}", "--json"])
    assert result.exit_code == 0, result.output
    groups = json.loads(result.stdout)["duplicates"]["exact_groups"]
    assert groups == [["chestxray/train/NORMAL/IM-0000-0001.jpeg",
                       "hospital-csv/second/train/NORMAL/IM-0100-0001.jpeg"]]


def test_cli_compose_removes_a_copy_before_splitting(tmp_path):
    hospital = tmp_path / "hospital"
    hospital.mkdir()
    rng = np.random.default_rng(0)
    lines = ["path,patient,label"]
    for i in range(40):
        Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8)).save(hospital / f"img{i}.png")
        lines.append(f"img{i}.png,P{i},{'1' if i % 2 else '0'}")
    # the same radiograph filed again under another patient id: a leak splits cannot see
    shutil.copy(hospital / "img1.png", hospital / "copy.png")
    lines.append("copy.png,P999,1")
    (hospital / "labels.csv").write_text("\n".join(lines) + "\n")
    base = ["data", "compose", "A", "--data", f"A=hospital-csv:{hospital}", "--seed", "0", "--json"]
    for seed in range(4):  # the copy is removed before splitting (issue 16), whatever the seed
        result = runner.invoke(app, [*base[:-3], "--seed", str(seed), "--json", "--check-images"])
        assert result.exit_code == 0, result.output
        assert "copy.png" in result.output and "duplicate of" in result.output and "removed before splitting" in \
            result.output


def test_cli_split_errors_are_clear(tmp_path):
    result = runner.invoke(app, ["data", "split", "covid-chestxray", str(tmp_path), "--out", str(tmp_path / "s.csv")])
    assert result.exit_code == 2 and "metadata.csv" in result.output and "Traceback" not in result.output
    root = make_kermany(tmp_path / "k", normals=4, viral=2, bacterial=2, size=16)
    result = runner.invoke(app, ["data", "split", "chestxray", str(root), "--out", str(tmp_path / "s.csv"),
                                 "--stratify", "colour"])
    assert result.exit_code == 2 and "colour" in result.output


@pytest.mark.realdata
def test_a_hospitals_csv_and_dicom_export_load_end_to_end(tmp_path):
    """Issue 24: a CSV of 60 COVID-ChestXRay positives and 60 Kermany negatives (absolute paths, labels
    positive / normal) and a DICOM export with one malformed file: `data check` loads every good row of each,
    names the malformed file once with its reason, and never shows a PatientID."""
    import pandas as pd

    cohen = shared("covid-chestxray")
    metadata = pd.read_csv(cohen / "metadata.csv", dtype=str, keep_default_na=False)
    covid = metadata[metadata["finding"].str.contains("COVID-19") & (metadata["modality"] == "X-ray")]
    covid = covid.drop_duplicates("filename").head(60)
    normals = sorted((shared("chest_xray") / "train" / "NORMAL").glob("*.jpeg"))[:60]
    lines = ["path,patient,label"] + [f"{cohen / 'images' / f},{p},positive" for f, p in
                                      zip(covid["filename"], covid["patientid"], strict=True)]
    lines += [f"{path},{path.stem},normal" for path in normals]
    (tmp_path / "hospital").mkdir()
    (tmp_path / "hospital" / "labels.csv").write_text("\n".join(lines) + "\n")
    result = runner.invoke(app, ["data", "check", "hospital-csv", str(tmp_path / "hospital" / "labels.csv"),
                                 "--json", "--workers", "2"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert (len(covid), len(normals), document["records"]) == (60, 60, 120)
    assert document["by_covid"] == {"covid+": 60, "covid-": 60} and document["by_class"] == {"covid": 60, "normal": 60}
    assert document["invalid"] == document["missing"] == document["unreadable"] == []

    from test_sources_dicom import FILES, SECRETS, write_export
    from unveil.data.sources import load_source

    export = tmp_path / "export"
    write_export(export)
    result = runner.invoke(app, ["data", "check", "dicom-folder", str(export)])
    assert result.exit_code == 0, result.output
    assert f"records: {len(FILES)}" in result.output and "unreadable: 1" in result.output
    assert result.output.count("broken.dcm") == 1
    broken = next(line for line in result.output.splitlines() if "broken.dcm" in line)
    assert "DICOM" in broken and len(broken.split(": ", 1)[1]) > 20  # the reason, on the same line
    records = load_source("dicom-folder", export).records
    for secret in SECRETS:
        assert secret[:16] not in result.output and secret[:16] not in records.astype(str).to_csv()
