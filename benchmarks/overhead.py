"""What measuring costs: window cost per meter, codecarbon's for comparison, and the slowdown.

Run with ``python -m benchmarks.overhead``. Everything is measured in this one run, side by
side, and printed with the targets:

* one window (``start()`` + ``stop()``) per meter that works here, and for cputime + counted
  together; codecarbon's ``OfflineEmissionsTracker`` first start in a process, a later
  start + stop, and a ``start_task`` / ``stop_task`` window;
* the slowdown of a fixed torch workload (a small CNN's training steps, one window per step)
  measured with each meter against not measured;
* through the ``energy`` fixture, as users open windows: ``with energy.train(...)`` for each
  meter set, counted's slowdown of training steps in one ``energy.train`` window (with the
  counts of every run compared), of the small CNN and of the GPU check's ResNet-56 at batch
  128 (larger operators, over which a cost per operator call weighs less), split into torch's
  dispatch floor (the same steps under a dispatch mode that only calls each operator) and
  counting's own share, and counted's added time per operator call; and the cputime TEC
  of those steps with and without counted beside it (counting's own CPU time is taken out of
  cputime's reading: the row says how much).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import io
import logging
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from tabulate import tabulate

from benchmarks.lowcarbon.loads import resnet56_training_step
from pytest_energy.fixture import EnergyFixture, energy_fixture_with
from pytest_energy.meters import MeterOptions, meter_class, probe_meters
from pytest_energy.meters.base import Meter
from pytest_energy.meters.counted import bookkeeping_seconds_per_call

WINDOW_TARGET_MICROSECONDS = 20.0
CODECARBON_FACTOR_TARGET = 25.0
SLOWDOWN_TARGET_PERCENT = 1.0
COUNTED_SLOWDOWN_TARGET_PERCENT = 10.0
BLOCK_STEPS = 3
"""Training steps per window when counted's slowdown of the small CNN is measured in blocks."""
RESNET56_BATCH_SIZE = 128
"""The GPU check's ResNet-56 load, timed here on the CPU: one step per block."""
SMALL_CNN_LOAD = "small CNN (2 convs, batch 32)"
RESNET56_LOAD = f"ResNet-56, batch {RESNET56_BATCH_SIZE}"


def energy_fixture(meters: Sequence[Meter]) -> EnergyFixture:
    """An ``energy`` fixture with ``meters``, built as the plugin builds it for a test."""
    return energy_fixture_with(list(meters), "benchmarks/overhead.py::window")


def passthrough_mode() -> contextlib.AbstractContextManager:
    """A torch dispatch mode that only calls each operator: the floor of per-operator counting."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Passthrough(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            return func(*args, **(kwargs or {}))

    return Passthrough()


def fixture_window_microseconds(meters: Sequence[Meter], pairs: int, repeats: int = 7) -> float:
    """Median over batches of one empty ``with energy.train(...)`` window's cost, in µs."""
    batches = []
    for _ in range(repeats):
        energy = energy_fixture(meters)
        names = [f"phase-{index}" for index in range(pairs)]
        started = time.perf_counter_ns()
        for name in names:
            with energy.train(name):
                pass
        batches.append((time.perf_counter_ns() - started) / pairs / 1e3)
    return statistics.median(batches)


def window_microseconds(meters: Sequence[Meter], pairs: int, repeats: int = 7) -> float:
    """Median over ``repeats`` batches of the mean cost of one empty window, in µs."""
    batches = []
    for _ in range(repeats):
        started = time.perf_counter_ns()
        for _ in range(pairs):
            for meter in meters:
                meter.start()
            for meter in reversed(meters):
                meter.stop()
        batches.append((time.perf_counter_ns() - started) / pairs / 1e3)
    return statistics.median(batches)


