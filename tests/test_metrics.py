"""Metrics, DOR conventions, Wilson and patient-bootstrap intervals, threshold rules, input validation."""

from __future__ import annotations

import itertools
import math
import re
import warnings

import numpy as np
import pytest
from scipy.stats import binomtest
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, recall_score, roc_auc_score

from unveil.errors import UnveilError
from unveil.evaluation.bootstrap import percentile_interval
from unveil.evaluation.metrics import (
    METRICS,
    PROPORTIONS,
    Confusion,
    MetricOptionError,
    ThresholdChoice,
    ThresholdRule,
    _percentiles_with_inf,
    _WeightedAUC,
    choose_threshold,
    dor_from_rates,
    dor_haldane,
    dor_range_from_rounded,
    evaluate_scores,
    fixed_threshold,
    metrics_at_paper_threshold,
    point_metrics,
    wilson_interval,
)
from unveil.thresholds import ThresholdError


def cohort(n_patients: int, seed: int, images_per_patient: int = 1, separation: float = 0.25):
    """Labels, scores and patient ids: one label per patient, noisy scores around 0.5 -/+ separation."""
    rng = np.random.default_rng(seed)
    patient_labels = rng.integers(0, 2, n_patients)
    patients = np.repeat(np.arange(n_patients), images_per_patient)
    labels = patient_labels[patients]
    scores = np.clip(rng.normal(0.5 + separation * (2 * labels - 1), 0.2), 0, 1)
    return labels, scores, patients


def width(evaluation, metric: str) -> float:
    return evaluation.metrics[metric].high - evaluation.metrics[metric].low


# --- point metrics -------------------------------------------------------------------------------------------------


def test_point_metrics_by_hand():
    values = point_metrics(Confusion(tp=8, fp=2, tn=18, fn=2))
    assert values == pytest.approx({"sensitivity": 0.8, "specificity": 0.9, "accuracy": 26 / 30, "f1": 16 / 20,
                                    "balanced_accuracy": 0.85, "dor": 36.0})
    values = point_metrics(Confusion(tp=5, fp=10, tn=30, fn=15))
    assert values == pytest.approx({"sensitivity": 0.25, "specificity": 0.75, "accuracy": 35 / 60, "f1": 10 / 35,
                                    "balanced_accuracy": 0.5, "dor": 1.0})
    assert set(values) == set(METRICS) - {"roc_auc"}


def test_confusion_from_scores_counts_the_threshold_as_positive():
    confusion = Confusion.from_scores([1, 1, 0, 0, 1], [0.5, 0.49, 0.5, 0.1, 0.9], 0.5)
    assert confusion == Confusion(tp=2, fp=1, tn=1, fn=1)
    assert (confusion.positives, confusion.negatives, confusion.total) == (3, 2, 5)


@pytest.mark.parametrize("seed", range(5))
def test_metrics_match_scikit_learn(seed):
    labels, scores, patients = cohort(60, seed, images_per_patient=2, separation=0.1)
    predicted = (scores >= 0.5).astype(int)
    evaluation = evaluate_scores(labels, scores, patients, resamples=0)
    values = {name: metric.value for name, metric in evaluation.metrics.items()}
    assert values["sensitivity"] == pytest.approx(recall_score(labels, predicted))
    assert values["specificity"] == pytest.approx(recall_score(labels, predicted, pos_label=0))
    assert values["f1"] == pytest.approx(f1_score(labels, predicted))
    assert values["accuracy"] == pytest.approx(accuracy_score(labels, predicted))
    assert values["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(labels, predicted))
    assert values["roc_auc"] == pytest.approx(roc_auc_score(labels, scores))
    assert point_metrics(Confusion.from_scores(labels, scores, 0.5)) == pytest.approx(
        {k: v for k, v in values.items() if k in METRICS and k != "roc_auc"})


def test_weighted_auc_matches_scikit_learn_with_ties_and_zero_weights():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 300)
    scores = np.round(np.clip(rng.normal(0.4 + 0.2 * labels, 0.2), 0, 1), 1)  # many ties
    weights = rng.integers(0, 4, size=(20, 300)).astype(float)
    fast = _WeightedAUC(labels, scores)(weights)
    expected = [roc_auc_score(labels, scores, sample_weight=w) for w in weights]
    np.testing.assert_allclose(fast, expected, rtol=1e-12)
    one_class = np.where(labels == 1, 0.0, 1.0)  # weighs negatives only
    assert np.isnan(_WeightedAUC(labels, scores)(one_class[None, :])[0])


