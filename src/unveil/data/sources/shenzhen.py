"""Shenzhen Hospital X-ray set (U.S. National Library of Medicine): tuberculosis screening, PA views.

On-disk layout (the NLM distribution, plus the lung masks in the naming of Stirenko et al.)::

    <root>/CXR_png/CHNCXR_XXXX_Y.png             Y: 0 normal, 1 tuberculosis
    <root>/mask/CHNCXR_XXXX_Y_mask.png           lung mask (optional folder; not every image has one)
    <root>/ClinicalReadings/CHNCXR_XXXX_Y.txt    first line "male 35yrs" / "female 44yrs", then the
                                                 reading, e.g. "normal" (optional folder)

Label mapping (from the file name): ``Y=0`` -> ``finding`` "normal" (``source_finding`` "normal");
``Y=1`` -> ``finding`` "other" (``source_finding`` "tuberculosis"). ``covid`` is 0 for every image
(pre-COVID data). ``patient_id`` is ``CHNCXR_XXXX``; ``view`` is "PA" (``source_view`` missing).
``sex`` and ``age`` come from the first line of the clinical-readings text file when present; the
rest of the text rides along in the extra column ``reading``.

Masks: ``mask_path`` points to ``mask/<image stem>_mask.png`` when it exists, else it is missing --
that is not an issue (only 566 of the 662 images have a mask in the full set). The masks are
**anti-aliased** (grey levels along the lung border): consumers must threshold them at 127
(``mask > 127`` = lung) rather than treat every non-zero pixel as lung.

Reported issues: a PNG in ``CXR_png`` whose name does not follow ``CHNCXR_XXXX_Y.png`` ("invalid";
no record); an unreadable clinical-readings file ("unreadable"; record kept). Non-image files in
``CXR_png`` and masks without an image are counted in ``excluded``.
"""

from __future__ import annotations

import re
from pathlib import Path

from unveil.data.records import build_records, canonical_sex, record_row
from unveil.data.sources.base import DataIssue, SourceLoad, named_pngs, require_path

SOURCE = "shenzhen"

#: Threshold consumers apply to the anti-aliased masks (``mask > MASK_THRESHOLD`` = lung).
MASK_THRESHOLD = 127

_NAME = re.compile(r"^(CHNCXR_\d{4})_([01])$", re.IGNORECASE)
_SEX_AGE = re.compile(
    r"^\s*(female|male|f|m)(?![a-z])[\s,:]*(\d+(?:\.\d+)?)?\s*(yrs?|years?|y|months?|mons?|days?|d)?",
    re.IGNORECASE,
)

LABELS = {"0": ("normal", "normal"), "1": ("other", "tuberculosis")}


def parse_sex_age(line: str) -> tuple[str | None, float | None]:
    """Sex and age (years) from a reading's first line such as "male 35yrs" or "female 8months"."""
    match = _SEX_AGE.match(line or "")
    if match is None:
        return None, None
    sex = canonical_sex(match.group(1))
    age = None
    if match.group(2) is not None:
        value = float(match.group(2))
        unit = (match.group(3) or "y").lower()
        if unit.startswith("mon"):
            value /= 12
        elif unit.startswith("d"):
            value /= 365.25
        age = value if 0 <= value < 130 else None
    return sex, age


def read_clinical_reading(path: Path) -> tuple[str | None, float | None, str | None]:
    """Sex ("M"/"F"), age (years) and the remaining free text of one ``ClinicalReadings`` file."""
    lines = [line.strip() for line in Path(path).read_text(encoding="utf-8", errors="replace").splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        return None, None, None
    sex, age = parse_sex_age(lines[0])
    rest = lines
    match = _SEX_AGE.match(lines[0])
    if match is not None and (sex is not None or age is not None):  # keep what follows "male 35yrs" on the line
        tail = lines[0][match.end():].strip(" ,;:")
        rest = ([tail] if tail else []) + lines[1:]
    return sex, age, (" ".join(rest) or None)



def load(root: Path, *, source_name: str = SOURCE) -> SourceLoad:
    """Load the Shenzhen set from its layout under ``root`` (see the module docstring)."""
    root = Path(root).expanduser().absolute()
    images_dir = require_path(root / "CXR_png", "the Shenzhen image folder CXR_png", directory=True)
    mask_dir = root / "mask"
    readings_dir = root / "ClinicalReadings"
    loaded = SourceLoad(source=source_name, root=root, records=build_records([]))

    rows: list[dict] = []
    stems: set[str] = set()
    for image, match in named_pngs(images_dir, _NAME, loaded, "CHNCXR_XXXX_Y.png"):
        stems.add(image.stem)
        patient, label = match.groups()
        finding, source_finding = LABELS[label]

        sex = age = reading = None
        text_path = readings_dir / f"{image.stem}.txt"
        if text_path.is_file():
            try:
                sex, age, reading = read_clinical_reading(text_path)
            except OSError as error:
                loaded.issues.append(DataIssue(str(text_path), f"unreadable clinical reading ({error})",
                                               "unreadable"))

        mask = mask_dir / f"{image.stem}_mask.png"
        rows.append(record_row(source_name, root, image, patient_id=patient, covid=0, finding=finding,
                               source_finding=source_finding, view="PA", sex=sex, age=age,
                               mask_path=mask.resolve() if mask.is_file() else None, reading=reading))

    if mask_dir.is_dir():
        orphans = sum(1 for m in mask_dir.glob("*_mask.png") if m.name[: -len("_mask.png")] not in stems)
        if orphans:
            loaded.exclude("mask without an image in CXR_png", orphans)

    loaded.records = build_records(rows, extra_columns=["reading"])
    return loaded
