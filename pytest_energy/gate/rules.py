"""Round statistics and the regression decision for one quantity of one test.

Three rules, by how a figure was obtained:

- **exact** (``counted`` meters, deterministic): the relative change is compared with the
  tolerance, nothing else. ``+5.01 %`` at a 5 % tolerance is a regression.
- **rounds** (IEC of ``measured`` and ``estimated`` meters): the median of the per-round
  joules per sample must move beyond the tolerance *and* the rounds must differ significantly:
  a one-sided Mann–Whitney U test (``scipy.stats.mannwhitneyu``) of the current rounds against
  the baseline rounds at level ``alpha``. Rank tests need no normality and shrug off one slow
  round; with few rounds they cannot reach a small ``alpha`` at all (3 against 3 rounds: the
  smallest possible p is 0.05), which ``Decision.note`` says instead of passing silently.
- **single** (TEC of ``measured`` and ``estimated`` meters: training runs once per test): the
  change must exceed the tolerance plus the training noise, the relative spread
  ``(max − min) / median`` of the TECs of repeated runs of the test body
  (``--energy-train-rounds N``, stored with the baseline). With no repeats the noise is
  unknown and taken as 0: the tolerance alone judges.

Full-cycle energy E(MUI) = TEC + MUI × IEC mixes both: only the part of its change that is
distinguishable from noise counts against the tolerance (the inference part when the rounds
differ significantly, the training part beyond its noise band); see ``judge_full_cycle``.

All changes are relative, ``(current − baseline) / baseline``; 0.05 is +5 %.
"""

from __future__ import annotations

import math
import statistics
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from scipy import stats as _scipy_stats

Judged = Literal["regressed", "improved", "unchanged"]
Alternative = Literal["greater", "less"]

DEFAULT_ALPHA = 0.01
EXACT_SLACK = 1e-9
"""Relative slack of the exact rule, so float summation order cannot flip a verdict."""


@dataclass(frozen=True)
class Decision:
    """The verdict on one quantity and why.

    Attributes:
        verdict: ``regressed``, ``improved`` or ``unchanged``.
        change: relative change of the compared figure (0.2 = +20 %), ``None`` when the
            baseline figure is 0 and the current one is not.
        p_value: one-sided Mann–Whitney p in the direction of the change (rounds rule only).
        note: a short explanation for the reader, e.g. "within noise (p = 0.21 > α = 0.01)".
    """

    verdict: Judged
    change: float | None
    p_value: float | None = None
    note: str = ""


def relative_change(current: float, baseline: float) -> float | None:
    """``(current − baseline) / baseline``; 0 when both are 0, ``None`` from 0 to non-zero."""
    if baseline == 0:
        return 0.0 if current == 0 else None
    return (current - baseline) / abs(baseline)


def relative_spread(values: Sequence[float]) -> float:
    """``(max − min) / median`` of repeated measurements: their noise band; 0 for one value."""
    if len(values) < 2:
        return 0.0
    middle = statistics.median(values)
    if middle == 0:
        return 0.0
    return (max(values) - min(values)) / abs(middle)


def mann_whitney_p(
    current: Sequence[float], baseline: Sequence[float], alternative: Alternative
) -> float:
    """One-sided Mann–Whitney U p-value that ``current`` is ``greater``/``less`` than baseline.

    Identical samples (every value tied) give 1.0 rather than scipy's undefined statistic.
    """
    if not current or not baseline:
        return 1.0
    if len(set(current) | set(baseline)) == 1:
        return 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        p_value = float(
            _scipy_stats.mannwhitneyu(current, baseline, alternative=alternative).pvalue
        )
    return 1.0 if math.isnan(p_value) else p_value


def smallest_p_value(current_rounds: int, baseline_rounds: int) -> float:
    """The smallest one-sided p the exact U test can give for these sample sizes.

    ``1 / C(n + m, n)``: every current round above every baseline round. When it exceeds
    ``alpha`` the test cannot flag anything, however large the change.
    """
    if current_rounds < 1 or baseline_rounds < 1:
        return 1.0
    return 1.0 / math.comb(current_rounds + baseline_rounds, current_rounds)


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