# --- diagnostic odds ratio -----------------------------------------------------------------------------------------


def test_dor_conventions_and_haldane():
    assert point_metrics(Confusion(tp=8, fp=0, tn=18, fn=2))["dor"] == math.inf
    assert point_metrics(Confusion(tp=8, fp=0, tn=18, fn=0))["dor"] == math.inf
    assert point_metrics(Confusion(tp=0, fp=2, tn=18, fn=2))["dor"] == 0.0
    assert math.isnan(point_metrics(Confusion(tp=0, fp=0, tn=18, fn=2))["dor"])
    assert dor_haldane(Confusion(tp=8, fp=2, tn=18, fn=2)) == pytest.approx((8.5 * 18.5) / (2.5 * 2.5))
    assert dor_haldane(Confusion(tp=8, fp=0, tn=18, fn=0)) == pytest.approx((8.5 * 18.5) / (0.5 * 0.5))


def test_dor_never_raises_or_warns():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for cells in itertools.product(range(3), repeat=4):
            confusion = Confusion(*cells)
            point_metrics(confusion)
            corrected = dor_haldane(confusion)
            if confusion.positives and confusion.negatives:
                assert math.isfinite(corrected) and corrected > 0
            else:  # one class: no odds ratio, corrected or not
                assert math.isnan(corrected)
        for se, sp in itertools.product((0.0, 0.5, 1.0), repeat=2):
            dor_from_rates(se, sp)


def test_dor_from_rates():
    assert dor_from_rates(0.8, 0.9) == pytest.approx(36.0)
    assert dor_from_rates(1.0, 0.9) == math.inf
    assert dor_from_rates(0.0, 0.9) == 0.0
    assert math.isnan(dor_from_rates(1.0, 0.0))
    with pytest.raises(ValueError, match="sensitivity"):
        dor_from_rates(1.2, 0.9)


def test_paper_table_a2_dor_is_consistent_with_rounded_rates():
    # Table A2 prints se 0.88, sp 0.94 and DOR 122.67: not the DOR of the printed rates, but within the
    # range their rounding allows (the paper computed it from unrounded rates).
    assert dor_from_rates(0.88, 0.94) != pytest.approx(122.67, abs=0.01)
    low, high = dor_range_from_rounded(0.88, 0.94)
    assert low < dor_from_rates(0.88, 0.94) < high
    assert low <= 122.67 <= high
    assert not low <= 300 <= high
    assert (low, high) == pytest.approx((dor_from_rates(0.875, 0.935), dor_from_rates(0.885, 0.945)))
    assert dor_range_from_rounded(1.0, 0.9)[1] == math.inf


# --- intervals ----------------------------------------------------------------------------------------------------


def test_wilson_interval():
    assert wilson_interval(8, 10) == pytest.approx((0.490, 0.943), abs=5e-4)
    low, high = wilson_interval(0, 20)
    assert low == pytest.approx(0.0, abs=1e-12) and 0 < high < 0.2
    assert all(math.isnan(v) for v in wilson_interval(0, 0))
    with pytest.raises(ValueError):
        wilson_interval(11, 10)


