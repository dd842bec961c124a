"""Acquisition signatures: how a source's images look, whatever the patient has.

A signature is a set of knobs (projection, windowing, gamma, noise and grain, resolution,
collimation borders, padding, burned-in text, laterality markers, devices). Every knob's value
(a probability, a ``[low, high]`` range or a constant) may differ by class:
``{covid: 0.6, default: 0.1}``. A knob whose prevalence differs between classes, or between the
sources that a composition mixes, is a bias: exactly what the paper warns about.
:func:`sample_acquisition` draws one image's concrete settings; :func:`apply_acquisition` renders
them onto a phantom.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from unveil.errors import UnveilError
from unveil.synth.fields import smooth_noise
from unveil.synth.phantom import AgeGroup, View

CORNERS = ("top-left", "top-right", "bottom-left", "bottom-right")
DEVICES = ("ecg", "line", "tube")

#: Knobs a signature may set, with their neutral values (the `clean` preset's acquisition).
NEUTRAL_SIGNATURE: dict[str, Any] = {
    "ap": 0.0,  # probability of an AP (rather than PA) projection
    "pediatric": 0.0,  # probability of a child
    "window_low": 0.0,
    "window_high": 1.0,
    "gamma": 1.0,
    "noise": 0.01,
    "grain": 0.0,
    "resolution": 1.0,  # fraction of the full resolution actually resolved (1 = sharp)
    "collimation": 0.0,  # probability of collimation borders
    "collimation_width": [0.03, 0.08],
    "collimation_value": 0.0,  # 0 black (shuttered), 1 white
    "padding": 0.0,  # probability of a letterbox of black padding
    "padding_width": [0.03, 0.1],
    "text": 0.0,  # probability of burned-in text
    "text_corner": "top-left",
    "text_lines": ["{site}", "{date}"],
    "marker": 0.0,  # probability of a laterality marker
    "marker_corner": "top-right",
    "marker_letter": "R",
    "ecg": 0.0,  # probability of ECG leads
    "line": 0.0,  # probability of a central venous line
    "tube": 0.0,  # probability of an endotracheal / nasogastric tube
}


class SignatureError(UnveilError, ValueError):
    """A signature names an unknown knob or gives it a value of the wrong form."""


def knob(spec: dict[str, Any], name: str, finding: str) -> Any:
    """The value of knob ``name`` for class ``finding`` (mapping by class, with ``default``)."""
    value = spec.get(name, NEUTRAL_SIGNATURE[name])
    if isinstance(value, dict):
        if finding in value:
            return value[finding]
        if "default" in value:
            return value["default"]
        return NEUTRAL_SIGNATURE[name]
    return value


def validate_signature(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    """Check knob names and value shapes; return the spec unchanged."""
    unknown = sorted(set(spec) - set(NEUTRAL_SIGNATURE))
    if unknown:
        raise SignatureError(f"signature {name!r}: unknown knob(s) {', '.join(unknown)}; "
                             f"known: {', '.join(NEUTRAL_SIGNATURE)}")
    for key, value in spec.items():
        values = value.values() if isinstance(value, dict) else [value]
        for item in values:
            if key.endswith("_corner") and item not in CORNERS:
                raise SignatureError(f"signature {name!r}: {key} must be one of {CORNERS}, got {item!r}")
            if isinstance(item, list) and key not in ("text_lines",) and (
                    len(item) != 2 or not all(isinstance(x, (int, float)) for x in item)):
                raise SignatureError(f"signature {name!r}: {key} range must be [low, high], got {item!r}")
    return spec


def _draw(value: Any, rng: np.random.Generator) -> float:
    """A constant, or a uniform draw from a ``[low, high]`` range."""
    if isinstance(value, (list, tuple)):
        return float(rng.uniform(value[0], value[1]))
    return float(value)


@dataclass(frozen=True)
class Acquisition:
    """One image's concrete acquisition settings (recorded in the synthetic ground truth)."""

    view: View = "PA"
    age_group: AgeGroup = "adult"
    window_low: float = 0.0
    window_high: float = 1.0
    gamma: float = 1.0
    noise: float = 0.01
    grain: float = 0.0
    resolution: float = 1.0
    collimation: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)  # top, bottom, left, right
    collimation_value: float = 0.0
    padding: float = 0.0
    text: tuple[str, ...] = ()
    text_corner: str = "top-left"
    marker: str = ""
    marker_corner: str = "top-right"
    devices: tuple[str, ...] = field(default_factory=tuple)

    def summary(self) -> dict[str, Any]:
        """Flat, CSV-friendly description (booleans for the presence knobs)."""
        return {"view": self.view, "age_group": self.age_group, "window_low": round(self.window_low, 4),
                "window_high": round(self.window_high, 4), "gamma": round(self.gamma, 4),
                "noise": round(self.noise, 4), "grain": round(self.grain, 4),
                "resolution": round(self.resolution, 4), "collimation": any(self.collimation),
                "padding": round(self.padding, 4), "text": bool(self.text), "marker": self.marker,
                "devices": "+".join(self.devices)}


