"""Synthetic benchmark configuration: YAML presets shipped with the package, or the user's file.

Schema (see ``presets/paper.yaml`` for a commented example)::

    name: paper
    image_size: 512
    severity: {covid: [0.2, 1.0], ...}        # per finding, a [low, high] range
    signatures: {NAME: {KNOB: VALUE, ...}}    # knobs: unveil.synth.signature.NEUTRAL_SIGNATURE
    datasets:
      ROLE:                                   # A, B, C, D, lungs, ... (any name)
        layout: hospital-csv | chestxray | rsna | covid-chestxray | shenzhen
        signatures: [NAME, ...]               # each image draws one, uniformly
        classes: {FINDING: COUNT, ...}        # images per finding at scale 1
        follow_up: 0.0                        # chance of each further image of one patient
        site: "name"                          # {site} in burned-in text; D's location
        image_format: png | jpeg | mixed      # file format (default: the layout's own, see
                                              # DEFAULT_FORMATS); RSNA is always 12-bit DICOM
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from unveil.documents import load_yaml_text, read_document_text
from unveil.errors import UnveilError, first_non_finite
from unveil.synth.findings import RENDERED_FINDINGS
from unveil.synth.signature import validate_signature

LAYOUTS: dict[str, str] = {  # layout -> the unveil source that reads it
    "hospital-csv": "hospital-csv",
    "chestxray": "chestxray",
    "rsna": "rsna",
    "covid-chestxray": "covid-chestxray",
    "shenzhen": "shenzhen",
}
PRESETS: tuple[str, ...] = ("paper", "clean")
#: The file format each layout uses in the real datasets (lossy JPEG is itself a source signature).
DEFAULT_FORMATS: dict[str, str] = {"hospital-csv": "png", "chestxray": "jpeg", "rsna": "dicom",
                                   "covid-chestxray": "mixed", "shenzhen": "png"}
COVID_LAYOUTS = ("hospital-csv", "covid-chestxray")  # the only layouts that can hold COVID+ images


class SynthConfigError(UnveilError, ValueError):
    """The configuration is malformed; the message names the file and the field."""


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    layout: str
    signatures: tuple[str, ...]
    classes: dict[str, int]
    follow_up: float = 0.0
    site: str = ""
    image_format: str = "png"

    @property
    def source(self) -> str:
        return LAYOUTS[self.layout]


@dataclass(frozen=True)
class SynthConfig:
    name: str
    image_size: int
    severity: dict[str, tuple[float, float]]
    signatures: dict[str, dict[str, Any]]
    datasets: dict[str, DatasetSpec]
    raw: dict[str, Any]

    def scaled_counts(self, scale: float) -> dict[str, dict[str, int]]:
        """Images per dataset and finding at ``scale`` (a non-zero count never drops to zero)."""
        return {name: {finding: max(1, round(count * scale)) if count else 0
                       for finding, count in spec.classes.items()}
                for name, spec in self.datasets.items()}


def _fail(origin: str, message: str) -> None:
    raise SynthConfigError(f"{origin}: {message}")


def parse_config(document: dict[str, Any], origin: str = "<config>") -> SynthConfig:
    """Validate a configuration document (already parsed from YAML)."""
    if not isinstance(document, dict):
        _fail(origin, "expected a mapping at the top level")
    found = first_non_finite(document)
    if found:
        _fail(origin, f"{'.'.join(map(str, found[0]))} must be a finite number, got {found[1]!r}")
    signatures = {"neutral": {}, **(document.get("signatures") or {})}
    for name, spec in signatures.items():
        try:
            validate_signature(name, spec or {})
        except ValueError as error:
            _fail(origin, str(error))
    severity = {}
    for finding, bounds in (document.get("severity") or {}).items():
        if finding not in RENDERED_FINDINGS or not isinstance(bounds, list) or len(bounds) != 2:
            _fail(origin, f"severity.{finding} must be a [low, high] range for one of {RENDERED_FINDINGS}")
        severity[finding] = (float(bounds[0]), float(bounds[1]))
    datasets = {}
    for name, spec in (document.get("datasets") or {}).items():
        where = f"datasets.{name}"
        layout = spec.get("layout")
        if layout not in LAYOUTS:
            _fail(origin, f"{where}.layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
        names = spec.get("signatures") or []
        names = [names] if isinstance(names, str) else list(names)
        for signature in names:
            if signature not in signatures:
                _fail(origin, f"{where} uses undefined signature {signature!r}")
        classes = {str(k): int(v) for k, v in (spec.get("classes") or {}).items()}
        for finding, count in classes.items():
            if finding not in RENDERED_FINDINGS:
                _fail(origin, f"{where}.classes: cannot render {finding!r}; renderable: {RENDERED_FINDINGS}")
            if count < 0:
                _fail(origin, f"{where}.classes.{finding} must be >= 0")
        if classes.get("covid") and layout not in COVID_LAYOUTS:
            _fail(origin, f"{where}: layout {layout} cannot hold COVID-19 images (use {COVID_LAYOUTS})")
        if layout == "rsna" and set(classes) - {"normal", "pneumonia"}:
            _fail(origin, f"{where}: the RSNA layout holds only normal and pneumonia images")
        if layout == "chestxray" and set(classes) - {"normal", "bacterial", "viral"}:
            _fail(origin, f"{where}: the ChestXRay layout holds only normal, bacterial and viral images")
        follow_up = float(spec.get("follow_up", 0.0))
        if not 0 <= follow_up < 1:
            _fail(origin, f"{where}.follow_up must be in [0, 1)")
        image_format = str(spec.get("image_format", DEFAULT_FORMATS[layout]))
        allowed = ("dicom",) if layout == "rsna" else ("png", "jpeg", "mixed")
        if image_format not in allowed:
            _fail(origin, f"{where}.image_format must be one of {allowed} for layout {layout}")
        datasets[str(name)] = DatasetSpec(str(name), layout, tuple(names) or ("neutral",), classes, follow_up,
                                          str(spec.get("site", name)), image_format)
    if not datasets:
        _fail(origin, "no datasets defined")
    size = int(document.get("image_size", 512))
    if not 32 <= size <= 4096:
        _fail(origin, f"image_size must be in [32, 4096], got {size}")
    return SynthConfig(str(document.get("name", Path(origin).stem)), size, severity, signatures, datasets, document)


def load_config(preset_or_path: str | Path) -> SynthConfig:
    """A shipped preset by name (``paper``, ``clean``) or a user's YAML file."""
    if str(preset_or_path) in PRESETS:
        text = resources.files("unveil.synth").joinpath(f"presets/{preset_or_path}.yaml").read_text("utf-8")
        origin = f"preset {preset_or_path}"
    else:
        path = Path(preset_or_path)
        if not path.exists():
            raise SynthConfigError(f"{path}: cannot read configuration (No such file or directory); "
                                   f"presets are {', '.join(PRESETS)}")
        text = read_document_text(path, SynthConfigError, "configuration")
        origin = str(path)
    document = load_yaml_text(text, origin, SynthConfigError)
    return parse_config(document, origin)
