"""The regression decision for one quantity of one test: pure statistics, no I/O.

Two kinds of rule, by how a figure was obtained:

- **exact** (``counted`` meters, deterministic): the relative change is compared with the
  tolerance, nothing else. ``+5.01 %`` at a 5 % tolerance is a regression.
- **sessions** (``measured`` and ``estimated`` meters): the unit of noise is the pytest
  *session*, not the round. Rounds of one session share its machine state (co-tenants, clocks,
  thread placement, the host a VM landed on), so they only estimate that session's figure; the
  noise that decides is the spread *between* sessions (Kalibera & Jones 2013). Figures are
  compared on a log scale (energy is positive and its noise multiplicative), as an interval
  of the change at level ``alpha`` on each side:

  - ``judge_history``: this run's session(s) against the last sessions of the baseline. The
    change ``log(y) − mean(log x)`` of one new session from the same distribution has a Student
    t prediction interval ``± t(1 − α, n − 1) · s · sqrt(1 + 1/n)`` (``s``: the spread between
    the ``n`` baseline sessions). With ``m ≥ 2`` sessions of this run (``pytest-energy check
    --sessions m``) the change is ``mean(log y) − mean(log x)`` and the interval the pooled
    two-sample one, ``± t(1 − α, n + m − 2) · s_p · sqrt(1/n + 1/m)``: the spread is pooled over
    both sides, so one slow session of this run widens the interval instead of deciding the
    verdict (session figures on a shared CPU are heavy-tailed: most sessions agree, a few run
    far slower).
  - ``judge_paired``: A/B pairs of sessions run alternately on one machine (RMIT, Abedi &
    Brecht 2017): the log ratio head/base of each pair; the interval of their mean is
    ``± t(1 − α, N − 1) · s / sqrt(N)``. Pairing cancels the drift the two sides share.

  A test regresses when the whole interval of the change lies above ``+tolerance`` and improves
  when it lies below ``−tolerance``; anything else is unchanged. Every verdict carries the
  smallest change the comparison could have detected (``detectable``): the tolerance plus the
  interval's half-width. With fewer than ``MIN_SESSIONS`` sessions (or pairs) the spread is
  unknown, and the verdict says so instead of claiming a significance it cannot have.

All changes are relative, ``(current − baseline) / baseline``; 0.05 is +5 %. scipy is imported
only when a session rule runs (for the t quantile).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

Judged = Literal["regressed", "improved", "unchanged"]

DEFAULT_ALPHA = 0.01
MIN_SESSIONS = 3
"""Fewest baseline sessions (history) or pairs (A/B) from which a spread is estimated."""
EXACT_SLACK = 1e-9
"""Relative slack of every rule, so float summation order cannot flip a verdict."""


@dataclass(frozen=True)
class Decision:
    """The verdict on one quantity and why.

    Attributes:
        verdict: ``regressed``, ``improved`` or ``unchanged``.
        change: relative change of the compared figure (0.2 = +20 %), ``None`` when the
            baseline figure is 0 and the current one is not.
        interval: the (low, high) relative change the noise allows at ``alpha`` each side
            (session rules only).
        detectable: the smallest relative rise this comparison could have flagged (session
            rules only; ``None`` when too few sessions to know).
        sessions: baseline sessions (history) or pairs (A/B) the verdict rests on.
        noise_hides_tolerance: the noise alone is wider than the tolerance: a change of twice
            the tolerance could go unseen.
        note: a short explanation for the reader.
    """

    verdict: Judged
    change: float | None
    interval: tuple[float, float] | None = None
    detectable: float | None = None
    sessions: int | None = None
    noise_hides_tolerance: bool = False
    note: str = ""


def relative_change(current: float, baseline: float) -> float | None:
    """``(current − baseline) / baseline``; 0 when both are 0, ``None`` from 0 to non-zero."""
    if baseline == 0:
        return 0.0 if current == 0 else None
    return (current - baseline) / abs(baseline)


def judge_exact(current: float, baseline: float, tolerance: float) -> Decision:
    """Deterministic figures: a change beyond ``tolerance`` is a regression or improvement."""
    change = relative_change(current, baseline)
    if change is None:
        return Decision("regressed" if current > 0 else "improved", None, note="baseline was 0")
    if change > tolerance + EXACT_SLACK:
        return Decision("regressed", change)
    if change < -(tolerance + EXACT_SLACK):
        return Decision("improved", change)
    return Decision("unchanged", change)


def t_quantile(probability: float, degrees_of_freedom: int) -> float:
    """Student t quantile (scipy, imported here so only noisy rules pay for it)."""
    from scipy import stats

    return float(stats.t.ppf(probability, degrees_of_freedom))


def geometric_mean(values: Sequence[float]) -> float:
    """``exp(mean(log v))`` of positive figures: the centre the session rules compare with."""
    return math.exp(statistics.fmean(math.log(value) for value in values))


def _interval_decision(
    log_change: float, half_width: float, tolerance: float, count: int, what: str
) -> Decision:
    """Verdict from a log-scale change and the half-width its noise allows."""
    change = math.expm1(log_change)
    low, high = math.expm1(log_change - half_width), math.expm1(log_change + half_width)
    limit = math.log1p(tolerance) + EXACT_SLACK
    detectable = math.expm1(limit + half_width)
    hides = math.expm1(half_width) > tolerance
    common = {
        "interval": (low, high),
        "detectable": detectable,
        "sessions": count,
        "noise_hides_tolerance": hides,
    }
    if log_change - half_width > limit:
        return Decision("regressed", change, **common)
    if log_change + half_width < -limit:
        return Decision("improved", change, **common)
    if abs(change) <= tolerance:
        note = f"within tolerance; could detect ≥ {100 * detectable:.0f} % ({count} {what})"
    else:
        note = f"within noise; could detect ≥ {100 * detectable:.0f} % ({count} {what})"
    return Decision("unchanged", change, **common, note=note)


def _positive(values: Sequence[float], name: str) -> list[float]:
    values = [float(value) for value in values]
    if not values:
        raise ValueError(f"{name}: at least one figure is needed")
    if any(not math.isfinite(value) or value <= 0 for value in values):
        raise ValueError(f"{name}: figures must be finite and > 0, got {values!r}")
    return values


def judge_history(
    current: float | Sequence[float],
    history: Sequence[float],
    tolerance: float,
    alpha: float = DEFAULT_ALPHA,
) -> Decision:
    """This run's session figure(s) against the figures of the baseline's last sessions.

    ``current``: one figure, or one per session of this run; ``history``: one figure per
    baseline session (oldest first; order does not matter).
    """
    history = _positive(history, "history")
    now = [float(current)] if isinstance(current, (int, float)) else [float(v) for v in current]
    if not now:
        raise ValueError("current: at least one figure is needed")
    if any(not math.isfinite(value) or value < 0 for value in now):
        raise ValueError(f"current: figures must be finite and ≥ 0, got {now!r}")
    if 0.0 in now:
        return Decision("improved", -1.0, note="this session read 0 J")
    centre = geometric_mean(history)
    log_change = math.log(geometric_mean(now)) - math.log(centre)
    count = len(history)
    if count < MIN_SESSIONS:
        return Decision(
            "unchanged",
            math.expm1(log_change),
            sessions=count,
            note=f"cannot judge: {count} baseline session(s), the spread between sessions needs "
            f"≥ {MIN_SESSIONS} (record more with `pytest-energy record --sessions 5`)",
        )
    # Pooled over both sides; with one session of this run it adds nothing to the spread and
    # the interval is the prediction interval of one new session, sqrt(1 + 1/n).
    freedom = count + len(now) - 2
    squares = _squared_deviations(history) + _squared_deviations(now)
    half_width = (
        t_quantile(1.0 - alpha, freedom)
        * math.sqrt(squares / freedom)
        * math.sqrt(1.0 / count + 1.0 / len(now))
    )
    what = "baseline sessions"
    if len(now) > 1:
        what += f", {len(now)} sessions of this run"
    return _interval_decision(log_change, half_width, tolerance, count, what)


def _squared_deviations(values: Sequence[float]) -> float:
    """Sum of squared deviations of ``log(values)`` from their mean."""
    logs = [math.log(value) for value in values]
    centre = statistics.fmean(logs)
    return sum((value - centre) ** 2 for value in logs)


def judge_paired(
    head: Sequence[float], base: Sequence[float], tolerance: float, alpha: float = DEFAULT_ALPHA
) -> Decision:
    """A/B pairs: ``head[i]`` and ``base[i]`` ran in the same pair; the change is head/base."""
    head, base = _positive(head, "head"), _positive(base, "base")
    if len(head) != len(base):
        raise ValueError(f"judge_paired: {len(head)} head figures but {len(base)} base figures")
    ratios = [math.log(now) - math.log(before) for now, before in zip(head, base, strict=True)]
    log_change = statistics.fmean(ratios)
    count = len(ratios)
    if count < MIN_SESSIONS:
        return Decision(
            "unchanged",
            math.expm1(log_change),
            sessions=count,
            note=f"cannot judge: {count} pair(s), the spread between pairs needs "
            f"≥ {MIN_SESSIONS} (--pairs {MIN_SESSIONS} or more)",
        )
    spread = statistics.stdev(ratios)
    half_width = t_quantile(1.0 - alpha, count - 1) * spread / math.sqrt(count)
    return _interval_decision(log_change, half_width, tolerance, count, "pairs")


def history_detectable(
    history: Sequence[float], tolerance: float, alpha: float = DEFAULT_ALPHA
) -> float | None:
    """The smallest rise a new session could show against ``history`` (``None``: too few)."""
    if len(history) < MIN_SESSIONS:
        return None
    return judge_history(geometric_mean(history), history, tolerance, alpha).detectable