def test_percentiles_with_infinity():
    values = np.random.default_rng(0).exponential(size=101)
    assert _percentiles_with_inf(values, (2.5, 97.5)) == pytest.approx(np.percentile(values, (2.5, 97.5)))
    with_inf = np.concatenate([values[:90], np.full(11, np.inf)])
    low, high = _percentiles_with_inf(with_inf, (2.5, 97.5))
    assert low == pytest.approx(np.percentile(np.where(np.isinf(with_inf), 1e300, with_inf), 2.5))
    assert math.isfinite(low) and high == math.inf
    assert _percentiles_with_inf(np.full(5, np.inf), (2.5, 97.5)) == [math.inf, math.inf]


def test_bootstrap_intervals_contain_the_point_estimate():
    labels, scores, patients = cohort(200, 0, images_per_patient=2)
    evaluation = evaluate_scores(labels, scores, patients, resamples=500, seed=1)
    assert set(evaluation.metrics) == {*METRICS, "dor_corrected"}
    for name, metric in evaluation.metrics.items():
        assert metric.low <= metric.value <= metric.high, name
        assert metric.note is None, name
        if name in PROPORTIONS:
            assert metric.wilson_low <= metric.value <= metric.wilson_high
        else:
            assert metric.wilson_low is None and metric.wilson_high is None
    assert evaluation.bootstrap == {"resamples": 500, "unit": "patient", "confidence": 0.95, "seed": 1,
                                    "method": "percentile"}


def test_bootstrap_intervals_shrink_with_more_patients():
    small = evaluate_scores(*cohort(40, 1, separation=0.1), resamples=1000)
    large = evaluate_scores(*cohort(400, 1, separation=0.1), resamples=1000)
    for name in ("sensitivity", "specificity", "balanced_accuracy", "roc_auc", "f1"):
        assert width(large, name) / width(small, name) < 0.6, name


def test_bootstrap_resamples_patients_not_images():
    labels, scores, patients = cohort(100, 2)
    base = evaluate_scores(labels, scores, patients, resamples=1000)
    # Every image five times, same patients: no new information, so the interval keeps its width.
    repeated = evaluate_scores(np.repeat(labels, 5), np.repeat(scores, 5), np.repeat(patients, 5), resamples=1000)
    # The same copies taken as independent patients: the (wrong) interval narrows by about sqrt(5).
    independent = evaluate_scores(np.repeat(labels, 5), np.repeat(scores, 5), np.arange(500), resamples=1000)
    for name in ("sensitivity", "balanced_accuracy", "roc_auc", "accuracy"):
        assert width(repeated, name) / width(base, name) == pytest.approx(1.0, abs=0.15), name
        assert width(independent, name) / width(base, name) < 0.7, name
    assert (repeated.images, repeated.patients, independent.patients) == (500, 100, 500)


def test_bootstrap_is_deterministic_for_a_seed():
    labels, scores, patients = cohort(80, 4, images_per_patient=3)
    first = evaluate_scores(labels, scores, patients.astype(str), resamples=300, seed=7).as_row()
    again = evaluate_scores(labels, scores, patients.astype(str), resamples=300, seed=7).as_row()
    other = evaluate_scores(labels, scores, patients.astype(str), resamples=300, seed=8).as_row()
    np.testing.assert_equal(first, again)
    assert first["roc_auc_low"] != other["roc_auc_low"]


def test_single_class_test_set_gives_nan_with_notes():
    scores = np.array([0.1, 0.7, 0.2, 0.3, 0.6, 0.4])
    evaluation = evaluate_scores(np.zeros(6, dtype=int), scores, [1, 1, 2, 3, 4, 5], resamples=200)
    metrics = evaluation.metrics
    for name in ("roc_auc", "sensitivity", "balanced_accuracy"):
        assert math.isnan(metrics[name].value) and math.isnan(metrics[name].low), name
        assert "undefined: no COVID+ images" in metrics[name].note, name
    assert metrics["specificity"].value == pytest.approx(4 / 6)
    assert metrics["specificity"].note is None
    assert math.isnan(metrics["dor"].value) and "undefined" in metrics["dor"].note
    assert (evaluation.positive_images, evaluation.negative_images) == (0, 6)
    assert (evaluation.positive_patients, evaluation.negative_patients) == (0, 5)


