"""A hospital's own COVID-19 set described by one CSV (e.g. CORDA): image path, patient and label.

On-disk layout::

    <root>/labels.csv        one row per image; at least a path, a patient and a label column
    <paths listed in the CSV> anywhere: relative to the CSV's folder, or absolute

``root`` may also be the CSV file itself (its folder is then the root), or the CSV may be named with
the ``csv`` option (a relative name is looked up under ``root`` first). Paths in the CSV are relative
to the CSV's folder; absolute paths and paths leaving the folder are the user's explicit choice and are
read (``allow_outside=false`` refuses them, as an "invalid" issue). ``record_id`` is ``<source_name>/<path
relative to root>`` (a file outside ``root`` gets a ``../``-style relative path). docs/datasets.md is the
user's guide; this docstring is the reference.

Options (column names match exactly, else case-insensitively):

``path_column="path"``, ``patient_column="patient"``, ``label_column="label"``
    the three required columns; a missing one raises :class:`DatasetLayoutError` listing the columns
    the CSV has.
``positive_labels`` / ``negative_labels``
    a site's own label words, added to the built-in vocabulary of :mod:`unveil.data.sources.labels`
    (positive / negative, covid / normal / healthy / non-covid, covid-19, 1/0, yes/no, true/false;
    case-insensitive, trimmed). Any other label is an "invalid" issue naming the value, the row and these
    options.
``view_column``, ``sex_column``, ``age_column``
    optional; when not given, columns named ``view`` / ``sex`` / ``age`` are used if present.
``site_column``
    optional hospital or site of each image (several sites in one CSV); when not given, a column named
    ``site`` or ``source`` is used if present. Its value is the record's ``location``, the column the
    audit's metadata probes and metadata-only baselines read; ``source`` stays ``source_name`` (patient
    ids are keyed by source, so one patient seen at two sites stays one patient).
``finding_column``
    optional column of findings for negative images, mapped by :data:`FINDING_MAP`
    (normal, bacterial, viral, pneumonia, other; unlisted non-empty values become "other").
``source_name="hospital-csv"``
    the ``source`` and ``record_id`` prefix, so that two hospital sets can be loaded side by side.
``encoding="utf-8-sig"``
    the CSV's text encoding (a UTF-8 byte-order mark is tolerated by default).
``allow_outside=true``
    false: refuse files outside ``root`` and the CSV's folder.

Label mapping: a positive label gives ``covid`` 1 and ``finding`` "covid"; a negative label gives
``covid`` 0 and the finding its word names ("normal", "healthy": "normal"), else "unknown", unless the
``finding_column`` is filled (its mapped value wins). ``source_finding`` is the finding-column value when
that column is used and filled, else the raw label (also kept in the extra column ``label``).

Reported issues (no record): a row whose file does not exist ("missing"); an unknown label, an empty path,
a label the finding contradicts (a negative label with a COVID-19 finding such as "COVID-19 pneumonia", a
positive one with a normal finding), or rows listing one file with different labels ("invalid"). A CSV giving
one column twice is a :class:`DatasetLayoutError` naming it. An empty patient cell, or one saying there is
none (``NA``, ``nan``, ``None``...), gives a record that is its own patient (``patient_known`` False, said in
a note). A file listed twice with the same label keeps its first row and reports the repeat
("invalid"). One problem on many rows is one issue with its count. Row numbers count the header as row 1.
A CSV none of whose rows gives a record is a :class:`DatasetLayoutError` naming it and its problems.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from unveil.data.records import build_records, canonical_sex, canonical_view, parse_age, record_row
from unveil.data.sources.base import (
    DataIssue,
    DatasetLayoutError,
    IssueLog,
    SourceLoad,
    blank_to_none,
    find_column,
    find_file,
    patient_or_none,
    read_csv_table,
    require_path,
    truthy,
    unknown_patient,
    unknown_patients_note,
)
from unveil.data.sources.labels import FINDING_MAP, LabelVocabulary, finding_contradiction, normalise_label

SOURCE = "hospital-csv"

#: Optional fields -> the column names used when the field's option is not given.
DEFAULT_COLUMNS: dict[str, tuple[str, ...]] = {"view": ("view",), "sex": ("sex",), "age": ("age",),
                                               "site": ("site", "source")}


def _resolve_csv(root: Path, csv: str | Path | None) -> tuple[Path, Path]:
    """The dataset root and its labels CSV (``root`` itself, ``<root>/labels.csv`` or the ``csv`` option)."""
    if csv is None and root.suffix.lower() == ".csv" and not root.is_dir():
        csv_path = require_path(root, "the hospital labels CSV")
        return csv_path.parent, csv_path
    require_path(root, "the hospital dataset root", directory=True)
    if csv is None:
        return root, require_path(root / "labels.csv", "the hospital labels CSV")
    return root, find_file(root, csv, "the hospital labels CSV")


@dataclass(frozen=True)
class _Columns:
    """The CSV's column for each field (None: not given and not present)."""

    path: str
    patient: str
    label: str
    finding: str | None
    view: str | None
    sex: str | None
    age: str | None
    site: str | None


