"""Parsing and validation of every user-given setting: flags, ini values, marker keywords.

Each parser raises ``ConfigError`` with a message that names the setting and says what a valid
value looks like, so the plugin can show it as a one-line pytest error.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pytest_energy.errors import ConfigError

DEFAULT_USAGE: tuple[float, ...] = (1e3, 1e6, 1e9)
DEFAULT_TOLERANCE = 0.05
DEFAULT_TAU = 1.0
DEFAULT_ROUNDS = 5
DEFAULT_WARMUP_CALLS = 1
TOLERANCE_QUANTITIES = ("train", "inference", "full_cycle")
LIFECYCLE_KEYWORDS = ("usage", "tolerance", "tau")
KNOWN_LABELS = ("family", "method", "model", "dataset", "task")
MARKER_KEYWORDS = (*LIFECYCLE_KEYWORDS, *KNOWN_LABELS)
"""Every keyword ``@pytest.mark.lifecycle`` knows; another keyword is a free label unless it
looks like a misspelling of one of these (``tolerence=``), which is refused."""
MAX_USAGE = 1e18
"""More inferences than a model can serve: a billion a second for thirty years is 1e18."""
MAX_CPU_WATTS_PER_THREAD = 500.0
"""No hardware thread draws more: the most power-hungry server CPUs stay under 10 W a thread."""


@dataclass(frozen=True)
class Tolerance:
    """Allowed relative rise per quantity before a change counts as a regression (0.05 = 5 %)."""

    train: float = DEFAULT_TOLERANCE
    inference: float = DEFAULT_TOLERANCE
    full_cycle: float = DEFAULT_TOLERANCE

    def as_dict(self) -> dict[str, float]:
        return {"train": self.train, "inference": self.inference, "full_cycle": self.full_cycle}


@dataclass(frozen=True)
class LifecycleSettings:
    """What one lifecycle test is judged on: usage scenarios, tolerance, τ and free labels."""

    usage: tuple[float, ...] = DEFAULT_USAGE
    tolerance: Tolerance = field(default_factory=Tolerance)
    tau: float = DEFAULT_TAU
    labels: Mapping[str, str] = field(default_factory=dict)


def _parse_fraction(value: Any, where: str) -> float:
    """A tolerance as a fraction: 0.05, "0.05", "5%" or "5 %"."""
    if isinstance(value, bool):
        raise ConfigError(f"{where}: expected a fraction such as 0.05 or 5%, got {value!r}")
    if isinstance(value, (int, float)):
        fraction = float(value)
    elif isinstance(value, str):
        text = value.strip()
        try:
            fraction = float(text[:-1].strip()) / 100 if text.endswith("%") else float(text)
        except ValueError:
            raise ConfigError(
                f"{where}: expected a fraction such as 0.05 or a percentage such as 5%, "
                f"got {value!r}"
            ) from None
    else:
        raise ConfigError(f"{where}: expected a fraction such as 0.05 or 5%, got {value!r}")
    if not math.isfinite(fraction) or fraction < 0:
        raise ConfigError(f"{where}: a tolerance must be a finite number ≥ 0, got {value!r}")
    # "5" or 5 reads as 500 %; the user almost surely meant 5 %. A float (1.5) is a fraction.
    bare = (isinstance(value, str) and not value.strip().endswith("%")) or isinstance(value, int)
    if bare and fraction >= 1:
        raise ConfigError(
            f"{where}: {value!r} is ambiguous: as a fraction it allows a {fraction:.0%} rise. "
            f"Write '{fraction:g}%' for {fraction:g} %, or '{fraction:.0%}' if you mean it"
        )
    return fraction


def parse_tolerance(
    value: Any, where: str = "tolerance", default: Tolerance | None = None
) -> Tolerance:
    """A tolerance for every quantity, or per quantity: ``{"train": 0.10, "inference": 0.05}``."""
    base = default or Tolerance()
    if isinstance(value, Tolerance):
        return value
    if isinstance(value, Mapping):
        unknown = sorted(set(value) - set(TOLERANCE_QUANTITIES))
        if unknown:
            raise ConfigError(
                f"{where}: unknown quantity {', '.join(map(repr, unknown))}; "
                f"use {', '.join(TOLERANCE_QUANTITIES)}"
            )
        parts = {key: _parse_fraction(val, f"{where}[{key!r}]") for key, val in value.items()}
        return Tolerance(**{**base.as_dict(), **parts})
    fraction = _parse_fraction(value, where)
    return Tolerance(fraction, fraction, fraction)


def parse_usage(value: Any, where: str = "usage") -> tuple[float, ...]:
    """MUI scenarios, inferences over a model's life: ``[1e3, 1e6]``, "1e3 1e6" or "1e3,1e6"."""
    if isinstance(value, str):
        items: Iterable[Any] = [part for part in re.split(r"[\s,]+", value.strip()) if part]
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        items = [value]
    elif isinstance(value, Iterable):
        items = list(value)
    else:
        raise ConfigError(
            f"{where}: expected a list of inference counts such as [1e3, 1e6], got {value!r}"
        )
    usage: list[float] = []
    for item in items:
        try:
            if isinstance(item, bool):
                raise ValueError
            number = float(item)
        except (TypeError, ValueError):
            raise ConfigError(
                f"{where}: {item!r} is not a number of inferences (use e.g. 1e6)"
            ) from None
        if not math.isfinite(number) or not 0 <= number <= MAX_USAGE:
            raise ConfigError(
                f"{where}: usage must be a count of inferences from 0 to {MAX_USAGE:g}, "
                f"got {item!r}"
            )
        usage.append(number)
    if not usage:
        raise ConfigError(f"{where}: give at least one usage, e.g. [1e3, 1e6, 1e9]")
    return tuple(sorted(set(usage)))


