"""A PNG grid of synthetic samples, one row per dataset, columns by class, to judge realism by eye."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from unveil.synth.config import SynthConfig
from unveil.synth.render import render_image


def preview_grid(config: SynthConfig, *, seed: int = 0, per_class: int = 2, tile: int = 192,
                 size: int | None = None) -> Image.Image:
    """Render ``per_class`` images of every (dataset, class) and lay them out with captions."""
    size = size or config.image_size
    font = ImageFont.load_default(size=max(10, tile // 14))
    caption = max(14, tile // 9)
    rows = []
    for dataset_index, (name, spec) in enumerate(config.datasets.items()):
        tiles = []
        for finding_index, finding in enumerate(spec.classes):
            low, high = config.severity.get(finding, (0.0, 0.0))
            for k in range(per_class):
                rng = np.random.default_rng([seed, dataset_index, finding_index, k])
                signature = spec.signatures[int(rng.integers(len(spec.signatures)))]
                severity = 0.0 if finding == "normal" else float(rng.uniform(low, high))
                image = render_image(finding, severity, config.signatures[signature], size=size, rng=rng,
                                     context={"site": spec.site, "id": f"{k:05d}"})
                pixels = Image.fromarray(np.rint(image.pixels * 255).astype(np.uint8)).resize((tile, tile))
                framed = Image.new("L", (tile, tile + caption), 255)
                framed.paste(pixels, (0, caption))
                ImageDraw.Draw(framed).text((3, 1), f"{name} {finding} {severity:.1f}", fill=0, font=font)
                tiles.append(framed)
        rows.append(tiles)
    columns = max(len(r) for r in rows)
    grid = Image.new("L", (columns * (tile + 4), len(rows) * (tile + caption + 4)), 255)
    for r, tiles in enumerate(rows):
        for c, framed in enumerate(tiles):
            grid.paste(framed, (c * (tile + 4), r * (tile + caption + 4)))
    return grid


def write_preview(config: SynthConfig, out: str | Path, **options) -> Path:
    """Write :func:`preview_grid` as a PNG."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    preview_grid(config, **options).save(out)
    return out
