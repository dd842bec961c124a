"""The `unveil` command line: a thin layer over the library (each command calls one function).

One module per command group; the options they share are declared once in :mod:`unveil.cli.options`.
A user's mistake raises :class:`unveil.errors.UnveilError`: it is caught here, once, and printed as
``error: <message>`` (exit 2); any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from unveil import __version__
from unveil.cli import audit, data, evaluate, experiments, lungs, predict, synth, train
from unveil.cli.options import HELP_STYLE
from unveil.errors import UnveilError


class UnveilGroup(TyperGroup):
    """The root command group: turns a user's mistake (any UnveilError) into one line on stderr."""

    # typer hands its own Context (a subclass of the one the base class names, from typer's private vendored click)
    def invoke(self, ctx: typer.Context) -> Any:  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except UnveilError as error:
            typer.echo(f"error: {error}", err=True)
            raise typer.Exit(error.exit_code) from None


app = typer.Typer(help="unveil: chest X-ray classifiers that are honest about small, biased data.",
                  add_completion=False, cls=UnveilGroup, **HELP_STYLE)


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


app.add_typer(data.app, name="data")
app.add_typer(synth.app, name="synth")
app.add_typer(lungs.app, name="lungs")
app.command("segment")(lungs.segment)
app.command("preprocess")(train.preprocess)
app.command("pretrain")(train.pretrain_command)
app.command("train")(train.train_command)
app.command("evaluate")(evaluate.evaluate_command)
app.command("compare")(evaluate.compare_command)
app.command("tables")(evaluate.tables_command)
app.command("audit")(audit.audit_command)
app.command("reproduce")(experiments.reproduce_command)
app.command("demo")(experiments.demo_command)
app.command("report")(experiments.report_command)
app.command("results")(experiments.results_command)
app.command("predict")(predict.predict_command)
app.command("export")(predict.export_command)


def main() -> None:
    """Console entry point."""
    app(prog_name="unveil")


if __name__ == "__main__":
    main()  # typer exits with the command's status