def sample_acquisition(spec: dict[str, Any], finding: str, rng: np.random.Generator,
                       context: dict[str, str] | None = None) -> Acquisition:
    """Draw one image's acquisition from signature ``spec`` for an image of class ``finding``."""
    def get(name: str) -> Any:
        return knob(spec, name, finding)

    def chance(name: str) -> bool:
        return bool(rng.random() < float(get(name)))

    collimation = (0.0, 0.0, 0.0, 0.0)
    if chance("collimation"):
        width = get("collimation_width")
        sides = [_draw(width, rng) if rng.random() < 0.6 else 0.0 for _ in range(4)]
        collimation = (sides[0], sides[1], sides[2], sides[3])
    text: tuple[str, ...] = ()
    if chance("text"):
        values = {"date": f"2020-{rng.integers(1, 13):02d}-{rng.integers(1, 29):02d}",
                  "id": f"{rng.integers(10**5, 10**6)}", **(context or {})}
        text = tuple(str(line).format_map(_Defaulting(values)) for line in get("text_lines"))
    return Acquisition(
        view="AP" if chance("ap") else "PA",
        age_group="pediatric" if chance("pediatric") else "adult",
        window_low=_draw(get("window_low"), rng),
        window_high=_draw(get("window_high"), rng),
        gamma=_draw(get("gamma"), rng),
        noise=_draw(get("noise"), rng),
        grain=_draw(get("grain"), rng),
        resolution=min(1.0, _draw(get("resolution"), rng)),
        collimation=collimation,
        collimation_value=_draw(get("collimation_value"), rng),
        padding=_draw(get("padding_width"), rng) if chance("padding") else 0.0,
        text=text,
        text_corner=str(get("text_corner")),
        marker=str(get("marker_letter")) if chance("marker") else "",
        marker_corner=str(get("marker_corner")),
        devices=tuple(device for device in DEVICES if chance(device)),
    )


class _Defaulting(dict):
    def __missing__(self, key: str) -> str:
        return ""


_FONTS: dict[int, ImageFont.ImageFont | ImageFont.FreeTypeFont] = {}


def _font(size: int):
    if size not in _FONTS:
        try:
            _FONTS[size] = ImageFont.load_default(size=size)
        except (TypeError, OSError):  # Pillow built without FreeType: fixed bitmap font
            _FONTS[size] = ImageFont.load_default()
    return _FONTS[size]


def _corner_xy(corner: str, size: int, box: tuple[float, float], margin: int) -> tuple[float, float]:
    x = margin if corner.endswith("left") else size - box[0] - margin
    y = margin if corner.startswith("top") else size - box[1] - margin
    return x, y


