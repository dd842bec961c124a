"""Evaluation a clinician expects: calibration (ECE, Brier, reliability diagram), confusion matrices, subgroup
metrics and paired comparisons of two models (DeLong, paired patient bootstrap). Tiny arrays, exact answers."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from sklearn.calibration import calibration_curve
from sklearn.metrics import brier_score_loss, roc_auc_score

from unveil.evaluation.calibration import (
    CalibrationError,
    brier_score,
    calibration,
    expected_calibration_error,
    reliability_table,
)
from unveil.evaluation.clinical import write_clinical_tables
from unveil.evaluation.figures import figure_stem, plot_clinical_figures
from unveil.evaluation.metrics import evaluate_scores
from unveil.evaluation.paired import (
    ComparisonError,
    all_pairs,
    compare_predictions,
    compare_scores,
    comparison_line,
    delong_covariance,
    delong_test,
)
from unveil.evaluation.proportions import patient_wilson_interval
from unveil.evaluation.subgroups import MIN_PATIENTS, age_group, prediction_subgroups, subgroup_metrics

# Six images, hand-computed: with 10 bins, 0.12 and 0.18 share bin (0.1, 0.2] (fraction COVID+ 0.5, mean 0.15),
# 0.5 lies on an edge and goes to the lower bin (0.4, 0.5] (fraction 0, mean 0.5), 0.55 alone (1 vs 0.55),
# 0.83 and 0.87 share (0.8, 0.9] (1 vs 0.85): ECE = (2 x 0.35 + 0.5 + 0.45 + 2 x 0.15) / 6 = 1.95 / 6.
LABELS = np.array([0, 1, 0, 1, 1, 1])
SCORES = np.array([0.12, 0.18, 0.5, 0.55, 0.83, 0.87])


def test_ece_and_brier_by_hand():
    assert expected_calibration_error(LABELS, SCORES) == pytest.approx(1.95 / 6, abs=1e-12)
    # Brier: (0.12² + 0.82² + 0.5² + 0.45² + 0.17² + 0.13²) / 6
    assert brier_score(LABELS, SCORES) == pytest.approx(1.1851 / 6, abs=1e-12)
    # Two bins: 0.5 goes to [0, 0.5] (1 of 3 COVID+, mean 0.8/3), the rest to (0.5, 1] (3 of 3, mean 0.75)
    assert expected_calibration_error(LABELS, SCORES, bins=2) == pytest.approx((0.2 + 0.75) / 6, abs=1e-12)
    perfect = expected_calibration_error([0, 0, 1, 1], [0.0, 0.0, 1.0, 1.0])
    assert perfect == 0 and brier_score([0, 0, 1, 1], [0.0, 0.0, 1.0, 1.0]) == 0
    with pytest.raises(CalibrationError, match="bins must be a positive integer"):
        expected_calibration_error(LABELS, SCORES, bins=0)
    with pytest.raises(CalibrationError, match=r"in \[0, 1\]"):
        brier_score([0, 1], [0.2, 1.3])


def test_calibration_agrees_with_scikit_learn():
    rng = np.random.default_rng(3)
    scores = np.concatenate([rng.random(300), np.linspace(0, 1, 11)])  # every bin edge included
    labels = (rng.random(len(scores)) < scores**2).astype(int)
    assert brier_score(labels, scores) == pytest.approx(brier_score_loss(labels, scores), abs=1e-15)
    for bins in (10, 7):
        table = reliability_table(labels, scores, bins)
        used = table[table["images"] > 0]
        fraction, mean = calibration_curve(labels, scores, n_bins=bins, strategy="uniform")
        np.testing.assert_allclose(used["fraction_positive"], fraction, atol=1e-15)
        np.testing.assert_allclose(used["mean_probability"], mean, atol=1e-15)
        expected = float(np.sum(used["images"] * np.abs(fraction - mean)) / len(scores))
        assert expected_calibration_error(labels, scores, bins) == pytest.approx(expected, abs=1e-15)


def test_calibration_intervals_resample_patients():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 120)
    scores = np.clip(0.3 + 0.4 * labels + rng.normal(0, 0.2, 120), 0, 1)
    alone = calibration(labels, scores, np.arange(120), resamples=400, seed=1)
    assert alone.ece == expected_calibration_error(labels, scores) and alone.bins == 10
    assert alone.ece_low <= alone.ece <= alone.ece_high and alone.brier_low <= alone.brier <= alone.brier_high
    assert calibration(labels, scores, np.arange(120), resamples=400, seed=1) == alone  # same seed, same interval
    # 12 patients of 10 alike images each: not 120 independent images, a wider interval than if they were
    labels, scores = np.repeat(labels[:12], 10), np.repeat(scores[:12], 10)
    independent = calibration(labels, scores, np.arange(120), resamples=400, seed=1)
    clustered = calibration(labels, scores, np.arange(120) // 10, resamples=400, seed=1)
    assert clustered.brier == independent.brier
    assert clustered.brier_high - clustered.brier_low > 2 * (independent.brier_high - independent.brier_low)
    none = calibration(labels, scores, np.arange(120), resamples=0)
    assert math.isnan(none.ece_low) and "no bootstrap resamples" in none.note
    row = alone.as_row()
    assert {"ece", "ece_low", "ece_high", "ece_bins", "brier", "brier_low", "brier_high"} <= set(row)


def _brute_delong(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong's covariance by its definition: the O(m n) kernel psi over every (positive, negative) pair."""
    positives, negatives = scores[:, labels == 1], scores[:, labels == 0]
    psi = (positives[:, :, None] > negatives[:, None, :]) + 0.5 * (positives[:, :, None] == negatives[:, None, :])
    v10, v01 = psi.mean(axis=2), psi.mean(axis=1)
    covariance = np.cov(v10) / positives.shape[1] + np.cov(v01) / negatives.shape[1]
    return psi.mean(axis=(1, 2)), covariance


