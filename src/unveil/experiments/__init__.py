"""Experiments: a YAML grid (datasets, pre-processing, pre-training, cells, tests), run and stored."""

from unveil.evaluation.store import ResultsStore  # re-export: experiments always exported it
from unveil.experiments.config import Experiment, ExperimentError, experiment_path, load_experiment
from unveil.experiments.runner import reproduce

__all__ = ["Experiment", "ExperimentError", "ResultsStore", "experiment_path", "load_experiment", "reproduce"]
