"""Charts of a run (``--energy-plot PATH``, PNG or SVG by the file's extension).

For each meter, two panels side by side:

- full-cycle energy E(MUI) = TEC + MUI × IEC against MUI on log–log axes, one line per method,
  each crossing with the reference method marked and labelled with its break-even MUI* — the
  central picture of Li et al. (2021): which method is cheapest depends on how much it is used;
- accuracy against E(MUI) at each usage scenario, with each usage's Pareto front (accuracy ↑,
  energy ↓) drawn as a step line.

matplotlib is an optional extra (``pip install 'pytest-energy[plot]'``), imported only here and
only when a chart is asked for. The figure is drawn on matplotlib's object API with the Agg
canvas, so it never touches pyplot's global state or the user's chosen backend.
"""

from __future__ import annotations

import math
import os
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

from pytest_energy.errors import ReportError
from pytest_energy.files import atomic_output, check_output_path
from pytest_energy.report.model import MeterLifecycle, Report, Row, build_report
from pytest_energy.report.units import format_count, format_mui

FORMATS = {".png": "png", ".svg": "svg"}
PANEL_WIDTH_INCHES = 7.0
PANEL_HEIGHT_INCHES = 5.0
DPI = 100
USAGE_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def chart_format(path: str | os.PathLike[str]) -> str:
    """``"png"`` or ``"svg"`` from the file name; anything else is refused with the flag named."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise ReportError(
            f"--energy-plot {os.fspath(path)!r}: the file name must end in .png or .svg "
            f"(the extension picks the format)"
        )
    return FORMATS[suffix]


def _matplotlib() -> tuple[Any, Any]:
    """matplotlib's Figure and Agg canvas classes, or a clear error naming the extra."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ReportError(
            "charts need matplotlib, an optional extra: pip install 'pytest-energy[plot]' "
            f"({error})"
        ) from None
    return Figure, FigureCanvasAgg


LEGEND_INSIDE_MAX_METHODS = 8
"""Above this many methods per meter the method legend moves beside the panels."""
LEGEND_WIDTH_INCHES = 3.6


def _legend_outside(report: Report) -> bool:
    methods_per_meter = max(
        (len(report.lifecycle_rows(lifecycle)) for lifecycle in report.lifecycles),
        default=0,
    )
    return methods_per_meter > LEGEND_INSIDE_MAX_METHODS


def figure_size_pixels(report: Report) -> tuple[int, int]:
    """Width and height of the chart in pixels: two panels wide, one row per meter.

    With many methods their legend goes in a column of its own on the right, so it hides no
    line and no crossing.
    """
    rows = max(1, len(report.lifecycles))
    legend_inches = LEGEND_WIDTH_INCHES if _legend_outside(report) else 0.0
    width_inches = 2 * PANEL_WIDTH_INCHES + legend_inches
    return round(width_inches * DPI), round(rows * PANEL_HEIGHT_INCHES * DPI)


def _log_range(values: Sequence[float]) -> tuple[float, float]:
    positive = [value for value in values if value > 0 and math.isfinite(value)]
    if not positive:
        return 1.0, 10.0
    low = math.floor(math.log10(min(positive)))
    high = math.ceil(math.log10(max(positive)))
    if high <= low:
        high = low + 1
    return 10.0**low, 10.0**high


def _task_prefix(lifecycle: MeterLifecycle, report: Report) -> str:
    """``"Task cifar10 — "`` when the run has several tasks (each row of panels is one task)."""
    return f"Task {lifecycle.task} — " if len(report.tasks) > 1 else ""


def _line_label(row: Row) -> str:
    """Method [family], and for a changed row its largest change of that verdict's direction."""
    label = f"{row.label} [{row.family}]" if row.family != "—" else row.label
    if row.verdict not in ("regressed", "improved"):
        return label
    changes = {} if row.comparison is None else row.comparison.full_cycle
    candidates = [(f"E({format_mui(usage)})", change) for usage, change in sorted(changes.items())]
    candidates += [("TEC", row.tec_change), ("IEC", row.iec_change)]
    judged = [
        (name, change.change_percent)
        for name, change in candidates
        if change is not None
        and change.verdict == row.verdict
        and change.change_percent is not None
    ]
    if not judged:
        return f"{label} — {row.verdict}"
    name, percent = (max if row.verdict == "regressed" else min)(judged, key=lambda item: item[1])
    return f"{label} — {row.verdict}: {name} {percent:+.1f} %"


