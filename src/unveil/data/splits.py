"""Patient-exclusive, stratified, seeded splits, and the split files that record them.

The paper splits each dataset 70/30 into train/test, then the training part 80/20 into
train/validation, with no patient in two parts. scikit-learn offers stratified *or* grouped
splitting with fold counts, but not a stratified grouped split with exact fractions, so the
assignment is written here (a few lines): patients are grouped into strata by their label,
shuffled with a seeded generator, and the first ``round(n * fraction)`` of each stratum go to test.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from unveil.artifacts import ArtifactError, Input, load_artifact, write_artifact
from unveil.data.records import patient_keys
from unveil.errors import UnveilError
from unveil.provenance import file_sha256, write_text_atomic

SPLITS: tuple[str, ...] = ("train", "val", "test")
SPLIT_FILE_COLUMNS: tuple[str, ...] = ("record_id", "source", "patient_id", "covid", "finding", "split")


class SplitFileError(UnveilError, ValueError):
    """A split file is unreadable, altered, or does not match the records it is applied to."""


class SplitError(UnveilError, ValueError):
    """A split cannot be made as asked: a fraction out of range, an unknown stratification column, or a
    source without train/val/test parts of its own."""


class DuplicateRecordsError(UnveilError, ValueError):
    """Records to split name one image twice (same resolved file or same content): a split would put the
    copies in train and test. The message names the two files."""


_HASHES: dict[tuple[str, int, int], str] = {}


def _content_hash(path: str) -> str | None:
    """SHA-256 of a file's bytes (remembered by path, size and mtime); ``None`` for a file that cannot be read."""
    try:
        status = Path(path).stat()
        key = (path, status.st_size, status.st_mtime_ns)
        if key not in _HASHES:
            _HASHES[key] = file_sha256(path)
        return _HASHES[key]
    except OSError:
        return None


def duplicate_images(records: pd.DataFrame) -> list[tuple[int, int, str]]:
    """``(row, first_row, how)`` for every record whose image repeats an earlier record's: the same file once
    resolved (``../images/x.jpeg`` is ``images/x.jpeg``, symlinks followed) or the same bytes (SHA-256)."""
    found: list[tuple[int, int, str]] = []
    by_path: dict[str, int] = {}
    by_hash: dict[str, int] = {}
    for row, path in enumerate(records["path"].astype(str)):
        resolved = str(Path(path).resolve())
        if resolved in by_path:
            found.append((row, by_path[resolved], "same file"))
            continue
        by_path[resolved] = row
        digest = _content_hash(resolved)
        if digest is not None:
            if digest in by_hash:
                found.append((row, by_hash[digest], "same content (SHA-256)"))
                continue
            by_hash[digest] = row
    return found


#: The columns a copy of one image must agree on: the label a split trains on, and the finding.
LABEL_COLUMNS: tuple[str, ...] = ("covid", "finding")


def conflicting_labels(records: pd.DataFrame, rows: Sequence[int]) -> str | None:
    """How the records at positions ``rows`` (copies of one image) disagree on a label (``covid 0 / 1``), or
    None when they agree: one image cannot be both, and which row comes first must never decide. A missing
    value, or the finding "unknown", says nothing and agrees with any."""
    for column in LABEL_COLUMNS:
        if column in records:
            values = sorted(set(records[column].iloc[list(rows)].dropna().astype(str)) - {"unknown"})
            if len(values) > 1:
                return f"{column} {' / '.join(values)}"
    return None


