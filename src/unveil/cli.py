"""The `unveil` command line: a thin layer over the library (each command calls one function)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from unveil import __version__
from unveil.thresholds import ThresholdRule

# Help is Click's plain formatter (rich_markup_mode=None): it wraps help text to the terminal and never
# cuts an option name, where rich's tables ellipsize long names at 80 columns.
HELP_STYLE: dict[str, Any] = {"rich_markup_mode": None, "no_args_is_help": True}
app = typer.Typer(help="unveil: chest X-ray classifiers that are honest about small, biased data.",
                  add_completion=False, **HELP_STYLE)
data_app = typer.Typer(help="Load, check, split and compose datasets.", **HELP_STYLE)
app.add_typer(data_app, name="data")
lungs_app = typer.Typer(help="Lung segmentation: train and evaluate the U-Net.", **HELP_STYLE)
app.add_typer(lungs_app, name="lungs")
synth_app = typer.Typer(help="Synthetic chest X-ray benchmark with controllable dataset bias.", **HELP_STYLE)
app.add_typer(synth_app, name="synth")

SeedOption = Annotated[int, typer.Option("--seed", help="Random seed (same seed, same result).")]
LungConventionOption = Annotated[str | None, typer.Option(
    "--lung-convention", help="Lung-mask convention: visible (lung field, heart excluded; the paper's) or full "
                              "(lung behind the heart included). Default: the lung model's default.")]
MaxPixelsOption = Annotated[int, typer.Option(
    "--max-pixels", min=1, help="Refuse images whose header declares more pixels (width x height), before decoding "
                                "(a guard against decompression bombs). Default: 50000000, e.g. 7000 x 7000; the "
                                "largest radiograph detectors give about 4300 x 4300.")]
OptionList = Annotated[list[str] | None, typer.Option(
    "--option", "-o", help="Loader option KEY=VALUE (repeatable), e.g. -o label_column=diagnosis.")]


def _fail(message: str, code: int = 2) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def parse_options(pairs: list[str] | None) -> dict[str, Any]:
    """KEY=VALUE strings to a dict; comma-separated values become tuples."""
    options: dict[str, Any] = {}
    for pair in pairs or []:
        if "=" not in pair:
            _fail(f"--option expects KEY=VALUE, got {pair!r}")
        key, value = pair.split("=", 1)
        options[key.strip().replace("-", "_")] = tuple(v.strip() for v in value.split(",")) if "," in value else value
    return options


@app.callback()
def main_callback(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Also log details (INFO) to stderr.")] = False,
) -> None:
    from unveil.progress import configure_logging

    configure_logging(verbose)


@app.command()
def version() -> None:
    """Print the unveil version and the versions of the packages results depend on."""
    from unveil.provenance import environment_versions

    typer.echo(json.dumps({"unveil": __version__, **environment_versions()}, indent=2))


@data_app.command("check")
def data_check(
    source: Annotated[str, typer.Argument(help="Dataset source: covid-chestxray, figure1, chestxray, rsna, "
                                               "montgomery, shenzhen, lung-segmentation, covid-qu-ex, "
                                               "hospital-csv.")],
    path: Annotated[Path, typer.Argument(help="Dataset root folder (or the CSV, for hospital-csv).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")] = False,
    option: OptionList = None,
    workers: Annotated[int, typer.Option(help="Processes decoding images.")] = 1,
    max_pixels: MaxPixelsOption = 50_000_000,
    no_images: Annotated[bool, typer.Option(
        "--no-images", help="Skip decoding images (no unreadable/duplicate check).")] = False,
    strict: Annotated[bool, typer.Option(
        help="Exit with status 1 if any file is unreadable, missing or invalid.")] = False,
    also: Annotated[list[str] | None, typer.Option(
        "--with", help="Another dataset SOURCE:PATH checked together, to find duplicates across "
                       "sources (repeatable; default loader options).")] = None,
    seed: Annotated[int, typer.Option(
        "--seed", help="Accepted like every command's; the check itself involves no randomness.")] = 0,
) -> None:
    """Load, validate and summarise a dataset: counts, unreadable and missing files, duplicates."""
    from unveil.data.check import summarise
    from unveil.data.records import RecordTableError
    from unveil.data.sources import DatasetLayoutError, load_source

    try:
        loads = [load_source(source, path, **parse_options(option))]
        for extra in also or []:
            other, colon, other_path = extra.partition(":")
            if not colon:
                _fail(f"--with expects SOURCE:PATH, got {extra!r}")
            loads.append(load_source(other, other_path))
        report = summarise(loads, read_images=not no_images, workers=workers, max_pixels=max_pixels)
    except (KeyError, DatasetLayoutError, RecordTableError) as error:
        _fail(str(error.args[0]) if isinstance(error, KeyError) else str(error))
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
    else:
        typer.echo(report.to_text())
    if strict and report.has_problems:
        raise typer.Exit(1)


@data_app.command("split")
def data_split(
    source: Annotated[str, typer.Argument(help="Dataset source name.")],
    path: Annotated[Path, typer.Argument(help="Dataset root folder.")],
    out: Annotated[Path, typer.Option(help="Split file to write (CSV); a .meta.json is written beside it.")],
    option: OptionList = None,
    test_fraction: Annotated[float, typer.Option(help="Share of patients in test.")] = 0.3,
    val_fraction: Annotated[float, typer.Option(help="Share of the remaining patients in validation.")] = 0.2,
    stratify: Annotated[str, typer.Option(help="Comma-separated columns to stratify patients by.")] = "covid",
    respect_original_split: Annotated[bool, typer.Option(
        "--respect-original-split", help="Keep the source's own train/val/test parts (e.g. COVID-QU-Ex's "
                                         "Train/Val/Test folders) instead of drawing a split.")] = False,
    seed: SeedOption = 0,
) -> None:
    """Write a patient-exclusive, stratified, seeded train/val/test split file for one dataset."""
    from unveil.data.leakage import check_leakage
    from unveil.data.sources import DatasetLayoutError, load_source
    from unveil.data.splits import drop_duplicate_images, original_split, patient_exclusive_split, write_split_file
    from unveil.provenance import write_run_metadata

    try:
        records, removed = drop_duplicate_images(load_source(source, path, **parse_options(option)).records)
        for message in removed:
            typer.echo(f"warning: {message}", err=True)
        if respect_original_split:
            split = original_split(records)
        else:
            split = patient_exclusive_split(records, seed=seed, test_fraction=test_fraction, val_fraction=val_fraction,
                                            stratify_by=[c for c in stratify.split(",") if c])
    except (DatasetLayoutError, ValueError) as error:
        _fail(str(error))
    except KeyError as error:
        _fail(str(error.args[0]))
    check_leakage(records.assign(split=split))
    digest = write_split_file(out, records, split)
    counts = split.value_counts().to_dict()
    write_run_metadata(out.with_suffix(".meta.json"), "unveil data split", {
        "source": source, "path": str(path), "options": parse_options(option), "seed": seed,
        "test_fraction": test_fraction, "val_fraction": val_fraction, "stratify": stratify,
        "respect_original_split": respect_original_split},
        extra={"split_file": str(out), "sha256": digest, "counts": counts})
    typer.echo(json.dumps({"split_file": str(out), "sha256": digest, "counts": counts}))


def _parse_bindings(bindings: list[str], book) -> dict[str, tuple[str, str]]:
    parsed = {}
    for binding in bindings:
        role, sep, rest = binding.partition("=")
        if not sep or not rest:
            _fail(f"--data expects ROLE=SOURCE:PATH or ROLE=PATH, got {binding!r}")
        source, colon, path = rest.partition(":")
        if not colon:  # ROLE=PATH: the role's default source
            default = book.roles.get(role)
            if default is None or not default.default_source:
                _fail(f"--data {binding!r}: role {role} has no default source; write {role}=SOURCE:PATH")
            source, path = default.default_source, rest
        parsed[role.strip()] = (source.strip(), path.strip())
    return parsed


def _role_options(items: list[str] | None, command: str) -> dict[str, list[str]]:
    """ROLE.KEY=VALUE loader options grouped by role."""
    per_role: dict[str, list[str]] = {}
    for item in items or []:
        role, dot, rest = item.partition(".")
        if not dot:
            _fail(f"--option for {command} expects ROLE.KEY=VALUE, got {item!r}")
        per_role.setdefault(role, []).append(rest)
    return per_role


@data_app.command("compose")
def data_compose(
    recipe: Annotated[str, typer.Argument(help="Composition name: A, AB, AC, AD, D (or one of --recipes).")],
    data: Annotated[list[str], typer.Option("--data", "-d", help="Bind a role: ROLE=SOURCE:PATH (repeatable).")],
    option: Annotated[list[str] | None, typer.Option(
        "--option", "-o", help="Loader option ROLE.KEY=VALUE (repeatable).")] = None,
    recipes: Annotated[Path | None, typer.Option(help="Recipe YAML file (default: the paper's Table 1).")] = None,
    out: Annotated[Path | None, typer.Option(help="Folder for the split file and its metadata.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")] = False,
    test_fraction: Annotated[float, typer.Option(help="Share of patients in test.")] = 0.3,
    val_fraction: Annotated[float, typer.Option(help="Share of remaining patients in validation.")] = 0.2,
    check_images: Annotated[bool, typer.Option(
        help="Also decode every image and refuse identical or near-identical images in two splits.")] = False,
    workers: Annotated[int, typer.Option(help="Processes decoding images (with --check-images).")] = 1,
    seed: SeedOption = 0,
) -> None:
    """Build a training/test composition and print per-split class counts by source."""
    from unveil.data.compose import RecipeError, compose, load_recipes
    from unveil.data.fingerprints import fingerprint_images
    from unveil.data.leakage import LeakageError, check_leakage
    from unveil.data.records import RecordTableError
    from unveil.data.sources import DatasetLayoutError, load_source
    from unveil.data.splits import write_split_file
    from unveil.provenance import write_run_metadata

    try:
        book = load_recipes(recipes)
        chosen = book.recipe(recipe)
        bindings = _parse_bindings(data, book)
        per_role = _role_options(option, "compose")
        for role in chosen.roles:
            if role not in bindings:
                described = f" ({book.roles[role].description})" if role in book.roles else ""
                _fail(f"composition {recipe} needs role {role}{described}; bind it with --data {role}=SOURCE:PATH")
        tables = {}
        for role in chosen.roles:
            source, path = bindings[role]
            tables[role] = load_source(source, path, **parse_options(per_role.get(role))).records
        composition = compose(chosen, tables, seed=seed, test_fraction=test_fraction, val_fraction=val_fraction)
        if check_images:
            fingerprints = fingerprint_images(composition.records, workers=workers)
            check_leakage(composition.records, fingerprints)
    except (RecipeError, DatasetLayoutError, LeakageError, RecordTableError) as error:
        _fail(str(error))
    except KeyError as error:
        _fail(str(error.args[0]))
    result: dict[str, Any] = {"recipe": chosen.name, "description": chosen.description, "seed": seed,
                              "balance": chosen.balance, "splits": composition.counts(),
                              "warnings": composition.warnings}
    if out is not None:
        split_file = out / f"{chosen.name}.splits.csv"
        digest = write_split_file(split_file, composition.records, composition.records["split"])
        result.update(split_file=str(split_file), sha256=digest)
        write_run_metadata(out / f"{chosen.name}.meta.json", "unveil data compose", {
            "recipe": chosen.name, "bindings": bindings, "options": option or [], "recipes": recipes,
            "seed": seed, "test_fraction": test_fraction, "val_fraction": val_fraction},
            extra={"result": result})
    if as_json:
        typer.echo(json.dumps(result, indent=2))
    else:
        for split, counts in result["splits"].items():
            by_source = "; ".join(f"{s}: +{c['covid+']} -{c['covid-']}" for s, c in counts["by_source"].items())
            typer.echo(f"{split:5s} total {counts['total']:5d}  covid+ {counts['covid+']:5d}  "
                       f"covid- {counts['covid-']:5d}  ({by_source})")
        for warning in composition.warnings:
            typer.echo(f"warning: {warning}", err=True)


PresetOption = Annotated[str, typer.Option(
    "--preset", "-p", help="Preset name (paper, clean) or a YAML configuration file.")]


def _synth_config(preset: str, size: int | None):
    from dataclasses import replace

    from unveil.synth.config import SynthConfigError, load_config

    try:
        config = load_config(preset)
    except SynthConfigError as error:
        _fail(str(error))
    return replace(config, image_size=size) if size else config


@synth_app.command("generate")
def synth_generate(
    out: Annotated[Path, typer.Option(help="Folder to write the benchmark into (new or empty).")],
    preset: PresetOption = "paper",
    scale: Annotated[float, typer.Option(help="Multiply every class count by this factor.")] = 1.0,
    size: Annotated[int | None, typer.Option(help="Image side in pixels (default: the configuration's).")] = None,
    workers: Annotated[int, typer.Option(help="Processes rendering images (output is identical).")] = 1,
    overwrite: Annotated[bool, typer.Option(help="Replace an earlier benchmark in --out.")] = False,
    seed: SeedOption = 0,
) -> None:
    """Generate the synthetic datasets in the real layouts (A, B, C, D, lung masks) with ground truth."""
    from unveil.synth.generate import generate

    config = _synth_config(preset, size)
    try:
        truth = generate(config, out, seed=seed, scale=scale, workers=workers, progress=True, overwrite=overwrite)
    except (FileExistsError, ValueError) as error:
        _fail(str(error))
    counts = truth.groupby(["dataset", "finding"]).size()
    typer.echo(f"wrote {len(truth)} images to {out} (preset {config.name}, seed {seed}, scale {scale})")
    for (dataset, finding), count in counts.items():
        typer.echo(f"  {dataset:6s} {finding:10s} {count}")


@synth_app.command("preview")
def synth_preview(
    out: Annotated[Path, typer.Option(help="PNG file to write.")],
    preset: PresetOption = "paper",
    per_class: Annotated[int, typer.Option(help="Samples per dataset and class.")] = 2,
    tile: Annotated[int, typer.Option(help="Tile side in the grid, pixels.")] = 192,
    size: Annotated[int | None, typer.Option(help="Rendered image side (default: the configuration's).")] = None,
    seed: SeedOption = 0,
) -> None:
    """Write a grid of samples, one row per dataset and columns by class, to judge realism by eye."""
    from unveil.synth.preview import write_preview

    path = write_preview(_synth_config(preset, size), out, seed=seed, per_class=per_class, tile=tile)
    typer.echo(f"wrote {path}")


@synth_app.command("evidence")
def synth_evidence(
    benchmark: Annotated[Path, typer.Argument(help="Folder written by `unveil synth generate`.")],
    pixels: Annotated[int, typer.Option(help="Images are downsampled to PIXELS x PIXELS.")] = 32,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")] = False,
    seed: SeedOption = 0,
) -> None:
    """Train a pixel logistic regression on AB; report AB->AB vs AB->AC balanced accuracy, with and
    without masking everything but the lungs."""
    from unveil.synth.evidence import bias_gap

    results = {}
    for masked in (False, True):
        result = bias_gap(benchmark, seed=seed, pixels=pixels, mask_lungs=masked)
        results["lungs_only" if masked else "full_image"] = {
            "ab_on_ab": round(result.ab_on_ab, 4), "ab_on_ac": round(result.ab_on_ac, 4),
            "gap": round(result.gap, 4), "train_images": result.train_images, "test_images": result.test_images}
    full, lungs = results["full_image"]["gap"], results["lungs_only"]["gap"]
    results["gap_shrink"] = round(1 - lungs / full, 4) if full else None
    if as_json:
        typer.echo(json.dumps(results, indent=2))
    else:
        for name in ("full_image", "lungs_only"):
            r = results[name]
            typer.echo(f"{name:10s} BA AB->AB {r['ab_on_ab']:.3f}  AB->AC {r['ab_on_ac']:.3f}  gap {r['gap']:+.3f}")
        if results["gap_shrink"] is not None:
            typer.echo(f"masking to the lungs shrinks the gap by {100 * results['gap_shrink']:.0f} %")


def _source_paths(values: list[str] | None, option: str) -> list[tuple[str, str]]:
    pairs = []
    for value in values or []:
        source, colon, path = value.partition(":")
        if not colon or not path:
            _fail(f"{option} expects SOURCE:PATH, got {value!r}")
        pairs.append((source, path))
    return pairs


@lungs_app.command("train")
def lungs_train(
    data: Annotated[list[str], typer.Option(
        "--data", "-d", help="Training source SOURCE:PATH with lung masks (repeatable); split by patient "
                             "into train/val/test.")],
    out: Annotated[Path, typer.Option(help="Run folder: lung_unet.safetensors/.json, figures.csv, history.csv.")],
    holdout: Annotated[list[str] | None, typer.Option(
        help="Evaluation-only source SOURCE:PATH (repeatable), never trained on.")] = None,
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = 150,
    size: Annotated[int, typer.Option(help="Network input side, pixels.")] = 256,
    batch_size: Annotated[int, typer.Option(help="Images per step.")] = 8,
    learning_rate: Annotated[float, typer.Option(help="Peak learning rate (one-cycle schedule).")] = 3e-3,
    threads: Annotated[int | None, typer.Option(help="Torch CPU threads (default: torch's).")] = None,
    synthetic: Annotated[int, typer.Option(
        help="Also train on this many generated phantoms with masks (a third source, training only).")] = 0,
    samples_per_epoch: Annotated[int | None, typer.Option(
        help="Images drawn per epoch (default: the training set's size).")] = None,
    architecture: Annotated[str, typer.Option(
        help="Network size: unet16 (1.6 M parameters) or unet8 (0.21 M).")] = "unet16",
    exclude: Annotated[list[str] | None, typer.Option(
        help="Record source never trained on, evaluated whole as the part 'excluded' (repeatable; e.g. "
             "montgomery from lung-segmentation, for a cross-dataset figure).")] = None,
    device: DeviceOption = None,
    seed: SeedOption = 0,
) -> None:
    """Train the lung U-Net (on the CPU unless --device says otherwise); report Dice (mean, 10th
    percentile), IoU and HD95 per source on the held-out parts."""
    import torch

    from unveil.segmentation.train import LungTrainingConfig, train_lung_model
    from unveil.training.loop import resolve_device

    try:
        device = str(resolve_device(device or "cpu"))
    except RuntimeError as error:
        _fail(str(error))
    if threads:
        torch.set_num_threads(threads)
    config = LungTrainingConfig(size=size, epochs=epochs, batch_size=batch_size, learning_rate=learning_rate,
                                samples_per_epoch=samples_per_epoch, architecture=architecture, seed=seed)
    command = "unveil lungs train " + " ".join(sys.argv[3:]) if len(sys.argv) > 3 else "unveil lungs train"
    try:
        description = train_lung_model(_source_paths(data, "--data"), out, holdout=_source_paths(holdout, "--holdout"),
                                       config=config, synthetic_images=synthetic, exclude=exclude or [],
                                       device=device, command=command)
    except (ValueError, KeyError) as error:
        _fail(str(error.args[0]) if isinstance(error, KeyError) else str(error))
    typer.echo(json.dumps({"bundle": str(out / "lung_unet.safetensors"), "validation": description["validation"],
                           "images": description["training"]["images"]}, indent=2))


def _load_segmenter(model: Path | None):
    from unveil.segmentation import LungSegmenter, SegmenterError

    try:
        return LungSegmenter.load(model)
    except SegmenterError as error:
        _fail(str(error))


@lungs_app.command("evaluate")
def lungs_evaluate(
    data: Annotated[list[str], typer.Option("--data", "-d", help="Source SOURCE:PATH with lung masks (repeatable).")],
    model: Annotated[Path | None, typer.Option(
        help="Lung model: bundle file or `lungs train` run folder (default: the run beside --parts, else the "
             "shipped model).")] = None,
    parts: Annotated[Path | None, typer.Option(
        help="parts.csv of a training run: evaluate only its 'test' and 'excluded' records (held out).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")] = False,
    figures_out: Annotated[Path | None, typer.Option(
        "--figures", help="Write the per-image figures (CSV) here.")] = None,
    worst: Annotated[int, typer.Option(
        help="Render the N lowest-Dice images as overlays (truth green, prediction red) into --overlays.")] = 0,
    overlays: Annotated[Path | None, typer.Option(help="Folder for the --worst overlays.")] = None,
    seed: SeedOption = 0,
) -> None:
    """Dice (mean, 10th percentile, minimum), IoU and HD95 of a lung model against the masks of the
    given sources, per source, each scored in its source's convention."""
    import pandas as pd

    from unveil.provenance import write_text_atomic
    from unveil.segmentation.model import bundles_in
    from unveil.segmentation.train import evaluate, mask_records, summarise_figures

    if parts is not None and not parts.is_file():
        _fail(f"{parts}: parts file not found")
    if model is None and parts is not None:  # the run that wrote the parts file, not the shipped model
        if bundles_in(parts.parent):
            model = parts.parent  # resolved like any run folder; several bundles and no lung_unet: refused
            typer.echo(f"model: the lung model of {parts.parent} (beside {parts.name})", err=True)
        else:
            typer.echo(f"note: no lung model beside {parts}; scoring the shipped model", err=True)
    segmenter = _load_segmenter(model)
    records = mask_records(_source_paths(data, "--data"))
    if parts is not None:
        table = pd.read_csv(parts)
        held_out = set(table.loc[table["part"].isin(["test", "excluded"]), "record_id"])
        trained = set(table["record_id"]) - held_out
        records = records[~records["record_id"].isin(trained)]
    if worst and overlays is None:
        _fail("--worst needs --overlays FOLDER")
    figures = evaluate(segmenter, records)
    summary = summarise_figures(figures)
    if figures_out is not None:
        figures_out.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(figures_out, figures.to_csv(index=False))
    if worst:
        from unveil.segmentation.overlay import write_worst_overlays

        written = write_worst_overlays(segmenter, records, figures, overlays, worst)
        typer.echo(f"{len(written)} overlays of the lowest-Dice images in {overlays}", err=True)
    typer.echo(json.dumps(summary, indent=2) if as_json else
               "\n".join(f"{k}: {v}" for k, v in summary.items()))