def _draw_devices(draw: ImageDraw.ImageDraw, devices: tuple[str, ...], size: int, rng: np.random.Generator) -> None:
    s = size
    width = max(1, s // 170)
    if "ecg" in devices:
        for _ in range(int(rng.integers(3, 6))):
            x, y = rng.uniform(0.15, 0.85) * s, rng.uniform(0.2, 0.75) * s
            r = s * 0.018
            draw.ellipse([x - r, y - r, x + r, y + r], outline=1.0, width=width * 2)
            end = (rng.uniform(0.0, 1.0) * s, (0.0 if rng.random() < 0.5 else 1.0) * s)
            middle = ((x + end[0]) / 2 + rng.uniform(-0.1, 0.1) * s, (y + end[1]) / 2)
            draw.line([(x, y), middle, end], fill=0.95, width=width)
    if "line" in devices:
        x0 = s * (0.5 + rng.choice([-1, 1]) * rng.uniform(0.15, 0.3))
        points = [(x0, 0.05 * s), (0.5 * s + 0.02 * s, 0.22 * s), (0.5 * s + 0.03 * s, rng.uniform(0.35, 0.45) * s)]
        draw.line(points, fill=1.0, width=width * 2)
    if "tube" in devices:
        x = 0.5 * s + rng.uniform(-0.01, 0.01) * s
        draw.line([(x, 0.0), (x, rng.uniform(0.3, 0.4) * s)], fill=1.0, width=width * 3)


def apply_tone(image: np.ndarray, acquisition: Acquisition) -> np.ndarray:
    """Windowing and gamma: pointwise, so they can run before upsampling (cheaper)."""
    span = max(acquisition.window_high - acquisition.window_low, 1e-3)
    return np.clip((image - acquisition.window_low) / span, 0.0, 1.0) ** acquisition.gamma


_NOISE_TILE: dict[int, np.ndarray] = {}


def _noise_tile(size: int) -> np.ndarray:
    """A fixed unit-variance noise tile per size, drawn once per process from a fixed seed.
    Images take it with a random offset and flip, which costs a roll instead of a fresh draw."""
    if size not in _NOISE_TILE:
        _NOISE_TILE[size] = np.random.default_rng(20200411).standard_normal((size, size), dtype=np.float32)
    return _NOISE_TILE[size]


def apply_acquisition(image: np.ndarray, mask: np.ndarray, acquisition: Acquisition,
                      rng: np.random.Generator, *, size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Render ``acquisition`` onto a toned phantom (see :func:`apply_tone`), upsampling it to
    ``size``: returns the float32 image in [0, 1] and the lung mask, transformed alongside
    (padding shrinks both). The steps draw from ``rng`` in a fixed order (grain, noise, devices)."""
    size = size or image.shape[0]
    out, mask = _detector(image, mask, acquisition, rng, size)
    out = _burn_in(out, acquisition, rng, size)
    _collimate(out, acquisition, size)
    if acquisition.padding > 0:
        out, mask = _pad(out, mask, acquisition.padding, size)
    return np.clip(out, 0.0, 1.0), mask


def _detector(image: np.ndarray, mask: np.ndarray, a: Acquisition, rng: np.random.Generator,
              size: int) -> tuple[np.ndarray, np.ndarray]:
    """What the detector does: grain, lost resolution, the output size (mask resized alongside), noise."""
    if a.grain > 0:  # mottle, drawn at the working resolution (cheaper than at full size)
        image = image + a.grain * smooth_noise(rng, max(8, image.shape[0] // 3), image.shape[0])
    source = Image.fromarray(np.ascontiguousarray(image, dtype=np.float32), mode="F")
    if a.resolution < 0.999:  # lost resolution: down to the resolved size, then back up
        small = max(8, int(round(size * a.resolution)))
        source = source.resize((small, small), Image.Resampling.BILINEAR)
    if source.size != (size, size):
        source = source.resize((size, size), Image.Resampling.BILINEAR)
    out: np.ndarray = np.asarray(source, dtype=np.float32)
    if mask.shape[0] != size:
        mask_image = Image.fromarray(mask.astype(np.uint8) * 255).resize((size, size), Image.Resampling.BILINEAR)
        mask = np.asarray(mask_image) > 127
    if a.noise > 0:
        shift = rng.integers(0, size, 2)
        tile = np.roll(_noise_tile(size), (int(shift[0]), int(shift[1])), axis=(0, 1))
        out = out + a.noise * (tile if rng.random() < 0.5 else tile.T)
    return np.clip(out, 0.0, 1.0), mask


def _burn_in(out: np.ndarray, a: Acquisition, rng: np.random.Generator, size: int) -> np.ndarray:
    """Draw what is burnt into the image: devices, a text block and a laterality marker."""
    canvas = Image.fromarray(out, mode="F")
    draw = ImageDraw.Draw(canvas)
    if a.devices:
        _draw_devices(draw, a.devices, size, rng)
    if a.text:
        font = _font(max(3, size // 28))
        block = "\n".join(a.text)
        left, top, right, bottom = draw.multiline_textbbox((0, 0), block, font=font)
        x, y = _corner_xy(a.text_corner, size, (right - left, bottom - top), size // 40)
        draw.multiline_text((x - left, y - top), block, fill=1.0, font=font)
    if a.marker:
        font = _font(max(4, size // 14))
        left, top, right, bottom = draw.textbbox((0, 0), a.marker, font=font)
        pad = size // 80
        x, y = _corner_xy(a.marker_corner, size, (right - left + 2 * pad, bottom - top + 2 * pad), size // 30)
        draw.rectangle([x, y, x + right - left + 2 * pad, y + bottom - top + 2 * pad], fill=0.9)
        draw.text((x + pad - left, y + pad - top), a.marker, fill=0.05, font=font)
    return np.asarray(canvas, dtype=np.float32).copy()


def _collimate(out: np.ndarray, a: Acquisition, size: int) -> None:
    """Set the collimated borders (fractions of the side: top, bottom, left, right) to their value, in place."""
    top, bottom, left, right = (int(round(w * size)) for w in a.collimation)
    if top:
        out[:top] = a.collimation_value
    if bottom:
        out[size - bottom:] = a.collimation_value
    if left:
        out[:, :left] = a.collimation_value
    if right:
        out[:, size - right:] = a.collimation_value


def _pad(out: np.ndarray, mask: np.ndarray, padding: float, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Shrink the image and its mask into a black frame of ``padding`` (fraction of the side) on every edge."""
    inner = max(8, int(round(size * (1 - 2 * padding))))
    offset = (size - inner) // 2
    shrunk = Image.fromarray(out, mode="F").resize((inner, inner), Image.Resampling.BILINEAR)
    out = np.zeros_like(out)
    out[offset:offset + inner, offset:offset + inner] = np.asarray(shrunk, dtype=np.float32)
    small_mask = Image.fromarray(mask.astype(np.uint8) * 255).resize((inner, inner), Image.Resampling.NEAREST)
    mask = np.zeros_like(mask)
    mask[offset:offset + inner, offset:offset + inner] = np.asarray(small_mask) > 127
    return out, mask
