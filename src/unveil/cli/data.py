"""`unveil data`: load, check, split and compose datasets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from unveil.cli.options import (
    HELP_STYLE,
    DataOption,
    JsonOption,
    LoaderOption,
    MaxPixelsOption,
    RecipesOption,
    SeedOption,
    StrictOption,
    WorkersOption,
    finite_float,
    plain_options,
    require,
    role_bindings,
    source_specs,
)

app = typer.Typer(help="Load, check, split and compose datasets.", **HELP_STYLE)

SourceArgument = Annotated[str, typer.Argument(
    help="Dataset source: covid-chestxray, figure1, chestxray, rsna, montgomery, shenzhen, lung-segmentation, "
         "covid-qu-ex, hospital-csv, dicom-folder (docs/datasets.md).")]
PathArgument = Annotated[Path, typer.Argument(help="Dataset root folder (or the CSV, for hospital-csv; the export's "
                                                   "folder, for dicom-folder).")]
TestFractionOption = Annotated[float, typer.Option(parser=finite_float, help="Share of patients in test.")]
ValFractionOption = Annotated[float, typer.Option(
    parser=finite_float, help="Share of the remaining patients in validation.")]


@app.command("check")
def data_check(
    source: SourceArgument,
    path: PathArgument,
    as_json: JsonOption = False,
    option: LoaderOption = None,
    workers: WorkersOption = 1,
    max_pixels: MaxPixelsOption = 50_000_000,
    no_images: Annotated[bool, typer.Option(
        "--no-images", help="Skip decoding images (no unreadable/duplicate check).")] = False,
    strict: StrictOption = False,
    also: Annotated[list[str] | None, typer.Option(
        "--with", help="Another dataset SOURCE:PATH checked together, to find duplicates across "
                       "sources (repeatable; default loader options).")] = None,
) -> None:
    """Load, validate and summarise a dataset: counts, unreadable and missing files, duplicates."""
    from unveil.data.check import summarise
    from unveil.data.sources import load_source

    loads = [load_source(source, path, **plain_options(option))]
    loads += [load_source(spec.source, spec.root) for spec in source_specs(also, option="--with")]
    report = summarise(loads, read_images=not no_images, workers=workers, max_pixels=max_pixels)
    typer.echo(json.dumps(report.to_dict(), indent=2) if as_json else report.to_text())
    if strict and report.has_problems:
        raise typer.Exit(1)


@app.command("split")
def data_split(
    source: SourceArgument,
    path: PathArgument,
    out: Annotated[Path, typer.Option(help="Split file to write (CSV); a .meta.json is written beside it.")],
    option: LoaderOption = None,
    test_fraction: TestFractionOption = 0.3,
    val_fraction: ValFractionOption = 0.2,
    stratify: Annotated[str, typer.Option(help="Comma-separated columns to stratify patients by.")] = "covid",
    respect_original_split: Annotated[bool, typer.Option(
        "--respect-original-split", help="Keep the source's own train/val/test parts (e.g. COVID-QU-Ex's "
                                         "Train/Val/Test folders) instead of drawing a split.")] = False,
    seed: SeedOption = 0,
) -> None:
    """Write a patient-exclusive, stratified, seeded train/val/test split file for one dataset."""
    from unveil.data.leakage import check_leakage
    from unveil.data.sources import load_source
    from unveil.data.splits import drop_duplicate_images, original_split, patient_exclusive_split, write_split_file
    from unveil.provenance import write_run_metadata

    options = plain_options(option)
    records, removed = drop_duplicate_images(load_source(source, path, **options).records)
    for message in removed:
        typer.echo(f"warning: {message}", err=True)
    if respect_original_split:
        split = original_split(records)
    else:
        split = patient_exclusive_split(records, seed=seed, test_fraction=test_fraction, val_fraction=val_fraction,
                                        stratify_by=[c for c in stratify.split(",") if c])
    check_leakage(records.assign(split=split))
    digest = write_split_file(out, records, split)
    counts = split.value_counts().to_dict()
    write_run_metadata(out.with_suffix(".meta.json"), "unveil data split", {
        "source": source, "path": str(path), "options": options, "seed": seed,
        "test_fraction": test_fraction, "val_fraction": val_fraction, "stratify": stratify,
        "respect_original_split": respect_original_split},
        extra={"split_file": str(out), "sha256": digest, "counts": counts})
    typer.echo(json.dumps({"split_file": str(out), "sha256": digest, "counts": counts}))


@app.command("compose")
def data_compose(
    recipe: Annotated[str, typer.Argument(help="Composition name: A, AB, AC, AD, D (or one of --recipes).")],
    data: DataOption,
    option: LoaderOption = None,
    recipes: RecipesOption = None,
    out: Annotated[Path | None, typer.Option(help="Folder for the split file and its metadata.")] = None,
    as_json: JsonOption = False,
    test_fraction: TestFractionOption = 0.3,
    val_fraction: ValFractionOption = 0.2,
    check_images: Annotated[bool, typer.Option(
        help="Also decode every image and refuse identical or near-identical images in two splits.")] = False,
    workers: WorkersOption = 1,
    seed: SeedOption = 0,
) -> None:
    """Build a training/test composition (roles bound with --data ROLE=SOURCE:PATH) and print per-split
    class counts by source."""
    from unveil.data.compose import compose, load_recipes
    from unveil.data.fingerprints import fingerprint_images
    from unveil.data.leakage import check_leakage
    from unveil.data.splits import write_split_file
    from unveil.provenance import write_run_metadata

    book = load_recipes(recipes)
    chosen = book.recipe(recipe)
    bindings = role_bindings(data, option, recipes)
    for role in chosen.roles:
        described = f" ({book.roles[role].description})" if role in book.roles else ""
        require(role in bindings, f"composition {recipe} needs role {role}{described}; bind it with "
                                  f"--data {role}=SOURCE:PATH")
    tables = {role: bindings[role].load() for role in chosen.roles}
    composition = compose(chosen, tables, seed=seed, test_fraction=test_fraction, val_fraction=val_fraction)
    if check_images:
        check_leakage(composition.records, fingerprint_images(composition.records, workers=workers))
    result: dict[str, Any] = {"recipe": chosen.name, "description": chosen.description, "seed": seed,
                              "balance": chosen.balance, "splits": composition.counts(),
                              "warnings": composition.warnings}
    if out is not None:
        split_file = out / f"{chosen.name}.splits.csv"
        digest = write_split_file(split_file, composition.records, composition.records["split"],
                                  command="unveil data compose", config={
                                      "recipe": chosen.name, "seed": seed, "test_fraction": test_fraction,
                                      "val_fraction": val_fraction,
                                      "bindings": {r: (s.source, s.root) for r, s in bindings.items()}})
        result.update(split_file=str(split_file), sha256=digest)
        write_run_metadata(out / f"{chosen.name}.meta.json", "unveil data compose", {
            "recipe": chosen.name, "bindings": {r: (s.source, s.root) for r, s in bindings.items()},
            "options": option or [], "recipes": recipes, "seed": seed, "test_fraction": test_fraction,
            "val_fraction": val_fraction}, extra={"result": result})
    _print_composition(result, as_json)


def _print_composition(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    for split, counts in result["splits"].items():
        by_source = "; ".join(f"{s}: +{c['covid+']} -{c['covid-']}" for s, c in counts["by_source"].items())
        typer.echo(f"{split:5s} total {counts['total']:5d}  covid+ {counts['covid+']:5d}  "
                   f"covid- {counts['covid-']:5d}  ({by_source})")
    for warning in result["warnings"]:
        typer.echo(f"warning: {warning}", err=True)