def test_delong_variance_matches_a_hand_example_and_the_brute_force_definition():
    # Positives 0.9, 0.8, 0.4; negatives 0.7, 0.3, 0.2: V10 = (1, 1, 2/3), V01 = (2/3, 1, 1), AUC 8/9,
    # var = var(V10)/3 + var(V01)/3 = (1/27)/3 + (1/27)/3 = 2/81.
    labels = np.array([1, 1, 1, 0, 0, 0])
    aucs, covariance = delong_covariance(labels, np.array([[0.9, 0.8, 0.4, 0.7, 0.3, 0.2]]))
    assert aucs[0] == pytest.approx(8 / 9) and covariance[0, 0] == pytest.approx(2 / 81)
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 2, 40)
    scores = np.round(np.vstack([labels * 0.3 + rng.random(40), labels * 0.5 + rng.random(40)]), 1)  # ties
    fast_aucs, fast = delong_covariance(labels, scores)
    slow_aucs, slow = _brute_delong(labels, scores)
    np.testing.assert_allclose(fast_aucs, slow_aucs, atol=1e-12)
    np.testing.assert_allclose(fast, slow, atol=1e-12)
    assert fast_aucs[0] == pytest.approx(roc_auc_score(labels, scores[0]))


def test_delong_identical_models_and_a_clearly_better_one():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 200)
    weak = np.clip(labels * 0.1 + rng.random(200) * 0.9, 0, 1)
    strong = np.clip(labels * 0.6 + rng.random(200) * 0.4, 0, 1)
    same = delong_test(labels, weak, weak)
    assert same.difference == 0 and same.p == 1
    better = delong_test(labels, weak, strong)
    assert better.difference > 0.2 and better.p < 1e-6
    assert delong_test(labels, strong, weak).difference == pytest.approx(-better.difference)
    with pytest.raises(ComparisonError, match="one class only"):
        delong_test(np.ones(5, int), weak[:5], strong[:5])


