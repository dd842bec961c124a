"""A hospital's DICOM export as a source: a folder tree of DICOM files and a labels CSV.

On-disk layout (as a PACS export leaves it; docs/datasets.md is the user's guide)::

    <root>/**/<any name>     DICOM files, found by content ("DICM" at byte 128), with any suffix or none
    <root>/labels.csv        one row per image: its SOPInstanceUID or its path relative to <root>, and a label

The walk is sorted, does not follow symlinked folders and skips hidden files and folders and the labels CSV.
Each file's header is read with :func:`unveil.io.read_dicom_header` (only :data:`HEADER_KEYWORDS`, never the
pixels; ``unveil data check`` decodes the images afterwards and names any whose pixel data is damaged).

What a record takes from the header:

- ``patient_id``: :func:`pseudonym` of PatientID, a keyed hash (HMAC-SHA256 with the ``salt`` option). The raw
  PatientID is dropped as soon as it is hashed: it is never stored in the record table, printed, logged or
  put in a file name. A file without PatientID is its own patient (``patient_known`` False, said in a note).
  A PatientID that also appears in a file's path (a folder per patient) is said in a note, without the value.
- ``view`` from ViewPosition (``source_view`` keeps it as written).
- site metadata: ``location`` from InstitutionName (the column the audit's metadata probes read), the extra
  columns ``manufacturer`` (Manufacturer) and ``station_name`` (StationName); ``sop_instance_uid``.
- sex and age stay missing: they are DICOM patient fields, which unveil does not read.

Options:

``csv="labels.csv"``
    the labels CSV (a relative name is looked up under the root first, then from the working folder).
``uid_column="SOPInstanceUID"``, ``path_column="path"``
    the key columns (exact, else case-insensitive names); the CSV needs at least one. A row is matched by its
    UID cell when filled, else by its path cell (relative to the root, normalised); a UID row wins over a path
    row for the same file.
``label_column="label"``, ``positive_labels``, ``negative_labels``
    the label column and a site's own words, read like ``hospital-csv`` (:mod:`unveil.data.sources.labels`).
``salt``
    the key of the pseudonym hash, default :data:`DEFAULT_SALT`. The default gives the same pseudonyms on every
    machine; anyone who knows it and a PatientID can recompute that patient's pseudonym, so set a secret salt
    of your own for data that leaves the hospital (and keep it: other salts give other patient ids).
``source_name="dicom-folder"``, ``encoding="utf-8-sig"``
    the ``source`` and ``record_id`` prefix; the CSV's text encoding.

Excluded by design (counted): files without the DICM preamble (unless named .dcm / .dicom), DICOMDIR indexes,
DICOM objects that hold no image (reports, key objects, presentation states). Reported issues (no record):
a DICOM file that cannot be parsed or has no image header, a .dcm file without the preamble ("unreadable"; one
line each, counted, the walk goes on); a file no row labels, or whose label is not a known word, rows of one
file with different labels ("invalid"); a row naming no file of the folder ("missing"). One problem on many
files or rows is one issue with its count. A folder none of whose files gives a record is a
:class:`DatasetLayoutError`.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from unveil.data.records import build_records, canonical_view, record_row
from unveil.data.sources.base import (
    DataIssue,
    DatasetLayoutError,
    IssueLog,
    SourceLoad,
    blank_to_none,
    find_column,
    find_file,
    read_csv_table,
    require_path,
)
from unveil.data.sources.labels import LabelVocabulary
from unveil.io import ImageReadError, has_dicom_preamble, read_dicom_header

SOURCE = "dicom-folder"

#: The pseudonym key when the ``salt`` option is not given (documented: set your own for shared data).
DEFAULT_SALT = "unveil-dicom-folder"

#: The only header elements read.
HEADER_KEYWORDS = ("MediaStorageSOPClassUID", "SOPClassUID", "SOPInstanceUID", "Modality", "Rows", "Columns",
                   "ViewPosition", "Manufacturer", "InstitutionName", "StationName", "PatientID")

_DICOMDIR_CLASS = "1.2.840.10008.1.3.10"
#: SOP classes (prefixes) of objects without an image: structured reports and key objects, presentation states,
#: encapsulated documents, raw data.
NON_IMAGE_CLASSES = ("1.2.840.10008.5.1.4.1.1.88.", "1.2.840.10008.5.1.4.1.1.11.", "1.2.840.10008.5.1.4.1.1.104.",
                     "1.2.840.10008.5.1.4.1.1.66")
_DICOM_SUFFIXES = (".dcm", ".dicom")
EXTRA_COLUMNS = ["location", "manufacturer", "station_name", "sop_instance_uid", "patient_known", "label"]


def pseudonym(patient_id: str, salt: str) -> str:
    """A patient's stable, unlinkable id: ``anon-`` and 16 hex digits of HMAC-SHA256(salt, PatientID)."""
    digest = hmac.new(salt.encode("utf-8"), patient_id.encode("utf-8"), hashlib.sha256).hexdigest()
    return f"anon-{digest[:16]}"


