"""Write a synthetic benchmark to disk in the real datasets' layouts, with its ground truth.

Each dataset of the configuration is written in the layout its loader reads (hospital CSV,
ChestXRay folders, RSNA CSV + DICOM, COVID-ChestXRay metadata.csv, Shenzhen masks), so nothing
downstream is synthetic-specific. Beside them:

- ``masks/<dataset>/...png``: the ground-truth lung mask of every image (0 / 255);
- ``truth.csv``: per image, its dataset, path, mask, patient, finding, severity, signature and the
  acquisition actually drawn (view, age group, text, marker, devices...): the bias made explicit;
- ``synth.meta.json``: the resolved configuration, seed, scale, counts and package versions.

Every image is drawn from its own generator seeded by (seed, dataset, image), so the output is
byte-identical for a seed whatever the number of worker processes.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import zlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from unveil.errors import UnveilError, finite
from unveil.io.dicom_writer import write_dicom
from unveil.provenance import environment_versions, write_text_atomic
from unveil.synth.config import SynthConfig, SynthConfigError
from unveil.synth.render import SyntheticImage, render_image

_COHEN_FINDINGS = {"covid": "Pneumonia/Viral/COVID-19", "bacterial": "Pneumonia/Bacterial/Streptococcus",
                   "viral": "Pneumonia/Viral/SARS", "normal": "No Finding", "pneumonia": "Pneumonia"}


@dataclass(frozen=True)
class ImageJob:
    """Everything a worker needs to render and write one image (no shared state)."""

    root: str
    dataset: str
    layout: str
    relative_path: str
    mask_relative: str
    patient: str
    patient_index: int
    finding: str
    severity_range: tuple[float, float]
    signature_names: tuple[str, ...]
    signatures: dict[str, dict[str, Any]]
    size: int
    seed: int
    dataset_index: int
    image_index: int
    site: str


def _rng(*keys: int) -> np.random.Generator:
    return np.random.default_rng([int(k) for k in keys])


def _to_uint8(pixels: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(pixels * 255.0), 0, 255).astype(np.uint8)


def _save(image: np.ndarray, path: Path) -> None:
    """Write an 8-bit image (PNG or JPEG by suffix) through a temporary file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    if path.suffix.lower() in (".jpg", ".jpeg"):
        Image.fromarray(image).save(buffer, format="JPEG", quality=92)
    else:
        Image.fromarray(image).save(buffer, format="PNG", compress_level=1)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_bytes(buffer.getvalue())
    temporary.replace(path)


def _bounding_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    rows, cols = np.nonzero(mask)
    if not len(rows):
        return None
    return int(cols.min()), int(rows.min()), int(cols.max() - cols.min() + 1), int(rows.max() - rows.min() + 1)


def render_job(job: ImageJob) -> dict[str, Any]:
    """Render one image, write it and its mask; return its ground-truth row."""
    rng = _rng(job.seed, job.dataset_index, job.image_index)
    severity = float(rng.uniform(*job.severity_range)) if job.finding != "normal" else 0.0
    signature = job.signature_names[int(rng.integers(len(job.signature_names)))]
    context = {"site": job.site, "id": f"{job.patient_index:05d}"}
    image: SyntheticImage = render_image(job.finding, severity, job.signatures[signature], size=job.size, rng=rng,
                                         patient_rng_seed=[job.seed, job.dataset_index, 10**7 + job.patient_index],
                                         context=context)
    root = Path(job.root)
    target = root / job.dataset / job.relative_path
    if job.layout == "rsna":
        stored = np.rint(image.pixels * 4095.0).astype(np.uint16)
        # A window over the full 12-bit range: readers map stored values linearly, not min-max.
        write_dicom(target, stored, bits_stored=12, view=image.acquisition.view, window_center=2048.0,
                    window_width=4096.0, uid_seed=f"{job.seed}:{job.dataset}:{job.image_index}")
    else:
        _save(_to_uint8(image.pixels), target)
    mask = (image.mask.astype(np.uint8) * 255)
    _save(mask, root / job.mask_relative)
    if job.layout == "shenzhen":
        _save(mask, root / job.dataset / "mask" / (Path(job.relative_path).stem + "_mask.png"))
    age_rng = _rng(job.seed, job.dataset_index, 10**7 + job.patient_index, 1)
    pediatric = image.acquisition.age_group == "pediatric"
    row = {
        "dataset": job.dataset, "layout": job.layout, "relative_path": job.relative_path,
        "mask_path": job.mask_relative, "patient": job.patient, "finding": job.finding,
        "severity": round(severity, 4), "signature": signature,
        "sex": "M" if age_rng.random() < 0.5 else "F",
        "age": int(age_rng.integers(1, 6) if pediatric else age_rng.integers(20, 90)),
        **image.acquisition.summary(),
    }
    if job.layout == "rsna" and job.finding == "pneumonia":
        lungs = image.mask
        box = _bounding_box(lungs)
        row["box"] = json.dumps(box) if box else ""
    return row


