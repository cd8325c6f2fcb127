"""The ``pytest-energy`` command: ``meters``, ``report`` (and more subcommands as they land)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from tabulate import tabulate

from pytest_energy.calibrate import add_calibrate_command
from pytest_energy.errors import EnergyError
from pytest_energy.export import add_export_command
from pytest_energy.gate.cli import add_compare_command
from pytest_energy.gate.runs import add_run_commands
from pytest_energy.gate.store import refuse_overwriting_inputs
from pytest_energy.history_command import add_history_command
from pytest_energy.meters import MeterOptions, probe_meters


def command_meters(args: argparse.Namespace) -> int:
    """List every meter, its kind, and whether it works here (and why not)."""
    probes = probe_meters(MeterOptions(rapl_root=args.rapl_root))
    rows = [
        [probe.name, probe.kind, "yes" if probe.available else "no", probe.reason_unavailable or ""]
        for probe in probes
    ]
    print(tabulate(rows, headers=["meter", "kind", "works here", "why not"]))
    return 0


def _report_gate(results_path: str, spec: str | None) -> list[str] | None:
    """``--gate`` checked against the meters of the results file: a misspelt name is an error."""
    if spec is None:
        return None
    from pytest_energy.gate.plugin import parse_gate
    from pytest_energy.gate.store import read_json, validate_results

    results = validate_results(read_json(results_path, "results file"), results_path)
    kinds = {
        meter: str(view.get("kind"))
        for record in results["tests"].values()
        for meter, view in record["meters"].items()
    }
    return parse_gate(spec, kinds, "--gate")


def command_report(args: argparse.Namespace) -> int:
    """Render the markdown report and charts of a saved results file, without re-running."""
    from pytest_energy.report.markdown import render_report
    from pytest_energy.report.outputs import report_from_files, report_settings, write_markdown

    settings = report_settings(
        markdown=None if args.markdown in (None, "-") else args.markdown,
        plot=args.plot,
        country=args.country,
        carbon_intensity=args.carbon_intensity,
        pue=args.pue,
        reference=args.reference,
    )
    inputs = [args.results, *(args.baseline or [])]
    refuse_overwriting_inputs({"--markdown": settings.markdown, "--plot": settings.plot}, inputs)
    gate = _report_gate(args.results, args.gate)
    report, _comparison = report_from_files(args.results, args.baseline, settings, gate)
    if settings.markdown is not None:
        written = write_markdown(report, settings.markdown, inputs)
        print(f"markdown written to {written}", file=sys.stderr)
    elif args.plot is None or args.markdown == "-":
        sys.stdout.write(render_report(report))
    if settings.plot is not None:
        from pytest_energy.report.charts import write_chart

        written = write_chart(report, settings.plot, inputs)
        print(f"charts written to {written}", file=sys.stderr)
    regressed = report.verdict_counts()["regressed"]
    return 1 if args.check and regressed else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pytest-energy",
        description="Full-cycle energy of deep-learning code: inspect meters, compare and "
        "report results files.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    meters = commands.add_parser("meters", help="list the meters and whether each works here")
    meters.add_argument(
        "--rapl-root",
        default="/sys/class/powercap",
        help="powercap sysfs directory for the rapl meter (default: /sys/class/powercap)",
    )
    meters.set_defaults(handler=command_meters)
    report = commands.add_parser(
        "report",
        help="render the markdown report and charts of a saved results file (--energy-json)",
    )
    report.add_argument("results", metavar="RESULTS.json", help="a results file (--energy-json)")
    report.add_argument(
        "--baseline",
        metavar="B.json",
        action="append",
        default=[],
        help="compare with this baseline (or results) file; repeat for one per profile "
        "(default: the comparison recorded in RESULTS.json, if any)",
    )
    report.add_argument(
        "--markdown", metavar="OUT", help="write the markdown there ('-' or default: stdout)"
    )
    report.add_argument("--plot", metavar="OUT", help="write the charts there (.png or .svg)")
    report.add_argument(
        "--country", "--energy-country", metavar="ISO3", help="carbon intensity of this country"
    )
    report.add_argument(
        "--carbon-intensity",
        "--energy-carbon-intensity",
        metavar="G_PER_KWH",
        help="gCO2e per kWh (default 475)",
    )
    report.add_argument(
        "--pue", "--energy-pue", metavar="FACTOR", help="power usage effectiveness (default 1)"
    )
    report.add_argument(
        "--reference",
        "--energy-reference",
        metavar="LABEL=VALUE",
        help="method break-even MUI is measured against (default: family=baseline or "
        "method=uncompressed)",
    )
    report.add_argument(
        "--gate", metavar="METERS", help="meters that gate, comma list (default: as pytest does)"
    )
    report.add_argument(
        "--check", action="store_true", help="exit with status 1 when a test regressed"
    )
    report.set_defaults(handler=command_report)
    add_compare_command(commands)
    add_run_commands(commands)
    add_export_command(commands)
    add_history_command(commands)
    add_calibrate_command(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    passthrough: list[str] = []
    if "--" in argv:  # `pytest-energy ab main -- tests/ -k fast`: the rest goes to pytest
        split = argv.index("--")
        argv, passthrough = argv[:split], argv[split + 1 :]
    args = parser.parse_args(argv)
    args.passthrough = passthrough
    try:
        return args.handler(args)
    except EnergyError as error:
        print(f"pytest-energy {args.command}: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