@dataclass
class _Labels:
    """The labels CSV indexed by key (("uid", value) or ("path", relative path)): row number and label."""

    csv_path: Path
    column: str
    vocabulary: LabelVocabulary
    rows: dict[tuple[str, str], tuple[int, str | None]] = field(default_factory=dict)
    used: set[tuple[str, str]] = field(default_factory=set)
    conflicts: set[tuple[str, str]] = field(default_factory=set)  # keys whose rows disagree: no label

    def find(self, uid: str | None, relative: str) -> tuple[tuple[str, str], int, str | None] | None:
        """The key, row number and label labelling a file (its UID row first, else its path row); both rows are
        marked used."""
        keys = [key for key in (("uid", uid or ""), ("path", relative)) if key in self.rows]
        self.used.update(keys)
        return (keys[0], *self.rows[keys[0]]) if keys else None


def load(root: Path, *, csv: str | Path = "labels.csv", uid_column: str = "SOPInstanceUID", path_column: str = "path",
         label_column: str = "label", positive_labels: str | Iterable[str] = (),
         negative_labels: str | Iterable[str] = (), salt: str = DEFAULT_SALT, source_name: str = SOURCE,
         encoding: str = "utf-8-sig") -> SourceLoad:
    """Walk a DICOM export and label its images from the labels CSV (see the module docstring)."""
    root = require_path(Path(root).expanduser().absolute(), "the DICOM export (a folder)", directory=True)
    csv_path = find_file(root, csv, "the DICOM export's labels CSV")
    vocabulary = LabelVocabulary.of(positive_labels, negative_labels)
    issues = IssueLog()
    labels = _index_labels(read_csv_table(csv_path, encoding=encoding), csv_path, root, vocabulary, issues,
                           uid_column=uid_column, path_column=path_column, label_column=label_column)
    loaded = SourceLoad(source=source_name, root=root, records=build_records([]))
    rows, found, in_path = [], 0, 0
    for path in _walk(root, csv_path):
        relative = path.relative_to(root).as_posix()
        header = _header(path, relative, loaded, issues)
        if header is None:
            continue
        found += 1
        patient = header.pop("PatientID")  # the raw value: hashed here, then dropped
        in_path += bool(patient and len(patient) >= 4 and patient in relative)
        header["patient_id"] = pseudonym(patient, salt) if patient else None
        record = _record(path, relative, header, labels, source_name, root, issues)
        if record:
            rows.append(record)
    _report_unused(labels, issues)
    loaded.issues = issues.issues()
    if not rows:
        raise DatasetLayoutError(f"{root}: none of the DICOM files under it gave a record ({found} found): "
                                 + "; ".join(f"{i.path}: {i.problem}" for i in loaded.issues[:3]))
    loaded.records = build_records(rows, extra_columns=EXTRA_COLUMNS)
    loaded.notes += _notes(loaded.records, in_path)
    return loaded


def _index_labels(table: pd.DataFrame, csv_path: Path, root: Path, vocabulary: LabelVocabulary, issues: IssueLog,
                  *, uid_column: str, path_column: str, label_column: str) -> _Labels:
    """The labels CSV by key; rows of one key with different labels label nothing (an issue)."""
    label = find_column(table, label_column, csv_path, "label_column", required=True)
    uid = find_column(table, uid_column, csv_path, "uid_column", required=False)
    path = find_column(table, path_column, csv_path, "path_column", required=False)
    if uid is None and path is None:
        raise DatasetLayoutError(f"{csv_path}: no column {uid_column!r} or {path_column!r} to find each image by "
                                 "(options uid_column / path_column); the CSV has columns: "
                                 f"{', '.join(repr(str(c)) for c in table.columns)}")
    labels = _Labels(csv_path, label, vocabulary)
    for number, row in enumerate(table.to_dict("records"), start=2):  # line 1 is the header
        key = _row_key(row, uid, path, root)
        if key is None:
            issues.add("no key", f"row {number}", DataIssue(str(csv_path), f"row {number} has neither a "
                       f"{uid or uid_column!r} nor a {path or path_column!r}", "invalid"))
            continue
        value = blank_to_none(row[label])
        if key in labels.rows and labels.rows[key][1] != value:
            labels.conflicts.add(key)
            issues.add("conflict", f"row {number}", DataIssue(str(csv_path), f"row {number} labels {key[1]} again "
                       f"with another label than row {labels.rows[key][0]}; that image gets no record", "invalid"))
        labels.rows.setdefault(key, (number, value))
    return labels


