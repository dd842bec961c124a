"""Every model on every test set: test-set building, leakage guard, threshold rules, tables, ROC, CLI."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from unveil.cli import app
from unveil.evaluation.evaluate import EvaluationError, build_test_set, evaluate_models, resolve_threshold
from unveil.evaluation.metrics import METRICS
from unveil.evaluation.tables import architecture_tables, json_rows, plot_roc_curves, summary_table, write_tables
from unveil.preprocess.cache import PreprocessSettings
from unveil.training import DataSpec, TrainConfig, load_bundle, train

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
    assert list(run.rows["test_set"]) == ["AB", "AC"]
    row = run.rows.iloc[0]
    assert (row["model"], row["architecture"], row["encoder"], row["training_set"]) == ("AB", "conv8", "none", "AB")
    for metric in METRICS:
        assert metric in row and f"{metric}_low" in row and f"{metric}_high" in row
    assert row["threshold"] == 0.5 and row["threshold_rule"] == "fixed 0.5"
    assert row["images"] == row["positive_images"] + row["negative_images"]
    assert row["patients"] > 0 and row["tp"] + row["fn"] == row["positive_images"]
    # The AB and AC test sets share A's test part; AC's negatives come from C.
    predictions = run.predictions
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
    run = evaluate_models([trained["bundle"]], [whole_a], resamples=50, allow_overlap=True)
    assert run.rows.iloc[0]["overlap_patients"] > 0


def test_missing_role_is_named(trained):
    with pytest.raises(EvaluationError, match=r"role\(s\) C"):
        evaluate_models([trained["bundle"]], ["AC"], resamples=50)
    whole = build_test_set(f"shenzhen:{trained['data']['lungs'].root}", {}, seed=0)  # a dataset as a test set
    assert whole.origin["kind"] == "dataset" and (whole.records["covid"] == 0).all()


def test_threshold_rules_are_chosen_on_validation(trained):
    bundle = load_bundle(trained["bundle"])
    assert resolve_threshold(bundle, "bundle") == (0.5, "fixed 0.5")
    assert resolve_threshold(bundle, "fixed", value=0.3)[0] == 0.3
    value, rule = resolve_threshold(bundle, "youden")
    assert 0 <= value <= 1 and "youden" in rule
    value, rule = resolve_threshold(bundle, "sensitivity", target_sensitivity=0.8)
    validation = pd.read_csv(trained["root"] / "AB" / "val_predictions.csv")
    positives = validation.loc[validation["label"] == 1, "p_covid+"]
    assert (positives >= value).mean() >= 0.8 and "sensitivity" in rule
    with pytest.raises(EvaluationError, match="threshold rule"):
        resolve_threshold(bundle, "median")
    run = evaluate_models([trained["bundle"]], ["AB"], threshold_rule="youden", resamples=50)
    assert "youden" in run.rows.iloc[0]["threshold_rule"]


def _rows() -> pd.DataFrame:
    base = {"model": "m", "architecture": "resnet18", "encoder": "B", "training_set": "AB", "patients": 10,
            "images": 12}
    rows = []
    for test_set, dor in (("AB", math.inf), ("AC", 4.0)):
        row = {**base, "test_set": test_set}
        for metric in METRICS:
            row[metric], row[f"{metric}_low"], row[f"{metric}_high"] = 0.8, 0.7, 0.9
        row["dor"], row["dor_low"], row["dor_high"] = dor, 2.0, math.inf
        rows.append(row)
    rows.append({**rows[1], "architecture": "conv8", "encoder": "none", "roc_auc": math.nan})
    return pd.DataFrame(rows)


def test_tables_in_the_papers_layout(tmp_path):
    rows = _rows()
    summary = summary_table(rows)
    assert list(summary.columns) == ["Architecture", "Pre-trained", "Trained on", "Test AB", "Test AC"]
    assert summary.iloc[0]["Architecture"] == "ResNet-18" and summary.iloc[0]["Test AB"] == "0.80 [0.70, 0.90]"
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


def test_roc_curves_are_written(tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 60)
    predictions = pd.DataFrame({"model": "m", "test_set": np.repeat(["AB", "AC"], 30), "label": labels,
                                "score": np.clip(labels * 0.4 + rng.random(60) * 0.6, 0, 1), "threshold": 0.5})
    written = plot_roc_curves(predictions, tmp_path)
    assert sorted(p.name for p in written) == ["roc_m.png", "roc_m.svg"]
    assert (tmp_path / "roc_m.svg").read_text().count("<svg") == 1


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
    not_a_model = runner.invoke(app, ["evaluate", str(tmp_path), "--on", "AB"])
    assert not_a_model.exit_code == 2 and "not a model bundle" in not_a_model.output
