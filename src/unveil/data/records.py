"""The record table: one row per image, the same columns for every dataset.

Every loader in :mod:`unveil.data.sources` returns a :class:`pandas.DataFrame` honouring this
contract, and every later stage (splits, compositions, pre-processing, training, evaluation,
audit) reads only these columns. This module is the one place the contract is written down.

Required columns
----------------
``record_id``      str, unique across all sources and stable across machines:
                   ``"<source>/<path relative to the dataset root>"``.
``source``         str, the dataset's registry name (``covid-chestxray``, ``chestxray``, ...).
``path``           str, absolute path of the image file.
``patient_id``     str, the source's own patient identifier (never a raw DICOM patient field: ``dicom-folder``
                   stores a keyed hash of PatientID).
                   Patients are only comparable within a source: group by :func:`patient_keys`.
``covid``          nullable Int8: 1 COVID-19 positive, 0 negative, <NA> unknown.
``finding``        one of :data:`FINDINGS`; ``source_finding`` keeps the source's own string.
``source_finding`` str or <NA>.
``view``           one of :data:`VIEWS` or <NA>; ``source_view`` keeps the source's own string.
``source_view``    str or <NA>.
``sex``            ``"M"``, ``"F"`` or <NA>.
``age``            float years or <NA> (nullable Float64).
``mask_path``      str (absolute path of a lung mask, 0 = background, >0 = lung) or <NA>.

Optional columns (absent or <NA> where a source has no such thing)
----------------------------------------------------------------
``infection_mask_path``  str, absolute path of a lesion/infection mask (COVID-QU-Ex) or <NA>.
``original_split``       str, the part a source itself assigns (``train``/``val``/``test``) or <NA>.
``patient_known``        bool; False where the source publishes no patient ids and ``patient_id`` is
                         only the image id (splits of such a source are image-exclusive).
``location``             str, the hospital, site or city of the image (COVID-ChestXRay's ``location``,
                         ``hospital-csv``'s site column, ``dicom-folder``'s InstitutionName) or <NA>; the
                         audit's metadata probes read it, so several sites of one source are told apart.

Loaders may add further columns (``license``, ``exam_id``, ``manufacturer``...); they ride along.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from unveil.errors import UnveilError

#: Canonical findings. ``pneumonia`` is pneumonia of unstated cause (RSNA's "Lung Opacity");
#: ``other`` is any other finding (tuberculosis, ARDS alone, lipoid pneumonia...);
#: ``unknown`` means the source gives no finding for the image.
FINDINGS: tuple[str, ...] = ("normal", "bacterial", "viral", "pneumonia", "covid", "other", "unknown")

#: Canonical projections. AP supine/erect are AP; lateral views are LATERAL.
VIEWS: tuple[str, ...] = ("PA", "AP", "LATERAL")

REQUIRED_COLUMNS: tuple[str, ...] = (
    "record_id",
    "source",
    "path",
    "patient_id",
    "covid",
    "finding",
    "source_finding",
    "view",
    "source_view",
    "sex",
    "age",
    "mask_path",
)

_STRING_COLUMNS = ("record_id", "source", "path", "patient_id", "finding", "source_finding",
                   "view", "source_view", "sex", "mask_path", "infection_mask_path")


class RecordTableError(UnveilError, ValueError):
    """A record table breaks the contract; the message lists every problem found."""


def make_record_id(source: str, root: Path | str, path: Path | str) -> str:
    """Stable id of an image: the source name and its path relative to the dataset root.

    The path is taken as written (a symlink inside the root keeps its name there); a file outside
    the root gets a lexical ``../`` path, so the id never depends on the machine's absolute paths.
    """
    absolute_root, absolute = Path(root).absolute(), Path(path).absolute()
    try:
        relative = absolute.relative_to(absolute_root).as_posix()
    except ValueError:
        relative = Path(os.path.relpath(absolute, absolute_root)).as_posix()
    return f"{source}/{relative}"


def record_row(source: str, root: Path | str, image: Path | str, *, patient_id: str, covid: int | None,
               finding: str, source_finding: str | None = None, view: str | None = None,
               source_view: str | None = None, sex: str | None = None, age: float | None = None,
               mask_path: Path | str | None = None, **extra: object) -> dict:
    """One loader row in the contract's shape (``extra`` columns ride along)."""
    return {
        "record_id": make_record_id(source, root, image),
        "source": source,
        "path": str(Path(image).resolve()),
        "patient_id": patient_id,
        "covid": covid,
        "finding": finding,
        "source_finding": source_finding,
        "view": view,
        "source_view": source_view,
        "sex": sex,
        "age": age,
        "mask_path": str(mask_path) if mask_path is not None else None,
        **extra,
    }


def canonical_view(raw: object) -> str | None:
    """Map a source's view string ("AP Supine", "PA", "L", "AP erect") to :data:`VIEWS`."""
    if raw is None or (isinstance(raw, float) and pd.isna(raw)) or raw is pd.NA:
        return None
    text = str(raw).strip().upper().replace("_", " ")
    if not text:
        return None
    if text.startswith("PA"):
        return "PA"
    if text.startswith("AP"):
        return "AP"
    if text in {"L", "LL", "LAT", "LATERAL"} or text.startswith("LATERAL"):
        return "LATERAL"
    return None


