"""One synthetic radiograph: anatomy + finding + acquisition, with its lung mask."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from unveil.synth.findings import finding_opacity
from unveil.synth.phantom import Anatomy, render_anatomy, sample_anatomy
from unveil.synth.signature import Acquisition, apply_acquisition, apply_tone, sample_acquisition

#: Anatomy and findings are drawn at most at this size, then upsampled; acquisition effects
#: (noise, text, devices, borders) are drawn at full size. Keeps 512x512 generation fast.
WORKING_SIZE = 224


@dataclass(frozen=True)
class SyntheticImage:
    pixels: np.ndarray  # float32, (size, size), [0, 1], display convention
    mask: np.ndarray  # bool lung mask, same geometry as pixels
    finding: str
    severity: float
    acquisition: Acquisition
    anatomy: Anatomy


def render_image(finding: str, severity: float, signature: dict[str, Any], *, size: int,
                 rng: np.random.Generator, patient_rng_seed: Any = None,
                 context: dict[str, str] | None = None) -> SyntheticImage:
    """Render one image of class ``finding`` under ``signature``.

    ``patient_rng_seed`` fixes the anatomy, so several images of one patient share it.
    """
    acquisition = sample_acquisition(signature, finding, rng, context)
    anatomy_rng = np.random.default_rng(patient_rng_seed) if patient_rng_seed is not None else rng
    anatomy = sample_anatomy(anatomy_rng, acquisition.age_group, acquisition.view)
    work = min(size, WORKING_SIZE)
    image, geometry = render_anatomy(anatomy, work, rng)
    image = apply_tone(np.clip(image + finding_opacity(geometry, finding, severity, rng), 0.0, 1.0), acquisition)
    pixels, mask = apply_acquisition(image, geometry.lungs > 0.5, acquisition, rng, size=size)
    return SyntheticImage(pixels, mask, finding, float(severity), acquisition, anatomy)
