"""The pull-request comment: a markdown report of one run, with or without a baseline.

It reads top-down the way a reviewer asks: did anything cost more energy over its life (the
headline), measured how and where (environment), which methods and by how much at which usage
(a table per family, regressions first, unchanged rows folded), who wins at each usage and where
the break-even points lie (lifecycle view, with a Mermaid chart GitHub draws in place), and what
that means in CO2e (carbon).

GitHub refuses comments over 65,536 characters (counted in UTF-16 code units). The renderer
first drops detail (the per-method carbon table, unchanged rows reduced to names, fewer chart
lines), then shows fewer rows per table with a note, and as a last resort cuts the text with a
note; ``MARKER`` stays first so the CI job can find and update its own comment.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from pytest_energy.carbon import CarbonIntensity
from pytest_energy.gate.compare import QuantityComparison
from pytest_energy.report.model import (
    BreakEven,
    MeterLifecycle,
    Report,
    Row,
    build_report,
)
from pytest_energy.report.units import (
    column_unit,
    format_change,
    format_count,
    format_fraction,
    format_grams,
    format_in,
    format_joules,
    format_latency,
    format_mui,
    format_rate,
    seconds_unit,
)

MARKER = "<!-- pytest-energy -->"
"""First line of every report: the CI job finds its own pull-request comment by it."""
GITHUB_COMMENT_LIMIT = 65_536
"""GitHub's limit on a comment body, in UTF-16 code units."""
DEFAULT_MAX_CHARS = 65_000
"""A margin under the limit for what the CI job wraps around the report."""

VERDICT_LABELS = {
    "regressed": "🔴 regressed",
    "incomparable": "⚠️ incomparable",
    "improved": "🟢 improved",
    "new": "🆕 new",
    "unchanged": "⚪ unchanged",
}
_HEADLINE_WORDS = {
    "regressed": ("regression", "regressions"),
    "improved": ("improvement", "improvements"),
    "incomparable": ("incomparable", "incomparable"),
    "new": ("new", "new"),
    "unchanged": ("unchanged", "unchanged"),
}
_HEADLINE_ORDER = ("regressed", "improved", "incomparable", "new", "unchanged")
_KIND_MEANING = {
    "measured": "hardware energy counter",
    "estimated": "modelled from measured time",
    "counted": "deterministic count of operations × energy per operation",
}
CHART_COLOURS = (
    ("#1f77b4", "🟦"),
    ("#ff7f0e", "🟧"),
    ("#2ca02c", "🟩"),
    ("#d62728", "🟥"),
    ("#9467bd", "🟪"),
    ("#8c564b", "🟫"),
    ("#e6b800", "🟨"),
    ("#333333", "⬛"),
)
"""Mermaid line colours and the emoji square that names each in the legend under the chart."""


def utf16_length(text: str) -> int:
    """Length as GitHub counts it (UTF-16 code units: an emoji outside the BMP counts twice)."""
    return len(text.encode("utf-16-le")) // 2


@dataclass(frozen=True)
class Detail:
    """How much a rendering shows; the renderer lowers it step by step to fit the limit."""

    carbon_table: bool = True
    unchanged_rows: bool = True
    other_meters: bool = True
    chart_lines: int = len(CHART_COLOURS)
    rows_per_table: int | None = None


_DETAIL_STEPS = (
    Detail(),
    Detail(carbon_table=False),
    Detail(carbon_table=False, other_meters=False),
    Detail(carbon_table=False, other_meters=False, unchanged_rows=False),
    Detail(carbon_table=False, other_meters=False, unchanged_rows=False, chart_lines=4),
)
"""Detail dropped first: the per-method carbon table, then the meters that do not gate (their
rows and lifecycle views), then the figures of unchanged rows (their names stay), then chart
lines. Only then are rows per table limited."""


# --- small pieces ---------------------------------------------------------------------------


