"""The table printed at the end of a ``--energy`` run: one block per family, one row per meter;
and the gate's findings as terminal lines (``summary_lines``).

With several tasks (``report.tasks``: a ``task`` or ``dataset`` label, or a reference's model
lineage) each task gets its own heading and family blocks; within a test the gating meter's
row comes first.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tabulate import tabulate

from pytest_energy.gate.compare import ComparisonReport, QuantityComparison
from pytest_energy.latency import latency_summary
from pytest_energy.report.model import default_gate
from pytest_energy.report.tasks import assign_tasks, task_order
from pytest_energy.report.units import (
    column_unit,
    format_fraction,
    format_in,
    format_joules,
    format_latency,
    format_rate,
    format_usage,
    seconds_unit,
)


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


@dataclass(frozen=True)
class ColumnUnits:
    """The unit of each energy and time column of one task's table (see ``column_units``)."""

    tec: tuple[float, str]
    iec: tuple[float, str]
    full_cycle: Mapping[float, tuple[float, str]]
    latency: tuple[float, str]
    train: tuple[float, str]


def column_units(
    tests: Mapping[str, Mapping[str, Any]], usage_columns: Sequence[float]
) -> ColumnUnits:
    """One unit per column from all of a task's figures (every meter), so the terminal and the
    markdown, choosing from the same figures, write the same figure in the same unit."""
    views = [view for result in tests.values() for view in result.get("meters", {}).values()]
    latencies = [test_latency(result) or {} for result in tests.values()]
    return ColumnUnits(
        tec=column_unit(view.get("tec_joules") for view in views),
        iec=column_unit(view.get("iec_joules_per_sample") for view in views),
        full_cycle={
            mui: column_unit(
                entry["joules"]
                for view in views
                for entry in view.get("full_cycle", [])
                if entry["usage"] == mui
            )
            for mui in usage_columns
        },
        latency=seconds_unit(
            (latency.get("seconds_per_sample") or {}).get("median") for latency in latencies
        ),
        train=seconds_unit(train_seconds(latency) for latency in latencies),
    )


def train_seconds(latency: Mapping[str, Any]) -> float | None:
    """Wall-clock seconds of the work in TEC: the test's phases and the work charged to it."""
    if not latency or "train_seconds" not in latency:
        return None
    return float(latency["train_seconds"] + latency.get("charged_seconds", 0.0))


