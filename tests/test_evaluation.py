"""Every model on every test set: test-set building, leakage guard, threshold rules, tables, ROC, CLI."""

from __future__ import annotations

import json
import math
import re
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from unveil.cli import app
from unveil.data.spec import DataSpec
from unveil.evaluation.evaluate import EvaluationError, build_test_set, evaluate_models, resolve_threshold
from unveil.evaluation.metrics import METRICS, ThresholdRule, choose_threshold, evaluate_scores
from unveil.evaluation.tables import (
    TableError,
    architecture_tables,
    json_rows,
    plot_roc_curves,
    pool_seeds,
    summary_table,
    write_tables,
)
from unveil.preprocess.cache import PreprocessSettings
from unveil.thresholds import ThresholdRequest
from unveil.training import TrainConfig, load_bundle, train

CONFIG = TrainConfig(architecture="conv8", width=0.25, image_size=32, epochs=2, batch_size=16, eval_batch_size=32)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny synthetic benchmark and a conv8 trained on its AB composition."""
    from unveil.synth.config import load_config
    from unveil.synth.generate import dataset_roots, generate

    root = tmp_path_factory.mktemp("evaluation")
    generate(replace(load_config("paper"), image_size=48), root / "bench", seed=0, scale=0.12)
    data = {name: DataSpec(source, path) for name, (source, path) in dataset_roots(root / "bench").items()}
    run = train("AB", {"A": data["A"], "B": data["B"]}, root / "AB", config=CONFIG,
                preprocess=PreprocessSettings(mask="none"))
    return {"data": data, "bundle": run.bundle, "root": root}


def test_every_model_on_every_test_set(trained):
    data = trained["data"]
    run = evaluate_models([trained["bundle"]], ["AB", "AC"], data={"C": data["C"]}, resamples=200)
    assert list(run.rows["test_set"]) == ["AB", "AC"] and list(run.rows["test_set_label"]) == ["AB", "AC"]
    row = run.rows.iloc[0]
    assert (row["model"], row["architecture"], row["encoder"], row["training_set"]) == ("AB", "conv8", "none", "AB")
    for metric in METRICS:
        assert metric in row and f"{metric}_low" in row and f"{metric}_high" in row
    bundle = load_bundle(trained["bundle"])
    assert row["threshold"] == bundle.threshold and row["threshold_rule"] == "youden"  # the training default
    assert row["threshold_description"].startswith("youden on validation")
    for metric in ("sensitivity", "specificity", "f1", "accuracy", "balanced_accuracy"):
        assert f"{metric}_at_0.5" in row  # the paper's fixed 0.5 beside the chosen threshold
    assert row["bindings"].startswith(f"A=hospital-csv:{trained['data']['A'].root} (model's own)")
    assert row["rebound"] == "" and run.rows.iloc[1]["bindings"].endswith("(--data)")
    assert row["images"] == row["positive_images"] + row["negative_images"]
    assert row["patients"] > 0 and row["tp"] + row["fn"] == row["positive_images"]
    # The AB and AC test sets share A's test part; AC's negatives come from C.
    predictions = run.predictions
    assert {"probability", "label", "decision", "threshold", "threshold_rule"} <= set(predictions.columns)
    assert ((predictions["probability"] >= predictions["threshold"]) == (predictions["decision"] == "covid+")).all()
    assert set(predictions["decision"]) <= {"covid+", "covid-"}
    ab, ac = (predictions[predictions["test_set"] == name] for name in ("AB", "AC"))
    assert set(ab["source"]) == {"hospital-csv", "chestxray"} and set(ac["source"]) == {"hospital-csv", "rsna"}
    positives_ab = set(ab.loc[ab["label"] == 1, "record_id"])
    assert positives_ab == set(ac.loc[ac["label"] == 1, "record_id"])
    # The composition's test split is exactly the one in the model's split file.
    splits = pd.read_csv(trained["root"] / "AB" / "splits.csv", dtype=str)
    assert set(ab["record_id"]) == set(splits.loc[splits["split"] == "test", "record_id"])


def test_a_model_is_never_tested_on_its_training_patients(trained):
    whole_a = f"hospital-csv:{trained['data']['A'].root}"
    with pytest.raises(EvaluationError, match="shares .* patient"):
        evaluate_models([trained["bundle"]], [whole_a], resamples=50)
    # its training patients' follow-up images are near-duplicates of its training images: refused, unless flagged
    with pytest.raises(EvaluationError, match="near-duplicates of training images .* --duplicates flag"):
        evaluate_models([trained["bundle"]], [whole_a], resamples=50, allow_overlap=True)
    run = evaluate_models([trained["bundle"]], [whole_a], resamples=50, allow_overlap=True, duplicates="flag")
    assert run.rows.iloc[0]["overlap_patients"] > 0
    assert (run.rows.iloc[0]["test_set"], run.rows.iloc[0]["test_set_label"]) == (whole_a, "A")  # by its role
    copies = run.predictions["near_duplicate_of_training"]
    assert run.rows.iloc[0]["near_duplicates_of_training"] == copies.sum() > 0
    excluded = evaluate_models([trained["bundle"]], [whole_a], resamples=50, allow_overlap=True, duplicates="exclude")
    assert len(excluded.predictions) == len(run.predictions) - copies.sum()
    assert not excluded.predictions["near_duplicate_of_training"].any()


def test_missing_role_is_named(trained):
    with pytest.raises(EvaluationError, match=r"role\(s\) C"):
        evaluate_models([trained["bundle"]], ["AC"], resamples=50)
    whole = build_test_set(f"shenzhen:{trained['data']['lungs'].root}", {}, seed=0)  # a dataset as a test set
    assert whole.origin["kind"] == "dataset" and (whole.records["covid"] == 0).all()


def test_threshold_rules_are_chosen_on_validation(trained):
    bundle = load_bundle(trained["bundle"])
    assert resolve_threshold(bundle, "bundle") == bundle.threshold_choice
    assert resolve_threshold(bundle, ThresholdRequest(ThresholdRule.FIXED, 0.3)).value == 0.3
    validation = pd.read_csv(trained["root"] / "AB" / "val_predictions.csv")
    youden = resolve_threshold(bundle, "youden")
    assert youden == choose_threshold(validation["label"], validation["p_covid+"], "youden")
    assert youden == bundle.threshold_choice  # the training default chose the same on the same predictions
    chosen = resolve_threshold(bundle, ThresholdRequest("sensitivity", target_sensitivity=0.8))
    positives = validation.loc[validation["label"] == 1, "p_covid+"]
    assert (positives >= chosen.value).mean() >= 0.8 and chosen.rule is ThresholdRule.SENSITIVITY
    with pytest.raises(EvaluationError, match="threshold rule"):
        resolve_threshold(bundle, "median")
    run = evaluate_models([trained["bundle"]], ["AB"], threshold=ThresholdRequest("fixed", 0.5), resamples=50)
    row = run.rows.iloc[0]
    assert row["threshold_rule"] == "fixed" and row["threshold"] == 0.5
    assert row["balanced_accuracy_at_0.5"] == row["balanced_accuracy"]


def _rows() -> pd.DataFrame:
    base = {"model": "m", "architecture": "resnet18", "encoder": "B", "training_set": "AB", "patients": 10,
            "images": 12, "threshold": 0.5, "threshold_rule": "fixed"}
    rows = []
    for test_set, dor in (("AB", math.inf), ("AC", 4.0)):
        row = {**base, "test_set": test_set}
        for metric in METRICS:
            row[metric], row[f"{metric}_low"], row[f"{metric}_high"] = 0.8, 0.7, 0.9
        row["dor"], row["dor_low"], row["dor_high"] = dor, 2.0, math.inf
        rows.append(row)
    rows.append({**rows[1], "model": "c", "architecture": "conv8", "encoder": "none", "roc_auc": math.nan})
    return pd.DataFrame(rows)


def test_tables_in_the_papers_layout(tmp_path):
    rows = _rows()
    summary = summary_table(rows)
    assert list(summary.columns) == ["Model", "Architecture", "Pre-trained", "Trained on", "Threshold rule", "Test AB",
                                     "Test AC"]
    assert summary.iloc[0]["Architecture"] == "ResNet-18" and summary.iloc[0]["Test AB"] == "0.80 [0.70, 0.90]"
    assert summary.iloc[0]["Threshold rule"] == "fixed"
    tables = architecture_tables(rows)
    assert list(tables) == ["resnet18", "conv8"]  # registry order
    assert tables["resnet18"].iloc[0]["DOR"] == "∞ [2.00, ∞]" and tables["conv8"].iloc[0]["AUC"] == "n/a"
    written = {p.name for p in write_tables(rows, tmp_path)}
    assert {"table2.md", "table2.tex", "tableA1_resnet18.md", "tableA2_conv8.tex", "results.csv"} <= written
    assert r"$\infty$" in (tmp_path / "tableA1_resnet18.tex").read_text()
    assert "| Test AB" in (tmp_path / "table2.md").read_text()
    back = pd.read_csv(tmp_path / "results.csv")
    assert np.isinf(back.loc[0, "dor"])  # raw numbers survive the CSV
    assert json_rows(rows)[0]["dor"] == "inf" and json_rows(rows)[2]["roc_auc"] is None


def test_test_sets_are_named_by_their_role_else_their_source():
    from unveil.evaluation.names import bound_labels, legend, relabel, test_set_labels

    bindings = {"B": DataSpec("chestxray", "/data/chest_xray"), "D": DataSpec("covid-chestxray", "/data/cohen/")}
    names = ["AB", "covid-chestxray:/data/cohen", "chestxray:/other/kermany", "rsna:/data/rsna", "rsna:/more/rsna"]
    labels = bound_labels(names, bindings)
    assert labels == {"AB": "AB", "covid-chestxray:/data/cohen": "D",  # the role bound to that folder
                      "chestxray:/other/kermany": "chestxray (kermany)",  # role B shares its source
                      "rsna:/data/rsna": "rsna (data/rsna)", "rsna:/more/rsna": "rsna (more/rsna)"}
    assert test_set_labels(["covid-chestxray:/x/paper/D"]) == {"covid-chestxray:/x/paper/D": "covid-chestxray"}
    # a role that reads like a composition of the same table says it is the whole set; labels stay distinct
    assert test_set_labels(["A", "hospital-csv:/x"], {"hospital-csv:/x": "A"}) == {"A": "A",
                                                                                  "hospital-csv:/x": "A (whole set)"}
    assert legend(labels, "Test ")[0] == "Test D = covid-chestxray:/data/cohen"
    assert relabel("AB -> covid-chestxray:/data/cohen; covid-chestxray:/data/cohen2 (COVID- images)", labels) == (
        "AB -> D; covid-chestxray:/data/cohen2 (COVID- images)")  # a longer path is another set


def test_tables_name_a_whole_dataset_by_its_label_and_keep_its_full_name(tmp_path):
    external = "covid-chestxray:/tmp/pytest-of-someone/pytest-7/bench0/paper/D"
    rows = _rows()
    rows.loc[[1, 2], "test_set"] = external
    assert list(summary_table(rows).columns)[-2:] == ["Test AB", "Test covid-chestxray"]  # no label: its source
    labelled = rows.assign(test_set_label=rows["test_set"].map({"AB": "AB", external: "D"}))
    assert list(summary_table(labelled).columns)[-2:] == ["Test AB", "Test D"]
    assert list(architecture_tables(labelled)["resnet18"]["Tested on"]) == ["AB", "D"]
    write_tables(labelled, tmp_path)
    markdown = (tmp_path / "table2.md").read_text()
    assert "| Test D " in markdown and f"- Test D = {external}\n" in markdown and markdown.count(external) == 1
    assert f"Test D = {external}" in (tmp_path / "tableA1_resnet18.md").read_text()
    back = pd.read_csv(tmp_path / "results.csv")
    assert list(back["test_set"]) == list(rows["test_set"]) and list(back["test_set_label"]) == ["AB", "D", "D"]
    assert list(back.columns).index("test_set_label") == list(back.columns).index("test_set") + 1
    again = tmp_path / "again"
    write_tables(back, again)  # `unveil tables` from results.csv keeps the labels
    assert "| Test D " in (again / "table2.md").read_text()


def _scored_rows() -> pd.DataFrame:
    """Rows of evaluate_scores on COVID+-only test sets of 12 patients: none found, all found, and 9 found."""
    identity = {"architecture": "conv8", "encoder": "none", "training_set": "AB", "test_set": "D"}
    rows = []
    for model, found in (("none-found", 0), ("all-found", 12), ("most-found", 9)):
        scores = np.r_[np.full(found, 0.9), np.full(12 - found, 0.1)]
        row = evaluate_scores(np.ones(12, dtype=int), scores, np.arange(12), resamples=200, seed=0).as_row()
        rows.append({**identity, "model": model, **row})
    return pd.DataFrame(rows)


def test_tables_show_wilson_intervals_for_proportions_and_n_a_where_a_class_is_missing(tmp_path):
    rows = _scored_rows()
    table = architecture_tables(rows)["conv8"].set_index("Model")
    # 0/12 and 12/12: the Wilson interval, not the bootstrap's [0.00, 0.00] and [1.00, 1.00].
    assert table.loc["none-found", "Sensitivity"] == "0.00 [0.00, 0.24]"
    assert table.loc["all-found", "Sensitivity"] == "1.00 [0.76, 1.00]"
    assert table.loc["most-found", "Accuracy"] == "0.75 [0.47, 0.91]"  # Wilson 9/12: [0.4677, 0.9111]
    # Bootstrap for F1; n/a for every metric that needs COVID- images (no continuity-corrected DOR of 3.52).
    assert table.loc["all-found", "F1"] == "1.00 [1.00, 1.00]"
    for label in ("Specificity", "BA", "AUC", "DOR", "DOR (HA)"):
        assert set(table[label]) == {"n/a"}, label
    write_tables(rows, tmp_path)
    markdown = (tmp_path / "tableA1_conv8.md").read_text()
    assert "Sensitivity, Specificity, Accuracy: Wilson score interval on the patient-effective sample size" in markdown
    assert "F1, BA, AUC, DOR, DOR (HA): patient bootstrap, percentile" in markdown
    assert ("- most-found on Test D: Specificity: undefined: no COVID- images; BA, AUC, DOR, DOR (HA): undefined: "
            "no COVID- images (it needs COVID+ and COVID- images)\n") in markdown
    assert "| 0.00 [0.00, 0.24]" in markdown and "| n/a " in markdown
    latex = (tmp_path / "tableA1_conv8.tex").read_text()
    assert "95 \\% CI: Sensitivity" in latex and " 95 % " not in latex  # a bare % would end the caption
    assert "& n/a &" in latex and "DOR (HA): undefined: no COVID- images" in latex
    assert "BA: undefined: no COVID- images" in (tmp_path / "table2.md").read_text()
    # results.csv keeps both intervals of every proportion.
    back = pd.read_csv(tmp_path / "results.csv")
    assert list(back["sensitivity_high"]) == [0.0, 1.0, pytest.approx(back.loc[2, "sensitivity_high"])]
    assert back.loc[0, "sensitivity_wilson_high"] == pytest.approx(0.2425, abs=1e-4)
    assert (back["sensitivity_design_effect"] == 1.0).all() and back["dor_corrected"].isna().all()


def test_a_model_missing_from_a_test_set_is_a_dash_everywhere(tmp_path):
    rows = _rows().iloc[[0, 1, 2]]  # m on AB and AC, c on AC only
    summary = summary_table(rows).set_index("Model")
    assert summary.loc["c", "Test AB"] == "—" and summary.loc["c", "Test AC"] == "0.80 [0.70, 0.90]"
    write_tables(rows, tmp_path)
    assert re.search(r"^\| c .*\| —\s+\| 0\.80 \[0\.70, 0\.90\] \|$", (tmp_path / "table2.md").read_text(), re.M)
    assert "& --- &" in (tmp_path / "table2.tex").read_text() and "nan" not in (tmp_path / "table2.tex").read_text()


def test_pooled_seeds_drop_the_per_run_intervals():
    from unveil.evaluation.tables import undefined_notes

    rows = _scored_rows().iloc[[2, 2]].assign(model=["s0", "s1"], model_seed=[0, 1], recipe_key="k")
    pooled = pool_seeds(rows)
    assert not [c for c in pooled.columns if c.endswith(("_low", "_high", "_low_half_width", "_high_half_width"))]
    assert architecture_tables(pooled)["conv8"].iloc[0]["Sensitivity"] == "0.75 ± 0.00"
    assert undefined_notes(pooled) == [
        "s0 + s1 on Test D: Specificity: undefined: no COVID- images; BA, AUC, DOR, DOR (HA): undefined: no COVID- "
        "images (it needs COVID+ and COVID- images)"]


def test_roc_curves_are_written(tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 60)
    predictions = pd.DataFrame({"model": "m", "test_set": np.repeat(["AB", "AC"], 30), "label": labels,
                                "probability": np.clip(labels * 0.4 + rng.random(60) * 0.6, 0, 1), "threshold": 0.5})
    written = plot_roc_curves(predictions, tmp_path)
    assert sorted(p.name for p in written) == ["roc_m.png", "roc_m.svg"]
    assert (tmp_path / "roc_m.svg").read_text().count("<svg") == 1


def test_evaluation_outputs_have_the_cli_names_and_a_rerun_keeps_other_test_sets(tmp_path):
    from unveil.evaluation.evaluate import EvaluationRun
    from unveil.evaluation.outputs import write_evaluation_outputs

    rows = _rows()
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 40)
    predictions = pd.DataFrame({"model": "m", "test_set": np.repeat(["AB", "AC"], 20), "label": labels,
                                "probability": rng.random(40), "threshold": 0.5})
    first = write_evaluation_outputs(EvaluationRun(rows, predictions, ["x.png: unreadable"]), tmp_path,
                                     arguments={"on": ["AB", "AC"]})
    names = {p.name for p in tmp_path.iterdir()}
    assert {"results.csv", "predictions.csv", "table2.md", "table2.tex", "roc_m.png", "roc_m.svg",
            "evaluation.meta.json"} <= names
    assert first.predictions == tmp_path / "predictions.csv" and first.meta == tmp_path / "evaluation.meta.json"
    assert json.loads(first.meta.read_text())["skipped"] == ["x.png: unreadable"]
    # a resumed run evaluates AC again only: AB's rows and predictions of the first call stay
    ac_rows = rows[rows["test_set"] == "AC"].assign(balanced_accuracy=0.55)
    ac_predictions = predictions[predictions["test_set"] == "AC"].assign(probability=0.25)
    write_evaluation_outputs(EvaluationRun(ac_rows, ac_predictions), tmp_path, arguments={}, keep_previous=True,
                             roc_formats=("png",))
    results = pd.read_csv(tmp_path / "results.csv")
    assert len(results) == len(rows) and set(results.loc[results["test_set"] == "AC", "balanced_accuracy"]) == {0.55}
    merged = pd.read_csv(tmp_path / "predictions.csv")
    assert len(merged) == 40 and (merged.loc[merged["test_set"] == "AC", "probability"] == 0.25).all()
    assert np.allclose(merged.loc[merged["test_set"] == "AB", "probability"], predictions["probability"][:20])


def test_cli_evaluate(trained, tmp_path):
    runner = CliRunner()
    c = trained["data"]["C"]
    result = runner.invoke(app, ["evaluate", str(trained["bundle"]), "--on", "AB", "--on", "AC", "--data",
                                 f"C={c.source}:{c.root}", "--resamples", "100", "--json", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [r["test_set"] for r in rows] == ["AB", "AC"]
    assert (tmp_path / "table2.md").is_file() and (tmp_path / "roc_AB.png").is_file()
    assert (tmp_path / "predictions.csv").is_file() and (tmp_path / "evaluation.meta.json").is_file()
    again = runner.invoke(app, ["tables", str(tmp_path / "results.csv"), "--out", str(tmp_path / "again")])
    assert again.exit_code == 0 and (tmp_path / "again" / "table2.tex").is_file()
    missing = runner.invoke(app, ["evaluate", str(trained["bundle"]), "--on", "AC"])
    assert missing.exit_code == 2 and "role(s) C" in missing.output
    fixed = runner.invoke(app, ["evaluate", str(trained["bundle"]), "--on", "AB", "--threshold", "0.3", "--resamples",
                                "20", "--json"])
    assert fixed.exit_code == 0 and [(r["threshold_rule"], r["threshold"]) for r in json.loads(fixed.stdout)] == [
        ("fixed", 0.3)]
    both = runner.invoke(app, ["evaluate", str(trained["bundle"]), "--on", "AB", "--threshold", "0.3",
                               "--threshold-rule", "youden"])
    assert both.exit_code == 2 and "does not go with --threshold-rule youden" in both.output
    not_a_model = runner.invoke(app, ["evaluate", str(tmp_path), "--on", "AB"])
    assert not_a_model.exit_code == 2 and "not a model bundle" in not_a_model.output
    whole = runner.invoke(app, ["evaluate", str(trained["bundle"]), "--on", f"{c.source}:{c.root}", "--data",
                                f"C={c.source}:{c.root}", "--resamples", "20", "--duplicates", "flag"])
    assert whole.exit_code == 0, whole.output
    assert "| Test C " in whole.stdout and f"\nTest C = {c.source}:{c.root}\n" in whole.stdout  # by its role


def test_rows_show_the_rule_and_the_figures_at_0_5_where_the_threshold_differs(tmp_path):
    rows = _rows()
    columns = ["threshold", "threshold_rule", "balanced_accuracy_at_0.5", "sensitivity_at_0.5", "specificity_at_0.5"]
    rows.loc[0, columns] = [0.431, "youden", 0.52, 1.0, 0.04]
    rows.loc[1, columns] = [0.431, "youden", 0.55, 1.0, 0.10]
    rows.loc[2, columns] = [0.5, "fixed", 0.8, 0.8, 0.8]
    summary = summary_table(rows)
    assert list(summary["Threshold rule"]) == ["youden", "fixed"]
    assert summary.iloc[0]["Test AB"] == "0.80 [0.70, 0.90] (at 0.5: 0.52)"
    assert summary.iloc[1]["Test AC"] == "0.80 [0.70, 0.90]"  # the conv8 model's threshold is 0.5
    table = architecture_tables(rows)["resnet18"]
    assert list(table["Threshold"]) == ["youden 0.431", "youden 0.431"]
    assert list(table["BA at 0.5"]) == ["0.52", "0.55"] and table.iloc[0]["Specificity at 0.5"] == "0.04"
    assert "BA at 0.5" not in architecture_tables(rows)["conv8"]  # every conv8 row is at 0.5
    write_tables(rows, tmp_path)
    assert "chosen a priori on each model's validation split" in (tmp_path / "table2.md").read_text()


def _two_runs_of_one_cell() -> pd.DataFrame:
    rows = _rows().iloc[:2]
    first = rows.assign(model="AB-conv8", bundle="/runs/seed0/AB-conv8/model", model_seed=0, recipe_key="k")
    second = rows.assign(model="AB-conv8", bundle="/runs/seed1/AB-conv8/model", model_seed=1, recipe_key="k",
                         balanced_accuracy=0.6)
    return pd.concat([first, second], ignore_index=True)


def test_two_models_of_one_cell_are_never_merged(tmp_path):
    rows = _two_runs_of_one_cell()
    summary = summary_table(rows)
    assert len(summary) == 2 and list(summary["Model"]) == ["seed0/AB-conv8", "seed1/AB-conv8"]
    assert list(summary["Test AB"]) == ["0.80 [0.70, 0.90]", "0.60 [0.70, 0.90]"]
    table = architecture_tables(rows)["resnet18"]
    assert list(table["Model"]) == ["seed0/AB-conv8"] * 2 + ["seed1/AB-conv8"] * 2
    # Two rows naming one model with different values are refused, not silently merged.
    clash = rows.drop(columns="bundle")
    with pytest.raises(TableError, match="different results"):
        summary_table(clash)


def test_seeds_are_pooled_only_on_request(tmp_path):
    rows = _two_runs_of_one_cell()
    pooled = pool_seeds(rows)
    assert len(pooled) == 2 and set(pooled["n_seeds"]) == {2}
    ab = pooled[pooled["test_set"] == "AB"].iloc[0]
    assert ab["balanced_accuracy"] == pytest.approx(0.7) and ab["seeds"] == "0, 1"
    assert ab["balanced_accuracy_half_width"] == pytest.approx(12.706 * 0.1414214 / math.sqrt(2), rel=1e-3)
    assert ab["model"] == "seed0/AB-conv8 + seed1/AB-conv8" and "Student-t" in ab["interval"]
    summary = summary_table(pooled)
    assert len(summary) == 1 and summary.iloc[0]["Test AB"] == f"0.70 ± {ab['balanced_accuracy_half_width']:.2f}"
    written = {p.name for p in write_tables(rows, tmp_path, aggregate_seeds=True)}
    assert "results_by_cell.csv" in written and "Student-t 95 %" in (tmp_path / "table2.md").read_text()
    same_seed = rows.assign(model_seed=0)
    with pytest.raises(TableError, match="share the cell .* and a seed"):
        pool_seeds(same_seed)
    runner = CliRunner()
    rows.to_csv(tmp_path / "results_in.csv", index=False)
    result = runner.invoke(app, ["tables", str(tmp_path / "results_in.csv"), "--out", str(tmp_path / "t"),
                                 "--aggregate-seeds"])
    assert result.exit_code == 0, result.output
    assert "± " in (tmp_path / "t" / "table2.md").read_text()
    same_seed.to_csv(tmp_path / "same.csv", index=False)
    result = runner.invoke(app, ["tables", str(tmp_path / "same.csv"), "--out", str(tmp_path / "u"),
                                 "--aggregate-seeds"])
    assert result.exit_code == 2 and "not seeds of one cell" in result.output


@pytest.fixture(scope="module")
def two_models(trained):
    """A second model, trained on composition A only: it has no role B of its own."""
    data = trained["data"]
    run = train("A", {"A": data["A"]}, trained["root"] / "A-only", config=CONFIG,
                preprocess=PreprocessSettings(mask="none"))
    return [trained["bundle"], run.bundle]


def test_evaluate_data_adds_roles_and_never_replaces_a_models_own(trained, two_models, tmp_path):
    import shutil

    data = trained["data"]
    other_b = shutil.copytree(data["B"].root, tmp_path / "another-B")  # same images, another binding
    run = evaluate_models(two_models, ["AB"], data={"B": DataSpec("chestxray", str(other_b))}, resamples=20)
    ab_model, a_model = run.rows.iloc[0], run.rows.iloc[1]
    # The AB model keeps its own B; the A model gets B from --data.
    assert f"B=chestxray:{data['B'].root} (model's own; --data not used)" in ab_model["bindings"]
    assert f"B=chestxray:{other_b} (--data)" in a_model["bindings"] and a_model["rebound"] == ""
    assert ab_model["rebound"] == ""
    # Replacing the model's own binding is a deliberate choice, and the row says so.
    rebound = evaluate_models(two_models[:1], ["AB"], data={"B": DataSpec("chestxray", str(other_b))},
                              resamples=20, rebind=True).rows.iloc[0]
    assert rebound["rebound"] == "B" and f"B=chestxray:{other_b} (rebound by --data)" in rebound["bindings"]
    runner = CliRunner()
    args = ["evaluate", *map(str, two_models), "--on", "AB", "--data", f"B=chestxray:{other_b}", "--resamples", "20",
            "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "keeps its own bindings" in result.stderr and "--rebind replaces them" in result.stderr
    result = runner.invoke(app, [*args, "--rebind"])
    assert result.exit_code == 0 and "role(s) B rebound by --data" in result.stderr
    assert [r["rebound"] for r in json.loads(result.stdout)] == ["B", ""]


def test_cli_compare_two_models_on_the_same_test_images(trained, two_models, tmp_path):
    """`unveil compare`: one line per test set (DeLong and paired bootstrap), and with --out the evaluation of
    both with the clinician's outputs: calibration columns, reliability and confusion figures, subgroups and the
    comparison."""
    b = trained["data"]["B"]
    result = CliRunner().invoke(app, ["compare", *map(str, two_models), "--on", "AB",
                                      "--data", f"B={b.source}:{b.root}", "--resamples", "50",
                                      "--claim", "training on B helps", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    line = result.stdout.strip().splitlines()[-1]
    assert re.match(r"^training on B (helps|hurts|helps: not shown) on AB: AUC [+-]\d\.\d\d \[[+-]\d\.\d\d, "
                    r"[+-]\d\.\d\d\], DeLong p=\S+; BA [+-]", line), line
    comparisons = pd.read_csv(tmp_path / "comparisons.csv")
    assert list(comparisons[["model_a", "model_b", "test_set"]].iloc[0]) == ["AB", "A-only", "AB"]
    rows = pd.read_csv(tmp_path / "results.csv")
    assert {"ece", "ece_low", "ece_high", "brier", "brier_low", "brier_high"} <= set(rows.columns)
    assert (rows["ece_low"] <= rows["ece"]).all() and (rows["ece_bins"] == 10).all()
    for kind in ("reliability", "confusion"):
        assert (tmp_path / f"{kind}_AB__AB.png").is_file() and (tmp_path / f"{kind}_A-only__AB.png").is_file()
    predictions = pd.read_csv(tmp_path / "predictions.csv")
    assert {"sex", "age", "view"} <= set(predictions.columns)
    subgroups = pd.read_csv(tmp_path / "subgroups.csv")
    assert {"sex", "age group", "view"} <= set(subgroups["attribute"]) and set(subgroups["model"]) == {"AB", "A-only"}
    same = CliRunner().invoke(app, ["compare", str(two_models[0]), str(two_models[0]), "--on", "AB"])
    assert same.exit_code == 2 and "two different models" in same.output