def test_rare_class_interval_note_counts_resamples():
    labels = np.array([1, 1] + [0] * 18)
    scores = np.where(labels == 1, 0.8, 0.3)
    scores[5] = 0.6
    evaluation = evaluate_scores(labels, scores, np.arange(20), resamples=1000)
    note = evaluation.metrics["sensitivity"].note
    match = re.fullmatch(r"interval from (\d+) of 1000 resamples \(the others held no COVID\+ images\)", note)
    assert match and 800 < int(match.group(1)) < 950  # P(no positive drawn) = 0.9**20 = 0.12
    assert "held one class only" in evaluation.metrics["roc_auc"].note
    assert evaluation.metrics["specificity"].note is None


def test_dor_notes_in_evaluation():
    labels = np.array([1, 1, 1, 1, 0, 0, 0, 0])
    patients = np.arange(8)
    no_false_positives = evaluate_scores(labels, [0.9, 0.8, 0.7, 0.2, 0.1, 0.2, 0.3, 0.4], patients, resamples=300)
    dor = no_false_positives.metrics["dor"]
    assert dor.value == math.inf and dor.high == math.inf
    assert dor.note.startswith("infinite: no false positives (cell zero); Haldane-Anscombe corrected estimate "
                               "given as dor_corrected")
    assert "upper bound infinite" in dor.note
    corrected = no_false_positives.metrics["dor_corrected"]
    assert corrected.value == pytest.approx(3.5 * 4.5 / (0.5 * 1.5))
    assert all(math.isfinite(v) for v in (corrected.low, corrected.high))
    # A resample with one class has no (corrected) DOR: it is left out, and the note says so.
    assert re.fullmatch(r"interval from \d+ of 300 resamples \(the others held one class only\)", corrected.note)

    perfect = evaluate_scores(labels, [0.9, 0.8, 0.7, 0.6, 0.1, 0.2, 0.3, 0.4], patients, resamples=50)
    assert "no false positives and no false negatives" in perfect.metrics["dor"].note

    no_true_positives = evaluate_scores(labels, [0.1, 0.2, 0.3, 0.4, 0.9, 0.2, 0.3, 0.4], patients, resamples=50)
    assert no_true_positives.metrics["dor"].value == 0.0
    assert no_true_positives.metrics["dor"].note.startswith("zero: no true positives (cell zero)")

    nothing_positive = evaluate_scores(labels, [0.1, 0.2, 0.3, 0.4, 0.1, 0.2, 0.3, 0.4], patients, resamples=50)
    assert math.isnan(nothing_positive.metrics["dor"].value)
    assert nothing_positive.metrics["dor"].note.startswith("undefined: tp*tn and fp*fn are both zero")
    assert nothing_positive.metrics["f1"].value == 0.0  # COVID+ images exist, none found

    nothing_at_all = evaluate_scores([0, 0], [0.1, 0.2], [1, 2], resamples=50)
    assert math.isnan(nothing_at_all.metrics["f1"].value)
    assert nothing_at_all.metrics["f1"].note == "undefined: no COVID+ images"


def _wilson(successes: int, n: int) -> tuple[float, float]:
    interval = binomtest(successes, n).proportion_ci(confidence_level=0.95, method="wilson")
    return float(interval.low), float(interval.high)