def test_latency(result: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The test's time figures: as recorded, else computed from its rounds (older files)."""
    return result.get("latency") or latency_summary(result)


def summary_rows(
    nodeids: list[str],
    tests: Mapping[str, Mapping[str, Any]],
    usage_columns: list[float],
    gate: Sequence[str] = (),
    units: ColumnUnits | None = None,
) -> list[list[str]]:
    """One row per test × meter (gating meter first); time figures on a test's first row."""
    units = units or column_units(tests, usage_columns)
    rows = []
    for nodeid in nodeids:
        result = tests[nodeid]
        labels = result.get("labels", {})
        latency = test_latency(result) or {}
        for position, (meter, view) in enumerate(
            meters_gating_first(result.get("meters", {}), gate)
        ):
            full_cycle = {entry["usage"]: entry["joules"] for entry in view.get("full_cycle", [])}
            first = position == 0
            rows.append(
                [
                    _method_name(nodeid, result),
                    labels.get("model", ""),
                    format_fraction(result.get("accuracy")),
                    f"{meter} ({view['kind']})",
                    format_in(view.get("tec_joules"), units.tec),
                    format_in(view.get("iec_joules_per_sample"), units.iec),
                    *(
                        format_in(full_cycle[mui], units.full_cycle[mui])
                        if mui in full_cycle
                        else ""
                        for mui in usage_columns
                    ),
                    format_latency(latency, units.latency) if first else "",
                    format_rate(latency.get("samples_per_second")) if first else "",
                    format_in(train_seconds(latency), units.train) if first else "",
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
        "time / sample",
        "samples/s",
        "train time",
    ]
    units = column_units(tests, usage_columns)
    blocks = []
    for family, nodeids in group_by_family(tests).items():
        rows = summary_rows(nodeids, tests, usage_columns, gate, units)
        blocks.append(
            f"family: {family}\n" + tabulate(rows, headers=headers, disable_numparse=True)
        )
    return "\n\n".join(blocks)


# --- the gate's comparison as terminal lines --------------------------------------------------


def _format_value(value: float | None, unit: str) -> str:
    if value is None:
        return "—"
    if unit == "1/J":
        return f"{value:.3g} /J"
    return format_joules(value) + ("/sample" if unit == "J/sample" else "")


def describe_change(quantity: QuantityComparison) -> str:
    """``IEC +20.1 % (1.2 µJ → 1.44 µJ, tolerance 5 %)``."""
    change = "—" if quantity.change_percent is None else f"{quantity.change_percent:+.1f} %"
    figures = (
        f"{_format_value(quantity.baseline, quantity.unit)} → "
        f"{_format_value(quantity.current, quantity.unit)}"
    )
    tolerance = (
        ""
        if quantity.tolerance_percent is None
        else f", tolerance {quantity.tolerance_percent:g} %"
    )
    detectable = (
        ""
        if quantity.detectable_percent is None
        else f", could detect ≥ {quantity.detectable_percent:.0f} %"
    )
    return f"{quantity.label} {change} ({figures}{tolerance}{detectable})"


def _first_three(nodeids: Sequence[str]) -> str:
    return ", ".join(nodeids[:3]) + (", ..." if len(nodeids) > 3 else "")


def summary_lines(
    report: ComparisonReport,
    fail_on_improvement: bool = False,
    verbose: bool = False,
    collected: Collection[str] | None = None,
) -> list[str]:
    """Plain-text lines for a terminal: each finding with its quantities, then the counts.

    Meters that do not gate are counted in one line each unless ``verbose``: on a shared
    machine their noise would otherwise bury the findings that decide the exit status.
    ``collected``: the node ids this session collected, so that baseline tests it did not
    collect (deselected with ``-k``/``-m``, or gone) are told apart from those that ran and did
    not pass.
    """
    lines = []
    not_gating: dict[str, Counter[str]] = {}
    for test in report.tests:
        for meter in test.meters:
            if not meter.gating and not verbose:
                tallied = "cannot judge" if meter.too_few_sessions else meter.verdict
                not_gating.setdefault(meter.meter, Counter())[tallied] += 1
                continue
            where = f"{test.nodeid} [{meter.meter}{'' if meter.gating else ', not gating'}]"
            against = f" vs {meter.baseline_source}" if meter.baseline_source else ""
            if meter.verdict == "regressed":
                lines.append(f"REGRESSED {where}{against}")
                lines += [f"    {describe_change(q)}" for q in meter.judged("regressed")]
            elif meter.verdict == "improved":
                fails = fail_on_improvement and meter.gating
                lines.append(
                    f"improved  {where}{against}: "
                    + ("fails the run (--energy-fail-on-improvement); " if fails else "")
                    + "the baseline is stale, refresh it with --energy-save"
                )
                lines += [f"    {describe_change(q)}" for q in meter.judged("improved")]
            elif meter.verdict == "incomparable":
                lines.append(f"incomparable {where}{against}: {meter.reason}")
            elif meter.verdict == "new" and meter.gating:
                lines.append(f"new       {where}: {meter.reason} (record one with --energy-save)")
            elif meter.verdict == "unchanged" and meter.detection:
                lines.append(f"unchanged {where}{against}")
            if meter.detection and meter.verdict in ("regressed", "improved", "unchanged"):
                lines.append(f"    {meter.detection}")
            lines += [f"warning   {where}: {warning}" for warning in meter.warnings]
    ran = [nodeid for nodeid in report.not_run if collected is None or nodeid in collected]
    deselected = [nodeid for nodeid in report.not_run if nodeid not in ran]
    if ran:
        lines.append(
            f"not run   {len(ran)} test(s) of the baseline did not pass in this run "
            f"({_first_three(ran)})"
        )
    if deselected:
        lines.append(
            f"deselected {len(deselected)} test(s) of the baseline were not collected in this "
            f"run ({_first_three(deselected)}); --energy-save --energy-prune drops those that "
            f"no longer exist"
        )
    for name, verdicts in not_gating.items():
        tally = ", ".join(f"{count} {verdict}" for verdict, count in sorted(verdicts.items()))
        lines.append(f"not gating {name}: {tally} (each finding with -v)")
    counts = ", ".join(f"{count} {verdict}" for verdict, count in report.counts().items() if count)
    how = f" ({report.provenance})" if report.provenance else ""
    lines.append(f"gate {', '.join(report.gate) or '(none)'}{how}: {counts or 'no tests'}")
    return lines
