"""Training runs end to end: records -> split -> pre-processing cache -> fit -> model bundle.

``pretrain`` trains an encoder on a pneumonia task (ChestXRay normal/bacterial/viral, or RSNA
normal/pneumonia); ``train`` fine-tunes on a composition (A, AB, AC, AD, D) for COVID+/COVID-,
starting from a pre-training bundle's encoder (never frozen) or from scratch. Both write one run
folder: ``model/`` (the bundle), ``splits.csv`` (+ SHA-256 in the metadata), ``checkpoint.pt``,
``metrics.jsonl``, ``val_predictions.csv`` and ``run.meta.json`` (resolved configuration, versions).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from unveil.artifacts import META, Input, artifact_input, write_artifact
from unveil.data.compose import compose, load_recipes
from unveil.data.records import concat_records
from unveil.data.spec import DataSpec
from unveil.data.splits import drop_duplicate_images, patient_exclusive_split, write_split_file
from unveil.models import CxrClassifier, build_model, load_encoder_state
from unveil.models.xrv import check_image_size
from unveil.preprocess.cache import PreprocessSettings, preprocess_records, resolve_settings
from unveil.progress import duration
from unveil.provenance import file_sha256, write_run_metadata, write_text_atomic
from unveil.thresholds import ThresholdChoice, fixed_threshold
from unveil.tracking import TrackingSettings
from unveil.training.bundle import WEIGHTS_FILE, load_bundle, resolve_bundle_dir, save_bundle
from unveil.training.collapse import CollapseCheck, check_collapse
from unveil.training.config import TrainConfig
from unveil.training.data import ImageSet, TrainingDataError, fit_normalization, load_image_set
from unveil.training.loop import FitResult, decision_threshold, encoder_features, fit, init_distributed, world
from unveil.training.ood import fit_ood_reference

log = logging.getLogger(__name__)

#: Default pre-training classes per source (the paper: ChestXRay 3-class, RSNA 2-class).
PRETRAIN_CLASSES = {"chestxray": ("normal", "bacterial", "viral"), "rsna": ("normal", "pneumonia")}
COVID_CLASSES = ("covid-", "covid+")
#: The paper's dataset letters, for naming pre-trained encoders and tables.
PAPER_LETTERS = {"hospital-csv": "A", "chestxray": "B", "rsna": "C", "covid-chestxray": "D"}


@dataclass
class RunResult:
    out: Path
    bundle: Path
    best_epoch: int
    best_metrics: dict[str, Any]
    counts: dict[str, dict[str, int]]
    skipped: list[str]
    seconds: float
    threshold: ThresholdChoice | None = None  # the bundle's decision threshold and its rule
    collapse: CollapseCheck | None = None  # the spread of the selected epoch's validation probabilities

    def summary(self) -> str:
        """What a user reads at the end of `unveil train`/`pretrain`: counts, the selected epoch and its
        validation figures, the threshold and its rule, warnings, where the bundle is, the elapsed time."""
        counts = ", ".join(f"{split} {sum(c.values())} ({', '.join(f'{k} {v}' for k, v in c.items())})"
                           for split, c in self.counts.items())
        best = self.best_metrics
        lines = [f"trained in {duration(self.seconds)}: {counts}",
                 f"best epoch {self.best_epoch}: validation AUC {best.get('val_auc', math.nan):.3f}, balanced "
                 f"accuracy {best.get('val_balanced_accuracy', math.nan):.3f}, spread of the probabilities "
                 f"{best.get('val_spread', math.nan):.3g}"]
        if self.threshold is not None:
            lines.append(f"decision threshold {self.threshold.value:.4f} ({self.threshold.description})")
        if self.collapse is not None and self.collapse.collapsed:
            lines.append(f"WARNING: {self.collapse.reason}; `unveil predict` gives it no decision")
        if self.skipped:
            lines.append(f"{len(self.skipped)} image(s) skipped (listed in {self.out / 'skipped.txt'})")
        lines.append(f"bundle: {self.bundle}")
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        """The JSON document of `unveil train --json`."""
        return {"out": str(self.out), "bundle": str(self.bundle), "best_epoch": self.best_epoch,
                "best": {k: v for k, v in self.best_metrics.items() if k.startswith("val_")},
                "threshold": self.threshold.as_dict() if self.threshold else None,
                "collapse": self.collapse.as_dict() if self.collapse else None,
                "counts": self.counts, "skipped": len(self.skipped), "seconds": round(self.seconds, 1)}


def encoder_label(description: dict[str, Any]) -> str:
    """How the paper names a pre-trained encoder: by its data (B = ChestXRay, C = RSNA), else the sources."""
    datasets = description.get("provenance", {}).get("data", {}).get("datasets", [])
    sources = sorted({str(d.get("source")) for d in datasets})
    return "+".join(PAPER_LETTERS.get(source, source) for source in sources) or "unknown"


def ranks_in_sync(state: dict[str, torch.Tensor]) -> bool:
    """Under DDP: do all ranks hold the same weights? (a SHA-256 of every tensor, gathered)"""
    digest = hashlib.sha256()
    for name in sorted(state):
        digest.update(name.encode())
        digest.update(state[name].detach().cpu().contiguous().numpy().tobytes())
    gathered: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(gathered, digest.hexdigest())
    return len(set(gathered)) == 1


def _image_sets(records: pd.DataFrame, classes: tuple[str, ...], config: TrainConfig, preprocess: PreprocessSettings,
                *, cache: Path, workers: int, progress: bool, strict: bool) -> dict[str, ImageSet]:
    """The train and val images, pre-processed into ``cache`` (by rank 0; the other ranks read its manifest)."""
    rank, world_size = world()
    fitting = records[records["split"].isin(["train", "val"])].reset_index(drop=True)
    if rank == 0:
        report = preprocess_records(fitting, cache, preprocess, workers=workers, progress=progress, strict=strict)
    if world_size > 1:
        torch.distributed.barrier()
    if rank != 0:  # everything is cached now: this only reads the manifest
        report = preprocess_records(fitting, cache, preprocess, workers=1)
    sets = {}
    for split in ("train", "val"):
        part = fitting[fitting["split"] == split].reset_index(drop=True)
        if part.empty:
            raise TrainingDataError(f"the {split} split is empty: not enough patients to train")
        sets[split] = load_image_set(part, report.manifest, part["label"].to_numpy(), classes, size=config.image_size,
                                     cache=cache)  # memory-mapped from the cache
    return sets


def _initial_model(config: TrainConfig, classes: tuple[str, ...], *, encoder: Path | None,
                   init_weights: Path | None) -> tuple[CxrClassifier, dict[str, Any] | None]:
    """The model to fit (seeded), its encoder taken from a pre-training bundle when given; and that encoder's
    provenance (None from scratch)."""
    torch.manual_seed(config.seed)
    model = build_model(config.architecture, num_classes=len(classes), width=config.width, init_weights=init_weights)
    if encoder is None:
        return model, None
    pretrained = load_bundle(encoder)
    spec = pretrained.description
    if spec["architecture"] != config.architecture or float(spec.get("width", 1.0)) != config.width:
        raise TrainingDataError(f"{encoder}: encoder of a {spec['architecture']} (width {spec.get('width')}), "
                                f"not of the {config.architecture} (width {config.width}) being trained")
    load_encoder_state(model, pretrained.model.state_dict(), source=str(encoder))
    # an encoder with a fixed input convention (torchxrayvision) keeps it when fine-tuned
    model.input_normalization = pretrained.model.input_normalization
    model.encoder_source = pretrained.model.encoder_source
    return model, {"bundle": str(encoder), "task": spec.get("provenance", {}).get("task"),
                   "label": encoder_label(spec), "weights_sha256": file_sha256(pretrained.directory / WEIGHTS_FILE)}


def _bundle_threshold(result: FitResult, val: ImageSet, classes: tuple[str, ...], positive_class: str | None,
                      config: TrainConfig) -> ThresholdChoice:
    """Chosen a priori on the selected epoch's validation predictions; a pre-training model decides by its most
    probable class, so no threshold is used."""
    if positive_class is None:
        return replace(fixed_threshold(), description="unused: pre-training (most probable class)")
    return decision_threshold(result.val_probabilities[:, classes.index(positive_class)], val.labels.numpy(), config)


def _write_run(out: Path, model: CxrClassifier, sets: dict[str, ImageSet], result: FitResult, *,
               classes: tuple[str, ...], positive_class: str | None, threshold: ThresholdChoice,
               collapse: CollapseCheck, config: TrainConfig,
               preprocess: PreprocessSettings, normalization: tuple[float, float], provenance: dict[str, Any],
               arguments: dict[str, Any], extra: dict[str, Any]) -> None:
    """Rank 0: the bundle (with its OOD reference), val_predictions.csv, skipped.txt and run.meta.json."""
    save_bundle(out / "model", model, width=config.width, classes=list(classes), positive_class=positive_class,
                image_size=config.image_size, preprocess=preprocess, normalization=normalization, threshold=threshold,
                provenance=provenance, state=result.best_state, collapse=collapse)
    _save_ood_reference(out / "model", model, sets, normalization)
    predictions = sets["val"].records[["record_id", "source", "patient_id"]].assign(label=sets["val"].labels.numpy())
    for index, name in enumerate(classes):
        predictions[f"p_{name}"] = result.val_probabilities[:, index]
    write_text_atomic(out / "val_predictions.csv", predictions.to_csv(index=False, lineterminator="\n"))
    write_text_atomic(out / "skipped.txt", "".join(f"{s}\n" for s in extra["skipped"]))
    command = f"unveil {provenance['task'].split(':')[0]}"
    write_run_metadata(out / "run.meta.json", command, arguments, extra=extra)
    write_bundle_artifact(out / "model", command, arguments, preprocess,
                          encoder=arguments.get("encoder"), init_weights=provenance.get("init_weights"))


def write_bundle_artifact(bundle: Path, command: str, arguments: dict[str, Any], preprocess: PreprocessSettings, *,
                          encoder: str | None, init_weights: str | None) -> Path:
    """The bundle as an artifact (``model/meta.json``): its files' hashes, built from the run folder's split
    file, the encoder bundle it started from and the weights file, and the pre-processing it was trained on."""
    settings = json.dumps(asdict(preprocess), sort_keys=True, default=str).encode("utf-8")
    inputs = [artifact_input(bundle.parent / "splits.csv", "split", "split"),
              Input("preprocessed", None, hashlib.sha256(settings).hexdigest(), "preprocessed")]
    if encoder:
        inputs.append(artifact_input(resolve_bundle_dir(encoder), "bundle", "encoder"))
    if init_weights:
        inputs.append(artifact_input(init_weights, "weights", "init_weights"))
    files = sorted(p.name for p in bundle.iterdir() if p.is_file() and p.name != META and not p.name.startswith("."))
    return write_artifact(bundle, "bundle", files, command=command, config=arguments, inputs=inputs)


def _train_run(out: Path, records: pd.DataFrame, labels: np.ndarray, classes: tuple[str, ...],
               positive_class: str | None, task: str, config: TrainConfig, preprocess: PreprocessSettings, *,
               cache: Path | None, workers: int, progress: bool, resume: bool, encoder: Path | None,
               init_weights: Path | None, data: dict[str, Any], strict: bool,
               on_step: Callable[[int, int], None] | None = None,
               tracking: TrackingSettings | None = None) -> RunResult:
    """Records with a ``split`` column -> images -> fit -> bundle and run files (rank 0); every epoch logged to
    metrics.jsonl and the trackers ``tracking`` asks for."""
    started = time.perf_counter()
    init_distributed()
    rank, world_size = world()
    out.mkdir(parents=True, exist_ok=True)
    cache = cache or out / "cache"
    preprocess = resolve_settings(replace(preprocess, size=config.image_size))
    records = records.assign(label=labels)
    sets = _image_sets(records, classes, config, preprocess, cache=cache, workers=workers, progress=progress,
                       strict=strict)
    skipped = sets["train"].skipped + sets["val"].skipped
    model, encoder_info = _initial_model(config, classes, encoder=encoder, init_weights=init_weights)
    check_image_size(model, config.image_size)
    normalization = model.input_normalization or fit_normalization(sets["train"].images)
    split_hash = write_split_file(out / "splits.csv", records, records["split"], command=f"unveil {task.split(':')[0]}",
                                  config={"task": task, "data": data, "seed": config.seed}) if rank == 0 else None
    result = fit(model, sets["train"], sets["val"], config, out, normalization=normalization, resume=resume,
                 progress=progress, on_step=on_step, tracking=tracking,
                 params={"task": task, "preprocess": asdict(preprocess), "encoder": str(encoder) if encoder else None})
    counts = {split: s.class_counts() for split, s in sets.items()}
    in_sync = ranks_in_sync(result.best_state) if world_size > 1 else None
    threshold = _bundle_threshold(result, sets["val"], classes, positive_class, config)
    collapse = check_collapse(result.val_probabilities, tolerance=config.collapse_tolerance,
                              positive_index=classes.index(positive_class) if positive_class else None)
    if rank == 0:
        provenance = {"task": task, "data": data, "split_file": "splits.csv", "split_sha256": split_hash,
                      "counts": counts, "skipped_images": len(skipped), "encoder_init": encoder_info,
                      "init_weights": str(init_weights) if init_weights else None,
                      "config": config.to_dict(), "seed": config.seed, "best_epoch": result.best_epoch,
                      "best_metrics": result.best_metrics, "world_size": world_size,
                      "ranks_in_sync": in_sync, "scoring_precision": "float32",
                      "bn_statistics_images": result.best_metrics.get("bn_statistics_images"),
                      **({"debias": result.debias} if result.debias else {})}  # the mitigation used, if any
        _write_run(out, model, sets, result, classes=classes, positive_class=positive_class, threshold=threshold,
                   collapse=collapse,
                   config=config, preprocess=preprocess, normalization=normalization, provenance=provenance,
                   arguments={"train": config.to_dict(), "preprocess": asdict(preprocess), "data": data,
                              "encoder": str(encoder) if encoder else None, "cache": str(cache)},
                   extra={"counts": counts, "skipped": skipped, "best_epoch": result.best_epoch,
                          "best_metrics": result.best_metrics, "split_sha256": split_hash,
                          "seconds": round(time.perf_counter() - started, 1), "world_size": world_size,
                          "ranks_in_sync": in_sync, "collapse": collapse.as_dict()})
    for line in skipped:
        log.warning("skipped: %s", line)
    log.info("decision threshold %.4f (%s)", threshold.value, threshold.description)
    if collapse.collapsed:
        log.warning("%s: %s (best epoch %d); `unveil predict` will give it no decision", out.name, collapse.reason,
                    result.best_epoch)
    return RunResult(out, out / "model", result.best_epoch, result.best_metrics, counts, skipped,
                     time.perf_counter() - started, threshold, collapse)


def _save_ood_reference(directory: Path, model: CxrClassifier, sets: dict[str, Any],
                        normalization: tuple[float, float]) -> None:
    """Fit the out-of-distribution reference (training features and image statistics per source, threshold on
    validation)."""
    device = next(model.parameters()).device
    train_features = encoder_features(model, sets["train"].images, *normalization, device=device)
    val_features = encoder_features(model, sets["val"].images, *normalization, device=device)
    fit_ood_reference(train_features, sets["train"].records["source"].to_numpy(), val_features, sets["train"].images,
                      sets["val"].images).save(directory)


def pretrain(data: Sequence[DataSpec], out: str | Path, *, config: TrainConfig = TrainConfig(),
             preprocess: PreprocessSettings = PreprocessSettings(), classes: Sequence[str] | None = None,
             cache: str | Path | None = None, workers: int = 1, progress: bool = False, resume: bool = True,
             val_fraction: float = 0.2, init_weights: str | Path | None = None, strict: bool = False,
             on_step: Callable[[int, int], None] | None = None, tracking: TrackingSettings | None = None) -> RunResult:
    """Train an encoder on a pneumonia task; records whose finding is not a class are left out. ``tracking``:
    TensorBoard and/or MLflow besides metrics.jsonl (:mod:`unveil.tracking`)."""
    if not data:
        raise TrainingDataError("pre-training needs at least one dataset")
    if classes is None:
        known = {PRETRAIN_CLASSES.get(spec.source) for spec in data}
        if None in known or len(known) != 1:
            raise TrainingDataError(f"no default classes for {', '.join(s.source for s in data)}: pass classes "
                                    f"(e.g. normal,pneumonia); defaults exist for {', '.join(PRETRAIN_CLASSES)}")
        classes = next(c for c in known if c is not None)
    classes = tuple(classes)
    records = concat_records(spec.load() for spec in data)
    kept = records[records["finding"].isin(classes)].reset_index(drop=True)
    left_out = len(records) - len(kept)
    if left_out:
        log.warning("%d record(s) with a finding outside %s left out of pre-training", left_out, ", ".join(classes))
    if kept.empty:
        raise TrainingDataError(f"no record has a finding among {', '.join(classes)}")
    kept, removed = drop_duplicate_images(kept)
    for message in removed:
        log.warning("%s", message)
    split = patient_exclusive_split(kept, seed=config.seed, test_fraction=0.0, val_fraction=val_fraction,
                                    stratify_by=("finding",))
    kept = kept.assign(split=split.to_numpy())
    labels = kept["finding"].map({name: i for i, name in enumerate(classes)}).to_numpy(dtype=np.int64)
    described = {"datasets": [asdict(spec) for spec in data], "classes": list(classes), "left_out": left_out,
                 "val_fraction": val_fraction}
    return _train_run(Path(out), kept, labels, classes, None, "pretrain:" + "/".join(classes), config, preprocess,
                      cache=Path(cache) if cache else None, workers=workers, progress=progress, resume=resume,
                      encoder=None, init_weights=Path(init_weights) if init_weights else None, data=described,
                      strict=strict, on_step=on_step, tracking=tracking)


def train(recipe: str, data: dict[str, DataSpec], out: str | Path, *, config: TrainConfig = TrainConfig(),
          preprocess: PreprocessSettings = PreprocessSettings(), encoder: str | Path | None = None,
          cache: str | Path | None = None, workers: int = 1, progress: bool = False, resume: bool = True,
          recipes: str | Path | None = None, test_fraction: float = 0.3, val_fraction: float = 0.2,
          init_weights: str | Path | None = None, strict: bool = False,
          on_step: Callable[[int, int], None] | None = None, tracking: TrackingSettings | None = None) -> RunResult:
    """Fine-tune on composition ``recipe`` with roles bound to datasets (``{"A": DataSpec, ...}``). ``tracking``:
    TensorBoard and/or MLflow besides metrics.jsonl (:mod:`unveil.tracking`)."""
    chosen = load_recipes(recipes).recipe(recipe)
    missing = [role for role in chosen.roles if role not in data]
    if missing:
        raise TrainingDataError(f"composition {recipe} needs data for role(s) {', '.join(missing)}")
    tables = {role: data[role].load() for role in chosen.roles}
    composition = compose(chosen, tables, seed=config.seed, test_fraction=test_fraction, val_fraction=val_fraction)
    for warning in composition.warnings:
        log.warning("%s", warning)
    records = composition.records
    labels = records["covid"].astype("int64").to_numpy()
    described = {"recipe": chosen.name, "roles": {role: asdict(data[role]) for role in chosen.roles},
                 "composition": composition.counts(), "warnings": composition.warnings,
                 "test_fraction": test_fraction, "val_fraction": val_fraction}
    return _train_run(Path(out), records, labels, COVID_CLASSES, "covid+", f"train:{chosen.name}", config,
                      preprocess, cache=Path(cache) if cache else None, workers=workers, progress=progress,
                      resume=resume, encoder=Path(encoder) if encoder else None,
                      init_weights=Path(init_weights) if init_weights else None, data=described, strict=strict,
                      on_step=on_step, tracking=tracking)