def _cell(text: Any) -> str:
    """Table-safe text: pipes escaped, newlines flattened."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def _table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    lines = [
        "| " + " | ".join(_cell(header) for header in headers) + " |",
        "|" + "|".join(" --- " for _ in headers) + "|",
    ]
    lines += ["| " + " | ".join(_cell(value) for value in row) + " |" for row in rows]
    return lines


def _plural(count: int, verdict: str) -> str:
    singular, plural = _HEADLINE_WORDS[verdict]
    return f"{count} {singular if count == 1 else plural}"


def _percent(fraction: float) -> str:
    return f"{100 * fraction:.3g} %"


def _tolerance_text(report: Report) -> str:
    tolerances = report.tolerances()
    if not tolerances:
        return "default tolerance"
    if len(tolerances) == 1:
        return f"{_percent(tolerances[0])} tolerance"
    return f"{_percent(tolerances[0])}–{_percent(tolerances[-1])} tolerance"


def gated_on(report: Report) -> str:
    """``counted energy``, ``measured energy (nvml, rapl)``: the kind and meters that gate."""
    kinds = report.meter_kinds()
    gate = list(report.gate)
    gate_kinds = sorted({kinds.get(meter, "") for meter in gate} - {""})
    text = " and ".join(gate_kinds) + " energy" if gate_kinds else "energy"
    if gate and gate != gate_kinds:
        text += f" ({', '.join(gate)})"
    return text


def headline(report: Report) -> str:
    """One line that agrees with the rows: counts per verdict, what was gated and how tightly."""
    counts = report.verdict_counts()
    total = sum(counts.values())
    if not report.has_baseline:
        if total == 0:
            return "⚡ **no baseline**: no lifecycle result was measured"
        noun = "result" if total == 1 else "results"
        return (
            f"🆕 **no baseline**: {total} new {noun} — measured with {gated_on(report)}, "
            f"nothing to compare with"
        )
    parts = [_plural(counts[verdict], verdict) for verdict in _HEADLINE_ORDER if counts[verdict]]
    if not parts:
        parts = ["no results"]
    icon = "❌" if counts["regressed"] else ("⚠️" if counts["incomparable"] else "✅")
    text = ", ".join(parts)
    return f"{icon} **{text}** — gated on {gated_on(report)}, {_tolerance_text(report)}"


def _environment(report: Report) -> list[str]:
    lines = ["**Environment**", ""]
    kinds = report.meter_kinds()
    described = {str(meter.get("name")): meter for meter in report.meters}
    for name, kind in sorted(kinds.items()):
        extra = described.get(name, {})
        source = extra.get("watts_source") or extra.get("source") or ""
        meaning = _KIND_MEANING.get(kind, "")
        text = f"- meter `{name}`: **{kind}**" + (f" ({meaning})" if meaning else "")
        text += ", gates" if name in report.gate else ", shown, does not gate"
        lines.append(text + (f"; {source}" if source else ""))
    machine = report.machine
    hardware = []
    if machine.get("cpu_model"):
        threads = machine.get("cpu_threads")
        hardware.append(f"{machine['cpu_model']}" + (f" ({threads} threads)" if threads else ""))
    gpus = machine.get("gpus") or machine.get("gpu")
    if gpus:
        names = gpus if isinstance(gpus, list) else [gpus]
        hardware.append(
            ", ".join(
                str(gpu.get("name", gpu)) if isinstance(gpu, Mapping) else str(gpu) for gpu in names
            )
        )
    if machine.get("platform"):
        hardware.append(str(machine["platform"]))
    versions = machine.get("versions") or {}
    software = [f"{name} {version}" for name, version in versions.items() if version]
    if machine.get("python"):
        software.insert(0, f"Python {machine['python']}")
    if hardware:
        lines.append(f"- hardware: {'; '.join(hardware)}")
    if software:
        lines.append(f"- software: {', '.join(software)}")
    lines.append(f"- baseline: {_baseline_text(report)}")
    lines.append(f"- carbon: {report.carbon.describe()}")
    if report.created:
        lines.append(f"- measured: {report.created}")
    return lines


def _listed(values: Sequence[str], limit: int = 3) -> str:
    shown = ", ".join(f"`{value}`" for value in values[:limit])
    return shown + (f" and {len(values) - limit} more" if len(values) > limit else "")


def _baseline_text(report: Report) -> str:
    if not report.has_baseline:
        return "none yet (every result is new; record one with `--energy-save`)"
    baseline = report.baseline
    parts = []
    if baseline.profiles:
        parts.append(f"profile {_listed(baseline.profiles)}")
    if baseline.sources:
        parts.append(f"file {_listed(baseline.sources)}")
    if baseline.commits:
        parts.append(f"commit {_listed([commit[:12] for commit in baseline.commits])}")
    if baseline.dates:
        first, last = baseline.dates[0], baseline.dates[-1]
        parts.append(f"recorded {first}" + (f" to {last}" if last != first else ""))
    return ", ".join(parts) if parts else "given (file not named)"


# --- result tables --------------------------------------------------------------------------


@dataclass(frozen=True)
class RowUnits:
    """One unit per energy column of a task's tables, as the terminal chooses them."""

    tec: tuple[float, str]
    iec: tuple[float, str]
    full_cycle: Mapping[float, tuple[float, str]]


