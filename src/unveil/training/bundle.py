"""Model bundles: one folder with everything needed to use, audit and trace a trained classifier.

``model.safetensors`` holds the weights (safetensors never unpickles anything); ``bundle.json``
the architecture, classes, pre-processing settings, normalization statistics (fitted on the
training split, or fixed by the encoder's source: a torchxrayvision encoder takes [-1024, 1024]),
``encoder_source`` (format, file name and SHA-256 of the ``init_weights`` the encoder started from),
decision threshold with the rule that chose it (``unveil.thresholds``), and the training provenance
(data, split file hashes, resolved configuration, package versions, seed).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unveil.artifacts import load_artifact
from unveil.documents import load_json
from unveil.errors import UnveilError
from unveil.models import CxrClassifier, ModelError, build_model, model_names
from unveil.preprocess.cache import EQUALIZATIONS, MASK_MODES, PreprocessSettings
from unveil.provenance import write_text_atomic
from unveil.thresholds import ThresholdChoice, ThresholdRequest, ThresholdRule, fixed_threshold
from unveil.training.collapse import CollapseCheck
from unveil.training.loop import predict_probabilities

BUNDLE_FORMAT = "unveil-classifier"
BUNDLE_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
DESCRIPTION_FILE = "bundle.json"


class BundleError(UnveilError, RuntimeError):
    """A model bundle is missing, unreadable or inconsistent (the message names the file)."""


class BundleFieldError(BundleError, ValueError):
    """A ``bundle.json`` field is missing, of the wrong type, out of range or inconsistent (the message names
    the file and the field)."""


class BundleInputError(BundleError, ValueError):
    """Images given to a bundle do not match what it was trained on (size, shape, range)."""


def model_images(images: np.ndarray | torch.Tensor, size: int) -> torch.Tensor:
    """Pre-processed images as the model's input scale (N x 1 x S x S, values 0..255).

    ``images`` is one image (S x S), a stack (N x S x S) or a batch (N x 1 x S x S), numpy or torch,
    either uint8 (0..255, as the cache stores them) or float in [0, 1] (as the transforms return them;
    kept unquantized). Anything else, and any size other than the bundle's, is refused: a model
    silently scoring a 64-px image with a 128-px model's weights, or a [0, 1] image read as 0..255,
    gives plausible but meaningless probabilities.
    """
    tensor = torch.from_numpy(np.ascontiguousarray(images)) if isinstance(images, np.ndarray) else images
    if not isinstance(tensor, torch.Tensor):
        raise BundleInputError(f"images must be a numpy array or a torch tensor, got {type(images).__name__}")
    shape = tuple(tensor.shape)
    if tensor.ndim == 2:
        tensor = tensor[None, None]
    elif tensor.ndim == 3:
        tensor = tensor[:, None]
    elif tensor.ndim != 4 or tensor.shape[1] != 1:
        raise BundleInputError(f"images of shape {shape}: expected S x S, N x S x S or N x 1 x S x S (gray)")
    if tuple(tensor.shape[-2:]) != (size, size):
        raise BundleInputError(
            f"images are {tensor.shape[-2]}x{tensor.shape[-1]} pixels; this model takes {size}x{size} pre-processed "
            f"images (pre-process them with the bundle's settings, e.g. unveil.preprocess.paper_pipeline({size}), "
            "or score files with unveil.inference.predict_files)")
    if tensor.dtype == torch.uint8:
        return tensor
    if not tensor.is_floating_point():
        raise BundleInputError(f"images of dtype {tensor.dtype}: expected uint8 (0..255) or float in [0, 1]")
    if len(tensor) and (float(tensor.min()) < 0.0 or float(tensor.max()) > 1.0):
        raise BundleInputError(f"float images must lie in [0, 1]; got values in [{float(tensor.min()):.3g}, "
                               f"{float(tensor.max()):.3g}] (uint8 images are taken as 0..255)")
    return tensor.float() * 255.0


@dataclass
class ModelBundle:
    """A loaded classifier with its description."""

    model: CxrClassifier
    description: dict[str, Any]
    path: Path | None = None

    @property
    def classes(self) -> list[str]:
        return list(self.description["classes"])

    @property
    def normalization(self) -> tuple[float, float]:
        values = self.description["normalization"]
        return float(values["mean"]), float(values["std"])

    @property
    def image_size(self) -> int:
        return int(self.description["image_size"])

    @property
    def threshold(self) -> float:
        return float(self.description["threshold"]["value"])

    @property
    def threshold_choice(self) -> ThresholdChoice:
        """The bundle's decision threshold with the rule that chose it."""
        return ThresholdChoice.from_dict(self.description["threshold"])

    def validation_predictions(self) -> tuple[np.ndarray, np.ndarray]:
        """(labels, probabilities of the positive class) of the model's validation split, from the
        ``val_predictions.csv`` its training run wrote beside the bundle."""
        import pandas as pd

        path = self.path.parent / "val_predictions.csv" if self.path is not None else None
        if path is None or not path.is_file():
            raise BundleError(f"{self.path}: no val_predictions.csv beside the bundle (its validation predictions)")
        column = f"p_{self.classes[self.positive_index or 0]}"
        table = pd.read_csv(path)
        if "label" not in table or column not in table:
            raise BundleError(f"{path}: needs the columns label and {column}")
        return table["label"].to_numpy(), table[column].to_numpy()

    def resolve_threshold(self, request: ThresholdRequest | ThresholdRule | str = ThresholdRule.BUNDLE
                          ) -> ThresholdChoice:
        """The decision threshold ``request`` asks for (a bare rule: with its defaults), chosen a priori: the
        bundle's own (``bundle``), a fixed value, or by a rule on the model's validation predictions (never on
        test data). Errors name the bundle."""
        try:
            request = ThresholdRequest.of(request)
            if request.rule is ThresholdRule.BUNDLE:
                return self.threshold_choice
            if request.rule is ThresholdRule.FIXED:
                return fixed_threshold(request.value)
            labels, probabilities = self.validation_predictions()
            return request.choose(labels, probabilities)
        except ValueError as error:
            raise BundleError(f"{self.path}: {error}") from None

    @property
    def collapse_reason(self) -> str:
        """Why the model's decisions cannot be trusted at all (its validation probabilities had negligible
        spread when trained), or "" (not collapsed, or a bundle written before the check)."""
        record = self.description.get("collapse") or {}
        return str(record.get("reason") or "model collapsed") if record.get("collapsed") else ""

    @property
    def positive_index(self) -> int | None:
        positive = self.description.get("positive_class")
        return self.classes.index(positive) if positive is not None else None

    @property
    def positive_column(self) -> int:
        """``positive_index`` of a COVID classifier; a :class:`BundleError` for a pre-training model (no positive
        class), which the commands refuse before they score."""
        positive = self.positive_index
        if positive is None:
            raise BundleError(f"{self.path}: a pre-training model (classes {self.classes}) has no positive class")
        return positive

    @property
    def directory(self) -> Path:
        """The bundle's folder; a :class:`BundleError` for a bundle never saved (``path`` None)."""
        if self.path is None:
            raise BundleError("the model bundle was built in memory: it has no folder")
        return self.path

    @property
    def preprocess_settings(self) -> PreprocessSettings:
        return PreprocessSettings(**self.description["preprocess"])

    def predict_probabilities(self, images: np.ndarray | torch.Tensor, *, device: str | torch.device = "cpu",
                              batch_size: int = 64, amp: bool = False) -> np.ndarray:
        """Class probabilities (N x classes, columns in ``classes`` order) of pre-processed images at the
        bundle's size: uint8 0..255 or float [0, 1], S x S, N x S x S or N x 1 x S x S, numpy or torch
        (see :func:`model_images`; a wrong size raises :class:`BundleInputError`). fp32 by default, so
        results match exported models; ``amp``: bf16 autocast."""
        mean, std = self.normalization
        device = torch.device(device)
        self.model.to(device)
        return predict_probabilities(self.model, model_images(images, self.image_size), mean, std, device=device,
                                     batch_size=batch_size, amp=amp)