def parse_number(
    value: Any,
    where: str,
    expected: str,
    minimum: float = -math.inf,
    maximum: float = math.inf,
    inclusive: bool = True,
) -> float:
    """A finite real number within bounds; the error names ``where`` and what was ``expected``."""
    try:
        if isinstance(value, bool):
            raise ValueError
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: expected {expected}, got {value!r}") from None
    within = minimum <= number <= maximum if inclusive else minimum < number < maximum
    if not math.isfinite(number) or not within:
        raise ConfigError(f"{where}: expected {expected}, got {value!r}")
    return number


def parse_tau(value: Any, where: str = "tau") -> float:
    """τ ≥ 0, the weight of accuracy in greenness Acc^τ / E(MUI)."""
    return parse_number(value, where, "τ, a finite number ≥ 0 such as 1", minimum=0.0)


def parse_cpu_watts(value: Any, where: str = "--energy-cpu-watts") -> float:
    """Watts per busy hardware thread for the cputime meter: finite, > 0, physically possible."""
    expected = (
        f"watts per hardware thread, a number > 0 and ≤ {MAX_CPU_WATTS_PER_THREAD:g} "
        f"(a CPU's TDP divided by its threads, e.g. 4)"
    )
    watts = parse_number(value, where, expected, 0.0, MAX_CPU_WATTS_PER_THREAD)
    if watts <= 0:
        raise ConfigError(f"{where}: expected {expected}, got {value!r}")
    return watts


def check_marker_keyword(key: str, where: str) -> None:
    """Refuse a keyword that looks like a misspelled known one, with the suggestion."""
    if key in MARKER_KEYWORDS:
        return
    close = difflib.get_close_matches(key, MARKER_KEYWORDS, n=1, cutoff=0.75)
    if close:
        raise ConfigError(
            f"{where}: unknown lifecycle keyword {key}=; did you mean {close[0]}=? "
            f"(known: {', '.join(MARKER_KEYWORDS)}; other keywords are free labels)"
        )


def parse_positive_int(value: Any, where: str) -> int:
    try:
        if isinstance(value, bool):
            raise ValueError
        number = int(value)
        if number != float(value):
            raise ValueError
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: expected a whole number ≥ 1, got {value!r}") from None
    if number < 1:
        raise ConfigError(f"{where}: expected a whole number ≥ 1, got {value!r}")
    return number


def lifecycle_settings(
    marker_args: tuple[Any, ...],
    marker_kwargs: Mapping[str, Any],
    defaults: LifecycleSettings,
    where: str,
) -> LifecycleSettings:
    """Merge a ``@pytest.mark.lifecycle(...)`` marker over the ini/command-line defaults."""
    if marker_args:
        raise ConfigError(
            f"{where}: @pytest.mark.lifecycle takes keywords only "
            f"(usage=, tolerance=, tau=, family=, method=, ...), got positional {marker_args!r}"
        )
    usage = defaults.usage
    tolerance = defaults.tolerance
    tau = defaults.tau
    labels = dict(defaults.labels)
    for key, value in marker_kwargs.items():
        check_marker_keyword(key, where)
        if key == "usage":
            usage = parse_usage(value, f"{where}: lifecycle(usage=...)")
        elif key == "tolerance":
            tolerance = parse_tolerance(value, f"{where}: lifecycle(tolerance=...)", tolerance)
        elif key == "tau":
            tau = parse_tau(value, f"{where}: lifecycle(tau=...)")
        elif isinstance(value, (str, int, float)) and not isinstance(value, bool):
            labels[key] = str(value)
        else:
            raise ConfigError(
                f"{where}: lifecycle label {key}= must be a string or number, got {value!r}"
            )
    return LifecycleSettings(usage=usage, tolerance=tolerance, tau=tau, labels=labels)