def drop_duplicate_images(records: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """``records`` without the later copies of any image (see :func:`duplicate_images`), and one message per
    removed record naming both files; done before every split so no image lands in two parts. Copies that
    disagree on the label (:func:`conflicting_labels`) are all removed, whatever their order, and named."""
    found = duplicate_images(records)
    if not found:
        return records, []
    paths = records["path"].astype(str).to_numpy()
    groups: dict[int, list[int]] = {}
    for row, first, _ in found:
        groups.setdefault(first, [first]).append(row)
    messages, drop = [], {row for row, _, _ in found}
    for first, rows in groups.items():
        conflict = conflicting_labels(records, rows)
        if conflict:
            drop.add(first)
            messages.append(f"{' = '.join(sorted(paths[r] for r in rows))}: one image with conflicting labels "
                            f"({conflict}); all {len(rows)} removed before splitting")
    messages += [f"{paths[row]}: duplicate of {paths[first]} ({how}); removed before splitting"
                 for row, first, how in found if conflicting_labels(records, groups[first]) is None]
    keep = np.ones(len(records), dtype=bool)
    keep[sorted(drop)] = False
    return records[keep].reset_index(drop=True), messages


def _round_half_up(value: float) -> int:
    return int(np.floor(value + 0.5))


def patient_strata(records: pd.DataFrame, stratify_by: Sequence[str]) -> pd.Series:
    """One stratum label per patient key: the most frequent value of ``stratify_by`` among its
    images (ties go to the largest value, so a patient with any COVID+ image of two is COVID+)."""
    keys = patient_keys(records)
    if not stratify_by:
        return pd.Series("all", index=pd.Index(sorted(keys.unique())))
    unknown = [column for column in stratify_by if column not in records.columns]
    if unknown:
        raise SplitError(f"cannot stratify by {', '.join(map(repr, unknown))}: no such column; the records have "
                         f"{', '.join(records.columns)}")
    labels = records[list(stratify_by)].astype("string").fillna("<NA>").agg("|".join, axis=1)
    frame = pd.DataFrame({"patient": keys.to_numpy(), "label": labels.to_numpy()})
    counts = frame.groupby(["patient", "label"]).size().reset_index(name="n")
    counts = counts.sort_values(["patient", "n", "label"], ascending=[True, False, False])
    return counts.drop_duplicates("patient").set_index("patient")["label"].sort_index()


def patient_exclusive_split(
    records: pd.DataFrame,
    *,
    seed: int,
    test_fraction: float = 0.3,
    val_fraction: float = 0.2,
    stratify_by: Sequence[str] = ("covid",),
) -> pd.Series:
    """Assign every record to train/val/test (aligned with ``records.index``).

    ``test_fraction`` of each stratum's patients go to test; ``val_fraction`` of the rest to val.
    The same records and seed always give the same assignment, whatever the row order. Records naming one
    image twice (by resolved path or content) are refused (:class:`DuplicateRecordsError`).
    """
    for name, fraction in (("test_fraction", test_fraction), ("val_fraction", val_fraction)):
        if not 0 <= fraction < 1:
            raise SplitError(f"{name} must be in [0, 1), got {fraction}")
    if "path" in records:
        found = duplicate_images(records)
        if found:
            paths = records["path"].astype(str).to_numpy()
            row, first, how = found[0]
            raise DuplicateRecordsError(f"{paths[row]}: duplicate of {paths[first]} ({how}; {len(found)} duplicate "
                                        "record(s) in all); remove them before splitting (drop_duplicate_images)")
    strata = patient_strata(records, stratify_by)
    rng = np.random.default_rng(seed)
    assignment: dict[str, str] = {}
    for _, patients in strata.groupby(strata, sort=True):
        order = list(patients.index[rng.permutation(len(patients))])
        n_test = _round_half_up(len(order) * test_fraction)
        n_val = _round_half_up((len(order) - n_test) * val_fraction)
        for position, patient in enumerate(order):
            assignment[patient] = "test" if position < n_test else "val" if position < n_test + n_val else "train"
    return patient_keys(records).map(assignment).rename("split")


def original_split(records: pd.DataFrame) -> pd.Series:
    """The parts a source assigns itself (its ``original_split`` column: train / val / test), aligned
    with ``records.index``; a clear error when the source has none or some record lacks one."""
    if "original_split" not in records.columns:
        raise SplitError("this source assigns no train/val/test parts of its own (no original_split column)")
    split = records["original_split"].astype("string").str.lower()
    bad = split.isna() | ~split.isin(["train", "val", "test"])
    if bad.any():
        examples = records.loc[bad, "record_id"].astype(str).head(3).tolist()
        raise SplitError(f"{int(bad.sum())} record(s) without a train/val/test original_split, e.g. {examples}")
    return split.astype(str).rename("split")


def split_table(records: pd.DataFrame, split: pd.Series) -> pd.DataFrame:
    """The split file's content: one row per record, sorted by split then record_id."""
    table = records.loc[:, ["record_id", "source", "patient_id", "covid", "finding"]].copy()
    table["split"] = split.reindex(records.index).to_numpy()
    if table["split"].isna().any():
        raise ValueError("every record needs a split before a split file is written")
    order = table["split"].map({name: i for i, name in enumerate(SPLITS)})
    table = table.assign(_order=order).sort_values(["_order", "record_id"]).drop(columns="_order")
    return table.reset_index(drop=True)


def split_file_bytes(table: pd.DataFrame) -> bytes:
    """Canonical CSV bytes of a split table (same content -> same bytes -> same hash)."""
    buffer = io.StringIO()
    table.loc[:, list(SPLIT_FILE_COLUMNS)].to_csv(buffer, index=False, lineterminator="\n")
    return buffer.getvalue().encode("utf-8")


def content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def records_digest(records: pd.DataFrame) -> str:
    """SHA-256 of a record table's canonical CSV: how a split artifact names the records it was drawn from."""
    return content_hash(records.to_csv(index=False, lineterminator="\n").encode("utf-8"))


def write_split_file(path: str | Path, records: pd.DataFrame, split: pd.Series, *,
                     command: str = "unveil.data.splits.write_split_file",
                     config: dict[str, Any] | None = None) -> str:
    """Write the split file atomically, with its artifact meta.json (``NAME.meta.json``: the records it was drawn
    from, ``command`` and ``config``, versions); return its sha256 content hash."""
    data = split_file_bytes(split_table(records, split))
    write_text_atomic(path, data.decode("utf-8"))
    write_artifact(path, "split", [Path(path).name], command=command, config=config or {},
                   inputs=[Input("records", None, records_digest(records))])
    return content_hash(data)


def read_split_file(path: str | Path, expected_hash: str | None = None, *, as_text: bool = False) -> pd.DataFrame:
    """Read a split file through the artifact loader (its meta.json's hash checked; a file without one loads with
    a warning), checking its columns and (optionally) the content hash a later stage recorded. ``as_text``: every
    column as text, empty cells as ``""`` (for joining ids)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise SplitFileError(f"{path}: cannot read split file ({error.strerror})") from None
    if expected_hash is not None and content_hash(data) != expected_hash:
        raise SplitFileError(f"{path}: content hash differs from the one recorded ({expected_hash[:12]}...)")
    try:
        load_artifact(path, "split")
    except ArtifactError as error:
        raise SplitFileError(str(error)) from None
    types: Any = str if as_text else {"record_id": "string", "source": "string", "patient_id": "string",
                                      "finding": "string", "split": "string"}
    try:
        table = pd.read_csv(io.BytesIO(data), dtype=types, keep_default_na=not as_text)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        raise SplitFileError(f"{path}: not a readable split file ({error})") from None
    missing = [c for c in SPLIT_FILE_COLUMNS if c not in table.columns]
    if missing:
        raise SplitFileError(f"{path}: missing columns {', '.join(missing)}")
    unknown = sorted(set(table["split"].dropna()) - set(SPLITS))
    if unknown:
        raise SplitFileError(f"{path}: unknown split names {unknown}")
    return table


def apply_split_file(records: pd.DataFrame, table: pd.DataFrame) -> pd.DataFrame:
    """Records restricted to those in the split file, with its ``split`` column added.

    Fails, naming examples, if the file lists records that are not in ``records``.
    """
    known = set(records["record_id"].astype(str))
    absent = [rid for rid in table["record_id"].astype(str) if rid not in known]
    if absent:
        raise SplitFileError(f"split file lists {len(absent)} record(s) not in the data, e.g. {absent[:3]}")
    merged = records.merge(table[["record_id", "split"]], on="record_id", how="inner")
    return merged.reset_index(drop=True)
