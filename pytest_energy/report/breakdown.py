"""The ``--energy-breakdown`` tables: the top N operators and modules of each test's inference."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tabulate import tabulate

from pytest_energy.breakdown import top_entries
from pytest_energy.report.units import column_unit, format_count, format_in


def _share(part: float | None, whole: float) -> str:
    return "—" if part is None or whole <= 0 else f"{100 * part / whole:.1f} %"


def breakdown_table(table: Mapping[str, Mapping[str, float]], what: str, n: int) -> str:
    """Top ``n`` rows of one breakdown (operators or modules), per inferred sample."""
    rows = top_entries(table, n)
    has_joules = any("joules" in figures for _, figures in rows)
    total_joules = sum(f.get("joules") or 0.0 for f in table.values())
    total_flops = sum(f.get("flops") or 0.0 for f in table.values())
    unit = column_unit(figures.get("joules") for _, figures in rows)
    headers = [what, "calls", "FLOPs", "bytes"]
    headers += ["joules", "share of joules"] if has_joules else ["share of FLOPs"]
    body = []
    for name, figures in rows:
        cells = [
            name,
            format_count(figures.get("calls")) if "calls" in figures else "",
            format_count(figures.get("flops")),
            format_count(figures.get("bytes")) if "bytes" in figures else "",
        ]
        if has_joules:
            cells += [
                format_in(figures.get("joules"), unit),
                _share(figures.get("joules"), total_joules),
            ]
        else:
            cells.append(_share(figures.get("flops"), total_flops))
        body.append(cells)
    return tabulate(body, headers=headers, disable_numparse=True)


def breakdown_report(tests: Mapping[str, Mapping[str, Any]], n: int) -> list[str]:
    """Lines for the terminal: per test, its top ``n`` operators and modules per sample."""
    lines: list[str] = []
    for nodeid in sorted(tests):
        view = (tests[nodeid].get("meters") or {}).get("counted") or {}
        breakdown = (view.get("inference") or {}).get("breakdown")
        if not breakdown:
            continue
        lines += ["", f"inference breakdown of {nodeid} (counted, per sample), top {n}:"]
        if breakdown.get("note"):
            lines.append(f"  {breakdown['note']}")
        for key, what in (("by_operator", "operator"), ("by_module", "module")):
            if breakdown.get(key):
                lines += breakdown_table(breakdown[key], what, n).splitlines()
    return lines
