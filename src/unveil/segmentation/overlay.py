"""Mask and overlay images for people to look at: the lung contour drawn in red on the radiograph."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage


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
