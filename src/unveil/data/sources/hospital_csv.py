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
    positive = {str(v).strip().lower() for v in positive_labels}
    negative = {str(v).strip().lower() for v in negative_labels}
    overlap = positive & negative
    if overlap:
        raise ValueError(f"labels {sorted(overlap)} are listed as both positive and negative")

    table = read_csv_table(csv_path, encoding=encoding)
    path_col = _find_column(table, path_column, csv_path, "path_column", required=True)
    patient_col = _find_column(table, patient_column, csv_path, "patient_column", required=True)
    label_col = _find_column(table, label_column, csv_path, "label_column", required=True)
    finding_col = _find_column(table, finding_column, csv_path, "finding_column", required=True)
    optional = {}
    for key, given in (("view", view_column), ("sex", sex_column), ("age", age_column)):
        optional[key] = (_find_column(table, given, csv_path, f"{key}_column", required=True) if given
                         else _find_column(table, key, csv_path, f"{key}_column", required=False))

    issues: list[DataIssue] = []
    folder = csv_path.parent
    # resolved image path -> list of (row number, record) for the rows that list it
    listed: dict[str, list[tuple[int, dict]]] = {}
    for number, row in enumerate(table.to_dict("records"), start=2):  # line 1 is the header
        where = f"{csv_path.name} row {number}"
        raw_path = blank_to_none(row[path_col])
        if raw_path is None:
            issues.append(DataIssue(str(csv_path), f"row {number} has an empty {path_col!r}", "invalid"))
            continue
        image = Path(raw_path).expanduser()
        image = image if image.is_absolute() else folder / image
        inside = [Path(os.path.normpath(p)) for p in (root, folder)]  # lexically: a symlink placed there is theirs
        if not truthy(allow_outside) and not any(Path(os.path.normpath(image)).is_relative_to(p) for p in inside):
            issues.append(DataIssue(str(csv_path), f"row {number}: {raw_path}: path leaves the dataset root {root} "
                                    "(allow it with the loader option allow_outside=true)", "invalid"))
            continue
        if not image.is_file():
            issues.append(DataIssue(str(image), f"listed in {where} but the file does not exist", "missing"))
            continue
        patient = blank_to_none(row[patient_col])
        if patient is None:
            issues.append(DataIssue(str(image), f"{where} has an empty {patient_col!r}", "invalid"))
            continue
        label = blank_to_none(row[label_col])
        key = (label or "").lower()
        if key in positive:
            covid = 1
        elif key in negative:
            covid = 0
        else:
            issues.append(DataIssue(str(image), f"{where}: label {label!r} in column {label_col!r} is neither "
                                    f"positive ({', '.join(sorted(positive))}) nor negative "
                                    f"({', '.join(sorted(negative))})", "invalid"))
            continue
        finding_text = blank_to_none(row[finding_col]) if finding_col else None
        if covid == 1:
            finding = "covid"
        elif finding_text is None:
            finding = "unknown"
        elif finding_text.lower() in _COVID_FINDINGS:
            issues.append(DataIssue(str(image), f"{where}: negative label {label!r} but finding "
                                    f"{finding_text!r}", "invalid"))
            continue
        else:
            finding = FINDING_MAP.get(finding_text.lower(), "other")
        view = blank_to_none(row[optional["view"]]) if optional["view"] else None
        resolved = image.resolve()
        listed.setdefault(str(resolved), []).append((number, record_row(
            source_name, root, image.absolute(), patient_id=patient, covid=covid, finding=finding,
            source_finding=finding_text if finding_text is not None else label, view=canonical_view(view),
            source_view=view, sex=canonical_sex(row[optional["sex"]]) if optional["sex"] else None,
            age=parse_age(row[optional["age"]]) if optional["age"] else None, label=label)))

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

    return SourceLoad(source=source_name, root=root, records=build_records(rows, extra_columns=["label"]),
                      issues=issues, excluded={})