def codecarbon_costs(task_windows: int) -> dict[str, float]:
    """Seconds for codecarbon's first start, a later start + stop, and one task window."""
    from codecarbon import OfflineEmissionsTracker

    logging.getLogger("codecarbon").setLevel(logging.ERROR)
    settings = dict(
        country_iso_code="USA",
        save_to_file=False,
        log_level="error",
        measure_power_secs=3600,
        tracking_mode="process",
    )
    quiet = contextlib.redirect_stdout(io.StringIO())
    with quiet:
        started = time.perf_counter()
        first = OfflineEmissionsTracker(project_name="first", **settings)
        first.start()
        first_start_seconds = time.perf_counter() - started
        first.stop()
        later = OfflineEmissionsTracker(project_name="later", **settings)
        started = time.perf_counter()
        later.start()
        later.stop()
        later_seconds = time.perf_counter() - started
        tasks = OfflineEmissionsTracker(project_name="tasks", **settings)
        tasks.start()
        started = time.perf_counter()
        for index in range(task_windows):
            tasks.start_task(f"task-{index}")
            tasks.stop_task()
        task_seconds = (time.perf_counter() - started) / task_windows
        tasks.stop()
    return {
        "first start": first_start_seconds,
        "later start + stop": later_seconds,
        "start_task + stop_task": task_seconds,
    }


def make_workload(steps: int) -> Callable[[Sequence[Meter]], float]:
    """A fixed CNN training workload; returns a function timing it with windows per step.

    The time is the process's CPU time, not wall time: on a shared machine other processes
    change wall time by more than the overhead being measured, but not our own CPU seconds.
    """
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(16, 16, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(16, 10),
    )
    optimiser = torch.optim.SGD(model.parameters(), lr=0.01)
    images = torch.randn(32, 3, 32, 32)
    labels = torch.randint(0, 10, (32,))

    def step() -> None:
        optimiser.zero_grad()
        torch.nn.functional.cross_entropy(model(images), labels).backward()
        optimiser.step()

    def run(meters: Sequence[Meter]) -> float:
        gc.collect()
        started = time.process_time()
        for _ in range(steps):
            for meter in meters:
                meter.start()
            step()
            for meter in reversed(meters):
                meter.stop()
        return time.process_time() - started

    for _ in range(5):
        step()
    run.step = step  # type: ignore[attr-defined]
    return run


def fixture_training(
    step: Callable[[], None], steps: int, meters: Sequence[Meter], repeats: int
) -> tuple[float, list[dict[str, float]], list[float]]:
    """CPU seconds of ``steps`` training steps in one ``energy.train`` window, per repeat.

    Returns the fastest run's CPU seconds, each run's joules per meter (with the CPU seconds of
    bookkeeping cputime took out, under 'cputime bookkeeping removed') and each run's counted
    FLOPs (empty without counted), so a caller can check that every run counted the same.
    """
    seconds, joules, flops = [], [], []
    for repeat in range(repeats):
        energy = energy_fixture(meters)
        gc.collect()
        started = time.process_time()
        with energy.train(f"train-{repeat}"):
            for _ in range(steps):
                step()
        seconds.append(time.process_time() - started)
        readings = energy.phases[-1].readings
        joules.append({name: reading.joules for name, reading in readings.items()})
        if "cputime" in readings:
            removed = readings["cputime"].details.get("bookkeeping_removed", {})
            joules[-1]["cputime bookkeeping removed"] = sum(
                entry["cpu_seconds"] for entry in removed.values()
            )
        if "counted" in readings:
            flops.append(readings["counted"].flops)
    return min(seconds), joules, flops


def slowdown_percent(
    run: Callable[[Sequence[Meter]], float], meters: Sequence[Meter], repeats: int
) -> float:
    """Slowdown of the workload with ``meters`` against none, from interleaved runs.

    Runs alternate in ABBA order so that a drift or a first-in-pair effect cancels, and the
    fastest run of each is compared: on a shared machine interference only ever adds time, so
    the minimum is the closest to the workload's own cost (as ``timeit`` advises).
    """
    bare_seconds, measured_seconds = [], []
    for repeat in range(repeats):
        if repeat % 2 == 0:
            bare_seconds.append(run([]))
            measured_seconds.append(run(meters))
        else:
            measured_seconds.append(run(meters))
            bare_seconds.append(run([]))
    return 100.0 * (min(measured_seconds) / min(bare_seconds) - 1.0)


