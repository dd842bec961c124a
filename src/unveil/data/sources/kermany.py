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

Person ids are scoped per folder: a ``personN`` (or exam id) of ``test/`` is not the ``personN`` of
``train/``, and gets its folder in its patient id (``person1 (test)``; ``val/`` shares ``train/``'s ids).
Why: neither Kermany et al. (Cell 172(5):1122-1131, 2018, "Identifying Medical Diagnoses and Treatable
Diseases by Image-Based Deep Learning") nor the Mendeley data page ("Labeled Optical Coherence Tomography
(OCT) and Chest X-Ray Images for Classification", doi:10.17632/rscbjbr9sj.2) says what the numbers
mean, but (1) the paper describes the test set as its own patients: the system was trained on 5,232
images and "then tested with 234 normal images and 390 pneumonia images (242 bacterial and 148 viral)
from 624 patients", a patient-level holdout; (2) the published folders reuse numbers for children with
another diagnosis (``train/PNEUMONIA/person1_bacteria_1.jpeg`` vs ``test/PNEUMONIA/person1_virus_6.jpeg``,
``train/PNEUMONIA/person100_virus_184.jpeg`` vs ``test/PNEUMONIA/person100_bacteria_475.jpeg``), which one
numbering of children would not do; (3) Kaggle's ``val/`` (16 images) was carved out of Mendeley's
``train/`` (5,216 + 16 = the paper's 5,232), so it keeps ``train/``'s numbering. Reading one id as one
child in every folder made the official test folder "share patients" with a model trained on
``train/``. The other reading is the option ``shared_patient_ids=true`` (``-o shared_patient_ids=true``).
The scoped id sorts right after the plain one, so seeded splits of a layout whose numbers never recur
across folders (the synthetic benchmark) are unchanged.
"""

from __future__ import annotations

import re
from pathlib import Path

from unveil.data.records import build_records, record_row
from unveil.data.sources.base import IMAGE_SUFFIXES, DatasetLayoutError, SourceLoad, truthy

SOURCE = "chestxray"
SUBSETS = ("train", "test", "val")
_PERSON = re.compile(r"^(person\d+)_(bacteria|virus)_\d+", re.IGNORECASE)
_EXAM_COUNTER = re.compile(r"^(.*?)-\d+$")
#: folders whose person numbers and exam ids name their own patients (Mendeley's test set; val/ is from train/)
OWN_IDS = ("test",)


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


def scoped_patient(patient: str, subset: str, *, shared: bool = False) -> str:
    """The patient id of an image of folder ``subset``: ids of ``test/`` get their folder (``person1 (test)``),
    being other children than the same ids of ``train/``; ``shared``: one id is one child in every folder."""
    return patient if shared or subset not in OWN_IDS else f"{patient} ({subset})"


def load(root: Path, *, source_name: str = SOURCE, shared_patient_ids: bool | str = False) -> SourceLoad:
    """Walk ``{train,test,val}/{NORMAL,PNEUMONIA}`` into records; ``shared_patient_ids`` (yes/no): read a
    ``personN`` of ``test/`` as the ``personN`` of ``train/`` (default no: ids are scoped per folder)."""
    root = Path(root)
    shared = truthy(shared_patient_ids, "shared_patient_ids")  # a bad value is the user's error
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
                rows.append(record_row(source_name, root, image, covid=0, finding=finding,
                                       patient_id=scoped_patient(patient, subset, shared=shared),
                                       source_finding=source_finding, original_split=subset))
    loaded.records = build_records(rows, extra_columns=["original_split"])
    return loaded