def model_spec(model: CxrClassifier, width: float) -> dict[str, Any]:
    return {"architecture": model.architecture, "width": width, "num_classes": model.num_classes,
            "in_channels": model.in_channels}


def save_bundle(directory: str | Path, model: CxrClassifier, *, width: float, classes: list[str],
                positive_class: str | None, image_size: int, preprocess: PreprocessSettings,
                normalization: tuple[float, float], threshold: ThresholdChoice | None = None,
                provenance: dict[str, Any] | None = None, state: dict[str, torch.Tensor] | None = None,
                collapse: CollapseCheck | None = None) -> Path:
    """Write ``model.safetensors`` + ``bundle.json`` into ``directory`` (each file atomically).
    ``threshold``: the decision threshold and its rule (default: the fixed 0.5); ``collapse``: the spread check
    of its validation probabilities (absent: not checked)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if len(classes) != model.num_classes:
        raise BundleError(f"{len(classes)} class names for a model with {model.num_classes} outputs")
    fixed = model.input_normalization
    if fixed is not None and not np.allclose(normalization, fixed, rtol=1e-9, atol=0.0):
        raise BundleError(f"normalization {tuple(normalization)} for a model whose encoder requires {tuple(fixed)} "
                          f"(its {(model.encoder_source or {}).get('format', 'source')} input convention)")
    tensors = {k: v.detach().cpu().contiguous() for k, v in (state or model.state_dict()).items()}
    temporary = directory / (WEIGHTS_FILE + ".tmp")
    save_file(tensors, str(temporary))
    temporary.replace(directory / WEIGHTS_FILE)
    description = {
        "format": BUNDLE_FORMAT, "format_version": BUNDLE_VERSION, **model_spec(model, width),
        "classes": list(classes), "positive_class": positive_class, "image_size": int(image_size),
        "preprocess": asdict(preprocess),
        "normalization": {"mean": float(normalization[0]), "std": float(normalization[1]),
                          "fitted_on": "training split" if fixed is None else
                          f"fixed by the encoder's source ({(model.encoder_source or {}).get('format')})"},
        "encoder_source": model.encoder_source,
        "threshold": (threshold or fixed_threshold()).as_dict(),
        "scoring_precision": "float32",
        "provenance": provenance or {},
    }
    if collapse is not None:
        description["collapse"] = collapse.as_dict()
    text = json.dumps(description, indent=2, sort_keys=True, default=str) + "\n"
    write_text_atomic(directory / DESCRIPTION_FILE, text)
    return directory


def resolve_bundle_dir(directory: str | Path) -> Path:
    """The bundle folder ``directory`` names: the bundle folder itself, or a run folder holding ``model/``
    (what `unveil train` and `unveil pretrain` write), so a run folder is a valid model argument."""
    directory = Path(directory)
    if not (directory / DESCRIPTION_FILE).is_file() and (directory / "model" / DESCRIPTION_FILE).is_file():
        return directory / "model"
    return directory


def read_description(directory: str | Path) -> dict[str, Any]:
    """The bundle's ``bundle.json`` (``directory``: a bundle folder or a run folder holding ``model/``)."""
    directory = resolve_bundle_dir(directory)
    if not directory.exists():
        raise BundleError(f"{directory}: model not found (no such file or folder)")
    path = directory / DESCRIPTION_FILE
    if not path.is_file():
        raise BundleError(f"{directory}: not a model bundle (no {DESCRIPTION_FILE})")
    description = load_json(path, BundleError, "bundle description")
    if description.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{path}: not an unveil classifier bundle (format {description.get('format')!r})")
    version = description.get("format_version", 0)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise BundleFieldError(f"{path}: field format_version must be a positive integer, got {version!r}")
    if version > BUNDLE_VERSION:
        raise BundleError(f"{path}: bundle format {description['format_version']} is newer than this unveil "
                          f"({BUNDLE_VERSION}); upgrade unveil")
    validate_description(description, path)
    return description


