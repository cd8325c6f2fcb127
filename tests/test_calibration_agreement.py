"""The statistics of ``python -m benchmarks.calibration_agreement`` (the script itself measures
for minutes; its pure parts are checked here against figures worked out by hand)."""

import math

import pytest

from benchmarks.calibration_agreement import (
    agreement,
    common_scale,
    median_relative_error,
    ranks,
    spearman,
)


def test_ties_share_the_mean_of_the_ranks_they_span():
    assert ranks([10.0, 30.0, 20.0, 30.0]) == [1.0, 3.5, 2.0, 3.5]


def test_spearman_is_one_for_the_same_order_and_minus_one_for_the_reverse():
    measured = [1.0, 2.0, 5.0, 9.0]
    assert spearman([0.1, 0.3, 0.4, 10.0], measured) == pytest.approx(1.0)
    assert spearman([4.0, 3.0, 2.0, 1.0], measured) == pytest.approx(-1.0)


def test_spearman_of_one_swapped_pair_among_five():
    # d² = 1 + 1 for the swapped pair: 1 − 6·2 / (5·24) = 0.9
    assert spearman([1, 2, 4, 3, 5], [1, 2, 3, 4, 5]) == pytest.approx(0.9)


def test_spearman_has_no_value_without_an_order():
    assert math.isnan(spearman([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]))


def test_relative_error_and_common_scale():
    measured = [2.0, 4.0, 10.0]
    counted = [1.0, 2.0, 4.0]  # half, half and 0.4 of the measured figures
    assert median_relative_error(counted, measured) == pytest.approx(0.5)
    assert common_scale(counted, measured) == pytest.approx(2.0)
    result = agreement("default", counted, measured)
    assert result.spearman == pytest.approx(1.0)
    assert result.scaled_median_relative_error == pytest.approx(0.0)  # two of three exact
    assert result.scale == pytest.approx(2.0)