def test_proportion_intervals_are_patient_aware_wilson_intervals():
    # 12 COVID+ images, none found. One image per patient: the plain Wilson interval, [0, 0.2425], where the
    # percentile bootstrap collapses to [0, 0].
    labels, missed = np.ones(12, dtype=int), np.full(12, 0.2)
    alone = evaluate_scores(labels, missed, np.arange(12), resamples=200).as_row()
    assert (alone["sensitivity_low"], alone["sensitivity_high"]) == (0.0, 0.0)
    assert (alone["sensitivity_wilson_low"], alone["sensitivity_wilson_high"]) == _wilson(0, 12)
    assert alone["sensitivity_wilson_high"] == pytest.approx(0.2425, abs=1e-4)
    # The same 12 images from 3 patients of 4: 0 of 12 images is 0 of 3 patients, [0, 0.5615].
    grouped = evaluate_scores(labels, missed, np.repeat(np.arange(3), 4), resamples=200).as_row()
    assert grouped["sensitivity_wilson_high"] == pytest.approx(_wilson(0, 3)[1], abs=1e-12)
    assert grouped["accuracy_wilson_high"] == pytest.approx(_wilson(0, 3)[1], abs=1e-12)
    assert (alone["sensitivity_design_effect"], grouped["sensitivity_design_effect"]) == (1.0, 4.0)


def test_clustering_widens_the_proportion_interval_and_independence_gives_plain_wilson():
    # 4 COVID+ patients x 3 images, the first two found on every image; 6 COVID- patients of one image each.
    labels = np.r_[np.ones(12, dtype=int), np.zeros(6, dtype=int)]
    scores = np.r_[np.full(6, 0.9), np.full(6, 0.1), [0.1, 0.1, 0.1, 0.1, 0.9, 0.9]]
    clustered = evaluate_scores(labels, scores, np.r_[np.repeat(np.arange(4), 3), np.arange(4, 10)], resamples=100)
    independent = evaluate_scores(labels, scores, np.arange(18), resamples=100)
    sensitivity, plain = clustered.metrics["sensitivity"], independent.metrics["sensitivity"]
    assert (plain.wilson_low, plain.wilson_high) == _wilson(6, 12)
    # n = 12, x = 6, a = (3, 3, 0, 0), m = 3: sum (12 a_i - 6 * 3)^2 / (12 * 6 * 6) = 4 * 18^2 / 432 = 3, so
    # n_eff = 4 and the interval is Wilson's for 2 of 4.
    assert (sensitivity.wilson_low, sensitivity.wilson_high) == pytest.approx(_wilson(2, 4), abs=1e-12)
    assert sensitivity.wilson_low < plain.wilson_low and sensitivity.wilson_high > plain.wilson_high
    # Specificity: one image per COVID- patient in both, so the same plain Wilson interval.
    assert (clustered.metrics["specificity"].wilson_low, clustered.metrics["specificity"].wilson_high) == \
        _wilson(4, 6)
    assert (sensitivity.design_effect, clustered.metrics["specificity"].design_effect) == (3.0, 1.0)


def test_metrics_needing_both_classes_are_nan_with_a_note_when_one_is_missing():
    # COVID+ only: sensitivity and F1 exist; specificity, BA, AUC, the DOR and its corrected form do not (the
    # Haldane-Anscombe correction alone gave (tp + 0.5) / (fn + 0.5) = 3.4 here).
    positives = evaluate_scores(np.ones(10, dtype=int), np.r_[np.full(8, 0.9), np.full(2, 0.1)], np.arange(10),
                                resamples=200).metrics
    assert positives["sensitivity"].value == 0.8 and positives["f1"].value == pytest.approx(16 / 18)
    for name in ("dor_corrected", "dor", "specificity", "balanced_accuracy", "roc_auc"):
        metric = positives[name]
        assert math.isnan(metric.value) and math.isnan(metric.low) and math.isnan(metric.high), name
        assert metric.note.startswith("undefined: no COVID- images"), (name, metric.note)
    assert positives["dor_corrected"].note == "undefined: no COVID- images (it needs COVID+ and COVID- images)"
    # COVID- only, with a false positive: specificity exists; F1 is not 0 but undefined.
    negatives = evaluate_scores(np.zeros(6, dtype=int), [0.9, 0.1, 0.1, 0.1, 0.1, 0.1], np.arange(6),
                                resamples=200).metrics
    assert negatives["specificity"].value == pytest.approx(5 / 6)
    for name in ("sensitivity", "f1", "balanced_accuracy", "roc_auc", "dor", "dor_corrected"):
        assert math.isnan(negatives[name].value), name
        assert negatives[name].note.startswith("undefined: no COVID+ images"), (name, negatives[name].note)
    assert math.isnan(metrics_at_paper_threshold(np.zeros(6, dtype=int), [0.9, 0.1, 0.1, 0.1, 0.1, 0.1])["f1_at_0.5"])


