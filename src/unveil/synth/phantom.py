"""Procedural frontal chest radiograph phantoms with a ground-truth lung mask.

The phantom is built in display convention (0 = black air, 1 = white bone) on a normalised grid
``u`` (left to right, the patient's right on the image left) and ``v`` (top to bottom), from the
structures a segmenter and a CNN must deal with: body outline and soft tissue, two lung fields of
varied shape and size, heart shadow (larger on AP views and in children), mediastinum and spine,
diaphragm domes, posterior ribs and clavicles, and a vascular texture inside the lungs.
Everything is vectorised NumPy on one grid (no per-pixel Python), which keeps a 512x512 phantom
well under 10 ms.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from unveil.synth.fields import smooth_noise, smoothstep

AgeGroup = Literal["adult", "pediatric"]
View = Literal["PA", "AP"]


@dataclass(frozen=True)
class Anatomy:
    """Shape parameters of one phantom (normalised units; see :func:`sample_anatomy`)."""

    age_group: AgeGroup
    view: View
    lung_half_width: float  # horizontal radius of each lung field
    lung_top: float  # apex height
    lung_bottom: float  # costophrenic angle height
    lung_offset: float  # distance of each lung centre from the midline
    dome_height: float  # how far the diaphragm dome rises into the lung base
    heart_width: float  # horizontal radius of the heart shadow
    heart_height: float
    heart_shift: float  # towards the patient's left (image right)
    mediastinum_width: float
    body_half_width: float
    rib_spacing: float
    rib_curvature: float
    tilt: float  # small rotation of the patient, as a horizontal shear
    zoom: float  # field of view: > 1 shows the thorax larger
    shift_u: float  # patient position in the frame
    shift_v: float
    soft_tissue: float  # soft-tissue brightness (habitus and exposure)
    lung_density: float  # how dark aerated lung is (depth of inspiration, exposure)
    bone: float  # bone brightness added over soft tissue


def sample_anatomy(rng: np.random.Generator, age_group: AgeGroup = "adult", view: View = "PA") -> Anatomy:
    """Draw a plausible anatomy. Children have rounder, shorter lungs and a larger heart shadow;
    AP projection magnifies the heart (it sits further from the detector)."""
    pediatric = age_group == "pediatric"
    heart_scale = (1.06 if pediatric else 1.0) * (1.1 if view == "AP" else 1.0)
    return Anatomy(
        age_group=age_group,
        view=view,
        lung_half_width=rng.uniform(0.135, 0.165) * (1.02 if pediatric else 1.0),
        lung_top=rng.uniform(0.13, 0.18) + (0.01 if pediatric else 0.0),
        lung_bottom=rng.uniform(0.74, 0.82) - (0.02 if pediatric else 0.0),
        lung_offset=rng.uniform(0.19, 0.22),
        dome_height=rng.uniform(0.05, 0.09),
        heart_width=rng.uniform(0.13, 0.155) * heart_scale,
        heart_height=rng.uniform(0.11, 0.14) * heart_scale,
        heart_shift=rng.uniform(0.04, 0.07),
        mediastinum_width=rng.uniform(0.045, 0.06),
        body_half_width=rng.uniform(0.40, 0.45),
        rib_spacing=rng.uniform(0.062, 0.072) * (0.95 if pediatric else 1.0),
        rib_curvature=rng.uniform(1.2, 1.8),
        tilt=rng.uniform(-0.04, 0.04),
        zoom=rng.uniform(0.9, 1.12),
        shift_u=rng.uniform(-0.04, 0.04),
        shift_v=rng.uniform(-0.05, 0.04),
        soft_tissue=rng.uniform(0.42, 0.64),
        lung_density=rng.uniform(0.24, 0.42),
        bone=rng.uniform(0.10, 0.15) * (0.92 if pediatric else 1.0),
    )


@dataclass(frozen=True)
class Geometry:
    """Per-pixel coordinates and masks a finding needs to place itself inside the lungs."""

    u: np.ndarray
    v: np.ndarray
    lungs: np.ndarray  # float32 soft lung field in [0, 1]
    right_lung: np.ndarray  # bool, the patient's right = image left
    left_lung: np.ndarray
    anatomy: Anatomy

    def lung_centre(self, side: int) -> float:
        """Horizontal centre of the image-left (-1) or image-right (+1) lung."""
        return 0.5 + side * self.anatomy.lung_offset


def render_anatomy(anatomy: Anatomy, size: int, rng: np.random.Generator) -> tuple[np.ndarray, Geometry]:
    """Render the phantom (float32, [0, 1]) and its geometry at ``size`` x ``size``."""
    a = anatomy
    axis = (np.arange(size, dtype=np.float32) + 0.5) / size
    v, u = np.meshgrid(axis, axis, indexing="ij")
    u = (u - 0.5 - a.shift_u) / a.zoom + 0.5  # position and field of view
    v = (v - 0.5 - a.shift_v) / a.zoom + 0.5
    u = u + a.tilt * (v - 0.5)  # slight patient rotation
    dx = np.abs(u - 0.5)

    # Body: a torso widening from the neck to the shoulders, then slowly narrowing.
    width = np.where(v < 0.2, 0.12 + (a.body_half_width - 0.12) * smoothstep(0.0, 0.2, v), a.body_half_width)
    body = smoothstep(-0.02, 0.02, width - dx)
    thickness = np.sqrt(np.clip(1.0 - (dx / (a.body_half_width + 0.04)) ** 2, 0.0, 1.0))
    image = body * a.soft_tissue * (0.75 + 0.25 * thickness)

    fields, heart = _lung_fields_and_heart(a, u, v, edge=2.5 / size)
    lungs = np.maximum(fields[0], fields[1])

    # Lung texture: vessels branching from the hila, brighter centrally.
    hilum = np.exp(-((dx - 0.09) ** 2) / 0.01 - ((v - 0.45) ** 2) / 0.03)
    vessels = np.abs(smooth_noise(rng, 24, size)) * (0.5 + hilum)
    image = image - lungs * (a.lung_density - 0.05 * vessels - 0.06 * hilum)

    # Heart, mediastinum and spine, brighter than the lungs around them.
    image = image + heart * 0.05
    mediastinum = smoothstep(a.mediastinum_width + 0.01, a.mediastinum_width - 0.01, dx) * smoothstep(0.05, 0.15, v)
    spine = smoothstep(0.035, 0.025, dx)
    vertebrae = 0.5 + 0.5 * np.cos(2 * np.pi * v / (a.rib_spacing * 0.7))
    image = image + body * (mediastinum * 0.05 + spine * a.bone * (0.5 + 0.3 * vertebrae))
    image = _add_ribs_and_clavicles(image, a, u, v, dx, width, body, heart)

    geometry = Geometry(u=u, v=v, lungs=lungs, right_lung=fields[0] > 0.5, left_lung=fields[1] > 0.5,
                        anatomy=anatomy)
    return np.clip(image, 0.0, 1.0).astype(np.float32), geometry


def _lung_fields_and_heart(a: Anatomy, u: np.ndarray, v: np.ndarray, *,
                           edge: float) -> tuple[list[np.ndarray], np.ndarray]:
    """The two lung fields (right, left; the heart cut out) and the heart, as soft masks in [0, 1]."""
    # Lung fields: narrow apex, wide base; cut by the diaphragm dome and the mediastinum.
    lung_mid = 0.5 * (a.lung_top + a.lung_bottom)
    lung_half_height = 0.5 * (a.lung_bottom - a.lung_top)
    taper = 0.55 + 0.45 * smoothstep(a.lung_top, lung_mid + 0.1, v)
    fields = []
    for side in (-1, 1):
        cx = 0.5 + side * (a.lung_offset + 0.02 * (taper - 1.0))
        r = ((u - cx) / (a.lung_half_width * taper)) ** 2 + ((v - lung_mid - 0.04) / (lung_half_height + 0.04)) ** 2
        lateral = np.clip((u - cx) / a.lung_half_width, -1.0, 1.0)
        dome = a.lung_bottom - a.dome_height * (1.0 - lateral**2) - 0.03 * side * lateral
        inside = np.minimum(smoothstep(1.0, 0.94, r), smoothstep(dome + edge, dome - edge, v))
        medial = smoothstep(a.mediastinum_width - edge, a.mediastinum_width + edge, side * (u - 0.5))
        fields.append(np.minimum(inside, medial))
    # Heart: a main ellipse plus the left-ventricle bulge towards the patient's left, resting on
    # the diaphragm and merging into the mediastinum.
    heart_u = (u - 0.5 - a.heart_shift) / a.heart_width
    heart_v = (v - (a.lung_bottom - a.heart_height * 0.45)) / a.heart_height
    ventricle_u = (u - 0.5 - a.heart_shift - 0.45 * a.heart_width) / (0.7 * a.heart_width)
    ventricle_v = (v - (a.lung_bottom - a.heart_height * 0.25)) / (0.75 * a.heart_height)
    heart = np.maximum(smoothstep(1.0, 0.85, heart_u**2 + heart_v**2),
                       smoothstep(1.0, 0.8, ventricle_u**2 + ventricle_v**2))
    return [np.minimum(f, 1.0 - heart) for f in fields], heart


def _add_ribs_and_clavicles(image: np.ndarray, a: Anatomy, u: np.ndarray, v: np.ndarray, dx: np.ndarray,
                            width: np.ndarray, body: np.ndarray, heart: np.ndarray) -> np.ndarray:
    """``image`` with the posterior ribs and the clavicles added (in this order: float sums are not associative,
    and the benchmark's files must stay byte-identical for a seed)."""
    # Posterior ribs: bands that curve down laterally, periodic in a warped vertical coordinate.
    phase = (v - a.lung_top + 0.05 - a.rib_curvature * (dx - 0.03) ** 2) / a.rib_spacing
    band = smoothstep(0.55, 0.8, np.cos(2 * np.pi * phase))
    thorax = smoothstep(a.lung_bottom + 0.04, a.lung_bottom - 0.02, v)
    ribs = band * (phase > 0) * thorax * smoothstep(0.03, 0.06, dx) * smoothstep(0.02, -0.02, dx - width + 0.03)
    image = image + ribs * a.bone * 0.8 * body * (1.0 - 0.6 * heart)
    # Clavicles: two bright bars from the manubrium up and out to the shoulders.
    for side in (-1, 1):
        t = np.clip(side * (u - 0.5), 0.0, None)
        line = 0.16 - 0.1 * t + 0.25 * t * t
        clavicle = smoothstep(0.014, 0.008, np.abs(v - line)) * smoothstep(0.03, 0.06, t) * smoothstep(0.4, 0.33, t)
        image = image + clavicle * a.bone * 1.1
    return image
