"""Where cputime's noise lives: round length, warm-up and torch's threads, across sessions.

Run with ``python -m benchmarks.measurement_noise`` (defaults: 6 sessions per thread setting,
torch's default threads and one thread, alternating). Each session is a fresh Python process
that trains a small CNN a few SGD steps (its training CPU seconds: TEC's noise), times its
first inference calls one by one (how fast figures settle), then measures inference with the
``cputime`` meter in rounds of several lengths, in random order, five rounds each.

It prints, per thread setting and round length, the spread *between* sessions (standard
deviation of the log of each session's median round: what the gate's session rules see) next
to the spread *within* sessions (coefficient of variation of the rounds: what a per-round rule
would have seen), and the mean µs of CPU per sample; then how many calls the first inference
needed to come within 5 % of the settled time. The fixture's defaults (round length, warm-up
by time) and the README's advice on threads come from these figures.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

from tabulate import tabulate

ROUND_SECONDS = (0.01, 0.05, 0.1, 0.25, 0.5)
ROUNDS = 5
FIRST_CALLS = 30


def one_session(round_seconds: Sequence[float], seed: int) -> dict[str, Any]:
    """One session's figures (runs in the child process)."""
    import random

    import torch
    from torch import nn

    from pytest_energy.meters.cputime import CpuTimeMeter

    torch.manual_seed(0)
    meter = CpuTimeMeter()
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 8 * 8, 10),
    )  # fmt: skip
    images, labels = torch.randn(32, 3, 32, 32), torch.randint(0, 10, (32,))
    optimiser = torch.optim.SGD(model.parameters(), lr=0.01)
    meter.start()
    for _ in range(8):
        optimiser.zero_grad()
        nn.functional.cross_entropy(model(images), labels).backward()
        optimiser.step()
    train_joules = meter.stop().joules
    model.eval()
    batch = torch.randn(32, 3, 32, 32)

    def infer() -> None:
        with torch.no_grad():
            model(batch)

    first_calls = []
    for _ in range(FIRST_CALLS):
        started = time.process_time()
        infer()
        first_calls.append(time.process_time() - started)
    order = list(round_seconds)
    random.Random(seed).shuffle(order)
    rounds: dict[str, list[float]] = {}
    for seconds in order:
        calls = 1
        while True:
            started = time.perf_counter()
            for _ in range(calls):
                infer()
            if time.perf_counter() - started >= seconds:
                break
            calls *= 2
        per_sample = []
        for _ in range(ROUNDS):
            meter.start()
            for _ in range(calls):
                infer()
            per_sample.append(meter.stop().joules / (calls * 32))
        rounds[str(seconds)] = per_sample
    return {
        "threads": torch.get_num_threads(),
        "train_joules": train_joules,
        "first_calls_seconds": first_calls,
        "joules_per_sample": rounds,
        "watts_per_thread": meter.wattage.watts_per_thread,
    }


def run_sessions(threads: str, sessions: int, first_seed: int) -> list[dict[str, Any]]:
    environment = dict(os.environ)
    if threads != "default":
        environment["OMP_NUM_THREADS"] = threads
    documents = []
    for index in range(sessions):
        completed = subprocess.run(
            [
                sys.executable,
                "-m",
                "benchmarks.measurement_noise",
                "--child",
                str(first_seed + index),
            ],
            env=environment,
            capture_output=True,
            text=True,
            check=False,
        )
        if completed.returncode != 0:
            raise SystemExit(f"session failed:\n{completed.stderr}")
        documents.append(json.loads(completed.stdout.splitlines()[-1]))
    return documents


def _log_spread(values: Sequence[float]) -> float:
    return statistics.stdev(math.log(value) for value in values)


def settle_calls(first_calls: Sequence[float], tolerance: float = 0.05) -> int:
    """Calls until one comes within ``tolerance`` of the median of the last ten."""
    settled = statistics.median(first_calls[-10:])
    for index, seconds in enumerate(first_calls):
        if abs(seconds - settled) <= tolerance * settled:
            return index + 1
    return len(first_calls)


def summary_rows(threads: str, documents: Sequence[dict[str, Any]]) -> list[list[Any]]:
    rows = []
    for seconds in ROUND_SECONDS:
        key = str(seconds)
        medians = [statistics.median(d["joules_per_sample"][key]) for d in documents]
        within = [
            statistics.stdev(d["joules_per_sample"][key])
            / statistics.mean(d["joules_per_sample"][key])
            for d in documents
        ]
        watts = documents[0]["watts_per_thread"]
        rows.append(
            [
                threads,
                f"{seconds * 1000:.0f} ms",
                f"{_log_spread(medians):.3f}",
                f"{statistics.median(within):.3f}",
                f"{statistics.mean(medians) / watts * 1e6:.0f}",
                f"{min(medians) / watts * 1e6:.0f} … {max(medians) / watts * 1e6:.0f}",
            ]
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.measurement_noise", description=__doc__
    )
    parser.add_argument("--sessions", type=int, default=6, help="sessions per thread setting")
    parser.add_argument("--threads", default="default,1", help="comma list: default and/or N")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        print(json.dumps(one_session(ROUND_SECONDS, args.child)))
        return 0
    settings = [part.strip() for part in args.threads.split(",") if part.strip()]
    streams: dict[str, list[dict[str, Any]]] = {setting: [] for setting in settings}
    for index in range(args.sessions):
        for setting in settings:
            streams[setting] += run_sessions(setting, 1, index)
            print(f"  session {index + 1}/{args.sessions}, threads {setting}", flush=True)
    rows, training, warmup = [], [], []
    for setting, documents in streams.items():
        rows += summary_rows(setting, documents)
        train = [d["train_joules"] for d in documents]
        training.append([setting, documents[0]["threads"], f"{_log_spread(train):.3f}"])
        calls = [settle_calls(d["first_calls_seconds"]) for d in documents]
        ratio = [
            d["first_calls_seconds"][0] / statistics.median(d["first_calls_seconds"][-10:])
            for d in documents
        ]
        warmup.append(
            [
                setting,
                f"{statistics.median(calls):.0f} (max {max(calls)})",
                f"{statistics.median(ratio):.2f}×",
            ]
        )
    print()
    print(
        tabulate(
            rows,
            headers=[
                "threads",
                "round",
                "between sessions (log sd)",
                "within session (CV)",
                "CPU µs / sample (mean)",
                "session range (µs)",
            ],
        )
    )
    print()
    print(
        tabulate(
            training, headers=["threads", "torch threads", "8 SGD steps: between sessions (log sd)"]
        )
    )
    print()
    print(
        tabulate(
            warmup,
            headers=["threads", "calls to settle within 5 % (median)", "first call / settled"],
        )
    )
    print(
        f"\n{args.sessions} fresh sessions per setting, alternating; {ROUNDS} cputime rounds per "
        f"length; {os.cpu_count()} CPU threads here; OMP_WAIT_POLICY "
        f"{os.environ.get('OMP_WAIT_POLICY', 'unset')}; "
        f"load average {os.getloadavg()[0]:.1f} at the end"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
