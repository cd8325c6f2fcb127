"""Change points by E-divisive means: a planted step is found, a flat series gives none."""

from __future__ import annotations

import random

import pytest

from pytest_energy.changepoints import change_points


def noisy(level: float, count: int, rng: random.Random, spread: float = 0.02) -> list[float]:
    """``count`` values around ``level`` with ±``spread`` relative Gaussian noise."""
    return [level * (1 + rng.gauss(0, spread)) for _ in range(count)]


def test_a_planted_step_is_found_where_it_was_planted() -> None:
    rng = random.Random(7)
    series = noisy(100.0, 12, rng) + noisy(115.0, 10, rng)  # +15 % from session 13 on
    (step,) = change_points(series)
    assert step.index == 12
    assert step.relative_change == pytest.approx(0.15, abs=0.03)
    assert step.p_value < 0.05


def test_two_steps_are_both_found() -> None:
    series = [1.0] * 8 + [2.0] * 8 + [1.5] * 8
    steps = change_points(series)
    assert [step.index for step in steps] == [8, 16]
    assert [step.mean_before for step in steps] == [1.0, 2.0]
    assert [step.mean_after for step in steps] == [2.0, 1.5]


def test_a_flat_series_has_no_change_point() -> None:
    assert change_points([42.0] * 30) == []


@pytest.mark.parametrize("seed", range(5))
def test_noise_alone_is_not_a_change_point(seed: int) -> None:
    # The cputime-like case: ±5 % session-to-session noise with no change in the code.
    assert change_points(noisy(50.0, 25, random.Random(seed), spread=0.05)) == []


def test_the_verdict_is_reproducible() -> None:
    series = noisy(10.0, 10, random.Random(1)) + noisy(11.0, 10, random.Random(2))
    assert change_points(series) == change_points(series)


def test_too_short_a_series_cannot_show_a_step() -> None:
    assert change_points([1.0, 2.0, 3.0]) == []
    assert change_points([]) == []
