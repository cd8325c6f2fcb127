"""Change points in a series of figures: E-divisive with means, pure (no I/O).

The method MongoDB runs on its CI performance history (Daly et al., "The Use of Change Point
Detection to Identify Software Performance Regressions in a Continuous Integration System",
ICPE 2020), from Matteson & James, "A Nonparametric Approach for Multiple Change Point Analysis
of Multivariate Data" (JASA 2014), with distance exponent 1:

- For a split of the series into X = x[:τ] and Y = x[τ:] (m and n points), the energy
  statistic  Ê = 2/(mn) Σ|Xi − Yj| − 1/C(m,2) Σ|Xi − Xk| − 1/C(n,2) Σ|Yj − Yk|  measures how
  far apart the two sides' distributions are; Q̂(τ) = mn/(m+n) · Ê weighs it by their sizes.
- The split with the largest Q̂ is a candidate. A permutation test decides whether it is real:
  the series is shuffled (a fixed seed, so the verdict is reproducible), the best Q̂ of each
  shuffle computed, and the candidate kept when p = (1 + #{shuffles with Q̂ ≥ observed}) /
  (1 + shuffles) is below ``alpha``.
- Kept candidates split the series and each part is searched again (bisection), until no part
  holds a significant change. Parts shorter than 2 · ``min_size`` are not split.

Nonparametric: no distribution is assumed, and a flat series (every value equal) has Q̂ = 0
everywhere, hence no change point. A change point at index i means x[i] is the first value of
the new level.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

PERMUTATIONS = 199
ALPHA = 0.01  # a noise-only series of 25 (±5 %) showed no change point in 60 tries
MIN_SIZE = 2
SEED = 20200425  # fixed: the same history always gives the same change points


@dataclass(frozen=True)
class ChangePoint:
    """The level changes at ``index``: mean of the part before vs the part after (up to the
    neighbouring change points), the relative change, and the permutation test's p-value."""

    index: int
    mean_before: float
    mean_after: float
    p_value: float

    @property
    def relative_change(self) -> float | None:
        """(after − before) / |before|, ``None`` when the level before is 0."""
        if self.mean_before == 0:
            return None
        return (self.mean_after - self.mean_before) / abs(self.mean_before)


def _best_split(values: np.ndarray, min_size: int) -> tuple[int, float]:
    """The split τ (min_size ≤ τ ≤ len − min_size) with the largest Q̂, and that Q̂."""
    count = len(values)
    distances = np.abs(values[:, None] - values[None, :])
    # cumulative[a, b] = sum of distances[:a, :b]: any block sum in O(1).
    cumulative = np.zeros((count + 1, count + 1))
    cumulative[1:, 1:] = distances.cumsum(axis=0).cumsum(axis=1)

    def block(r0: int, r1: int, c0: int, c1: int) -> float:
        return float(
            cumulative[r1, c1] - cumulative[r0, c1] - cumulative[r1, c0] + cumulative[r0, c0]
        )

    best_tau, best_q = -1, -np.inf
    for tau in range(min_size, count - min_size + 1):
        m, n = tau, count - tau
        between = block(0, tau, tau, count)
        within_x = block(0, tau, 0, tau) / 2  # each pair counted twice in the full block
        within_y = block(tau, count, tau, count) / 2
        energy = (
            2.0 * between / (m * n)
            - (within_x / (m * (m - 1) / 2) if m > 1 else 0.0)
            - (within_y / (n * (n - 1) / 2) if n > 1 else 0.0)
        )
        q = m * n / (m + n) * energy
        if best_tau < 0 or q > best_q + 1e-12 * max(1.0, abs(best_q)):
            best_tau, best_q = tau, q
    return best_tau, best_q


def _significant_split(
    values: np.ndarray, min_size: int, permutations: int, alpha: float, rng: random.Random
) -> tuple[int, float] | None:
    if len(values) < 2 * min_size:
        return None
    tau, observed = _best_split(values, min_size)
    if tau < 0 or observed <= 0 or np.ptp(values) == 0:
        return None
    shuffled = list(values)
    at_least = 0
    for _ in range(permutations):
        rng.shuffle(shuffled)
        if _best_split(np.asarray(shuffled), min_size)[1] >= observed - 1e-12 * abs(observed):
            at_least += 1
    p_value = (1 + at_least) / (1 + permutations)
    return (tau, p_value) if p_value < alpha else None


def change_points(
    series: Sequence[float],
    *,
    alpha: float = ALPHA,
    permutations: int = PERMUTATIONS,
    min_size: int = MIN_SIZE,
    seed: int = SEED,
) -> list[ChangePoint]:
    """The change points of ``series`` (oldest first), in index order; [] when there are none."""
    values = np.asarray([float(value) for value in series], dtype=float)
    if min_size < 1:
        raise ValueError("min_size must be at least 1")
    rng = random.Random(seed)
    found: list[tuple[int, float]] = []
    pending = [(0, len(values))]
    while pending:
        start, stop = pending.pop()
        split = _significant_split(values[start:stop], min_size, permutations, alpha, rng)
        if split is None:
            continue
        tau, p_value = split
        found.append((start + tau, p_value))
        pending.extend([(start, start + tau), (start + tau, stop)])
    found.sort()
    edges = [0] + [index for index, _ in found] + [len(values)]
    return [
        ChangePoint(
            index=index,
            mean_before=float(values[edges[k] : index].mean()),
            mean_after=float(values[index : edges[k + 2]].mean()),
            p_value=p_value,
        )
        for k, (index, p_value) in enumerate(found)
    ]
