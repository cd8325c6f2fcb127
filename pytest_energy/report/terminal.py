"""The table printed at the end of a ``--energy`` run: one block per family, one row per meter.

With several tasks (``report.tasks``: a ``task`` or ``dataset`` label, or a reference's model
lineage) each task gets its own heading and family blocks; within a test the gating meter's
row comes first.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from tabulate import tabulate

from pytest_energy.report.model import default_gate
from pytest_energy.report.tasks import assign_tasks, task_order
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


def meters_gating_first(
    meters: Mapping[str, Mapping[str, Any]], gate: Sequence[str]
) -> list[tuple[str, Mapping[str, Any]]]:
    """A test's (meter, view) pairs: gating meters first, then the others, each by name."""
    return sorted(meters.items(), key=lambda item: (item[0] not in gate, item[0]))


def summary_rows(
    nodeids: list[str],
    tests: Mapping[str, Mapping[str, Any]],
    usage_columns: list[float],
    gate: Sequence[str] = (),
) -> list[list[str]]:
    rows = []
    for nodeid in nodeids:
        result = tests[nodeid]
        labels = result.get("labels", {})
        for meter, view in meters_gating_first(result.get("meters", {}), gate):
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


def summary_table(
    tests: Mapping[str, Mapping[str, Any]],
    gate: Sequence[str] | None = None,
    reference: str | None = None,
) -> str:
    """Per task and family: method, model, accuracy, meter (kind), TEC, IEC, E(MUI) per usage.

    ``gate``: the meters that gate (default: as the gate picks them, measured, else counted,
    else estimated); their rows lead each test. ``reference``: ``--energy-reference``, which
    may name per-task references that decide a task's lineage.
    """
    if gate is None:
        gate = default_gate(
            {
                meter: str(view.get("kind", ""))
                for result in tests.values()
                for meter, view in result.get("meters", {}).items()
            }
        )
    tasks = assign_tasks(tests, reference)
    ordered = task_order(tasks)
    if len(ordered) <= 1:
        return _task_table(tests, gate)
    return "\n\n".join(
        f"task: {task}\n" + _task_table({n: r for n, r in tests.items() if tasks[n] == task}, gate)
        for task in ordered
    )


def _task_table(tests: Mapping[str, Mapping[str, Any]], gate: Sequence[str]) -> str:
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
        rows = summary_rows(nodeids, tests, usage_columns, gate)
        blocks.append(
            f"family: {family}\n" + tabulate(rows, headers=headers, disable_numparse=True)
        )
    return "\n\n".join(blocks)
