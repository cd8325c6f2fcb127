"""The chart of ``pytest-energy history --plot FILE`` (PNG or SVG by the extension).

One row per test and profile, two panels: TEC (J) and IEC (J/sample) against the recorded
sessions, oldest on the left, each labelled with its commit. The level between change points
is drawn as a flat line, and each change point as a dashed vertical line with its relative
change, so a reader sees where the energy stepped and by how much without the docs. Sessions
recorded from a dirty tree are drawn hollow. matplotlib (extra ``plot``) is imported only here.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_energy.changepoints import ALPHA
from pytest_energy.errors import ReportError

if TYPE_CHECKING:
    from pytest_energy.history_command import Series

FORMATS = {".png": "png", ".svg": "svg"}
PANEL_WIDTH_INCHES = 6.5
ROW_HEIGHT_INCHES = 3.4


def chart_format(path: str | os.PathLike[str]) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise ReportError(
            f"--plot {os.fspath(path)!r}: the file name must end in .png or .svg "
            f"(the extension picks the format)"
        )
    return FORMATS[suffix]


def _panel(axes: Any, item: Series, quantity: str, attribute: str, unit: str) -> None:
    points = [(i, getattr(p, attribute), p) for i, p in enumerate(item.points)]
    points = [(i, value, p) for i, value, p in points if value is not None]
    if not points:
        axes.text(0.5, 0.5, f"no {quantity} recorded", ha="center", transform=axes.transAxes)
        axes.set_axis_off()
        return
    xs = [i for i, _, _ in points]
    ys = [value for _, value, _ in points]
    axes.plot(xs, ys, color="tab:blue", linewidth=1, alpha=0.6, zorder=2)
    clean = [(x, y) for x, y, p in points if not p.dirty]
    dirty = [(x, y) for x, y, p in points if p.dirty]
    if clean:
        axes.scatter(*zip(*clean, strict=True), color="tab:blue", zorder=3, label="session")
    if dirty:
        axes.scatter(
            *zip(*dirty, strict=True),
            facecolors="white",
            edgecolors="tab:blue",
            zorder=3,
            label="dirty tree",
        )
    steps = item.steps[quantity]
    edges = [0, *(step.index for step in steps), len(item.points)]
    for start, stop in itertools.pairwise(edges):
        level = [y for x, y in zip(xs, ys, strict=True) if start <= x < stop]
        if level:
            axes.hlines(
                sum(level) / len(level), start - 0.3, stop - 0.7, colors="tab:orange", zorder=1
            )
    for step in steps:
        axes.axvline(step.index - 0.5, color="tab:red", linestyle="--", linewidth=1)
        change = step.relative_change
        text = f"{change:+.1%}" if change is not None else "step"
        axes.annotate(
            text,
            (step.index - 0.5, 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(3, -12),
            textcoords="offset points",
            color="tab:red",
            fontsize=8,
        )
    axes.set_title(f"{quantity} ({unit})", fontsize=9)
    axes.set_ylabel(f"{quantity} ({unit})", fontsize=8)
    axes.set_xticks(range(len(item.points)))
    axes.set_xticklabels(
        [(p.commit or "?")[:7] for p in item.points], rotation=60, fontsize=7, ha="right"
    )
    axes.set_xlabel("recorded session, oldest → newest (commit)", fontsize=8)
    axes.grid(True, axis="y", alpha=0.3)
    axes.set_xlim(-0.7, len(item.points) - 0.3)


def write_history_chart(analysed: Sequence[Series], path: str | os.PathLike[str]) -> Path:
    """Draw every series (rows) × TEC, IEC (columns) into ``path``."""
    from pytest_energy.history_command import QUANTITIES

    output_format = chart_format(path)
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ReportError(
            f"--plot needs matplotlib, an optional extra: pip install 'pytest-energy[plot]' "
            f"({error})"
        ) from None
    rows = len(analysed)
    figure = Figure(
        figsize=(PANEL_WIDTH_INCHES * 2, ROW_HEIGHT_INCHES * rows + 0.8), layout="constrained"
    )
    FigureCanvasAgg(figure)
    rows_of_panels = []
    for subfigure, item in zip(
        figure.subfigures(rows, 1, squeeze=False)[:, 0], analysed, strict=True
    ):
        subfigure.suptitle(item.title, fontsize=9, fontweight="bold", x=0.01, ha="left")
        panels = subfigure.subplots(1, 2)
        for axes, (quantity, attribute, unit) in zip(panels, QUANTITIES, strict=True):
            _panel(axes, item, quantity, attribute, unit)
        rows_of_panels.append(panels)
    for axes in rows_of_panels[0]:
        if axes.get_legend_handles_labels()[0]:
            axes.legend(fontsize=7, loc="best")
            break
    figure.suptitle(
        "Energy per recorded session — orange: mean level between change points; red dashed: "
        f"change point (E-divisive means, significance {ALPHA:g}) with the relative change",
        fontsize=10,
    )
    target = Path(path)
    try:
        figure.savefig(target, format=output_format, dpi=100)
    except OSError as error:
        raise ReportError(f"--plot {os.fspath(path)}: cannot write ({error.strerror})") from None
    return target