def _same_line(first: Any, second: Any) -> bool:
    """Two full-cycle lines that would print as one (TEC and IEC within 0.1 %)."""
    return math.isclose(first.tec_joules, second.tec_joules, rel_tol=1e-3) and math.isclose(
        first.iec_joules_per_sample, second.iec_joules_per_sample, rel_tol=1e-3
    )


def _draw_full_cycle(
    axes: Any,
    lifecycle: MeterLifecycle,
    rows: Sequence[Row],
    report: Report,
    colours: Mapping[int, Any],
) -> None:
    crossings = [entry.usage for entry in lifecycle.break_evens if entry.usage is not None]
    low, high = _log_range([*report.usage, *crossings])
    points = [low * (high / low) ** (step / 199) for step in range(200)]
    drawn: list[tuple[Any, str]] = []
    for row in rows:
        cost = row.cost
        if cost is None:
            continue
        values = [row.joules_at(mui) for mui in points]
        label = _line_label(row)
        linestyle: Any = (
            "--" if any(row is entry.reference for entry in lifecycle.break_evens) else "-"
        )
        twin = next((name for other, name in drawn if _same_line(cost, other)), None)
        if twin is not None:  # would hide under a line already drawn: dotted on top, and said so
            linestyle = (0, (1, 2))
            label += f" (same line as {twin})"
        drawn.append((cost, row.label))
        axes.plot(
            points,
            values,
            color=colours[id(row)],
            linewidth=3.0 if row.verdict == "regressed" else 1.8,
            linestyle=linestyle,
            label=label,
        )
    for mui in report.usage:
        if mui > 0:
            axes.axvline(mui, color="0.85", linewidth=0.8, zorder=0)
    for entry in lifecycle.break_evens:
        if entry.usage is None or entry.row.cost is None:
            continue
        joules = entry.row.joules_at(entry.usage)
        axes.plot(
            [entry.usage],
            [joules],
            marker="o",
            markersize=8,
            markerfacecolor="white",
            markeredgecolor=colours[id(entry.row)],
            markeredgewidth=2,
            linestyle="none",
            zorder=5,
        )
        axes.annotate(
            f"MUI* {format_count(entry.usage)}",
            (entry.usage, joules),
            xytext=(6, -12),
            textcoords="offset points",
            fontsize=8,
            color=colours[id(entry.row)],
        )
    references = sorted({entry.reference.label for entry in lifecycle.break_evens})
    if any(entry.usage is not None for entry in lifecycle.break_evens):
        axes.plot(
            [],
            [],
            marker="o",
            markerfacecolor="white",
            markeredgecolor="0.3",
            linestyle="none",
            label=f"break-even MUI* with {', '.join(references)}",
        )
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlim(low, high)
    axes.set_xlabel("MUI: inferences over the model's life")
    axes.set_ylabel(f"E(MUI) = TEC + MUI × IEC  [J, {lifecycle.kind}]")
    axes.set_title(
        f"{_task_prefix(lifecycle, report)}Full-cycle energy — {lifecycle.meter} ({lifecycle.kind})"
    )
    axes.grid(True, which="major", linewidth=0.5, alpha=0.5)
    axes.legend(fontsize=8, loc="upper left")


