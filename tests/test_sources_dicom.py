"""The dicom-folder source: a hospital's DICOM export (a folder tree) with a labels CSV, on fixtures written
with the project's DICOM writer. The raw PatientID must never leave the files."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest

from unveil.data.records import validate_records
from unveil.data.sources import DatasetLayoutError, load_source
from unveil.data.sources.dicom_folder import DEFAULT_SALT, pseudonym
from unveil.io import write_dicom

#: PatientIDs written into the fixture; none may appear in records, issues, notes or logs.
SECRETS = ("ZZPID-ALPHA-0001", "ZZPID-BRAVO-0002", "ZZPID-CHARLIE-0003-" + "X" * 50)  # the last breaks VR LO (64)
NORTH = {"Manufacturer": "Acme Medical", "InstitutionName": "North General", "StationName": "NG-DR1"}
SOUTH = {"Manufacturer": "Zeta Imaging", "InstitutionName": "South Clinic", "StationName": "SC-CR2"}
#: relative path -> (PatientID or "", ViewPosition, site)
FILES = {
    "study1/IM0001": (SECRETS[0], "PA", NORTH),  # no suffix: found by content
    "study1/IM0002.dcm": (SECRETS[0], "AP", NORTH),
    "study2/series/IM0003.DCM": (SECRETS[1], "PA", SOUTH),
    "study3/img.bin": (SECRETS[2], "LL", SOUTH),
    "study3/noid.dcm": ("", "PA", SOUTH),
}


def write_export(root: Path) -> dict[str, str]:
    """The export: FILES, a malformed file (DICM preamble, cut inside its file meta), a readme, and labels.csv
    keyed by SOPInstanceUID for some rows and by relative path for others. Returns SOPInstanceUID by path."""
    rng = np.random.default_rng(0)
    uids = {}
    for name, (patient, view, site) in FILES.items():
        header = {**site, **({"PatientID": patient} if patient else {})}
        with warnings.catch_warnings():  # pydicom warns (without the value) about the over-long PatientID
            warnings.simplefilter("ignore")
            path = write_dicom(root / name, rng.integers(0, 4096, (16, 16), dtype=np.uint16), view=view,
                               uid_seed=name, header=header)
        uids[name] = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
    (root / "study2" / "broken.dcm").write_bytes((root / "study1" / "IM0001").read_bytes()[:200])
    (root / "README.txt").write_text("exported by the PACS\n")
    (root / "labels.csv").write_text(
        "SOPInstanceUID,path,label\n"
        f"{uids['study1/IM0001']},,positive\n"
        f"{uids['study1/IM0002.dcm']},,Positive\n"
        ",study2/series/IM0003.DCM,normal\n"
        ",study3/img.bin,healthy\n"
        f"{uids['study3/noid.dcm']},,negative\n"
        "1.2.3.999,,positive\n")
    return uids


def _leaks(*texts: object) -> list[str]:
    return [secret for secret in SECRETS for text in texts if secret[:16] in str(text)]


def test_dicom_folder_records_pseudonymised_patients_views_sites_and_labels(tmp_path, caplog):
    root = tmp_path / "export"
    write_export(root)
    caplog.set_level(logging.DEBUG)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = load_source("dicom-folder", root)
    assert [str(w.message) for w in caught] == []  # the over-long PatientID is read without pydicom's warning
    records = validate_records(loaded.records)
    rows = {r["record_id"].removeprefix("dicom-folder/"): r for r in records.to_dict("records")}
    assert set(rows) == set(FILES) and loaded.source == "dicom-folder"
    assert rows["study1/IM0001"]["patient_id"] == rows["study1/IM0002.dcm"]["patient_id"] == \
        pseudonym(SECRETS[0], DEFAULT_SALT)
    assert len({r["patient_id"] for r in rows.values()}) == 4
    assert rows["study3/noid.dcm"]["patient_known"] is False and rows["study1/IM0001"]["patient_known"] is True
    assert [rows[n]["view"] for n in FILES] == ["PA", "AP", "PA", "LATERAL", "PA"]
    assert rows["study3/img.bin"]["source_view"] == "LL"
    assert [(rows[n]["covid"], rows[n]["finding"]) for n in FILES] == [
        (1, "covid"), (1, "covid"), (0, "normal"), (0, "normal"), (0, "unknown")]
    assert (rows["study1/IM0001"]["location"], rows["study2/series/IM0003.DCM"]["location"]) == \
        ("North General", "South Clinic")
    assert (rows["study1/IM0001"]["manufacturer"], rows["study3/img.bin"]["station_name"]) == \
        ("Acme Medical", "SC-CR2")
    broken = [i for i in loaded.issues if "broken.dcm" in i.path]
    assert len(broken) == 1 and broken[0].kind == "unreadable" and broken[0].count == 1
    missing = [i for i in loaded.issues if i.kind == "missing"]
    assert len(missing) == 1 and "1.2.3.999" in missing[0].problem and "row 7" in missing[0].problem
    assert len(loaded.issues) == 2 and loaded.excluded == {"not DICOM (no 'DICM' preamble)": 1}
    everything = [records.astype(str).to_csv(), loaded.issues, loaded.notes, loaded.excluded, caplog.text,
                  [str(w.message) for w in caught]]
    assert _leaks(*everything) == []
    other = load_source("dicom-folder", root, salt="our own secret")
    assert other.records.loc[0, "patient_id"] != records.loc[0, "patient_id"]


def test_dicom_folder_options_unlabelled_files_and_refused_labels(tmp_path):
    root = tmp_path / "export"
    write_export(root)
    (tmp_path / "mine.csv").write_text("file,diagnosis\nstudy1/IM0001,covid\nstudy1/IM0002.dcm,sano\n"
                                       "study1/../study3/img.bin,maybe\n")
    loaded = load_source("dicom-folder", root, csv=tmp_path / "mine.csv", path_column="file",
                         label_column="diagnosis")
    assert list(loaded.records["record_id"]) == ["dicom-folder/study1/IM0001"]
    problems = {Path(i.path).name: i.problem for i in loaded.issues}
    assert "'sano'" in problems["IM0002.dcm"] and "negative_labels" in problems["IM0002.dcm"]
    assert "'maybe'" in problems["img.bin"] and "mine.csv row 4" in problems["img.bin"]
    unlabelled = next(i for i in loaded.issues if "no row of" in i.problem)
    assert unlabelled.count == 2 and unlabelled.kind == "invalid"  # IM0003.DCM and noid.dcm
    mapped = load_source("dicom-folder", root, csv=tmp_path / "mine.csv", path_column="file",
                         label_column="diagnosis", negative_labels=("sano", "maybe"), source_name="export-2")
    assert len(mapped.records) == 3 and set(mapped.records["source"]) == {"export-2"}
    with pytest.raises(DatasetLayoutError, match="no column 'SOPInstanceUID' or 'path'"):
        load_source("dicom-folder", root, csv=tmp_path / "mine.csv", label_column="diagnosis")
    with pytest.raises(DatasetLayoutError, match="nothing.csv"):
        load_source("dicom-folder", root, csv="nothing.csv")
    with pytest.raises(DatasetLayoutError, match="not a folder|a folder"):
        load_source("dicom-folder", root / "README.txt")


def test_dicom_folder_without_a_record_is_an_error_and_a_patient_folder_name_is_noted(tmp_path):
    root = tmp_path / "export"
    write_dicom(root / SECRETS[1] / "a.dcm", np.zeros((8, 8), dtype=np.uint16), header={"PatientID": SECRETS[1]})
    (root / "labels.csv").write_text("path,label\nelsewhere.dcm,positive\n")
    with pytest.raises(DatasetLayoutError, match=r"none of the DICOM files .* gave a record"):
        load_source("dicom-folder", root)
    (root / "labels.csv").write_text(f"path,label\n{SECRETS[1]}/a.dcm,positive\n")
    loaded = load_source("dicom-folder", root)
    assert len(loaded.records) == 1
    assert any("PatientID in its path" in note for note in loaded.notes) and _leaks(loaded.notes) == []


def test_pseudonym_is_a_salted_keyed_hash():
    assert pseudonym("12345", "a") == pseudonym("12345", "a") != pseudonym("12345", "b")
    assert "12345" not in pseudonym("12345", "a") and pseudonym("12345", "a").startswith("anon-")


def test_dicom_folder_leaves_out_non_images_and_names_headerless_and_conflicting_files(tmp_path):
    root = tmp_path / "export"
    image = write_dicom(root / "a.dcm", np.zeros((8, 8), dtype=np.uint16), uid_seed="a")
    report = pydicom.dcmread(write_dicom(root / "report", np.zeros((8, 8), dtype=np.uint16), uid_seed="r"))
    for keyword in ("Rows", "Columns", "PixelData"):
        delattr(report, keyword)
    report.SOPClassUID = report.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"  # basic SR
    report.save_as(root / "report")
    bare = pydicom.Dataset()
    bare.update(pydicom.dcmread(write_dicom(root / "b.dcm", np.ones((8, 8), dtype=np.uint16), uid_seed="b")))
    bare.save_as(root / "b.dcm", implicit_vr=True, little_endian=True)  # no preamble, no file meta
    uid = str(pydicom.dcmread(image, stop_before_pixels=True).SOPInstanceUID)
    (root / "labels.csv").write_text(f"SOPInstanceUID,path,label\n{uid},,1\n,a.dcm,0\n,b.dcm,1\n")
    loaded = load_source("dicom-folder", root)
    assert len(loaded.records) == 1 and loaded.records.loc[0, "covid"] == 1  # the UID row wins over the path row
    assert loaded.excluded == {"DICOM object without an image (report, key object, presentation state...)": 1}
    headerless = next(i for i in loaded.issues if i.path.endswith("b.dcm"))
    assert headerless.kind == "unreadable" and "'DICM' preamble" in headerless.problem
    (root / "labels.csv").write_text(f"SOPInstanceUID,label\n{uid},1\n{uid},normal\n")
    with pytest.raises(DatasetLayoutError, match="another label than row 2"):
        load_source("dicom-folder", root)