def _suffix(image_format: str, patient: int, image: int) -> str:
    if image_format == "mixed":  # like COVID-ChestXRay: two thirds JPEG, one third PNG
        return ".jpg" if (patient + image) % 3 else ".png"
    return {"png": ".png", "jpeg": ".jpeg", "dicom": ".dcm"}[image_format]


def _names(layout: str, dataset: str, finding: str, patient: int, image: int, rng: np.random.Generator,
           image_format: str) -> str:
    """The file name (relative to the dataset root) in the layout's own naming."""
    suffix = _suffix(image_format, patient, image)
    if layout == "hospital-csv":
        return f"images/{dataset}-{patient:05d}-{image}{suffix}"
    if layout == "chestxray":
        subset = "test" if zlib.crc32(f"{dataset}:{patient}".encode()) % 100 < 15 else "train"
        if finding == "normal":
            return f"{subset}/NORMAL/IM-{patient:04d}-{image + 1:04d}{suffix}"
        kind = "bacteria" if finding == "bacterial" else "virus"
        return f"{subset}/PNEUMONIA/person{patient}_{kind}_{image}{suffix}"
    if layout == "rsna":
        return f"stage_2_train_images/{rng.bytes(16).hex()}.dcm"
    if layout == "covid-chestxray":
        return f"images/{dataset}-{patient:04d}-{image}{suffix}"
    if layout == "shenzhen":
        return f"CXR_png/CHNCXR_{patient:04d}_0.png"
    raise ValueError(f"unknown layout {layout}")


def plan_jobs(config: SynthConfig, root: Path, *, seed: int, scale: float) -> list[ImageJob]:
    """Every image to render, with its patient and file name (deterministic for a seed)."""
    jobs: list[ImageJob] = []
    counts = config.scaled_counts(scale)
    for dataset_index, (name, spec) in enumerate(config.datasets.items()):
        rng = _rng(seed, dataset_index, 999_999)
        image_index = 0
        patient_index = 0
        for finding, count in counts[name].items():
            made = 0
            while made < count:
                patient_index += 1
                extra = 0
                if spec.layout != "shenzhen" and spec.layout != "rsna":
                    while rng.random() < spec.follow_up and made + extra + 1 < count:
                        extra += 1
                for k in range(extra + 1):
                    relative = _names(spec.layout, name, finding, patient_index, k, rng, spec.image_format)
                    mask_relative = f"masks/{name}/{Path(relative).with_suffix('.png').as_posix()}"
                    patient_id = (Path(relative).stem if spec.layout == "rsna" else f"{name}-{patient_index:05d}")
                    jobs.append(ImageJob(str(root), name, spec.layout, relative, mask_relative, patient_id,
                                         patient_index, finding, config.severity.get(finding, (0.5, 1.0)),
                                         spec.signatures, {s: config.signatures[s] for s in spec.signatures},
                                         config.image_size, seed, dataset_index, image_index, spec.site))
                    image_index += 1
                made += extra + 1
    return jobs


def _write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    write_text_atomic(path, buffer.getvalue())


def _write_metadata(root: Path, config: SynthConfig, truth: pd.DataFrame) -> None:
    """The layouts' label files, from the ground truth."""
    for name, spec in config.datasets.items():
        part = truth[truth["dataset"] == name]
        base = root / name
        if spec.layout == "hospital-csv":
            rows = [[r.relative_path, r.patient, "positive" if r.finding == "covid" else "negative", r.view, r.sex,
                     r.age] for r in part.itertuples()]
            _write_csv(base / "labels.csv", ["path", "patient", "label", "view", "sex", "age"], rows)
        elif spec.layout == "rsna":
            labels, classes = [], []
            for r in part.itertuples():
                patient = Path(r.relative_path).stem
                if r.finding == "pneumonia":
                    box = json.loads(r.box) if isinstance(r.box, str) and r.box else [0, 0, 0, 0]
                    labels.append([patient, *[float(b) for b in box], 1])
                    classes.append([patient, "Lung Opacity"])
                else:
                    labels.append([patient, "", "", "", "", 0])
                    classes.append([patient, "Normal"])
            _write_csv(base / "stage_2_train_labels.csv", ["patientId", "x", "y", "width", "height", "Target"], labels)
            _write_csv(base / "stage_2_detailed_class_info.csv", ["patientId", "class"], classes)
        elif spec.layout == "covid-chestxray":
            rows = []
            for r in part.itertuples():
                view = "AP Supine" if r.view == "AP" and r.devices else r.view
                rows.append([r.patient, 0, r.sex, r.age, _COHEN_FINDINGS[r.finding], view, "X-ray", "2020",
                             r.signature, "images", Path(r.relative_path).name, "synthetic"])
            _write_csv(base / "metadata.csv", ["patientid", "offset", "sex", "age", "finding", "view", "modality",
                                               "date", "location", "folder", "filename", "license"], rows)


