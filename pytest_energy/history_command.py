"""``pytest-energy history``: each test's recorded energy over time, with its change points.

    pytest-energy history [--baselines DIR] [--test PATTERN] [--plot FILE.png|.svg]

For each test and profile (meter + hardware), a table of every recorded session (oldest
first): when, the commit, TEC, IEC and E(MUI) at the largest usage, and the change points
``pytest_energy.changepoints`` finds in TEC and in IEC (E-divisive means). ``--plot`` draws the
same as a chart. No baselines anywhere, or no test matching ``--test``: one line, exit 2.
"""

from __future__ import annotations

import argparse
import fnmatch
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tabulate import tabulate

from pytest_energy.changepoints import ALPHA, ChangePoint, change_points
from pytest_energy.errors import ConfigError
from pytest_energy.export import usage_label
from pytest_energy.history import Point, collect_history, merge

QUANTITIES = (("TEC", "tec_joules", "J"), ("IEC", "iec_joules_per_sample", "J/sample"))


@dataclass(frozen=True)
class Series:
    """One test under one profile: its sessions and the change points of each quantity."""

    test: str
    profile: str
    points: list[Point]
    steps: Mapping[str, list[ChangePoint]]  # quantity ("TEC", "IEC") -> its change points

    @property
    def title(self) -> str:
        first = self.points[0]
        return f"{self.test} — {first.meter} ({first.kind}), profile {self.profile}"


def analyse(series: Mapping[tuple[str, str], list[Point]]) -> list[Series]:
    """Change points of TEC and IEC for every series (gaps in a quantity are skipped)."""
    analysed = []
    for (test, profile), points in sorted(series.items()):
        steps: dict[str, list[ChangePoint]] = {}
        for quantity, attribute, _unit in QUANTITIES:
            indexed = [
                (index, getattr(point, attribute))
                for index, point in enumerate(points)
                if getattr(point, attribute) is not None
            ]
            found = change_points([value for _, value in indexed])
            steps[quantity] = [
                ChangePoint(indexed[step.index][0], step.mean_before, step.mean_after, step.p_value)
                for step in found
            ]
        analysed.append(Series(test, profile, points, steps))
    return analysed


def select(
    series: Mapping[tuple[str, str], list[Point]], pattern: str | None
) -> dict[tuple[str, str], list[Point]]:
    """The series whose test node id matches ``pattern`` (a glob, else a substring)."""
    if not pattern:
        return dict(series)
    glob = any(character in pattern for character in "*?[")
    return {
        key: points
        for key, points in series.items()
        if (fnmatch.fnmatchcase(key[0], pattern) if glob else pattern in key[0])
    }


def describe_step(quantity: str, step: ChangePoint, unit: str) -> str:
    change = step.relative_change
    moved = f"{change:+.1%}" if change is not None else f"{step.mean_after - step.mean_before:+.4g}"
    return (
        f"{quantity} {moved} ({step.mean_before:.4g} → {step.mean_after:.4g} {unit}, "
        f"p={step.p_value:.3f})"
    )


def _figure(value: float | None) -> str:
    return "—" if value is None else f"{value:.4g}"


def table(item: Series) -> str:
    """The series as a table: one row per session, change points marked on their first row."""
    usages = sorted({usage for point in item.points for usage in point.e_mui_joules})
    top = usages[-1] if usages else None
    marks: dict[int, list[str]] = {}
    for quantity, _attribute, unit in QUANTITIES:
        for step in item.steps[quantity]:
            marks.setdefault(step.index, []).append("step: " + describe_step(quantity, step, unit))
    rows = []
    for index, point in enumerate(item.points):
        commit = (point.commit or "?")[:10] + (" (dirty)" if point.dirty else "")
        rows.append(
            [
                index + 1,
                point.time or "?",
                commit,
                _figure(point.tec_joules),
                _figure(point.iec_joules_per_sample),
                _figure(point.e_mui_joules.get(top)) if top is not None else "—",
                "; ".join(marks.get(index, [])),
            ]
        )
    headers = [
        "#",
        "recorded (UTC)",
        "commit",
        "TEC (J)",
        "IEC (J/sample)",
        f"E(MUI={usage_label(top)}) (J)" if top is not None else "E(MUI) (J)",
        "change point",
    ]
    return tabulate(rows, headers=headers, disable_numparse=True)


def render(analysed: Sequence[Series]) -> str:
    blocks = []
    for item in analysed:
        steps = sum(len(found) for found in item.steps.values())
        summary = (
            f"{len(item.points)} session{'' if len(item.points) == 1 else 's'}; "
            + (f"{steps} change point(s)" if steps else "no change point")
            + f" (E-divisive means, significance {ALPHA:g})"
        )
        blocks.append(f"{item.title}\n{summary}\n{table(item)}")
    return "\n\n".join(blocks) + "\n"


def command_history(args: argparse.Namespace) -> int:
    plot = None
    if args.plot:
        from pytest_energy.report.history_chart import chart_format

        plot = args.plot
        chart_format(plot)  # a wrong extension is named before any work
    points = collect_history(args.root, args.baselines)
    series = merge(points)
    if not series:
        raise ConfigError(
            f"no history: no baseline file under {args.baselines}/ in the working tree or its git "
            f"log; record one with pytest --energy --energy-save and commit it"
        )
    chosen = select(series, args.test)
    if not chosen:
        known = sorted({test for test, _ in series})
        shown = ", ".join(known[:5]) + (f", … ({len(known)} in all)" if len(known) > 5 else "")
        raise ConfigError(f"--test {args.test!r} matches no test with history; tests: {shown}")
    analysed = analyse(chosen)
    sys.stdout.write(render(analysed))
    if plot is not None:
        from pytest_energy.report.history_chart import write_history_chart

        print(f"chart written to {write_history_chart(analysed, plot)}", file=sys.stderr)
    return 0


def add_history_command(commands: Any) -> None:
    """Register ``pytest-energy history`` on the CLI's subparsers."""
    parser = commands.add_parser(
        "history",
        help="each test's recorded energy over the baselines' history, with change points",
        description="Per test and profile, the figures of every recorded session (the baseline "
        "files' git log and the sessions each entry keeps), with the change points of TEC and "
        "IEC found by E-divisive means (Matteson & James 2014; Daly et al., ICPE 2020).",
    )
    parser.add_argument(
        "--baselines",
        default="baselines",
        metavar="DIR",
        help="baseline directory (default: baselines)",
    )
    parser.add_argument(
        "--test", metavar="PATTERN", help="only tests whose node id matches (glob or substring)"
    )
    parser.add_argument("--plot", metavar="FILE", help="also draw the chart (.png or .svg)")
    parser.add_argument(
        "--root", default=".", metavar="DIR", help="the repository (default: current directory)"
    )
    parser.set_defaults(handler=command_history)
