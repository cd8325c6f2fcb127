"""The full-cycle maths of Li et al. (2021), checked against numbers worked by hand."""

import pytest

from pytest_energy.lifecycle import (
    LifecycleCost,
    break_even_usage,
    full_cycle_joules,
    greenness,
    pareto_front,
)


def test_full_cycle_energy_is_training_plus_usage_times_inference():
    # 1 kJ of training, 2 mJ per inference, one million inferences: 1000 + 2000 J
    assert full_cycle_joules(1000.0, 0.002, 1e6) == pytest.approx(3000.0)


def test_full_cycle_energy_at_zero_usage_is_the_training_energy():
    assert full_cycle_joules(42.0, 0.5, 0) == 42.0


def test_negative_usage_is_refused():
    with pytest.raises(ValueError, match="usage"):
        full_cycle_joules(1.0, 1.0, -1)


def test_greenness_weights_accuracy_by_tau():
    # Acc^τ / E: 0.9² / 3000 J
    assert greenness(0.9, 3000.0, tau=2) == pytest.approx(0.81 / 3000.0)


def test_greenness_with_tau_zero_is_inverse_energy_and_needs_no_accuracy():
    assert greenness(None, 4.0, tau=0) == pytest.approx(0.25)


def test_greenness_is_unknown_when_accuracy_matters_but_was_not_measured():
    assert greenness(None, 4.0, tau=1) is None


def test_break_even_usage_is_where_the_two_lines_cross():
    # A: cheap to train (100 J), costly to run (3 mJ); B: 400 J to train, 1 mJ to run.
    # 100 + 0.003·M = 400 + 0.001·M  ⇒  M = 300 / 0.002 = 150 000 inferences
    cheap_training = LifecycleCost(tec_joules=100.0, iec_joules_per_sample=0.003)
    cheap_inference = LifecycleCost(tec_joules=400.0, iec_joules_per_sample=0.001)
    usage = break_even_usage(cheap_training, cheap_inference)
    assert usage == pytest.approx(150_000)
    assert cheap_training.full_cycle_joules(usage) == pytest.approx(
        cheap_inference.full_cycle_joules(usage)
    )
    assert break_even_usage(cheap_inference, cheap_training) == pytest.approx(150_000)


def test_no_break_even_when_one_method_is_cheaper_at_every_usage():
    better = LifecycleCost(tec_joules=100.0, iec_joules_per_sample=0.001)
    worse = LifecycleCost(tec_joules=400.0, iec_joules_per_sample=0.003)
    assert break_even_usage(better, worse) is None


def test_no_break_even_between_parallel_lines():
    assert break_even_usage(LifecycleCost(1.0, 0.1), LifecycleCost(2.0, 0.1)) is None


def test_pareto_front_keeps_methods_no_other_beats_on_both_accuracy_and_energy():
    points = [
        ("baseline", 0.92, 5000.0),
        ("pruned", 0.90, 3000.0),
        ("dominated", 0.89, 3500.0),  # pruned is more accurate and cheaper
        ("quantized", 0.85, 1000.0),
        ("tie-but-costlier", 0.85, 1200.0),
    ]
    assert pareto_front(points) == ["baseline", "pruned", "quantized"]
