"""Montgomery County X-ray set (U.S. National Library of Medicine): tuberculosis screening, PA views.

On-disk layout (as distributed by the NLM)::

    <root>/CXR_png/MCUCXR_XXXX_Y.png                 Y: 0 normal, 1 tuberculosis
    <root>/ManualMask/leftMask/MCUCXR_XXXX_Y.png     manual lung masks, one per side (optional folder)
    <root>/ManualMask/rightMask/MCUCXR_XXXX_Y.png
    <root>/ClinicalReadings/MCUCXR_XXXX_Y.txt        "Patient's Sex: M", "Patient's Age: 045Y",
                                                     then a free-text reading (optional folder)

Label mapping (from the file name): ``Y=0`` -> ``finding`` "normal" (``source_finding`` "normal");
``Y=1`` -> ``finding`` "other" (``source_finding`` "tuberculosis"). ``covid`` is 0 for every image
(pre-COVID data). ``patient_id`` is ``MCUCXR_XXXX``; ``view`` is "PA" (the set holds only PA
views; ``source_view`` is missing since no per-image string exists). ``sex`` and ``age`` come from the
clinical-readings text files (the dataset's published text, not DICOM headers); the remaining
free text rides along in the extra column ``reading``.

Lung masks: the set has one mask per lung. The loader materialises the combined mask
(left OR right, written 0/255) with :func:`combine_masks` into ``mask_cache`` -- by default
``<root>/ManualMask/combined`` when that folder can be written, else
``~/.cache/unveil/montgomery-masks/<hash of the root>`` (``$XDG_CACHE_HOME`` is honoured) -- once:
files are written atomically and reused while newer than both inputs. ``mask_path`` points there.

Reported issues: an image with only one of its two side masks, or with masks of different sizes
("invalid"; the record is kept with no mask); an image with neither mask while ``ManualMask`` exists,
or with no clinical-readings file while ``ClinicalReadings`` exists ("missing"; record kept); a PNG
whose name does not follow ``MCUCXR_XXXX_Y.png`` ("invalid"; no record, its label is unknown).
Non-image files in ``CXR_png`` (``Thumbs.db``...) are counted in ``excluded``.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from unveil.data.records import build_records, canonical_sex, parse_age, record_row
from unveil.data.sources.base import DataIssue, DatasetLayoutError, SourceLoad, named_pngs, require_path

SOURCE = "montgomery"

_NAME = re.compile(r"^(MCUCXR_\d{4})_([01])$", re.IGNORECASE)
_FIELD = re.compile(r"^\s*Patient['\u2019]?s\s+(Sex|Age)\s*:\s*(.*?)\s*$", re.IGNORECASE)

LABELS = {"0": ("normal", "normal"), "1": ("other", "tuberculosis")}


def combine_masks(left: Path, right: Path, out: Path, *, force: bool = False) -> Path:
    """Write the union of two lung masks (``>0`` = lung) to ``out`` as a 0/255 PNG; return ``out``.

    Skips the work when ``out`` exists and is not older than both inputs (unless ``force``). The file
    is written to a temporary name and renamed, so readers never see a half-written mask. Raises
    :class:`ValueError` when the two masks differ in size, :class:`OSError` when one is unreadable.
    """
    left, right, out = Path(left), Path(right), Path(out)
    if not force and out.is_file():
        newest_input = max(left.stat().st_mtime_ns, right.stat().st_mtime_ns)
        if out.stat().st_mtime_ns >= newest_input:
            return out
    with Image.open(left) as image:
        left_array = np.asarray(image.convert("L"))
    with Image.open(right) as image:
        right_array = np.asarray(image.convert("L"))
    if left_array.shape != right_array.shape:
        raise DatasetLayoutError(f"{left} is {left_array.shape[1]}x{left_array.shape[0]} but {right} is "
                         f"{right_array.shape[1]}x{right_array.shape[0]}")
    combined = ((left_array > 0) | (right_array > 0)).astype(np.uint8) * 255
    out.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    os.close(handle)
    try:
        Image.fromarray(combined).save(temporary, format="PNG")
        Path(temporary).replace(out)
    finally:
        Path(temporary).unlink(missing_ok=True)
    return out


def default_mask_cache(root: Path) -> Path:
    """``<root>/ManualMask/combined`` when writable, else a per-root folder in the user cache."""
    root = Path(root).absolute()
    candidate = root / "ManualMask" / "combined"
    try:
        candidate.mkdir(exist_ok=True)
        if os.access(candidate, os.W_OK | os.X_OK):
            return candidate
    except OSError:
        pass
    cache_home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    key = hashlib.sha256(str(root.resolve()).encode("utf-8")).hexdigest()[:16]
    return cache_home / "unveil" / "montgomery-masks" / key


def read_clinical_reading(path: Path) -> tuple[str | None, float | None, str | None]:
    """Sex ("M"/"F"), age (years) and the free-text reading of one ``ClinicalReadings`` file."""
    sex = age = None
    reading: list[str] = []
    for line in Path(path).read_text(encoding="utf-8", errors="replace").splitlines():
        match = _FIELD.match(line)
        if match and match.group(1).lower() == "sex":
            sex = canonical_sex(match.group(2))
        elif match:
            age = parse_age(match.group(2))
        elif line.strip():
            reading.append(line.strip())
    return sex, age, (" ".join(reading) or None)



def load(root: Path, *, mask_cache: Path | None = None) -> SourceLoad:
    """Load the Montgomery set from its NLM layout under ``root`` (see the module docstring)."""
    root = Path(root).expanduser().absolute()
    images_dir = require_path(root / "CXR_png", "the Montgomery image folder CXR_png", directory=True)
    mask_dir = root / "ManualMask"
    readings_dir = root / "ClinicalReadings"
    loaded = SourceLoad(source=SOURCE, root=root, records=build_records([]))
    cache: Path | None = Path(mask_cache).expanduser() if mask_cache is not None else None

    rows: list[dict] = []
    for image, match in named_pngs(images_dir, _NAME, loaded, "MCUCXR_XXXX_Y.png"):
        patient, label = match.groups()
        finding, source_finding = LABELS[label]

        sex = age = reading = None
        if readings_dir.is_dir():
            text_path = readings_dir / f"{image.stem}.txt"
            if not text_path.is_file():
                loaded.issues.append(DataIssue(str(text_path), f"no clinical reading for {image.name}; sex and "
                                               "age left missing", "missing"))
            else:
                try:
                    sex, age, reading = read_clinical_reading(text_path)
                except OSError as error:
                    loaded.issues.append(DataIssue(str(text_path), f"unreadable clinical reading ({error})",
                                                   "unreadable"))

        mask_path = None
        if mask_dir.is_dir():
            left, right = mask_dir / "leftMask" / image.name, mask_dir / "rightMask" / image.name
            if left.is_file() and right.is_file():
                if cache is None:
                    cache = default_mask_cache(root)
                try:
                    mask_path = str(combine_masks(left, right, cache / image.name).resolve())
                except ValueError as error:
                    loaded.issues.append(DataIssue(str(image), f"lung masks differ in size: {error}", "invalid"))
                except OSError as error:
                    loaded.issues.append(DataIssue(str(image), f"lung masks could not be combined ({error})",
                                                   "unreadable"))
            elif left.is_file() or right.is_file():
                present, absent = (left, right) if left.is_file() else (right, left)
                loaded.issues.append(DataIssue(str(absent), f"only one lung mask for {image.name}: {present} "
                                               "exists but this side does not; no mask used", "invalid"))
            else:
                loaded.issues.append(DataIssue(str(image), "no lung mask in ManualMask/leftMask or "
                                               "ManualMask/rightMask", "missing"))

        rows.append(record_row(SOURCE, root, image, patient_id=patient, covid=0, finding=finding,
                               source_finding=source_finding, view="PA", sex=sex, age=age,
                               mask_path=mask_path, reading=reading))

    loaded.records = build_records(rows, extra_columns=["reading"])
    return loaded
