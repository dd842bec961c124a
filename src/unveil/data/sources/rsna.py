"""RSNA Pneumonia Detection Challenge (Kaggle, 2018): pre-COVID adult radiographs in DICOM.

On-disk layout (as downloaded from Kaggle; the stage 1 names are accepted when stage 2 is absent)::

    <root>/stage_2_train_labels.csv          patientId,x,y,width,height,Target
    <root>/stage_2_train_images/<patientId>.dcm
    <root>/stage_2_detailed_class_info.csv   patientId,class   (optional)

``stage_2_train_labels.csv`` has one row per bounding box: an image with two opacities has two rows
(``Target=1``, box columns filled); an image without opacity has one row (``Target=0``, empty box
columns). ``patientId`` is the challenge's pseudonymous id of the image (one image per id).

Label mapping (one record per ``patientId``):

- Target 1 (detailed class "Lung Opacity"): ``finding`` "pneumonia";
- Target 0 with detailed class "Normal", or no detailed-class file: ``finding`` "normal";
- Target 0 with detailed class "No Lung Opacity / Not Normal": ``finding`` "other".

``source_finding`` is the detailed class string when the detailed file gives one, else "Target=0"
or "Target=1". ``covid`` is 0 for every image: the challenge data predate COVID-19. ``patient_id`` is the
``patientId`` from the CSV. ``view``, ``sex`` and ``age`` are left missing: they exist only in the
DICOM headers, which this loader never opens (no DICOM patient field is read, for privacy).
The extra column ``boxes`` is the number of bounding boxes listed for the image. A Target-0 image
whose id is absent from an existing detailed-class file is treated as "normal" (as without the file).

Reported issues (no record is made for the image): a labels row whose DICOM file does not exist
("missing"); an unparseable Target, an empty ``patientId``, rows of one id disagreeing on Target, or a
detailed class that is unknown, ambiguous or contradicts the Target ("invalid"). Row numbers in
messages are spreadsheet rows: the header is row 1, the first data row is row 2.
"""

from __future__ import annotations

from pathlib import Path

from unveil.data.records import build_records, record_row
from unveil.data.sources.base import (
    DataIssue,
    DatasetLayoutError,
    SourceLoad,
    blank_to_none,
    read_csv_table,
    require_path,
)

SOURCE = "rsna"

LABEL_COLUMNS = ("patientId", "x", "y", "width", "height", "Target")
DETAIL_COLUMNS = ("patientId", "class")

#: Detailed class -> (Target it implies, canonical finding).
DETAILED_CLASSES: dict[str, tuple[int, str]] = {
    "Lung Opacity": (1, "pneumonia"),
    "No Lung Opacity / Not Normal": (0, "other"),
    "Normal": (0, "normal"),
}


def _layout(root: Path) -> tuple[Path, Path, Path | None]:
    """Labels CSV, image folder and (optional) detailed-class CSV of the newest stage present."""
    for stage in ("stage_2", "stage_1"):
        labels = root / f"{stage}_train_labels.csv"
        if labels.is_file():
            images = require_path(root / f"{stage}_train_images", "the RSNA training DICOM folder",
                                  directory=True)
            detailed = root / f"{stage}_detailed_class_info.csv"
            return labels, images, detailed if detailed.is_file() else None
    require_path(root, "the RSNA dataset root", directory=True)
    raise DatasetLayoutError(
        f"{root / 'stage_2_train_labels.csv'}: expected the RSNA labels CSV (a file) but it does not exist "
        f"(nor does the stage 1 name {root / 'stage_1_train_labels.csv'})"
    )


def _check_columns(table, path: Path, wanted: tuple[str, ...]) -> None:
    missing = [c for c in wanted if c not in table.columns]
    if missing:
        raise DatasetLayoutError(
            f"{path}: missing column(s) {', '.join(missing)}; the file has: {', '.join(map(str, table.columns))}"
        )


def _parse_target(raw: str | None) -> int | None:
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        return None
    return int(value) if value in (0.0, 1.0) else None


