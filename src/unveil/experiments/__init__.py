"""Experiments: a YAML grid (datasets, pre-processing, pre-training, cells, tests), run and stored."""

from unveil.experiments.config import Experiment, ExperimentError, experiment_path, load_experiment
from unveil.experiments.runner import reproduce
from unveil.experiments.store import ResultsStore

__all__ = ["Experiment", "ExperimentError", "ResultsStore", "experiment_path", "load_experiment", "reproduce"]