class BenchmarkFolderError(UnveilError, FileExistsError):
    """The output folder holds other files: refused unless it is an earlier benchmark and overwriting is allowed."""


def generate(config: SynthConfig, out: str | Path, *, seed: int = 0, scale: float = 1.0, workers: int = 1,
             progress: bool = False, overwrite: bool = False) -> pd.DataFrame:
    """Render every dataset of ``config`` under ``out``; return the ground-truth table.

    ``out`` must be new or empty; with ``overwrite`` an earlier benchmark there is replaced.
    """
    scale = finite(scale, "scale", SynthConfigError)
    if scale <= 0:
        raise SynthConfigError(f"scale must be positive, got {scale}")
    root = Path(out)
    if root.exists() and any(root.iterdir()):
        if not overwrite:
            raise BenchmarkFolderError(f"{root}: folder is not empty; choose a new one or allow overwriting "
                                  "(files left from another configuration would be read as data)")
        if not (root / "synth.meta.json").is_file():
            raise BenchmarkFolderError(f"{root}: not a synthetic benchmark folder (no synth.meta.json); "
                                  "refusing to delete anything in it")
        for child in root.iterdir():
            shutil.rmtree(child) if child.is_dir() else child.unlink()
    root.mkdir(parents=True, exist_ok=True)
    jobs = plan_jobs(config, root, seed=seed, scale=scale)
    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            iterator = pool.map(render_job, jobs, chunksize=8)
            rows = list(_progress(iterator, len(jobs), progress))
    else:
        rows = list(_progress(map(render_job, jobs), len(jobs), progress))
    truth = pd.DataFrame(rows)
    truth.insert(2, "source", truth["layout"].map(lambda layout: layout))
    _write_metadata(root, config, truth)
    columns = [c for c in truth.columns if c != "box"]
    write_text_atomic(root / "truth.csv", truth[columns].to_csv(index=False, lineterminator="\n"))
    document = {"command": "unveil synth", "config": config.raw, "seed": seed, "scale": scale,
                "image_size": config.image_size, "counts": config.scaled_counts(scale),
                "datasets": {name: {"layout": spec.layout, "source": spec.source, "path": name}
                             for name, spec in config.datasets.items()},
                "versions": environment_versions()}
    # No timestamp: the same seed must give byte-identical output.
    write_text_atomic(root / "synth.meta.json", json.dumps(document, indent=2, sort_keys=True) + "\n")
    return truth


def _progress(iterator, total: int, enabled: bool):
    if not enabled:
        return iterator
    from tqdm import tqdm

    return tqdm(iterator, total=total, unit="img", desc="synth", disable=None)  # silent when not a terminal


def dataset_roots(out: str | Path) -> dict[str, tuple[str, Path]]:
    """``{dataset: (unveil source name, root folder)}`` of a generated benchmark (from its metadata)."""
    root = Path(out)
    document = json.loads((root / "synth.meta.json").read_text(encoding="utf-8"))
    return {name: (spec["source"], root / spec["path"]) for name, spec in document["datasets"].items()}


def read_truth(out: str | Path) -> pd.DataFrame:
    """The ground truth with absolute ``path`` and ``mask_path`` columns."""
    root = Path(out).absolute()
    truth = pd.read_csv(root / "truth.csv", keep_default_na=False)
    truth["path"] = [str((root / d / p).resolve())
                     for d, p in zip(truth["dataset"], truth["relative_path"], strict=True)]
    truth["mask_path"] = [str((root / m).resolve()) for m in truth["mask_path"]]
    return truth


def attach_truth(records: pd.DataFrame, truth: pd.DataFrame) -> pd.DataFrame:
    """Records (from any loader) with ground-truth masks and truth columns joined by file path."""
    extra = truth.drop(columns=[c for c in ("dataset", "layout", "source", "relative_path") if c in truth])
    extra = extra.rename(columns={"finding": "true_finding", "view": "true_view", "sex": "true_sex",
                                  "age": "true_age", "mask_path": "truth_mask_path"})
    merged = records.merge(extra, on="path", how="left")
    merged["mask_path"] = merged["mask_path"].fillna(merged["truth_mask_path"]).astype("string")
    return merged.drop(columns=["truth_mask_path"])
