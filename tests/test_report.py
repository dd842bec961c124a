"""The HTML report: built from a hand-made results folder, checked as text and in headless Chromium."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from unveil.audit import Verdict
from unveil.evaluation.store import REPORTED_METRICS, ResultsStore
from unveil.reports import ReportError, write_report

SECTIONS = ("header", "summary", "heatmap", "tables", "roc", "audit", "datasets", "provenance")
CELLS = {"conv8-none-AB": ("conv8", "none", "AB"), "conv8-B-AC": ("conv8", "B", "AC")}
TESTS = ("AB", "AC")


def _records(source: str, patients: int) -> pd.DataFrame:
    return pd.DataFrame([{"finding": "covid" if p % 2 else "normal", "source": source, "patient_id": f"p{p}",
                          "covid": p % 2} for p in range(patients) for _ in range(2)])


def _rows(cell_index: int) -> pd.DataFrame:
    """One row per test set with every column `ResultsStore.put_results` reads; the first DOR is infinite."""
    rows = []
    for test_index, test_set in enumerate(TESTS):
        row: dict[str, object] = {"test_set": test_set}
        for metric_index, metric in enumerate(REPORTED_METRICS):
            value = 0.55 + 0.1 * cell_index + 0.2 * test_index + 0.01 * metric_index
            if metric in ("dor", "dor_corrected"):
                value = math.inf if (metric == "dor" and cell_index == 0 and test_index == 0) else 12.5
            row |= {metric: value, f"{metric}_low": value - 0.05, f"{metric}_high": value + 0.05,
                    f"{metric}_wilson_low": value - 0.06, f"{metric}_wilson_high": value + 0.06,
                    f"{metric}_note": "fn = 0" if math.isinf(value) else None}
        row |= {"images": 40, "patients": 20, "positive_images": 20, "negative_images": 20, "tp": 18, "fp": 0,
                "tn": 20, "fn": 2, "threshold": 0.5, "threshold_rule": "bundle", "resamples": 100, "seed": 7}
        rows.append(row)
    return pd.DataFrame(rows)


def _png(path: Path, colour: tuple[int, int, int]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (12, 8), colour).save(path)
    return path


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A results folder as `unveil reproduce` leaves it (two cells, two test sets, one audit), and its report."""
    results = tmp_path_factory.mktemp("run") / "demo-run"
    with ResultsStore(results / "results.sqlite") as store:
        store.set_experiment({"name": "demo <b>&</b>", "seed": 7, "source": "experiments/demo.yaml",
                              "versions": {"python": "3.11", "torch": "x"},
                              "document": {"name": "demo", "seed": 7, "architectures": ["conv8"]}})
        store.put_dataset("A", "hospital-csv", "/data/a", _records("hospital", 6))
        store.put_dataset("B", "chestxray", "/data/b", _records("chestxray", 4))
        for index, (cell_id, (architecture, encoder, training_set)) in enumerate(CELLS.items()):
            store.put_cell({"cell_id": cell_id, "architecture": architecture, "encoder": encoder,
                            "training_set": training_set, "run_dir": f"/runs/{cell_id}", "bundle": "b",
                            "status": "done", "seconds": 12.3, "best_epoch": 3, "val_auc": 0.91,
                            "config": {"epochs": 5}})
            store.put_results(cell_id, _rows(index), {"bundle": "b"})
            store.put_file("roc", cell_id, "ROC", _png(results / "evaluation" / f"roc_{cell_id}.png", (0, 90, 200)))
        store.put_audit("conv8-none-AB", [
            Verdict("source_probe", "covid=0", 0.97, 0.93, 0.99, "AUC > 0.8", True, "the model sees the source"),
            Verdict("occlusion", "lungs", 0.12, 0.05, 0.2, "drop > 0.1", False, "decides from the lungs"),
            Verdict("lung_saliency", "all", 1.01, math.nan, math.nan, "informative", None, "")])
        _png(results / "audit" / "tsne_by_source.png", (200, 0, 0))
        store.put_file("tsne_by_source", "conv8-none-AB", "tsne by source", results / "audit" / "tsne_by_source.png")
        # recorded relative to another cwd: found again from the results folder's own name on
        _png(results / "audit" / "tsne_by_label.png", (0, 200, 0))
        store.put_file("tsne_by_label", "conv8-none-AB", "tsne by label",
                       Path("elsewhere/demo-run/audit/tsne_by_label.png"))
        store.put_file("saliency", "conv8-none-AB", "0:overlay_a", _png(results / "audit" / "sal0.png", (9, 9, 9)))
        store.put_file("saliency", "conv8-none-AB", "1:gone", results / "audit" / "does-not-exist.png")
    (results / "reproduce.meta.json").write_text(json.dumps(
        {"command": "unveil reproduce", "config": {"jobs": 1}, "created_utc": "2025-01-02T03:04:05+00:00",
         "seconds": 9.5, "versions": {"python": "3.11"}}), encoding="utf-8")
    return write_report(results)


