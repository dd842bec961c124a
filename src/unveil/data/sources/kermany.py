"""ChestXRay: pediatric pneumonia set of Kermany et al. (dataset B of the paper).

Layout (Mendeley "Chest X-Ray Images (Pneumonia)", or the Kaggle redistribution)::

    <root>/{train,test,val}/NORMAL/*.jpeg
    <root>/{train,test,val}/PNEUMONIA/personN_bacteria_M.jpeg | personN_virus_M.jpeg

Any subset folder may be absent (at least one must exist). Pneumonia file names carry the
patient (``person1301_virus_2241.jpeg``: patient ``person1301``, viral). Normal images carry an
exam id instead (``IM-0182-0001.jpeg``, ``NORMAL2-IM-0951-0001.jpeg``): the id without its
trailing image counter (``IM-0182``) is used as patient id, the closest grouping the layout
allows. All images are COVID-negative (collected before 2019). ``original_split`` keeps the
folder the image came from.
"""

from __future__ import annotations

import re
from pathlib import Path

from unveil.data.records import build_records, record_row
from unveil.data.sources.base import IMAGE_SUFFIXES, DatasetLayoutError, SourceLoad

SOURCE = "chestxray"
SUBSETS = ("train", "test", "val")
_PERSON = re.compile(r"^(person\d+)_(bacteria|virus)_\d+", re.IGNORECASE)
_EXAM_COUNTER = re.compile(r"^(.*?)-\d+$")


def classify_file(class_folder: str, filename: str) -> tuple[str, str, str]:
    """(finding, source_finding, patient_id) of one Kermany image from its folder and name."""
    stem = Path(filename).stem
    if class_folder.upper() == "NORMAL":
        match = _EXAM_COUNTER.match(stem)
        return "normal", "NORMAL", match.group(1) if match else stem
    match = _PERSON.match(stem)
    if match is None:
        return "pneumonia", "PNEUMONIA", stem
    kind = match.group(2).lower()
    return ("bacterial" if kind == "bacteria" else "viral"), f"PNEUMONIA/{kind}", match.group(1).lower()


def load(root: Path, *, source_name: str = SOURCE) -> SourceLoad:
    """Walk ``{train,test,val}/{NORMAL,PNEUMONIA}`` into records."""
    root = Path(root)
    subsets = [s for s in SUBSETS if (root / s).is_dir()]
    if not subsets:
        raise DatasetLayoutError(
            f"{root}: expected the ChestXRay layout train|test|val/NORMAL|PNEUMONIA but found none of "
            f"{', '.join(SUBSETS)}")
    rows: list[dict] = []
    loaded = SourceLoad(source=source_name, root=root, records=build_records([]))
    for subset in subsets:
        for class_folder in ("NORMAL", "PNEUMONIA"):
            folder = root / subset / class_folder
            if not folder.is_dir():
                continue
            for image in sorted(folder.iterdir()):
                if not image.is_file() or image.suffix.lower() not in IMAGE_SUFFIXES:
                    if image.is_file() and not image.name.startswith("."):
                        loaded.exclude("not an image file (by extension)")
                    continue
                finding, source_finding, patient = classify_file(class_folder, image.name)
                rows.append(record_row(source_name, root, image, patient_id=patient, covid=0, finding=finding,
                                       source_finding=source_finding, original_split=subset))
    loaded.records = build_records(rows, extra_columns=["original_split"])
    return loaded