@dataclass(frozen=True)
class CountedSlowdown:
    """counted's slowdown of one training load, from interleaved blocks (percent of bare)."""

    blocks: int
    steps_per_block: int
    counted_percent: float
    quartiles_percent: tuple[float, float]
    floor_percent: float
    own_percent: float
    distinct_flops: tuple[float, ...]
    runs: int
    operator_calls_per_step: int
    microseconds_per_operator_call: float

    def rows(self, load: str) -> list[list[str]]:
        counts = (
            f"counts identical in {self.runs} runs"
            if len(self.distinct_flops) == 1
            else f"COUNTS DIFFER: {list(self.distinct_flops)}"
        )
        return [
            [
                f"{load}: counted, one energy.train window",
                f"{self.counted_percent:+.1f} %",
                "ok" if self.counted_percent <= COUNTED_SLOWDOWN_TARGET_PERCENT else "OVER 10 %",
                f"median of {self.blocks} interleaved blocks of {self.steps_per_block}-step "
                f"windows (quartiles {self.quartiles_percent[0]:+.1f} … "
                f"{self.quartiles_percent[1]:+.1f} %); {counts}",
            ],
            [
                f"{load}: torch's dispatch floor in it",
                f"{self.floor_percent:+.1f} %",
                "reported",
                "the same steps under a dispatch mode that only calls each operator (torch's "
                "per-operator Python dispatch, which any exact operator count pays)",
            ],
            [
                f"{load}: counting's own share",
                f"{self.own_percent:+.1f} %",
                "reported",
                "counted against the dispatch floor, block by block (cache lookup, tally)",
            ],
            [
                f"{load}: cost per operator call",
                f"{self.microseconds_per_operator_call:.1f} µs",
                "reported",
                f"counted's added CPU time per step divided by the step's "
                f"{self.operator_calls_per_step} operator calls",
            ],
        ]


