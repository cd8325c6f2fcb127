"""The table printed at the end of a ``--energy`` run: one block per family, one row per meter."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tabulate import tabulate

from pytest_energy.report.units import format_fraction, format_joules, format_usage


def _usage_columns(tests: Mapping[str, Mapping[str, Any]]) -> list[float]:
    return sorted({float(mui) for result in tests.values() for mui in result.get("usage", [])})


def _method_name(nodeid: str, result: Mapping[str, Any]) -> str:
    return result.get("labels", {}).get("method") or nodeid.rsplit("::", 1)[-1]


def group_by_family(tests: Mapping[str, Mapping[str, Any]]) -> dict[str, list[str]]:
    """Node ids per family label (``"—"`` for unlabelled tests), families and methods sorted."""
    groups: dict[str, list[str]] = {}
    for nodeid, result in tests.items():
        groups.setdefault(result.get("labels", {}).get("family", "—"), []).append(nodeid)
    return {
        family: sorted(groups[family], key=lambda nodeid: _method_name(nodeid, tests[nodeid]))
        for family in sorted(groups)
    }


def summary_rows(
    nodeids: list[str], tests: Mapping[str, Mapping[str, Any]], usage_columns: list[float]
) -> list[list[str]]:
    rows = []
    for nodeid in nodeids:
        result = tests[nodeid]
        labels = result.get("labels", {})
        for meter, view in result.get("meters", {}).items():
            full_cycle = {entry["usage"]: entry["joules"] for entry in view.get("full_cycle", [])}
            rows.append(
                [
                    _method_name(nodeid, result),
                    labels.get("model", ""),
                    format_fraction(result.get("accuracy")),
                    f"{meter} ({view['kind']})",
                    format_joules(view.get("tec_joules")),
                    format_joules(view.get("iec_joules_per_sample")),
                    *(
                        format_joules(full_cycle[mui]) if mui in full_cycle else ""
                        for mui in usage_columns
                    ),
                ]
            )
    return rows


def summary_table(tests: Mapping[str, Mapping[str, Any]]) -> str:
    """Per family: method, model, accuracy, meter (kind), TEC, IEC and E(MUI) per usage."""
    usage_columns = _usage_columns(tests)
    headers = [
        "method",
        "model",
        "accuracy",
        "meter (kind)",
        "TEC",
        "IEC / sample",
        *(f"E(MUI={format_usage(mui)})" for mui in usage_columns),
    ]
    blocks = []
    for family, nodeids in group_by_family(tests).items():
        rows = summary_rows(nodeids, tests, usage_columns)
        blocks.append(
            f"family: {family}\n" + tabulate(rows, headers=headers, disable_numparse=True)
        )
    return "\n\n".join(blocks)
