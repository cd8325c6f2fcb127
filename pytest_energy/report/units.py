"""Human-readable figures: SI-prefixed joules and compact usage counts."""

from __future__ import annotations

import math

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


def format_usage(usage: float) -> str:
    """``1e6`` → ``"1e6"``, ``1500`` → ``"1500"``: how MUI scenarios are usually written."""
    if usage >= 1e4 and float(usage).is_integer():
        exponent = math.floor(math.log10(usage))
        mantissa = usage / 10**exponent
        if float(mantissa).is_integer():
            return f"{int(mantissa)}e{exponent}" if mantissa != 1 else f"1e{exponent}"
    return f"{usage:g}"


def format_fraction(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f} %"