def test_report_is_self_contained_and_complete(report: Path) -> None:
    assert report == report.parent / "report.html" and report.is_file()
    html = report.read_text(encoding="utf-8")
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:|//)""", html, re.IGNORECASE)
    sources = re.findall(r"""<img[^>]*\ssrc="([^"]*)\"""", html)
    assert len(sources) == 1 + 2 + 2 + 1 and all(s.startswith("data:image/png;base64,") for s in sources)
    for section in SECTIONS:
        assert f'id="{section}"' in html, section
    assert html.index('id="summary"') < html.index('id="heatmap"') < html.index('id="provenance"')
    assert "demo &lt;b&gt;&amp;&lt;/b&gt;" in html and "<b>&</b>" not in html  # autoescaped
    assert "Test AB" in html and "Test AC" in html and "Table A1: Conv8" in html
    assert "∞" in html  # the infinite DOR
    assert "Conv8 / none / AB" in html and "Conv8 / B / AC" in html
    assert "the model sees the source" in html and "AUC &gt; 0.8" in html
    assert "0.970 [0.930, 0.990]" in html
    assert html.count('class="flagged"') == 1
    assert re.search(r'<tr class="flagged"><td>source_probe</td>', html)
    # the audit section leads with the sentence naming the flags that fired
    assert '<p class="summary"><strong>1 flag fired on the model — source_probe: see the table.</strong>' in html
    assert "does-not-exist.png" in html and "file not found" in html
    assert "tsne by label" in html and "hospital-csv" in html and "covid 6, normal 6" in html
    assert "2025-01-02T03:04:05+00:00" in html and "reproduce.meta.json" in html


def test_report_leads_with_each_audited_models_verdict(report: Path) -> None:
    """The audit's one-sentence verdict is the first thing after the title, per audited model, before any table."""
    html = report.read_text(encoding="utf-8")
    body = html[html.index("<main>"):]
    first = body[body.index("</header>"):].split("<section", 2)[1]
    assert first.startswith(' id="verdict">')
    headline = "<strong>1 flag fired on the model — source_probe: see the table.</strong>"
    assert headline in first and "Conv8 / none / AB" in first and "Conv8 / B / AC" not in first  # audited only
    assert body.index(headline) < body.index("<table")
    assert 'href="#audit-conv8-none-AB"' in first and 'id="audit-conv8-none-AB"' in html


def test_every_table_sits_in_a_box_that_scrolls_inside_its_card(report: Path) -> None:
    """The CSS structure behind the Chromium check below: each table in a ``.scroll`` box (overflow-x: auto)."""
    html = report.read_text(encoding="utf-8")
    assert html.count("<table") == html.count('<div class="scroll"><table') > 0
    assert re.search(r"\.scroll \{ overflow-x: auto; max-width: 100%; \}", html)


EXTERNAL = "covid-chestxray:/tmp/pytest-of-someone/pytest-12/test_a_rather_long_name0/bench/paper/D"