def _require_paths(inputs: list[Path]) -> None:
    """A missing input path is a user's mistake (exit 2, naming it), never an empty run."""
    missing = [str(p) for p in inputs if not p.exists()]
    if missing:
        _fail(f"input path not found: {', '.join(missing)}")


def _expand_images(inputs: list[Path]) -> list[Path]:
    from unveil.data.sources.base import IMAGE_SUFFIXES

    files: list[Path] = []
    for item in inputs:
        if item.is_dir():
            files.extend(sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES))
        else:
            files.append(item)
    return files


@app.command("segment")
def segment(
    images: Annotated[list[Path], typer.Argument(help="Image files or folders (PNG, JPEG, DICOM).")],
    out: Annotated[Path, typer.Option(help="Folder for <name>_mask.png and <name>_overlay.png.")],
    model: Annotated[Path | None, typer.Option(help="Segmentation bundle (default: the shipped model).")] = None,
    lung_convention: LungConventionOption = None,
    max_pixels: MaxPixelsOption = 50_000_000,
    seed: SeedOption = 0,
) -> None:
    """Segment the lungs: write a 0/255 mask and an overlay (lung contour in red) per image. OUT must lie
    outside the inputs; two inputs with one stem (a.png, a.jpeg) keep their extension in the output names."""
    from unveil.io import ImageReadError, read_image
    from unveil.io.outputs import OutputError, OutputFolder
    from unveil.segmentation.overlay import output_stems, write_mask_and_overlay

    _require_paths(images)
    segmenter = _load_segmenter(model)
    files = _expand_images(images)
    if not files:
        _fail("no image files found in the given paths")
    failed = 0
    stems = output_stems(files)
    try:
        with OutputFolder(out, images) as staged:
            for path in files:
                try:
                    image = read_image(path, max_pixels=max_pixels).pixels
                except ImageReadError as error:
                    typer.echo(f"skipped: {error}", err=True)
                    failed += 1
                    continue
                mask = segmenter.segment(image, convention=lung_convention)
                mask_path, overlay_path = write_mask_and_overlay(image, mask, staged.stage, stems[path])
                typer.echo(f"{path}: lungs {100 * mask.mean():.1f} % of the image -> {mask_path.name}, "
                           f"{overlay_path.name}")
    except OutputError as error:
        _fail(str(error))
    if failed:
        typer.echo(f"{failed} of {len(files)} image(s) could not be read", err=True)
        raise typer.Exit(1)