def canonical_sex(raw: object) -> str | None:
    """Map "M"/"male"/"F"/"female" (any case) to "M"/"F"; anything else to missing."""
    if raw is None or raw is pd.NA or (isinstance(raw, float) and pd.isna(raw)):
        return None
    text = str(raw).strip().upper()
    if text in {"M", "MALE"}:
        return "M"
    if text in {"F", "FEMALE"}:
        return "F"
    return None


def parse_age(raw: object) -> float | None:
    """Age in years from a plain number ("54", "54.0", "054Y"); ranges like "50+" are missing."""
    if raw is None or raw is pd.NA or (isinstance(raw, float) and pd.isna(raw)):
        return None
    text = str(raw).strip().upper()
    if text.endswith("Y") and text[:-1].isdigit():  # DICOM-style age string, e.g. "054Y"
        text = text[:-1]
    try:
        value = float(text)
    except ValueError:
        return None
    return value if 0 <= value < 130 else None


def build_records(rows: Iterable[dict], extra_columns: Iterable[str] = ()) -> pd.DataFrame:
    """Turn loader rows (dicts) into a contract-conforming table with the right dtypes.

    Missing optional keys become <NA>; the result is validated before it is returned.
    """
    rows = list(rows)
    columns = list(REQUIRED_COLUMNS) + [c for c in extra_columns if c not in REQUIRED_COLUMNS]
    frame = pd.DataFrame.from_records(rows, columns=columns) if rows else pd.DataFrame(columns=columns)
    return normalise_dtypes(validate_records(normalise_dtypes(frame)))


def normalise_dtypes(records: pd.DataFrame) -> pd.DataFrame:
    """Give the contract columns their documented dtypes (nullable string / Int8 / Float64)."""
    out = records.copy()
    for column in _STRING_COLUMNS:
        if column in out:
            out[column] = out[column].astype("string")
    if "covid" in out:
        out["covid"] = pd.array(out["covid"], dtype="Int8") if len(out) else out["covid"].astype("Int8")
    if "age" in out:
        out["age"] = pd.to_numeric(out["age"], errors="coerce").astype("Float64")
    return out.reset_index(drop=True)


def validate_records(records: pd.DataFrame) -> pd.DataFrame:
    """Check a table against the contract; raise :class:`RecordTableError` listing every problem.

    Returns the table unchanged when it conforms, so it can be used inline.
    """
    problems: list[str] = []
    missing = [c for c in REQUIRED_COLUMNS if c not in records.columns]
    if missing:
        raise RecordTableError(f"record table lacks required columns: {', '.join(missing)}")

    def _bad(mask: pd.Series, what: str) -> None:
        if mask.any():
            examples = records.loc[mask, "record_id"].astype(str).head(5).tolist()
            problems.append(f"{int(mask.sum())} record(s) {what}, e.g. {examples}")

    for column in ("record_id", "source", "path", "patient_id"):
        empty = records[column].isna() | (records[column].astype("string").str.strip() == "")
        _bad(empty.fillna(True).astype(bool), f"with empty {column}")
    duplicated = records["record_id"].duplicated(keep=False) & records["record_id"].notna()
    _bad(duplicated, "with a duplicated record_id")
    covid = pd.to_numeric(records["covid"], errors="coerce")
    _bad(records["covid"].notna() & ~covid.isin([0, 1]), "with covid not in {1, 0, <NA>}")
    _bad(~records["finding"].isin(FINDINGS), f"with finding not in {FINDINGS}")
    _bad(records["view"].notna() & ~records["view"].isin(VIEWS), f"with view not in {VIEWS}")
    _bad(records["sex"].notna() & ~records["sex"].isin(["M", "F"]), "with sex not in {M, F, <NA>}")
    age = pd.to_numeric(records["age"], errors="coerce")
    _bad(records["age"].notna() & ~age.between(0, 130), "with age outside [0, 130)")
    covid_finding = records["finding"] == "covid"
    _bad((covid_finding & (covid != 1)).fillna(False).astype(bool), "with finding 'covid' but covid != 1")
    if problems:
        raise RecordTableError("record table breaks the contract:\n  " + "\n  ".join(problems))
    return records


def patient_keys(records: pd.DataFrame) -> pd.Series:
    """Grouping key for patient-exclusive work: patients are unique only within a source."""
    return records["source"].astype(str) + "::" + records["patient_id"].astype(str)


def concat_records(tables: Iterable[pd.DataFrame]) -> pd.DataFrame:
    """Stack record tables from several sources, keeping the contract (and checking ids stay unique)."""
    tables = [t for t in tables if len(t)]
    if not tables:
        return build_records([])
    return normalise_dtypes(validate_records(pd.concat(tables, ignore_index=True)))
