"""Loaders for RSNA, Montgomery, Shenzhen and hospital CSV sets, on small fixtures built in tmp_path."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from unveil.data.records import validate_records
from unveil.data.sources import DatasetLayoutError, hospital_csv, load_source, montgomery, rsna, shenzhen
from unveil.data.sources.base import truthy
from unveil.io.dicom_writer import write_dicom

REAL_SHENZHEN = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "shenzhen"


def _png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path)
    return path


def _image(seed: int, size: int = 16) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8)


def _by_patient(records: pd.DataFrame) -> dict[str, dict]:
    return {row["patient_id"]: row for row in records.to_dict("records")}


def _issues(loaded) -> dict[str, str]:
    """Issue kind by file name."""
    return {Path(issue.path).name: issue.kind for issue in loaded.issues}


# --------------------------------------------------------------------------------------- RSNA


def _rsna_fixture(root: Path, stage: str = "stage_2", detailed: bool = True) -> Path:
    images = root / f"{stage}_train_images"
    for seed, pid in enumerate(["p-normal", "p-two", "p-notnormal", "p-conflict", "p-one", "p-bad"]):
        write_dicom(images / f"{pid}.dcm", np.full((8, 8), 100 * seed, dtype=np.uint16), uid_seed=pid)
    (root / f"{stage}_train_labels.csv").write_text(
        "patientId,x,y,width,height,Target\n"
        "p-normal,,,,,0\n"
        "p-two,10,20,30,40,1\n"
        "p-two,50,60,70,80,1\n"
        "p-notnormal,,,,,0\n"
        "p-conflict,1,2,3,4,1\n"
        "p-conflict,,,,,0\n"
        "p-missing,,,,,0\n"
        "p-one,5,5,5,5,1\n"
        "p-bad,,,,,maybe\n"
    )
    if detailed:
        (root / f"{stage}_detailed_class_info.csv").write_text(
            "patientId,class\n"
            "p-normal,Normal\n"
            "p-two,Lung Opacity\n"
            "p-two,Lung Opacity\n"
            "p-notnormal,No Lung Opacity / Not Normal\n"
            "p-conflict,Lung Opacity\n"
            "p-conflict,Lung Opacity\n"
            "p-missing,Normal\n"
            "p-one,Lung Opacity\n"
            "p-bad,Normal\n"
        )
    return root


def test_rsna_records_labels_and_issues(tmp_path, monkeypatch):
    import pydicom

    def _no_dicom(*args, **kwargs):
        raise AssertionError("the RSNA loader must not open DICOM files")

    monkeypatch.setattr(pydicom, "dcmread", _no_dicom)
    root = _rsna_fixture(tmp_path / "rsna")
    loaded = rsna.load(root)
    records = loaded.records
    validate_records(records)
    assert loaded.source == "rsna"
    assert len(records) == 4
    rows = _by_patient(records)
    assert set(rows) == {"p-normal", "p-two", "p-notnormal", "p-one"}
    assert (rows["p-normal"]["finding"], rows["p-normal"]["source_finding"]) == ("normal", "Normal")
    assert (rows["p-two"]["finding"], rows["p-two"]["boxes"]) == ("pneumonia", 2)
    assert rows["p-one"]["boxes"] == 1 and rows["p-normal"]["boxes"] == 0
    assert (rows["p-notnormal"]["finding"], rows["p-notnormal"]["source_finding"]) == (
        "other", "No Lung Opacity / Not Normal")
    assert (records["covid"] == 0).all()
    assert records[["view", "sex", "age", "mask_path"]].isna().all().all()
    assert rows["p-two"]["record_id"] == "rsna/stage_2_train_images/p-two.dcm"
    assert rows["p-two"]["path"] == str((root / "stage_2_train_images" / "p-two.dcm").resolve())

    assert _issues(loaded) == {"p-conflict.dcm": "invalid", "p-missing.dcm": "missing", "p-bad.dcm": "invalid"}
    missing = next(i for i in loaded.issues if i.kind == "missing")
    assert missing.problem == "listed in stage_2_train_labels.csv row 8 but the file does not exist"
    conflict = next(i for i in loaded.issues if "p-conflict" in i.path)
    assert "row 6" in conflict.problem and "row 7" in conflict.problem
    assert "maybe" in next(i for i in loaded.issues if "p-bad" in i.path).problem


def test_rsna_stage1_names_without_detailed_file(tmp_path):
    root = _rsna_fixture(tmp_path / "rsna1", stage="stage_1", detailed=False)
    rows = _by_patient(rsna.load(root).records)
    assert set(rows) == {"p-normal", "p-two", "p-notnormal", "p-one"}
    assert (rows["p-notnormal"]["finding"], rows["p-notnormal"]["source_finding"]) == ("normal", "Target=0")
    assert (rows["p-two"]["finding"], rows["p-two"]["source_finding"]) == ("pneumonia", "Target=1")
    assert rows["p-one"]["record_id"] == "rsna/stage_1_train_images/p-one.dcm"


def test_rsna_layout_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetLayoutError, match="stage_2_train_labels.csv"):
        rsna.load(tmp_path / "empty")
    root = tmp_path / "noimages"
    root.mkdir()
    (root / "stage_2_train_labels.csv").write_text("patientId,x,y,width,height,Target\n")
    with pytest.raises(DatasetLayoutError, match="stage_2_train_images"):
        rsna.load(root)
    (root / "stage_2_train_images").mkdir()
    (root / "stage_2_train_labels.csv").write_text("patientId,Target\na,0\n")
    with pytest.raises(DatasetLayoutError, match="width"):
        rsna.load(root)


# --------------------------------------------------------------------------------- Montgomery


def _montgomery_fixture(root: Path) -> Path:
    readings = {
        "MCUCXR_0001_0": "Patient's Sex: M\nPatient's Age: 045Y\n\nnormal\n",
        "MCUCXR_0002_1": "Patient's Sex: F\nPatient's Age: 062Y\n\nright upper lobe cavitary TB\n",
        "MCUCXR_0003_0": "Patient's Sex: O\nPatient's Age: 0XXY\nnormal\n",
    }
    for seed, (name, text) in enumerate(readings.items()):
        _png(root / "CXR_png" / f"{name}.png", _image(seed))
        left = np.zeros((16, 16), np.uint8)
        left[2:14, 1:8 + seed] = 255
        _png(root / "ManualMask" / "leftMask" / f"{name}.png", left)
        if name != "MCUCXR_0003_0":
            right = np.zeros((16, 16), np.uint8)
            right[3:12, 6:15] = 255
            _png(root / "ManualMask" / "rightMask" / f"{name}.png", right)
        (root / "ClinicalReadings").mkdir(parents=True, exist_ok=True)
        (root / "ClinicalReadings" / f"{name}.txt").write_text(text)
    (root / "CXR_png" / "Thumbs.db").write_bytes(b"\0")
    return root


def test_montgomery_records_masks_and_issues(tmp_path):
    root = _montgomery_fixture(tmp_path / "mc")
    cache = tmp_path / "cache"
    loaded = montgomery.load(root, mask_cache=cache)
    records = loaded.records
    validate_records(records)
    assert len(records) == 3
    rows = _by_patient(records)
    assert set(rows) == {"MCUCXR_0001", "MCUCXR_0002", "MCUCXR_0003"}
    assert (rows["MCUCXR_0001"]["finding"], rows["MCUCXR_0001"]["source_finding"]) == ("normal", "normal")
    assert (rows["MCUCXR_0002"]["finding"], rows["MCUCXR_0002"]["source_finding"]) == ("other", "tuberculosis")
    assert (records["covid"] == 0).all() and (records["view"] == "PA").all()
    assert (rows["MCUCXR_0001"]["sex"], rows["MCUCXR_0001"]["age"]) == ("M", 45.0)
    assert (rows["MCUCXR_0002"]["sex"], rows["MCUCXR_0002"]["age"]) == ("F", 62.0)
    assert pd.isna(rows["MCUCXR_0003"]["sex"]) and pd.isna(rows["MCUCXR_0003"]["age"])
    assert rows["MCUCXR_0002"]["reading"] == "right upper lobe cavitary TB"
    assert rows["MCUCXR_0002"]["record_id"] == "montgomery/CXR_png/MCUCXR_0002_1.png"

    for name in ("MCUCXR_0001_0", "MCUCXR_0002_1"):
        mask_path = Path(_by_patient(records)[name[:11]]["mask_path"])
        assert mask_path == (cache / f"{name}.png").resolve()
        left = np.asarray(Image.open(root / "ManualMask" / "leftMask" / f"{name}.png")) > 0
        right = np.asarray(Image.open(root / "ManualMask" / "rightMask" / f"{name}.png")) > 0
        combined = np.asarray(Image.open(mask_path))
        np.testing.assert_array_equal(combined > 0, left | right)
        assert set(np.unique(combined)) == {0, 255}
    assert pd.isna(rows["MCUCXR_0003"]["mask_path"])
    assert _issues(loaded) == {"MCUCXR_0003_0.png": "invalid"}
    assert "rightMask" in loaded.issues[0].path
    assert loaded.excluded == {"not an image file in CXR_png": 1}


def test_montgomery_mask_cache_default_and_reuse(tmp_path):
    root = _montgomery_fixture(tmp_path / "mc")
    loaded = montgomery.load(root)
    out = root / "ManualMask" / "combined" / "MCUCXR_0001_0.png"
    assert loaded.records["mask_path"].dropna().str.startswith(str(out.parent.resolve())).all()
    assert out.is_file()
    stamp = out.stat().st_mtime_ns
    montgomery.load(root)  # present and newer than its inputs: not rewritten
    assert out.stat().st_mtime_ns == stamp

    left = root / "ManualMask" / "leftMask" / "MCUCXR_0001_0.png"
    _png(left, np.full((16, 16), 255, np.uint8))
    os.utime(left, ns=(stamp + 10**9, stamp + 10**9))
    montgomery.load(root)  # an input changed: rewritten
    assert (np.asarray(Image.open(out)) == 255).all()


def test_montgomery_cache_falls_back_to_user_cache(tmp_path, monkeypatch):
    root = _montgomery_fixture(tmp_path / "mc")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(montgomery.os, "access", lambda *args, **kwargs: False)
    cache = montgomery.default_mask_cache(root)
    assert cache.parent == tmp_path / "xdg" / "unveil" / "montgomery-masks"


def test_combine_masks_rejects_size_mismatch(tmp_path):
    left = _png(tmp_path / "l.png", np.zeros((4, 4)))
    right = _png(tmp_path / "r.png", np.zeros((4, 5)))
    with pytest.raises(DatasetLayoutError, match="4x4"):
        montgomery.combine_masks(left, right, tmp_path / "out.png")
    assert not (tmp_path / "out.png").exists()


def test_montgomery_layout_error(tmp_path):
    with pytest.raises(DatasetLayoutError, match="CXR_png"):
        montgomery.load(tmp_path)


# ----------------------------------------------------------------------------------- Shenzhen


def _shenzhen_fixture(root: Path) -> Path:
    for seed, name in enumerate(["CHNCXR_0001_0", "CHNCXR_0002_1", "CHNCXR_0003_0"]):
        _png(root / "CXR_png" / f"{name}.png", _image(seed))
    for name in ("CHNCXR_0001_0", "CHNCXR_0002_1", "CHNCXR_0009_0"):
        _png(root / "mask" / f"{name}_mask.png", np.full((16, 16), 200))
    _png(root / "CXR_png" / "scan.png", _image(9))
    (root / "ClinicalReadings").mkdir()
    (root / "ClinicalReadings" / "CHNCXR_0001_0.txt").write_text("male 35yrs\nnormal\n")
    (root / "ClinicalReadings" / "CHNCXR_0002_1.txt").write_text("female 44yrs\nSTB,ATB&PTB in the right upper field\n")
    return root


def test_shenzhen_records(tmp_path):
    root = _shenzhen_fixture(tmp_path / "sz")
    loaded = shenzhen.load(root)
    records = loaded.records
    validate_records(records)
    assert len(records) == 3
    rows = _by_patient(records)
    assert set(rows) == {"CHNCXR_0001", "CHNCXR_0002", "CHNCXR_0003"}
    assert rows["CHNCXR_0001"]["finding"] == "normal" and rows["CHNCXR_0003"]["finding"] == "normal"
    assert (rows["CHNCXR_0002"]["finding"], rows["CHNCXR_0002"]["source_finding"]) == ("other", "tuberculosis")
    assert (records["covid"] == 0).all() and (records["view"] == "PA").all()
    assert (rows["CHNCXR_0001"]["sex"], rows["CHNCXR_0001"]["age"]) == ("M", 35.0)
    assert (rows["CHNCXR_0002"]["sex"], rows["CHNCXR_0002"]["age"]) == ("F", 44.0)
    assert rows["CHNCXR_0002"]["reading"] == "STB,ATB&PTB in the right upper field"
    assert pd.isna(rows["CHNCXR_0003"]["sex"]) and pd.isna(rows["CHNCXR_0003"]["mask_path"])
    assert rows["CHNCXR_0001"]["mask_path"] == str((root / "mask" / "CHNCXR_0001_0_mask.png").resolve())
    assert _issues(loaded) == {"scan.png": "invalid"}
    assert loaded.excluded == {"mask without an image in CXR_png": 1}


@pytest.mark.parametrize(("line", "expected"), [
    ("male 35yrs", ("M", 35.0)), ("Female 44yrs", ("F", 44.0)), ("male35yrs", ("M", 35.0)),
    ("female 6months", ("F", 0.5)), ("male", ("M", None)), ("normal", (None, None)),
])
def test_shenzhen_sex_age_line(line, expected):
    assert shenzhen.parse_sex_age(line) == expected


# ------------------------------------------------------------------------------ hospital CSV


def _hospital_fixture(root: Path) -> Path:
    for seed, name in enumerate(["a.png", "b.png", "c.png", "d.png"]):
        _png(root / "images" / name, _image(seed))
    absolute_b = (root / "images" / "b.png").resolve()
    (root / "exams.csv").write_text(
        "file,pid,covid_label,Sex,Age,View,dx\n"
        "images/a.png,P1,Positive,M,54,PA,\n"
        f"{absolute_b},P1,neg,M,54,AP Supine,Bacterial pneumonia\n"
        "images/c.png,P2,maybe,F,40,PA,\n"
        "images/missing.png,P3,1,F,33,PA,\n"
        "images/d.png,P4,0,female,,,normal\n"
        "images/a.png,P1,covid-19,M,54,PA,\n"
    )
    return root


HOSPITAL_OPTIONS = {"csv": "exams.csv", "path_column": "file", "patient_column": "pid",
                    "label_column": "covid_label", "finding_column": "dx"}


def test_hospital_csv_records_and_issues(tmp_path):
    root = _hospital_fixture(tmp_path / "corda")
    loaded = hospital_csv.load(root, **HOSPITAL_OPTIONS)
    records = loaded.records
    validate_records(records)
    assert loaded.source == "hospital-csv"
    assert len(records) == 3
    rows = {Path(p).name: r for p, r in zip(records["path"], records.to_dict("records"), strict=True)}
    assert set(rows) == {"a.png", "b.png", "d.png"}
    assert (rows["a.png"]["covid"], rows["a.png"]["finding"], rows["a.png"]["patient_id"]) == (1, "covid", "P1")
    assert (rows["b.png"]["covid"], rows["b.png"]["finding"]) == (0, "bacterial")
    assert rows["b.png"]["source_finding"] == "Bacterial pneumonia"
    assert (rows["b.png"]["view"], rows["b.png"]["source_view"]) == ("AP", "AP Supine")
    assert (rows["d.png"]["finding"], rows["d.png"]["sex"]) == ("normal", "F")
    assert pd.isna(rows["d.png"]["age"]) and rows["a.png"]["age"] == 54.0
    assert rows["b.png"]["record_id"] == "hospital-csv/images/b.png"
    assert rows["a.png"]["path"] == str((root / "images" / "a.png").resolve())

    kinds = _issues(loaded)
    assert kinds == {"c.png": "invalid", "missing.png": "missing", "a.png": "invalid"}
    bad = next(i for i in loaded.issues if i.path.endswith("c.png"))
    assert "row 4" in bad.problem and "'maybe'" in bad.problem
    missing = next(i for i in loaded.issues if i.kind == "missing")
    assert missing.problem == "listed in exams.csv row 5 but the file does not exist"
    assert "row 7" in next(i for i in loaded.issues if i.path.endswith("a.png")).problem


def test_hospital_csv_default_labels_csv_root_file_and_source_name(tmp_path):
    root = tmp_path / "h"
    for seed, name in enumerate(["x.png", "y.png"]):
        _png(root / name, _image(seed))
    (root / "labels.csv").write_text("path,patient,label\nx.png,1,COVID\ny.png,2,negative\n")
    rows = _by_patient(hospital_csv.load(root).records)
    assert (rows["1"]["finding"], rows["2"]["finding"], rows["2"]["covid"]) == ("covid", "unknown", 0)
    assert rows["2"]["source_finding"] == "negative"

    second = hospital_csv.load(root / "labels.csv", source_name="corda-2")
    assert second.source == "corda-2"
    assert set(second.records["record_id"]) == {"corda-2/x.png", "corda-2/y.png"}
    assert (second.records["source"] == "corda-2").all()


def test_hospital_csv_layout_errors(tmp_path):
    root = _hospital_fixture(tmp_path / "corda")
    with pytest.raises(DatasetLayoutError, match="labels.csv"):
        hospital_csv.load(root)
    with pytest.raises(DatasetLayoutError) as error:
        hospital_csv.load(root, csv="exams.csv", patient_column="pid", label_column="covid_label")
    assert "'path'" in str(error.value) and "'file'" in str(error.value) and "'covid_label'" in str(error.value)
    with pytest.raises(DatasetLayoutError, match=r"labels \['no'\] are listed as both positive and negative"):
        hospital_csv.load(root, **{**HOSPITAL_OPTIONS, "positive_labels": ("yes", "No")})


def test_bad_loader_option_values_are_user_errors(tmp_path):
    """A mistyped -o KEY=VALUE value is one DatasetLayoutError (an UnveilError) naming it, never a bare
    LookupError/KeyError or a silent default."""
    root = _hospital_fixture(tmp_path / "corda")
    with pytest.raises(DatasetLayoutError, match="loader option allow_outside='maybe': expected true or false"):
        load_source("hospital-csv", root, **HOSPITAL_OPTIONS, allow_outside="maybe")
    with pytest.raises(DatasetLayoutError, match="unknown text encoding 'utf-9'"):
        load_source("hospital-csv", root, **{**HOSPITAL_OPTIONS, "encoding": "utf-9"})
    with pytest.raises(DatasetLayoutError, match="has no option\\(s\\) colour"):
        load_source("hospital-csv", root, colour="red")
    for value, expected in (("true", True), ("No", False), ("1", True), ("off", False), (True, True)):
        assert truthy(value) is expected


def _csv_set(root: Path, lines: list[str], images: int = 4) -> Path:
    """A folder of ``images`` PNGs (x0.png...) and labels.csv with ``lines`` (header first)."""
    for seed in range(images):
        _png(root / f"x{seed}.png", _image(seed))
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return root


def test_hospital_csv_takes_absolute_paths_and_files_outside_its_folder(tmp_path):
    """Paths in the CSV are the user's explicit choice: absolute or outside the CSV's folder, they load."""
    elsewhere = [_png(tmp_path / "elsewhere" / f"e{i}.png", _image(10 + i)) for i in range(2)]
    root = _csv_set(tmp_path / "h", ["path,patient,label", "x0.png,P0,positive", f"{elsewhere[0]},P1,normal",
                                     "../elsewhere/e1.png,P2,negative"], images=1)
    loaded = hospital_csv.load(root / "labels.csv")
    assert not loaded.issues and len(loaded.records) == 3
    rows = {Path(p).name: r for p, r in zip(loaded.records["path"], loaded.records.to_dict("records"), strict=True)}
    assert rows["e0.png"]["record_id"] == "hospital-csv/../elsewhere/e0.png"
    assert rows["e1.png"]["path"] == str(elsewhere[1].resolve())
    kept_in = hospital_csv.load(root, allow_outside="false")  # still refusable, by the user
    assert list(kept_in.records["patient_id"]) == ["P0"] and sum(i.count for i in kept_in.issues) == 2


@pytest.mark.parametrize(("word", "covid", "finding"), [
    ("positive", 1, "covid"), (" COVID ", 1, "covid"), ("Covid-19", 1, "covid"), ("covid19", 1, "covid"),
    ("1", 1, "covid"), ("yes", 1, "covid"), ("TRUE", 1, "covid"),
    ("negative", 0, "unknown"), ("normal", 0, "normal"), ("Healthy", 0, "normal"), ("non-covid", 0, "unknown"),
    ("Non COVID", 0, "unknown"), ("0", 0, "unknown"), ("no", 0, "unknown"), ("false", 0, "unknown"),
])
def test_hospital_csv_reads_the_label_words_clinicians_use(tmp_path, word, covid, finding):
    root = _csv_set(tmp_path / "h", ["path,patient,label", f"x0.png,P0,{word}"], images=1)
    record = hospital_csv.load(root).records.iloc[0]
    assert (record["covid"], record["finding"], record["label"]) == (covid, finding, word.strip())


def test_hospital_csv_refuses_other_labels_naming_value_row_and_option(tmp_path):
    root = _csv_set(tmp_path / "h", ["path,patient,diagnosis", "x0.png,P0,positive", "x1.png,P1,sano",
                                     "x2.png,P2,maybe", "x3.png,P3,sano"])
    loaded = hospital_csv.load(root, label_column="diagnosis")
    assert len(loaded.records) == 1
    sano = next(i for i in loaded.issues if "'sano'" in i.problem)
    assert sano.count == 2 and "row 3" in sano.problem and "row 5" in sano.problem and "labels.csv" in sano.problem
    assert "'diagnosis'" in sano.problem and "negative_labels" in sano.problem and "positive_labels" in sano.problem
    mapped = hospital_csv.load(root, label_column="diagnosis", negative_labels="Sano")  # one word, from -o
    assert sorted(mapped.records["patient_id"]) == ["P0", "P1", "P3"]
    assert set(mapped.records.loc[mapped.records["patient_id"] == "P1", "finding"]) == {"unknown"}
    with pytest.raises(DatasetLayoutError, match=r"'normal'.*positive_labels.*negative"):
        hospital_csv.load(root, label_column="diagnosis", positive_labels="normal")


def test_hospital_csv_a_repeated_problem_is_one_issue_with_its_count(tmp_path):
    lines = ["path,patient,label", "x0.png,P0,1"] + [f"gone{i}.png,Q{i},0" for i in range(30)]
    loaded = hospital_csv.load(_csv_set(tmp_path / "h", lines, images=1))
    assert len(loaded.issues) == 1
    issue = loaded.issues[0]
    assert (issue.kind, issue.count) == ("missing", 30) and issue.to_dict()["count"] == 30
    assert "gone0.png" in issue.path and "30" in issue.problem
    from unveil.data.check import summarise

    text = summarise([loaded], read_images=False).to_text()
    assert "missing: 30" in text and text.count("does not exist") == 1


def test_hospital_csv_without_a_single_record_is_an_error_naming_the_file(tmp_path):
    from typer.testing import CliRunner

    from unveil.cli import app

    root = _csv_set(tmp_path / "h", ["path,patient,label"] + [f"gone{i}.png,Q{i},0" for i in range(5)])
    with pytest.raises(DatasetLayoutError, match=r"labels\.csv: none of its 5 rows gave a record.*does not exist"):
        hospital_csv.load(root)
    result = CliRunner().invoke(app, ["data", "check", "hospital-csv", str(root / "labels.csv")])
    assert result.exit_code == 2 and result.output.startswith("error: ") and "labels.csv" in result.output


def test_hospital_csv_site_column_gives_the_audit_two_locations(tmp_path):
    """Several hospitals in one CSV: the site reaches the record table's location, which the audit's metadata
    probes and metadata-only baselines read (source stays the loader's name: patients are keyed by it)."""
    from unveil.audit.metadata import informative_fields, metadata_table, probe_target

    lines = ["path,patient,label,site"] + [f"x{i}.png,P{i},{'positive' if i % 2 else 'normal'},"
                                           f"{'north' if i < 3 else 'south'}" for i in range(6)]
    loaded = hospital_csv.load(_csv_set(tmp_path / "h", lines, images=6))
    assert loaded.records["location"].value_counts().to_dict() == {"north": 3, "south": 3}
    assert set(loaded.records["source"]) == {"hospital-csv"}
    table = metadata_table(loaded.records)
    assert "location" in informative_fields(table)
    assert probe_target(table["location"], min_images=3)[:2] in {("north", "south"), ("south", "north")}
    renamed = lines[:1] + [line.replace("north", "") for line in lines[1:]]
    (tmp_path / "h" / "labels.csv").write_text("\n".join(renamed).replace(",site", ",Hospital") + "\n")
    named = hospital_csv.load(tmp_path / "h", site_column="hospital")
    assert named.records["location"].isna().sum() == 3 and set(named.records["location"].dropna()) == {"south"}
    with pytest.raises(DatasetLayoutError, match="no column 'ward' .*site_column"):
        hospital_csv.load(tmp_path / "h", site_column="ward")


# ---------------------------------------------------------------------------------- registry


def test_registry_loads_each_source(tmp_path):
    assert len(load_source("rsna", _rsna_fixture(tmp_path / "rsna")).records) == 4
    assert len(load_source("rsna-pneumonia", tmp_path / "rsna").records) == 4
    mc = load_source("montgomery", _montgomery_fixture(tmp_path / "mc"), mask_cache=tmp_path / "cache")
    assert len(mc.records) == 3 and mc.source == "montgomery"
    assert len(load_source("shenzhen", _shenzhen_fixture(tmp_path / "sz")).records) == 3
    hospital = load_source("corda", _hospital_fixture(tmp_path / "corda"), **HOSPITAL_OPTIONS)
    assert len(hospital.records) == 3 and hospital.source == "hospital-csv"


# --------------------------------------------------------------------------------- real data


@pytest.mark.realdata
@pytest.mark.skipif(not REAL_SHENZHEN.is_dir(), reason=f"{REAL_SHENZHEN} is absent")
def test_real_shenzhen_sample():
    loaded = load_source("shenzhen", REAL_SHENZHEN)
    records = validate_records(loaded.records)
    assert len(records) == 10
    assert records["mask_path"].notna().sum() == 10
    assert all(Path(p).is_file() for p in records["mask_path"])
    assert (records["finding"] == "normal").all() and (records["covid"] == 0).all()
    assert records["record_id"].str.startswith("shenzhen/CXR_png/CHNCXR_").all()
    assert loaded.issues == [] and loaded.excluded == {}
    mask = np.asarray(Image.open(records["mask_path"].iloc[0]))
    assert (mask > shenzhen.MASK_THRESHOLD).any()


# ------------------------------------------------------------- lung-segmentation (Shenzhen + Montgomery)


def test_lung_segmentation_pairs_both_naming_rules_and_splits_sources(tmp_path):
    root = tmp_path / "lungseg"
    for seed, name in enumerate(["CHNCXR_0001_0", "CHNCXR_0002_1", "MCUCXR_0003_1", "MCUCXR_0004_0"]):
        _png(root / "CXR_png" / f"{name}.png", _image(seed))
    _png(root / "masks" / "CHNCXR_0001_0_mask.png", np.full((16, 16), 255))
    _png(root / "masks" / "CHNCXR_0002_1_mask.png", np.full((16, 16), 255))
    _png(root / "masks" / "MCUCXR_0003_1.png", np.full((16, 16), 255))  # Montgomery: the image's own name
    _png(root / "masks" / "MCUCXR_0009_0.png", np.full((16, 16), 255))  # orphan mask
    _png(root / "CXR_png" / "scan.png", _image(9))  # name follows neither rule
    loaded = load_source("lung-segmentation", root)
    records = validate_records(loaded.records)
    by_patient = _by_patient(records)
    assert set(by_patient) == {"CHNCXR_0001", "CHNCXR_0002", "MCUCXR_0003", "MCUCXR_0004"}
    assert by_patient["CHNCXR_0001"]["source"] == "shenzhen" and by_patient["MCUCXR_0003"]["source"] == "montgomery"
    assert by_patient["CHNCXR_0001"]["finding"] == "normal"
    assert by_patient["CHNCXR_0002"]["finding"] == "other"
    assert by_patient["CHNCXR_0002"]["source_finding"] == "tuberculosis"
    assert by_patient["MCUCXR_0003"]["mask_path"].endswith("masks/MCUCXR_0003_1.png")
    assert by_patient["CHNCXR_0002"]["mask_path"].endswith("masks/CHNCXR_0002_1_mask.png")
    assert pd.isna(by_patient["MCUCXR_0004"]["mask_path"])
    assert records["record_id"].str.startswith("lung-segmentation/CXR_png/").all()
    assert (records["covid"] == 0).all() and (records["view"] == "PA").all()
    assert _issues(loaded) == {"MCUCXR_0004_0.png": "missing", "scan.png": "invalid"}
    assert loaded.excluded == {"mask without an image in CXR_png": 1}


def test_lung_segmentation_needs_both_folders(tmp_path):
    _png(tmp_path / "CXR_png" / "CHNCXR_0001_0.png", _image(0))
    with pytest.raises(DatasetLayoutError, match="masks"):
        load_source("lung-segmentation", tmp_path)


# ----------------------------------------------------------------------------------- COVID-QU-Ex


def _qu_ex_fixture(root: Path) -> Path:
    base = root / "Infection Segmentation Data"
    files = {("Train", "COVID-19"): ["covid_1 (2).png"], ("Train", "Normal"): ["Normal (11).png"],
             ("Val", "Non-COVID"): ["Non_COVID (7).png"], ("Test", "COVID-19"): ["covid_9.png"]}
    for seed, ((part, klass), names) in enumerate(files.items()):
        for name in names:
            _png(base / part / klass / "images" / name, _image(seed))
            _png(base / part / klass / "lung masks" / name, np.full((16, 16), 255))
            _png(base / part / klass / "infection masks" / name, np.zeros((16, 16)))
    return base


def test_covid_qu_ex_labels_masks_parts_and_no_patient_ids(tmp_path):
    base = _qu_ex_fixture(tmp_path)
    (base / "Test" / "COVID-19" / "infection masks" / "covid_9.png").unlink()
    # a mask whose name differs only in case is still found
    (base / "Val" / "Non-COVID" / "lung masks" / "Non_COVID (7).png").rename(
        base / "Val" / "Non-COVID" / "lung masks" / "non_COVID (7).png")
    loaded = load_source("covid-qu-ex", tmp_path)
    records = validate_records(loaded.records).set_index("patient_id")
    assert set(records.index) == {"Train/COVID-19/covid_1 (2)", "Train/Normal/Normal (11)",
                                  "Val/Non-COVID/Non_COVID (7)", "Test/COVID-19/covid_9"}
    covid = records.loc["Train/COVID-19/covid_1 (2)"]
    assert covid["covid"] == 1 and covid["finding"] == "covid" and covid["source_finding"] == "COVID-19"
    assert covid["mask_path"].endswith("lung masks/covid_1 (2).png")
    assert covid["infection_mask_path"].endswith("infection masks/covid_1 (2).png")
    other = records.loc["Val/Non-COVID/Non_COVID (7)"]
    assert other["covid"] == 0 and other["finding"] == "other" and other["original_split"] == "val"
    assert other["mask_path"].endswith("non_COVID (7).png")
    assert records.loc["Train/Normal/Normal (11)", "finding"] == "normal"
    assert pd.isna(records.loc["Test/COVID-19/covid_9", "infection_mask_path"])
    assert records.loc["Test/COVID-19/covid_9", "original_split"] == "test"
    assert not records["patient_known"].any()
    assert _issues(loaded) == {"covid_9.png": "missing"}
    assert any("no patient ids" in note for note in loaded.notes)
    # the root may also be the "Infection Segmentation Data" folder itself
    assert len(load_source("covid-qu-ex", base).records) == 4


def test_covid_qu_ex_layout_error_and_data_check_says_patients_are_unknown(tmp_path):
    from unveil.data.check import check_dataset

    with pytest.raises(DatasetLayoutError, match="Infection Segmentation Data"):
        load_source("covid-qu-ex", tmp_path)
    _qu_ex_fixture(tmp_path)
    report = check_dataset("covid-qu-ex", tmp_path, read_images=False)
    assert "no patient ids" in report.to_text() and "no patient ids" in report.to_dict()["notes"][0]


def test_original_split_keeps_the_sources_own_parts(tmp_path):
    from unveil.data.splits import SplitError, original_split

    _qu_ex_fixture(tmp_path)
    records = load_source("covid-qu-ex", tmp_path).records
    split = original_split(records)
    assert dict(zip(records["patient_id"], split, strict=True)) == {
        "Train/COVID-19/covid_1 (2)": "train", "Train/Normal/Normal (11)": "train",
        "Val/Non-COVID/Non_COVID (7)": "val", "Test/COVID-19/covid_9": "test"}
    with pytest.raises(SplitError, match="original_split"):
        original_split(records.drop(columns="original_split"))


# ------------------------------------------------------------------------------- ChestXRay (Kermany)


def _kermany_fixture(root: Path) -> Path:
    """Mendeley's train/ and test/ folders, as published: the same person number (and exam id) recurs in both, with
    another diagnosis (person1: bacterial in train/, viral in test/); val/ is Kaggle's, carved out of train/."""
    names = ("train/PNEUMONIA/person1_bacteria_1.jpeg", "train/PNEUMONIA/person1_bacteria_2.jpeg",
             "train/NORMAL/IM-0001-0001.jpeg", "val/PNEUMONIA/person7_virus_30.jpeg",
             "test/PNEUMONIA/person1_virus_6.jpeg", "test/PNEUMONIA/person1_virus_7.jpeg",
             "test/NORMAL/IM-0001-0001.jpeg")
    for seed, name in enumerate(names):
        _png(root / name, _image(seed, 32))
    return root


def test_kermany_person_ids_are_scoped_per_folder(tmp_path):
    from typer.testing import CliRunner

    from unveil.cli import app
    from unveil.data.leakage import LeakageError, check_leakage
    from unveil.data.splits import original_split

    root = _kermany_fixture(tmp_path / "chest_xray")
    records = load_source("chestxray", root).records
    patients = dict(zip(records["record_id"].str.removeprefix("chestxray/"), records["patient_id"], strict=True))
    assert patients["train/PNEUMONIA/person1_bacteria_2.jpeg"] == "person1"
    assert patients["test/PNEUMONIA/person1_virus_6.jpeg"] == "person1 (test)"  # another child than train's person1
    assert patients["test/NORMAL/IM-0001-0001.jpeg"] == "IM-0001 (test)"
    assert patients["val/PNEUMONIA/person7_virus_30.jpeg"] == "person7"  # val/ shares train/'s numbering
    assert records["patient_id"].nunique() == 5
    check_leakage(records.assign(split=original_split(records)))  # the official parts: no patient in two of them
    split = CliRunner().invoke(app, ["data", "split", "chestxray", str(root), "--out", str(tmp_path / "s.csv"),
                                     "--respect-original-split"])
    assert split.exit_code == 0, split.output

    # the other reading, on request: one id, one child, whatever the folder
    shared = load_source("chestxray", root, shared_patient_ids="yes").records
    assert set(shared["patient_id"]) == {"person1", "IM-0001", "person7"}
    with pytest.raises(LeakageError, match="chestxray::person1 in test\\+train"):
        check_leakage(shared.assign(split=original_split(shared)))
    refused = CliRunner().invoke(app, ["data", "split", "chestxray", str(root), "--out", str(tmp_path / "t.csv"),
                                       "--respect-original-split", "-o", "shared_patient_ids=true"])
    assert refused.exit_code != 0 and "in more than one split" in refused.output
    with pytest.raises(DatasetLayoutError, match="loader option shared_patient_ids='maybe': expected true or false"):
        load_source("chestxray", root, shared_patient_ids="maybe")