@app.command("preprocess")
def preprocess(
    source: Annotated[str, typer.Argument(help="Dataset source name.")],
    path: Annotated[Path, typer.Argument(help="Dataset root folder.")],
    cache: Annotated[Path, typer.Option(help="Cache folder (shared by runs; content-addressed).")],
    option: OptionList = None,
    size: Annotated[int, typer.Option(help="Working resolution (side, pixels).")] = 256,
    equalize: Annotated[str, typer.Option(help="global, lungs, clahe or none.")] = "global",
    mask: Annotated[str, typer.Option(help="segment (lung model), truth (the dataset's masks) or none.")] = "segment",
    blur_radius: Annotated[float, typer.Option(help="Blur of the lung mask, pixels (the paper: 3).")] = 3.0,
    model: Annotated[Path | None, typer.Option(help="Segmentation bundle (default: the shipped model).")] = None,
    workers: Annotated[int, typer.Option(help="Worker processes.")] = 2,
    strict: Annotated[bool, typer.Option(help="Exit with status 1 if any image fails.")] = False,
    lung_convention: LungConventionOption = None,
    max_pixels: MaxPixelsOption = 50_000_000,
    seed: SeedOption = 0,
) -> None:
    """Pre-process a dataset into the cache (equalize, segment, blurred mask, [0, 1]); a rerun is free."""
    from unveil.data.sources import DatasetLayoutError, load_source
    from unveil.preprocess.cache import PreprocessError, PreprocessSettings, preprocess_records

    try:
        records = load_source(source, path, **parse_options(option)).records
        settings = PreprocessSettings(size=size, equalize=equalize, mask=mask, blur_radius=blur_radius,
                                      model=str(model) if model else None, convention=lung_convention)
        report = preprocess_records(records, cache, settings, workers=workers, progress=True, strict=strict,
                                    max_pixels=max_pixels)
    except (KeyError, DatasetLayoutError, ValueError, FileNotFoundError) as error:
        _fail(str(error.args[0]) if isinstance(error, KeyError) else str(error))
    except PreprocessError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from None
    typer.echo(json.dumps({"manifest": str(report.manifest_path), "counts": report.counts(),
                           "failed": report.failures}, indent=2))