def load(root: Path) -> SourceLoad:
    """Load the RSNA training set from its Kaggle layout under ``root`` (see the module docstring)."""
    root = Path(root).expanduser().absolute()
    labels_path, images_dir, detailed_path = _layout(root)
    issues: list[DataIssue] = []
    images = _read_labels(labels_path, issues)
    detailed = _read_detailed_classes(detailed_path) if detailed_path is not None else {}
    rows: list[dict] = []
    for patient, entry in images.items():
        image = images_dir / f"{patient}.dcm"
        where = f"{labels_path.name} row {entry['row']}"
        if not image.is_file():
            issues.append(DataIssue(str(image), f"listed in {where} but the file does not exist", "missing"))
            continue
        problem = _label_problem(entry, labels_path)
        if problem is None and detailed_path is not None and patient in detailed:
            problem = _class_problem(detailed[patient], next(iter(entry["targets"])), detailed_path, where)
        if problem is not None:
            issues.append(DataIssue(str(image), problem, "invalid"))
            continue
        (target,) = entry["targets"]
        klass = next(iter(detailed[patient])) if patient in detailed else None
        if klass is not None:
            finding, source_finding = DETAILED_CLASSES[klass][1], klass
        else:
            finding, source_finding = ("pneumonia" if target == 1 else "normal"), f"Target={target}"
        rows.append(record_row(SOURCE, root, image, patient_id=patient, covid=0, finding=finding,
                               source_finding=source_finding, boxes=entry["boxes"]))
    return SourceLoad(source=SOURCE, root=root, records=build_records(rows, extra_columns=["boxes"]),
                      issues=issues, excluded={})


def _read_labels(labels_path: Path, issues: list[DataIssue]) -> dict[str, dict]:
    """patientId -> {"row": first row number, "targets": {target: row}, "boxes": n, "bad": [unparseable rows]}."""
    labels = read_csv_table(labels_path)
    _check_columns(labels, labels_path, LABEL_COLUMNS)
    images: dict[str, dict] = {}
    for index, row in enumerate(labels.itertuples(index=False)):
        number = index + 2
        values = dict(zip(labels.columns, row, strict=True))
        patient = blank_to_none(values["patientId"])
        if patient is None:
            issues.append(DataIssue(str(labels_path), f"row {number}: empty patientId", "invalid"))
            continue
        entry = images.setdefault(patient, {"row": number, "targets": {}, "boxes": 0, "bad": []})
        target = _parse_target(blank_to_none(values["Target"]))
        if target is None:
            entry["bad"].append(f"row {number}: unparseable Target {values['Target']!r}")
            continue
        entry["targets"].setdefault(target, number)
        if all(blank_to_none(values[c]) is not None for c in ("x", "y", "width", "height")):
            entry["boxes"] += 1
    return images


def _read_detailed_classes(detailed_path: Path) -> dict[str, dict[str, int]]:
    """patientId -> {class: first row number} from the detailed-class CSV."""
    table = read_csv_table(detailed_path)
    _check_columns(table, detailed_path, DETAIL_COLUMNS)
    detailed: dict[str, dict[str, int]] = {}
    for index, (patient, klass) in enumerate(zip(table["patientId"], table["class"], strict=True)):
        patient = blank_to_none(patient)
        if patient is not None:
            detailed.setdefault(patient, {}).setdefault(blank_to_none(klass) or "", index + 2)
    return detailed


def _label_problem(entry: dict, labels_path: Path) -> str | None:
    """Why an image's label rows give no single Target (unparseable or disagreeing rows), or None."""
    if entry["bad"]:
        return f"{labels_path.name} {'; '.join(entry['bad'])}"
    if len(entry["targets"]) > 1:
        rows_text = ", ".join(f"Target={t} in row {n}" for t, n in sorted(entry["targets"].items()))
        return f"{labels_path.name} rows disagree: {rows_text}"
    return None


def _class_problem(classes: dict[str, int], target: int, detailed_path: Path, where: str) -> str | None:
    """Why an image's detailed class is unusable (several, unknown, or contradicting its Target), or None."""
    if len(classes) > 1:
        return f"{detailed_path.name} gives several classes: " + ", ".join(repr(c) for c in classes)
    ((klass, class_row),) = classes.items()
    if klass not in DETAILED_CLASSES:
        return (f"{detailed_path.name} row {class_row}: unknown class {klass!r} "
                f"(expected one of {', '.join(DETAILED_CLASSES)})")
    if DETAILED_CLASSES[klass][0] != target:
        return f"{detailed_path.name} row {class_row}: class {klass!r} contradicts Target={target} in {where}"
    return None