def counted_slowdown(
    step: Callable[[], None], counted: Meter, blocks: int, steps_per_block: int
) -> CountedSlowdown:
    """counted's slowdown of ``step`` in one ``energy.train`` window, split into torch's floor.

    Short windows interleaved many times, judged on the median ratio within each block: runs of
    30 steps on this VM move by ±30 % from one to the next, more than counting costs. Each block
    also runs the steps under a dispatch mode that only calls each operator: what any
    per-operator Python hook costs in torch, the floor under counted's own share.
    """
    setups = ("bare", "dispatch floor", "counted")
    step()
    counted_ratios: list[float] = []
    floor_ratios: list[float] = []
    bare_seconds: list[float] = []
    counted_flops: list[float] = []
    for block in range(blocks):
        seconds_by_setup = {}
        for setup in setups[block % 3 :] + setups[: block % 3]:
            meters_in_window = [counted] if setup == "counted" else []
            floor = passthrough_mode() if setup == "dispatch floor" else contextlib.nullcontext()
            with floor:
                seconds, _, flops = fixture_training(step, steps_per_block, meters_in_window, 1)
            seconds_by_setup[setup] = seconds
            counted_flops.extend(flops)
        counted_ratios.append(seconds_by_setup["counted"] / seconds_by_setup["bare"])
        floor_ratios.append(seconds_by_setup["dispatch floor"] / seconds_by_setup["bare"])
        bare_seconds.append(seconds_by_setup["bare"] / steps_per_block)
    counted.start()
    step()
    operator_calls = int(counted.stop().details["operator_calls"])
    counted_ratio = statistics.median(counted_ratios)
    own_ratio = statistics.median(c / f for c, f in zip(counted_ratios, floor_ratios, strict=True))
    quartiles = statistics.quantiles(counted_ratios, n=4) if blocks > 1 else [counted_ratio] * 3
    return CountedSlowdown(
        blocks=blocks,
        steps_per_block=steps_per_block,
        counted_percent=100.0 * (counted_ratio - 1.0),
        quartiles_percent=(100.0 * (quartiles[0] - 1.0), 100.0 * (quartiles[2] - 1.0)),
        floor_percent=100.0 * (statistics.median(floor_ratios) - 1.0),
        own_percent=100.0 * (own_ratio - 1.0),
        distinct_flops=tuple(sorted(set(counted_flops))),
        runs=len(counted_flops),
        operator_calls_per_step=operator_calls,
        microseconds_per_operator_call=(counted_ratio - 1.0)
        * statistics.median(bare_seconds)
        / operator_calls
        * 1e6,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=2000, help="windows per timed batch")
    parser.add_argument("--steps", type=int, default=100, help="workload training steps")
    parser.add_argument("--repeats", type=int, default=11, help="interleaved workload repeats")
    parser.add_argument(
        "--blocks", type=int, default=99, help="interleaved blocks (bare, dispatch floor, counted)"
    )
    parser.add_argument(
        "--resnet-blocks",
        type=int,
        default=7,
        help=f"interleaved one-step blocks of {RESNET56_LOAD} (0: skip)",
    )
    parser.add_argument("--task-windows", type=int, default=200, help="codecarbon task windows")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    # loaded in most users' processes (torchvision loads it); counted's windows then set
    # torch.compile's stance, and pay for it here as they do there
    importlib.import_module("torch._dynamo")

    options = MeterOptions()
    working = [probe.name for probe in probe_meters(options) if probe.available]
    meters = {name: meter_class(name)(**options.constructor_kwargs(name)) for name in working}
    setups: dict[str, list[Meter]] = {"no meter (noise floor)": []}
    setups.update({name: [meter] for name, meter in meters.items()})
    if "cputime" in meters and "counted" in meters:
        setups["cputime + counted"] = [meters["cputime"], meters["counted"]]

    codecarbon = codecarbon_costs(args.task_windows)
    task_microseconds = codecarbon["start_task + stop_task"] * 1e6
    run = make_workload(args.steps)
    step_microseconds = min(run([]) for _ in range(3)) / args.steps * 1e6

    rows = []
    for label, setup in setups.items():
        pairs = args.pairs if "counted" not in label else max(1, args.pairs // 4)
        window = window_microseconds(setup, pairs)
        slowdown = slowdown_percent(run, setup, args.repeats)
        checks = []
        if label in ("cputime", "cputime + counted", "rapl", "nvml"):
            checks.append(
                "window ok" if window < WINDOW_TARGET_MICROSECONDS else "WINDOW OVER 20 µs"
            )
        if label in ("cputime", "rapl", "nvml"):
            share = 100 * window / step_microseconds
            checks.append("slowdown ok" if share < SLOWDOWN_TARGET_PERCENT else "SLOWDOWN OVER 1 %")
        if label in ("cputime", "cputime + counted"):
            factor = task_microseconds / window
            checks.append(
                "vs codecarbon ok" if factor >= CODECARBON_FACTOR_TARGET else "UNDER 25× CODECARBON"
            )
        if not setup:
            rows.append(
                [label, "—", "—", "—", f"{slowdown:+.2f}", "A/A: the measurement's own noise"]
            )
            continue
        rows.append(
            [
                label,
                f"{window:.2f}",
                f"{task_microseconds / window:.0f}×",
                f"{100 * window / step_microseconds:.3f}",
                f"{slowdown:+.2f}",
                ", ".join(checks) or "reported",
            ]
        )
    for name, seconds in codecarbon.items():
        rows.append([f"codecarbon {name}", f"{seconds * 1e6:.0f}", "", "", "", ""])

    fixture_rows = []
    for label, setup in setups.items():
        if not setup:
            continue
        pairs = max(1, args.pairs // 4)
        window = fixture_window_microseconds(setup, pairs)
        checks = []
        if label in ("cputime", "cputime + counted"):
            checks.append(
                "window ok" if window <= WINDOW_TARGET_MICROSECONDS else "WINDOW OVER 20 µs"
            )
            factor = task_microseconds / window
            checks.append(
                "vs codecarbon ok" if factor >= CODECARBON_FACTOR_TARGET else "UNDER 25× CODECARBON"
            )
        fixture_rows.append(
            [label, f"{window:.2f}", f"{task_microseconds / window:.0f}×", ", ".join(checks)]
        )

    training_rows = []
    step = run.step  # type: ignore[attr-defined]
    loads = [
        (SMALL_CNN_LOAD, lambda: step, BLOCK_STEPS, args.blocks),
        (RESNET56_LOAD, lambda: resnet56_training_step(RESNET56_BATCH_SIZE), 1, args.resnet_blocks),
    ]
    for load, build_step, steps_per_block, blocks in loads:
        if blocks <= 0:
            continue
        slowdown = counted_slowdown(build_step(), meters["counted"], blocks, steps_per_block)
        training_rows.extend(slowdown.rows(load))
    if "cputime" in meters and "counted" in meters:
        per_call_microseconds = bookkeeping_seconds_per_call() * 1e6  # measured once, up front
        alone_joules, beside_joules, removed_seconds = [], [], []
        for repeat in range(args.repeats):
            pair = (
                ([meters["cputime"]], [meters["cputime"], meters["counted"]])
                if repeat % 2 == 0
                else ([meters["cputime"], meters["counted"]], [meters["cputime"]])
            )
            for setup in pair:
                _, joules, _ = fixture_training(step, args.steps, setup, 1)
                (beside_joules if len(setup) == 2 else alone_joules).append(joules[0]["cputime"])
                if len(setup) == 2:
                    removed_seconds.append(joules[0]["cputime bookkeeping removed"])
        alone = statistics.median(alone_joules)
        beside = statistics.median(beside_joules)
        spread = 100.0 * (max(alone_joules) - min(alone_joules)) / alone
        training_rows.append(
            [
                "cputime TEC: alone vs beside counted (median J)",
                f"{alone:.4f} vs {beside:.4f} ({100 * (beside / alone - 1):+.1f} %)",
                "within noise" if abs(100 * (beside / alone - 1)) <= spread else "ABOVE NOISE",
                f"alone's own spread (max − min) over {args.repeats} runs: {spread:.1f} %; "
                f"counting's CPU time taken out of cputime beside it: "
                f"{statistics.median(removed_seconds) * 1e3:.1f} ms per run "
                f"({per_call_microseconds:.2f} µs per operator call, measured at start)",
            ]
        )

    not_here = [probe.reason_unavailable for probe in probe_meters(options) if not probe.available]
    print(
        f"Overhead of measuring, one run ({args.steps} CNN training steps per workload run, "
        f"one window per step, {args.repeats} interleaved repeats, 1 torch thread; slowdown of "
        f"the fastest run in process CPU time)\n"
    )
    print(
        tabulate(
            rows,
            headers=[
                "window",
                "µs per start+stop",
                "codecarbon task window / this",
                "window / step %",
                "workload slowdown %",
                "target",
            ],
            disable_numparse=True,
        )
    )
    print(f"\nOne training step: {step_microseconds:.0f} µs of CPU time.")
    print("Targets: window < 20 µs (cputime; cputime + counted), ≥ 25× below codecarbon's task")
    print("window; slowdown < 1 % for cputime / rapl / nvml, judged on the window's share of a")
    print("step (both measured above): the direct slowdown of whole runs is printed beside it,")
    print("but on a shared machine it moves by several % between identical runs (noise floor).")
    print("counted's slowdown of a training step: ≤ 10 % with identical counts (table below).")
    print("torch.compile (dynamo) is loaded, as torchvision loads it in most users' processes.")
    for reason in not_here:
        print(f"not measured here: {reason}")
    print("\nThrough the energy fixture, as users open windows:\n")
    print(
        tabulate(
            fixture_rows,
            headers=[
                "with energy.train(...)",
                "µs per window",
                "codecarbon task window / this",
                "target",
            ],
            disable_numparse=True,
        )
    )
    print(
        f"\nTraining steps in one energy.train window (cputime TEC: {args.steps} small-CNN "
        f"steps, {args.repeats} repeats):\n"
    )
    print(
        tabulate(
            training_rows,
            headers=["measurement", "figure", "target", "note"],
            disable_numparse=True,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