def test_paired_bootstrap_of_the_auc_and_ba_differences():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 2, 160)
    patients = np.arange(160) // 2
    weak = np.clip(labels * 0.15 + rng.random(160) * 0.85, 0, 1)
    strong = np.clip(labels * 0.5 + rng.random(160) * 0.5, 0, 1)
    same = compare_scores(labels, weak, weak, patients, resamples=300)
    assert (same.auc_difference, same.auc_difference_low, same.auc_difference_high) == (0, 0, 0)
    assert same.delong_p == 1 and same.balanced_accuracy_difference == 0
    better = compare_scores(labels, weak, strong, patients, threshold_b=0.5, resamples=300)
    assert 0 < better.auc_difference_low < better.auc_difference < better.auc_difference_high
    assert better.balanced_accuracy_difference_low > 0 and better.delong_p < 1e-6
    # the point values are the metrics' own
    single = evaluate_scores(labels, strong, patients, threshold=0.5, resamples=0)
    assert better.auc_b == pytest.approx(single.metrics["roc_auc"].value)
    assert better.balanced_accuracy_b == pytest.approx(single.metrics["balanced_accuracy"].value)
    row = {**better.as_row(), "model_a": "scratch", "model_b": "pre-trained", "test_set": "AB"}
    assert comparison_line(row, "pre-training helps").startswith("pre-training helps on AB: AUC +")
    assert "DeLong p=" in comparison_line(row)
    flat = {**same.as_row(), "model_a": "a", "model_b": "b", "test_set": "AB"}
    assert comparison_line(flat, "pre-training helps").startswith("pre-training helps: not shown on AB")
    worse = {**compare_scores(labels, strong, weak, patients, resamples=300).as_row(), "model_a": "a",
             "model_b": "b", "test_set": "AB"}
    assert comparison_line(worse, "pre-training helps").startswith("pre-training hurts on AB")
    # any claim is checked, not only one ending in "helps"
    assert comparison_line(flat, "RSNA negatives improve it").startswith("RSNA negatives improve it: not shown on AB")
    assert comparison_line(worse, "RSNA negatives improve it").startswith("RSNA negatives improve it: contradicted")
    assert comparison_line(row, "RSNA negatives improve it").startswith("RSNA negatives improve it on AB: AUC +")


def test_a_test_set_that_cannot_be_compared_is_a_row_with_its_reason() -> None:
    """With keep_going, one unusable test set (all shared images COVID+) does not stop the others."""
    predictions = _predictions()
    one_class = predictions[predictions["label"] == 1].assign(test_set="AC")
    both = pd.concat([predictions, one_class], ignore_index=True)
    with pytest.raises(ComparisonError, match="test set AC: the .* image\\(s\\) both models scored hold"):
        compare_predictions(both, "scratch", "pretrained", resamples=50)
    rows = compare_predictions(both, "scratch", "pretrained", resamples=50, keep_going=True)
    assert list(rows["test_set"]) == ["AB", "AC"]
    assert pd.isna(rows["not_compared"].iloc[0]) and "0 COVID-" in rows["not_compared"].iloc[1]
    assert comparison_line(rows.iloc[1]).startswith("pretrained vs scratch on AC: not compared: test set AC:")
    assert "DeLong p=" in comparison_line(rows.iloc[0])


