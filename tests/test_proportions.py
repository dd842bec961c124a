"""The patient-aware Wilson interval of a proportion: design effect by hand, exact answers for small cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import binomtest

from unveil.errors import UnveilError
from unveil.evaluation.proportions import (
    ProportionError,
    design_effect,
    patient_wilson_interval,
    wilson_effective,
)


def _scipy_wilson(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    interval = binomtest(successes, n).proportion_ci(confidence_level=confidence, method="wilson")
    return float(interval.low), float(interval.high)


@pytest.mark.parametrize("confidence", [0.9, 0.95, 0.99])
def test_one_image_per_patient_is_exactly_scipys_wilson(confidence):
    for n in range(1, 31):
        for successes in range(n + 1):
            per_patient = np.r_[np.ones(successes, int), np.zeros(n - successes, int)]
            interval = patient_wilson_interval(per_patient, np.ones(n, int), confidence)
            assert interval.design_effect == 1.0 and interval.effective_n == n
            assert (interval.low, interval.high) == _scipy_wilson(successes, n, confidence), (successes, n)


def test_zero_and_all_of_twelve_independent_images():
    none = patient_wilson_interval(np.zeros(12, int), np.ones(12, int))
    low, high = none.low, none.high
    assert low == 0.0 and high == pytest.approx(0.2425, abs=1e-4)  # z^2 / (n + z^2) = 3.8415 / 15.8415
    everything = patient_wilson_interval(np.ones(12, int), np.ones(12, int))
    assert everything.high == 1.0 and everything.low == pytest.approx(1 - 0.2425, abs=1e-4)


def test_design_effect_by_hand():
    # n = 5, x = 3: sum (n a_i - x m_i)^2 = (10 - 6)^2 + (0 - 6)^2 + (5 - 3)^2 = 56; n x (n - x) = 30.
    assert design_effect([2, 0, 1], [2, 2, 1]) == pytest.approx(56 / 30, rel=1e-15)
    # Three patients of four images, each patient all right or all wrong: D = m = 4, n_eff = 3 patients.
    assert design_effect([4, 4, 0], [4, 4, 4]) == 4.0
    # Every patient one success and one failure (negative within-patient correlation): raw 0, floored at 1.
    assert design_effect([1, 1, 1], [2, 2, 2]) == 1.0
    # No variation (0/n, n/n): sum m_i^2 / n, as if each patient's images agreed.
    assert design_effect([0, 0, 0], [4, 4, 4]) == 4.0 and design_effect([3, 1], [3, 1]) == pytest.approx(10 / 4)
    # Patients without trials do not count; no trials at all: undefined.
    assert design_effect([2, 0, 1, 0], [2, 2, 1, 0]) == pytest.approx(56 / 30)
    assert math.isnan(design_effect([0], [0]))


def test_wilson_on_a_non_integer_effective_sample_size_by_hand():
    # p = 0.2, n_eff = 2.5, z = 1.95996: centre (2 n_eff p + z^2) / (2 (n_eff + z^2)) = 4.8415 / 12.6829 = 0.3817,
    # half-width z / 12.6829 * sqrt(4 n_eff p (1 - p) + z^2) = 0.15454 * 2.33270 = 0.3605.
    assert wilson_effective(1, 5, 2.5) == pytest.approx((0.0212, 0.7422), abs=1e-4)


def test_clustering_widens_the_interval():
    # 8 of 12 images right: independent images vs three patients of four images who agree.
    independent = patient_wilson_interval(np.r_[np.ones(8, int), np.zeros(4, int)], np.ones(12, int))
    clustered = patient_wilson_interval([4, 4, 0], [4, 4, 4])
    assert independent.design_effect == 1.0 and clustered.design_effect == 4.0 and clustered.effective_n == 3.0
    assert (independent.low, independent.high) == _scipy_wilson(8, 12)
    # n_eff = 3 with p = 2/3: the Wilson interval of 2 of 3.
    assert (clustered.low, clustered.high) == pytest.approx(_scipy_wilson(2, 3), abs=1e-12)
    assert clustered.low < independent.low and clustered.high > independent.high
    # 0 of 12 images of three patients: the bound of 0 of 3 patients (0.5615), not of 12 images (0.2425).
    none = patient_wilson_interval([0, 0, 0], [4, 4, 4])
    assert none.low == 0.0 and none.high == pytest.approx(_scipy_wilson(0, 3)[1], abs=1e-12)
    assert none.high == pytest.approx(0.5615, abs=1e-4)


def test_no_trials_and_bad_counts():
    empty = patient_wilson_interval(np.zeros(0, int), np.zeros(0, int))
    assert math.isnan(empty.low) and math.isnan(empty.high) and empty.effective_n == 0
    for successes, trials, message in (([3], [2], "successes <= trials"), ([-1], [2], "successes <= trials"),
                                       ([1, 2], [2], "one length"), ([0.5], [1], "whole numbers")):
        with pytest.raises(ProportionError, match=message) as raised:
            patient_wilson_interval(successes, trials)
        assert isinstance(raised.value, UnveilError)
    with pytest.raises(ProportionError, match="confidence"):
        wilson_effective(1, 2, 2.0, confidence=1.5)
