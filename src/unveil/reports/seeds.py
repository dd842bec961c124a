"""An experiment run under several seeds (``seeds: [0, 1, 2]``): each seed is one full run in OUT/seed-N (its own
splits, pre-training, cells, evaluation, audits, results store and report); this module aggregates them into
OUT/tables (Table 2 as mean and Student-t 95 % interval over the seeds, every seed's rows, the mitigated arm per
seed and over seeds) and OUT/report.html, a page that leads with those tables and links each seed's report.
"""

from __future__ import annotations

import html
from pathlib import Path

import pandas as pd

from unveil.evaluation.store import ResultsStore
from unveil.evaluation.table_text import markdown_table
from unveil.evaluation.tables import SEED_INTERVAL, named_tables, pool_seeds, with_labels
from unveil.provenance import write_text_atomic
from unveil.reports.intervals import RULE, too_wide
from unveil.reports.mitigation import headline, mitigation_rows, over_seeds, run_table, seeds_table

SEED_FOLDER = "seed-{seed}"


def seed_folder(out: str | Path, seed: int) -> Path:
    return Path(out) / SEED_FOLDER.format(seed=seed)


def seeds_in(out: str | Path) -> list[int]:
    """The seeds whose runs OUT holds (``seed-N/results.sqlite``), in increasing order."""
    found = []
    for folder in Path(out).glob("seed-*"):
        number = folder.name.removeprefix("seed-")
        if number.lstrip("-").isdigit() and (folder / "results.sqlite").is_file():
            found.append(int(number))
    return sorted(found)


def write_mitigation_table(store: ResultsStore, folder: Path) -> pd.DataFrame:
    """One run's mitigated arm side by side: FOLDER/mitigation.csv and .md (nothing when the run has no arm)."""
    rows = mitigation_rows(store)
    if not rows.empty:
        write_text_atomic(folder / "mitigation.csv", rows.to_csv(index=False, lineterminator="\n"))
        write_text_atomic(folder / "mitigation.md", markdown_table(
            run_table(rows), "The mitigated arm side by side (one seed; 95 % intervals as each test reports them)",
            [headline(rows)]))
    return rows


def seed_rows(out: str | Path, seeds: list[int]) -> tuple[pd.DataFrame, dict[int, pd.DataFrame]]:
    """Every seed's results rows (``seed`` column; model = cell id) and its mitigation rows."""
    rows, mitigation = [], {}
    for seed in seeds:
        with ResultsStore(seed_folder(out, seed) / "results.sqlite") as store:
            rows.append(store.wide_results().assign(seed=seed))
            mitigation[seed] = mitigation_rows(store)
    return pd.concat(rows, ignore_index=True), mitigation


def pooled_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """The seeds of each cell pooled (:func:`~unveil.evaluation.tables.pool_seeds`), named by the cell id (the
    seeds' bundles differ, so the bundle path is not part of the name)."""
    pooled = pool_seeds(rows.drop(columns="bundle", errors="ignore"))
    pooled["model"] = [names.split(" + ")[0] for names in pooled["model"]]  # one cell id; the seeds in `seeds`
    return pooled


def too_wide_notes(pooled: pd.DataFrame, metric: str = "balanced_accuracy") -> list[str]:
    """One line per (cell, test set) of Table 2 whose interval over the seeds is too wide to conclude (the
    report's rule, :func:`unveil.reports.intervals.too_wide`, on mean ± half-width)."""
    lines = []
    for _, row in pooled.sort_values(["model", "test_set"]).iterrows():
        mean, half = row.get(metric), row.get(f"{metric}_half_width")
        if pd.isna(mean):
            continue
        reason = too_wide(mean - half, mean + half) if not pd.isna(half) else "one seed: no interval"
        if reason:
            lines.append(f"{row['model']} on Test {row.get('test_set_label') or row['test_set']}: "
                         f"{mean:.2f} ± {half:.2f}: {reason}")
    return [f"{RULE} (over seeds): " + "; ".join(lines)] if lines else []


