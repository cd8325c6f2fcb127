"""How often the regression gate cries wolf: A/A runs of an unchanged test against its baseline.

Run with ``python -m benchmarks.false_alarms``. A small lifecycle test (matrix products: a train
phase and inference rounds) is saved as a baseline once, then run again ``--runs`` times with
nothing changed. Every run that the gate fails is a false alarm; the script prints their count
per meter, and the largest changes it saw, so the tolerance and α can be judged on this machine.

Each run is a fresh ``python -m pytest`` process, as in CI.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any

from tabulate import tabulate

WORKLOAD = textwrap.dedent(
    """
    import pytest
    import torch

    MATRIX = torch.ones(48, 48)


    def work(units):
        for _ in range(units):
            MATRIX @ MATRIX


    @pytest.fixture(autouse=True)
    def torch_threads():
        if {threads}:
            torch.set_num_threads({threads})


    @pytest.mark.lifecycle(usage=[1e3, 1e6, 1e9], family="a-a", method="matmul")
    def test_unchanged(energy):
        with energy.train("train"):
            work({train_units})
        energy.accuracy = 0.5
        energy.inference(lambda: work({infer_units}), samples=1)
    """
)
UNITS = {"counted": (200, 50)}
DEFAULT_UNITS = (20000, 200)


def pytest_command(directory: Path, meter: str, args: argparse.Namespace) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pytest",
        str(directory),
        "-q",
        "-p",
        "no:cacheprovider",
        "--rootdir",
        str(directory),
        "--energy",
        "--energy-meter",
        meter,
        "--energy-rounds",
        str(args.rounds),
        "--energy-train-rounds",
        str(args.train_rounds),
        "--energy-tolerance",
        args.tolerance,
        "--energy-alpha",
        str(args.alpha),
    ]


def run_pytest(command: list[str], directory: Path) -> tuple[int, dict[str, Any]]:
    results = directory / "results.json"
    completed = subprocess.run(
        [*command, "--energy-json", str(results)],
        cwd=directory,
        capture_output=True,
        text=True,
        check=False,
    )
    if completed.returncode not in (0, 1) or not results.exists():
        raise SystemExit(f"pytest failed ({completed.returncode}):\n{completed.stdout[-3000:]}")
    return completed.returncode, json.loads(results.read_text())


def a_a_runs(meter: str, args: argparse.Namespace) -> dict[str, Any]:
    """Save once, rerun ``args.runs`` times; count failed runs and collect the changes seen."""
    with tempfile.TemporaryDirectory(prefix="energy-a-a-") as name:
        directory = Path(name)
        train_units, infer_units = UNITS.get(meter, DEFAULT_UNITS)
        (directory / "test_a_a.py").write_text(
            WORKLOAD.format(train_units=train_units, infer_units=infer_units, threads=args.threads)
        )
        command = pytest_command(directory, meter, args)
        run_pytest([*command, "--energy-save"], directory)
        failed, stale, changes = 0, 0, {"TEC": [], "IEC": [], "E": []}
        for index in range(args.runs):
            returncode, document = run_pytest(command, directory)
            comparison = document["comparison"]
            failed += returncode == 1
            stale += comparison["counts"]["improved"] > 0
            for test in comparison["tests"]:
                for meter_view in test["meters"]:
                    for quantity in meter_view["quantities"]:
                        label = {"tec": "TEC", "iec": "IEC", "full_cycle": "E"}.get(
                            quantity["quantity"]
                        )
                        if label and quantity["change_percent"] is not None:
                            changes[label].append(quantity["change_percent"])
            print(
                f"  {meter} run {index + 1}/{args.runs}: exit {returncode}, {test['verdict']}",
                flush=True,
            )
    return {
        "meter": meter,
        "runs": args.runs,
        "false_alarms": failed,
        "stale_improvements": stale,
        "largest_change_percent": {
            label: max(values, key=abs) if values else None for label, values in changes.items()
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.false_alarms", description=__doc__)
    parser.add_argument("--runs", type=int, default=10, help="A/A reruns per meter (default 10)")
    parser.add_argument(
        "--meters",
        default="cputime,counted",
        help="comma list of meters, one A/A loop each (default cputime,counted)",
    )
    parser.add_argument("--rounds", type=int, default=5, help="inference rounds (default 5)")
    parser.add_argument(
        "--train-rounds", type=int, default=1, help="runs of the body for training noise"
    )
    parser.add_argument("--tolerance", default="5%", help="tolerance (default 5%%)")
    parser.add_argument("--alpha", type=float, default=0.01, help="significance (default 0.01)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads in the workload (default 1; 0: torch's default, whose idle "
        "OpenMP workers spin and are charged by cputime on a busy machine)",
    )
    parser.add_argument("--json", metavar="PATH", help="also write the summary as JSON")
    args = parser.parse_args(argv)
    os.environ.pop("PYTEST_ADDOPTS", None)
    summaries = [a_a_runs(meter.strip(), args) for meter in args.meters.split(",") if meter]
    print()
    print(
        tabulate(
            [
                [
                    s["meter"],
                    f"{s['false_alarms']} / {s['runs']}",
                    s["stale_improvements"],
                    *(
                        "—" if value is None else f"{value:+.1f} %"
                        for value in s["largest_change_percent"].values()
                    ),
                ]
                for s in summaries
            ],
            headers=["meter", "false alarms", "'improved'", "max |ΔTEC|", "max |ΔIEC|", "max |ΔE|"],
        )
    )
    print(
        f"\ntolerance {args.tolerance}, α = {args.alpha:g}, {args.rounds} inference rounds, "
        f"{args.train_rounds} train round(s), {args.threads or 'default'} torch thread(s); "
        f"a false alarm is a run the gate failed"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(summaries, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
