"""A hospital's own COVID-19 set described by one CSV (e.g. CORDA): image path, patient and label.

On-disk layout::

    <root>/labels.csv        one row per image; at least a path, a patient and a label column
    <root>/<paths listed in the CSV>

``root`` may also be the CSV file itself (its folder is then the root), or the CSV may be named with
the ``csv`` option (a relative name is looked up under ``root`` first). Paths in the CSV are relative
to the CSV's folder; absolute paths are accepted. A path leaving both ``root`` and the CSV's folder is an
"invalid" issue unless the option ``allow_outside=true``. ``record_id`` is ``<source_name>/<path relative
to root>`` (a file outside ``root`` gets a ``../``-style relative path).

Options (column names match exactly, else case-insensitively):

``path_column="path"``, ``patient_column="patient"``, ``label_column="label"``
    the three required columns; a missing one raises :class:`DatasetLayoutError` listing the columns
    the CSV has.
``positive_labels`` / ``negative_labels``
    label values (matched case-insensitively, stripped) meaning COVID-19 positive / negative;
    defaults ``1 covid covid-19 positive pos true yes`` and ``0 negative neg false no normal``.
``view_column``, ``sex_column``, ``age_column``
    optional; when not given, columns named ``view`` / ``sex`` / ``age`` are used if present.
``finding_column``
    optional column of findings for negative images, mapped by :data:`FINDING_MAP`
    (normal, bacterial, viral, pneumonia, other; unlisted non-empty values become "other").
``source_name="hospital-csv"``
    the ``source`` and ``record_id`` prefix, so that two hospital sets can be loaded side by side.
``encoding="utf-8-sig"``
    the CSV's text encoding (a UTF-8 byte-order mark is tolerated by default).

Label mapping: a positive label gives ``covid`` 1 and ``finding`` "covid"; a negative label gives
``covid`` 0 and ``finding`` "unknown" (or the mapped ``finding_column`` value). ``source_finding``
is the finding-column value when that column is used and filled, else the raw label (also kept in
the extra column ``label``).

Reported issues (no record): a row whose file does not exist ("missing"); a label that is neither
positive nor negative, an empty path or patient, a negative row whose finding says COVID-19, or
rows listing one file with different labels ("invalid"). A file listed twice with the same label
keeps its first row and reports the repeat ("invalid"). Row numbers count the header as row 1.
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
    SourceLoad,
    blank_to_none,
    read_csv_table,
    require_path,
    truthy,
)

SOURCE = "hospital-csv"

POSITIVE_LABELS: tuple[str, ...] = ("1", "covid", "covid-19", "positive", "pos", "true", "yes")
NEGATIVE_LABELS: tuple[str, ...] = ("0", "negative", "neg", "false", "no", "normal")

#: Finding-column value (lower case) -> canonical finding, for COVID-negative rows.
FINDING_MAP: dict[str, str] = {
    "normal": "normal", "no finding": "normal", "healthy": "normal", "none": "normal",
    "bacterial": "bacterial", "bacteria": "bacterial", "bacterial pneumonia": "bacterial",
    "viral": "viral", "virus": "viral", "viral pneumonia": "viral",
    "pneumonia": "pneumonia",
    "other": "other",
}
_COVID_FINDINGS = {"covid", "covid-19", "covid19", "sars-cov-2"}


def _find_column(table: pd.DataFrame, name: str | None, csv_path: Path, option: str, *,
                 required: bool) -> str | None:
    """The CSV column called ``name`` (exact, else case-insensitive); a layout error when absent."""
    if name is None:
        return None
    columns = [str(c) for c in table.columns]
    if name in columns:
        return name
    folded = [c for c in columns if c.strip().lower() == name.strip().lower()]
    if len(folded) == 1:
        return folded[0]
    if not required:
        return None
    raise DatasetLayoutError(f"{csv_path}: no column {name!r} (option {option}); the CSV has columns: "
                             f"{', '.join(repr(c) for c in columns)}")


def _resolve_csv(root: Path, csv: str | Path | None) -> tuple[Path, Path]:
    if csv is None and root.suffix.lower() == ".csv" and not root.is_dir():
        csv_path = require_path(root, "the hospital labels CSV")
        return csv_path.parent, csv_path
    require_path(root, "the hospital dataset root", directory=True)
    if csv is None:
        return root, require_path(root / "labels.csv", "the hospital labels CSV")
    csv_path = Path(csv).expanduser()
    if not csv_path.is_absolute() and (root / csv_path).is_file():
        csv_path = root / csv_path
    return root, require_path(csv_path.absolute(), "the hospital labels CSV")


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


@dataclass(frozen=True)
class _Labels:
    """Label values (lower case) meaning COVID-19 positive / negative."""

    positive: frozenset[str]
    negative: frozenset[str]

    @classmethod
    def of(cls, positive_labels: Iterable[str], negative_labels: Iterable[str]) -> _Labels:
        positive = frozenset(str(v).strip().lower() for v in positive_labels)
        negative = frozenset(str(v).strip().lower() for v in negative_labels)
        overlap = positive & negative
        if overlap:
            raise DatasetLayoutError(f"labels {sorted(overlap)} are listed as both positive and negative "
                                     "(options positive_labels / negative_labels)")
        return cls(positive, negative)


def load(
    root: Path,
    *,
    csv: str | Path | None = None,
    path_column: str = "path",
    patient_column: str = "patient",
    label_column: str = "label",
    positive_labels: Iterable[str] = POSITIVE_LABELS,
    negative_labels: Iterable[str] = NEGATIVE_LABELS,
    view_column: str | None = None,
    sex_column: str | None = None,
    age_column: str | None = None,
    finding_column: str | None = None,
    source_name: str = SOURCE,
    encoding: str = "utf-8-sig",
    allow_outside: bool | str = False,
) -> SourceLoad:
    """Load a hospital set described by one CSV (see the module docstring for the options)."""
    root, csv_path = _resolve_csv(Path(root).expanduser().absolute(), csv)
    labels = _Labels.of(positive_labels, negative_labels)
    table = read_csv_table(csv_path, encoding=encoding)
    columns = _columns(table, csv_path, path_column, patient_column, label_column, finding_column,
                       {"view": view_column, "sex": sex_column, "age": age_column})
    outside = truthy(allow_outside, "allow_outside")
    issues: list[DataIssue] = []
    # resolved image path -> list of (row number, record) for the rows that list it
    listed: dict[str, list[tuple[int, dict]]] = {}
    for number, row in enumerate(table.to_dict("records"), start=2):  # line 1 is the header
        image = _row_image(row, number, columns, root, csv_path, outside, issues)
        record = image and _row_record(row, number, image, columns, labels, source_name, root, csv_path, issues)
        if record:
            listed.setdefault(str(image.resolve()), []).append((number, record))
    rows = _one_record_per_file(listed, csv_path, issues)
    return SourceLoad(source=source_name, root=root, records=build_records(rows, extra_columns=["label"]),
                      issues=issues, excluded={})


def _columns(table: pd.DataFrame, csv_path: Path, path_column: str, patient_column: str, label_column: str,
             finding_column: str | None, optional: dict[str, str | None]) -> _Columns:
    """Find each option's column; the optional ones default to columns named view / sex / age when present."""
    required = {option: _find_column(table, name, csv_path, option, required=True) for option, name in
                (("path_column", path_column), ("patient_column", patient_column), ("label_column", label_column),
                 ("finding_column", finding_column))}
    found = {key: (_find_column(table, given, csv_path, f"{key}_column", required=True) if given
                   else _find_column(table, key, csv_path, f"{key}_column", required=False))
             for key, given in optional.items()}
    return _Columns(path=required["path_column"], patient=required["patient_column"],
                    label=required["label_column"], finding=required["finding_column"],
                    view=found["view"], sex=found["sex"], age=found["age"])


