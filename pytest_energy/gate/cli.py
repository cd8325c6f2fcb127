"""``pytest-energy compare OLD.json NEW.json``: the gate's comparison on two files, no re-run.

Either file may be a results file (``--energy-json``) or a baseline file (``baselines/*.json``).
The verdicts are the plugin's (see ``pytest_energy.gate.compare``); ``--fail`` turns a regression
into exit status 1, so the command can gate a CI step on files produced elsewhere.
"""

from __future__ import annotations

import argparse
from typing import Any

from tabulate import tabulate

from pytest_energy.config import parse_tolerance
from pytest_energy.errors import BaselineError
from pytest_energy.gate.compare import ComparisonReport, compare_snapshots
from pytest_energy.gate.plugin import parse_alpha, parse_gate
from pytest_energy.gate.rules import DEFAULT_ALPHA
from pytest_energy.gate.store import load_snapshot, refuse_overwriting_inputs
from pytest_energy.report.terminal import summary_lines
from pytest_energy.results import write_json_atomic


def add_compare_command(commands: Any) -> None:
    """Add ``compare`` to the ``pytest-energy`` subcommands (an argparse subparsers object)."""
    compare = commands.add_parser(
        "compare",
        help="compare two results or baseline files: verdict per test, meter and quantity",
        description="Compare OLD (the baseline) with NEW using the regression gate's rules: "
        "exact for counted meters, tolerance plus significance for noisy ones.",
    )
    compare.add_argument("old", metavar="OLD.json", help="the baseline: results or baseline file")
    compare.add_argument("new", metavar="NEW.json", help="the candidate: results or baseline file")
    compare.add_argument(
        "--tolerance",
        metavar="FRACTION",
        default=None,
        help="allowed rise for every test and quantity, e.g. 5%% or 0.05 "
        "(default: each test's own tolerance as recorded in NEW)",
    )
    compare.add_argument(
        "--alpha",
        default=str(DEFAULT_ALPHA),
        help=f"significance level of each side of a noisy meter's interval of the change "
        f"between sessions (default {DEFAULT_ALPHA:g})",
    )
    compare.add_argument(
        "--gate",
        metavar="METERS",
        default=None,
        help="meters whose verdicts count for --fail: auto (default) or a comma list",
    )
    compare.add_argument(
        "--fail", action="store_true", help="exit with status 1 when a test regressed"
    )
    compare.add_argument(
        "--fail-on-improvement",
        action="store_true",
        help="with --fail: an improvement beyond tolerance (a stale baseline) fails too",
    )
    compare.add_argument(
        "--json",
        metavar="PATH",
        default=None,
        help="also write the comparison as JSON (schema pytest-energy/comparison) to PATH",
    )
    compare.set_defaults(handler=command_compare)


def _change(report_meter: Any, quantity: str) -> str:
    changes = [
        q.change_percent
        for q in report_meter.quantities
        if q.quantity == quantity and q.change_percent is not None
    ]
    if not changes:
        return "—"
    worst = max(changes, key=abs)
    return f"{worst:+.1f} %"


def comparison_table(report: ComparisonReport) -> str:
    """One row per test and meter: verdict and the changes of TEC, IEC and the worst E(MUI)."""
    rows = [
        [
            test.nodeid,
            meter.meter + ("" if meter.gating else " (not gating)"),
            meter.verdict,
            _change(meter, "tec"),
            _change(meter, "iec"),
            _change(meter, "full_cycle"),
        ]
        for test in report.tests
        for meter in test.meters
    ]
    return tabulate(rows, headers=["test", "meter", "verdict", "TEC", "IEC", "E(MUI) worst"])


def command_compare(args: argparse.Namespace) -> int:
    """Print the comparison of OLD and NEW; 1 with ``--fail`` when something regressed."""
    refuse_overwriting_inputs({"--json": args.json}, [args.old, args.new])
    old = load_snapshot(args.old)
    new = load_snapshot(args.new)
    tolerance = parse_tolerance(args.tolerance, "--tolerance") if args.tolerance else None
    kinds = {
        meter: str(recorded.record["meters"][meter].get("kind"))
        for meters in new.values()
        for meter, recorded in meters.items()
    }
    gate = parse_gate(args.gate, kinds, "--gate")
    report = compare_snapshots(
        new,
        old,
        gate=gate,
        alpha=parse_alpha(args.alpha, "--alpha"),
        tolerance=tolerance,
    )
    if report.tests:
        print(comparison_table(report))
        print()
    for line in summary_lines(report, args.fail and args.fail_on_improvement):
        print(line)
    if args.json:
        try:
            write_json_atomic(args.json, report.to_dict())
        except OSError as error:
            raise BaselineError(f"--json {args.json}: cannot write ({error})") from None
    failing = report.regressed or (args.fail_on_improvement and report.improved)
    return 1 if args.fail and failing else 0
