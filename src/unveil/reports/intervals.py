"""When a 95 % interval is too wide to conclude from: the report's rule, as one pure function.

The rule (named in the report): a balanced accuracy or ROC AUC is *too wide to conclude* when its 95 %
interval is wider than ``MAX_WIDTH`` (0.20) or contains chance (``CHANCE``, 0.5).

Why 0.20: the audit calls a model "does not transfer" when its AUC or balanced accuracy drops by
``AuditThresholds.transfer_drop`` = 0.10 from its own test set to another. An interval wider than
twice that drop holds, around one point estimate, both "no drop" and "a drop worth flagging": the
point estimate then cannot carry a conclusion. With n patients per class, a balanced accuracy's
95 % half-width is about 1.96 * 0.5 * sqrt(p(1 - p) * 2 / n) <= 0.69 / sqrt(n), so the width passes
0.20 below about 48 patients per class: the size at which a test set starts to speak. Containing
0.5 means the model cannot be told from a coin at this sample size, whatever the point estimate.
"""

from __future__ import annotations

import math
from typing import Any

#: widest 95 % interval (high - low) the report reads a conclusion from: twice the audit's transfer drop
MAX_WIDTH = 0.20
#: the value of chance for balanced accuracy and ROC AUC
CHANCE = 0.5
#: how the report names the rule
RULE = (f"too wide to conclude: 95 % interval wider than {MAX_WIDTH:.2f} (twice the audit's 0.10 transfer drop) "
        f"or containing {CHANCE:g} (chance)")


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def too_wide(low: Any, high: Any, *, chance: bool = True, max_width: float = MAX_WIDTH) -> str | None:
    """Why the interval [low, high] is too wide to conclude from (a short phrase), or None when it is not.
    ``chance``: also when it contains 0.5 (for balanced accuracy and AUC, not for differences or ratios).
    A missing bound (too few patients to resample) is too wide by definition."""
    low, high = _number(low), _number(high)
    if low is None or high is None:
        return "no interval (too few patients to resample)"
    reasons = []
    width = round(high - low, 9)  # 0.8 - 0.6 is 0.20000000000000007 in floating point
    if width > max_width:
        reasons.append(f"width {width:.3f} > {max_width:.2f}")
    if chance and low <= CHANCE <= high:
        reasons.append(f"contains {CHANCE:g} (chance)")
    return "; ".join(reasons) or None