def _labelled_run(results: Path, tests: tuple[str, ...] = ("AB", EXTERNAL)) -> Path:
    """A run whose test sets include the whole dataset of role D (an external set), audited on it."""
    rows = pd.concat([_rows(index % 2).iloc[[0]].assign(test_set=test) for index, test in enumerate(tests)])
    with ResultsStore(results / "results.sqlite") as store:
        store.set_experiment({"name": "external", "seed": 0})
        store.put_dataset("D", "covid-chestxray", EXTERNAL.split(":", 1)[1], _records("covid-chestxray", 4))
        store.put_cell({"cell_id": "conv8-none-AB", "architecture": "conv8", "encoder": "none", "training_set": "AB",
                        "run_dir": "r", "bundle": "b", "status": "done", "seconds": 1.0, "best_epoch": 1,
                        "val_auc": 0.7, "config": {}})
        store.put_results("conv8-none-AB", rows, {"bundle": "b"})
        store.put_audit("conv8-none-AB", [
            Verdict("transfer (AUC)", f"AB -> {EXTERNAL}", 0.31, 0.2, 0.4, "drop >= 0.1 with its interval above 0 "
                    "flags", True, f"AUC 0.90 on its own test split (AB), 0.59 on {EXTERNAL}: the model does not "
                    "transfer", measure="AUC drop (in-source minus external; patients of each set resampled)"),
            Verdict("source probe", f"chestxray (test split of AB) vs {EXTERNAL} (COVID- images)", 0.97, 0.93, 0.99,
                    "informative: an external set (flags only between training sources)", None,
                    f"the features tell {EXTERNAL} from chestxray (test split of AB)",
                    measure="balanced accuracy (linear probe, out of fold)")])
    return write_report(results)


def test_an_external_test_set_is_named_by_its_role_its_binding_in_a_legend(tmp_path: Path) -> None:
    html = _labelled_run(tmp_path / "run").read_text(encoding="utf-8")
    headers = re.findall(r"<th>([^<]*)</th>", html)
    assert "Test D" in headers and not [h for h in headers if "covid-chestxray:" in h]
    tables = html[html.index('id="tables"'):html.index('id="roc"')]
    assert "<td>D</td>" in tables and EXTERNAL not in re.sub(r"<li>[^<]*</li>", "", tables)  # the legend only
    assert f"<li>Test D = {EXTERNAL}</li>" in html[html.index('id="summary"'):html.index('id="heatmap"')]
    audit = html[html.index('id="audit"'):html.index('id="datasets"')]
    assert "<td>AB -&gt; D</td>" in audit and "chestxray (test split of AB) vs D (COVID- images)" in audit
    assert "0.59 on D: the model does not transfer" in audit
    assert audit.count(EXTERNAL) == 1 and f"<code>D = {EXTERNAL}</code>" in audit  # the audit's legend


#: measures, after layout, how far each table (or the box that scrolls it) reaches past its card's content box
MEASURE_OVERFLOW = """<script>
window.addEventListener("load", function () {
  var main = document.querySelector("main"), style = getComputedStyle(main);
  var edge = main.getBoundingClientRect().right - parseFloat(style.paddingRight), out = [], scrolled = 0;
  document.querySelectorAll("table").forEach(function (table) {
    var box = table;
    for (var e = table.parentElement; e && e !== main; e = e.parentElement) {
      if (/auto|scroll|hidden/.test(getComputedStyle(e).overflowX)) { box = e; break; }
    }
    if (box !== table && box.scrollWidth > box.clientWidth) { scrolled += 1; }
    var right = box.getBoundingClientRect().right;
    if (right > edge + 0.5) { out.push(table.className + ": " + Math.round(right - edge) + " px"); }
  });
  document.body.dataset.overflow = out.join("; ") || "none";
  document.body.dataset.scrolled = String(scrolled);
  document.body.dataset.pageOverflow = String(document.documentElement.scrollWidth - window.innerWidth);
});
</script></body>"""


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium not installed (CI installs it)")
@pytest.mark.parametrize("width", [1280, 760])
def test_wide_tables_stay_inside_their_card(tmp_path: Path, width: int) -> None:
    """Twelve test sets and long unbroken names: no table reaches past the card; the widest scroll inside it."""
    many = ("AB", EXTERNAL, "AC", "A", "B", "C", "ABC", "BC", "DB", "Q", "F", "E")
    _labelled_run(tmp_path / "run", many)
    with ResultsStore(tmp_path / "run" / "results.sqlite") as store:  # a folder name with no place to break
        store.put_dataset("A", "hospital-csv", "/data/" + "a_very_long_folder_name_without_any_break" * 3,
                          _records("hospital", 4))
    report = write_report(tmp_path / "run")
    page = tmp_path / "measured.html"
    page.write_text(report.read_text(encoding="utf-8").replace("</body>", MEASURE_OVERFLOW), encoding="utf-8")
    command = [str(shutil.which("chromium")), "--headless=new", "--no-sandbox", "--disable-gpu",
               "--disable-dev-shm-usage", f"--window-size={width},2000", "--hide-scrollbars",
               "--virtual-time-budget=5000", f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom",
               page.resolve().as_uri()]
    dom = subprocess.run(command, capture_output=True, text=True, timeout=120).stdout
    assert 'data-rendered="yes"' in dom
    assert re.search(r'data-overflow="([^"]*)"', dom).group(1) == "none"
    assert re.search(r'data-page-overflow="([^"]*)"', dom).group(1) == "0"
    assert int(re.search(r'data-scrolled="(\d+)"', dom).group(1)) >= 1  # Table 2 is wider than the card: it scrolls


