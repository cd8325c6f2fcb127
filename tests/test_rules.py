"""The regression decision for one quantity: exact, rounds (Mann–Whitney) and single+noise."""

import pytest

from pytest_energy.gate.rules import (
    judge_exact,
    judge_full_cycle,
    judge_rounds,
    judge_single,
    mann_whitney_p,
    relative_change,
    relative_spread,
    smallest_p_value,
)

QUIET = [1.00, 1.01, 0.99, 1.02, 0.98]


def test_relative_change_and_spread():
    assert relative_change(120.0, 100.0) == pytest.approx(0.2)
    assert relative_change(0.0, 0.0) == 0.0
    assert relative_change(1.0, 0.0) is None
    assert relative_spread([9.0, 10.0, 11.0]) == pytest.approx(0.2)
    assert relative_spread([10.0]) == 0.0


@pytest.mark.parametrize(
    "current, verdict",
    [(105.0, "unchanged"), (105.01, "regressed"), (95.0, "unchanged"), (94.9, "improved")],
)
def test_exact_rule_compares_with_the_tolerance_and_nothing_else(current, verdict):
    assert judge_exact(current, 100.0, 0.05).verdict == verdict


def test_exact_rule_ignores_float_summation_noise_at_zero_tolerance():
    assert judge_exact(1.0 + 1e-15, 1.0, 0.0).verdict == "unchanged"
    assert judge_exact(1.001, 1.0, 0.0).verdict == "regressed"


def test_rounds_rule_needs_a_rise_beyond_tolerance_and_significance():
    raised = [value * 1.2 for value in QUIET]
    decision = judge_rounds(raised, QUIET, tolerance=0.05, alpha=0.01)
    assert decision.verdict == "regressed"
    assert decision.change == pytest.approx(0.2)
    assert decision.p_value < 0.01


def test_rounds_rule_does_not_flag_one_noisy_round():
    noisy = [1.0, 1.0, 3.0, 1.01, 0.99]
    assert judge_rounds(noisy, QUIET, tolerance=0.05).verdict == "unchanged"


def test_rounds_rule_does_not_flag_overlapping_rounds_even_beyond_tolerance():
    overlapping = [0.9, 1.3, 1.0, 1.25, 1.1]
    decision = judge_rounds(overlapping, QUIET, tolerance=0.05, alpha=0.01)
    assert decision.change > 0.05
    assert decision.verdict == "unchanged"
    assert "within noise" in decision.note


def test_rounds_rule_says_when_too_few_rounds_can_never_be_significant():
    assert smallest_p_value(3, 3) == pytest.approx(0.05)
    assert smallest_p_value(5, 5) == pytest.approx(1 / 252)
    decision = judge_rounds([2.0, 2.1, 2.2], [1.0, 1.1, 1.2], tolerance=0.05, alpha=0.01)
    assert decision.verdict == "unchanged"
    assert "cannot be significant" in decision.note and "--energy-rounds" in decision.note


def test_rounds_rule_finds_improvements_too():
    assert judge_rounds([v * 0.8 for v in QUIET], QUIET, 0.05).verdict == "improved"


def test_mann_whitney_of_identical_samples_is_one():
    assert mann_whitney_p([1.0, 1.0], [1.0, 1.0], "greater") == 1.0


def test_single_measurement_is_judged_against_tolerance_plus_training_noise():
    assert judge_single(108.0, 100.0, tolerance=0.05, noise=0.0).verdict == "regressed"
    decision = judge_single(108.0, 100.0, tolerance=0.05, noise=0.10)
    assert decision.verdict == "unchanged"
    assert "training noise" in decision.note
    assert judge_single(116.0, 100.0, tolerance=0.05, noise=0.10).verdict == "regressed"


def test_full_cycle_counts_only_the_change_that_beats_the_noise():
    common = {"iec_current": QUIET, "iec_baseline": QUIET, "usage": 10, "tolerance": 0.05}
    # training +8 % inside a 10 % noise band: E(MUI=10) rises, but not beyond noise
    within = judge_full_cycle(tec_current=1080.0, tec_baseline=1000.0, train_noise=0.10, **common)
    assert within.change > 0.05
    assert within.verdict == "unchanged"
    # the same rise with no recorded noise is a regression
    beyond = judge_full_cycle(tec_current=1080.0, tec_baseline=1000.0, train_noise=0.0, **common)
    assert beyond.verdict == "regressed"


def test_full_cycle_inference_part_counts_when_the_rounds_differ_significantly():
    raised = [value * 1.2 for value in QUIET]
    common = {"tec_current": 1.0, "tec_baseline": 1.0, "train_noise": 0.0, "tolerance": 0.05}
    assert (
        judge_full_cycle(iec_current=raised, iec_baseline=QUIET, usage=1e6, **common).verdict
        == "regressed"
    )
    overlapping = [0.9, 1.3, 1.0, 1.25, 1.1]
    assert (
        judge_full_cycle(iec_current=overlapping, iec_baseline=QUIET, usage=1e6, **common).verdict
        == "unchanged"
    )
