"""Loaders on the real samples in ../shared/data (skipped when a sample is absent)."""

import shutil

import pytest

from unveil.data.records import validate_records
from unveil.data.sources import DatasetLayoutError, UnknownSourceError, load_source, resolve_source_name
from unveil.data.sources.covid_chestxray import map_finding
from unveil.data.sources.figure1 import patient_of
from unveil.data.sources.kermany import classify_file
from unveil.errors import UnveilError

from conftest import shared

pytestmark = pytest.mark.realdata


def test_covid_chestxray_sample():
    loaded = load_source("covid-chestxray", shared("covid-chestxray"))
    records = validate_records(loaded.records)
    assert len(records) == 206
    assert records["patient_id"].nunique() == 133
    assert int((records["covid"] == 1).sum()) == 157 and int((records["covid"] == 0).sum()) == 49
    assert records["view"].value_counts().to_dict() == {"PA": 109, "AP": 97}
    assert records["source_view"].value_counts()["AP Supine"] == 43
    assert records["location"].nunique(dropna=False) == 61  # 60 named + blank
    assert not loaded.issues
    # the V7 masks sit beside the data and are found automatically
    assert int(records["mask_path"].notna().sum()) == 157
    assert records["record_id"].str.startswith("covid-chestxray/images/").all()


def test_covid_chestxray_row_with_missing_file_is_an_issue(tmp_path):
    root = shared("covid-chestxray")
    copy = tmp_path / "cohen"
    (copy / "images").mkdir(parents=True)
    lines = (root / "metadata.csv").read_text().splitlines(keepends=True)
    (copy / "metadata.csv").write_text("".join(lines))
    first = load_source("covid-chestxray", root).records.iloc[0]
    shutil.copy(first["path"], copy / "images")
    loaded = load_source("covid-chestxray", copy)
    assert len(loaded.records) == 1
    assert len(loaded.issues) == 205 and {i.kind for i in loaded.issues} == {"missing"}
    assert "does not exist" in loaded.issues[0].problem


def test_figure1_sample():
    loaded = load_source("figure1", shared("figure1"))
    records = loaded.records
    assert len(records) == 55
    assert records["finding"].value_counts().to_dict() == {"covid": 35, "unknown": 15, "normal": 3, "pneumonia": 2}
    assert records["covid"].isna().sum() == 15
    # COVID-00003a and COVID-00003b are one patient
    assert set(records.loc[records["record_id"].str.contains("COVID-00003"), "patient_id"]) == {"COVID-00003"}
    assert records["patient_id"].nunique() == 48


def test_kermany_sample():
    loaded = load_source("kermany", shared("chest_xray"))
    records = loaded.records
    assert records["finding"].value_counts().to_dict() == {"normal": 200, "bacterial": 100, "viral": 100}
    assert (records["covid"] == 0).all()
    assert records["source"].unique().tolist() == ["chestxray"]
    assert (records["original_split"] == "train").all()


@pytest.mark.parametrize("name, expected", [
    ("person1301_virus_2241.jpeg", ("viral", "PNEUMONIA/virus", "person1301")),
    ("person1039_bacteria_2973.jpeg", ("bacterial", "PNEUMONIA/bacteria", "person1039")),
])
def test_kermany_file_names(name, expected):
    assert classify_file("PNEUMONIA", name) == expected


def test_kermany_normal_exam_ids():
    assert classify_file("NORMAL", "IM-0182-0001.jpeg")[2] == "IM-0182"
    assert classify_file("NORMAL", "NORMAL2-IM-0951-0001.jpeg")[2] == "NORMAL2-IM-0951"


@pytest.mark.parametrize("raw, expected", [
    ("COVID-19", (1, "covid")), ("COVID-19, ARDS", (1, "covid")), ("Pneumonia/Viral/COVID-19", (1, "covid")),
    ("No Finding", (0, "normal")), ("Streptococcus", (0, "bacterial")),
    ("Pneumonia/Bacterial/Klebsiella", (0, "bacterial")), ("SARS", (0, "viral")), ("Pneumonia", (0, "pneumonia")),
    ("Lipoid", (0, "other")), ("todo", (None, "unknown")), ("", (None, "unknown")),
])
def test_cohen_finding_mapping(raw, expected):
    assert map_finding(raw) == expected


def test_figure1_patient_of():
    assert patient_of("COVID-00039c") == "COVID-00039" and patient_of("COVID-00001") == "COVID-00001"


def test_layout_errors_name_the_path(tmp_path):
    with pytest.raises(DatasetLayoutError, match=str(tmp_path / "metadata.csv")):
        load_source("covid-chestxray", tmp_path)
    with pytest.raises(DatasetLayoutError, match="train\\|test\\|val"):
        load_source("chestxray", tmp_path)
    with pytest.raises(UnknownSourceError, match="unknown dataset source 'nope'; known sources: chestxray, "):
        resolve_source_name("nope")
    with pytest.raises(UnveilError, match="known sources"):  # the CLI's one catch
        load_source("nope", tmp_path)


def test_lung_segmentation_sample():
    loaded = load_source("lung-segmentation", shared("lung-segmentation"))
    records = validate_records(loaded.records)
    assert records["source"].value_counts().to_dict() == {"shenzhen": 300, "montgomery": 100}
    assert records["mask_path"].notna().all() and not loaded.issues
    assert records["patient_id"].nunique() == 400
    montgomery = records[records["source"] == "montgomery"]
    assert montgomery["mask_path"].str.contains("/masks/MCUCXR_").all()
    assert set(records["finding"]) == {"normal", "other"}


def test_covid_qu_ex_sample():
    loaded = load_source("covid-qu-ex", shared("covid-qu-ex"))
    records = validate_records(loaded.records)
    assert len(records) == 300 and not loaded.issues
    assert records["finding"].value_counts().to_dict() == {"covid": 100, "normal": 100, "other": 100}
    assert int(records["covid"].sum()) == 100
    assert records["mask_path"].notna().all() and records["infection_mask_path"].notna().all()
    assert (records["original_split"] == "train").all() and not records["patient_known"].any()
    assert loaded.notes