def test_report_out_path(report: Path, tmp_path: Path) -> None:
    written = write_report(report.parent, tmp_path / "sub" / "r.html")
    assert written == tmp_path / "sub" / "r.html" and written.stat().st_size > 1000


def test_folder_without_results_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ReportError, match=re.escape(str(tmp_path.resolve()))):
        write_report(tmp_path)
    assert not (tmp_path / "results.sqlite").exists()  # nothing created on the way


def render_in_chromium(page: Path, profile: Path) -> tuple[int, str, list[str]]:
    """Load ``page`` in headless Chromium: (return code, DOM after scripts ran, console lines of its log).

    Chromium logs every page console message, errors and uncaught exceptions included, at INFO as
    ``...:INFO:CONSOLE:<line>] "<message>", source: <url> (<line>)``, without the message's level, so
    any console line counts: the report's script writes none.
    """
    command = [str(shutil.which("chromium")), "--headless=new", "--no-sandbox", "--disable-gpu",
               "--disable-dev-shm-usage", "--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000",
               f"--user-data-dir={profile}", "--dump-dom", page.resolve().as_uri()]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    return done.returncode, done.stdout, [line for line in done.stderr.splitlines() if ":CONSOLE" in line]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium not installed (CI installs it)")
def test_report_renders_in_chromium(report: Path, tmp_path: Path) -> None:
    code, dom, console = render_in_chromium(report, tmp_path / "profile")
    assert code == 0
    assert console == []
    assert 'data-rendered="yes"' in dom
    tables = int(re.search(r'data-tables="(\d+)"', dom).group(1))
    assert tables >= 5 and dom.count("<table") == tables
    assert 'data-broken-images="0"' in dom  # every embedded picture decoded

    # The detection can fail: the same page with a broken script logs an uncaught error.
    broken = tmp_path / "broken.html"
    broken.write_text(report.read_text(encoding="utf-8").replace("</body>", "<script>notDefined();</script></body>"),
                      encoding="utf-8")
    code, dom, console = render_in_chromium(broken, tmp_path / "profile-broken")
    assert code == 0 and 'data-rendered="yes"' in dom
    assert any("Uncaught" in line and "notDefined" in line for line in console), console


@pytest.mark.parametrize("low, high, chance, expected", [
    (0.70, 0.85, True, None),                                        # narrow, above chance: conclusive
    (0.55, 0.80, True, "width 0.250 > 0.20"),                         # wider than twice the transfer drop
    (0.45, 0.60, True, "contains 0.5 (chance)"),                     # narrow but cannot be told from chance
    (0.30, 0.90, True, "width 0.600 > 0.20; contains 0.5 (chance)"),
    (0.45, 0.60, False, None),                                       # a drop: chance does not apply
    (0.60, 0.80, True, None),                                        # exactly 0.20 wide: still conclusive
    (math.nan, 0.9, True, "no interval (too few patients to resample)"),
    (None, None, True, "no interval (too few patients to resample)"),
])
def test_too_wide_rule(low, high, chance, expected) -> None:
    from unveil.reports.intervals import too_wide

    assert too_wide(low, high, chance=chance) == expected


