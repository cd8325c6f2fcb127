"""Where a model's inference energy goes: counted's per-operator and per-module breakdown.

``CountedMeter(breakdown=True)`` puts ``details["by_operator"]`` (op → calls, flops, bytes,
joules) and ``details["by_module"]`` (module path → flops, bytes, joules) on its reading.
``--energy-breakdown [N]`` asks for it: the figures go, per inferred sample, into the test's
inference record (``meters.counted.inference.breakdown``) and the terminal prints the top N.
A counted meter without that option still counts FLOPs per operator
(``details["flops_by_operator"]``): the breakdown then holds FLOPs only, and says so.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from pytest_energy.errors import ConfigError
from pytest_energy.meters.base import Reading

OPTION = "--energy-breakdown"
DEFAULT_TOP = 10
FLOPS_ONLY = (
    "FLOPs per operator only (this counted meter gives no per-operator joules or per-module "
    "figures)"
)


def check_breakdown(top: int | None, meter_names: list[str]) -> None:
    """One line when ``--energy-breakdown`` cannot work: a bad N or no counted meter."""
    if top is None:
        return
    if top < 1:
        raise ConfigError(f"{OPTION}: N must be a positive number of rows, got {top}")
    if "counted" not in meter_names:
        used = ", ".join(meter_names) or "none"
        wanted = ",".join([*meter_names, "counted"])
        raise ConfigError(
            f"{OPTION}: only the counted meter breaks energy down by operator and module, and "
            f"this run uses {used}; add it, e.g. --energy-meter {wanted}"
        )


def counted_accepts_breakdown(meter_class: type) -> bool:
    """Whether this ``CountedMeter`` takes ``breakdown=`` (older ones count FLOPs only)."""
    try:
        return "breakdown" in inspect.signature(meter_class).parameters
    except (TypeError, ValueError):
        return False


def _per_sample(table: Mapping[str, Mapping[str, Any]], samples: int) -> dict[str, dict]:
    return {
        name: {
            key: (value if key == "calls" else value / samples)
            for key, value in figures.items()
            if isinstance(value, (int, float))
        }
        for name, figures in table.items()
    }


def inference_breakdown(reading: Reading, samples: int) -> dict[str, Any] | None:
    """The breakdown of one counted inference window, per inferred sample (``None``: nothing)."""
    details = reading.details or {}
    samples = max(1, samples)
    if details.get("by_operator") or details.get("by_module"):
        return {
            "by_operator": _per_sample(details.get("by_operator") or {}, samples),
            "by_module": _per_sample(details.get("by_module") or {}, samples),
            "per": "sample",
        }
    flops = details.get("flops_by_operator")
    if not flops:
        return None
    return {
        "by_operator": {op: {"flops": value / samples} for op, value in flops.items()},
        "per": "sample",
        "note": FLOPS_ONLY,
    }


def top_entries(table: Mapping[str, Mapping[str, float]], n: int) -> list[tuple[str, dict]]:
    """The ``n`` largest entries by joules, else by FLOPs, largest first."""

    def size(item: tuple[str, Mapping[str, float]]) -> tuple[float, float]:
        figures = item[1]
        return (figures.get("joules") or 0.0, figures.get("flops") or 0.0)

    return [
        (name, dict(figures)) for name, figures in sorted(table.items(), key=size, reverse=True)
    ][:n]
