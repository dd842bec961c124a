"""Collapsed models: validation probabilities with negligible spread.

A model whose outputs barely vary (seen on 54 real training images: every validation probability in
0.494096-0.494180) still "decides" at a threshold chosen among those values, so its decisions are set by
the fifth decimal: noise, not evidence. Training measures the spread of the validation probabilities of the
selected epoch, warns and records the check in the bundle; ``unveil predict`` then gives no decision
(status ``rejected``) and ``unveil evaluate`` marks the model's rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

#: Default tolerance on the standard deviation of validation probabilities (TrainConfig.collapse_tolerance).
#: fp32 scores resolve ~1e-7, so 1e-3 is far above numerical noise yet far below the spread of a model that
#: ranks anything (0.01-0.3 on the real and synthetic sets we trained).
DEFAULT_COLLAPSE_TOLERANCE = 1e-3


@dataclass(frozen=True)
class CollapseCheck:
    """The spread of a model's validation probabilities and whether it is negligible."""

    spread: float  # the largest standard deviation over the class columns (positive class for a classifier)
    tolerance: float
    images: int

    @property
    def collapsed(self) -> bool:
        return not math.isfinite(self.spread) or self.spread < self.tolerance

    @property
    def reason(self) -> str:
        """One sentence a user reads in the training summary, the bundle and predict's warnings."""
        if not self.collapsed:
            return ""
        return (f"model collapsed: its validation probabilities have standard deviation {self.spread:.2g} "
                f"(< {self.tolerance:g}) over {self.images} images, so its decisions would be set by noise")

    def as_dict(self) -> dict[str, Any]:
        """The bundle.json record (``collapse``)."""
        spread = float(self.spread) if math.isfinite(self.spread) else None  # JSON has no NaN
        return {"collapsed": self.collapsed, "spread": spread, "tolerance": float(self.tolerance),
                "images": int(self.images), "reason": self.reason}


def check_collapse(probabilities: np.ndarray, *, tolerance: float = DEFAULT_COLLAPSE_TOLERANCE,
                   positive_index: int | None = None) -> CollapseCheck:
    """The spread of validation ``probabilities`` (N x classes): of the positive column when given (a COVID
    classifier), else the largest over the columns (a pre-training model)."""
    values = np.asarray(probabilities, dtype=np.float64)
    if values.ndim != 2 or not len(values):
        return CollapseCheck(math.nan, tolerance, 0)
    columns = values[:, [positive_index]] if positive_index is not None else values
    spread = float(np.max(np.std(columns, axis=0))) if len(values) > 1 else 0.0
    return CollapseCheck(spread, tolerance, len(values))
