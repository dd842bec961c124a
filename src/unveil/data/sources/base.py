"""What every source loader returns, and the errors it raises."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, overload

import pandas as pd

from unveil.errors import UnveilError

IssueKind = Literal["missing", "unreadable", "invalid"]


class DatasetLayoutError(UnveilError, ValueError):
    """The folder does not hold the layout the loader documents (message names what is missing)."""


class UnknownSourceError(DatasetLayoutError):
    """A dataset source name unveil has no loader for; the message lists the known names."""


@dataclass(frozen=True)
class DataIssue:
    """One problem with one file or row; reported, never silently dropped. ``count`` > 1: the same problem on
    that many files or rows, reported once (the first is named, the others listed in ``problem``)."""

    path: str
    problem: str
    kind: IssueKind = "invalid"
    count: int = 1

    def to_dict(self) -> dict[str, str | int]:
        return {"path": self.path, "problem": self.problem, "kind": self.kind, "count": self.count}


class IssueLog:
    """Collects a load's issues and merges repeats of one problem, so that 120 rows with the same mistake are one
    issue with its count (named by its first occurrence, with the next few places listed), not 120 lines."""

    #: places listed in a merged issue after the first
    SHOWN = 5

    def __init__(self) -> None:
        self._groups: dict[object, list[tuple[str, DataIssue]]] = {}

    def add(self, key: object, where: str, issue: DataIssue) -> None:
        """Record ``issue`` (found at ``where``, e.g. "row 7"); issues with an equal ``key`` are one problem."""
        self._groups.setdefault(key, []).append((where, issue))

    def issues(self) -> list[DataIssue]:
        """One issue per problem, in the order the problems were first seen."""
        merged = []
        for entries in self._groups.values():
            first = entries[0][1]
            if len(entries) == 1:
                merged.append(first)
                continue
            others = [where for where, _ in entries[1:]]
            listed = ", ".join(others[:self.SHOWN]) + (", ..." if len(others) > self.SHOWN else "")
            merged.append(DataIssue(first.path, f"{first.problem} ({len(entries)} times; also {listed})", first.kind,
                                    len(entries)))
        return merged


@dataclass
class SourceLoad:
    """A loaded dataset: its record table, the rows it could not use, and what it left out on purpose.

    ``issues`` are defects (a metadata row pointing to a missing file, an unparseable label);
    ``excluded`` counts rows left out by design (e.g. CT rows of COVID-ChestXRay) by reason;
    ``notes`` are facts about the whole source a user must know (e.g. "no patient ids").
    """

    source: str
    root: Path
    records: pd.DataFrame
    issues: list[DataIssue] = field(default_factory=list)
    excluded: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def exclude(self, reason: str, count: int = 1) -> None:
        self.excluded[reason] = self.excluded.get(reason, 0) + count


def require_path(path: Path, what: str, *, directory: bool = False) -> Path:
    """Fail with a layout error naming ``path`` when it does not exist (or is of the wrong kind)."""
    if directory and not path.is_dir():
        raise DatasetLayoutError(f"{path}: expected {what} (a folder) but it does not exist")
    if not directory and not path.is_file():
        raise DatasetLayoutError(f"{path}: expected {what} (a file) but it does not exist")
    return path


def read_csv_table(path: Path, *, encoding: str = "utf-8", **kwargs) -> pd.DataFrame:
    """Read a metadata CSV as strings, turning parser failures, and a table without rows, into a layout error
    naming the file."""
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False, encoding=encoding, **kwargs)
    except UnicodeDecodeError as error:
        raise DatasetLayoutError(f"{path}: not readable as {encoding} text ({error.reason})") from None
    except LookupError:  # codecs' error for an encoding name it does not know (loader option ``encoding``)
        raise DatasetLayoutError(f"{path}: unknown text encoding {encoding!r} (e.g. utf-8, latin-1)") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        raise DatasetLayoutError(f"{path}: not a readable CSV table ({error})") from None
    if table.empty:  # a header and no rows: nothing to load is a mistake, not an empty dataset
        raise DatasetLayoutError(f"{path}: the table has no rows (only a header)")
    refuse_repeated_columns(path, pd.read_csv(path, header=None, nrows=1, dtype=str, keep_default_na=False,
                                              encoding=encoding, **kwargs).iloc[0].tolist())
    return table


def refuse_repeated_columns(path: Path, header: list[object]) -> None:
    """A :class:`DatasetLayoutError` naming the columns a CSV header gives twice (case-insensitively): pandas
    would rename the copy (``label.1``) and the first would silently win."""
    counts: dict[str, list[str]] = {}
    for name in (str(cell).strip() for cell in header):
        if name:
            counts.setdefault(name.lower(), []).append(name)
    repeated = [" / ".join(repr(n) for n in names) for names in counts.values() if len(names) > 1]
    if repeated:
        raise DatasetLayoutError(f"{path}: column(s) given more than once: {', '.join(repeated)}; rename or remove "
                                 "the copies (which one holds the values would be a guess)")


def blank_to_none(value: object) -> str | None:
    """Strip a CSV cell; empty cells become None."""
    if value is None or value is pd.NA or (isinstance(value, float) and pd.isna(value)):
        return None
    text = str(value).strip()
    return text or None


#: Cell values that mean "no patient id" (what spreadsheets and pandas write for an empty cell), compared in
#: lower case: never a real patient, or every such image would be one patient.
NO_PATIENT = frozenset({"na", "n/a", "nan", "none", "null", "<na>", "#n/a", "-", "?"})


def patient_or_none(value: object) -> str | None:
    """A patient id cell, or None when it is empty or says there is none (:data:`NO_PATIENT`)."""
    text = blank_to_none(value)
    return None if text is None or text.lower() in NO_PATIENT else text


def unknown_patient(row: dict) -> dict:
    """``row`` (a :func:`~unveil.data.records.record_row`) without a patient id: its own patient (``patient_known``
    False), as a patient-exclusive split can only treat it."""
    return {**row, "patient_id": f"image-{row['record_id']}", "patient_known": False}


def unknown_patients_note(records: pd.DataFrame, column: str) -> list[str]:
    """The note saying how many records had no patient id in ``column`` (empty, NA, nan...), or none."""
    if "patient_known" not in records:
        return []
    unknown = int((~records["patient_known"].astype("boolean").fillna(True)).sum())
    if not unknown:
        return []
    return [f"{unknown} image(s) have no patient id in column {column!r} (empty, NA, nan...): each is its own patient "
            "(patient_known False), so a patient-exclusive split cannot keep them with the patient's other images"]


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom", ".bmp", ".tif", ".tiff")


def named_pngs(folder: Path, pattern: re.Pattern[str], loaded: SourceLoad,
               expected: str) -> Iterator[tuple[Path, re.Match[str]]]:
    """PNG files of ``folder`` whose stem matches ``pattern`` (sorted); other image files become
    "invalid" issues (their label is unknown), non-images are counted as excluded."""
    for image in sorted(folder.iterdir()):
        if not image.is_file() or image.name.startswith(".") or image.suffix.lower() not in IMAGE_SUFFIXES:
            loaded.exclude(f"not an image file in {folder.name}")
            continue
        match = pattern.match(image.stem)
        if image.suffix.lower() != ".png" or match is None:
            loaded.issues.append(DataIssue(str(image), f"file name does not follow {expected}, so its "
                                           "label is unknown", "invalid"))
            continue
        yield image, match


_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def truthy(value: object, option: str = "allow_outside") -> bool:
    """A yes/no loader option given on the command line as text (``-o allow_outside=true``) or as a bool;
    anything but true/false, yes/no, on/off, 1/0 is a :class:`DatasetLayoutError` naming the option."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text not in _TRUE | _FALSE:
        raise DatasetLayoutError(f"loader option {option}={value!r}: expected true or false (also yes/no, on/off, 1/0)")
    return text in _TRUE


