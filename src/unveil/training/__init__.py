"""Training: pneumonia pre-training, COVID fine-tuning, checkpoints and model bundles."""

from unveil.data.spec import DataSpec  # re-export: the CLI imports it from here
from unveil.training.bundle import BundleError, BundleInputError, ModelBundle, load_bundle, save_bundle
from unveil.training.config import ConfigError, TrainConfig
from unveil.training.data import ImageSet, TrainingDataError, fit_normalization, load_image_set
from unveil.training.loop import CheckpointError, FitResult, fit, predict_probabilities
from unveil.training.run import RunResult, pretrain, train

__all__ = ["BundleError", "BundleInputError", "CheckpointError", "ConfigError", "DataSpec", "FitResult", "ImageSet",
           "ModelBundle", "RunResult", "TrainConfig", "TrainingDataError", "fit", "fit_normalization", "load_bundle",
           "load_image_set", "predict_probabilities", "pretrain", "save_bundle", "train"]
