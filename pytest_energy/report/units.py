"""Human-readable figures: SI-prefixed joules and compact usage counts."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pytest_energy.lifecycle import format_usage as format_usage  # MUI as scenarios are named

_PREFIXES = (
    (1e9, "GJ"),
    (1e6, "MJ"),
    (1e3, "kJ"),
    (1.0, "J"),
    (1e-3, "mJ"),
    (1e-6, "µJ"),
    (1e-9, "nJ"),
    (1e-12, "pJ"),
)


def format_joules(joules: float | None, digits: int = 3) -> str:
    """``1234.5`` → ``"1.23 kJ"``; ``None`` → ``"—"``."""
    if joules is None or (isinstance(joules, float) and math.isnan(joules)):
        return "—"
    if joules == 0:
        return "0 J"
    magnitude = abs(joules)
    for scale, unit in _PREFIXES:
        if magnitude >= scale:
            return f"{joules / scale:.{digits}g} {unit}"
    scale, unit = _PREFIXES[-1]
    return f"{joules / scale:.{digits}g} {unit}"


def format_fraction(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f} %"


JOULES_PER_KWH = 3.6e6
_KWH_PREFIXES = ((1e6, "GWh"), (1e3, "MWh"), (1.0, "kWh"))
_GRAM_PREFIXES = ((1e6, "t"), (1e3, "kg"), (1.0, "g"), (1e-3, "mg"), (1e-6, "µg"))


def format_energy(joules: float | None, digits: int = 3) -> str:
    """Totals as people read them: mJ, J and kJ below 1 kWh, then kWh, MWh, GWh.

    ``1234.5`` → ``"1.23 kJ"``, ``7.2e6`` → ``"2 kWh"``, ``None`` → ``"—"``. For joules per
    inferred sample use ``format_joules``, which goes down to mJ, µJ and nJ.
    """
    if joules is None or (isinstance(joules, float) and math.isnan(joules)):
        return "—"
    if abs(joules) < JOULES_PER_KWH:
        return format_joules(joules, digits)
    kwh = joules / JOULES_PER_KWH
    for scale, unit in _KWH_PREFIXES:
        if abs(kwh) >= scale:
            return f"{kwh / scale:.{digits}g} {unit}"
    return f"{kwh:.{digits}g} kWh"  # pragma: no cover - |kwh| ≥ 1 here


def format_grams(grams: float | None, digits: int = 3) -> str:
    """Mass of CO2e: ``0.0042`` → ``"4.2 mg"``, ``1530`` → ``"1.53 kg"``, ``None`` → ``"—"``."""
    if grams is None or (isinstance(grams, float) and math.isnan(grams)):
        return "—"
    if grams == 0:
        return "0 g"
    for scale, unit in _GRAM_PREFIXES:
        if abs(grams) >= scale:
            return f"{grams / scale:.{digits}g} {unit}"
    scale, unit = _GRAM_PREFIXES[-1]
    return f"{grams / scale:.{digits}g} {unit}"


def format_change(percent: float | None) -> str:
    """A relative change in percent, signed: ``12.34`` → ``"+12.3 %"``, ``None`` → ``"—"``."""
    if percent is None or (isinstance(percent, float) and not math.isfinite(percent)):
        return "—"
    if abs(percent) < 0.05:
        return "±0.0 %"
    return f"{percent:+.1f} %"


def format_count(count: float | None, digits: int = 2) -> str:
    """A computed MUI, e.g. a break-even: ``321456.7`` → ``"3.2e5"``, ``850.2`` → ``"850"``."""
    if count is None or not math.isfinite(count):
        return "—"
    if abs(count) < 1e4:
        return f"{count:.0f}" if abs(count) >= 1 else f"{count:.{digits}g}"
    mantissa, exponent = f"{count:.{digits - 1}e}".split("e")
    if "." in mantissa:
        mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent)}"


def format_mui(usage: float) -> str:
    """A usage as MUI scenarios are written: ``1e3``, ``1e6``, ``2e5``, ``1.5e7``; else as is."""
    if usage >= 1000:
        mantissa, exponent = f"{usage:.6e}".split("e")
        mantissa = mantissa.rstrip("0").rstrip(".")
        if len(mantissa.replace(".", "")) <= 2 and float(f"{mantissa}e{exponent}") == usage:
            return f"{mantissa}e{int(exponent)}"
    return format_usage(usage)


_SECOND_PREFIXES = ((1.0, "s"), (1e-3, "ms"), (1e-6, "µs"), (1e-9, "ns"))


def column_unit(
    values: Iterable[float | None], prefixes: Sequence[tuple[float, str]] = _PREFIXES
) -> tuple[float, str]:
    """One unit for a whole column: the prefix that suits its largest magnitude.

    ``[0.0844, 31.2]`` → ``(1.0, "J")``; ``[17.1e3, 568e3]`` → ``(1e3, "kJ")``. Every cell of a
    column is then written in that unit (``format_in``), so figures compare at a glance, and
    the terminal and the markdown, choosing from the same figures, agree.
    """
    magnitudes = [abs(v) for v in values if v is not None and math.isfinite(v) and v != 0]
    if not magnitudes:
        return next((prefix for prefix in prefixes if prefix[0] == 1.0), prefixes[0])
    largest = max(magnitudes)
    for scale, unit in prefixes:
        if largest >= scale:
            return scale, unit
    return prefixes[-1]


def format_in(value: float | None, unit: tuple[float, str], digits: int = 3) -> str:
    """``value`` in ``unit`` with ``digits`` significant digits (trailing zeros dropped), never
    in e-notation.

    ``format_in(0.0844, (1.0, "J"))`` → ``"0.0844 J"``; ``None`` → ``"—"``.
    """
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    scale, name = unit
    number = value / scale
    if number == 0:
        return f"0 {name}"
    exponent = math.floor(math.log10(abs(number)))
    decimals = max(0, digits - 1 - exponent)
    text = f"{number:.{decimals}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return f"{text} {name}"


def seconds_unit(values: Iterable[float | None]) -> tuple[float, str]:
    """One time unit for a column: s, ms, µs or ns."""
    return column_unit(values, _SECOND_PREFIXES)


def format_seconds(seconds: float | None, digits: int = 3) -> str:
    """A duration in its own unit: ``0.00123`` → ``"1.23 ms"``, ``75.2`` → ``"75.2 s"``."""
    if seconds is None:
        return "—"
    return format_in(seconds, seconds_unit([seconds]), digits)


def format_rate(per_second: float | None) -> str:
    """Samples per second: ``1234.5`` → ``"1.23k"``, ``12.3`` → ``"12.3"``."""
    if per_second is None or not math.isfinite(per_second):
        return "—"
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if per_second >= scale:
            return f"{per_second / scale:.3g}{suffix}"
    return f"{per_second:.3g}"


def format_latency(summary: Mapping[str, Any] | None, unit: tuple[float, str] | None = None) -> str:
    """Inference time per sample: the median over the rounds and its interquartile range.

    ``"0.358 ms (IQR 0.12)"``, in ``unit`` (default: the median's own unit); ``"—"`` without.
    """
    figures = (summary or {}).get("seconds_per_sample")
    if not figures:
        return "—"
    unit = unit or seconds_unit([figures["median"]])
    spread = format_in(figures["iqr"], unit, 2).rsplit(" ", 1)[0]
    return f"{format_in(figures['median'], unit)} (IQR {spread})"