def listed_path(root: Path, *parts: str, allow_outside: bool = False) -> Path:
    """The file a metadata row lists (``root / folder / filename``), normalised (``images/../images/x``
    is ``images/x``, so a second listing of one file is seen as such). A listed path that leaves the dataset
    root (``../other/x.png``, an absolute path) raises :class:`DatasetLayoutError` unless ``allow_outside``: a
    metadata file must not pull in files the user did not hand over. A symlink the user placed inside the
    root is theirs to place (records keep the resolved path, so a second name for one file is still found
    as a duplicate before any split)."""
    # lexical on purpose (no file is looked at; pathlib has no normpath); only the listed part, the root as written
    relative = os.path.normpath(os.path.join(*parts))  # noqa: PTH118
    path = Path(root).absolute() / relative
    if not allow_outside:
        lexical_inside = not (Path(relative).is_absolute() or relative == ".." or relative.startswith(".." + os.sep))
        if not lexical_inside:
            raise DatasetLayoutError(f"{'/'.join(parts)}: path leaves the dataset root {root} (allow it with "
                                     "the loader option allow_outside=true)")
    return path


@overload
def find_column(table: pd.DataFrame, name: str, csv_path: Path, option: str, *, required: Literal[True]) -> str: ...
@overload
def find_column(table: pd.DataFrame, name: str | None, csv_path: Path, option: str, *,
                required: bool) -> str | None: ...
def find_column(table: pd.DataFrame, name: str | None, csv_path: Path, option: str, *,
                required: bool) -> str | None:
    """The CSV column called ``name`` (exact, else case-insensitive); a layout error naming the loader ``option``
    and listing the CSV's columns when it is absent and ``required``."""
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


def find_file(root: Path, name: str | Path, what: str) -> Path:
    """A file a loader option names: a relative name is looked up under ``root`` first, then from the working
    folder; a layout error naming it when it does not exist."""
    path = Path(name).expanduser()
    if not path.is_absolute() and (root / path).is_file():
        path = root / path
    return require_path(path.absolute(), what)