def test_as_row_is_flat():
    evaluation = evaluate_scores(*cohort(30, 5), resamples=50, threshold=0.4)
    row = evaluation.as_row()
    assert row["threshold"] == 0.4 and row["threshold_rule"] == "fixed" and row["threshold_description"] == "fixed 0.4"
    assert row["tp"] + row["fp"] + row["tn"] + row["fn"] == row["images"] == 30
    for name in (*METRICS, "dor_corrected"):
        assert {name, f"{name}_low", f"{name}_high", f"{name}_note"} <= set(row)
        assert (f"{name}_wilson_low" in row) == (name in PROPORTIONS)
    assert all(not isinstance(v, (dict, list)) for v in row.values())


def test_a_threshold_choice_carries_its_rule_into_the_row():
    labels, scores, patients = cohort(40, 6)
    choice = choose_threshold(labels, scores, ThresholdRule.YOUDEN)
    row = evaluate_scores(labels, scores, patients, threshold=choice, resamples=20).as_row()
    assert row["threshold"] == choice.value and row["threshold_rule"] == "youden"
    assert row["threshold_description"] == choice.description


def test_metrics_at_the_papers_threshold():
    # Focal-loss-like outputs: all near 0.5, well ranked. At 0.5 every image is COVID-; at Youden's point all right.
    labels = [0, 0, 0, 1, 1, 1]
    scores = [0.40, 0.42, 0.44, 0.46, 0.47, 0.49]
    at_half = metrics_at_paper_threshold(labels, scores)
    assert at_half["balanced_accuracy_at_0.5"] == 0.5 and at_half["sensitivity_at_0.5"] == 0.0
    assert set(at_half) == {f"{m}_at_0.5" for m in ("sensitivity", "specificity", "f1", "accuracy",
                                                    "balanced_accuracy")}
    choice = choose_threshold(labels, scores, "youden")
    assert choice.value == 0.46
    assert evaluate_scores(labels, scores, range(6), threshold=choice, resamples=0).metrics[
        "balanced_accuracy"].value == 1.0


# --- threshold rules ----------------------------------------------------------------------------------------------


def test_threshold_rules_are_one_vocabulary():
    assert [r.value for r in ThresholdRule] == ["fixed", "youden", "sensitivity", "bundle"]
    assert ThresholdRule.parse(" Youden ") is ThresholdRule.YOUDEN and str(ThresholdRule.FIXED) == "fixed"
    with pytest.raises(ThresholdError, match="choose one of fixed, youden, sensitivity$"):
        ThresholdRule.parse("bundle", allow_bundle=False)
    with pytest.raises(ThresholdError, match="unknown threshold rule 'fixed 0.5'"):
        ThresholdRule.parse("fixed 0.5")
    with pytest.raises(ThresholdError, match="bundle"):
        choose_threshold([0, 1], [0.2, 0.8], "bundle")
    assert issubclass(ThresholdError, UnveilError) and issubclass(ThresholdError, ValueError)


