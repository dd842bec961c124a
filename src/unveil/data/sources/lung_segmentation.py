"""The "Chest X-ray Masks and Labels" collection: Shenzhen and Montgomery radiographs with lung masks.

On-disk layout (as commonly redistributed, both NLM sets pooled in one folder)::

    <root>/CXR_png/CHNCXR_XXXX_Y.png      Shenzhen (China)      Y: 0 normal, 1 tuberculosis
    <root>/CXR_png/MCUCXR_XXXX_Y.png      Montgomery (USA)
    <root>/masks/CHNCXR_XXXX_Y_mask.png   Shenzhen masks carry a ``_mask`` suffix
    <root>/masks/MCUCXR_XXXX_Y.png        Montgomery masks carry the image's own name

Masks are paired by stem under either naming rule (``<stem>_mask.png`` first, then ``<stem>.png``);
a mask is lung where its gray value is above 127 (the masks are 0/255; anti-aliased copies also
read right). They follow the visible-lung-field convention (heart and retrocardiac lung excluded).

Each record's ``source`` is the original set, ``shenzhen`` or ``montgomery`` (from the file prefix),
so the two stay separable for per-source figures and source-stratified splits; ``record_id`` keeps
the collection's name (``lung-segmentation/CXR_png/...``) so it never collides with the ``shenzhen``
or ``montgomery`` loaders' ids. ``patient_id`` is the file number (``CHNCXR_0001``: one image per
patient in both sets; the same key as the per-set loaders, so leakage checks see the same patient).
Label from the suffix: ``Y=0`` -> ``finding`` "normal"; ``Y=1`` -> ``finding`` "other"
(``source_finding`` "tuberculosis"). ``covid`` is 0 (pre-COVID data); ``view`` is "PA".

Reported issues: a PNG in ``CXR_png`` whose name follows neither rule ("invalid"; no record); an image
without a mask ("missing"; record kept with no mask). Masks without an image are counted in ``excluded``.
"""

from __future__ import annotations

import re
from pathlib import Path

from unveil.data.records import build_records, make_record_id, record_row
from unveil.data.sources.base import DataIssue, SourceLoad, named_pngs, require_path

COLLECTION = "lung-segmentation"
_NAME = re.compile(r"^((CHNCXR|MCUCXR)_\d{4})_([01])$", re.IGNORECASE)
SOURCES = {"CHNCXR": "shenzhen", "MCUCXR": "montgomery"}
LABELS = {"0": ("normal", "normal"), "1": ("other", "tuberculosis")}


def find_mask(masks: Path, stem: str) -> Path | None:
    """The mask of image ``stem``: ``<stem>_mask.png``, else ``<stem>.png``, else None."""
    for name in (f"{stem}_mask.png", f"{stem}.png"):
        if (masks / name).is_file():
            return masks / name
    return None


def load(root: Path) -> SourceLoad:
    """Load the pooled Shenzhen + Montgomery collection under ``root`` (see the module docstring)."""
    root = Path(root).expanduser().absolute()
    images_dir = require_path(root / "CXR_png", "the image folder CXR_png", directory=True)
    masks_dir = require_path(root / "masks", "the lung-mask folder masks", directory=True)
    loaded = SourceLoad(source=COLLECTION, root=root, records=build_records([]))
    rows: list[dict] = []
    used: set[str] = set()
    for image, match in named_pngs(images_dir, _NAME, loaded, "CHNCXR_XXXX_Y.png or MCUCXR_XXXX_Y.png"):
        patient, prefix, label = match.groups()
        source = SOURCES[prefix.upper()]
        finding, source_finding = LABELS[label]
        mask = find_mask(masks_dir, image.stem)
        if mask is None:
            loaded.issues.append(DataIssue(str(image), f"no lung mask {image.stem}_mask.png or {image.stem}.png "
                                           f"in {masks_dir}", "missing"))
        else:
            used.add(mask.name)
        row = record_row(source, root, image, patient_id=patient.upper(), covid=0, finding=finding,
                         source_finding=source_finding, view="PA",
                         mask_path=mask.resolve() if mask is not None else None, collection=COLLECTION)
        row["record_id"] = make_record_id(COLLECTION, root, image)
        rows.append(row)
    orphans = sum(1 for m in masks_dir.glob("*.png") if m.name not in used)
    if orphans:
        loaded.exclude("mask without an image in CXR_png", orphans)
    loaded.records = build_records(rows, extra_columns=["collection"])
    return loaded
