"""Image fingerprints: exact (SHA-256 of the file) and perceptual (pHash of the decoded image).

Used to find duplicate images within and across sources, and near-duplicates that leak between
splits (the same radiograph re-encoded, resized or cropped slightly by another collection).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import imagehash
import numpy as np
import pandas as pd
from PIL import Image
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from unveil.io import DEFAULT_MAX_PIXELS, ImageReadError, image_to_uint8, read_image

#: Side of the pHash DCT grid: 16 gives 256-bit hashes. The common 64-bit pHash (8) cannot tell
#: chest radiographs apart: in the 661 real samples of ../shared/data, distinct images came within
#: 2-6 bits of each other dozens of times, while 256-bit hashes of distinct images stayed >= 44 bits
#: apart and re-encoded/resized copies (even with 2 % cropped off each side) 24-56.
PHASH_SIZE = 16

#: Largest Hamming distance between 256-bit pHashes that counts as a near-duplicate: catches
#: re-encoding, resizing and slight crops, with a margin below distinct radiographs.
NEAR_DUPLICATE_DISTANCE = 24

FINGERPRINT_COLUMNS = ("record_id", "sha256", "phash", "height", "width", "bit_depth", "error", "note")


@dataclass(frozen=True)
class _Job:
    record_id: str
    path: str
    max_pixels: int | None


def _fingerprint(job: _Job) -> dict:
    row: dict[str, Any] = {"record_id": job.record_id, "sha256": None, "phash": None, "height": None, "width": None,
           "bit_depth": None, "error": None, "note": None}
    try:
        with Path(job.path).open("rb") as stream:
            row["sha256"] = hashlib.sha256(stream.read()).hexdigest()
    except OSError as error:
        row["error"] = f"{job.path}: cannot read file ({error.strerror or error})"
        return row
    try:
        image = read_image(job.path, max_pixels=job.max_pixels)
    except ImageReadError as error:
        row["error"] = str(error)
        return row
    row["phash"] = str(imagehash.phash(Image.fromarray(image_to_uint8(image.pixels)), hash_size=PHASH_SIZE))
    row.update(height=image.info.height, width=image.info.width, bit_depth=image.info.bit_depth,
               note="; ".join(image.notes) or None)
    return row


def fingerprint_images(records: pd.DataFrame, *, workers: int = 1,
                       max_pixels: int | None = DEFAULT_MAX_PIXELS) -> pd.DataFrame:
    """Decode every record's image once: hashes, size, or the read error (one row per record)."""
    jobs = [_Job(str(r), str(p), max_pixels) for r, p in zip(records["record_id"], records["path"], strict=True)]
    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            rows = list(pool.map(_fingerprint, jobs, chunksize=max(1, len(jobs) // (workers * 8))))
    else:
        rows = [_fingerprint(job) for job in jobs]
    return pd.DataFrame(rows, columns=list(FINGERPRINT_COLUMNS))


def hashes_to_words(hashes: Sequence[str]) -> np.ndarray:
    """Hex hashes (all of one length, a multiple of 16 digits) as an (n, words) uint64 array."""
    if not len(hashes):
        return np.zeros((0, 1), dtype=np.uint64)
    width = len(hashes[0])
    if width % 16 or any(len(h) != width for h in hashes):
        raise ValueError("hashes must be hex strings of one length, a multiple of 16 digits")
    return np.array([[int(h[i:i + 16], 16) for i in range(0, width, 16)] for h in hashes], dtype=np.uint64)


def phash_distance_pairs(hashes: Sequence[str], max_distance: int = NEAR_DUPLICATE_DISTANCE,
                         block: int = 2048) -> list[tuple[int, int, int]]:
    """(i, j, distance) for every pair i < j whose hex pHashes differ in at most ``max_distance`` bits.

    Blockwise XOR + popcount in NumPy: memory stays at ``block * n`` while the work is O(n^2).
    """
    values = hashes_to_words(hashes)
    pairs: list[tuple[int, int, int]] = []
    for start in range(0, len(values), block):
        chunk = values[start:start + block]
        distances = np.bitwise_count(chunk[:, None, :] ^ values[None, :, :]).sum(axis=-1, dtype=np.int64)
        rows, cols = np.nonzero(distances <= max_distance)
        for i, j in zip(rows + start, cols, strict=True):
            if i < j:
                pairs.append((int(i), int(j), int(distances[i - start, j])))
    return pairs


def group_pairs(n: int, pairs: Iterable[tuple[int, int]]) -> list[list[int]]:
    """Connected groups (size >= 2) of items linked by ``pairs``, each sorted, groups sorted."""
    pairs = list(pairs)
    if not pairs:
        return []
    rows, cols = zip(*pairs, strict=True)
    graph = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    groups: dict[int, list[int]] = {}
    for index, label in enumerate(labels):
        groups.setdefault(int(label), []).append(index)
    return sorted(sorted(g) for g in groups.values() if len(g) > 1)


def duplicate_groups(fingerprints: pd.DataFrame, *,
                     max_distance: int = NEAR_DUPLICATE_DISTANCE) -> dict[str, list[list[str]]]:
    """Groups of record ids with identical files ("exact") or near-identical images ("near").

    A near group lists images within ``max_distance`` pHash bits of another member that are not
    all byte-identical.
    """
    readable = fingerprints.dropna(subset=["sha256"]).reset_index(drop=True)
    exact = [sorted(group["record_id"].astype(str)) for _, group in readable.groupby("sha256") if len(group) > 1]
    hashed = fingerprints.dropna(subset=["phash"]).reset_index(drop=True)
    pairs = phash_distance_pairs(hashed["phash"].tolist(), max_distance)
    near = []
    for group in group_pairs(len(hashed), ((i, j) for i, j, _ in pairs)):
        members = hashed.iloc[group]
        if members["sha256"].nunique() > 1:
            near.append(sorted(members["record_id"].astype(str)))
    return {"exact": sorted(exact), "near": sorted(near)}