def test_threshold_descriptions_are_derived_from_the_rule():
    assert ThresholdRule.FIXED.describe(0.5) == "fixed 0.5" == fixed_threshold().description
    for rule, target in ((ThresholdRule.YOUDEN, 0.9), (ThresholdRule.SENSITIVITY, 0.75)):
        chosen = choose_threshold([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8], rule, target_sensitivity=target)
        assert chosen.description.startswith(rule.value) and chosen.rule is rule
    assert evaluate_scores([0, 1], [0.2, 0.8], [1, 2], threshold=0.3, resamples=0).threshold_description == \
        ThresholdRule.FIXED.describe(0.3)


def test_interval_undefined_everywhere_is_a_flag_not_a_message():
    everywhere = percentile_interval(np.full(4, np.nan), 0.025, 4)
    assert everywhere.undefined_in_every_resample and (everywhere.defined_in, everywhere.resamples) == (0, 4)
    assert not percentile_interval(np.empty(0), 0.025, 0).undefined_in_every_resample  # no resamples at all
    partial = percentile_interval(np.array([0.5, np.nan, 0.7]), 0.025, 3, undefined_reason="held one class")
    assert not partial.undefined_in_every_resample and partial.defined_in == 2
    assert partial.note == "interval from 2 of 3 resamples (the others held one class)"
    # No COVID+ image: sensitivity is undefined at the point and in every resample; one note says why.
    note = evaluate_scores([0, 0, 0], [0.2, 0.6, 0.8], [1, 2, 3], resamples=20).metrics["sensitivity"].note
    assert note == "undefined: no COVID+ images"


def test_threshold_choice_round_trips_and_reads_old_bundles():
    choice = choose_threshold([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8], "sensitivity", target_sensitivity=1.0)
    assert ThresholdChoice.from_dict(choice.as_dict()) == choice
    assert choice.as_dict()["rule"] == "sensitivity" and choice.parameter == 1.0 and choice.chosen_on == "validation"
    old = ThresholdChoice.from_dict({"value": 0.5, "rule": "fixed 0.5"})  # bundle.json before typed rules
    assert old.rule is ThresholdRule.FIXED and old.value == 0.5 and old.description == "fixed 0.5"
    old = ThresholdChoice.from_dict({"value": 0.42, "rule": "youden on validation (J=0.300)"})
    assert old.rule is ThresholdRule.YOUDEN and old.chosen_on == "validation"


def test_fixed_threshold():
    assert choose_threshold([0, 1], [0.2, 0.8]) == fixed_threshold(0.5)
    chosen = choose_threshold([0, 0], [0.2, 0.8], "fixed", value=0.35)
    assert (chosen.value, chosen.rule, chosen.description) == (0.35, ThresholdRule.FIXED, "fixed 0.35")
    with pytest.raises(ThresholdError, match=r"\[0, 1\]"):
        fixed_threshold(1.5)


def test_youden_threshold():
    labels = [0, 0, 0, 1, 1, 1]
    chosen = choose_threshold(labels, [0.1, 0.2, 0.3, 0.6, 0.7, 1.0], "youden")
    assert chosen.value == 0.6 and chosen.rule is ThresholdRule.YOUDEN
    assert chosen.description == "youden on validation (J=1.000, sensitivity 1.00, specificity 1.00)"
    assert Confusion.from_scores(labels, [0.1, 0.2, 0.3, 0.6, 0.7, 1.0], chosen.value) == Confusion(3, 0, 3, 0)
    # Agrees with a brute-force search over the distinct scores.
    labels, scores, _ = cohort(200, 8, separation=0.1)
    chosen = choose_threshold(labels, scores, "youden")
    youden = {t: (lambda c: c.tp / c.positives + c.tn / c.negatives - 1)(Confusion.from_scores(labels, scores, t))
              for t in np.unique(scores)}
    assert youden[chosen.value] == pytest.approx(max(youden.values()))
    assert chosen.description.startswith(f"youden on validation (J={max(youden.values()):.3f}, ")
    # A useless (reversed) classifier still gets a finite threshold in [0, 1].
    chosen = choose_threshold([1, 1, 0, 0], [0.0, 0.1, 0.9, 1.0], "youden")
    assert 0 <= chosen.value <= 1