def row_units(rows: Sequence[Row], usage: Sequence[float]) -> RowUnits:
    """Units chosen from every row of a task (all meters), like ``terminal.column_units``."""
    return RowUnits(
        tec=column_unit(row.tec_joules for row in rows),
        iec=column_unit(row.iec_joules_per_sample for row in rows),
        full_cycle={
            mui: column_unit(row.full_cycle_joules.get(mui) for row in rows) for mui in usage
        },
    )


def _energy_cell(row: Row, usage: float, units: RowUnits) -> str:
    joules = row.full_cycle_joules.get(usage)
    if usage not in row.full_cycle_joules:
        return ""
    return _figure_cell(format_in(joules, units.full_cycle[usage]), row.change(usage))


def _figure_cell(text: str, change: QuantityComparison | None) -> str:
    if change is None or change.change_percent is None:
        return text
    text += f" ({format_change(change.change_percent)})"
    return f"**{text}**" if change.verdict == "regressed" else text


def _row_cells(row: Row, usage: Sequence[float], units: RowUnits | None = None) -> list[str]:
    verdict = VERDICT_LABELS.get(row.verdict, row.verdict)
    if row.note:
        verdict += f": {row.note}"
    units = units or row_units([row], usage)
    return [
        row.method,
        row.model,
        format_fraction(row.accuracy),
        f"`{row.meter}` ({row.kind})",
        _figure_cell(format_in(row.tec_joules, units.tec), row.tec_change),
        _figure_cell(format_in(row.iec_joules_per_sample, units.iec), row.iec_change),
        *(_energy_cell(row, mui, units) for mui in usage),
        verdict,
    ]


def _row_headers(report: Report) -> list[str]:
    change = " (change)" if report.comparison is not None else ""
    return [
        "method",
        "model",
        "accuracy",
        "meter (kind)",
        f"TEC{change}",
        f"IEC / sample{change}",
        *(f"E(MUI={format_mui(mui)}){change}" for mui in report.usage),
        "verdict",
    ]


def _limited(rows: Sequence[Row], limit: int | None) -> tuple[Sequence[Row], int]:
    if limit is None or len(rows) <= limit:
        return rows, 0
    return rows[:limit], len(rows) - limit


def _rows_table(rows: Sequence[Row], report: Report, limit: int | None, what: str) -> list[str]:
    shown, hidden = _limited(rows, limit)
    tasks = {row.task for row in rows}
    units = row_units([row for row in report.rows if row.task in tasks], report.usage)
    lines = _table(_row_headers(report), (_row_cells(row, report.usage, units) for row in shown))
    if hidden:
        lines += ["", f"_… {hidden} more {what} not shown here: see the results JSON._"]
    return lines


