"""The ``pytest-energy`` command: ``meters`` (and more subcommands as they land)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from tabulate import tabulate

from pytest_energy.errors import EnergyError
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except EnergyError as error:
        print(f"pytest-energy {args.command}: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
