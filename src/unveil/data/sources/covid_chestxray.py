"""COVID-ChestXRay (Cohen et al., "COVID-19 image data collection"; dataset D of the paper).

Layout (the GitHub repository ieee8023/covid-chestxray-dataset)::

    <root>/metadata.csv       one row per image; columns patientid, offset, sex, age, finding,
                              view, modality, date, location, folder, filename, license, ...
    <root>/images/<filename>  X-ray images (JPEG/PNG, mixed sizes); CT volumes live in volumes/

Only ``modality == "X-ray"`` rows are records (CT rows are counted in ``excluded``).
``patientid`` is the grouping key for patient-exclusive splits. ``finding`` strings vary between
snapshots ("COVID-19", "COVID-19, ARDS", "Pneumonia/Viral/COVID-19"): :func:`map_finding` reads
any of them, word by word against an explicit vocabulary (:data:`FINDING_VOCABULARY`): a finding with a
word outside it ("banana") or a negation ("not COVID-19") is reported as an "invalid" issue and makes
no record, never a guessed label. Lung masks (e.g. the V7 Labs annotations: one PNG/JPEG per image, same file name,
0 = background, 255 = lung) are attached when a masks folder is given or found next to the data
(``<root>/masks`` or a sibling ``<root name>-v7-lung-masks``).
"""

from __future__ import annotations

import re
from pathlib import Path

from unveil.data.records import build_records, canonical_sex, canonical_view, make_record_id, parse_age, record_row
from unveil.data.sources.base import (
    DataIssue,
    DatasetLayoutError,
    SourceLoad,
    blank_to_none,
    listed_path,
    patient_or_none,
    read_csv_table,
    require_path,
    truthy,
    unknown_patient,
    unknown_patients_note,
)
from unveil.errors import UnveilError

SOURCE = "covid-chestxray"

_BACTERIAL = ("bacteria", "streptococcus", "klebsiella", "mycoplasma", "legionella", "staphylococcus",
              "e.coli", "e. coli", "chlamydophila", "nocardia", "haemophilus", "pseudomonas")
_VIRAL = ("viral", "sars", "mers", "varicella", "influenza", "herpes", "adenovirus", "rsv")
_UNKNOWN = ("", "todo", "unknown")
_COVID = ("covid-19", "covid19", "covid", "sars-cov-2", "2019-ncov")
_OTHER = ("pneumonia", "bacterial", "bacteria", "fungal", "lipoid", "aspiration", "ards", "tuberculosis",
          "pneumocystis", "aspergillosis", "mrsa", "h1n1", "mers-cov", "coronavirus", "cryptogenic", "organizing",
          "eosinophilic", "interstitial", "pneumonitis", "chronic", "acute", "histoplasmosis", "cryptococcus",
          "mycobacterium", "actinomyces", "unknown", "todo", "normal", "influenzae", "pneumoniae", "aureus",
          "jirovecii", "pneumophila", "coli")

#: Every word a COVID-ChestXRay / Figure 1 ``finding`` may use (lower case; "No Finding" is a phrase).
#: Words are separated by "/", ",", ";" or spaces; any other word (or a negation: "not", "no", "non",
#: "negative", "without") makes the row invalid.
FINDING_VOCABULARY: frozenset[str] = frozenset(_COVID + _OTHER + _BACTERIAL + _VIRAL + ("e.coli", "e."))


class FindingError(UnveilError, ValueError):
    """A finding string outside :data:`FINDING_VOCABULARY` (the message quotes it and the unknown word)."""


def map_finding(raw: str | None) -> tuple[int | None, str]:
    """(covid, canonical finding) for a Cohen-family finding string; see the module docstring. Raises
    :class:`FindingError` for a word outside :data:`FINDING_VOCABULARY`, so a typo or "not COVID-19" is
    reported instead of becoming a label."""
    text = " ".join((raw or "").strip().lower().split())
    words = [w for w in re.split(r"[/,;\s]+", text.replace("no finding", "")) if w]
    unknown = [w for w in words if w not in FINDING_VOCABULARY]
    if unknown:
        raise FindingError(f"finding {raw!r} has the word {unknown[0]!r}, outside the finding vocabulary "
                           "(covid-19, no finding, normal, pneumonia, viral, bacterial, named pathogens, ...)")
    if text in _UNKNOWN:
        return None, "unknown"
    if any(word in _COVID for word in words):
        return 1, "covid"
    if text in {"no finding", "normal"}:
        return 0, "normal"
    if any(word in text for word in _BACTERIAL):
        return 0, "bacterial"
    if any(word in text for word in _VIRAL):
        return 0, "viral"
    parts = [p.strip() for p in re.split(r"[/,]", text) if p.strip()]
    if parts == ["pneumonia"]:
        return 0, "pneumonia"
    return 0, "other"