def _family_section(
    family: str, rows: list[Row], others: list[Row], report: Report, detail: Detail
) -> list[str]:
    """A family's gating rows (unchanged ones folded), then its other meters' rows, folded."""
    lines = [f"#### {family}", ""]
    shown = [row for row in rows if row.verdict != "unchanged"]
    unchanged = [row for row in rows if row.verdict == "unchanged"]
    if shown:
        lines += [*_rows_table(shown, report, detail.rows_per_table, "rows"), ""]
    if unchanged:
        lines += [f"<details><summary>{len(unchanged)} unchanged</summary>", ""]
        if detail.unchanged_rows:
            lines += _rows_table(unchanged, report, detail.rows_per_table, "unchanged rows")
        else:
            names = ", ".join(f"{row.label} `{row.meter}`" for row in unchanged)
            lines.append(f"{names} (figures in the results JSON)")
        lines += ["", "</details>", ""]
    if others and detail.other_meters:
        meters = ", ".join(sorted({f"{row.meter} ({row.kind})" for row in others}))
        lines += [
            f"<details><summary>{len(others)} {'row' if len(others) == 1 else 'rows'} from "
            f"meters that do not gate: {meters}"
            "</summary>",
            "",
            *_rows_table(others, report, detail.rows_per_table, "rows"),
            "",
            "</details>",
            "",
        ]
    return lines


# --- lifecycle view -------------------------------------------------------------------------


def _break_even_text(entry: BreakEven) -> tuple[str, str]:
    if entry.cheaper == "unknown":
        return "—", "no inference measured"
    if entry.usage is None:
        side = "at every usage" if entry.cheaper == "always" else "at no usage"
        return "none", side
    mui = format_count(entry.usage)
    side = f"beyond MUI {mui}" if entry.cheaper == "beyond" else f"below MUI {mui}"
    return mui, side


def _moved_text(entry: BreakEven) -> str:
    if not entry.baseline_known:
        return "—"
    before = entry.baseline_usage
    if before is None and entry.usage is None:
        return "no crossing before or now"
    if before is None:
        return "no crossing before"
    if entry.usage is None:
        return f"{format_count(before)} → no crossing"
    if before == entry.usage:
        return f"{format_count(before)} (unchanged)"
    percent = 100 * (entry.usage - before) / before
    return f"{format_count(before)} → {format_count(entry.usage)} ({format_change(percent)})"


def _lifecycle_section(lifecycle: MeterLifecycle, report: Report, detail: Detail) -> list[str]:
    gates = "gates" if lifecycle.gating else "does not gate"
    lines = [f"#### Through `{lifecycle.meter}` ({lifecycle.kind} energy, {gates})", ""]
    leader_rows = []
    for leaders in lifecycle.leaders:
        lowest = leaders.lowest_energy
        joules = lowest.joules_at(leaders.usage) if lowest else None
        front = lifecycle.pareto.get(leaders.usage, [])
        leader_rows.append(
            [
                format_mui(leaders.usage),
                lowest.label if lowest else "—",
                format_joules(joules),  # joules as in the terminal; rows span usages, so per cell
                format_grams(report.carbon.grams_co2e(joules)) if joules is not None else "—",
                leaders.highest_greenness.label if leaders.highest_greenness else "—",
                ", ".join(row.label for row in front) or "—",
            ]
        )
    lines += _table(
        [
            "MUI",
            "lowest E(MUI)",
            "E(MUI)",
            "CO2e",
            "highest G(MUI)",
            "Pareto front (accuracy ↑, E(MUI) ↓)",
        ],
        leader_rows,
    )
    lines.append("")
    if lifecycle.reference_missing:
        lines += [f"_Break-even: {lifecycle.reference_missing}._", ""]
    elif lifecycle.break_evens:
        entries, hidden = _limited(lifecycle.break_evens, detail.rows_per_table)
        show_moved = any(entry.baseline_known for entry in entries)
        headers = ["method", "reference", "break-even MUI*", "cheaper than the reference"]
        if show_moved:
            headers.append("MUI* before → now")
        body = []
        for entry in entries:
            mui, side = _break_even_text(entry)
            cells = [entry.row.label, entry.reference.label, mui, side]
            if show_moved:
                cells.append(_moved_text(entry))
            body.append(cells)
        lines += _table(headers, body)
        if hidden:
            lines += ["", f"_… {hidden} more break-even rows not shown._"]
        lines.append("")
    chart = mermaid_chart(lifecycle, report, detail.chart_lines)
    if chart:
        lines += [*chart, ""]
    return lines