def _draw_pareto(
    axes: Any,
    lifecycle: MeterLifecycle,
    rows: Sequence[Row],
    report: Report,
    colours: Mapping[int, Any],
) -> None:
    drawn = False
    for index, mui in enumerate(report.usage):
        marker = USAGE_MARKERS[index % len(USAGE_MARKERS)]
        for row in rows:
            joules = row.full_cycle_joules.get(mui)
            if joules is None or row.accuracy is None or joules <= 0:
                continue
            axes.plot(
                [joules],
                [100 * row.accuracy],
                marker=marker,
                color=colours[id(row)],
                linestyle="none",
                markersize=7,
            )
            drawn = True
        front = sorted(
            (row.full_cycle_joules[mui], 100 * row.accuracy)
            for row in lifecycle.pareto.get(mui, [])
            if row.accuracy is not None and row.full_cycle_joules.get(mui)
        )
        if front:
            xs = [joules for joules, _ in front]
            ys = [accuracy for _, accuracy in front]
            axes.step(xs, ys, where="post", color="0.4", linewidth=1.0, linestyle=":")
        axes.plot(
            [], [], marker=marker, color="0.3", linestyle="none", label=f"MUI = {format_mui(mui)}"
        )
    if drawn:
        axes.set_xscale("log")
    axes.plot([], [], color="0.4", linestyle=":", label="Pareto front per usage")
    axes.set_xlabel(f"E(MUI)  [J, {lifecycle.kind}]")
    axes.set_ylabel("accuracy  [%]")
    axes.set_title(
        f"{_task_prefix(lifecycle, report)}Accuracy against E(MUI) (colours as on the left)"
        if len(report.tasks) > 1
        else "Accuracy against full-cycle energy (colours as on the left)"
    )
    axes.grid(True, which="major", linewidth=0.5, alpha=0.5)
    axes.legend(fontsize=8, loc="best")


def draw_report(report: Report) -> Any:
    """A matplotlib Figure of ``report``: per meter, full-cycle lines and accuracy–energy."""
    figure_class, canvas_class = _matplotlib()
    from matplotlib import colormaps

    width, height = figure_size_pixels(report)
    figure = figure_class(figsize=(width / DPI, height / DPI), dpi=DPI, layout="constrained")
    canvas_class(figure)
    lifecycles = report.lifecycles or []
    if not lifecycles:
        axes = figure.add_subplot(1, 1, 1)
        axes.text(0.5, 0.5, "no lifecycle result measured", ha="center", va="center")
        axes.set_axis_off()
        return figure
    grid = figure.subplots(len(lifecycles), 2, squeeze=False)
    for line, lifecycle in enumerate(lifecycles):
        rows = report.lifecycle_rows(lifecycle)
        palette = colormaps["tab10" if len(rows) <= 10 else "tab20"]
        rows.sort(key=lambda row: (row.family, row.method, row.model))
        colours = {id(row): palette(index % palette.N) for index, row in enumerate(rows)}
        _draw_full_cycle(grid[line][0], lifecycle, rows, report, colours)
        _draw_pareto(grid[line][1], lifecycle, rows, report, colours)
        if _legend_outside(report):
            _move_method_legend(grid[line][0], grid[line][1])
    return figure


def _move_method_legend(full_cycle_axes: Any, pareto_axes: Any) -> None:
    """Put the full-cycle panel's method legend to the right of the row, outside the axes."""
    handles, labels = full_cycle_axes.get_legend_handles_labels()
    full_cycle_axes.get_legend().remove()
    usage_legend = pareto_axes.get_legend()
    pareto_axes.legend(
        handles, labels, fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0
    )
    if usage_legend is not None:
        pareto_axes.add_artist(usage_legend)


def save_figure(
    figure: Any, path: str | os.PathLike[str], inputs: Collection[str | os.PathLike[str]] = ()
) -> Path:
    """Write ``figure`` to ``path`` (atomically) in the format its extension names."""
    file_format = chart_format(path)
    with atomic_output(path, "--energy-plot", inputs) as temporary:
        figure.savefig(temporary, format=file_format, dpi=DPI)
    return Path(path)


def write_chart(
    report: Report,
    path: str | os.PathLike[str],
    inputs: Collection[str | os.PathLike[str]] = (),
) -> Path:
    """Draw ``report`` and write it to ``path`` (.png or .svg), never over one of ``inputs``."""
    chart_format(path)
    check_output_path(path, "--energy-plot", inputs)
    return save_figure(draw_report(report), path, inputs)


def plot_results(
    results: Mapping[str, Any],
    path: str | os.PathLike[str],
    comparison: Any | None = None,
    *,
    baseline: Mapping[str, Any] | None = None,
    reference: str | None = None,
) -> Path:
    """Chart a results document (and an optional comparison) to ``path``."""
    return write_chart(
        build_report(results, comparison, baseline=baseline, reference=reference), path
    )
