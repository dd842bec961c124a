"""Mask and overlay images for people to look at: the lung contour drawn in red on the radiograph."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from unveil.io import read_image
from unveil.segmentation.model import convention_of
from unveil.segmentation.train import read_mask


def contour(mask: np.ndarray, width: int = 1) -> np.ndarray:
    """The mask's boundary pixels (``width`` pixels thick)."""
    mask = np.asarray(mask, dtype=bool)
    return mask & ~ndimage.binary_erosion(mask, iterations=max(1, width))


def overlay_rgb(image: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int] = (255, 40, 40)) -> np.ndarray:
    """RGB uint8: the gray image with the mask's contour in ``colour``."""
    gray = np.clip(np.rint(np.asarray(image, dtype=np.float32) * 255), 0, 255).astype(np.uint8)
    rgb = np.repeat(gray[..., None], 3, axis=2)
    edge = contour(mask, width=max(1, round(min(mask.shape) / 256)))
    rgb[edge] = colour
    return rgb


def write_mask_and_overlay(image: np.ndarray, mask: np.ndarray, out: str | Path, stem: str) -> tuple[Path, Path]:
    """``<out>/<stem>_mask.png`` (0/255) and ``<out>/<stem>_overlay.png``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    mask_path, overlay_path = out / f"{stem}_mask.png", out / f"{stem}_overlay.png"
    Image.fromarray(np.asarray(mask, dtype=np.uint8) * 255).save(mask_path)
    Image.fromarray(overlay_rgb(image, mask)).save(overlay_path)
    return mask_path, overlay_path


def comparison_rgb(image: np.ndarray, truth: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    """RGB uint8: the gray image with the reference mask's contour in green and the prediction's in
    red (yellow where they coincide), to see where a model and an annotation disagree."""
    rgb = overlay_rgb(image, prediction)
    width = max(1, round(min(np.shape(truth)) / 256))
    edge_truth, edge_prediction = contour(truth, width), contour(prediction, width)
    rgb[edge_truth] = (40, 220, 40)
    rgb[edge_truth & edge_prediction] = (250, 220, 0)
    return rgb


def write_worst_overlays(segmenter, records, figures, out: str | Path, count: int = 10) -> list[Path]:
    """``<out>/<rank>_<source>_<stem>.png`` comparison overlays (truth green, prediction red) of the
    ``count`` lowest-Dice rows of ``figures`` (from :func:`unveil.segmentation.train.evaluate`),
    each predicted in its source's convention."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = records.set_index("record_id")
    written = []
    for rank, row in enumerate(figures.nsmallest(count, "dice").itertuples(), start=1):
        record = paths.loc[row.record_id]
        image = read_image(record["path"]).pixels
        prediction = segmenter.segment(image, convention=convention_of(row.source))
        picture = Image.fromarray(comparison_rgb(image, read_mask(record["mask_path"]), prediction))
        picture.thumbnail((768, 768))
        target = out / f"{rank:02d}_{row.source}_{Path(str(record['path'])).stem.replace(' ', '_')}.png"
        picture.save(target)
        written.append(target)
    return written


def output_stems(files: list[Path]) -> dict[Path, str]:
    """The output stem of each input: its file stem, or ``<stem>_<extension>`` for every input whose stem
    another input shares (``good.png`` and ``good.jpeg`` must not both write ``good_mask.png``); a stem
    still taken after that gets its position appended."""
    from collections import Counter

    counts = Counter(path.stem for path in files)
    stems: dict[Path, str] = {}
    taken: set[str] = set()
    for index, path in enumerate(files):
        stem = path.stem if counts[path.stem] == 1 else f"{path.stem}_{path.suffix.lstrip('.') or 'noext'}"
        if stem in taken:
            stem = f"{stem}_{index}"
        taken.add(stem)
        stems[path] = stem
    return stems