def _chart_rows(lifecycle: MeterLifecycle, report: Report, limit: int) -> list[Row]:
    """The lines worth drawing when there are too many: references, leaders, then the rest."""
    candidates = [row for row in report.lifecycle_rows(lifecycle) if row.cost]
    ordered: list[Row] = []

    def add(row: Row | None) -> None:
        if row is not None and all(row is not chosen for chosen in ordered):
            ordered.append(row)

    for entry in lifecycle.break_evens:
        add(entry.reference)
    for leaders in lifecycle.leaders:
        add(leaders.lowest_energy)
    for row in candidates:
        if row.verdict == "regressed":
            add(row)
    for row in candidates:
        add(row)
    return ordered[:limit]


def _decades(usage: Sequence[float]) -> list[float]:
    positive = [mui for mui in usage if mui > 0]
    if not positive:
        return list(usage)
    low = math.floor(math.log10(min(positive)))
    high = math.ceil(math.log10(max(positive)))
    return [10.0**exponent for exponent in range(low, high + 1)]


def mermaid_chart(lifecycle: MeterLifecycle, report: Report, max_lines: int = 8) -> list[str]:
    """A Mermaid ``xychart-beta`` of log10 E(MUI) against MUI, one line per method.

    Mermaid axes are linear, so the chart plots log10 of joules at every decade of MUI across
    the run's usage range (E(MUI) = TEC + MUI × IEC from the measured TEC and IEC); the legend
    under it names each line by its colour.
    """
    rows = _chart_rows(lifecycle, report, min(max_lines, len(CHART_COLOURS)))
    if not rows or max_lines <= 0:
        return []
    points = _decades(report.usage)
    if not points:  # no usage scenario to draw
        return []
    series = []
    for row in rows:
        values = [row.joules_at(mui) for mui in points]
        if any(value is None or value <= 0 for value in values):
            continue
        series.append((row, [math.log10(value) for value in values]))
    if not series:
        return []
    palette = ", ".join(colour for colour, _ in CHART_COLOURS[: len(series)])
    lowest = math.floor(min(min(values) for _, values in series))
    highest = math.ceil(max(max(values) for _, values in series))
    if highest == lowest:
        highest += 1
    labels = ", ".join(f'"{format_mui(mui)}"' for mui in points)
    lines = [
        "```mermaid",
        '%%{init: {"themeVariables": {"xyChart": {"plotColorPalette": "' + palette + '"}}}}%%',
        "xychart-beta",
        f'    title "{_task_words(lifecycle, report)}Full-cycle energy, {lifecycle.meter} '
        f'({lifecycle.kind})"',
        f'    x-axis "MUI (inferences served)" [{labels}]',
        f'    y-axis "log10 E(MUI) / J" {lowest} --> {highest}',
    ]
    lines += [
        "    line [" + ", ".join(f"{value:.3f}" for value in values) + "]" for _, values in series
    ]
    lines.append("```")
    legend = " · ".join(
        f"{CHART_COLOURS[index][1]} {row.label}" for index, (row, _) in enumerate(series)
    )
    total = len({id(row) for row in report.lifecycle_rows(lifecycle) if row.cost})
    if total > len(series):
        legend += f" ({len(series)} of {total} methods drawn)"
    lines += ["", legend]
    return lines


# --- carbon ---------------------------------------------------------------------------------