def _row_image(row: dict, number: int, columns: _Columns, root: Path, csv_path: Path, allow_outside: bool,
               issues: list[DataIssue]) -> Path | None:
    """The existing image file a row lists, or None after reporting why the row has none."""
    raw_path = blank_to_none(row[columns.path])
    if raw_path is None:
        issues.append(DataIssue(str(csv_path), f"row {number} has an empty {columns.path!r}", "invalid"))
        return None
    image = Path(raw_path).expanduser()
    image = image if image.is_absolute() else csv_path.parent / image
    inside = [Path(os.path.normpath(p)) for p in (root, csv_path.parent)]  # lexically: a symlink placed there is theirs
    if not allow_outside and not any(Path(os.path.normpath(image)).is_relative_to(p) for p in inside):
        issues.append(DataIssue(str(csv_path), f"row {number}: {raw_path}: path leaves the dataset root {root} "
                                "(allow it with the loader option allow_outside=true)", "invalid"))
        return None
    if not image.is_file():
        issues.append(DataIssue(str(image), f"listed in {csv_path.name} row {number} but the file does not exist",
                                "missing"))
        return None
    return image


def _row_record(row: dict, number: int, image: Path, columns: _Columns, labels: _Labels, source_name: str,
                root: Path, csv_path: Path, issues: list[DataIssue]) -> dict | None:
    """The record of one row's image, or None after reporting an empty patient or an unusable label/finding."""
    where = f"{csv_path.name} row {number}"
    patient = blank_to_none(row[columns.patient])
    if patient is None:
        issues.append(DataIssue(str(image), f"{where} has an empty {columns.patient!r}", "invalid"))
        return None
    label = blank_to_none(row[columns.label])
    key = (label or "").lower()
    if key not in labels.positive and key not in labels.negative:
        issues.append(DataIssue(str(image), f"{where}: label {label!r} in column {columns.label!r} is neither "
                                f"positive ({', '.join(sorted(labels.positive))}) nor negative "
                                f"({', '.join(sorted(labels.negative))})", "invalid"))
        return None
    covid = 1 if key in labels.positive else 0
    finding_text = blank_to_none(row[columns.finding]) if columns.finding else None
    if covid == 0 and finding_text is not None and finding_text.lower() in _COVID_FINDINGS:
        issues.append(DataIssue(str(image), f"{where}: negative label {label!r} but finding {finding_text!r}",
                                "invalid"))
        return None
    finding = ("covid" if covid == 1 else "unknown" if finding_text is None
               else FINDING_MAP.get(finding_text.lower(), "other"))
    view = blank_to_none(row[columns.view]) if columns.view else None
    return record_row(
        source_name, root, image.absolute(), patient_id=patient, covid=covid, finding=finding,
        source_finding=finding_text if finding_text is not None else label, view=canonical_view(view),
        source_view=view, sex=canonical_sex(row[columns.sex]) if columns.sex else None,
        age=parse_age(row[columns.age]) if columns.age else None, label=label)


