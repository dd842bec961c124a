"""The HTML report of an ``unveil reproduce`` run: one self-contained file, readable anywhere.

Everything comes from the run's ``results.sqlite`` (through `ResultsStore`) and, when present, its
``reproduce.meta.json``. Pictures are embedded as base64 data URIs and the CSS and the one tiny script
are inline, so the page needs no network and can be mailed or archived as a single file. A picture
recorded in the store but missing on disk becomes a short note, never an error: a report of a partly
moved or pruned run is still worth reading.

The page leads with each audited model's one-sentence verdict, before any table. A test set given as
``SOURCE:PATH`` (an external audit set, a whole dataset) is shown by its role (`unveil.evaluation.names`), its
full binding listed under the table; every table scrolls sideways inside its card rather than overflow it.
"""

from __future__ import annotations

import base64
import datetime as _dt
import io
import json
import math
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import pandas as pd
from markupsafe import Markup

import unveil
from unveil.artifacts import Input, artifact_input, load_artifact, write_artifact
from unveil.audit.verdict import is_count, summary_sentence, value_text
from unveil.data.compose import load_recipes
from unveil.data.spec import DataSpec
from unveil.errors import UnveilError
from unveil.evaluation.names import bound_labels, legend, relabel
from unveil.evaluation.store import ResultsStore
from unveil.evaluation.tables import (
    NOT_EVALUATED_LEGEND,
    UNDEFINED_LEGEND,
    format_value,
    interval_captions,
    named_tables,
)
from unveil.models.catalog import display_name, table_rank
from unveil.provenance import write_text_atomic
from unveil.reports.clinical import clinical_context
from unveil.reports.intervals import RULE, too_wide

MIME_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif",
              ".svg": "image/svg+xml", ".webp": "image/webp"}
HEATMAP_RANGE = (0.5, 1.0)  # balanced accuracy: chance .. perfect


class ReportError(UnveilError, ValueError):
    """The results folder cannot be reported on (the message names the folder and why)."""


@dataclass(frozen=True)
class Picture:
    """One embedded picture; ``src`` is None when the recorded file is missing."""

    label: str
    path: str
    src: str | None


# --- small helpers -----------------------------------------------------------------------------------------------


def _loads(text: Any) -> Any:
    """JSON-decode a value the store wrote with json.dumps; anything else comes back as it is."""
    if not isinstance(text, str):
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, default=str, ensure_ascii=False)


