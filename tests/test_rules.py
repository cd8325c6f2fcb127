"""The regression decision for one quantity: exact (counted) and the session rules (noisy)."""

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pytest_energy.gate.rules import (
    MIN_SESSIONS,
    history_detectable,
    judge_exact,
    judge_history,
    judge_paired,
    relative_change,
)

# Eight sessions of one test on a shared machine: about ±5 % between sessions.
HISTORY = [1.00, 1.04, 0.97, 1.02, 0.95, 1.05, 0.99, 1.01]
figures = st.floats(min_value=1e-6, max_value=1e6, allow_nan=False, allow_infinity=False)


def test_relative_change():
    assert relative_change(120.0, 100.0) == pytest.approx(0.2)
    assert relative_change(0.0, 0.0) == 0.0
    assert relative_change(1.0, 0.0) is None


@pytest.mark.parametrize(
    "current, verdict",
    [(105.0, "unchanged"), (105.01, "regressed"), (95.0, "unchanged"), (94.9, "improved")],
)
def test_exact_rule_compares_with_the_tolerance_and_nothing_else(current, verdict):
    assert judge_exact(current, 100.0, 0.05).verdict == verdict


def test_exact_rule_ignores_float_summation_noise_at_zero_tolerance():
    assert judge_exact(1.0 + 1e-15, 1.0, 0.0).verdict == "unchanged"
    assert judge_exact(1.001, 1.0, 0.0).verdict == "regressed"


def test_a_session_far_above_the_history_regresses_and_says_what_it_could_detect():
    decision = judge_history(1.5, HISTORY, tolerance=0.05, alpha=0.01)
    assert decision.verdict == "regressed"
    assert decision.change == pytest.approx(0.5, abs=0.01)
    assert decision.sessions == len(HISTORY)
    low, high = decision.interval
    assert 0.05 < low < 0.5 < high
    # t(0.99, 7) = 3.00, spread 3.4 %, sqrt(1 + 1/8): about 10.8 % of noise on top of 5 %.
    assert decision.detectable == pytest.approx(0.17, abs=0.01)


def test_a_session_within_the_spread_between_sessions_is_unchanged():
    decision = judge_history(1.10, HISTORY, tolerance=0.05, alpha=0.01)
    assert decision.verdict == "unchanged"
    assert "within noise; could detect ≥ 17 % (8 baseline sessions)" in decision.note
    assert judge_history(1.03, HISTORY, 0.05).note.startswith("within tolerance")


def test_a_drop_beyond_noise_and_tolerance_is_an_improvement():
    assert judge_history(0.6, HISTORY, 0.05).verdict == "improved"


def test_noise_wider_than_the_tolerance_is_said():
    noisy = [1.0, 1.4, 0.7, 1.2, 0.8]
    decision = judge_history(1.0, noisy, tolerance=0.05)
    assert decision.noise_hides_tolerance
    assert decision.detectable > 1.0
    assert not judge_history(1.0, HISTORY, tolerance=0.20).noise_hides_tolerance


@pytest.mark.parametrize("count", range(1, MIN_SESSIONS))
def test_too_few_sessions_claim_no_significance(count):
    decision = judge_history(100.0, [1.0] * count, tolerance=0.05)
    assert decision.verdict == "unchanged"
    assert decision.detectable is None
    assert f"cannot judge: {count} baseline session(s)" in decision.note
    assert history_detectable([1.0] * count, 0.05) is None
    paired = judge_paired([100.0] * count, [1.0] * count, 0.05)
    assert paired.verdict == "unchanged" and "cannot judge" in paired.note


def test_pairs_cancel_the_drift_both_sides_share():
    # The machine drifts ±30 % between pairs; head is always 25 % above base within a pair.
    base = [1.0, 1.3, 0.7, 1.1, 0.9]
    head = [
        value * 1.25 * jitter
        for value, jitter in zip(base, [1.01, 0.99, 1.0, 1.02, 0.98], strict=True)
    ]
    decision = judge_paired(head, base, tolerance=0.05, alpha=0.01)
    assert decision.verdict == "regressed"
    assert decision.change == pytest.approx(0.25, abs=0.01)
    assert decision.detectable < 0.10
    # The same figures as a history would drown in the drift.
    assert judge_history(head[-1], base, 0.05).verdict == "unchanged"


@given(st.lists(figures, min_size=1, max_size=12), st.floats(0.0, 0.5))
def test_identical_sessions_are_never_significant(values, tolerance):
    assert judge_paired(values, values, tolerance).verdict == "unchanged"
    history = values * 3
    assert judge_history(math.exp(sum(map(math.log, history)) / len(history)), history, tolerance)
    assert judge_history(values[0], [values[0]] * 5, tolerance).verdict == "unchanged"


@given(
    st.lists(st.tuples(figures, figures), min_size=1, max_size=10),
    st.floats(0.0, 0.5),
    st.sampled_from([0.01, 0.05, 0.1]),
)
def test_swapping_a_and_b_swaps_regressed_and_improved(pairs, tolerance, alpha):
    head = [pair[0] for pair in pairs]
    base = [pair[1] for pair in pairs]
    forward = judge_paired(head, base, tolerance, alpha).verdict
    backward = judge_paired(base, head, tolerance, alpha).verdict
    swapped = {"regressed": "improved", "improved": "regressed", "unchanged": "unchanged"}
    assert backward == swapped[forward]


# Five baseline sessions that happened to agree closely, as sessions on a quiet machine do.
TIGHT = [1.00, 1.02, 0.99, 1.01, 0.98]


def test_one_slow_session_alone_reads_as_a_regression_but_not_among_three():
    # Session figures on a shared CPU are heavy-tailed: now and then a session runs far slower.
    slow = 1.8
    assert judge_history(slow, TIGHT, 0.05).verdict == "regressed"
    among_three = judge_history([1.01, 0.99, slow], TIGHT, 0.05)
    assert among_three.verdict == "unchanged"
    assert "3 sessions of this run" in among_three.note


def test_a_rise_every_session_of_the_run_shows_is_caught_on_three_sessions():
    decision = judge_history([1.24, 1.27, 1.25], TIGHT, tolerance=0.05)
    assert decision.verdict == "regressed"
    assert decision.change == pytest.approx(0.255, abs=0.01)
    assert decision.detectable < 0.15


def test_one_session_as_a_list_is_the_single_figure_rule():
    assert judge_history([1.10], HISTORY, 0.05) == judge_history(1.10, HISTORY, 0.05)


@given(st.lists(figures, min_size=3, max_size=6), st.lists(figures, min_size=3, max_size=8))
def test_swapping_this_run_and_the_baseline_swaps_regressed_and_improved(now, before):
    forward = judge_history(now, before, 0.05).verdict
    backward = judge_history(before, now, 0.05).verdict
    swapped = {"regressed": "improved", "improved": "regressed", "unchanged": "unchanged"}
    assert backward == swapped[forward]


def test_bad_figures_are_refused():
    with pytest.raises(ValueError, match="finite and > 0"):
        judge_history(1.0, [1.0, -1.0, 1.0], 0.05)
    with pytest.raises(ValueError, match="2 head figures but 3 base"):
        judge_paired([1.0, 1.0], [1.0, 1.0, 1.0], 0.05)
