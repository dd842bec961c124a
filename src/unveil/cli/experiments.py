"""`unveil reproduce`, `demo`, `report` and `results`: experiment grids and their results store."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from unveil.cli.options import (
    CommandLineError,
    DataOption,
    FileSeedOption,
    LoaderOption,
    SeedOption,
    TrackingUriOption,
    TrackOption,
    WorkersOption,
    require,
    role_bindings,
    tracking_settings,
    writes_output,
)


def _reproduce(experiment_file: str, out: Path, jobs: int | None, workers: int, seed: int | None,
               report: bool, cluster: str | None = None, data: list[str] | None = None,
               option: list[str] | None = None, tracking: Any = None) -> None:
    import time

    from unveil.experiments import load_experiment, reproduce
    from unveil.progress import duration, progress_log

    started = time.perf_counter()

    def say(message: str) -> None:  # stage and cell lines: stderr, always
        progress_log.info("[%6.0f s] %s", time.perf_counter() - started, message)

    experiment = load_experiment(experiment_file, seed=seed)
    if data or option:  # ROLE=PATH: the role's default source in the experiment's recipes
        experiment = load_experiment(experiment_file, seed=seed,
                                     data=role_bindings(data, option, experiment.recipes))
    store = reproduce(experiment, out, jobs=jobs, workers=workers, report=report, progress=say, cluster=cluster,
                      tracking=tracking)
    say("done")
    elapsed = duration(time.perf_counter() - started)
    what = "results store" if store.suffix == ".sqlite" else "results over seeds"
    typer.echo(f"done in {elapsed}: {what} {store}" + (f", report {out / 'report.html'}" if report else ""))


@writes_output("experiment", "data", "option")
def reproduce_command(
    experiment: Annotated[str, typer.Argument(
        help="Experiment YAML file, or a shipped one: demo, paper, public, public-full, public-scale.")],
    out: Annotated[Path | None, typer.Option(help="Output folder (a rerun continues where it stopped).")] = None,
    jobs: Annotated[int | None, typer.Option(
        help="Cells trained in parallel processes, or the workers of --cluster local (default: the file's).")]
    = None,
    workers: WorkersOption = 2,
    cluster: Annotated[str | None, typer.Option(
        help="Pre-trainings and cells as tasks of a Dask cluster: 'local' (a LocalCluster of --jobs workers) or "
             "a scheduler address (tcp://host:8786); see docs/cluster.md.")] = None,
    report: Annotated[bool, typer.Option(help="Write OUT/report.html at the end.")] = True,
    seed: FileSeedOption = None,
    data: DataOption = None,
    option: LoaderOption = None,
    show: Annotated[bool, typer.Option(
        "--show", help="Print the experiment file and exit (copy a shipped one: --show paper > my.yaml).")] = False,
    track: TrackOption = None,
    tracking_uri: TrackingUriOption = None,
) -> None:
    """Run an experiment grid: pre-process, pre-train, train every cell, evaluate, audit, report. Without
    --seed, the experiment file's seed. --data ROLE=SOURCE:PATH (or ROLE=PATH) binds or replaces a role of the
    experiment; a relative PATH is from the current folder. --track (and --tracking-uri) replace the file's
    tracking: section."""
    if show:
        from unveil.experiments.config import SHIPPED, experiment_path

        path = experiment_path(experiment)
        require(path.is_file(), f"{experiment}: no such experiment file (shipped: {', '.join(SHIPPED)})")
        typer.echo(path.read_text(encoding="utf-8"), nl=False)
        return
    if out is None:
        raise CommandLineError("reproduce needs --out FOLDER (or --show to print the experiment file)")
    _reproduce(experiment, out, jobs, workers, seed, report, cluster, data, option,
               tracking_settings(track, tracking_uri))


@writes_output()
def demo_command(
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("runs/demo"),
    workers: WorkersOption = 2,
    seed: SeedOption = 0,
) -> None:
    """The main job on the embedded synthetic data: the shipped `demo` experiment, end to end."""
    _reproduce("demo", out, None, workers, seed, True)


ResultsArgument = Annotated[Path, typer.Argument(
    help="Output folder of `unveil reproduce` (holds results.sqlite).")]


@writes_output(lambda values: [values["results"] / "results.sqlite"], file=True)
def report_command(
    results: ResultsArgument,
    out: Annotated[Path | None, typer.Option(help="HTML file (default: RESULTS/report.html).")] = None,
) -> None:
    """Write the self-contained HTML report of an experiment (of several seeds: each seed's report, the tables over
    the seeds and RESULTS/report.html)."""
    from unveil.reports import write_report
    from unveil.reports.seeds import seed_folder, seeds_in, write_seed_tables, write_seeds_report

    seeds = seeds_in(results)
    if not (results / "results.sqlite").is_file() and seeds:
        require(out is None, f"{results} holds one run per seed ({', '.join(map(str, seeds))}): its report is "
                             f"{results / 'report.html'}; --out is for a single run")
        for seed in seeds:
            typer.echo(str(write_report(seed_folder(results, seed))))
        write_seed_tables(results, seeds)
        typer.echo(str(write_seeds_report(results, seeds, results.name)))
        return
    typer.echo(str(write_report(results, out)))


@writes_output(lambda values: [values["results"] / "results.sqlite"], out="csv")
def results_command(
    results: ResultsArgument,
    csv: Annotated[Path, typer.Option("--csv", help="Folder for one CSV per table of the results store.")],
) -> None:
    """Export the results store (SQLite) as CSV files."""
    from unveil.experiments import ResultsStore

    require((results / "results.sqlite").is_file(), f"{results}: no results.sqlite (run `unveil reproduce` first)")
    with ResultsStore(results / "results.sqlite") as store:
        for path in store.export_csv(csv):
            typer.echo(str(path))