@dataclass(frozen=True)
class _Context:
    """What every row is read against."""

    columns: _Columns
    labels: LabelVocabulary
    source_name: str
    root: Path
    csv_path: Path
    allow_outside: bool
    issues: IssueLog


def load(
    root: Path,
    *,
    csv: str | Path | None = None,
    path_column: str = "path",
    patient_column: str = "patient",
    label_column: str = "label",
    positive_labels: str | Iterable[str] = (),
    negative_labels: str | Iterable[str] = (),
    view_column: str | None = None,
    sex_column: str | None = None,
    age_column: str | None = None,
    site_column: str | None = None,
    finding_column: str | None = None,
    source_name: str = SOURCE,
    encoding: str = "utf-8-sig",
    allow_outside: bool | str = True,
) -> SourceLoad:
    """Load a hospital set described by one CSV (see the module docstring for the options)."""
    root, csv_path = _resolve_csv(Path(root).expanduser().absolute(), csv)
    labels = LabelVocabulary.of(positive_labels, negative_labels)
    outside = truthy(allow_outside, "allow_outside")
    table = read_csv_table(csv_path, encoding=encoding)
    columns = _columns(table, csv_path, {"path_column": path_column, "patient_column": patient_column,
                                         "label_column": label_column}, finding_column,
                       {"view": view_column, "sex": sex_column, "age": age_column, "site": site_column})
    context = _Context(columns, labels, source_name, root, csv_path, outside, IssueLog())
    # resolved image path -> list of (row number, record) for the rows that list it
    listed: dict[str, list[tuple[int, dict]]] = {}
    for number, row in enumerate(table.to_dict("records"), start=2):  # line 1 is the header
        image = _row_image(row, number, context)
        if image is None:
            continue
        record = _row_record(row, number, image, context)
        if record:
            listed.setdefault(str(image.resolve()), []).append((number, record))
    rows = _one_record_per_file(listed, csv_path, context.issues)
    issues = context.issues.issues()
    if not rows:
        raise DatasetLayoutError(f"{csv_path}: none of its {len(table)} rows gave a record: "
                                 + "; ".join(f"{i.path}: {i.problem}" for i in issues[:3])
                                 + (f"; and {len(issues) - 3} other problems" if len(issues) > 3 else ""))
    records = build_records(rows, extra_columns=["label", "location", "patient_known"])
    if records["patient_known"].all():  # the column says something only when some patient is unknown
        records = records.drop(columns="patient_known")
    return SourceLoad(source=source_name, root=root, issues=issues, excluded={}, records=records,
                      notes=unknown_patients_note(records, columns.patient))


def _columns(table: pd.DataFrame, csv_path: Path, given: dict[str, str], finding: str | None,
             optional: dict[str, str | None]) -> _Columns:
    """Find each option's column; the optional ones default to :data:`DEFAULT_COLUMNS` when present."""
    required = {option: find_column(table, name, csv_path, option, required=True) for option, name in given.items()}
    found: dict[str, str | None] = {"finding": find_column(table, finding, csv_path, "finding_column", required=True)}
    for key, name in optional.items():
        if name:
            found[key] = find_column(table, name, csv_path, f"{key}_column", required=True)
        else:
            present = (find_column(table, n, csv_path, f"{key}_column", required=False) for n in DEFAULT_COLUMNS[key])
            found[key] = next((column for column in present if column is not None), None)
    return _Columns(path=required["path_column"], patient=required["patient_column"],
                    label=required["label_column"], **found)