def test_report_names_the_results_too_wide_to_conclude(tmp_path: Path) -> None:
    """A result on few test patients is listed under the named rule (and marked in the verdicts); a narrow one
    is not."""
    from unveil.experiments.config import experiment_path
    from unveil.reports.intervals import RULE

    results = tmp_path / "run"
    rows = _rows(0)
    narrow, wide = {"balanced_accuracy": (0.80, 0.75, 0.85)}, {"balanced_accuracy": (0.62, 0.31, 0.90)}
    for index, chosen in enumerate((narrow, wide)):
        for metric, (value, low, high) in chosen.items():
            rows.loc[index, [metric, f"{metric}_low", f"{metric}_high"]] = value, low, high
    rows.loc[1, "patients"] = 9
    with ResultsStore(results / "results.sqlite") as store:
        store.set_experiment({"name": "public", "seed": 0, "notes": ["optional role C (rsna) not found: left out"],
                              "recipes": str(experiment_path("public").with_name("public_recipes.yaml"))})
        store.put_dataset("Q", "covid-qu-ex", "/data/q", _records("covid-qu-ex", 4))
        store.put_cell({"cell_id": "conv8-none-D", "architecture": "conv8", "encoder": "none", "training_set": "D",
                        "run_dir": "r", "bundle": "b", "status": "done", "seconds": 1.0, "best_epoch": 1,
                        "val_auc": 0.7, "config": {}})
        store.put_results("conv8-none-D", rows, {"bundle": "b"})
        store.put_audit("conv8-none-D", [
            Verdict("transfer", "F", 0.58, 0.35, 0.80, "AUC below 0.5 flags", False, "", measure="ROC AUC (model, "
                                                                                          "external set)"),
            Verdict("transfer", "Q", 0.90, 0.85, 0.95, "AUC below 0.5 flags", False, "", measure="ROC AUC (model, "
                                                                                           "external set)")])
    html = write_report(results).read_text(encoding="utf-8")
    listed = html[html.index('<ul class="too-wide">'):]
    listed = listed[:listed.index("</ul>")]
    assert "Conv8 / none / D on Test AC: 0.620 [0.310, 0.900]" in listed and "(9 patients)" in listed
    assert "width 0.590 &gt; 0.20; contains 0.5 (chance)" in listed and "Test AB" not in listed
    assert RULE.replace("'", "&#39;") in html
    assert html.count("too wide to conclude: width 0.450 &gt; 0.20; contains 0.5 (chance)") == 1  # verdict F only
    assert "optional role C (rsna) not found: left out" in html
    assert "COVID-QU-Ex: adult COVID+ / COVID- pooled" in html  # the experiment's own recipe file describes Q


def test_report_tables_show_wilson_intervals_and_why_a_value_is_n_a(tmp_path: Path) -> None:
    """Rows of real evaluations on a COVID+-only test set, through the store: the proportions carry their Wilson
    interval (the bootstrap's [0.00, 0.00] at 0/12 is not shown), the two-class metrics are n/a with the reason."""
    import numpy as np

    from unveil.evaluation.metrics import evaluate_scores

    results = tmp_path / "run"
    labels = np.ones(12, dtype=int)
    with ResultsStore(results / "results.sqlite") as store:
        for cell_id, found in (("conv8-none-AB", 0), ("conv8-B-AB", 9)):
            scores = np.r_[np.full(found, 0.9), np.full(12 - found, 0.1)]
            row = evaluate_scores(labels, scores, np.repeat(np.arange(6), 2), resamples=200).as_row()
            store.put_cell({"cell_id": cell_id, "architecture": "conv8", "encoder": cell_id.split("-")[1],
                            "training_set": "AB", "run_dir": "r", "bundle": "b", "status": "done", "seconds": 1.0,
                            "best_epoch": 1, "val_auc": 0.7, "config": {}})
            store.put_results(cell_id, pd.DataFrame([{**row, "test_set": "D", "resamples": 200, "seed": 0}]),
                              {"bundle": "b"})
        wide = store.wide_results().set_index("model")
    html = write_report(results).read_text(encoding="utf-8")
    tables = html[html.index('id="tables"'):html.index('id="roc"')]
    assert tables.count("<td>0.00 [0.00, 0.39]</td>") == 2  # sensitivity and accuracy of the first row
    assert tables.count("[0.00, 0.00]") == 1  # F1 only: it keeps the patient bootstrap
    assert "Sensitivity, Specificity, Accuracy: Wilson score interval on the patient-effective sample size" in tables
    assert "F1, BA, AUC, DOR, DOR (HA): patient bootstrap, percentile" in tables
    assert tables.count("<td>n/a</td>") == 2 * 5  # specificity, BA, AUC, DOR, DOR (HA) of both rows
    assert ("conv8-none-AB on Test D: Specificity: undefined: no COVID- images; BA, AUC, DOR, DOR (HA): undefined: "
            "no COVID- images (it needs COVID+ and COVID- images)") in tables
    # An undefined balanced accuracy is listed with its reason, not as "too few patients to resample".
    listed = html[html.index('<ul class="too-wide">'):]
    listed = listed[:listed.index("</ul>")]
    assert "on Test D: n/a (12 patients)" not in listed and "too few patients" not in listed
    assert "n/a (6 patients): undefined: no COVID- images (it needs COVID+ and COVID- images)" in listed
    # 6 patients x 2 images, all missed: 0 of 6 patients (design effect 2), not 0 of 12 independent images.
    assert wide.loc["conv8-none-AB", "sensitivity_wilson_high"] == pytest.approx(0.3903, abs=1e-4)  # 3.84 / 9.84
    assert wide.loc["conv8-none-AB", "sensitivity_design_effect"] == 2.0
    assert wide.loc["conv8-none-AB", "sensitivity_high"] == 0.0  # the bootstrap bound stays in the store


