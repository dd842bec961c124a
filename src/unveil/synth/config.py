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

The schema is :class:`ConfigDocument` (checked by :mod:`unveil.schema`): an unknown key, a value of the wrong type
or out of range is refused with the file, the line and the key path (``paper.yaml:12: datasets.A.classes.normal:
should be a valid integer; got 'many'``), every problem at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

from unveil.documents import read_document_text
from unveil.schema import Field, Problem, SchemaError, Where, parse_text, section
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


class SynthConfigError(SchemaError):
    """The configuration is malformed; the message names the file, the line and the field."""


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


@dataclass(frozen=True)
class DatasetEntry:
    """One dataset of a configuration file, as written (:class:`DatasetSpec` is what it resolves to)."""

    layout: Literal[tuple(LAYOUTS)]  # type: ignore[valid-type]
    signatures: list[str] | str | None = None  # None: neutral
    classes: dict[str, Annotated[int, Field(ge=0)]] | None = None
    follow_up: Annotated[float, Field(ge=0, lt=1)] = 0.0
    site: str | None = None  # None: the dataset's name
    image_format: str | None = None  # None: the layout's own (DEFAULT_FORMATS)


@dataclass(frozen=True)
class ConfigDocument:
    """The top level of a configuration file."""

    datasets: dict[str, DatasetEntry] = field(default_factory=dict)
    name: str | None = None  # None: the file's stem
    image_size: Annotated[int, Field(ge=32, le=4096)] = 512
    severity: dict[str, Annotated[list[float], Field(min_length=2, max_length=2)]] | None = None
    signatures: dict[str, dict[str, Any] | None] | None = None


def _signatures(document: ConfigDocument, problems: list[Problem]) -> dict[str, dict[str, Any]]:
    signatures = {"neutral": {}, **{name: spec or {} for name, spec in (document.signatures or {}).items()}}
    for name, spec in signatures.items():
        try:
            validate_signature(name, spec)
        except ValueError as error:
            problems.append(Problem(("signatures", name), str(error)))
    return signatures


def _severity(document: ConfigDocument, problems: list[Problem]) -> dict[str, tuple[float, float]]:
    severity = {}
    for finding, (low, high) in (document.severity or {}).items():
        if finding not in RENDERED_FINDINGS:
            problems.append(Problem(("severity", finding), f"cannot render {finding!r}; renderable: "
                                                           f"{', '.join(RENDERED_FINDINGS)}"))
        severity[finding] = (float(low), float(high))
    return severity


def _dataset(name: str, entry: DatasetEntry, signatures: dict[str, Any], problems: list[Problem]) -> DatasetSpec:
    """A dataset entry resolved (defaults filled in) and checked against its layout."""
    where, layout = ("datasets", name), entry.layout
    names = [entry.signatures] if isinstance(entry.signatures, str) else list(entry.signatures or [])
    for index, signature in enumerate(names):
        if signature not in signatures:
            problems.append(Problem((*where, "signatures", index), f"uses undefined signature {signature!r}"))
    classes = dict(entry.classes or {})
    for finding in classes:
        if finding not in RENDERED_FINDINGS:
            problems.append(Problem((*where, "classes", finding), f"cannot render {finding!r}; renderable: "
                                                                  f"{', '.join(RENDERED_FINDINGS)}"))
    if classes.get("covid") and layout not in COVID_LAYOUTS:
        problems.append(Problem((*where, "classes"), f"layout {layout} cannot hold COVID-19 images (use "
                                                     f"{', '.join(COVID_LAYOUTS)})"))
    allowed_classes = {"rsna": ("normal", "pneumonia"), "chestxray": ("normal", "bacterial", "viral")}.get(layout)
    if allowed_classes and set(classes) - set(allowed_classes):
        problems.append(Problem((*where, "classes"), f"the {layout} layout holds only "
                                                     f"{', '.join(allowed_classes)} images"))
    image_format = entry.image_format if entry.image_format is not None else DEFAULT_FORMATS[layout]
    allowed = ("dicom",) if layout == "rsna" else ("png", "jpeg", "mixed")
    if image_format not in allowed:
        problems.append(Problem((*where, "image_format"), f"should be one of {', '.join(allowed)} for layout "
                                                          f"{layout}; got {image_format!r}"))
    return DatasetSpec(name, layout, tuple(names) or ("neutral",), classes, entry.follow_up,
                       entry.site if entry.site is not None else name, image_format)


def parse_config(document: Any, origin: str = "<config>", where: Where | None = None) -> SynthConfig:
    """Validate a configuration document (already parsed from YAML; ``where`` gives its lines), every problem at
    once in a :class:`SynthConfigError`."""
    where = where or Where(origin, None, SynthConfigError)
    if not isinstance(document, dict):
        raise SynthConfigError(f"{origin}: expected a mapping at the top level (name, image_size, datasets, ...)")
    top = section(ConfigDocument, document, (), where)
    problems: list[Problem] = []
    signatures = _signatures(top, problems)
    severity = _severity(top, problems)
    datasets = {name: _dataset(name, entry, signatures, problems) for name, entry in top.datasets.items()}
    if not datasets:
        problems.append(Problem(("datasets",), "no datasets defined"))
    where.refuse(problems)
    return SynthConfig(top.name if top.name is not None else Path(origin).stem, top.image_size, severity,
                       signatures, datasets, document)


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
    document, where = parse_text(text, origin, SynthConfigError)
    return parse_config(document, origin, where)
