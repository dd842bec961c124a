"""`unveil evaluate`, `unveil compare` and `unveil tables`: test models, compare two, rebuild the paper's tables."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from unveil.cli.options import (
    AllowOverlapOption,
    CacheOption,
    CommandLineError,
    DataOption,
    DuplicatesOption,
    JsonOption,
    LoaderOption,
    RebindOption,
    RecipesOption,
    ResamplesOption,
    SeedOption,
    TargetSensitivityOption,
    ThresholdOption,
    ThresholdRuleOption,
    WorkersOption,
    bind_roles,
    final_folder,
    loader_options,
    require,
    threshold_request,
    writes_output,
)
from unveil.thresholds import ThresholdRule

#: `--on` of evaluate and compare (audit's `--on` means another thing: its own help, in cli/audit.py)
OnOption = Annotated[list[str], typer.Option(
    "--on", help="Test set (repeatable): a composition name (its test split, e.g. AB) or SOURCE:PATH "
                 "(every labelled image of a dataset, read with the --option KEY=VALUE loader options).")]


@writes_output("on", "data", "option", "recipes", models=("models",), staged=True)
def evaluate_command(
    models: Annotated[list[Path], typer.Argument(help="Model bundles (OUT/model of `unveil train`).")],
    on: OnOption,
    data: DataOption = None,
    option: LoaderOption = None,
    out: Annotated[Path | None, typer.Option(
        help="Folder for results.csv, predictions.csv, tables (CSV/Markdown/LaTeX), ROC curves, reliability "
             "diagrams, confusion matrices, subgroups.csv and (several models) comparisons.csv.")] = None,
    threshold_rule: ThresholdRuleOption = ThresholdRule.BUNDLE,
    threshold: ThresholdOption = None,
    target_sensitivity: TargetSensitivityOption = 0.9,
    rebind: RebindOption = False,
    resamples: ResamplesOption = 2000,
    cache: CacheOption = None,
    workers: WorkersOption = 2,
    recipes: RecipesOption = None,
    allow_overlap: AllowOverlapOption = False,
    duplicates: DuplicatesOption = "refuse",
    as_json: JsonOption = False,
    seed: SeedOption = 0,
) -> None:
    """Test every model on every test set: seven metrics, 95 % intervals, counts and threshold rule.
    --data ROLE=SOURCE:PATH binds a role the models were not trained with."""
    from unveil.evaluation.evaluate import evaluate_models
    from unveil.evaluation.outputs import write_evaluation_outputs
    from unveil.evaluation.tables import json_rows, summary_table, test_set_legend

    request = threshold_request(threshold, threshold_rule, target_sensitivity)
    plain, per_role = loader_options(option)
    run = evaluate_models([str(m) for m in models], on, data=bind_roles(data, per_role, recipes), cache=cache,
                          threshold=request, resamples=resamples, seed=seed,
                          workers=workers, recipes=recipes, allow_overlap=allow_overlap, rebind=rebind,
                          progress=not as_json, duplicates=duplicates, options=plain)
    if out is not None:
        write_evaluation_outputs(run, out, arguments={
            "models": [str(m) for m in models], "on": on, "data": data or [], "options": option or [],
            **request.as_dict(), "resamples": resamples, "seed": seed,
            "allow_overlap": allow_overlap, "rebind": rebind, "duplicates": duplicates})
    if as_json:
        typer.echo(json.dumps(json_rows(run.rows), indent=2))
    else:
        typer.echo(summary_table(run.rows).to_markdown(index=False))
        for line in test_set_legend(run.rows):  # the full name of each test set shown by its label
            typer.echo(line)
        if out is not None:
            typer.echo(f"results, tables and ROC curves in {final_folder(out)}")
    _notes(run)


@writes_output("on", "data", "option", "recipes", models=("first", "second"), staged=True)
def compare_command(
    first: Annotated[Path, typer.Argument(help="The reference model bundle (e.g. trained from scratch).")],
    second: Annotated[Path, typer.Argument(help="The model compared with it (e.g. pre-trained); differences are "
                                                "second minus first.")],
    on: OnOption,
    data: DataOption = None,
    option: LoaderOption = None,
    claim: Annotated[str | None, typer.Option(
        help="What is said of the second model, e.g. 'pre-training helps': printed as such only when the AUC "
             "difference's interval lies above 0 ('<claim>: not shown' across it, '<claim>: contradicted' or "
             "'... hurts' below it).")] = None,
    out: Annotated[Path | None, typer.Option(
        help="Folder for the evaluation of both models (as `unveil evaluate --out`) and comparisons.csv.")] = None,
    threshold_rule: ThresholdRuleOption = ThresholdRule.BUNDLE,
    threshold: ThresholdOption = None,
    target_sensitivity: TargetSensitivityOption = 0.9,
    rebind: RebindOption = False,
    resamples: ResamplesOption = 2000,
    cache: CacheOption = None,
    workers: WorkersOption = 2,
    recipes: RecipesOption = None,
    allow_overlap: AllowOverlapOption = False,
    duplicates: DuplicatesOption = "refuse",
    as_json: JsonOption = False,
    seed: SeedOption = 0,
) -> None:
    """Compare two models on the same test images: AUC difference (DeLong's test, paired patient bootstrap) and
    balanced-accuracy difference (paired patient bootstrap), second minus first, one line per test set."""
    from unveil.evaluation.evaluate import distinct_names, evaluate_models
    from unveil.evaluation.outputs import write_evaluation_outputs
    from unveil.evaluation.paired import compare_predictions, comparison_line
    from unveil.evaluation.tables import json_rows

    names = distinct_names([str(first), str(second)])
    require(len(set(names.values())) == 2, f"compare needs two different models; got {first} twice")
    request = threshold_request(threshold, threshold_rule, target_sensitivity)
    plain, per_role = loader_options(option)
    run = evaluate_models([str(first), str(second)], on, data=bind_roles(data, per_role, recipes), cache=cache,
                          threshold=request, resamples=resamples, seed=seed, workers=workers,
                          recipes=recipes, allow_overlap=allow_overlap, rebind=rebind, progress=not as_json,
                          duplicates=duplicates, options=plain)
    compared = compare_predictions(run.predictions, names[str(first)], names[str(second)], resamples=resamples,
                                   seed=seed, keep_going=True)
    labels = dict(zip(run.rows["test_set"].astype(str), run.rows["test_set_label"].astype(str), strict=False))
    compared.insert(3, "test_set_label", compared["test_set"].map(labels))
    if out is not None:
        write_evaluation_outputs(run, out, command="unveil compare", arguments={
            "models": [str(first), str(second)], "on": on, "data": data or [], "options": option or [],
            **request.as_dict(), "resamples": resamples, "seed": seed, "claim": claim})
    if as_json:
        typer.echo(json.dumps(json_rows(compared), indent=2))
    else:
        for _, row in compared.iterrows():
            typer.echo(comparison_line(row, claim))
    _notes(run)


def _notes(run) -> None:
    """Rebound roles, unused --data and near-duplicates of training images: one line each on stderr."""
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


@writes_output("results", staged=True)
def tables_command(
    results: Annotated[list[Path], typer.Argument(help="results.csv files of `unveil evaluate --out`.")],
    out: Annotated[Path, typer.Option(help="Folder for Table 2 and Tables A1..An (CSV, Markdown, LaTeX).")],
    aggregate_seeds: Annotated[bool, typer.Option(
        help="Pool the runs of one cell that differ only by seed: mean ± half-width of the Student-t 95 % "
             "interval over seeds (default: one row per model).")] = False,
) -> None:
    """Rebuild the paper's tables from one or several evaluation result files (one row per model)."""
    import pandas as pd

    from unveil.artifacts import ArtifactError
    from unveil.evaluation.outputs import read_results
    from unveil.evaluation.tables import write_tables

    frames = []
    for path in results:
        try:
            frames.append(read_results(path))
        except ArtifactError:
            raise  # a changed or mislabelled file: the loader's message names it
        except (OSError, ValueError) as error:
            raise CommandLineError(f"{path}: unreadable results file ({error})") from None
    written = write_tables(pd.concat(frames, ignore_index=True), out, aggregate_seeds=aggregate_seeds)
    typer.echo("\n".join(str(final_folder(p.parent) / p.name) for p in written))
