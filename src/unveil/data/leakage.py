"""Leakage checks: no patient, and no (near-)identical image, may sit in two splits of one experiment."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from unveil.data.fingerprints import NEAR_DUPLICATE_DISTANCE, group_pairs, phash_distance_pairs
from unveil.data.records import patient_keys
from unveil.errors import UnveilError


class LeakageError(UnveilError, ValueError):
    """Records of one patient, or copies of one image, were found in more than one split."""


@dataclass
class LeakageReport:
    """What crosses split boundaries: patients, identical files, near-identical images."""

    patients: dict[str, list[str]] = field(default_factory=dict)  # patient key -> splits
    exact_images: list[list[str]] = field(default_factory=list)  # record ids sharing a file hash
    near_images: list[list[str]] = field(default_factory=list)  # record ids within pHash distance

    @property
    def clean(self) -> bool:
        return not (self.patients or self.exact_images or self.near_images)

    def describe(self, limit: int = 5) -> str:
        lines = []
        if self.patients:
            shown = [f"{p} in {'+'.join(s)}" for p, s in list(self.patients.items())[:limit]]
            lines.append(f"{len(self.patients)} patient(s) in more than one split: {'; '.join(shown)}")
        if self.exact_images:
            lines.append(f"{len(self.exact_images)} identical image group(s) across splits, e.g. "
                         f"{self.exact_images[:limit]}")
        if self.near_images:
            lines.append(f"{len(self.near_images)} near-duplicate image group(s) across splits, e.g. "
                         f"{self.near_images[:limit]}")
        return "\n".join(lines) or "no leakage"


def find_leakage(records: pd.DataFrame, fingerprints: pd.DataFrame | None = None, *,
                 max_distance: int = NEAR_DUPLICATE_DISTANCE) -> LeakageReport:
    """Inspect ``records`` (with a ``split`` column); ``fingerprints`` adds the image checks."""
    if "split" not in records.columns:
        raise ValueError("find_leakage needs a 'split' column")
    report = LeakageReport()
    frame = pd.DataFrame({"patient": patient_keys(records).to_numpy(),
                          "split": records["split"].astype(str).to_numpy(),
                          "record_id": records["record_id"].astype(str).to_numpy()})
    spread = frame.groupby("patient")["split"].agg(lambda s: sorted(set(s)))
    report.patients = {p: s for p, s in spread.items() if len(s) > 1}
    if fingerprints is None:
        return report
    merged = frame.merge(fingerprints[["record_id", "sha256", "phash"]], on="record_id", how="left")
    for _, group in merged.dropna(subset=["sha256"]).groupby("sha256"):
        if group["split"].nunique() > 1:
            report.exact_images.append(sorted(group["record_id"]))
    hashed = merged.dropna(subset=["phash"]).reset_index(drop=True)
    pairs = [(i, j) for i, j, _ in phash_distance_pairs(hashed["phash"].tolist(), max_distance)
             if hashed.at[i, "split"] != hashed.at[j, "split"]]
    for group in group_pairs(len(hashed), pairs):
        members = hashed.iloc[group]
        if members["sha256"].nunique() > 1:  # identical files are reported above
            report.near_images.append(sorted(members["record_id"]))
    report.exact_images.sort()
    report.near_images.sort()
    return report


def check_leakage(records: pd.DataFrame, fingerprints: pd.DataFrame | None = None, *,
                  max_distance: int = NEAR_DUPLICATE_DISTANCE) -> LeakageReport:
    """Like :func:`find_leakage` but raises :class:`LeakageError` describing any leak."""
    report = find_leakage(records, fingerprints, max_distance=max_distance)
    if not report.clean:
        raise LeakageError(report.describe())
    return report