def _field(description: dict[str, Any], path: Path, name: str, kinds: type | tuple[type, ...],
           *, required: bool = True, default: Any = None, nullable: bool = False) -> Any:
    """``description[name]`` (dotted names reach into objects), checked against ``kinds``; ``required=False``:
    may be absent; ``nullable``: may be null."""
    value: Any = description
    for part in name.split("."):
        if not isinstance(value, dict) or part not in value:
            if required:
                raise BundleFieldError(f"{path}: field {name} is missing")
            return default
        value = value[part]
    if value is None and nullable:
        return default
    numeric = kinds in (int, float) or (isinstance(kinds, tuple) and float in kinds)
    if isinstance(value, bool) and bool not in (kinds if isinstance(kinds, tuple) else (kinds,)) or \
            not isinstance(value, kinds):
        expected = "a number" if numeric else " or ".join(k.__name__ for k in (
            kinds if isinstance(kinds, tuple) else (kinds,)))
        raise BundleFieldError(f"{path}: field {name} must be {expected}, got {value!r}")
    return value


def _number(description: dict[str, Any], path: Path, name: str, low: float, high: float, *,
            integer: bool = False, open_low: bool = False, required: bool = True, default: Any = None) -> Any:
    """A finite number (an integer with ``integer``) in [low, high] (``open_low``: (low, high])."""
    value = _field(description, path, name, int if integer else (int, float), required=required, default=default)
    if value is None:
        return value
    if not np.isfinite(value) or value < low or (open_low and value == low) or value > high:
        bounds = f"{'(' if open_low else '['}{low:g}, {high:g}]"
        raise BundleFieldError(f"{path}: field {name} must be a finite number in {bounds}, got {value!r}")
    return value