def _train_config(values: dict[str, Any], config_file: Path | None, overrides: list[str] | None):
    """TrainConfig from a YAML file, then the explicit options, then --set KEY=VALUE overrides."""
    import yaml

    from unveil.training import ConfigError, TrainConfig

    merged: dict[str, Any] = {}
    if config_file is not None:
        try:
            loaded = yaml.safe_load(config_file.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as error:
            _fail(f"{config_file}: unreadable training configuration ({error})")
        if not isinstance(loaded, dict):
            _fail(f"{config_file}: a training configuration is a mapping of option: value")
        merged.update(loaded)
    merged.update({k: v for k, v in values.items() if v is not None})
    for pair in overrides or []:
        key, sep, value = pair.partition("=")
        if not sep:
            _fail(f"--set expects KEY=VALUE, got {pair!r}")
        merged[key.strip().replace("-", "_")] = yaml.safe_load(value)
    try:
        return TrainConfig.from_dict(merged)
    except (ConfigError, TypeError) as error:
        _fail(str(error))


ArchOption = Annotated[str | None, typer.Option("--arch", help="resnet18, resnet50, densenet121, conv8 or covidnet.")]
WidthOption = Annotated[float | None, typer.Option(help="Channel-width multiplier (conv8, covidnet).")]
EpochsOption = Annotated[int | None, typer.Option(help="Epochs (default 30).")]
BatchOption = Annotated[int | None, typer.Option(help="Global batch size (default 32).")]
LrOption = Annotated[float | None, typer.Option(help="Learning rate (default 0.01).")]
SizeOption = Annotated[int | None, typer.Option("--image-size", help="Working resolution (default 224).")]
DeviceOption = Annotated[str | None, typer.Option(help="auto, cpu, cuda or cuda:N.")]
ConfigOption = Annotated[Path | None, typer.Option("--config", help="YAML file of training options.")]
SetOption = Annotated[list[str] | None, typer.Option(
    "--set", help="Any training option KEY=VALUE (repeatable), e.g. --set loss=cross-entropy, "
                  "--set threshold_rule=fixed --set threshold_value=0.5 (default rule: youden on validation).")]
MaskOption = Annotated[str, typer.Option(help="Lung mask: segment (shipped model), truth (dataset masks) or none.")]
EqualizeOption = Annotated[str, typer.Option(help="Histogram equalization: global, lungs, clahe or none.")]
CacheOption = Annotated[Path | None, typer.Option(help="Pre-processing cache folder (default: OUT/cache).")]
WorkersOption = Annotated[int, typer.Option(help="Pre-processing worker processes.")]
ResumeOption = Annotated[bool, typer.Option(help="Continue from OUT/checkpoint.pt when present.")]
ThresholdRuleOption = Annotated[ThresholdRule, typer.Option(
    "--threshold-rule", help="bundle (the threshold chosen at training time, recorded in the bundle), fixed "
                             "(--threshold), youden or sensitivity (chosen a priori on the model's validation "
                             "predictions).")]
TargetSensitivityOption = Annotated[float, typer.Option(help="Target for --threshold-rule sensitivity.")]
ThresholdOption = Annotated[float | None, typer.Option(
    "--threshold", help="A fixed decision threshold (implies --threshold-rule fixed; default with fixed: 0.5).")]


def _threshold_options(threshold: float | None, rule: ThresholdRule) -> tuple[ThresholdRule, float]:
    """--threshold / --threshold-rule as (rule, fixed value): a --threshold alone means the fixed rule."""
    if threshold is None:
        return rule, 0.5
    if rule not in (ThresholdRule.BUNDLE, ThresholdRule.FIXED):
        _fail(f"--threshold is a fixed threshold; it does not go with --threshold-rule {rule.value}")
    return ThresholdRule.FIXED, threshold
InitOption = Annotated[Path | None, typer.Option(
    "--init-weights", help="Local torchvision state-dict file for the initial weights (never downloaded).")]


def _run_training(action, **kwargs) -> None:
    from unveil.data.compose import RecipeError
    from unveil.data.records import RecordTableError
    from unveil.data.sources import DatasetLayoutError
    from unveil.io.outputs import OutputError, ensure_writable
    from unveil.models import ModelError
    from unveil.preprocess.cache import PreprocessError
    from unveil.training import BundleError, CheckpointError, TrainingDataError

    try:
        ensure_writable(kwargs["out"])  # a read-only run folder: one line before any work, not a traceback
    except OutputError as error:
        _fail(str(error))
    try:
        result = action(**kwargs)
    except (TrainingDataError, DatasetLayoutError, RecipeError, RecordTableError, ModelError, BundleError,
            CheckpointError, PreprocessError, FileNotFoundError) as error:
        _fail(str(error))
    except KeyError as error:
        _fail(str(error.args[0]))
    from unveil.training.loop import world

    if world()[0] != 0:  # under torchrun, rank 0 reports
        return
    typer.echo(json.dumps({"out": str(result.out), "bundle": str(result.bundle), "best_epoch": result.best_epoch,
                           "best": {k: v for k, v in result.best_metrics.items() if k.startswith("val_")},
                           "threshold": result.threshold.as_dict() if result.threshold else None,
                           "counts": result.counts, "skipped": len(result.skipped),
                           "seconds": round(result.seconds, 1)}, indent=2))


@app.command("pretrain")
def pretrain_command(
    data: Annotated[list[str], typer.Option("--data", "-d", help="Pneumonia dataset SOURCE:PATH (repeatable).")],
    out: Annotated[Path, typer.Option(help="Run folder (bundle in OUT/model).")],
    classes: Annotated[str | None, typer.Option(
        help="Comma-separated findings to learn (default: chestxray normal,bacterial,viral; rsna normal,pneumonia).")
    ] = None,
    option: OptionList = None,
    arch: ArchOption = None, width: WidthOption = None, epochs: EpochsOption = None, batch_size: BatchOption = None,
    lr: LrOption = None, image_size: SizeOption = None, device: DeviceOption = None, config: ConfigOption = None,
    set_option: SetOption = None, mask: MaskOption = "segment", equalize: EqualizeOption = "global",
    lung_convention: LungConventionOption = None, cache: CacheOption = None, workers: WorkersOption = 2,
    resume: ResumeOption = True,
    init_weights: InitOption = None,
    progress: Annotated[bool, typer.Option(help="Progress bars.")] = True,
    seed: SeedOption = 0,
) -> None:
    """Pre-train an encoder on a pneumonia task (the paper: ChestXRay 3-class, or RSNA 2-class)."""
    from unveil.preprocess.cache import PreprocessSettings
    from unveil.training import DataSpec, TrainingDataError, pretrain

    settings = _train_config({"architecture": arch, "width": width, "epochs": epochs, "batch_size": batch_size,
                              "lr": lr, "image_size": image_size, "device": device, "seed": seed}, config, set_option)
    try:
        specs = [DataSpec.parse(d, parse_options(option)) for d in data]
    except TrainingDataError as error:
        _fail(str(error))
    _run_training(pretrain, data=specs, out=out, config=settings,
                  preprocess=PreprocessSettings(mask=mask, equalize=equalize, convention=lung_convention),
                  classes=tuple(c.strip() for c in classes.split(",")) if classes else None, cache=cache,
                  workers=workers, progress=progress, resume=resume, init_weights=init_weights)


@app.command("train")
def train_command(
    recipe: Annotated[str, typer.Argument(help="Training composition: A, AB, AC, AD, D (or one of --recipes).")],
    data: Annotated[list[str], typer.Option("--data", "-d", help="Bind a role: ROLE=SOURCE:PATH (repeatable).")],
    out: Annotated[Path, typer.Option(help="Run folder (bundle in OUT/model).")],
    encoder: Annotated[Path | None, typer.Option(
        help="Pre-training bundle (OUT/model of `unveil pretrain`) to start the encoder from; default: scratch.")
    ] = None,
    option: Annotated[list[str] | None, typer.Option(
        "--option", "-o", help="Loader option ROLE.KEY=VALUE (repeatable).")] = None,
    recipes: Annotated[Path | None, typer.Option(help="Recipe YAML file (default: the paper's Table 1).")] = None,
    arch: ArchOption = None, width: WidthOption = None, epochs: EpochsOption = None, batch_size: BatchOption = None,
    lr: LrOption = None, image_size: SizeOption = None, device: DeviceOption = None, config: ConfigOption = None,
    set_option: SetOption = None, mask: MaskOption = "segment", equalize: EqualizeOption = "global",
    lung_convention: LungConventionOption = None, cache: CacheOption = None, workers: WorkersOption = 2,
    resume: ResumeOption = True,
    init_weights: InitOption = None,
    progress: Annotated[bool, typer.Option(help="Progress bars.")] = True,
    seed: SeedOption = 0,
) -> None:
    """Fine-tune a COVID+/COVID- classifier on a composition (encoder never frozen)."""
    from unveil.data.compose import RecipeError, load_recipes
    from unveil.preprocess.cache import PreprocessSettings
    from unveil.training import DataSpec, train

    settings = _train_config({"architecture": arch, "width": width, "epochs": epochs, "batch_size": batch_size,
                              "lr": lr, "image_size": image_size, "device": device, "seed": seed}, config, set_option)
    try:
        bindings = _parse_bindings(data, load_recipes(recipes))
    except RecipeError as error:
        _fail(str(error))
    per_role = _role_options(option, "train")
    specs = {role: DataSpec(source, path, parse_options(per_role.get(role))) for role, (source, path) in
             bindings.items()}
    _run_training(train, recipe=recipe, data=specs, out=out, config=settings, encoder=encoder,
                  preprocess=PreprocessSettings(mask=mask, equalize=equalize, convention=lung_convention),
                  cache=cache, workers=workers,
                  progress=progress, resume=resume, recipes=recipes, init_weights=init_weights)



@app.command("evaluate")
def evaluate_command(
    models: Annotated[list[Path], typer.Argument(help="Model bundles (OUT/model of `unveil train`).")],
    on: Annotated[list[str], typer.Option(
        "--on", help="Test set (repeatable): a composition name (its test split, e.g. AB) or SOURCE:PATH "
                     "(every labelled image of a dataset).")],
    data: Annotated[list[str] | None, typer.Option(
        "--data", "-d", help="Bind a role the models were not trained with: ROLE=SOURCE:PATH (repeatable).")] = None,
    out: Annotated[Path | None, typer.Option(
        help="Folder for results.csv, predictions.csv, tables (CSV/Markdown/LaTeX) and ROC curves.")] = None,
    threshold_rule: ThresholdRuleOption = ThresholdRule.BUNDLE,
    threshold: ThresholdOption = None,
    target_sensitivity: TargetSensitivityOption = 0.9,
    rebind: Annotated[bool, typer.Option(
        help="Let --data replace a role the model was trained with (default: each model keeps its own bindings "
             "and --data only adds roles it lacks); the rows say which roles were rebound.")] = False,
    resamples: Annotated[int, typer.Option(help="Bootstrap resamples (of patients) for the intervals.")] = 2000,
    cache: Annotated[Path | None, typer.Option(
        help="Pre-processing cache (default: the one each model was trained with).")] = None,
    workers: WorkersOption = 2,
    recipes: Annotated[Path | None, typer.Option(help="Recipe YAML file (default: the paper's Table 1).")] = None,
    allow_overlap: Annotated[bool, typer.Option(
        help="Evaluate even when test patients were in the model's training/validation split.")] = False,
    duplicates: Annotated[str, typer.Option(
        help="External images that are near-duplicates of the model's training images: refuse (stop with an "
             "error), flag (score them; a row column and a warning) or exclude (leave them out).")] = "refuse",
    as_json: Annotated[bool, typer.Option("--json", help="Print the result rows as JSON.")] = False,
    seed: SeedOption = 0,
) -> None:
    """Test every model on every test set: seven metrics, 95 % intervals, counts and threshold rule."""
    from unveil.data.compose import RecipeError, load_recipes
    from unveil.data.sources import DatasetLayoutError
    from unveil.evaluation.evaluate import EvaluationError, evaluate_models
    from unveil.evaluation.tables import json_rows, plot_roc_curves, summary_table, write_tables
    from unveil.preprocess.cache import PreprocessError
    from unveil.provenance import write_run_metadata, write_text_atomic
    from unveil.training import BundleError, DataSpec, TrainingDataError

    threshold_rule, threshold_value = _threshold_options(threshold, threshold_rule)
    try:
        bindings = {role: DataSpec(source, path) for role, (source, path) in
                    _parse_bindings(data or [], load_recipes(recipes)).items()}
        run = evaluate_models([str(m) for m in models], on, data=bindings, cache=cache,
                              threshold_rule=threshold_rule, threshold=threshold_value,
                              target_sensitivity=target_sensitivity, resamples=resamples, seed=seed,
                              workers=workers, recipes=recipes, allow_overlap=allow_overlap, rebind=rebind,
                              progress=not as_json, duplicates=duplicates)
    except (EvaluationError, BundleError, RecipeError, DatasetLayoutError, TrainingDataError, PreprocessError,
            ValueError) as error:
        _fail(str(error))
    except KeyError as error:
        _fail(str(error.args[0]))
    if out is not None:
        write_tables(run.rows, out)
        write_text_atomic(out / "predictions.csv", run.predictions.to_csv(index=False, lineterminator="\n"))
        plot_roc_curves(run.predictions, out)
        write_run_metadata(out / "evaluation.meta.json", "unveil evaluate", {
            "models": [str(m) for m in models], "on": on, "data": data or [],
            "threshold_rule": threshold_rule.value, "threshold": threshold_value,
            "target_sensitivity": target_sensitivity, "resamples": resamples, "seed": seed,
            "allow_overlap": allow_overlap, "rebind": rebind, "duplicates": duplicates},
            extra={"skipped": run.skipped})
    if as_json:
        typer.echo(json.dumps(json_rows(run.rows), indent=2))
    else:
        typer.echo(summary_table(run.rows).to_markdown(index=False))
        if out is not None:
            typer.echo(f"results, tables and ROC curves in {out}")
    for _, row in run.rows[run.rows["rebound"] != ""].iterrows():
        typer.echo(f"note: {row['model']} on {row['test_set']}: role(s) {row['rebound']} rebound by --data "
                   f"({row['bindings']})", err=True)
    for _, row in run.rows[run.rows["bindings"].str.contains("--data not used")].iterrows():
        typer.echo(f"note: {row['model']} on {row['test_set']} keeps its own bindings ({row['bindings']}); "
                   "--rebind replaces them", err=True)
    for _, row in run.rows[run.rows["near_duplicates_of_training"] > 0].iterrows():
        done = "left out" if row["near_duplicates_excluded"] else "scored (flagged in predictions.csv)"
        typer.echo(f"warning: {row['model']} on {row['test_set']}: {row['near_duplicates_of_training']} image(s) are "
                   f"near-duplicates of its training images, {done}", err=True)
    for line in run.skipped:
        typer.echo(f"skipped: {line}", err=True)


@app.command("tables")
def tables_command(
    results: Annotated[list[Path], typer.Argument(help="results.csv files of `unveil evaluate --out`.")],
    out: Annotated[Path, typer.Option(help="Folder for Table 2 and Tables A1..An (CSV, Markdown, LaTeX).")],
    aggregate_seeds: Annotated[bool, typer.Option(
        help="Pool the runs of one cell that differ only by seed: mean ± half-width of the Student-t 95 % "
             "interval over seeds (default: one row per model).")] = False,
    seed: SeedOption = 0,
) -> None:
    """Rebuild the paper's tables from one or several evaluation result files (one row per model)."""
    import pandas as pd

    from unveil.evaluation.tables import TableError, write_tables

    frames = []
    for path in results:
        try:
            frames.append(pd.read_csv(path))
        except (OSError, ValueError) as error:
            _fail(f"{path}: unreadable results file ({error})")
    try:
        written = write_tables(pd.concat(frames, ignore_index=True), out, aggregate_seeds=aggregate_seeds)
    except TableError as error:
        _fail(str(error))
    typer.echo("\n".join(str(p) for p in written))



@app.command("audit")
def audit_command(
    model: Annotated[Path, typer.Argument(help="Model bundle (OUT/model of `unveil train`).")],
    out: Annotated[Path, typer.Option(help="Folder for the PNGs, audit.json, audit.md, audit_images.csv.")],
    on: Annotated[list[str] | None, typer.Option(
        "--on", help="Another record set (repeatable), audited with the model's own test split: a composition "
                     "name (its test split) or SOURCE:PATH (an external set: transfer verdict).")] = None,
    own: Annotated[bool, typer.Option(
        help="Also audit the model's own composition's test split, rebuilt from its provenance (the in-source "
             "reference of the transfer verdict and of the source probes).")] = True,
    recipes: Annotated[Path | None, typer.Option(help="Recipe YAML file (default: the paper's Table 1).")] = None,
    data: Annotated[list[str] | None, typer.Option(
        "--data", "-d", help="Bind a role the model was not trained with: ROLE=SOURCE:PATH (repeatable).")] = None,
    masks: Annotated[str, typer.Option(
        help="Lung masks for occlusion and saliency: segment (shipped model) or truth (the dataset's).")] = "segment",
    lung_convention: LungConventionOption = None,
    threshold: Annotated[list[str] | None, typer.Option(
        "--threshold", help="Flag threshold KEY=VALUE (repeatable): source_probe, occlusion_auc, lung_saliency, "
                            "min_images, transfer_drop, below_chance, metadata_probe, metadata_only_auc, "
                            "infection_pointing, contamination (none: informative).")] = None,
    resamples: Annotated[int, typer.Option(help="Bootstrap resamples (of patients) for the intervals.")] = 1000,
    saliency_samples: Annotated[int, typer.Option(help="Grad-CAM overlays saved per class.")] = 4,
    cache: Annotated[Path | None, typer.Option(
        help="Pre-processing cache (default: the one the model was trained with).")] = None,
    workers: WorkersOption = 2,
    allow_overlap: Annotated[bool, typer.Option(help="Allow patients of the model's own training split.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print every figure as JSON.")] = False,
    seed: SeedOption = 0,
) -> None:
    """Did the model learn the disease or the dataset? t-SNE, source probes, lung occlusion, Grad-CAM."""
    from dataclasses import fields

    from unveil.audit import AuditError, AuditThresholds, audit
    from unveil.audit.run import audit_document
    from unveil.data.compose import RecipeError, load_recipes
    from unveil.data.sources import DatasetLayoutError
    from unveil.evaluation import EvaluationError
    from unveil.preprocess.cache import PreprocessError
    from unveil.training import BundleError, DataSpec, TrainingDataError

    known = {f.name: f.type for f in fields(AuditThresholds)}
    chosen: dict[str, Any] = {}
    for pair in threshold or []:
        key, sep, value = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in known:
            _fail(f"--threshold expects KEY=VALUE with KEY one of {', '.join(known)}; got {pair!r}")
        if value.strip().lower() == "none" and "None" not in str(known[key]):
            _fail(f"--threshold {pair!r}: {key} cannot be turned off (none is for informative-only tests)")
        try:
            chosen[key] = None if value.strip().lower() == "none" else int(value) if known[key] == "int" \
                else float(value)
        except ValueError:
            _fail(f"--threshold {pair!r}: {value!r} is not a number")
    try:
        bindings = {role: DataSpec(source, path) for role, (source, path) in
                    _parse_bindings(data or [], load_recipes(recipes)).items()}
        result = audit(model, on or [], out, data=bindings, masks=masks, cache=cache,
                       thresholds=AuditThresholds(**chosen), seed=seed, resamples=resamples,
                       saliency_samples=saliency_samples, workers=workers, allow_overlap=allow_overlap,
                       progress=not as_json, lung_convention=lung_convention, recipes=recipes, own=own)
    except (AuditError, EvaluationError, BundleError, RecipeError, DatasetLayoutError, TrainingDataError,
            PreprocessError) as error:
        _fail(str(error))
    except KeyError as error:
        _fail(str(error.args[0]))
    if as_json:
        typer.echo(json.dumps(audit_document(result), indent=2, default=str))
    else:
        typer.echo(result.figures["summary"])
        for verdict in result.verdicts:
            flag = "informative" if verdict.flagged is None else ("FLAGGED" if verdict.flagged else "ok")
            typer.echo(f"{verdict.test:28s} {verdict.subject:38s} {verdict.measure}: {verdict.value:.3f} "
                       f"[{verdict.low:.3f}, {verdict.high:.3f}]  {flag:11s} {verdict.suggests}")
        typer.echo(f"{len(result.flagged)} flag(s); figures in {out}")



def _reproduce(experiment_file: str, out: Path, jobs: int | None, workers: int, seed: int | None,
               report: bool, data: list[str] | None = None) -> None:
    import time

    from unveil.audit import AuditError
    from unveil.data.compose import RecipeError
    from unveil.data.sources import DatasetLayoutError
    from unveil.evaluation import EvaluationError
    from unveil.experiments import ExperimentError, load_experiment, reproduce
    from unveil.models import ModelError
    from unveil.preprocess.cache import PreprocessError
    from unveil.progress import progress_log
    from unveil.training import BundleError, CheckpointError, TrainingDataError

    started = time.perf_counter()

    def say(message: str) -> None:  # stage and cell lines: stderr, always
        progress_log.info("[%6.0f s] %s", time.perf_counter() - started, message)

    try:
        experiment = load_experiment(experiment_file, seed=seed)
        if data:  # ROLE=PATH takes the role's default source from the experiment's recipes
            from unveil.training import DataSpec

            bindings = _parse_bindings(data, experiment.recipe_book())
            experiment = load_experiment(experiment_file, seed=seed, data={
                role: DataSpec(source, path) for role, (source, path) in bindings.items()})
        store = reproduce(experiment, out, jobs=jobs, workers=workers, report=report, progress=say)
    except (ExperimentError, RecipeError, DatasetLayoutError, TrainingDataError, EvaluationError, AuditError,
            BundleError, CheckpointError, ModelError, PreprocessError) as error:
        _fail(str(error))
    say("done")
    typer.echo(f"done: results store {store}" + (f", report {out / 'report.html'}" if report else ""))


@app.command("reproduce")
def reproduce_command(
    experiment: Annotated[str, typer.Argument(
        help="Experiment YAML file, or a shipped one: demo, paper, public, public-full.")],
    out: Annotated[Path | None, typer.Option(help="Output folder (a rerun continues where it stopped).")] = None,
    jobs: Annotated[int | None, typer.Option(help="Cells trained in parallel processes (default: the file's).")]
    = None,
    workers: WorkersOption = 2,
    report: Annotated[bool, typer.Option(help="Write OUT/report.html at the end.")] = True,
    seed: Annotated[int | None, typer.Option("--seed", help="Random seed (default: the experiment file's).")]
    = None,
    data: Annotated[list[str] | None, typer.Option(
        "--data", "-d", help="Bind or replace a role of the experiment: ROLE=SOURCE:PATH or ROLE=PATH "
                             "(repeatable; a relative PATH is from the current folder).")] = None,
    show: Annotated[bool, typer.Option(
        "--show", help="Print the experiment file and exit (copy a shipped one: --show paper > my.yaml).")] = False,
) -> None:
    """Run an experiment grid: pre-process, pre-train, train every cell, evaluate, audit, report."""
    if show:
        from unveil.experiments import experiment_path

        path = experiment_path(experiment)
        if not path.is_file():
            from unveil.experiments.config import SHIPPED

            _fail(f"{experiment}: no such experiment file (shipped: {', '.join(SHIPPED)})")
        typer.echo(path.read_text(encoding="utf-8"), nl=False)
        return
    if out is None:
        _fail("reproduce needs --out FOLDER (or --show to print the experiment file)")
    _reproduce(experiment, out, jobs, workers, seed, report, data)


@app.command("demo")
def demo_command(
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("runs/demo"),
    workers: WorkersOption = 2,
    seed: SeedOption = 0,
) -> None:
    """The main job on the embedded synthetic data: the shipped `demo` experiment, end to end."""
    _reproduce("demo", out, None, workers, seed, True)


@app.command("report")
def report_command(
    results: Annotated[Path, typer.Argument(help="Output folder of `unveil reproduce` (holds results.sqlite).")],
    out: Annotated[Path | None, typer.Option(help="HTML file (default: RESULTS/report.html).")] = None,
    seed: SeedOption = 0,
) -> None:
    """Write the self-contained HTML report of an experiment."""
    from unveil.reports import ReportError, write_report

    try:
        typer.echo(str(write_report(results, out)))
    except ReportError as error:
        _fail(str(error))


@app.command("results")
def results_command(
    results: Annotated[Path, typer.Argument(help="Output folder of `unveil reproduce` (holds results.sqlite).")],
    csv: Annotated[Path, typer.Option("--csv", help="Folder for one CSV per table of the results store.")],
    seed: SeedOption = 0,
) -> None:
    """Export the results store (SQLite) as CSV files."""
    from unveil.experiments import ResultsStore

    if not (results / "results.sqlite").is_file():
        _fail(f"{results}: no results.sqlite (run `unveil reproduce` first)")
    with ResultsStore(results / "results.sqlite") as store:
        for path in store.export_csv(csv):
            typer.echo(str(path))



@app.command("predict")
def predict_command(
    model: Annotated[Path, typer.Argument(help="Model bundle: a `unveil train` run folder or its model/ folder.")],
    inputs: Annotated[list[Path], typer.Argument(help="Image files or folders (PNG, JPEG, DICOM; recursive).")],
    out: Annotated[Path, typer.Option(help="Folder for predictions.csv and evidence/*.png.")],
    batch_size: Annotated[int, typer.Option(help="Images per batch (memory stays flat).")] = 32,
    evidence: Annotated[bool, typer.Option(help="Write an overlay per image: lung contour and Grad-CAM.")] = True,
    segmenter: Annotated[Path | None, typer.Option(help="Lung model (default: the bundle's, else shipped).")]
    = None,
    strict: Annotated[bool, typer.Option(help="Exit with status 1 if any file is unreadable.")] = False,
    threshold: ThresholdOption = None,
    threshold_rule: ThresholdRuleOption = ThresholdRule.BUNDLE,
    target_sensitivity: TargetSensitivityOption = 0.9,
    lung_convention: LungConventionOption = None,
    max_pixels: MaxPixelsOption = 50_000_000,
    decide_anyway: Annotated[bool, typer.Option(
        "--decide-anyway", help="Also decide images that fail the lung-mask or out-of-distribution check (status "
                                "flagged); by default they are rejected: probability, reason, no decision.")] = False,
    seed: SeedOption = 0,
) -> None:
    """Score new images: probability, decision at the bundle's threshold (or one chosen by --threshold /
    --threshold-rule), lung check, OOD check (failing images are rejected). OUT must lie outside the inputs;
    the previous predictions are replaced only when the run completes."""
    from unveil.inference import PredictionError, predict_files
    from unveil.io.outputs import OutputError
    from unveil.segmentation import SegmenterError
    from unveil.training import BundleError

    _require_paths(inputs)
    try:
        rule, value = _threshold_options(threshold, threshold_rule)
        summary = predict_files(model, inputs, out, batch_size=batch_size, evidence=evidence, segmenter=segmenter,
                                strict=strict, progress=True, threshold_rule=rule, threshold=value,
                                target_sensitivity=target_sensitivity, lung_convention=lung_convention,
                                max_pixels=max_pixels, decide_anyway=decide_anyway)
    except (BundleError, SegmenterError, OutputError) as error:
        _fail(str(error))
    except PredictionError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from None
    typer.echo(json.dumps(summary.as_dict(), indent=2))
    for line in summary.unreadable:
        typer.echo(f"skipped: {line}", err=True)


@app.command("export")
def export_command(
    model: Annotated[Path, typer.Argument(help="Model bundle: a `unveil train` run folder or its model/ folder.")],
    format: Annotated[str, typer.Option("--format", help="onnx or torchscript.")] = "onnx",
    out: Annotated[Path | None, typer.Option(help="Output file (default: MODEL/model.onnx or model.pt).")] = None,
    seed: SeedOption = 0,
) -> None:
    """Export a bundle (image in [0, 1] -> probabilities), verified against PyTorch within 1e-4."""
    from unveil.inference import ExportError, export_model
    from unveil.training import BundleError
    from unveil.training.bundle import resolve_bundle_dir

    target = out or resolve_bundle_dir(model) / ("model.onnx" if format == "onnx" else "model.pt")
    try:
        description = export_model(model, format, target)
    except (BundleError, ExportError) as error:
        _fail(str(error))
    typer.echo(json.dumps({"file": str(target), "format": format,
                           "max_abs_difference_vs_pytorch": description["max_abs_difference_vs_pytorch"]}, indent=2))



def main() -> None:
    """Console entry point."""
    app(prog_name="unveil")


if __name__ == "__main__":
    sys.exit(main())
