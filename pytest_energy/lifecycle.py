"""The full-cycle energy metric of Li et al. (2021), as pure functions.

TEC (J) is a method's training energy, IEC (J per sample) the energy of one inference of its
final model, MUI the number of inferences served over the model's life. Then

    E(MUI) = TEC + MUI × IEC                 full-cycle energy, joules
    G(MUI) = Acc^τ / E(MUI)                  greenness, 1/J; higher is better
    MUI*   = (TEC_B − TEC_A) / (IEC_A − IEC_B)  break-even usage of A against B, when > 0
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

Key = TypeVar("Key", bound=Hashable)


@dataclass(frozen=True)
class LifecycleCost:
    """What a method costs over its life: training joules and joules per inferred sample."""

    tec_joules: float
    iec_joules_per_sample: float

    def full_cycle_joules(self, usage: float) -> float:
        return full_cycle_joules(self.tec_joules, self.iec_joules_per_sample, usage)


def full_cycle_joules(tec_joules: float, iec_joules_per_sample: float, usage: float) -> float:
    """E(MUI) = TEC + MUI × IEC, in joules."""
    if usage < 0:
        raise ValueError(f"usage (MUI) must be ≥ 0, got {usage}")
    return tec_joules + usage * iec_joules_per_sample


def greenness(accuracy: float | None, full_cycle: float, tau: float) -> float | None:
    """G(MUI) = Acc^τ / E(MUI) in 1/J; ``None`` when accuracy is needed (τ > 0) but unknown."""
    if tau < 0:
        raise ValueError(f"τ must be ≥ 0, got {tau}")
    if full_cycle <= 0:
        return None
    if tau == 0:
        return 1.0 / full_cycle
    if accuracy is None:
        return None
    return accuracy**tau / full_cycle


def break_even_usage(first: LifecycleCost, second: LifecycleCost) -> float | None:
    """MUI* at which ``first`` and ``second`` have equal full-cycle energy.

    Beyond it the method with the lower IEC is the cheaper one over its life. ``None`` when the
    lines never cross at a positive usage (one method is cheaper at every usage, or they are
    parallel).
    """
    iec_gap = first.iec_joules_per_sample - second.iec_joules_per_sample
    if iec_gap == 0:
        return None
    usage = (second.tec_joules - first.tec_joules) / iec_gap
    return usage if usage > 0 and math.isfinite(usage) else None


def format_usage(usage: float) -> str:
    """``1e6`` → ``"1e6"``, ``1500`` → ``"1500"``: how MUI scenarios are usually written."""
    if usage >= 1e4 and float(usage).is_integer():
        exponent = math.floor(math.log10(usage))
        mantissa = usage / 10**exponent
        if float(mantissa).is_integer():
            return f"{int(mantissa)}e{exponent}" if mantissa != 1 else f"1e{exponent}"
    return f"{usage:g}"


def pareto_front(points: Iterable[tuple[Key, float, float]]) -> list[Key]:
    """Keys of the points not dominated in (accuracy ↑, energy ↓), in their given order.

    A point is dominated when another is at least as accurate and at most as costly, and
    strictly better in one of the two.
    """
    candidates: Sequence[tuple[Key, float, float]] = list(points)
    front = []
    for key, accuracy, joules in candidates:
        dominated = any(
            other_accuracy >= accuracy
            and other_joules <= joules
            and (other_accuracy > accuracy or other_joules < joules)
            for _, other_accuracy, other_joules in candidates
        )
        if not dominated:
            front.append(key)
    return front
