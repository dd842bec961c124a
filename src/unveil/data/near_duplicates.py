"""Near-duplicates between two sets of images: which test images are (near-)copies of training images.

Each test image is compared with every training image by the 256-bit perceptual hash of
:mod:`unveil.data.fingerprints` (near-duplicate: at most ``NEAR_DUPLICATE_DISTANCE`` bits apart) and by file
SHA-256 (exact copy). Used by ``unveil evaluate`` (``--duplicates``) and the audit's contamination test.

Fingerprints are cached per file (path, size, modification time) in ``<cache>/fingerprints.csv``, so a
training set is decoded once however many test sets are checked.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import pandas as pd

from unveil.data.fingerprints import NEAR_DUPLICATE_DISTANCE, fingerprint_images, hashes_to_words
from unveil.provenance import write_text_atomic

CACHE_NAME = "fingerprints.csv"
_KEY = ["path", "size", "mtime_ns"]


def _stat(path: str) -> tuple[int, int]:
    try:
        info = Path(path).stat()
    except OSError:
        return -1, -1
    return int(info.st_size), int(info.st_mtime_ns)


def cached_fingerprints(records: pd.DataFrame, cache: str | Path | None, *, workers: int = 1) -> pd.DataFrame:
    """``fingerprint_images`` of ``records`` (record_id, sha256, phash, ...), reusing and extending the
    per-file cache in ``cache`` (None: no cache)."""
    keys = pd.DataFrame({"record_id": records["record_id"].astype(str).to_numpy(),
                         "path": records["path"].astype(str).to_numpy()})
    stats = [_stat(p) for p in keys["path"]]
    keys["size"] = [s for s, _ in stats]
    keys["mtime_ns"] = [m for _, m in stats]
    stored = pd.DataFrame(columns=[*_KEY, "sha256", "phash"])
    file = Path(cache) / CACHE_NAME if cache is not None else None
    if file is not None and file.is_file():
        with contextlib.suppress(OSError, ValueError):  # an unreadable cache is rebuilt
            stored = pd.read_csv(file, dtype={"path": str, "sha256": str, "phash": str})
    merged = keys.merge(stored[[*_KEY, "sha256", "phash"]].drop_duplicates(_KEY), on=_KEY, how="left")
    todo = merged["phash"].isna() & (merged["size"] >= 0)
    if todo.any():
        fresh = fingerprint_images(merged.loc[todo, ["record_id", "path"]], workers=workers)
        merged.loc[todo, "sha256"] = fresh["sha256"].to_numpy()
        merged.loc[todo, "phash"] = fresh["phash"].to_numpy()
        if file is not None:
            new = merged.loc[todo & merged["phash"].notna(), [*_KEY, "sha256", "phash"]]
            table = pd.concat([stored[[*_KEY, "sha256", "phash"]], new]).drop_duplicates(_KEY, keep="last")
            file.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(file, table.to_csv(index=False, lineterminator="\n"))
    return merged[["record_id", "path", "sha256", "phash"]]


def cross_pairs(first: list[str], second: list[str], max_distance: int = NEAR_DUPLICATE_DISTANCE,
                block: int = 1024) -> list[tuple[int, int, int]]:
    """(i, j, distance) for every hash ``first[i]`` within ``max_distance`` bits of ``second[j]``."""
    if not first or not second:
        return []
    a, b = hashes_to_words(first), hashes_to_words(second)
    pairs: list[tuple[int, int, int]] = []
    for start in range(0, len(a), block):
        distances = np.bitwise_count(a[start:start + block, None, :] ^ b[None, :, :]).sum(axis=-1, dtype=np.int64)
        rows, cols = np.nonzero(distances <= max_distance)
        pairs.extend((int(i + start), int(j), int(distances[i, j])) for i, j in zip(rows, cols, strict=True))
    return pairs


def near_duplicates(test: pd.DataFrame, training: pd.DataFrame, *, cache: str | Path | None = None,
                    max_distance: int = NEAR_DUPLICATE_DISTANCE, workers: int = 1) -> pd.DataFrame:
    """Every (test image, training image) pair that is an exact copy or a near-duplicate.

    Columns: ``record_id`` (test), ``training_record_id``, ``distance`` (pHash bits), ``exact`` (same file
    bytes). A test record listed in ``training`` itself is not compared with itself."""
    columns = ["record_id", "training_record_id", "distance", "exact"]
    if test.empty or training.empty:
        return pd.DataFrame(columns=columns)
    tested = cached_fingerprints(test, cache, workers=workers).dropna(subset=["phash"]).reset_index(drop=True)
    trained = cached_fingerprints(training, cache, workers=workers).dropna(subset=["phash"]).reset_index(drop=True)
    rows = []
    for i, j, distance in cross_pairs(tested["phash"].tolist(), trained["phash"].tolist(), max_distance):
        if tested.at[i, "record_id"] == trained.at[j, "record_id"]:
            continue
        rows.append((tested.at[i, "record_id"], trained.at[j, "record_id"], distance,
                     bool(tested.at[i, "sha256"] == trained.at[j, "sha256"])))
    by_sha = trained.dropna(subset=["sha256"]).groupby("sha256")["record_id"].first()
    found = {(r, t) for r, t, _, _ in rows}
    for record_id, sha in zip(tested["record_id"], tested["sha256"], strict=True):
        if isinstance(sha, str) and sha in by_sha.index and (record_id, by_sha[sha]) not in found \
                and record_id != by_sha[sha]:
            rows.append((record_id, by_sha[sha], 0, True))
    return pd.DataFrame(rows, columns=columns).sort_values(["record_id", "distance"]).reset_index(drop=True)
