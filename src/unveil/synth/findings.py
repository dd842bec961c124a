"""Disease patterns drawn inside the lung fields of a phantom, with a severity knob in [0, 1].

As the paper's clinical section describes them:
- ``covid``: bilateral ground-glass opacities, peripheral and in the lower zones, hazy;
- ``bacterial``: dense lobar consolidation, usually in one lung;
- ``viral``: diffuse, bilateral, perihilar interstitial (reticular) pattern;
- ``pneumonia``: RSNA's unspecified "lung opacity", drawn as consolidation or interstitial pattern;
- ``normal``: nothing.
Every opacity is multiplied by the soft lung field, so the disease signal lives inside the lungs.
"""

from __future__ import annotations

import numpy as np

from unveil.synth.fields import smooth_noise, smoothstep
from unveil.synth.phantom import Geometry

RENDERED_FINDINGS: tuple[str, ...] = ("normal", "covid", "bacterial", "viral", "pneumonia")


def _side_field(geometry: Geometry, side: int) -> np.ndarray:
    """Soft lung field restricted to one side (-1 image left, +1 image right)."""
    return geometry.lungs * (np.sign(geometry.u - 0.5) == side)


def ground_glass(geometry: Geometry, severity: float, rng: np.random.Generator) -> np.ndarray:
    """COVID-19-like bilateral, peripheral, lower-zone ground-glass opacity."""
    a, u, v, size = geometry.anatomy, geometry.u, geometry.v, geometry.u.shape[0]
    lower = smoothstep(a.lung_top + 0.2, a.lung_bottom - 0.08, v)
    patches = smoothstep(-0.6, 0.9, smooth_noise(rng, 7, size))
    opacity = np.zeros_like(u)
    for side in (-1, 1):
        outward = side * (u - geometry.lung_centre(side)) / a.lung_half_width  # -1 medial .. +1 lateral
        periphery = smoothstep(-0.5, 0.6, outward)
        opacity += _side_field(geometry, side) * periphery * rng.uniform(0.7, 1.0)
    return opacity * lower * (0.35 + 0.65 * patches) * (0.16 * severity)


def consolidation(geometry: Geometry, severity: float, rng: np.random.Generator) -> np.ndarray:
    """Bacterial-like dense consolidation of one lobe region (lower lobe more often than upper)."""
    a, u, v, size = geometry.anatomy, geometry.u, geometry.v, geometry.u.shape[0]
    side = int(rng.choice([-1, 1]))
    cx = geometry.lung_centre(side)
    lung_mid = 0.5 * (a.lung_top + a.lung_bottom)
    lower_lobe = rng.random() < 0.7
    centre_v = rng.uniform(lung_mid + 0.05, a.lung_bottom - 0.05) if lower_lobe else \
        rng.uniform(a.lung_top + 0.06, lung_mid)
    centre_u = cx + side * rng.uniform(-0.3, 0.4) * a.lung_half_width
    radius = rng.uniform(0.09, 0.15) * (0.6 + 0.4 * severity)
    distance = np.sqrt(((u - centre_u) / 1.2) ** 2 + (v - centre_v) ** 2)
    texture = 0.8 + 0.2 * smooth_noise(rng, 12, size)
    core = smoothstep(radius, radius * 0.6, distance)
    return _side_field(geometry, side) * core * texture * (0.40 * (0.5 + 0.5 * severity))


def interstitial(geometry: Geometry, severity: float, rng: np.random.Generator) -> np.ndarray:
    """Viral-like diffuse bilateral reticular pattern, strongest around the hila."""
    a, u, v, size = geometry.anatomy, geometry.u, geometry.v, geometry.u.shape[0]
    lines = smoothstep(0.45, 0.0, np.abs(smooth_noise(rng, 36, size)))
    hila = np.exp(-((np.abs(u - 0.5) - 0.1) ** 2) / 0.02 - ((v - 0.5 * (a.lung_top + a.lung_bottom)) ** 2) / 0.05)
    return geometry.lungs * (0.3 + 0.7 * lines) * (0.4 + 0.6 * hila) * (0.18 * severity)


def finding_opacity(geometry: Geometry, finding: str, severity: float, rng: np.random.Generator) -> np.ndarray:
    """The opacity (to add to the image) of ``finding`` at ``severity``; zeros for ``normal``."""
    if finding == "normal" or severity <= 0:
        return np.zeros_like(geometry.u)
    if finding == "covid":
        return ground_glass(geometry, severity, rng)
    if finding == "bacterial":
        return consolidation(geometry, severity, rng)
    if finding == "viral":
        return interstitial(geometry, severity, rng)
    if finding == "pneumonia":
        return consolidation(geometry, severity, rng) if rng.random() < 0.7 else interstitial(geometry, severity, rng)
    raise ValueError(f"cannot render finding {finding!r}; renderable: {', '.join(RENDERED_FINDINGS)}")