def _carbon_section(report: Report, detail: Detail) -> list[str]:
    carbon = report.carbon
    lines = [
        "### Carbon",
        "",
        f"gCO2e of E(MUI) at {carbon.describe()}. The lifecycle tables give the CO2e of each "
        f"usage's lowest-energy method.",
        "",
    ]
    if not detail.carbon_table or not report.rows:
        return lines
    measured = sorted(
        (row for row in report.rows if row.cost is not None),
        key=lambda row: (not row.gating, row.meter, row.label),
    )
    rows, hidden = _limited(measured, detail.rows_per_table)
    lines += ["<details><summary>CO2e of every method at each usage</summary>", ""]
    lines += _table(
        ["method", "meter (kind)", *(f"CO2e(MUI={format_mui(mui)})" for mui in report.usage)],
        (
            [
                row.label,
                f"`{row.meter}` ({row.kind})",
                *(
                    format_grams(_grams(carbon, row.full_cycle_joules.get(mui)))
                    for mui in report.usage
                ),
            ]
            for row in rows
        ),
    )
    if hidden:
        lines += ["", f"_… {hidden} more rows not shown._"]
    lines += ["", "</details>", ""]
    return lines


def _grams(carbon: CarbonIntensity, joules: float | None) -> float | None:
    return None if joules is None else carbon.grams_co2e(joules)


# --- the whole report -----------------------------------------------------------------------


def _omissions(report: Report, detail: Detail) -> str:
    """What a reduced rendering leaves out, in words (empty at full detail)."""
    left_out = []
    if not detail.carbon_table:
        left_out.append("the CO2e of every method")
    if not detail.other_meters and report.other_rows:
        meters = ", ".join(sorted({row.meter for row in report.other_rows}))
        left_out.append(f"the figures of meters that do not gate ({meters})")
    if not detail.unchanged_rows and any(row.verdict == "unchanged" for row in report.rows):
        left_out.append("the figures of unchanged rows")
    if detail.rows_per_table is not None:
        left_out.append(f"rows beyond {detail.rows_per_table} per table")
    if not left_out:
        return ""
    return "; ".join(left_out) + " (all in the results JSON artifact)"


def _render(report: Report, detail: Detail) -> str:
    lines = [MARKER, "## ⚡ pytest-energy", "", headline(report), ""]
    lines += _environment(report)
    lines.append("")
    if report.comparison is not None and report.comparison.not_run:
        removed = _listed(list(report.comparison.not_run), limit=10)
        lines += [f"**In the baseline but not run now:** {removed}", ""]
    if not report.rows:
        lines += ["No lifecycle test measured anything.", ""]
        return "\n".join(lines)
    omitted = _omissions(report, detail)
    tasks = report.tasks
    if len(tasks) > 1:
        lines += [
            f"**{len(tasks)} tasks**, each compared within itself (its own reference, winners "
            f"and break-even points): {', '.join(f'`{task}`' for task in tasks)}",
            "",
        ]
    if omitted:
        lines += [f"_Left out to stay under GitHub's comment limit: {omitted}._", ""]
    for task in tasks:
        lines += _task_sections(report, detail, task, len(tasks) > 1)
    if len(tasks) > 1:
        lines += ["## Every task", ""]
    lines += _carbon_section(report, detail)
    lines += [
        "<sub>TEC: training energy (base training charged + compression + fine-tuning). "
        "IEC: energy per inferred sample (median of rounds). E(MUI) = TEC + MUI × IEC; "
        "G(MUI) = Acc^τ / E(MUI); MUI*: usage where a method's full-cycle energy equals the "
        "reference's. Every figure names its meter and kind: measured (hardware counter), "
        "estimated (modelled from time), counted (operation counts).</sub>",
        "",
    ]
    return "\n".join(lines)


def _task_words(lifecycle: MeterLifecycle, report: Report) -> str:
    return f"Task {lifecycle.task}: " if len(report.tasks) > 1 else ""


