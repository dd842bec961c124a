"""Experiment files, the results store, and `unveil reproduce` (resumable, parallel cells)."""

from __future__ import annotations

import math
import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from typer.testing import CliRunner

from unveil.audit import Verdict
from unveil.cli import app
from unveil.evaluation.metrics import METRICS
from unveil.experiments import ExperimentError, ResultsStore, load_experiment, reproduce
from unveil.experiments.config import experiment_path
from unveil.training import DataSpec

TINY = {
    "name": "tiny",
    "seed": 0,
    "data": {"synthetic": {"preset": "paper", "scale": 0.1, "image_size": 48}},
    "preprocess": {"size": 32, "mask": "none"},
    "training": {"width": 0.25, "epochs": 2, "batch_size": 16},
    "pretraining": {"B": {"data": ["B"], "training": {"epochs": 1}}},
    "grid": {"encoders": ["none", "B"], "architectures": ["conv8"], "compositions": ["AB"], "tests": ["AB", "AC"]},
    "evaluation": {"resamples": 50},
    "audit": {"compositions": ["AB"], "test_sets": ["AB"], "mask": "segment", "resamples": 50, "saliency_samples": 1,
              "thresholds": {"min_images": 3}},
}


def write(tmp_path, document, name="exp.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(document))
    return path


def test_shipped_experiments_load():
    demo = load_experiment("demo")
    assert demo.synthetic.preset == "paper" and ("conv8", "B", "AB") in demo.cells()
    assert demo.audit.test_sets == ["AB", "AC"] and demo.audit.compositions == ["AB", "AC"]  # not lost to `on:`
    assert demo.evaluation.resamples == 1000 and demo.pretraining["B"].training == {"epochs": 6}
    paper = load_experiment("paper", seed=3)
    assert paper.seed == 3 and len(paper.cells()) == 4 * 3 * 5 and paper.tests == ["A", "AB", "AC", "AD", "D"]
    assert paper.train_config("resnet18").image_size == 224
    assert experiment_path("demo").name == "demo.yaml"


@pytest.mark.parametrize("change, message", [
    ({"grid": {"architectures": ["conv8"], "compositions": ["AB"]}}, r":\d+: grid: missing key\(s\) tests"),
    ({"colour": "red"}, r":\d+: colour: unknown key; known: data, grid"),
    ({"grid": {**TINY["grid"], "encoders": ["none", "Z"]}}, r"grid.encoders\[1\]: encoder Z has no pretraining entry"),
    ({"training": {"epocs": 2}}, "training.epocs: unknown training option; known: width, epochs"),
    ({"training": {"epochs": "2"}}, r"training.epochs: should be a valid integer; got '2'"),
    ({"training": {"epochs": True}}, r"training.epochs: should be a valid integer; got True"),
    ({"training": {"epochs": 0}}, r":\d+: training.epochs: should be greater than or equal to 1; got 0"),
    ({"training": {"architecture": "conv8"}}, "training.architecture: not set here: it comes from grid.architectures"),
    ({"data": {}}, "data: needs datasets"),
    ({"data": {"A": {"source": "hospital-csv"}}}, r"data.A: missing key\(s\) path"),
    ({"data": {"synthetic": {"preset": "paper", "size": 3}}}, "data.synthetic.size: unknown key; known: preset"),
    ({"data": {"synthetic": {"scale": "big"}}}, "data.synthetic.scale: should be a valid number; got 'big'"),
    ({"preprocess": {"size": 32, "mask": "lungs"}}, "preprocess.mask: should be one of segment, truth, none"),
    ({"preprocess": {"model_sha256": "x"}}, "preprocess.model_sha256: not set here"),
    ({"grid": {**TINY["grid"], "tests": ["AB", "XY"]}}, r"grid.tests\[1\]: unknown composition 'XY'"),
    ({"grid": {**TINY["grid"], "tests": "AB"}}, r"grid.tests: should be a valid list; got 'AB'"),
    ({"grid": {**TINY["grid"], "architectures": ["conv8", 5]}}, r"grid.architectures\[1\]: should be a valid string"),
    ({"evaluation": {"resamples": 10, "threshold_rule": "otsu"}},
     "evaluation.threshold_rule: should be one of .*bundle.*otsu"),
    ({"evaluation": {"resample": 10}}, "evaluation.resample: unknown key; known: resamples, threshold_rule"),
    ({"audit": {"compositions": ["AB"], "thresholds": {"occlusion": 0.6}}},
     "audit.thresholds.occlusion: unknown key; known: source_probe, occlusion_auc, lung_saliency, min_images"),
    ({"audit": {"compositions": ["AB"], "thresholds": {"min_images": 2.5}}}, "audit.thresholds.min_images: should be"),
    ({"audit": {"compositions": ["AC"]}}, r"audit.compositions\[0\]: AC is not a training composition of the grid"),
    ({"audit": {"compositions": "some"}}, "audit.compositions: should be a valid list or 'all'"),
    ({"audit": {"mask": "none"}}, "audit.mask: should be one of segment, truth"),
    ({"pretraining": {"B": {"data": ["B"], "training": {"lr": "fast"}}}}, "pretraining.B.training.lr: should be"),
    ({"pretraining": {"B": {"data": ["B"], "epochs": 3}}}, "pretraining.B.epochs: unknown key; known: data, training"),
    ({"jobs": 1.5}, "jobs: should be a valid integer"),
    ({"jobs": 0}, "jobs: should be at least 1; got 0"),
    ({"recipes": "nowhere.yaml"}, r"recipes: \S*nowhere.yaml: cannot read recipe file"),
])
def test_experiment_errors_name_the_file_line_and_key(tmp_path, change, message):
    path = write(tmp_path, {**TINY, **change})
    with pytest.raises(ExperimentError, match=message) as caught:
        load_experiment(path)
    assert str(caught.value).startswith(f"{path}:")
    with pytest.raises(ExperimentError, match="not found"):
        load_experiment(tmp_path / "nothing.yaml")


EXPERIMENT_TEXT = """\
name: lines
data:
  A: {source: hospital-csv, path: corda}
  B: {source: chestxray, path: chest_xray}
grid:
  architectures: [conv8]
  compositions: [A, AB, AC]
  tests: [A]
audit:
  compositions: [A]
  test_sets: [A]
  thresholds: {occlusion_auc: 0.6, source_probe: 0.8}
"""


def test_errors_give_the_line_of_the_bad_key(tmp_path):
    path = tmp_path / "lines.yaml"
    path.write_text(EXPERIMENT_TEXT)
    # AC needs role C, which data does not bind: line 7, the third composition
    with pytest.raises(ExperimentError, match=rf"^{path}:7: grid.compositions\[2\]: composition AC needs data for "
                                              r"role\(s\) C, which data does not bind \(bound: A, B\)"):
        load_experiment(path)
    path.write_text(EXPERIMENT_TEXT.replace("[A, AB, AC]", "[A, AB]").replace("source_probe", "sourceprobe"))
    with pytest.raises(ExperimentError, match=rf"^{path}:12: audit.thresholds.sourceprobe: unknown key"):
        load_experiment(path)
    path.write_text(EXPERIMENT_TEXT.replace("[A, AB, AC]", "[A, AB]") + "pretraining:\n  C: {data: [C]}\n")
    with pytest.raises(ExperimentError, match=rf"^{path}:14: pretraining.C.data\[0\]: pre-training on role C"):
        load_experiment(path)
    path.write_text(EXPERIMENT_TEXT.replace("[A, AB, AC]", "[A, AB]") + "name: again\n")
    with pytest.raises(ExperimentError, match=rf"^{path}:13: name: this key appears twice"):
        load_experiment(path)
    path.write_text(EXPERIMENT_TEXT.replace("[A, AB, AC]", "[A, AB]"))
    experiment = load_experiment(path)
    assert experiment.audit.thresholds.occlusion_auc == 0.6 and experiment.audit.test_sets == ["A"]


@pytest.mark.parametrize("key", ["on", "yes", "Off", "NO", "true"])
def test_yaml_boolean_keys_are_refused_with_the_pitfall_explained(tmp_path, key):
    path = tmp_path / "exp.yaml"
    path.write_text(EXPERIMENT_TEXT.replace("[A, AB, AC]", "[A, AB]").replace("test_sets:", f"{key}:"))
    with pytest.raises(ExperimentError, match=rf"^{path}:11: audit: the key '{key}' is read by YAML as the boolean "
                                              r"(True|False), not as a name.*test_sets"):
        load_experiment(path)
    path.write_text(EXPERIMENT_TEXT.replace("[A, AB, AC]", "[A, AB]").replace("name: lines", "1: lines"))
    with pytest.raises(ExperimentError, match=rf"^{path}:1: top level: the key '1' is read by YAML as the int 1"):
        load_experiment(path)


def test_custom_recipes_from_the_experiment_file(tmp_path):
    (tmp_path / "recipes.yaml").write_text(yaml.safe_dump({
        "roles": {"A": {"description": "hospital"}, "B": {"description": "pneumonia"}},
        "recipes": {"AB2": {"bases": ["A"], "negatives_from": ["B"], "balance": "add_negatives"}}}))
    document = {**TINY, "recipes": "recipes.yaml",
                "grid": {**TINY["grid"], "compositions": ["AB2"], "tests": ["AB2"]}, "audit": {}}
    experiment = load_experiment(write(tmp_path, document))
    assert experiment.recipes == tmp_path / "recipes.yaml"
    assert experiment.recipe_book().recipe("AB2").roles == ("A", "B")
    with pytest.raises(ExperimentError, match=r"grid.tests\[0\]: unknown composition 'AB'"):
        load_experiment(write(tmp_path, {**document, "grid": {**document["grid"], "tests": ["AB"]}}))


def test_relative_paths_resolve_against_the_file(tmp_path):
    document = {**TINY, "data": {"A": {"source": "hospital-csv", "path": "corda"},
                                 "B": {"source": "chestxray", "path": "/data/chest_xray"},
                                 "C": {"source": "rsna", "path": "rsna"}}}
    experiment = load_experiment(write(tmp_path, document))
    assert experiment.data["A"].root == str(tmp_path / "corda") and experiment.data["B"].root == "/data/chest_xray"


def _rows() -> pd.DataFrame:
    row = {"test_set": "AB", "images": 10, "patients": 8, "positive_images": 5, "negative_images": 5, "tp": 4,
           "fp": 0, "tn": 5, "fn": 1, "threshold": 0.5, "threshold_rule": "fixed 0.5", "resamples": 10, "seed": 0}
    for metric in (*METRICS, "dor_corrected"):
        row.update({metric: 0.9, f"{metric}_low": 0.8, f"{metric}_high": 1.0, f"{metric}_note": None})
    row.update({"dor": math.inf, "dor_note": "infinite: no false positives", "roc_auc_low": math.nan})
    return pd.DataFrame([row])


def test_results_store_round_trip(tmp_path):
    with ResultsStore(tmp_path / "r.sqlite") as store:
        store.put_cell({"cell_id": "c1", "architecture": "conv8", "encoder": "B", "training_set": "AB",
                        "run_dir": "x", "bundle": "x/model", "status": "done", "seconds": 1.0, "best_epoch": 2,
                        "val_auc": 0.9, "config": {"lr": 0.01}})
        store.put_results("c1", _rows(), {"bundle": "x/model"})
        store.put_audit("c1", [Verdict("source probe", "A vs B", 0.95, 0.9, 1.0, "rule", True, "carries",
                                       measure="balanced accuracy")])
        assert store.done_cells() == {"c1"} and store.evaluated() == {("c1", "AB")}
        wide = store.wide_results()
        assert wide.loc[0, "model"] == "c1" and wide.loc[0, "encoder"] == "B" and np.isinf(wide.loc[0, "dor"])
        assert np.isnan(wide.loc[0, "roc_auc_low"]) and wide.loc[0, "dor_note"].startswith("infinite")
        assert len(store.table("results")) == len(METRICS) + 1  # one row per (cell, test set, metric)
        exported = {p.name for p in store.export_csv(tmp_path / "csv")}
        # The figures at the paper's 0.5 are stored beside those at the cell's own threshold.
        store.put_results("c1", _rows().assign(test_set="AC", threshold=0.42, threshold_rule="youden",
                                               **{"balanced_accuracy_at_0.5": 0.5}), {"bundle": "x/model"})
        ac = store.wide_results().set_index("test_set").loc["AC"]
        assert ac["balanced_accuracy_at_0.5"] == 0.5 and ac["threshold_rule"] == "youden"
        assert ac["model_seed"] is None and ac["bundle"] == "x/model"
    assert {"results.csv", "cells.csv", "audits.csv"} <= exported
    with sqlite3.connect(tmp_path / "r.sqlite") as connection:
        flagged, measure = connection.execute("SELECT flagged, measure FROM audits").fetchone()
    assert flagged == 1 and measure == "balanced accuracy"


def test_results_store_adds_the_measure_column_to_an_older_store(tmp_path):
    with sqlite3.connect(tmp_path / "old.sqlite") as connection:
        connection.execute("CREATE TABLE audits (cell_id TEXT, test TEXT, subject TEXT, value REAL, low REAL, "
                           "high REAL, rule TEXT, flagged INTEGER, suggests TEXT, "
                           "PRIMARY KEY (cell_id, test, subject))")
    with ResultsStore(tmp_path / "old.sqlite") as store:
        store.put_audit("c1", [Verdict("lung occlusion", "x", 0.8, 0.7, 0.9, "rule", True, "s", measure="ROC AUC")])
        assert store.table("audits").loc[0, "measure"] == "ROC AUC"


@pytest.mark.slow
def test_reproduce_runs_resumes_and_skips_finished_work(tmp_path, monkeypatch):
    import unveil.experiments.runner as runner

    experiment = load_experiment(write(tmp_path, TINY))
    calls, closed = [], []
    real_run, real_close = runner.CellJob.run, runner.ResultsStore.close

    def failing_second_cell(job):
        calls.append(job.name)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")
        return real_run(job)

    monkeypatch.setattr(runner.CellJob, "run", failing_second_cell)
    monkeypatch.setattr(runner.ResultsStore, "close", lambda store: (closed.append(True), real_close(store))[1])
    with pytest.raises(KeyboardInterrupt):
        reproduce(experiment, tmp_path / "out", report=False)
    assert closed == [True]  # the results store is closed although a step failed
    monkeypatch.setattr(runner.CellJob, "run", lambda job: (calls.append(job.name), real_run(job))[1])
    store_path = reproduce(experiment, tmp_path / "out", report=False)
    assert calls == ["conv8-none-AB", "conv8-B-AB", "conv8-B-AB"]  # the finished cell was not retrained
    with ResultsStore(store_path) as store:
        assert store.done_cells() == {"conv8-none-AB", "conv8-B-AB"}
        assert store.evaluated() == {(c, t) for c in ("conv8-none-AB", "conv8-B-AB") for t in ("AB", "AC")}
        audits = store.table("audits")
        assert set(audits["cell_id"]) == {"conv8-none-AB", "conv8-B-AB"} and "lung occlusion" in set(audits["test"])
        assert not store.table("datasets").empty
        wide = store.wide_results()
    assert set(wide["encoder"]) == {"none", "B"}
    out = tmp_path / "out"
    assert (out / "tables" / "table2.md").is_file() and (out / "pretrain" / "B-conv8" / "done.json").is_file()
    assert (out / "cells" / "conv8-B-AB" / "run.meta.json").is_file()
    evaluation = out / "evaluation" / "conv8-B-AB"  # the files `unveil evaluate --out` writes
    assert {"results.csv", "predictions.csv", "table2.md", "roc_conv8-B-AB.png", "evaluation.meta.json"} <= \
        {p.name for p in evaluation.iterdir()}
    assert set(pd.read_csv(evaluation / "predictions.csv")["test_set"]) == {"AB", "AC"}

    calls.clear()
    reproduce(experiment, out, report=True)  # everything finished: nothing is redone
    assert calls == []
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "Table 2" in html and "conv8-B-AB" in html and 'src="http' not in html


@pytest.mark.slow
def test_reproduce_trains_cells_in_parallel_processes(tmp_path):
    document = {**TINY, "grid": {**TINY["grid"], "encoders": ["none"], "compositions": ["AB", "AC"],
                                 "tests": ["AB"]}, "audit": {}}
    store_path = reproduce(load_experiment(write(tmp_path, document)), tmp_path / "out", jobs=2, report=False)
    with ResultsStore(store_path) as store:
        assert store.done_cells() == {"conv8-none-AB", "conv8-none-AC"}
        assert len(store.wide_results()) == 2


def test_unbound_roles_are_named_before_anything_runs(tmp_path):
    document = {**TINY, "data": {"A": {"source": "hospital-csv", "path": "corda"}}}
    with pytest.raises(ExperimentError, match=r"grid.compositions\[0\]: composition AB needs data for role\(s\) B"):
        load_experiment(write(tmp_path, document))


def test_cli_reproduce_and_results_errors(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["reproduce", str(tmp_path / "missing.yaml"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "experiment file not found" in result.output
    bad = tmp_path / "bad.yaml"
    bad.write_text(EXPERIMENT_TEXT.replace("[A, AB, AC]", "[A, AB]").replace("test_sets:", "on:"))
    result = runner.invoke(app, ["reproduce", str(bad), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and f"error: {bad}:11: audit: the key 'on' is read by YAML as the boolean" in \
        result.output and not (tmp_path / "o").exists()
    result = runner.invoke(app, ["results", str(tmp_path), "--csv", str(tmp_path / "csv")])
    assert result.exit_code == 2 and "no results.sqlite" in result.output


def test_public_experiments_load_with_data_paths_from_the_current_folder(tmp_path, monkeypatch):
    """Shipped files resolve data paths against the current folder; the recipe file ships beside them; the
    optional roles C and A, absent here, are left out with everything that needs them, each named."""
    monkeypatch.chdir(tmp_path)
    public = load_experiment("public")
    assert public.data["D"].root == str(tmp_path.parent / "shared/data/covid-chestxray")
    assert public.data["F"].source == "figure1" and set(public.data) == {"D", "B", "Q", "F"}
    assert public.recipes == experiment_path("public").with_name("public_recipes.yaml")
    assert public.compositions == ["D", "DB", "Q"] and public.tests == ["D", "DB", "Q", "F"]
    assert public.encoders == ["none", "B"] and len(public.cells()) == 6
    assert public.audit.compositions == ["D", "DB", "Q"] and public.audit.external == ["F", "Q"]
    assert public.recipe_book().recipe("DB").roles == ("D", "B") and public.preprocess.size == 128
    assert "skipped composition DC: needs C" in public.notes and "skipped encoder C: needs C" in public.notes
    assert any(n.startswith("optional role A (hospital-csv) not found") for n in public.notes)
    full = load_experiment("public-full")
    assert full.train_config("resnet18").image_size == 224 and full.compositions == public.compositions


def test_optional_roles_are_kept_when_found_or_bound(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "rsna").mkdir()
    bound = load_experiment("public", data={"C": DataSpec("rsna", "rsna")})
    assert bound.data["C"] == DataSpec("rsna", "rsna") and "DC" in bound.compositions and "C" in bound.encoders
    assert "A" not in bound.compositions and not any("role C" in note for note in bound.notes)


def test_optional_role_leaving_no_grid_is_an_error(tmp_path):
    document = {**TINY, "data": {"synthetic": TINY["data"]["synthetic"],
                                 "E": {"source": "rsna", "path": "nowhere", "optional": True}},
                "recipes": "recipes.yaml", "grid": {**TINY["grid"], "compositions": ["E"], "tests": ["E"]},
                "audit": {}}
    (tmp_path / "recipes.yaml").write_text(yaml.safe_dump({"recipes": {"E": {"bases": ["E"]}}}))
    with pytest.raises(ExperimentError, match="without the optional role"):
        load_experiment(write(tmp_path, document))


@pytest.mark.parametrize("external, message", [
    (["Z"], r"audit.external\[0\]: external audit set 'Z' is not a role data binds"),
    (["A"], r"audit.external\[0\]: role A has loader options"),
])
def test_external_audit_roles_are_checked(tmp_path, external, message):
    document = {**TINY, "data": {**TINY["data"], "A": {"source": "hospital-csv", "path": "a",
                                                       "options": {"csv": "a.csv"}}},
                "audit": {**TINY["audit"], "external": external}}
    with pytest.raises(ExperimentError, match=message):
        load_experiment(write(tmp_path, document))


def test_show_copy_of_public_finds_its_shipped_recipes(tmp_path):
    shown = CliRunner().invoke(app, ["reproduce", "--show", "public"])
    copy = tmp_path / "my-public.yaml"
    copy.write_text(shown.stdout, encoding="utf-8")
    experiment = load_experiment(copy)
    assert experiment.recipes == experiment_path("public").with_name("public_recipes.yaml")
    assert experiment.data["D"].root == str(tmp_path.parent / "shared/data/covid-chestxray")  # the copy's folder


def test_cli_reproduce_data_binds_and_replaces_roles(tmp_path, monkeypatch):
    import unveil.experiments

    seen = []
    monkeypatch.setattr(unveil.experiments, "reproduce",
                        lambda experiment, out, **kwargs: (seen.append(experiment), out / "results.sqlite")[1])
    (tmp_path / "rsna").mkdir()
    result = CliRunner().invoke(app, ["reproduce", "public", "--out", str(tmp_path / "o"), "--no-report",
                                      "--data", f"C={tmp_path / 'rsna'}", "--data", "Q=covid-qu-ex:/elsewhere/q"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("done in ")  # the elapsed time, then where the results are
    assert f"results store {tmp_path / 'o' / 'results.sqlite'}" in result.stdout
    experiment = seen[0]
    assert experiment.data["C"] == DataSpec("rsna", str(tmp_path / "rsna"))  # ROLE=PATH: the recipes' source
    assert experiment.data["Q"] == DataSpec("covid-qu-ex", "/elsewhere/q") and "DC" in experiment.compositions
    bad = CliRunner().invoke(app, ["reproduce", "public", "--out", str(tmp_path / "o"), "--data", "C"])
    assert bad.exit_code == 2 and "--data expects ROLE=SOURCE:PATH" in bad.output


@pytest.mark.realdata
@pytest.mark.slow
def test_public_design_runs_on_the_real_samples(tmp_path):
    """The shipped public design, shrunk (one composition, 32 px, one epoch), on ../shared/data: D trained,
    tested on D and on Figure 1's test split, audited with Figure 1 whole as an external set; the report
    says which results are too wide to conclude from (a few dozen test patients)."""
    from conftest import shared

    document = yaml.safe_load(experiment_path("public").read_text(encoding="utf-8"))
    document["recipes"] = str(experiment_path("public").with_name("public_recipes.yaml"))
    for entry in document["data"].values():
        entry["path"] = str(shared(".") / Path(entry["path"]).relative_to("../shared/data"))
    document |= {"preprocess": {**document["preprocess"], "size": 32}, "training": {"width": 0.25, "epochs": 1},
                 "pretraining": {}, "evaluation": {"resamples": 50},
                 "grid": {"encoders": ["none"], "architectures": ["conv8"], "compositions": ["D", "DC"],
                          "tests": ["D", "F"]},
                 "audit": {**document["audit"], "compositions": ["D"], "external": ["F"], "resamples": 50,
                           "saliency_samples": 1}}
    experiment = load_experiment(write(tmp_path, document))
    assert experiment.compositions == ["D"] and "skipped composition DC: needs C" in experiment.notes
    store_path = reproduce(experiment, tmp_path / "out")
    with ResultsStore(store_path) as store:
        assert store.evaluated() == {("conv8-none-D", "D"), ("conv8-none-D", "F")}
        audits = store.table("audits")
    external = audits[audits["subject"].str.contains("figure1:", regex=False)]
    assert {"transfer (AUC)", "below chance"} <= set(external["test"])
    html = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    assert "Too wide to conclude" in html and "skipped composition DC: needs C" in html


def test_external_audit_sets_leave_out_the_roles_a_cell_was_trained_on(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from unveil.experiments.assess import external_sets
    from unveil.experiments.runner import plan_cells

    monkeypatch.chdir(tmp_path)
    experiment = load_experiment("public")
    run = SimpleNamespace(experiment=experiment, data=experiment.data)
    by_id = {cell.id: cell for cell in plan_cells(experiment, tmp_path)}
    figure1, qu_ex = (f"{experiment.data[r].source}:{experiment.data[r].root}" for r in ("F", "Q"))
    assert external_sets(run, by_id["conv8-B-DB"]) == [figure1, qu_ex]
    assert external_sets(run, by_id["conv8-none-Q"]) == [figure1]  # Q is its own training data


def test_an_encoder_from_a_weights_file_is_pretrained_from_it_or_used_as_it_is(tmp_path):
    """`pretraining: X: {init_weights: FILE}` pre-trains starting from FILE; with `data: []` the cells start
    from FILE directly (e.g. a torchxrayvision encoder against the paper's pneumonia pre-training)."""
    from types import SimpleNamespace

    from unveil.experiments.runner import plan_cell_jobs, plan_cells, plan_pretraining
    from unveil.models import build_model

    torch.save(build_model("conv8", num_classes=2, width=0.25).state_dict(), tmp_path / "weights.pt")
    document = {**TINY, "pretraining": {"B": {"data": ["B"], "init_weights": "weights.pt"},
                                        "X": {"data": [], "init_weights": "weights.pt"}},
                "grid": {**TINY["grid"], "encoders": ["none", "B", "X"]}}
    experiment = load_experiment(write(tmp_path, document))
    assert experiment.pretraining["X"].init_weights == str(tmp_path / "weights.pt")  # resolved like every path
    with ResultsStore(tmp_path / "r.sqlite") as store:
        run = SimpleNamespace(experiment=experiment, out=tmp_path, data={"A": None, "B": None}, cache=tmp_path / "c",
                              workers=1, bars=False, store=store, tracking=None)
        encoders, pending = plan_pretraining(run)
        assert [job.name for job in pending] == ["B-conv8"] and pending[0].init_weights.endswith("weights.pt")
        jobs = {job.name: job for job in plan_cell_jobs(run, plan_cells(experiment, tmp_path), encoders)}
    assert jobs["conv8-X-AB"].encoder is None and jobs["conv8-X-AB"].init_weights.endswith("weights.pt")
    assert jobs["conv8-B-AB"].encoder.endswith("B-conv8/model") and jobs["conv8-B-AB"].init_weights is None
    assert jobs["conv8-none-AB"].encoder is None and jobs["conv8-none-AB"].init_weights is None
    missing = {**document, "pretraining": {**document["pretraining"], "X": {"data": [], "init_weights": "nope.pt"}}}
    with pytest.raises(ExperimentError, match=r"pretraining.X.init_weights: no such weights file: .*nope.pt"):
        load_experiment(write(tmp_path, missing, "missing.yaml"))
    empty = {**document, "pretraining": {**document["pretraining"], "X": {"data": []}}}
    with pytest.raises(ExperimentError, match="pretraining.X.data: no data to pre-train on and no init_weights"):
        load_experiment(write(tmp_path, empty, "empty.yaml"))