def judge_rounds(
    current: Sequence[float],
    baseline: Sequence[float],
    tolerance: float,
    alpha: float = DEFAULT_ALPHA,
) -> Decision:
    """Per-round samples: median change beyond ``tolerance`` and a significant U test."""
    if not current or not baseline:
        raise ValueError("judge_rounds needs at least one round on each side")
    change = relative_change(statistics.median(current), statistics.median(baseline))
    if change is None:
        return Decision("regressed", None, note="baseline was 0")
    if abs(change) <= tolerance:
        return Decision("unchanged", change, note="within tolerance")
    alternative: Alternative = "greater" if change > 0 else "less"
    p_value = mann_whitney_p(current, baseline, alternative)
    if p_value <= alpha:
        return Decision("regressed" if change > 0 else "improved", change, p_value)
    floor = smallest_p_value(len(current), len(baseline))
    if floor > alpha:
        note = (
            f"cannot be significant: {len(current)} vs {len(baseline)} rounds give p ≥ "
            f"{floor:.3g} > α = {alpha:g}; measure more rounds (--energy-rounds)"
        )
    else:
        note = f"within noise (p = {p_value:.3g} > α = {alpha:g})"
    return Decision("unchanged", change, p_value, note)


def judge_single(current: float, baseline: float, tolerance: float, noise: float) -> Decision:
    """One measurement per side: the change must exceed ``tolerance + noise``."""
    change = relative_change(current, baseline)
    if change is None:
        return Decision("regressed" if current > 0 else "improved", None, note="baseline was 0")
    band = tolerance + noise
    if change > band:
        return Decision("regressed", change, note=_noise_note(noise))
    if change < -band:
        return Decision("improved", change, note=_noise_note(noise))
    if abs(change) > tolerance:
        return Decision("unchanged", change, note=f"within training noise ({noise:.1%})")
    return Decision("unchanged", change, note="within tolerance")


def _noise_note(noise: float) -> str:
    return f"beyond tolerance + training noise {noise:.1%}" if noise else ""


def judge_full_cycle(
    *,
    tec_current: float,
    tec_baseline: float,
    train_noise: float,
    iec_current: Sequence[float],
    iec_baseline: Sequence[float],
    usage: float,
    tolerance: float,
    alpha: float = DEFAULT_ALPHA,
) -> Decision:
    """E(MUI) = TEC + MUI × IEC of noisy meters: only the change that beats the noise counts.

    The training part counts beyond ``train_noise × TEC_baseline``; the inference part,
    ``MUI × ΔIEC`` (medians), counts only when the rounds differ significantly in that
    direction. The test regresses when those parts together exceed ``tolerance`` of the
    baseline E(MUI); the reported ``change`` is the plain change of E(MUI).
    """
    iec_now = statistics.median(iec_current)
    iec_before = statistics.median(iec_baseline)
    full_now = tec_current + usage * iec_now
    full_before = tec_baseline + usage * iec_before
    change = relative_change(full_now, full_before)
    train_delta = tec_current - tec_baseline
    train_part = math.copysign(max(0.0, abs(train_delta) - train_noise * tec_baseline), train_delta)
    inference_delta = usage * (iec_now - iec_before)
    alternative: Alternative = "greater" if inference_delta > 0 else "less"
    p_value = mann_whitney_p(iec_current, iec_baseline, alternative) if inference_delta else 1.0
    inference_part = inference_delta if p_value <= alpha else 0.0
    if change is None:
        return Decision("regressed", None, p_value, "baseline was 0")
    beyond_noise = relative_change(full_before + train_part + inference_part, full_before) or 0.0
    if abs(change) <= tolerance:
        return Decision("unchanged", change, p_value, "within tolerance")
    if change > 0 and beyond_noise > tolerance:
        return Decision("regressed", change, p_value)
    if change < 0 and beyond_noise < -tolerance:
        return Decision("improved", change, p_value)
    return Decision(
        "unchanged",
        change,
        p_value,
        f"within noise (beyond-noise change {beyond_noise:+.1%}, α = {alpha:g})",
    )