def _row_key(row: dict, uid: str | None, path: str | None, root: Path) -> tuple[str, str] | None:
    """A labels row's key: its UID when filled, else its path relative to the root (normalised)."""
    if uid is not None and (value := blank_to_none(row[uid])) is not None:
        return "uid", value
    if path is None or (value := blank_to_none(row[path])) is None:
        return None
    written = Path(value.replace("\\", "/")).expanduser()
    absolute = Path(os.path.normpath(written if written.is_absolute() else root / written))
    return "path", (absolute.relative_to(root).as_posix() if absolute.is_relative_to(root) else absolute.as_posix())


def _walk(root: Path, skip: Path) -> Iterator[Path]:
    """Every non-hidden file under ``root`` but ``skip``, sorted, symlinked folders not followed."""
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
        for name in sorted(files):
            path = Path(folder) / name
            if not name.startswith(".") and path.absolute() != skip.absolute():
                yield path


def _header(path: Path, relative: str, loaded: SourceLoad, issues: IssueLog) -> dict[str, str | None] | None:
    """The header of a DICOM image file, or None after excluding a non-image file or reporting a malformed one."""
    try:
        if not has_dicom_preamble(path):
            if path.suffix.lower() not in _DICOM_SUFFIXES:
                loaded.exclude("not DICOM (no 'DICM' preamble)")
                return None
            raise ImageReadError(str(path), "named like DICOM but has no 'DICM' preamble at byte 128: not walked "
                                            "(export DICOM Part 10 files)")
        header = read_dicom_header(path, HEADER_KEYWORDS)
    except ImageReadError as error:
        issues.add(("unreadable", error.problem), relative, DataIssue(str(path), error.problem, "unreadable"))
        return None
    sop_class = header["SOPClassUID"] or header["MediaStorageSOPClassUID"] or ""
    if header["MediaStorageSOPClassUID"] == _DICOMDIR_CLASS:
        loaded.exclude("DICOMDIR (an index of the export, not an image)")
        return None
    if not header["Rows"] and sop_class.startswith(NON_IMAGE_CLASSES):
        loaded.exclude("DICOM object without an image (report, key object, presentation state...)")
        return None
    if not (header["Rows"] and header["Columns"]):
        problem = ("DICOM file has no readable dataset after its preamble: truncated or damaged" if not
                   header["SOPInstanceUID"] else "DICOM header has no Rows/Columns: not an image, or truncated")
        issues.add(("unreadable", problem), relative, DataIssue(str(path), problem, "unreadable"))
        return None
    return header


def _record(path: Path, relative: str, header: dict[str, str | None], labels: _Labels, source_name: str, root: Path,
            issues: IssueLog) -> dict | None:
    """The record of one DICOM image, or None after reporting that no row labels it or that its label is unknown."""
    uid = header["SOPInstanceUID"]
    found = labels.find(uid, relative)
    if found is None:
        issues.add("unlabelled", relative, DataIssue(str(path), f"no row of {labels.csv_path.name} names it (by "
                                                     "SOPInstanceUID or path)", "invalid"))
        return None
    key, number, label = found
    if key in labels.conflicts:  # already reported with the rows
        return None
    read = labels.vocabulary.read(label)
    if read is None:
        issues.add(("label", label), relative, DataIssue(
            str(path), labels.vocabulary.refusal(label, labels.column, f"{labels.csv_path.name} row {number}")))
        return None
    covid, finding = read
    patient = header["patient_id"]
    return record_row(source_name, root, path, patient_id=patient or f"image-{uid or relative}", covid=covid,
                      finding=finding, source_finding=label, view=canonical_view(header["ViewPosition"]),
                      source_view=header["ViewPosition"], location=header["InstitutionName"],
                      manufacturer=header["Manufacturer"], station_name=header["StationName"], sop_instance_uid=uid,
                      patient_known=patient is not None, label=label)


def _report_unused(labels: _Labels, issues: IssueLog) -> None:
    """A "missing" issue for each labels row that names no DICOM image of the folder."""
    for key, (number, _) in labels.rows.items():
        if key not in labels.used:
            what = "SOPInstanceUID" if key[0] == "uid" else "path"
            issues.add("unused", f"row {number}", DataIssue(
                str(labels.csv_path), f"row {number} names {what} {key[1]} but no DICOM image under the folder has "
                "it", "missing"))


def _notes(records: pd.DataFrame, in_path: int) -> list[str]:
    """Facts about the export the user must know: images without PatientID, PatientIDs in paths."""
    notes = []
    unknown = int((~records["patient_known"].astype(bool)).sum())
    if unknown:
        notes.append(f"{unknown} DICOM image(s) have no PatientID: each is its own patient (patient_known False), so "
                     "a patient-exclusive split cannot keep them with the patient's other images")
    if in_path:
        notes.append(f"{in_path} DICOM file(s) have the PatientID in its path (a folder or file named by patient?): "
                     "their paths and record ids carry it; export with anonymised names before sharing results")
    return notes