def validate_description(description: dict[str, Any], path: str | Path) -> None:
    """Check every field of a ``bundle.json`` before it is trusted: type, range, finiteness and consistency
    (classes with num_classes, positive_class among classes); an edited threshold of NaN or 2, a std of 0 or an
    image size of 20000 would otherwise give confident nonsense or exhaust memory. Raises
    :class:`BundleFieldError` naming the file and the field."""
    path = Path(path)
    architecture = _field(description, path, "architecture", str)
    if architecture not in model_names():
        raise BundleFieldError(f"{path}: field architecture must be one of {', '.join(sorted(model_names()))}, "
                               f"got {architecture!r}")
    _number(description, path, "width", 0.0, 16.0, open_low=True, required=False)
    num_classes = _number(description, path, "num_classes", 1, 1000, integer=True)
    _number(description, path, "in_channels", 1, 1, integer=True, required=False)
    classes = _field(description, path, "classes", list)
    if not all(isinstance(c, str) and c for c in classes) or len(set(classes)) != len(classes):
        raise BundleFieldError(f"{path}: field classes must be distinct non-empty names, got {classes!r}")
    if len(classes) != num_classes:
        raise BundleFieldError(f"{path}: field classes names {len(classes)} class(es) but num_classes is "
                               f"{num_classes}")
    positive = _field(description, path, "positive_class", str, required=False, nullable=True)
    if positive is not None and positive not in classes:
        raise BundleFieldError(f"{path}: field positive_class {positive!r} is not one of classes {classes}")
    if positive is not None and num_classes != 2:
        raise BundleFieldError(f"{path}: field positive_class needs 2 classes, num_classes is {num_classes}")
    _number(description, path, "image_size", 16, 4096, integer=True)
    preprocess = _field(description, path, "preprocess", dict)
    known = set(PreprocessSettings.__dataclass_fields__)
    unknown = sorted(set(preprocess) - known)
    if unknown:
        raise BundleFieldError(f"{path}: field preprocess.{unknown[0]!r} is not a pre-processing setting")
    _number(description, path, "preprocess.size", 16, 4096, integer=True, required=False)
    for name, allowed in (("equalize", EQUALIZATIONS), ("mask", MASK_MODES)):
        value = _field(description, path, f"preprocess.{name}", str, required=False)
        if value is not None and value not in allowed:
            raise BundleFieldError(f"{path}: field preprocess.{name} must be one of {', '.join(allowed)}, "
                                   f"got {value!r}")
    _number(description, path, "preprocess.blur_radius", 0.0, 100.0, required=False)
    for name in ("model", "convention", "model_sha256"):
        _field(description, path, f"preprocess.{name}", str, required=False, nullable=True)
    _number(description, path, "normalization.mean", -1e4, 1e4)
    _number(description, path, "normalization.std", 1e-6, 1e4)
    _number(description, path, "threshold.value", 0.0, 1.0)
    try:
        ThresholdChoice.from_dict(description["threshold"])
    except (ValueError, TypeError) as error:
        raise BundleFieldError(f"{path}: field threshold.rule: {error}") from None
    _field(description, path, "provenance", dict, required=False)
    if _field(description, path, "collapse", dict, required=False, nullable=True) is not None:
        _field(description, path, "collapse.collapsed", bool)
        _field(description, path, "collapse.reason", str, required=False)
    source = _field(description, path, "encoder_source", dict, required=False, nullable=True)
    if source is not None and "normalization" in source:  # an encoder with a fixed input convention
        fixed = (_number(description, path, "encoder_source.normalization.mean", -1e4, 1e4),
                 _number(description, path, "encoder_source.normalization.std", 1e-6, 1e4))
        if not np.allclose(fixed, (description["normalization"]["mean"], description["normalization"]["std"]),
                           rtol=1e-9, atol=0.0):
            raise BundleFieldError(f"{path}: field normalization {description['normalization']} differs from the "
                                   f"encoder's fixed input convention encoder_source.normalization {fixed}")