def _row_image(row: dict, number: int, context: _Context) -> Path | None:
    """The existing image file a row lists, or None after reporting why the row has none."""
    csv_path, where = context.csv_path, f"row {number}"
    raw_path = blank_to_none(row[context.columns.path])
    if raw_path is None:
        context.issues.add(("empty", context.columns.path), where, DataIssue(
            str(csv_path), f"row {number} has an empty {context.columns.path!r}", "invalid"))
        return None
    image = Path(raw_path).expanduser()
    image = image if image.is_absolute() else csv_path.parent / image
    inside = [Path(os.path.normpath(p)) for p in (context.root, csv_path.parent)]  # lexically: symlinks are theirs
    if not context.allow_outside and not any(Path(os.path.normpath(image)).is_relative_to(p) for p in inside):
        context.issues.add("outside", where, DataIssue(
            str(csv_path), f"row {number}: {raw_path}: path leaves the dataset root {context.root} (the loader "
            "option allow_outside=false refuses it)", "invalid"))
        return None
    if not image.is_file():
        context.issues.add("missing", where, DataIssue(
            str(image), f"listed in {csv_path.name} row {number} but the file does not exist", "missing"))
        return None
    return image


def _row_record(row: dict, number: int, image: Path, context: _Context) -> dict | None:
    """The record of one row's image, or None after reporting an empty patient or an unusable label/finding."""
    columns, where = context.columns, f"{context.csv_path.name} row {number}"
    patient = patient_or_none(row[columns.patient])
    label = blank_to_none(row[columns.label])
    read = context.labels.read(label)
    if read is None:
        context.issues.add(("label", normalise_label(label or "")), f"row {number}", DataIssue(
            str(image), context.labels.refusal(label, columns.label, where), "invalid"))
        return None
    covid, finding = read
    finding_text = blank_to_none(row[columns.finding]) if columns.finding else None
    contradiction = finding_contradiction(covid, finding_text)
    if contradiction:
        context.issues.add(("contradiction", contradiction), f"row {number}", DataIssue(
            str(image), f"{where}: {contradiction} (label {label!r}, finding {finding_text!r}); no record made",
            "invalid"))
        return None
    if covid == 0 and finding_text is not None:
        finding = FINDING_MAP.get(normalise_label(finding_text), "other")
    view = blank_to_none(row[columns.view]) if columns.view else None
    record = record_row(
        context.source_name, context.root, image.absolute(), patient_id=patient or "", covid=covid, finding=finding,
        source_finding=finding_text if finding_text is not None else label, view=canonical_view(view),
        source_view=view, sex=canonical_sex(row[columns.sex]) if columns.sex else None,
        age=parse_age(row[columns.age]) if columns.age else None, label=label,
        location=blank_to_none(row[columns.site]) if columns.site else None, patient_known=True)
    return record if patient is not None else unknown_patient(record)


def _one_record_per_file(listed: dict[str, list[tuple[int, dict]]], csv_path: Path, issues: IssueLog) -> list[dict]:
    """One record per image file: repeats with the same label keep the first row; conflicting ones none."""
    rows: list[dict] = []
    seen_ids: set[str] = set()
    for path, entries in listed.items():
        (first_number, record), repeats = entries[0], entries[1:]
        label_of = lambda r: (r["covid"], r["finding"], r["patient_id"])  # noqa: E731
        if any(label_of(r) != label_of(record) for _, r in repeats):
            numbers = ", ".join(str(n) for n, _ in entries)
            issues.add("conflict", f"rows {numbers}", DataIssue(
                path, f"listed in {csv_path.name} rows {numbers} with different labels or patients; no record "
                "made", "invalid"))
            continue
        for number, _ in repeats:
            issues.add("repeat", f"row {number}", DataIssue(
                path, f"listed again in {csv_path.name} row {number}; first row ({first_number}) kept", "invalid"))
        if record["record_id"] in seen_ids:  # two spellings of one file via symlinks: keep the first
            issues.add("same id", f"row {first_number}", DataIssue(
                path, f"{csv_path.name} row {first_number} gives the same record id as an earlier row; first row "
                "kept", "invalid"))
            continue
        seen_ids.add(record["record_id"])
        rows.append(record)
    return rows