def _missing(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def _architecture(name: Any) -> str:
    return display_name(name)


def _cell_label(architecture: Any, encoder: Any, training_set: Any, debias: Any = None) -> str:
    """``conv8 / B / QB`` (``conv8 / B / QB, debias end`` for a cell of the mitigated arm)."""
    mitigated = "" if _missing(debias) or debias in ("", "none") else f", debias {debias}"
    return f"{_architecture(architecture)} / {encoder} / {training_set}{mitigated}"


def _html_table(table: pd.DataFrame, *classes: str) -> Markup:
    """A DataFrame of (already formatted) values as an escaped HTML table."""
    return Markup(table.to_html(index=False, escape=True, na_rep="—", border=0, classes=["data", *classes]))


def _resolve(recorded: str, results_dir: Path) -> Path | None:
    """Where a recorded file is now. Paths were written absolute or relative to the writer's cwd, which may not
    be ours: try it as recorded, under the results folder, and from the results folder's own name on."""
    path = Path(recorded)
    candidates = [path] if path.is_absolute() else [Path.cwd() / path, results_dir / path]
    if results_dir.name and results_dir.name in path.parts:  # e.g. runs/x/evaluation/roc.png, run moved or cwd else
        parts = path.parts
        last = len(parts) - 1 - parts[::-1].index(results_dir.name)
        candidates.append(results_dir.joinpath(*parts[last + 1:]))
    return next((c for c in candidates if c.is_file()), None)


def _data_uri(path: Path) -> str:
    mime = MIME_TYPES.get(path.suffix.lower(), "application/octet-stream")
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _picture(label: str, recorded: str, results_dir: Path) -> Picture:
    found = _resolve(recorded, results_dir)
    return Picture(label, recorded, _data_uri(found) if found is not None else None)


# --- content -----------------------------------------------------------------------------------------------------


def _ordered_cells(cells: pd.DataFrame) -> pd.DataFrame:
    """Cells in the tables' order: architecture (registry order), encoder, training set."""
    return cells.assign(_rank=cells["architecture"].map(table_rank)).sort_values(
        ["_rank", "encoder", "training_set", "cell_id"]).drop(columns="_rank").reset_index(drop=True)


def _test_labels(store: ResultsStore, wide: pd.DataFrame) -> tuple[dict[str, str], dict[str, str]]:
    """Full test-set name -> label: of the evaluated test sets and of the datasets an audit verdict names in full
    (``SOURCE:PATH`` of a role: an external audit set), a dataset by its role; and the part the audit names."""
    datasets, audits = store.table("datasets"), store.table("audits")
    said = " ".join(str(t) for t in [*audits["subject"], *audits["suggests"]] if isinstance(t, str))
    bound = {str(r["role"]): DataSpec(str(r["source"]), str(r["path"])) for _, r in datasets.iterrows()}
    named = [f"{spec.source}:{spec.root}" for spec in bound.values() if f"{spec.source}:{spec.root}" in said]
    names = [*(dict.fromkeys(wide["test_set"].astype(str)) if not wide.empty else []), *named]
    labels = bound_labels(names, bound)
    return labels, {name: label for name, label in labels.items() if name in said}


def _heatmap(wide: pd.DataFrame, cells: pd.DataFrame) -> str | None:
    """Cross-dataset matrix of balanced accuracy as a PNG data URI; in-distribution cells outlined."""
    from matplotlib import colormaps
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend
    from matplotlib.patches import Rectangle

    if wide.empty or "balanced_accuracy" not in wide:
        return None
    order = [c for c in cells["cell_id"] if c in set(wide["model"])]
    order += sorted(set(wide["model"]) - set(order))
    tests = sorted(wide["test_set"].unique())
    matrix = wide.pivot_table(index="model", columns="test_set", values="balanced_accuracy", aggfunc="first",
                              dropna=False).reindex(index=order, columns=tests)
    identity = wide.drop_duplicates("model").set_index("model")
    wide_open = {(r["model"], r["test_set"]) for r in _inconclusive(wide)}
    labels = [_cell_label(*identity.loc[m, ["architecture", "encoder", "training_set", "debias"]]) for m in order]

    cmap = colormaps["RdYlGn"].with_extremes(bad="#e4e4e4")
    norm = Normalize(*HEATMAP_RANGE)
    figure = Figure(figsize=(2.6 + 1.0 * len(tests), 1.2 + 0.42 * len(order)), dpi=110, layout="constrained")
    axis = figure.add_subplot()
    image = axis.imshow(matrix.to_numpy(dtype=float), cmap=cmap, norm=norm, aspect="auto")
    figure.colorbar(image, ax=axis, label="balanced accuracy", fraction=0.08, pad=0.02)
    for i, model in enumerate(order):
        for j, test in enumerate(tests):
            value = matrix.loc[model, test]
            if _missing(value):
                axis.text(j, i, "n/a", ha="center", va="center", fontsize=8, color="#666")
                continue
            red, green, blue, _ = cmap(norm(value))
            dark = 0.299 * red + 0.587 * green + 0.114 * blue < 0.5
            mark = "?" if (model, test) in wide_open else ""  # too wide to conclude (reports.intervals)
            axis.text(j, i, f"{value:.2f}{mark}", ha="center", va="center", fontsize=8,
                      color="white" if dark else "black")
            if str(identity.loc[model, "training_set"]) == str(test):  # tested on its own composition
                # inset, so that neighbouring cells do not look outlined too
                axis.add_patch(Rectangle((j - 0.42, i - 0.42), 0.84, 0.84, fill=False, edgecolor="black", linewidth=2))
    shown = dict(zip(wide["test_set"], wide["test_set_label"], strict=True)) if "test_set_label" in wide else {}
    axis.set_xticks(range(len(tests)), [f"Test {shown.get(t, t)}" for t in tests], fontsize=8)
    axis.set_yticks(range(len(order)), labels, fontsize=8)
    axis.set_xlabel("test set", fontsize=9)
    axis.tick_params(length=0)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": None})
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _inconclusive(wide: pd.DataFrame, metric: str = "balanced_accuracy") -> list[dict[str, Any]]:
    """(model, test set) results whose ``metric`` interval is too wide to conclude from (reports.intervals)."""
    if wide.empty or metric not in wide:
        return []
    found = []
    for _, row in wide.sort_values(["model", "test_set"]).iterrows():
        if _missing(row[metric]):  # undefined (one class only, ...): say why, not "too few patients"
            note = row.get(f"{metric}_note")
            why: str | None = note if isinstance(note, str) and note else "undefined"
        else:
            why = too_wide(row.get(f"{metric}_low"), row.get(f"{metric}_high"))
        if why is not None:
            found.append({"model": row["model"], "test_set": row["test_set"],
                          "test_label": row.get("test_set_label", row["test_set"]),
                          "label": _cell_label(row["architecture"], row["encoder"], row["training_set"],
                                               row.get("debias")),
                          "value": _interval(row[metric], row.get(f"{metric}_low"), row.get(f"{metric}_high")),
                          "patients": int(row["patients"]) if "patients" in row and not _missing(row["patients"])
                          else None, "why": why})
    return found


def _verdict_interval(measure: str, low: Any, high: Any) -> str:
    """The too-wide note of an audit verdict: AUC and balanced accuracy against chance and the width, a drop
    against the width only; counts and ratios have none."""
    if measure.startswith(("ROC AUC", "balanced accuracy")):
        why = too_wide(low, high)
    elif " drop " in f" {measure} ":
        why = too_wide(low, high, chance=False)
    else:
        return ""
    return f"too wide to conclude: {why}" if why else ""


def _interval(value: Any, low: Any, high: Any, digits: int = 3) -> str:
    text = format_value(None if _missing(value) else float(value), digits)
    if _missing(low) and _missing(high):
        return text
    bounds = [format_value(None if _missing(b) else float(b), digits) for b in (low, high)]
    return f"{text} [{bounds[0]}, {bounds[1]}]"


def _recipes(experiment: dict[str, Any]) -> Any:
    """The experiment's composition recipes (its ``recipes:`` file, else the paper's Table 1), or None
    (descriptions are a courtesy, never a reason to fail)."""
    try:
        return load_recipes(experiment.get("recipes") or None)  # the path `reproduce` recorded, if any
    except Exception:  # any failure only drops the descriptions
        return None


def _datasets(store: ResultsStore, recipes: Any) -> list[dict[str, Any]]:
    rows = []
    for _, row in store.table("datasets").sort_values("role").iterrows():
        findings = _loads(row["by_finding"]) or {}
        role = recipes.roles.get(row["role"]) if recipes is not None else None
        rows.append({"role": row["role"], "description": role.description if role else "", "source": row["source"],
                     "path": row["path"], "images": row["images"], "patients": row["patients"],
                     "covid_pos": row["covid_pos"], "covid_neg": row["covid_neg"],
                     "findings": ", ".join(f"{k} {v}" for k, v in sorted(findings.items(),
                                                                         key=lambda kv: (-kv[1], kv[0])))})
    return rows


def _cells(cells: pd.DataFrame, recipes: Any) -> list[dict[str, Any]]:
    rows = []
    for _, cell in cells.iterrows():
        recipe = recipes.recipes.get(str(cell["training_set"])) if recipes is not None else None
        rows.append({"cell_id": cell["cell_id"], "label": _cell_label(cell["architecture"], cell["encoder"],
                                                                      cell["training_set"], cell.get("debias")),
                     "training_set": cell["training_set"],
                     "roles": " + ".join(recipe.roles) if recipe else "",
                     "description": recipe.description if recipe else "",
                     "status": cell["status"] or "—",
                     "seconds": "—" if _missing(cell["seconds"]) else f"{float(cell['seconds']):.0f}",
                     "best_epoch": "—" if _missing(cell["best_epoch"]) else int(cell["best_epoch"]),
                     "val_auc": format_value(None if _missing(cell["val_auc"]) else float(cell["val_auc"]), 3)})
    return rows


def _pictures(files: pd.DataFrame, kind: str, cell_id: str, results_dir: Path,
              caption: str | None = None) -> list[Picture]:
    """The cell's recorded pictures of one kind, captioned ``caption`` or by their stored label."""
    chosen = files[(files["kind"] == kind) & (files["cell_id"] == cell_id)].sort_values("label")
    # saliency labels are "<index>:<stem>"; the stem is what a reader wants
    return [_picture(caption or str(r["label"]).split(":", 1)[-1], str(r["path"]), results_dir)
            for _, r in chosen.iterrows()]


def _audits(store: ResultsStore, cells: pd.DataFrame, files: pd.DataFrame, results_dir: Path,
            tests: dict[str, str]) -> list[dict[str, Any]]:
    """Per audited cell: its verdicts (test sets by their labels, ``tests``), headline sentence and pictures."""
    audits = store.table("audits")
    audited = set(audits["cell_id"]) | set(files.loc[files["kind"] != "roc", "cell_id"])
    order = [c for c in cells["cell_id"] if c in audited] + sorted(audited - set(cells["cell_id"]))
    labels = {c["cell_id"]: _cell_label(c["architecture"], c["encoder"], c["training_set"], c.get("debias"))
              for _, c in cells.iterrows()}
    sections = []
    for cell_id in order:
        verdicts, fired = [], []
        for _, v in audits[audits["cell_id"] == cell_id].iterrows():
            flagged = None if _missing(v["flagged"]) else bool(v["flagged"])
            fired.append((str(v["test"]), flagged))
            measure = v["measure"] if "measure" in v and not _missing(v["measure"]) else ""
            verdicts.append({"test": v["test"], "subject": relabel(str(v["subject"]), tests),
                             "flagged": bool(flagged), "measure": measure,
                             "value": value_text(None if _missing(v["value"]) else float(v["value"]), None, None,
                                                 measure=str(measure)) if is_count(str(measure))
                             else _interval(v["value"], v["low"], v["high"]), "rule": v["rule"] or "",
                             "interval": _verdict_interval(str(measure), v["low"], v["high"]),
                             "flag": "—" if flagged is None else "yes" if flagged else "no",
                             "suggests": relabel(v["suggests"] or "", tests)})
        sections.append({"cell_id": cell_id, "label": labels.get(cell_id, cell_id), "verdicts": verdicts,
                         "summary": summary_sentence(fired) if fired else "",
                         "flags": sum(v["flagged"] for v in verdicts),
                         "tsne": [p for kind in ("tsne_by_source", "tsne_by_label")
                                  for p in _pictures(files, kind, cell_id, results_dir)],
                         "saliency": _pictures(files, "saliency", cell_id, results_dir)})
    return sections


def _context(store: ResultsStore, results_dir: Path) -> dict[str, Any]:
    """Everything the template shows, already formatted: the template only lays it out."""
    experiment = dict(store.table("experiment")[["key", "value"]].itertuples(index=False))
    meta_path = results_dir / "reproduce.meta.json"
    meta = _loads(meta_path.read_text(encoding="utf-8")) if meta_path.is_file() else None
    cells = _ordered_cells(store.table("cells"))
    files = store.table("files")
    wide = store.wide_results()
    labels, audited = _test_labels(store, wide)
    if not wide.empty:
        wide = wide.assign(test_set_label=wide["test_set"].astype(str).map(labels))
    recipes = _recipes(experiment)

    tables, summary = [], None
    if not wide.empty:
        named = named_tables(wide)
        _, table2, table2_notes = named.pop("table2")
        summary = {"html": _html_table(table2, "summary"), "notes": table2_notes}
        for index, (stem, (_, table, notes)) in enumerate(named.items(), 1):
            tables.append({"title": f"Table A{index}: {_architecture(stem.split('_', 1)[1])}",
                           "html": _html_table(table, "metrics"), "notes": notes})
    roc = []
    for _, cell in cells.iterrows():
        label = _cell_label(cell["architecture"], cell["encoder"], cell["training_set"], cell.get("debias"))
        roc.append({"label": label, "pictures": _pictures(files, "roc", cell["cell_id"], results_dir, label)})
    cell_labels = {c["cell_id"]: _cell_label(c["architecture"], c["encoder"], c["training_set"], c.get("debias"))
                   for _, c in cells.iterrows()}
    clinical = clinical_context(store, wide, cells, files, labels, cell_labels, lambda rows, kind, cell_id, caption:
                                _pictures(rows, kind, cell_id, results_dir, caption))
    return {**clinical,
        "name": experiment.get("name", results_dir.name), "seed": _loads(experiment.get("seed", "—")),
        "source": experiment.get("source", "—"), "version": unveil.__version__,
        "run_date": meta.get("created_utc", "—") if isinstance(meta, dict) else "—",
        "written": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "results_dir": str(results_dir), "n_cells": len(cells),
        "n_tests": int(wide["test_set"].nunique()) if not wide.empty else 0,
        "summary": summary, "intervals": interval_captions(),
        "legend": f"{UNDEFINED_LEGEND}; {NOT_EVALUATED_LEGEND}",
        "inconclusive": _inconclusive(wide), "interval_rule": RULE,
        "notes": _loads(experiment.get("notes", "[]")) or [],
        "heatmap": _heatmap(wide, cells), "tables": tables, "roc": roc,
        "audits": _audits(store, cells, files, results_dir, labels), "test_legend": legend(audited),
        "datasets": _datasets(store, recipes), "cells": _cells(cells, recipes),
        "meta": _pretty(meta) if meta is not None else None,
        "versions": _pretty(_loads(experiment["versions"])) if "versions" in experiment else None,
        "document": _pretty(_loads(experiment["document"])) if "document" in experiment else None,
    }


# --- page ----------------------------------------------------------------------------------------------------------

#: the page (Jinja2, autoescaped); a package file so that HTML and CSS are edited as such
TEMPLATE = Path(__file__).with_name("report.html.j2")


def render_report(results_dir: str | Path) -> str:
    """The report of ``results_dir`` as an HTML string (see `write_report`)."""
    results_dir = Path(results_dir).resolve()
    database = results_dir / "results.sqlite"
    if not database.is_file():  # checked first: ResultsStore would create an empty store
        raise ReportError(f"{results_dir}: no results.sqlite here; is this the output folder of `unveil reproduce`?")
    try:
        with ResultsStore(database) as store:
            context = _context(store, results_dir)
    except sqlite3.DatabaseError as error:
        raise ReportError(f"{database}: not a readable results store ({error})") from None
    environment = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True,
                                     lstrip_blocks=True)
    return environment.from_string(TEMPLATE.read_text(encoding="utf-8")).render(**context)


def write_report(results_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the self-contained HTML report of an experiment run; default ``results_dir/report.html``."""
    path = Path(out) if out is not None else Path(results_dir) / "report.html"
    inputs = [*stage_inputs(Path(results_dir)), artifact_input(Path(results_dir) / "results.sqlite", "results")]
    write_text_atomic(path, render_report(results_dir))
    write_artifact(path, "report", [path.name], command="unveil report", config={"results": str(results_dir)},
                   inputs=inputs)
    return path


def stage_inputs(results_dir: Path) -> list[Input]:
    """The evaluations and audits the report shows, each verified by the artifact loader first (a changed file
    is an error naming it; an older run's folders are read with a warning)."""
    folders = sorted(p for stage in ("evaluation", "audit") for p in (results_dir / stage).glob("*") if p.is_dir())
    return [artifact_input(folder, load_artifact(folder).kind or folder.parent.name, folder.parent.name)
            for folder in folders]