def _predictions(n: int = 120, seed: int = 0) -> pd.DataFrame:
    """Two models' predictions on one test set, with the records' sex, age, view and (mostly unknown) site."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    base = pd.DataFrame({"test_set": "AB", "record_id": [f"r{i}" for i in range(n)], "source": "hospital-csv",
                         "patient_id": [f"p{i // 2}" for i in range(n)], "label": labels, "threshold": 0.5,
                         "threshold_rule": "fixed", "sex": np.where(np.arange(n) % 2, "F", "M"),
                         "age": np.where(np.arange(n) % 10 == 0, np.nan, 20 + (np.arange(n) * 7) % 70),
                         "view": "PA", "location": [("site-1" if i < 4 else None) for i in range(n)]})
    first = base.assign(model="scratch", probability=np.clip(labels * 0.2 + rng.random(n) * 0.8, 0, 1))
    second = base.assign(model="pretrained", probability=np.clip(labels * 0.5 + rng.random(n) * 0.5, 0, 1))
    return pd.concat([first, second], ignore_index=True)


def test_compare_predictions_pairs_images_by_record():
    predictions = _predictions()
    table = compare_predictions(predictions, "scratch", "pretrained", resamples=200)
    assert list(table["test_set"]) == ["AB"] and table.iloc[0]["unpaired_images"] == 0
    assert table.iloc[0]["auc_difference"] > 0 and table.iloc[0]["patients"] == 60
    shuffled = predictions.sample(frac=1, random_state=0)  # order does not matter: images are joined by record
    again = compare_predictions(shuffled, "scratch", "pretrained", resamples=200)
    assert again.iloc[0]["auc_difference"] == pytest.approx(table.iloc[0]["auc_difference"])
    with pytest.raises(ComparisonError, match="no predictions of model 'other'"):
        compare_predictions(predictions, "scratch", "other")
    relabelled = predictions.copy()
    relabelled.loc[relabelled["model"] == "pretrained", "test_set"] = "AC"
    with pytest.raises(ComparisonError, match="share no test set"):
        compare_predictions(relabelled, "scratch", "pretrained")
    wrong = predictions.copy()
    wrong.loc[wrong.index[-1], "label"] = 1 - wrong.loc[wrong.index[-1], "label"]
    with pytest.raises(ComparisonError, match="disagree on the labels"):
        compare_predictions(wrong, "scratch", "pretrained")


def test_all_pairs_leave_out_only_the_test_sets_they_cannot_compare():
    predictions = _predictions()
    positives = predictions[predictions["label"] == 1].assign(test_set="COVID+ only")  # no AUC, no DeLong
    table = all_pairs(pd.concat([positives, predictions], ignore_index=True), resamples=50)
    assert list(table["test_set"]) == ["AB"] and list(table["model_b"]) == ["pretrained"]
    assert all_pairs(predictions[predictions["model"] == "scratch"]).empty  # one model: nothing to compare


def test_age_groups_state_their_bins():
    ages = pd.Series([0, 17.9, 18, 39.5, 40, 59, 60, 79.9, 80, 101, None])
    assert list(age_group(ages)) == ["<18", "<18", "18-39", "18-39", "40-59", "40-59", "60-79", "60-79", "80+",
                                     "80+", "unknown"]


def test_subgroup_metrics_with_intervals_and_too_small_groups():
    predictions = _predictions()
    one = predictions[predictions["model"] == "pretrained"]
    table = subgroup_metrics(one, threshold=0.5, resamples=200)
    assert set(table["attribute"]) == {"sex", "age group", "view", "site"}
    women = table[(table["attribute"] == "sex") & (table["subgroup"] == "F")].iloc[0]
    part = one[one["sex"] == "F"]
    predicted = part["probability"] >= 0.5
    found = (predicted & (part["label"] == 1)).groupby(part["patient_id"]).sum()
    positives = (part["label"] == 1).groupby(part["patient_id"]).sum()
    wilson = patient_wilson_interval(found, positives)
    assert women["sensitivity"] == pytest.approx(found.sum() / positives.sum())
    assert (women["sensitivity_low"], women["sensitivity_high"]) == pytest.approx((wilson.low, wilson.high))
    assert women["roc_auc_low"] <= women["roc_auc"] <= women["roc_auc_high"]
    assert women["images"] == len(part) and women["patients"] == part["patient_id"].nunique()
    # site-1 has 4 images of 2 patients: every metric n/a, with the reason
    site = table[(table["attribute"] == "site") & (table["subgroup"] == "site-1")].iloc[0]
    assert math.isnan(site["sensitivity"]) and math.isnan(site["roc_auc"]) and math.isnan(site["specificity_low"])
    assert f"fewer than {MIN_PATIENTS}" in site["note"] or "no COVID" in site["note"]
    assert set(table.loc[table["attribute"] == "site", "subgroup"]) == {"site-1", "unknown"}
    ages = list(table.loc[table["attribute"] == "age group", "subgroup"])
    assert ages == [g for g in ["<18", "18-39", "40-59", "60-79", "80+"] if g in ages] + ["unknown"]
    every = prediction_subgroups(predictions, resamples=50)
    assert set(every["model"]) == {"scratch", "pretrained"} and list(every.columns[:2]) == ["model", "test_set"]
    assert prediction_subgroups(predictions.drop(columns=["sex", "age", "view", "location"])).empty


def test_figures_and_tables_per_model_and_test_set(tmp_path):
    predictions = _predictions()
    rows = pd.DataFrame([{"model": m, "test_set": "AB", "images": 120, "resamples": 50, "seed": 0,
                          **calibration(g["label"], g["probability"], g["patient_id"], resamples=50).as_row()}
                         for m, g in predictions.groupby("model")])
    written = plot_clinical_figures(predictions, tmp_path, formats=("png",), calibration_rows=rows)
    assert sorted(p.name for p in written["reliability"]) == [f"{figure_stem('reliability', m, 'AB')}.png"
                                                              for m in ("pretrained", "scratch")]
    assert len(written["confusion"]) == 2 and all(p.stat().st_size > 1000 for p in written["confusion"])
    tables = write_clinical_tables(rows, predictions, tmp_path, resamples=50)
    assert set(tables) == {"calibration.md", "subgroups.csv", "subgroups.md", "comparisons.csv", "comparisons.md"}
    assert "10 equal-width bins" in (tmp_path / "calibration.md").read_text()
    comparisons = pd.read_csv(tmp_path / "comparisons.csv")
    assert list(comparisons[["model_a", "model_b"]].iloc[0]) == ["scratch", "pretrained"]
    assert "pretrained vs scratch on AB: AUC +" in (tmp_path / "comparisons.md").read_text()
    assert "n/a" in (tmp_path / "subgroups.md").read_text()