def _time_section(rows: Sequence[Row]) -> list[str]:
    """Time beside energy: per test, seconds per inferred sample, samples/s and train time."""
    tests: dict[str, Row] = {}
    for row in rows:
        if row.latency:
            tests.setdefault(row.nodeid, row)
    if not tests:
        return []
    ordered = sorted(tests.values(), key=lambda row: (row.family, row.method, row.model))
    figures = [row.latency or {} for row in ordered]
    latency_unit = seconds_unit(
        (figure.get("seconds_per_sample") or {}).get("median") for figure in figures
    )
    train_unit = seconds_unit(_train_seconds(figure) for figure in figures)
    body = [
        [
            row.label,
            format_latency(figure, latency_unit),
            format_rate(figure.get("samples_per_second")),
            format_in(_train_seconds(figure), train_unit),
            f"`{figure.get('meter')}`",
        ]
        for row, figure in zip(ordered, figures, strict=True)
    ]
    return [
        "#### Time",
        "",
        *_table(
            ["method", "time / sample (median, IQR)", "samples/s", "train time", "timed by"],
            body,
        ),
        "",
    ]


def _train_seconds(figure: Mapping[str, Any]) -> float | None:
    if "train_seconds" not in figure:
        return None
    return float(figure["train_seconds"] + figure.get("charged_seconds", 0.0))


def _task_sections(report: Report, detail: Detail, task: str, several: bool) -> list[str]:
    """One task's results per family and lifecycle view (under a heading of its own if several)."""
    lines = [f"## Task `{task}`", ""] if several else []
    lines += ["### Results per family", ""]
    others = report.families([row for row in report.other_rows if row.task == task])
    main = [row for row in report.main_rows if row.task == task]
    for family, rows in report.families(main).items():
        lines += _family_section(family, rows, others.pop(family, []), report, detail)
    for family, rows in others.items():
        lines += _family_section(family, [], rows, report, detail)
    lines += _time_section([row for row in report.rows if row.task == task])
    lines += ["### Lifecycle: which method wins at which usage", ""]
    for lifecycle in report.lifecycles:
        if lifecycle.task == task and (lifecycle.gating or detail.other_meters):
            lines += _lifecycle_section(lifecycle, report, detail)
    return lines


def _truncate(text: str, max_chars: int) -> str:
    note = (
        "\n\n_… report cut here to stay under GitHub's comment limit; the full report is in "
        "the job's artifacts._\n"
    )
    budget = max_chars - utf16_length(note)
    kept: list[str] = []
    used = 0
    for line in text.splitlines():
        size = utf16_length(line) + 1
        if used + size > budget:
            break
        kept.append(line)
        used += size
    if sum(line.count("```") for line in kept) % 2:
        kept.append("```")
    opened = sum(line.count("<details>") for line in kept)
    closed = sum(line.count("</details>") for line in kept)
    kept += ["</details>"] * max(0, opened - closed)
    return "\n".join(kept) + note


def render_report(report: Report, max_chars: int = DEFAULT_MAX_CHARS) -> str:
    """The markdown of ``report``, at the most detail that fits in ``max_chars`` (UTF-16)."""
    for detail in _DETAIL_STEPS:
        text = _render(report, detail)
        if utf16_length(text) <= max_chars:
            return text
    least = _DETAIL_STEPS[-1]
    low, high = 1, max(1, len(report.rows))
    best = None
    while low <= high:
        limit = (low + high) // 2
        text = _render(report, replace(least, rows_per_table=limit))
        if utf16_length(text) <= max_chars:
            best, low = text, limit + 1
        else:
            high = limit - 1
    if best is not None:
        return best
    return _truncate(_render(report, replace(least, chart_lines=0, rows_per_table=1)), max_chars)


def render_markdown(
    results: Mapping[str, Any],
    comparison: Any | None = None,
    *,
    baseline: Mapping[str, Any] | None = None,
    carbon: CarbonIntensity | None = None,
    reference: str | None = None,
    max_chars: int = DEFAULT_MAX_CHARS,
) -> str:
    """Markdown for a PR comment from a results document and an optional comparison.

    ``comparison`` is what ``pytest_energy.gate.compare`` produces (or its ``to_dict()``); without
    it every result is ``new``. ``baseline`` (a results-schema document) shows how break-even
    points moved. ``reference`` picks the row break-evens are measured against.
    """
    report = build_report(
        results, comparison, baseline=baseline, carbon=carbon, reference=reference
    )
    return render_report(report, max_chars)
