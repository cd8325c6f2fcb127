"""Pure maths of the GPU check: power integrated over a window, counter update periods.

No I/O and no NVML here, so every figure's arithmetic is tested on a CPU with synthetic
samples. Samples are ``(seconds, value)`` pairs in time order: ``seconds`` from one monotonic
clock (``time.perf_counter``), values in watts (power) or millijoules (the energy counter).
"""

from __future__ import annotations

import bisect
import itertools
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from pytest_energy.meters.nvml import integrate_watts

Samples = Sequence[tuple[float, float]]


def value_at(samples: Samples, seconds: float) -> float:
    """The sampled value at ``seconds``, linearly interpolated between its two neighbours."""
    times = [time for time, _ in samples]
    if not samples or seconds < times[0] or seconds > times[-1]:
        raise ValueError(f"no samples around {seconds:.6f} s")
    index = bisect.bisect_left(times, seconds)
    if times[index] == seconds:
        return samples[index][1]
    (before_seconds, before), (after_seconds, after) = samples[index - 1], samples[index]
    share = (seconds - before_seconds) / (after_seconds - before_seconds)
    return before + share * (after - before)


def integrate_over(samples: Samples, start_seconds: float, end_seconds: float) -> float:
    """Joules of ``(seconds, watts)`` samples between two instants, by the trapezoidal rule.

    The power at each edge is interpolated between the samples around it, so a window need
    not start or end on a sample; the samples must cover the whole window.
    """
    if end_seconds < start_seconds:
        raise ValueError(f"window ends ({end_seconds}) before it starts ({start_seconds})")
    if not samples or samples[0][0] > start_seconds or samples[-1][0] < end_seconds:
        raise ValueError("the power samples do not cover the window")
    inside = [sample for sample in samples if start_seconds < sample[0] < end_seconds]
    edges_and_inside = [
        (start_seconds, value_at(samples, start_seconds)),
        *inside,
        (end_seconds, value_at(samples, end_seconds)),
    ]
    return integrate_watts(edges_and_inside)


def relative_difference(value: float, reference: float) -> float:
    """``(value - reference) / reference``: +0.01 means ``value`` is 1 % above the reference."""
    if reference == 0:
        raise ValueError("the reference is 0: no relative difference")
    return (value - reference) / reference


def change_times(samples: Samples) -> list[float]:
    """The instants at which a polled value was first seen to differ from the sample before."""
    return [
        seconds for (_, before), (seconds, value) in itertools.pairwise(samples) if value != before
    ]


def update_period_seconds(samples: Samples) -> float | None:
    """How often a polled value changes: the median interval between observed changes.

    Polled much faster than the value updates, each change is seen within one poll interval
    of when it happened, so the median interval is the update period (``None`` when fewer
    than two changes were seen).
    """
    changes = change_times(samples)
    intervals = [later - earlier for earlier, later in itertools.pairwise(changes)]
    return statistics.median(intervals) if intervals else None


def sample_interval_seconds(samples: Samples) -> float | None:
    """The median interval between samples: how fast the poller actually polled."""
    intervals = [later[0] - earlier[0] for earlier, later in itertools.pairwise(samples)]
    return statistics.median(intervals) if intervals else None


@dataclass(frozen=True)
class AlignedWindow:
    """A counter delta between two of its own updates, and power integrated between them."""

    start_seconds: float
    end_seconds: float
    counter_joules: float
    power_joules: float


def aligned_window(
    counter_millijoules: Samples, power_watts: Samples, start_seconds: float, end_seconds: float
) -> AlignedWindow | None:
    """The counter's joules between its first and last update inside a window, with power.

    A window read at arbitrary instants sees the counter as it was at its last update, up to
    one update period earlier; reading it between two updates removes that quantisation, so
    the comparison with integrated power judges the counter itself. ``None`` when the counter
    did not update twice inside the window.
    """
    updates = [
        (seconds, value)
        for (_, before), (seconds, value) in itertools.pairwise(counter_millijoules)
        if value != before and start_seconds <= seconds <= end_seconds
    ]
    if len(updates) < 2:
        return None
    (first_seconds, first_value), (last_seconds, last_value) = updates[0], updates[-1]
    return AlignedWindow(
        start_seconds=first_seconds,
        end_seconds=last_seconds,
        counter_joules=(last_value - first_value) / 1000,
        power_joules=integrate_over(power_watts, first_seconds, last_seconds),
    )


@dataclass(frozen=True)
class DifferenceSummary:
    """Relative differences of several windows: count, median, largest in size, within target."""

    windows: int
    median: float
    largest: float
    within_target: int

    @property
    def all_within_target(self) -> bool:
        return self.within_target == self.windows


def summarise_differences(differences: Sequence[float], target: float) -> DifferenceSummary:
    """Median and largest-in-size relative difference, and how many are within ``±target``."""
    if not differences:
        raise ValueError("no windows to summarise")
    return DifferenceSummary(
        windows=len(differences),
        median=statistics.median(differences),
        largest=max(differences, key=abs),
        within_target=sum(abs(difference) <= target for difference in differences),
    )
