"""Scoring a model in eval mode: softmax probabilities, encoder features, validation scores and the threshold.

Moved out of :mod:`unveil.training.loop` (which re-exports every name) to keep the loop short; evaluation, the
audit and prediction score through these functions, in fp32 unless asked otherwise.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import replace

import numpy as np
import torch
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

from unveil.models import CxrClassifier
from unveil.thresholds import (
    PAPER_THRESHOLD,
    ThresholdChoice,
    ThresholdRequest,
    ThresholdRule,
    fixed_threshold,
)
from unveil.training.config import TrainConfig
from unveil.training.data import to_model_input

CPU = torch.device("cpu")


@torch.inference_mode()
def predict_probabilities(model: torch.nn.Module, images: torch.Tensor, mean: float, std: float, *,
                          device: torch.device, batch_size: int = 64, amp: bool = False,
                          channels_last: bool = False) -> np.ndarray:
    """Softmax probabilities (N x classes) of uint8 images, in eval mode (fp32 unless ``amp``)."""
    was_training = model.training
    model.eval()
    out = []
    for chunk in torch.split(images, batch_size):
        batch = to_model_input(chunk.to(device, non_blocking=True), mean, std)
        if channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(batch)
        out.append(torch.softmax(logits.float(), dim=1).cpu())
    model.train(was_training)
    return torch.cat(out).numpy().astype(np.float64)


@torch.inference_mode()
def encoder_features(model: CxrClassifier, images: torch.Tensor, mean: float, std: float, *,
                     device: torch.device = CPU, batch_size: int = 64) -> np.ndarray:
    """Encoder features (N x feature_dim, before the head) of uint8 images, in eval mode, fp32."""
    was_training = model.training
    model.eval()
    chunks = [model.features(to_model_input(chunk.to(device), mean, std)).float().cpu().numpy()
              for chunk in torch.split(images, batch_size)]
    model.train(was_training)
    return np.concatenate(chunks).astype(np.float64)


@torch.inference_mode()
def probabilities_from_features(model: CxrClassifier, features: np.ndarray) -> np.ndarray:
    """Softmax of the head applied to encoder features: scores without a second encoder pass."""
    logits = model.head(torch.as_tensor(features, dtype=torch.float32))
    return torch.softmax(logits.float(), dim=1).numpy().astype(np.float64)


def classification_scores(probabilities: np.ndarray, labels: np.ndarray,
                          config: TrainConfig | None = None) -> dict[str, float]:
    """Validation AUC (binary, or macro one-vs-rest), accuracy and balanced accuracy.
    AUC is NaN when the validation split holds a single class.

    Binary tasks with ``config``: accuracy and balanced accuracy at the threshold ``config.threshold_rule``
    picks on these predictions (``threshold``; what the bundle will record), and balanced accuracy at the
    fixed 0.5 beside it (``balanced_accuracy_at_0.5``). Otherwise the decision is the most probable class."""
    predicted = probabilities.argmax(axis=1)
    extra: dict[str, float] = {}
    present = np.unique(labels)
    if config is not None and probabilities.shape[1] == 2:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            at_half = (probabilities[:, 1] >= PAPER_THRESHOLD).astype(np.int64)
            extra["balanced_accuracy_at_0.5"] = float(balanced_accuracy_score(labels, at_half))
        choice = decision_threshold(probabilities[:, 1], labels, config)
        extra["threshold"] = choice.value
        predicted = (probabilities[:, 1] >= choice.value).astype(np.int64)
    with warnings.catch_warnings():  # a class never predicted or absent is a fact here, not a warning
        warnings.simplefilter("ignore", UserWarning)
        balanced = float(balanced_accuracy_score(labels, predicted))
    scores = {"accuracy": float((predicted == labels).mean()), "balanced_accuracy": balanced, **extra}
    if len(present) < 2:
        scores["auc"] = math.nan
    elif probabilities.shape[1] == 2:
        scores["auc"] = float(roc_auc_score(labels, probabilities[:, 1]))
    else:
        columns = probabilities[:, present] / probabilities[:, present].sum(axis=1, keepdims=True)
        scores["auc"] = float(roc_auc_score(labels, columns, multi_class="ovr", average="macro", labels=present)
                              if len(present) > 2 else roc_auc_score(labels == present[1], columns[:, 1]))
    return scores


def decision_threshold(probabilities: np.ndarray, labels: np.ndarray, config: TrainConfig) -> ThresholdChoice:
    """The threshold ``config.threshold_rule`` chooses on validation ``probabilities`` (of the positive
    class); when the rule cannot apply (one class only in validation), the paper's fixed 0.5, saying why."""
    try:
        request = ThresholdRequest(ThresholdRule.parse(config.threshold_rule), config.threshold_value,
                                   config.target_sensitivity)
        return request.choose(labels, probabilities)
    except ValueError as error:
        fallback = fixed_threshold()
        return replace(fallback, description=f"{fallback.description} ({config.threshold_rule} impossible: {error})")