def write_seed_tables(out: str | Path, seeds: list[int]) -> dict[str, Path]:
    """OUT/tables: table2 (pooled over seeds), results.csv (every seed's rows), results_by_cell.csv (pooled),
    mitigation_by_seed.csv and mitigation.md/.csv (over seeds)."""
    tables = Path(out) / "tables"
    rows, mitigation = seed_rows(out, seeds)
    pooled = pooled_rows(rows)
    written = {"results": write_text_atomic(tables / "results.csv", with_labels(rows).to_csv(
        index=False, lineterminator="\n")),
        "results_by_cell": write_text_atomic(tables / "results_by_cell.csv", pooled.to_csv(
            index=False, lineterminator="\n"))}
    for stem, (caption, table, notes) in named_tables(pooled, pooled=True).items():
        caption = f"{caption}; seeds {', '.join(map(str, seeds))}"
        notes = too_wide_notes(pooled) + notes if stem == "table2" else notes
        written[stem] = write_text_atomic(tables / f"{stem}.md", markdown_table(table, caption, notes))
    by_seed = pd.concat([frame.assign(seed=seed) for seed, frame in mitigation.items()], ignore_index=True)
    if not by_seed.empty:
        aggregated = over_seeds(mitigation)
        written["mitigation_by_seed"] = write_text_atomic(tables / "mitigation_by_seed.csv",
                                                          by_seed.to_csv(index=False, lineterminator="\n"))
        written["mitigation_csv"] = write_text_atomic(tables / "mitigation.csv",
                                                      aggregated.to_csv(index=False, lineterminator="\n"))
        written["mitigation"] = write_text_atomic(tables / "mitigation.md", markdown_table(
            seeds_table(aggregated), "The mitigated arm side by side, over seeds (mitigated minus unmitigated, "
            f"{SEED_INTERVAL})", [headline(aggregated)]))
    return written


def write_seeds_report(out: str | Path, seeds: list[int], name: str) -> Path:
    """OUT/report.html: the pooled Table 2 and mitigated arm first, then a link to each seed's full report."""
    out = Path(out)
    rows, mitigation = seed_rows(out, seeds)
    pooled = pooled_rows(rows)
    parts = [f"<h1>{html.escape(name)}: {len(seeds)} seeds</h1>",
             "<p>Each seed is one full run (its own patient-exclusive splits, pre-training, training, evaluation and "
             "audit); the tables give the mean over the seeds and the Student-t 95 % interval of that mean.</p>"]
    caption, table, notes = named_tables(pooled, pooled=True)["table2"]
    notes = too_wide_notes(pooled) + notes
    parts += [f"<h2>{html.escape(caption)}</h2>", table.to_html(index=False, escape=True, border=0),
              "<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>"]
    aggregated = over_seeds(mitigation)
    if not aggregated.empty:
        parts += ["<h2>The mitigated arm side by side (mitigated minus unmitigated, over seeds)</h2>",
                  f"<p><b>{html.escape(headline(aggregated))}</b></p>",
                  seeds_table(aggregated).to_html(index=False, escape=True, border=0)]
        for seed, frame in mitigation.items():
            if not frame.empty:
                parts += [f"<h3>Seed {seed}</h3>", run_table(frame).to_html(index=False, escape=True, border=0)]
    links = "".join(f'<li><a href="{SEED_FOLDER.format(seed=s)}/report.html">seed {s}</a></li>' for s in seeds)
    parts += [f"<h2>Each seed's report</h2><ul>{links}</ul>"]
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>" + html.escape(name) + "</title><style>"
            "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{padding:2px 8px;"
            "border-bottom:1px solid #ddd;text-align:left}</style></head><body>" + "\n".join(parts) + "</body></html>")
    return write_text_atomic(out / "report.html", page + "\n")
