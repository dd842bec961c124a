"""Contamination: test images that are (near-)copies of the model's training images.

Pooled collections re-use images of other public sets (COVID-QU-Ex pools COVID-ChestXRay, Kermany, RSNA
and others), so an "external" test set may hold the very radiographs a model trained on, re-encoded or
resized. Each test image is compared with every training and validation image of the model
(:func:`unveil.evaluation.evaluate.training_records`) by :func:`unveil.data.near_duplicates.near_duplicates`:
256-bit perceptual hash within ``NEAR_DUPLICATE_DISTANCE`` bits, or the same file SHA-256 (exact copy).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from unveil.audit.verdict import COUNT, NOT_CHECKED, Verdict
from unveil.data.fingerprints import NEAR_DUPLICATE_DISTANCE
from unveil.data.near_duplicates import near_duplicates
from unveil.evaluation.evaluate import training_records
from unveil.training.bundle import ModelBundle

#: what a contamination verdict counts (a count: printed "1 of 180 images", no interval)
MEASURE = f"{COUNT}test images that duplicate a training image"


def contamination_verdict(test_set: str, images: int, pairs: pd.DataFrame, *, rule: int, checked: bool) -> Verdict:
    """The verdict of one test set: how many of its ``images`` are (near-)copies of training images, a count out
    of ``images`` (``Verdict.total``) with no interval: it is counted, not estimated."""
    if not checked:
        return Verdict("contamination", f"{test_set} vs training images", float("nan"), float("nan"), float("nan"),
                       NOT_CHECKED, None, "the model's split file is not beside its bundle: its training images are "
                       "unknown", measure=MEASURE, total=images)
    copies = int(pairs["record_id"].nunique()) if len(pairs) else 0
    exact = int(pairs.loc[pairs["exact"], "record_id"].nunique()) if len(pairs) else 0
    flagged = bool(copies >= rule)
    return Verdict(
        "contamination", f"{test_set} vs training images", float(copies), float("nan"), float("nan"),
        f"count >= {rule} flags", flagged,
        (f"{copies} of {images} images ({exact} byte-identical) are near-duplicates of the model's training images "
         f"(pHash within {NEAR_DUPLICATE_DISTANCE} bits): their scores are not independent evidence; `unveil "
         "evaluate` refuses them unless --duplicates flag or exclude") if flagged else
        f"{'none' if copies == 0 else copies} of {images} images duplicates a training image", measure=MEASURE,
        total=images)


def contamination_section(bundle: ModelBundle, records: pd.DataFrame, members: dict[str, set[str]], thresholds,
                          figures: dict, verdicts: list, *, cache: str | Path | None, workers: int = 1) -> np.ndarray:
    """One contamination verdict per audited test set (``members``: its record ids; appended to ``verdicts``);
    figures go to ``figures["contamination"]``. Returns, per image, whether it duplicates a training image."""
    training = training_records(bundle)
    checked = not training.empty
    pairs = near_duplicates(records, training, cache=cache, workers=workers) if checked else \
        pd.DataFrame(columns=["record_id", "training_record_id", "distance", "exact"])
    duplicated = records["record_id"].isin(set(pairs["record_id"])).to_numpy()
    figures["contamination"] = {"training_images": int(len(training)), "pairs": pairs.head(50).to_dict("records")}
    for name, ids in members.items():
        present = records.loc[records["record_id"].isin(ids), "record_id"]
        verdicts.append(contamination_verdict(name, len(present), pairs[pairs["record_id"].isin(set(present))],
                                              rule=thresholds.contamination, checked=checked))
        figures["contamination"][name] = int(present.isin(set(pairs["record_id"])).sum())
    return duplicated