def _one_record_per_file(listed: dict[str, list[tuple[int, dict]]], csv_path: Path,
                         issues: list[DataIssue]) -> list[dict]:
    """One record per image file: repeats with the same label keep the first row; conflicting ones none."""
    rows: list[dict] = []
    seen_ids: set[str] = set()
    for path, entries in listed.items():
        (first_number, record), repeats = entries[0], entries[1:]
        label_of = lambda r: (r["covid"], r["finding"], r["patient_id"])  # noqa: E731
        if any(label_of(r) != label_of(record) for _, r in repeats):
            numbers = ", ".join(str(n) for n, _ in entries)
            issues.append(DataIssue(path, f"listed in {csv_path.name} rows {numbers} with different labels "
                                    "or patients; no record made", "invalid"))
            continue
        for number, _ in repeats:
            issues.append(DataIssue(path, f"listed again in {csv_path.name} row {number}; first row "
                                    f"({first_number}) kept", "invalid"))
        if record["record_id"] in seen_ids:  # two spellings of one file via symlinks: keep the first
            issues.append(DataIssue(path, f"{csv_path.name} row {first_number} gives the same record id as an "
                                    "earlier row; first row kept", "invalid"))
            continue
        seen_ids.add(record["record_id"])
        rows.append(record)
    return rows
