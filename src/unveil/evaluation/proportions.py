"""Patient-aware Wilson intervals for the proportions (sensitivity, specificity, accuracy).

The percentile interval of a patient bootstrap collapses at 0 and 1: 0 of 12 COVID+ images found gives
``0.00 [0.00, 0.00]``, because every resample also finds none. The Wilson score interval does not
(0/12 gives [0, 0.2425]), but it takes images as independent, and a patient can contribute several
images that tend to be right or wrong together. So the Wilson interval is computed on the *effective*
sample size ``n_eff = n / D``, where the design effect ``D`` is the variance of the clustered proportion
(ratio estimator over patients) divided by the binomial variance, floored at 1 (Kish; Rao & Scott 1992,
"A simple method for the analysis of clustered binary data"). One image per patient gives ``D = 1``
exactly, hence exactly the plain Wilson interval; patients whose images agree give ``D > 1`` and a wider
interval.

Written by hand: neither scipy nor scikit-learn computes a design effect or a Wilson interval on a
non-integer effective sample size (scipy's ``binomtest`` needs integer counts).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from scipy.special import ndtri

from unveil.errors import UnveilError

#: How the tables and the report name this interval.
METHOD = "Wilson score interval on the patient-effective sample size (images / design effect)"


class ProportionError(UnveilError, ValueError):
    """Per-patient counts of a proportion are inconsistent (negative, or more successes than trials)."""


@dataclass(frozen=True)
class ProportionInterval:
    """A Wilson-type interval with the design effect and effective sample size it was computed on."""

    low: float
    high: float
    design_effect: float
    effective_n: float


def _counts(successes: ArrayLike, trials: ArrayLike) -> tuple[list[int], list[int]]:
    """Per-patient successes and trials as Python ints (exact arithmetic below), checked."""
    a, m = np.asarray(successes), np.asarray(trials)
    if a.shape != m.shape or a.ndim != 1:
        raise ProportionError(f"successes and trials must be two 1-d arrays of one length; got shapes {a.shape} "
                              f"and {m.shape}")
    if a.size and (not np.array_equal(a, np.round(a)) or not np.array_equal(m, np.round(m))):
        raise ProportionError("successes and trials must be whole numbers (counts per patient)")
    a_list, m_list = [int(v) for v in a.tolist()], [int(v) for v in m.tolist()]
    bad = [(s, t) for s, t in zip(a_list, m_list, strict=True) if not 0 <= s <= t]
    if bad:
        raise ProportionError(f"need 0 <= successes <= trials for every patient; got {bad[:3]}")
    return a_list, m_list


def design_effect(successes: ArrayLike, trials: ArrayLike) -> float:
    """Design effect of a proportion clustered by patient: ``successes[i]`` of ``trials[i]`` images of patient i.

    With n = sum(trials), x = sum(successes), p = x / n, the ratio-estimator variance is
    ``sum_i (a_i - p m_i)^2 / n^2`` and the binomial one ``p (1 - p) / n``; their ratio, in integers, is
    ``sum_i (n a_i - x m_i)^2 / (n x (n - x))``. The ratio estimator is taken without Rao & Scott's
    k/(k-1) factor, so that one image per patient gives exactly 1 (with it, n/(n-1)). When x is 0 or n
    there is no variation to estimate the clustering from: D is then ``sum_i m_i^2 / n``, the value the
    estimator takes when each patient's images all agree (equal sizes), so that a patient with many images
    does not narrow a 0/n or n/n interval as if they were independent. Floored at 1; nan for n == 0."""
    a, m = _counts(successes, trials)
    n, x = sum(m), sum(a)
    if n == 0:
        return math.nan
    if x in (0, n):
        value = sum(t * t for t in m) / n
    else:
        value = sum((n * s - x * t) ** 2 for s, t in zip(a, m, strict=True)) / (n * x * (n - x))
    return max(1.0, value)


def wilson_effective(successes: int, n: int, effective_n: float, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of the proportion ``successes / n`` on ``effective_n`` independent observations.

    Newcombe's (1998) form, the one scipy's ``binomtest(...).proportion_ci(method="wilson")`` evaluates, so
    that ``effective_n == n`` gives scipy's bounds to the last bit; 0 and 1 are exact at x = 0 and x = n."""
    if not 0 < confidence < 1:
        raise ProportionError(f"confidence must lie in (0, 1); got {confidence}")
    if n <= 0 or not 0 <= successes <= n or not effective_n > 0:
        raise ProportionError(f"need 0 <= successes <= n, n > 0 and effective_n > 0; got successes={successes}, "
                              f"n={n}, effective_n={effective_n}")
    z = ndtri(0.5 + 0.5 * confidence)
    p = successes / n
    denominator = 2 * (effective_n + z**2)
    center = (2 * effective_n * p + z**2) / denominator
    delta = z / denominator * math.sqrt(4 * effective_n * p * (1 - p) + z**2)
    low = 0.0 if successes == 0 else center - delta
    high = 1.0 if successes == n else center + delta
    return float(low), float(high)


def patient_wilson_interval(successes: ArrayLike, trials: ArrayLike, confidence: float = 0.95) -> ProportionInterval:
    """The patient-aware Wilson interval of ``sum(successes) / sum(trials)`` (per-patient counts): a Wilson
    score interval on ``n / design_effect`` images; all nan when there are no trials."""
    effect = design_effect(successes, trials)
    n, x = int(np.sum(trials)), int(np.sum(successes))
    if n == 0:
        return ProportionInterval(math.nan, math.nan, math.nan, 0.0)
    effective_n = n / effect
    low, high = wilson_effective(x, n, effective_n, confidence)
    return ProportionInterval(low, high, effect, effective_n)
