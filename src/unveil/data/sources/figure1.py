"""Figure 1 COVID-19 chest X-ray initiative, and Actualmed (the same metadata family).

Layout (github.com/agchung/Figure1-COVID-chestxray-dataset, .../Actualmed-COVID-chestxray-dataset)::

    <root>/metadata.csv     latin-1 (Figure 1) or UTF-8 text; columns patientid, offset, sex, age,
                            finding, view, modality, ...; Actualmed adds ``imagename``
    <root>/images/          the images

The image of a row is ``imagename`` when that column exists, else the file in ``images/`` whose
stem equals ``patientid`` (any extension). ``patientid`` names an image there ("COVID-00003a",
"COVID-00003b"): the patient is the id without its trailing letter. Findings map as in
:func:`unveil.data.sources.covid_chestxray.map_finding`; a blank finding is ``unknown``.
"""

from __future__ import annotations

import re
from pathlib import Path

from unveil.data.records import build_records, canonical_sex, canonical_view, make_record_id, parse_age, record_row
from unveil.data.sources.base import (
    IMAGE_SUFFIXES,
    DataIssue,
    DatasetLayoutError,
    SourceLoad,
    blank_to_none,
    listed_path,
    read_csv_table,
    require_path,
    truthy,
)
from unveil.data.sources.covid_chestxray import FindingError, map_finding

SOURCE = "figure1"
_IMAGE_LETTER = re.compile(r"^(.*\d)[a-z]$")


def patient_of(image_id: str) -> str:
    """"COVID-00003b" -> "COVID-00003": the trailing letter numbers images of one patient."""
    match = _IMAGE_LETTER.match(image_id)
    return match.group(1) if match else image_id


def read_metadata(path: Path):
    """The metadata table, UTF-8 if it decodes, else latin-1 (Figure 1 ships latin-1)."""
    try:
        return read_csv_table(path, encoding="utf-8")
    except DatasetLayoutError:
        return read_csv_table(path, encoding="latin-1")


def load(root: Path, *, source_name: str = SOURCE, allow_outside: bool | str = False) -> SourceLoad:
    """Read ``metadata.csv`` and ``images/`` into records; unmatched rows become issues."""
    root = Path(root)
    outside = truthy(allow_outside)  # a bad value is the user's error, not a row's issue
    metadata = require_path(root / "metadata.csv", "metadata.csv")
    images_dir = require_path(root / "images", "images folder", directory=True)
    table = read_metadata(metadata)
    if "patientid" not in table.columns:
        raise DatasetLayoutError(f"{metadata}: column 'patientid' missing (has {', '.join(table.columns)})")
    by_stem = {p.stem: p for p in sorted(images_dir.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}
    loaded = SourceLoad(source=source_name, root=root, records=build_records([]))
    rows: list[dict] = []
    seen: set[str] = set()
    for number, row in enumerate(table.to_dict("records"), start=2):
        modality = blank_to_none(row.get("modality")) or "X-ray"
        if modality.lower().replace("-", "") != "xray":
            loaded.exclude(f"modality {modality} (not an X-ray)")
            continue
        image_id = blank_to_none(row["patientid"])
        name = blank_to_none(row.get("imagename"))
        if image_id is None:
            loaded.issues.append(DataIssue(str(metadata), f"row {number} has no patientid", "invalid"))
            continue
        try:
            image = listed_path(root, "images", name, allow_outside=outside) if name else \
                by_stem.get(image_id)
        except DatasetLayoutError as error:
            loaded.issues.append(DataIssue(str(metadata), f"row {number}: {error}", "invalid"))
            continue
        if image is None or not image.is_file():
            shown = str(image) if image is not None else str(images_dir / f"{image_id}.*")
            loaded.issues.append(DataIssue(
                shown, f"listed in {metadata.name} row {number} but the file does not exist", "missing"))
            continue
        record_id = make_record_id(source_name, root, image)
        if record_id in seen:
            loaded.issues.append(DataIssue(str(image), f"listed again in row {number}; first row kept", "invalid"))
            continue
        seen.add(record_id)
        try:
            covid, finding = map_finding(blank_to_none(row.get("finding")))
        except FindingError as error:
            loaded.issues.append(DataIssue(str(image), f"{metadata.name} row {number}: {error}", "invalid"))
            continue
        rows.append(record_row(
            source_name, root, image, patient_id=patient_of(image_id), covid=covid, finding=finding,
            source_finding=blank_to_none(row.get("finding")), view=canonical_view(row.get("view")),
            source_view=blank_to_none(row.get("view")), sex=canonical_sex(row.get("sex")),
            age=parse_age(row.get("age"))))
    loaded.records = build_records(rows)
    return loaded
