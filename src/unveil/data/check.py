"""`unveil data check`: load a dataset, validate it, and summarise what is there and what is wrong."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from unveil.data.fingerprints import NEAR_DUPLICATE_DISTANCE, duplicate_groups, fingerprint_images
from unveil.data.records import concat_records, patient_keys, validate_records
from unveil.data.sources import SourceLoad, load_source
from unveil.data.sources.base import DataIssue
from unveil.data.splits import conflicting_labels
from unveil.io import DEFAULT_MAX_PIXELS

log = logging.getLogger(__name__)


@dataclass
class DatasetReport:
    """Counts, problems and duplicates of one or more loaded sources."""

    sources: list[str]
    records: int
    patients: int
    by_class: dict[str, int]
    by_covid: dict[str, int]
    by_view: dict[str, int]
    by_source: dict[str, int]
    images_per_patient: dict[str, float]
    unreadable: list[DataIssue] = field(default_factory=list)
    missing: list[DataIssue] = field(default_factory=list)
    invalid: list[DataIssue] = field(default_factory=list)
    excluded: dict[str, int] = field(default_factory=dict)
    duplicates: dict[str, list[list[str]]] = field(default_factory=lambda: {"exact": [], "near": []})
    image_sizes: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def has_problems(self) -> bool:
        return bool(self.unreadable or self.missing or self.invalid)

    def to_dict(self) -> dict[str, Any]:
        return {
            "sources": self.sources,
            "records": self.records,
            "patients": self.patients,
            "by_class": self.by_class,
            "by_covid": self.by_covid,
            "by_view": self.by_view,
            "by_source": self.by_source,
            "images_per_patient": self.images_per_patient,
            "unreadable": [i.to_dict() for i in self.unreadable],
            "missing": [i.to_dict() for i in self.missing],
            "invalid": [i.to_dict() for i in self.invalid],
            "excluded": self.excluded,
            "duplicates": {"exact_groups": self.duplicates["exact"], "near_groups": self.duplicates["near"],
                           "near_duplicate_max_distance": NEAR_DUPLICATE_DISTANCE},
            "image_sizes": self.image_sizes,
            "notes": self.notes,
        }

    def to_text(self) -> str:
        lines = [f"sources: {', '.join(self.sources)}",
                 f"records: {self.records}   patients: {self.patients}"]
        lines.extend(f"note: {note}" for note in self.notes)
        for title, counts in (("by class", self.by_class), ("by covid", self.by_covid),
                              ("by view", self.by_view), ("by source", self.by_source)):
            lines.append(f"{title}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
        if self.image_sizes:
            lines.append("image sizes: " + ", ".join(f"{k} {v}" for k, v in self.image_sizes.items()))
        if self.excluded:
            lines.append("excluded by design: " + ", ".join(f"{k}: {v}" for k, v in self.excluded.items()))
        for title, issues in (("unreadable", self.unreadable), ("missing", self.missing),
                              ("invalid", self.invalid)):
            lines.append(f"{title}: {sum(issue.count for issue in issues)}")  # a merged issue counts its repeats
            lines.extend(f"  {issue.path}: {issue.problem}" for issue in issues)
        lines.append(f"exact duplicate groups: {len(self.duplicates['exact'])}")
        lines.extend(f"  {' = '.join(g)}" for g in self.duplicates["exact"])
        lines.append(f"near-duplicate groups: {len(self.duplicates['near'])}")
        lines.extend(f"  {' ~ '.join(g)}" for g in self.duplicates["near"])
        return "\n".join(lines)


def _counts(series: pd.Series) -> dict[str, int]:
    counts = series.astype("string").fillna("<missing>").value_counts()
    return {str(k): int(v) for k, v in sorted(counts.items())}


def summarise(loads: list[SourceLoad], *, read_images: bool = True, workers: int = 1,
              max_pixels: int | None = DEFAULT_MAX_PIXELS) -> DatasetReport:
    """Validate the loaded sources together and report counts, problems and duplicates.

    With ``read_images`` every image is decoded once (unreadable files are named, duplicates found).
    """
    records = validate_records(concat_records([load.records for load in loads]))
    issues = [issue for load in loads for issue in load.issues]
    excluded: dict[str, int] = {}
    for load in loads:
        for reason, count in load.excluded.items():
            excluded[reason] = excluded.get(reason, 0) + count
    per_patient = patient_keys(records).value_counts()
    report = DatasetReport(
        sources=[load.source for load in loads],
        records=len(records),
        patients=int(per_patient.size),
        by_class=_counts(records["finding"]),
        by_covid=_counts(records["covid"].map({1: "covid+", 0: "covid-"}, na_action="ignore")),
        by_view=_counts(records["view"]),
        by_source=_counts(records["source"]),
        images_per_patient={"mean": round(float(per_patient.mean()), 3) if len(per_patient) else 0.0,
                            "max": int(per_patient.max()) if len(per_patient) else 0},
        missing=[i for i in issues if i.kind == "missing"],
        invalid=[i for i in issues if i.kind == "invalid"],
        unreadable=[i for i in issues if i.kind == "unreadable"],
        excluded=excluded,
        notes=[note for load in loads for note in load.notes],
    )
    if read_images and len(records):
        fingerprints = fingerprint_images(records, workers=workers, max_pixels=max_pixels)
        paths = dict(zip(records["record_id"].astype(str), records["path"].astype(str), strict=True))
        for row in fingerprints.itertuples():
            if isinstance(row.error, str) and row.error:
                message = str(row.error)
                path = paths[row.record_id]
                problem = message[len(path) + 2:] if message.startswith(path + ": ") else message
                report.unreadable.append(DataIssue(path, problem, "unreadable"))
                log.warning("unreadable image %s", message)
            elif isinstance(row.note, str) and row.note:  # read, but without a header that would blank it
                report.notes.append(f"{paths[row.record_id]}: {row.note}")
                log.warning("%s: %s", paths[row.record_id], row.note)
        report.duplicates = duplicate_groups(fingerprints)
        report.invalid.extend(_label_conflicts(records, report.duplicates["exact"]))
        sizes = fingerprints.dropna(subset=["height"])
        if len(sizes):
            report.image_sizes = {
                "min_side": int(sizes[["height", "width"]].min(axis=1).min()),
                "max_side": int(sizes[["height", "width"]].max(axis=1).max()),
                "median_height": float(sizes["height"].median()),
                "median_width": float(sizes["width"].median()),
            }
    return report


def _label_conflicts(records: pd.DataFrame, groups: list[list[str]]) -> list[DataIssue]:
    """An "invalid" issue for each group of identical images (record ids) whose records disagree on the label:
    the splits drop every copy (:func:`unveil.data.splits.drop_duplicate_images`)."""
    position = {rid: i for i, rid in enumerate(records["record_id"].astype(str))}
    paths = records["path"].astype(str).to_numpy()
    issues = []
    for group in groups:
        rows = [position[rid] for rid in group if rid in position]
        conflict = conflicting_labels(records, rows)
        if conflict:
            issues.append(DataIssue(paths[rows[0]], f"the same image as {', '.join(paths[r] for r in rows[1:])} with "
                                    f"conflicting labels ({conflict}); every copy is left out of splits", "invalid"))
            log.warning("%s: %s", issues[-1].path, issues[-1].problem)
    return issues


def check_dataset(source: str, root: str | Path, *, read_images: bool = True, workers: int = 1,
                  max_pixels: int | None = DEFAULT_MAX_PIXELS, **options) -> DatasetReport:
    """Load ``source`` from ``root`` (its original layout) and summarise it."""
    return summarise([load_source(source, root, **options)], read_images=read_images, workers=workers,
                     max_pixels=max_pixels)
