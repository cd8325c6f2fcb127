"""Where does the noise between sessions live? Fresh processes, run together or one by one.

Run with ``python -m benchmarks.process_noise``. Each process runs the same fixed work (a small
CNN's inference at one torch thread, after a warm-up) and prints its CPU seconds. Per run:

- **duet**: two processes at the same time, each pinned to its own CPU (Bulej et al., "Duet
  benchmarking", 2020): what the machine does to one (co-tenants, clocks), it does to both;
- **one after another**: two processes on the same CPU, as A/B pairs run.

It prints the spread of one side and of the ratio of the two (log sd), with address-space
randomisation on and, where ``setarch -R`` works, off. If the noise were the machine's state
at the moment, the duet ratio would be far tighter than one side; if it were the memory
layout a process draws, it would shrink without randomisation.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import statistics
import subprocess
import sys
from collections.abc import Sequence

from tabulate import tabulate

WORK = """
import time, torch
torch.set_num_threads(1)
torch.manual_seed(0)
model = torch.nn.Sequential(
    torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(),
    torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(),
    torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(32, 10),
).eval()
images = torch.randn(16, 3, 32, 32)
with torch.no_grad():
    for _ in range(20):
        model(images)
    started = time.process_time()
    for _ in range(200):
        model(images)
print(time.process_time() - started)
"""


def _launch(cpu: int, fixed_layout: bool) -> subprocess.Popen[str]:
    prefix = ["setarch", "-R"] if fixed_layout else []
    return subprocess.Popen(
        [*prefix, sys.executable, "-c", WORK],
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: os.sched_setaffinity(0, {cpu}),
    )


def _seconds(process: subprocess.Popen[str]) -> float:
    output, _ = process.communicate()
    if process.returncode != 0:
        raise SystemExit(f"the work process failed (exit {process.returncode})")
    return float(output)


def _row(label: str, pairs: Sequence[tuple[float, float]]) -> list[str]:
    one_side = [math.log(first) for first, _ in pairs]
    ratios = [math.log(first / second) for first, second in pairs]
    return [
        label,
        str(len(pairs)),
        f"{statistics.stdev(one_side):.3f}",
        f"{statistics.stdev(ratios):.3f}",
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15, help="pairs of processes per setting")
    args = parser.parse_args(argv)
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        raise SystemExit("--runs: duet needs two CPUs; this process may use one")
    layouts = [False]
    if shutil.which("setarch") and subprocess.run(["setarch", "-R", "true"]).returncode == 0:
        layouts.append(True)
    rows = []
    for fixed_layout in layouts:
        duet, sequential = [], []
        for _ in range(args.runs):
            first, second = _launch(cpus[0], fixed_layout), _launch(cpus[1], fixed_layout)
            duet.append((_seconds(first), _seconds(second)))
            first_seconds = _seconds(_launch(cpus[0], fixed_layout))
            sequential.append((first_seconds, _seconds(_launch(cpus[0], fixed_layout))))
        layout = "fixed layout (setarch -R)" if fixed_layout else "randomised layout"
        rows.append(_row(f"duet, same moment, CPUs {cpus[0]} and {cpus[1]}; {layout}", duet))
        rows.append(_row(f"one after another, CPU {cpus[0]}; {layout}", sequential))
    print(
        tabulate(
            rows,
            headers=["pairs of processes", "runs", "log sd, one side", "log sd, ratio"],
            disable_numparse=True,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