def test_sensitivity_threshold_is_the_highest_reaching_the_target():
    labels, scores, _ = cohort(300, 9, separation=0.1)
    chosen = choose_threshold(labels, scores, "sensitivity", target_sensitivity=0.9)
    threshold, rule = chosen.value, chosen.description
    achieved = Confusion.from_scores(labels, scores, threshold)
    assert achieved.tp / achieved.positives >= 0.9
    higher = np.unique(scores[scores > threshold])
    assert all((c := Confusion.from_scores(labels, scores, t)).tp / c.positives < 0.9 for t in higher)
    assert rule.startswith("sensitivity >= 0.90 on validation (achieved ")
    assert f"specificity {achieved.tn / achieved.negatives:.2f})" in rule
    # Exactly 9 of 10 positives reaches a 0.9 target despite floating point (9/10 < 0.9 in binary).
    labels = [1] * 10 + [0] * 5
    scores = [0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.55, 0.5, 0.05, 0.1, 0.2, 0.3, 0.4, 0.45]
    assert choose_threshold(labels, scores, "sensitivity", target_sensitivity=0.9).value == 0.5


def test_threshold_rule_errors():
    with pytest.raises(ValueError, match="unknown threshold rule 'otsu'"):
        choose_threshold([0, 1], [0.1, 0.9], "otsu")
    for rule in ("youden", "sensitivity"):
        with pytest.raises(ValueError, match="both classes"):
            choose_threshold([1, 1, 1], [0.1, 0.5, 0.9], rule)
    with pytest.raises(ValueError, match="target sensitivity"):
        choose_threshold([0, 1], [0.1, 0.9], "sensitivity", target_sensitivity=0.0)


# --- input validation ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("labels", "scores", "patients", "message"), [
    ([0, 2, 1, -1], [0.1, 0.2, 0.3, 0.4], [1, 2, 3, 4], r"labels must be 0 or 1; got -1, 2"),
    (["a", 1, 0, 1], [0.1, 0.2, 0.3, 0.4], [1, 2, 3, 4], r"labels must be 0 or 1; got 'a'"),
    ([0, 1, 0], [0.1, 0.2, 0.3, 0.4], [1, 2, 3, 4], "differ in length"),
    ([0, 1, 0, 1], [0.1, 0.2, 0.3, 0.4], [1, 2, 3], "one id per image"),
    ([0, 1, 0, 1], [0.1, np.nan, 0.3, 0.4], [1, 2, 3, 4], r"scores must be finite and in \[0, 1\]"),
    ([0, 1, 0, 1], [0.1, 1.5, 0.3, 0.4], [1, 2, 3, 4], r"scores must be finite and in \[0, 1\]; got \[1.5\]"),
    ([], [], [], "no images"),
    ([0, 1, 0, 1], [0.1, 0.2, 0.3, 0.4], ["a", None, "b", "c"], "missing patient id"),
])
def test_input_validation(labels, scores, patients, message):
    with pytest.raises(ValueError, match=message):
        evaluate_scores(labels, scores, patients, resamples=10)


def test_bad_options():
    labels, scores, patients = [0, 1], [0.2, 0.8], [1, 2]
    with pytest.raises(MetricOptionError, match="confidence must lie in \\(0, 1\\); got 95"):
        evaluate_scores(labels, scores, patients, confidence=95)
    with pytest.raises(MetricOptionError, match="resamples must be a non-negative integer; got -1"):
        evaluate_scores(labels, scores, patients, resamples=-1)
    assert issubclass(MetricOptionError, UnveilError)
    with pytest.raises(ValueError, match="threshold"):
        evaluate_scores(labels, scores, patients, threshold=math.nan)
    assert evaluate_scores([True, False], scores, patients, resamples=0).metrics["roc_auc"].note == \
        "no interval: no bootstrap resamples"
