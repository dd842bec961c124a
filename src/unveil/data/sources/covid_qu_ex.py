"""COVID-QU-Ex (Qatar University / Tampere University), its "Infection Segmentation Data" part.

On-disk layout (as published; folder and file names contain spaces and parentheses)::

    <root>/Infection Segmentation Data/{Train,Val,Test}/{COVID-19,Non-COVID,Normal}/images/<name>.png
    <root>/Infection Segmentation Data/{Train,Val,Test}/{COVID-19,Non-COVID,Normal}/lung masks/<name>.png
    <root>/Infection Segmentation Data/{Train,Val,Test}/{COVID-19,Non-COVID,Normal}/infection masks/<name>.png

``<root>`` may also be the ``Infection Segmentation Data`` folder itself. Any of the three part folders
may be absent (at least one must exist). Masks share the image's file name (matched case-insensitively
when the exact name is absent); they are 0/255, lung above 127.

Labels from the class folder: ``COVID-19`` -> ``covid`` 1, ``finding`` "covid"; ``Non-COVID`` (other
lung diseases, pooled by the authors from several collections) -> ``covid`` 0, ``finding`` "other";
``Normal`` -> ``covid`` 0, ``finding`` "normal". ``source_finding`` keeps the folder name. ``view`` is
unknown (<NA>). ``mask_path`` is the lung mask (visible-lung-field convention, like Shenzhen and
Montgomery: the heart and the lung behind it are outside the mask), ``infection_mask_path`` the
COVID-19 infection mask (empty for Non-COVID and Normal images). ``original_split`` is the part
folder in lower case (train / val / test): ``unveil data split --respect-original-split`` uses it.

**No patient ids.** The set publishes none, so ``patient_id`` is the image's own id
(``<part>/<class>/<stem>``) and ``patient_known`` is False on every record: a patient-exclusive split
of this source is only image-exclusive, and the same person may sit on both sides. The load carries a
note saying so (printed by ``unveil data check``). Its images were pooled from other public sets, some
of which are sources here too: check for cross-source duplicates with ``unveil data check --with``.

Reported issues: an image without its lung or infection mask ("missing"; record kept, that path
empty); a non-PNG image ("invalid"; no record). Non-image files are counted in ``excluded``.
"""

from __future__ import annotations

from pathlib import Path

from unveil.data.records import build_records, record_row
from unveil.data.sources.base import IMAGE_SUFFIXES, DataIssue, DatasetLayoutError, SourceLoad

SOURCE = "covid-qu-ex"
TOP = "Infection Segmentation Data"
PARTS = ("Train", "Val", "Test")
CLASSES: dict[str, tuple[int, str]] = {"COVID-19": (1, "covid"), "Non-COVID": (0, "other"), "Normal": (0, "normal")}
NO_PATIENTS_NOTE = ("covid-qu-ex publishes no patient ids: patient_id is the image id (patient_known = False), "
                    "so its splits are image-exclusive, not patient-exclusive")


def _mask_index(folder: Path) -> dict[str, Path]:
    """Lower-cased file name -> path of every file in ``folder`` (empty when it does not exist)."""
    return {p.name.lower(): p for p in folder.iterdir() if p.is_file()} if folder.is_dir() else {}


def _find(folder: Path, index: dict[str, Path], name: str) -> Path | None:
    exact = folder / name
    return exact if exact.is_file() else index.get(name.lower())


def load(root: Path) -> SourceLoad:
    """Load the Infection Segmentation Data under ``root`` (see the module docstring)."""
    root = Path(root).expanduser().absolute()
    base = root if root.name == TOP else root / TOP
    parts = [part for part in PARTS if (base / part).is_dir()]
    if not parts:
        raise DatasetLayoutError(f"{base}: expected the COVID-QU-Ex layout '{TOP}/{{Train,Val,Test}}/"
                                 f"{{COVID-19,Non-COVID,Normal}}/images' but found none of {', '.join(PARTS)}")
    loaded = SourceLoad(source=SOURCE, root=root, records=build_records([]), notes=[NO_PATIENTS_NOTE])
    rows: list[dict] = []
    for part in parts:
        for class_folder, (covid, finding) in CLASSES.items():
            folder = base / part / class_folder
            images_dir = folder / "images"
            if not images_dir.is_dir():
                if folder.is_dir():
                    loaded.issues.append(DataIssue(str(images_dir), "class folder without an images folder",
                                                   "missing"))
                continue
            lungs_dir, infection_dir = folder / "lung masks", folder / "infection masks"
            lungs, infections = _mask_index(lungs_dir), _mask_index(infection_dir)
            for image in sorted(images_dir.iterdir()):
                if not image.is_file() or image.name.startswith(".") or image.suffix.lower() not in IMAGE_SUFFIXES:
                    loaded.exclude("not an image file")
                    continue
                if image.suffix.lower() != ".png":
                    loaded.issues.append(DataIssue(str(image), "COVID-QU-Ex images are PNG; this one is not "
                                                   "part of the published layout", "invalid"))
                    continue
                lung = _find(lungs_dir, lungs, image.name)
                infection = _find(infection_dir, infections, image.name)
                for what, found, where in (("lung mask", lung, lungs_dir), ("infection mask", infection,
                                                                            infection_dir)):
                    if found is None:
                        loaded.issues.append(DataIssue(str(image), f"no {what} {image.name!r} in {where}", "missing"))
                image_id = f"{part}/{class_folder}/{image.stem}"
                rows.append(record_row(
                    SOURCE, root, image, patient_id=image_id, covid=covid, finding=finding,
                    source_finding=class_folder, mask_path=lung.resolve() if lung else None,
                    infection_mask_path=str(infection.resolve()) if infection else None,
                    original_split=part.lower(), patient_known=False))
    loaded.records = build_records(rows, extra_columns=["infection_mask_path", "original_split", "patient_known"])
    return loaded