def read_weights(directory: str | Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(directory) / WEIGHTS_FILE
    if not path.is_file():
        raise BundleError(f"{directory}: model bundle without {WEIGHTS_FILE}")
    try:
        return load_file(str(path))
    except (OSError, SafetensorError, ValueError) as error:
        raise BundleError(f"{path}: unreadable weights ({error})") from None


def load_bundle(directory: str | Path, device: str | torch.device = "cpu") -> ModelBundle:
    """Load a bundle folder (or a run folder holding ``model/``): rebuild the architecture, load the
    weights (no unpickling)."""
    directory = resolve_bundle_dir(directory)
    description = read_description(directory)
    try:
        model = build_model(description["architecture"], num_classes=int(description["num_classes"]),
                            in_channels=int(description.get("in_channels", 1)),
                            width=float(description.get("width", 1.0)))
        model.load_state_dict(read_weights(directory))
        model.encoder_source = description.get("encoder_source")
        if model.encoder_source is not None and "normalization" in model.encoder_source:
            fixed = model.encoder_source["normalization"]
            model.input_normalization = (float(fixed["mean"]), float(fixed["std"]))
    except (ModelError, KeyError, RuntimeError, ValueError) as error:
        if isinstance(error, BundleError):
            raise
        text = " ".join(str(error).split())  # one line, even for torch's multi-line state-dict report
        raise BundleError(f"{directory / WEIGHTS_FILE}: weights do not match the described model "
                          f"(fields architecture/width/num_classes; {text[:300]})") from None
    return ModelBundle(model.to(device).eval(), description, directory)


def load_verified_bundle(directory: str | Path, device: str | torch.device = "cpu") -> ModelBundle:
    """:func:`load_bundle` for the stages built on a bundle (evaluation, audit): its fields checked first, then
    through the artifact loader its files' hashes and what it was built from (its run folder's split file, its
    encoder); a bundle of an older unveil (no meta.json) loads with a warning."""
    bundle = load_bundle(directory, device)
    load_artifact(bundle.directory, "bundle")
    return bundle
