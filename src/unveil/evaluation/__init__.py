"""Evaluation: the paper's seven metrics with confidence intervals, every model on every test set, tables."""

from unveil.evaluation.evaluate import EvaluationError, EvaluationRun, TestSet, build_test_set, evaluate_models
from unveil.evaluation.metrics import (
    METRICS,
    Confusion,
    Evaluation,
    ThresholdChoice,
    ThresholdRule,
    choose_threshold,
    evaluate_scores,
)
from unveil.evaluation.tables import plot_roc_curves, pool_seeds, write_tables

__all__ = ["METRICS", "Confusion", "Evaluation", "EvaluationError", "EvaluationRun", "TestSet", "ThresholdChoice",
           "ThresholdRule", "build_test_set", "choose_threshold", "evaluate_models", "evaluate_scores",
           "plot_roc_curves", "pool_seeds", "write_tables"]
