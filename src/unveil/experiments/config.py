"""Experiment files: datasets, pre-processing, pre-training runs and the grid, in one YAML file.

```yaml
name: demo
seed: 0
data:                       # roles A B C D: real datasets ...
  A: {source: hospital-csv, path: /data/corda, options: {label_column: covid}}
  # ... or a synthetic benchmark generated into OUT/data (roles A, B, C, D)
  synthetic: {preset: paper, scale: 1.0, image_size: 256}
preprocess: {size: 128, mask: segment, equalize: global, blur_radius: 3}
training: {architecture: conv8, epochs: 15, threshold_rule: youden}  # TrainConfig defaults for every run
pretraining:                # encoder label -> the roles it is pre-trained on (+ optional overrides)
  B: {data: [B], training: {epochs: 5}}
grid:
  encoders: [none, B]       # "none" = from scratch
  architectures: [conv8]
  compositions: [AB, AC]    # training compositions (Table 1)
  tests: [A, AB, AC]        # every cell is tested on all of these
evaluation: {resamples: 1000, threshold_rule: bundle}
audit: {compositions: [AB, AC], on: [AB, AC], masks: segment, thresholds: {occlusion_auc: 0.7}}
jobs: 1                     # cells trained in parallel processes
```
Relative paths are resolved against the experiment file's folder.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from unveil.preprocess.cache import PreprocessSettings
from unveil.training.config import ConfigError, TrainConfig
from unveil.training.run import DataSpec

ROLES = ("A", "B", "C", "D")
TOP_LEVEL = ("name", "seed", "data", "preprocess", "training", "pretraining", "grid", "evaluation", "audit", "jobs",
             "description")


class ExperimentError(ValueError):
    """An invalid experiment file (the message names the file and the key)."""


@dataclass
class Experiment:
    name: str
    seed: int
    data: dict[str, DataSpec]
    synthetic: dict[str, Any] | None
    preprocess: PreprocessSettings
    training: dict[str, Any]
    pretraining: dict[str, dict[str, Any]]
    encoders: list[str]
    architectures: list[str]
    compositions: list[str]
    tests: list[str]
    evaluation: dict[str, Any] = field(default_factory=dict)
    audit: dict[str, Any] = field(default_factory=dict)
    jobs: int = 1
    source: Path | None = None
    document: dict[str, Any] = field(default_factory=dict)

    def train_config(self, architecture: str, overrides: dict[str, Any] | None = None) -> TrainConfig:
        values = {**self.training, **(overrides or {}), "architecture": architecture, "seed": self.seed,
                  "image_size": self.preprocess.size}
        try:
            return TrainConfig.from_dict(values)
        except (ConfigError, TypeError) as error:
            raise ExperimentError(f"{self.source}: training options: {error}") from None

    def cells(self) -> list[tuple[str, str, str]]:
        """(architecture, encoder, composition) of every training cell."""
        return [(a, e, c) for a in self.architectures for e in self.encoders for c in self.compositions]


def _list(value: Any, key: str, origin: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, (str, int)) for v in value):
        raise ExperimentError(f"{origin}: {key} must be a non-empty list of names")
    return [str(v) for v in value]


SHIPPED = ("demo", "paper")


def experiment_path(name: str | Path) -> Path:
    """A file path, or the name of a shipped experiment (``demo``, ``paper``)."""
    path = Path(name)
    if not path.exists() and str(name) in SHIPPED:
        return Path(__file__).with_name(f"{name}.yaml")
    return path


def load_experiment(path: str | Path, *, seed: int | None = None) -> Experiment:
    """Read and check an experiment file (or a shipped one by name); ``seed`` overrides the file's."""
    path = experiment_path(path)
    origin = str(path)
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ExperimentError(f"{origin}: experiment file not found") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise ExperimentError(f"{origin}: unreadable experiment file ({error})") from None
    if not isinstance(document, dict):
        raise ExperimentError(f"{origin}: an experiment file is a mapping (name, data, grid, ...)")
    unknown = sorted(set(document) - set(TOP_LEVEL))
    if unknown:
        raise ExperimentError(f"{origin}: unknown key(s) {', '.join(unknown)}; known: {', '.join(TOP_LEVEL)}")
    base = path.parent
    data_section = dict(document.get("data") or {})
    synthetic = data_section.pop("synthetic", None)
    data: dict[str, DataSpec] = {}
    for role, spec in data_section.items():
        if not isinstance(spec, dict) or "source" not in spec or "path" not in spec:
            raise ExperimentError(f"{origin}: data.{role} needs source and path")
        root = Path(str(spec["path"])).expanduser()
        data[str(role)] = DataSpec(str(spec["source"]), str(root if root.is_absolute() else base / root),
                                   dict(spec.get("options") or {}))
    if synthetic is None and not data:
        raise ExperimentError(f"{origin}: data needs datasets (A, B, C, D) or a synthetic benchmark")
    if synthetic is not None and not isinstance(synthetic, dict):
        raise ExperimentError(f"{origin}: data.synthetic must be a mapping (preset, scale, image_size)")
    try:
        preprocess = PreprocessSettings(**(document.get("preprocess") or {}))
    except TypeError as error:
        raise ExperimentError(f"{origin}: preprocess: {error}") from None
    grid = document.get("grid") or {}
    if not isinstance(grid, dict):
        raise ExperimentError(f"{origin}: grid must be a mapping")
    missing = [k for k in ("architectures", "compositions", "tests") if k not in grid]
    if missing:
        raise ExperimentError(f"{origin}: grid needs {', '.join(missing)}")
    encoders = _list(grid.get("encoders", ["none"]), "grid.encoders", origin)
    pretraining = {str(k): dict(v or {}) for k, v in (document.get("pretraining") or {}).items()}
    undefined = [e for e in encoders if e != "none" and e not in pretraining]
    if undefined:
        raise ExperimentError(f"{origin}: encoder(s) {', '.join(undefined)} have no pretraining entry")
    for label, spec in pretraining.items():
        spec["data"] = _list(spec.get("data", [label]), f"pretraining.{label}.data", origin)
    experiment = Experiment(
        name=str(document.get("name", path.stem)), seed=int(seed if seed is not None else document.get("seed", 0)),
        data=data, synthetic=synthetic, preprocess=preprocess, training=dict(document.get("training") or {}),
        pretraining=pretraining, encoders=encoders,
        architectures=_list(grid["architectures"], "grid.architectures", origin),
        compositions=_list(grid["compositions"], "grid.compositions", origin),
        tests=_list(grid["tests"], "grid.tests", origin), evaluation=dict(document.get("evaluation") or {}),
        audit=dict(document.get("audit") or {}), jobs=int(document.get("jobs", 1)), source=path, document=document)
    for architecture in experiment.architectures:
        experiment.train_config(architecture)  # fails early on bad training options
    return experiment