def find_masks_dir(root: Path) -> Path | None:
    """The masks folder conventionally placed with the data, if any."""
    for candidate in (root / "masks", root.parent / f"{root.name}-v7-lung-masks"):
        if candidate.is_dir():
            return candidate
    return None


def mask_index(masks_dir: Path | None) -> dict[str, Path]:
    """Mask files by exact name and by stem, so ``x.jpg`` finds ``x.png`` too."""
    if masks_dir is None:
        return {}
    index: dict[str, Path] = {}
    for path in sorted(masks_dir.iterdir()):
        if path.is_file():
            index.setdefault(path.name, path.resolve())
            index.setdefault(path.stem, path.resolve())
    return index


def load(root: Path, *, masks_dir: Path | str | None = None, source_name: str = SOURCE,
         allow_outside: bool | str = False) -> SourceLoad:
    """Read ``metadata.csv`` and ``images/`` into records; rows with missing files become issues."""
    root = Path(root)
    outside = truthy(allow_outside)  # a bad value is the user's error, not a row's issue
    metadata = require_path(root / "metadata.csv", "COVID-ChestXRay metadata.csv")
    table = read_csv_table(metadata)
    for column in ("patientid", "finding", "filename"):
        if column not in table.columns:
            raise DatasetLayoutError(f"{metadata}: column {column!r} missing (has {', '.join(table.columns)})")
    masks = mask_index(Path(masks_dir) if masks_dir is not None else find_masks_dir(root))
    loaded = SourceLoad(source=source_name, root=root, records=build_records([]))
    rows: list[dict] = []
    seen: set[str] = set()
    for number, row in enumerate(table.to_dict("records"), start=2):  # line 1 is the header
        modality = blank_to_none(row.get("modality")) or "X-ray"
        if modality.lower().replace("-", "") != "xray":
            loaded.exclude(f"modality {modality} (not an X-ray)")
            continue
        filename = blank_to_none(row["filename"])
        folder = blank_to_none(row.get("folder")) or "images"
        if filename is None:
            loaded.issues.append(DataIssue(str(metadata), f"row {number} has no filename", "invalid"))
            continue
        try:
            image = listed_path(root, folder, filename, allow_outside=outside)
        except DatasetLayoutError as error:
            loaded.issues.append(DataIssue(str(metadata), f"row {number}: {error}", "invalid"))
            continue
        if not image.is_file():
            loaded.issues.append(DataIssue(
                str(image), f"listed in {metadata.name} row {number} but the file does not exist", "missing"))
            continue
        record_id = make_record_id(source_name, root, image)
        if record_id in seen:
            loaded.issues.append(DataIssue(
                str(image), f"listed again in {metadata.name} row {number}; first row kept", "invalid"))
            continue
        seen.add(record_id)
        patient = patient_or_none(row["patientid"])
        try:
            covid, finding = map_finding(blank_to_none(row["finding"]))
        except FindingError as error:
            loaded.issues.append(DataIssue(str(image), f"{metadata.name} row {number}: {error}", "invalid"))
            continue
        mask = masks.get(filename) or masks.get(Path(filename).stem)
        rows.append(_patient_known(patient, record_row(
            source_name, root, image, patient_id=patient or "", covid=covid, finding=finding,
            source_finding=blank_to_none(row["finding"]), view=canonical_view(row.get("view")),
            source_view=blank_to_none(row.get("view")), sex=canonical_sex(row.get("sex")),
            age=parse_age(row.get("age")), mask_path=mask, location=blank_to_none(row.get("location")),
            license=blank_to_none(row.get("license")))))
    records = build_records(rows, extra_columns=["location", "license", "patient_known"])
    loaded.records = records.drop(columns="patient_known") if records["patient_known"].all() else records
    loaded.notes.extend(unknown_patients_note(loaded.records, "patientid"))
    return loaded


def _patient_known(patient: str | None, record: dict) -> dict:
    """``record`` with ``patient_known``; a row without a patient id (empty, NA, nan...) is its own patient."""
    return {**record, "patient_known": True} if patient is not None else unknown_patient(record)