def test_a_store_written_before_design_effects_opens_and_takes_them(tmp_path: Path) -> None:
    import sqlite3

    from unveil.evaluation.store import SCHEMA

    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as connection:  # the results table as it was, without design_effect
        connection.executescript(SCHEMA.replace("provenance TEXT, design_effect REAL,", "provenance TEXT,"))
    with ResultsStore(path) as store:
        store.put_cell({"cell_id": "c", "architecture": "conv8", "encoder": "none", "training_set": "AB",
                        "run_dir": "r", "bundle": "b", "status": "done", "seconds": 1.0, "best_epoch": 1,
                        "val_auc": 0.7, "config": {}})
        store.put_results("c", _rows(0), {"bundle": "b"})
        assert "design_effect" in store.table("results")
        wide = store.wide_results()
    assert wide.loc[0, "sensitivity_wilson_low"] == pytest.approx(wide.loc[0, "sensitivity"] - 0.06)


def test_report_shows_calibration_confusion_subgroups_and_paired_comparisons(tmp_path: Path) -> None:
    from unveil.evaluation.paired import compare_predictions
    from unveil.evaluation.subgroups import subgroup_metrics

    results = tmp_path / "run"
    predictions = pd.DataFrame({"test_set": "AB", "record_id": [f"r{i}" for i in range(40)], "source": "s",
                                "patient_id": [f"p{i}" for i in range(40)], "label": [i % 2 for i in range(40)],
                                "threshold": 0.5, "sex": ["F", "M"] * 20, "age": [30 + i for i in range(40)]})
    scratch = predictions.assign(model="conv8-none-AB", probability=[0.3 + 0.02 * (i % 7) for i in range(40)])
    pretrained = predictions.assign(model="conv8-B-AB", probability=[0.2 + 0.6 * (i % 2) for i in range(40)])
    with ResultsStore(results / "results.sqlite") as store:
        for index, cell_id in enumerate(("conv8-none-AB", "conv8-B-AB")):
            store.put_cell({"cell_id": cell_id, "architecture": "conv8", "encoder": cell_id.split("-")[1],
                            "training_set": "AB", "run_dir": "r", "bundle": "b", "status": "done", "seconds": 1.0,
                            "best_epoch": 1, "val_auc": 0.9, "config": {}})
            store.put_results(cell_id, _rows(index), {"bundle": "b"})
            for kind in ("reliability", "confusion"):
                store.put_file(kind, cell_id, "AB", _png(results / "evaluation" / f"{kind}_{cell_id}.png", (1, 2, 3)))
        store.put_subgroups("conv8-B-AB", subgroup_metrics(pretrained, threshold=0.5, resamples=20))
        store.put_comparisons(compare_predictions(pd.concat([scratch, pretrained]), "conv8-none-AB", "conv8-B-AB",
                                                  resamples=50), claim="pre-training on B helps")
        assert store.compared() == {("conv8-none-AB", "conv8-B-AB", "AB")}
        assert len(store.table("subgroups")) == len(subgroup_metrics(pretrained, threshold=0.5, resamples=20))
    html = write_report(results).read_text(encoding="utf-8")
    for section in ("calibration", "confusion", "subgroups", "comparisons"):
        assert f'<section id="{section}">' in html and f'href="#{section}"' in html
    assert re.search(r"<li>pre-training on B helps on AB: AUC \+0\.\d\d \[\+0\.\d\d, \+\d\.\d\d\], DeLong p=", html)
    assert "10 equal-width bins" in html and "Conv8 / B / AB on Test AB" in html
    assert html.count('alt="Conv8 / none / AB on Test AB"') == 2  # its reliability diagram and confusion matrix
    assert "<td>age group</td>" in html and "<td>18-39</td>" in html
