"""The steps of ``make gpu-check``; each takes a ``StepContext`` and records figures on it.

torch, pynvml and the benchmark are imported inside the steps, so the helpers here (command
runs, junit and results parsing, test selection) load and are tested on any CPU machine.
"""

from __future__ import annotations

import contextlib
import gzip
import importlib.util
import json
import os
import signal
import statistics
import subprocess
import threading
import time
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from scripts.gpu_check_maths import (
    aligned_window,
    integrate_over,
    relative_difference,
    sample_interval_seconds,
    summarise_differences,
    update_period_seconds,
)

REPOSITORY = Path(__file__).resolve().parent.parent
COUNTER_TARGET = 0.02
"""The counter and integrated power should agree within 2 % per window (the issue's target)."""
WINDOW_SECONDS = (1.0, 2.0, 5.0, 1.5, 3.0, 1.0, 2.0, 4.0, 1.5, 2.5)
"""Ten windows of 1-5 s per load."""
WINDOW_COST_TARGET_MICROSECONDS = 1000.0
"""DESIGN.md: a counter meter's start + stop costs well under a millisecond."""
REFERENCE_FAMILIES = ("baseline",)
FAMILY_ORDER = ("baseline", "quantization", "distillation", "distributed", "nas", "pruning")
"""Cheap families first: when the dry run runs out of time, the costly ones are the ones lost."""
LABELS_FILE_VARIABLE = "GPU_CHECK_LABELS_FILE"
DEVICE_VARIABLE = "GPU_CHECK_DEVICE"
"""``cpu`` rehearses the GPU steps on a CPU (tests and development, with a stand-in pynvml)."""


def device() -> str:
    """Where the steps put their loads: ``cuda``, or ``cpu`` in a rehearsal."""
    return os.environ.get(DEVICE_VARIABLE, "cuda")


def synchronize(torch: ModuleType) -> None:
    """Wait for the queued work of the load's device."""
    if device() == "cuda":
        torch.cuda.synchronize()


# ---------------------------------------------------------------- commands and their results


@dataclass(frozen=True)
class CommandResult:
    """How a command ended: its exit status, whether it was stopped at its time limit, its log."""

    returncode: int | None
    timed_out: bool
    seconds: float
    log: Path

    def output(self) -> str:
        with contextlib.suppress(OSError):
            return self.log.read_text(encoding="utf-8", errors="replace")
        return ""


def interruptible() -> None:
    """In a new process: let SIGINT interrupt it again.

    A shell without job control starts background commands with SIGINT ignored, and Python
    keeps it ignored; pytest then could not be asked to wind down (and write its files).
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_command(
    arguments: Sequence[str],
    log: Path,
    seconds: float,
    environment: Mapping[str, str] | None = None,
    wind_down_seconds: float = 10.0,
) -> CommandResult:
    """Run a command in the checkout with a time limit, output to ``log``.

    At the limit the command gets SIGINT (pytest then ends the session and writes its JSON
    and junit files), and is killed if it has not ended ``wind_down_seconds`` later.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    timed_out = False
    with log.open("w", encoding="utf-8") as stream:
        stream.write("$ " + " ".join(arguments) + "\n")
        stream.flush()
        process = subprocess.Popen(
            list(arguments),
            stdout=stream,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=REPOSITORY,
            env=dict(environment) if environment is not None else None,
            preexec_fn=interruptible,
        )
        try:
            process.wait(timeout=max(seconds, 1.0))
        except subprocess.TimeoutExpired:
            timed_out = True
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=wind_down_seconds)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        except BaseException:
            process.kill()
            process.wait()
            raise
    return CommandResult(process.returncode, timed_out, time.monotonic() - started, log)


@dataclass
class JunitSummary:
    """Outcome counts of a pytest run, and each test's outcome and seconds."""

    outcomes: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    messages: dict[str, str] = field(default_factory=dict)

    def count(self, outcome: str) -> int:
        return sum(value == outcome for value in self.outcomes.values())


def read_junit(path: Path) -> JunitSummary:
    """Each test case of a junit XML file: ``passed``, ``failed``, ``error`` or ``skipped``."""
    summary = JunitSummary()
    for case in ElementTree.parse(path).getroot().iter("testcase"):
        if not case.get("name"):
            continue  # pytest's record of an interrupted session, not a test
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        outcome, message = "passed", ""
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = {"failure": "failed"}.get(child.tag, child.tag)
                message = " ".join((child.get("message") or "").split())[:200]
                break
        summary.outcomes[name] = outcome
        summary.seconds[name] = float(case.get("time") or 0.0)
        summary.messages[name] = message
    return summary


def python_command(context: Any, *arguments: str) -> list[str]:
    return [context.python, *arguments]


def _pytest(context: Any, *arguments: str) -> list[str]:
    return python_command(context, "-m", "pytest", "-p", "no:cacheprovider", *arguments)


# ---------------------------------------------------------------- environment


def environment(context: Any) -> None:
    """Versions (as labels) and a CUDA round trip: a GPU torch cannot use fails here first."""
    import torch

    context.add("torch", torch.__version__, kind="label")
    context.add("torch CUDA", str(torch.version.cuda), kind="label")
    with contextlib.suppress(Exception):
        context.add("cuDNN", str(torch.backends.cudnn.version()), kind="label")
    with contextlib.suppress(Exception):
        import torch.distributed as dist

        nccl = dist.is_available() and dist.is_nccl_available()
        version = torch.cuda.nccl.version() if nccl else "not available"
        if isinstance(version, tuple):
            version = ".".join(map(str, version))
        context.add("NCCL", str(version), kind="label")
    if device() != "cuda":
        context.note(f"rehearsal on {device()}: no CUDA round trip")
        return
    _require_cuda(torch)
    context.add("CUDA devices seen by torch", torch.cuda.device_count(), kind="label")
    properties = torch.cuda.get_device_properties(0)
    context.add(
        "torch cuda:0",
        f"{properties.name}, compute capability {properties.major}.{properties.minor}, "
        f"{properties.total_memory / 2**30:.0f} GiB",
        kind="label",
    )
    started = time.perf_counter()
    ones = torch.ones(1 << 20, device="cuda")
    total = float(ones.sum())
    synchronize(torch)
    context.add(
        "first CUDA round trip",
        time.perf_counter() - started,
        "s",
        kind="timed",
        note="context creation included",
    )
    if total != float(1 << 20):
        raise RuntimeError(f"CUDA summed 2^20 ones to {total}")


def _require_cuda(torch: ModuleType) -> None:
    if device() == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            "torch.cuda.is_available() is False although NVML sees a GPU "
            f"(torch {torch.__version__} built for CUDA {torch.version.cuda}; "
            "a driver too old for it?)"
        )


# ---------------------------------------------------------------- nvml tests


def nvml_tests(context: Any) -> None:
    """Run the nvml meter's own tests; the real-driver test runs only where a driver is."""
    junit = context.out_dir / "nvml-tests.xml"
    result = run_command(
        _pytest(context, "tests/test_meter_nvml.py", "-q", "-rA", f"--junitxml={junit}"),
        context.out_dir / "logs" / "nvml-tests-pytest.log",
        context.seconds_left() - 3,
        context.environment,
    )
    if not junit.exists():
        raise RuntimeError(
            f"pytest wrote no junit file (exit status {result.returncode}"
            + (", stopped at its time limit" if result.timed_out else "")
            + "); see logs/nvml-tests-pytest.log"
        )
    summary = read_junit(junit)
    record_junit(context, summary, "tests/test_meter_nvml.py")
    for name in [name for name in summary.outcomes if "real_gpu" in name]:
        context.add(
            name.rsplit("::", 1)[-1],
            summary.outcomes[name],
            kind="outcome",
            target="passed",
            ok=summary.outcomes[name] == "passed",
            note=summary.messages[name],
        )


def record_junit(context: Any, summary: JunitSummary, what: str) -> None:
    """Counts of a pytest run's outcomes as figures; failing tests are named in the note."""
    failing = [name for name, outcome in summary.outcomes.items() if outcome in ("failed", "error")]
    context.add(f"{what}: passed", summary.count("passed"), "tests", kind="outcome")
    context.add(f"{what}: skipped", summary.count("skipped"), "tests", kind="outcome")
    context.add(
        f"{what}: failed or errors",
        len(failing),
        "tests",
        kind="outcome",
        target="0",
        ok=not failing,
        note=", ".join(name.rsplit("::", 1)[-1] for name in failing)[:300],
    )


# ---------------------------------------------------------------- nvml counter vs power


class PowerSampler:
    """A thread that polls one GPU's power, instant power and energy counter, as fast as it can.

    Every value is stamped with the midpoint of the NVML call that read it, on
    ``time.perf_counter``'s clock (the one the windows are timed on).
    """

    def __init__(self, nvml: ModuleType, handle: Any, interval_seconds: float = 0.001) -> None:
        self._nvml = nvml
        self._handle = handle
        self._interval_seconds = interval_seconds
        self.power_watts: list[tuple[float, float]] = []
        self.instant_watts: list[tuple[float, float]] = []
        self.counter_millijoules: list[tuple[float, float]] = []
        self.instant_field = getattr(nvml, "NVML_FI_DEV_POWER_INSTANT", 186)
        self.instant_supported = self._read_instant() is not None
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gpu-check-sampler", daemon=True)

    def _read_instant(self) -> float | None:
        try:
            value = self._nvml.nvmlDeviceGetFieldValues(self._handle, [self.instant_field])[0]
        except Exception:
            return None
        if getattr(value, "nvmlReturn", 1) != 0:
            return None
        return _field_number(value) / 1000

    def _stamp(self, read: Callable[[], Any]) -> tuple[float, Any]:
        before = time.perf_counter()
        value = read()
        return (before + time.perf_counter()) / 2, value

    def _run(self) -> None:
        nvml, handle = self._nvml, self._handle
        try:
            while not self._stop.is_set():
                seconds, milliwatts = self._stamp(lambda: nvml.nvmlDeviceGetPowerUsage(handle))
                self.power_watts.append((seconds, milliwatts / 1000))
                seconds, millijoules = self._stamp(
                    lambda: nvml.nvmlDeviceGetTotalEnergyConsumption(handle)
                )
                self.counter_millijoules.append((seconds, float(millijoules)))
                if self.instant_supported:
                    seconds, watts = self._stamp(self._read_instant)
                    if watts is not None:
                        self.instant_watts.append((seconds, watts))
                time.sleep(self._interval_seconds)
        except BaseException as error:
            self.error = error

    def start(self) -> None:
        self._thread.start()

    def wait_past(self, seconds: float, timeout_seconds: float = 2.0) -> None:
        """Wait until every series has a sample later than ``seconds``."""
        give_up = time.perf_counter() + timeout_seconds
        while time.perf_counter() < give_up and self.error is None:
            series = [self.power_watts, self.counter_millijoules]
            if self.instant_supported:
                series.append(self.instant_watts)
            if all(values and values[-1][0] > seconds for values in series):
                return
            time.sleep(0.005)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def _field_number(value: Any) -> float:
    """The number in an ``nvmlFieldValue_t``, read by its value type."""
    members = {0: "dVal", 1: "uiVal", 2: "ulVal", 3: "ullVal", 4: "sllVal", 5: "siVal"}
    return float(getattr(value.value, members.get(getattr(value, "valueType", 1), "uiVal")))


def without_energy_counter(nvml: ModuleType) -> ModuleType:
    """``nvml`` with the energy counter answering NOT_SUPPORTED: the meter's fallback path."""
    proxy = ModuleType(f"{nvml.__name__}_without_energy_counter")

    def refuse(handle: Any) -> int:
        raise nvml.NVMLError(getattr(nvml, "NVML_ERROR_NOT_SUPPORTED", 3))

    proxy.__getattr__ = lambda name: getattr(nvml, name)  # type: ignore[method-assign]
    proxy.nvmlDeviceGetTotalEnergyConsumption = refuse  # type: ignore[attr-defined]
    return proxy


@dataclass(frozen=True)
class CounterWindow:
    """One window of a load: its edges, the nvml meter's joules and the fallback meter's."""

    load: str
    start_seconds: float
    end_seconds: float
    counter_joules: float
    fallback_joules: float | None


WARMUP_SECONDS = 1.5
"""Each load runs this long before its first window: kernels chosen, clocks and power settled."""


def training_batch_size() -> int:
    """The paper's batch of 128 on a GPU; 8 in a CPU rehearsal, which only checks the code."""
    return 128 if device() == "cuda" else 8


def gemm_load(torch: ModuleType) -> Callable[[], None]:
    """bfloat16 8192² matrix products, eight per call: a steady, power-limited load."""
    size = 8192 if device() == "cuda" else 256
    left = torch.randn(size, size, device=device(), dtype=torch.bfloat16)
    right = torch.randn(size, size, device=device(), dtype=torch.bfloat16)
    product = torch.empty_like(left)

    def run() -> None:
        for _ in range(8):
            torch.mm(left, right, out=product)

    return run


def resnet56_training(torch: ModuleType, batch_size: int = 128) -> Callable[[], None]:
    """One SGD step of the benchmark's CIFAR ResNet-56 on a random batch, on the device."""
    from benchmarks.lowcarbon.loads import resnet56_training_step

    return resnet56_training_step(batch_size, device())


def _run_for(torch: ModuleType, work: Callable[[], None], seconds: float) -> None:
    until = time.perf_counter() + seconds
    while time.perf_counter() < until:
        work()
        synchronize(torch)


def window_cost_microseconds(meters: Sequence[Any], windows: int = 200, batches: int = 5) -> float:
    """Median over batches of the mean wall time of one empty window of ``meters``, in µs."""
    costs = []
    for _ in range(batches):
        started = time.perf_counter()
        for _ in range(windows):
            for meter in meters:
                meter.start()
            for meter in reversed(meters):
                meter.stop()
        costs.append((time.perf_counter() - started) / windows * 1e6)
    return statistics.median(costs)


def nvml_counter(context: Any) -> None:
    """The energy counter against integrated power on real loads, and the meter's own costs."""
    import pynvml
    import torch

    from pytest_energy.meters.nvml import ENERGY_COUNTER, NvmlMeter

    _require_cuda(torch)
    torch.ones(1, device=device()).sum().item()
    meter = NvmlMeter()
    fallback = NvmlMeter(nvml=without_energy_counter(pynvml))
    gpu = meter.gpus[0]
    context.add(
        "gpu:0 measured by",
        gpu.method,
        kind="label",
        target=ENERGY_COUNTER,
        ok=gpu.method == ENERGY_COUNTER,
    )
    context.add("fallback meter measures by", fallback.gpus[0].method, kind="label")
    sampler = PowerSampler(pynvml, gpu.handle)
    sampler.start()
    windows: list[CounterWindow] = []
    try:
        with context.part("window cost"):
            counter_cost = window_cost_microseconds([meter])
            context.add(
                "nvml window (start + stop), energy counter, CUDA initialised",
                counter_cost,
                "µs",
                kind="timed",
                target=f"< {WINDOW_COST_TARGET_MICROSECONDS:.0f} µs",
                ok=counter_cost < WINDOW_COST_TARGET_MICROSECONDS,
            )
            context.add(
                "nvml window (start + stop), power-polling fallback",
                window_cost_microseconds([fallback], windows=50),
                "µs",
                kind="timed",
            )
        loads = (
            ("GEMM", gemm_load),
            ("ResNet-56 training", lambda torch: resnet56_training(torch, training_batch_size())),
        )
        for number, (load_name, make_load) in enumerate(loads):
            with context.part(f"{load_name} windows"):
                windows += _load_windows(
                    context,
                    torch,
                    meter,
                    fallback,
                    load_name,
                    make_load(torch),
                    len(loads) - number,
                )
                if device() == "cuda":
                    torch.cuda.empty_cache()
    finally:
        sampler.wait_past(time.perf_counter())
        sampler.stop()
        meter.close()
        fallback.close()
    if sampler.error is not None:
        context.note(f"the sampler stopped: {type(sampler.error).__name__}: {sampler.error}")
    _save_samples(context, sampler, windows)
    _counter_figures(context, sampler, windows)


def _load_windows(
    context: Any,
    torch: ModuleType,
    meter: Any,
    fallback: Any,
    load_name: str,
    work: Callable[[], None],
    loads_left: int,
) -> list[CounterWindow]:
    """Run ``work`` without pause and measure the ten windows of ``WINDOW_SECONDS`` inside it."""
    domain = meter.gpus[0].domain
    _run_for(torch, work, WARMUP_SECONDS)
    windows = []
    for number, seconds in enumerate(WINDOW_SECONDS):
        reserve = 8.0 + (loads_left - 1) * (sum(WINDOW_SECONDS) / 2 + 4)
        if context.seconds_left() - seconds < reserve:
            context.note(f"{load_name}: {number} of {len(WINDOW_SECONDS)} windows (time budget)")
            break
        synchronize(torch)
        before = time.perf_counter()
        meter.start()
        fallback.start()
        start = (before + time.perf_counter()) / 2
        _run_for(torch, work, seconds)
        synchronize(torch)
        before = time.perf_counter()
        fallback_reading = fallback.stop()
        reading = meter.stop()
        end = (before + time.perf_counter()) / 2
        windows.append(
            CounterWindow(
                load_name,
                start,
                end,
                reading.joules_by_domain[domain],
                fallback_reading.joules_by_domain.get(fallback.gpus[0].domain),
            )
        )
    _run_for(torch, work, 0.2)  # power samples past the last window's end
    return windows


def _save_samples(context: Any, sampler: PowerSampler, windows: Sequence[CounterWindow]) -> None:
    """The raw samples (gzipped CSV) and windows (JSON), for a second look after the lease."""
    with contextlib.suppress(OSError):
        with gzip.open(context.out_dir / "nvml-samples.csv.gz", "wt", encoding="utf-8") as stream:
            stream.write("series,seconds,value\n")
            for series, samples in (
                ("power_watts", sampler.power_watts),
                ("instant_watts", sampler.instant_watts),
                ("counter_millijoules", sampler.counter_millijoules),
            ):
                stream.writelines(f"{series},{t:.6f},{value:.3f}\n" for t, value in samples)
        (context.out_dir / "nvml-windows.json").write_text(
            json.dumps([window.__dict__ for window in windows], indent=1), encoding="utf-8"
        )


def _counter_figures(context: Any, sampler: PowerSampler, windows: Sequence[CounterWindow]) -> None:
    context.add(
        "poll interval achieved", sample_interval_seconds(sampler.power_watts), "s", kind="timed"
    )
    context.add(
        "energy counter update period (observed)",
        update_period_seconds(sampler.counter_millijoules),
        "s",
        note="DESIGN.md expects about 0.1 s",
    )
    context.add(
        "nvmlDeviceGetPowerUsage update period (observed)",
        update_period_seconds(sampler.power_watts),
        "s",
    )
    if sampler.instant_supported:
        context.add(
            "instant power field update period (observed)",
            update_period_seconds(sampler.instant_watts),
            "s",
        )
    else:
        context.note("NVML_FI_DEV_POWER_INSTANT is not supported here: no instant-power figures")
    for load in dict.fromkeys(window.load for window in windows):
        chosen = [window for window in windows if window.load == load]
        with context.part(f"{load} comparison"):
            _compare_load(context, sampler, load, chosen)


def _compare_load(
    context: Any, sampler: PowerSampler, load: str, windows: Sequence[CounterWindow]
) -> None:
    seconds = [window.end_seconds - window.start_seconds for window in windows]
    context.add(
        f"{load}: windows",
        len(windows),
        kind="outcome",
        target=">= 10",
        ok=len(windows) >= 10,
        note=f"{min(seconds):.2f}-{max(seconds):.2f} s each",
    )
    counter_joules = sum(window.counter_joules for window in windows)
    context.add(f"{load}: mean power by the counter", counter_joules / sum(seconds), "W")
    comparisons: list[tuple[str, list[float], bool]] = [
        (
            "nvml meter (counter) vs integrated nvmlDeviceGetPowerUsage",
            [
                relative_difference(
                    window.counter_joules,
                    integrate_over(sampler.power_watts, window.start_seconds, window.end_seconds),
                )
                for window in windows
            ],
            True,
        )
    ]
    if sampler.instant_watts:
        comparisons.append(
            (
                "nvml meter (counter) vs integrated instant power",
                [
                    relative_difference(
                        window.counter_joules,
                        integrate_over(
                            sampler.instant_watts, window.start_seconds, window.end_seconds
                        ),
                    )
                    for window in windows
                ],
                False,
            )
        )
    aligned = [
        aligned_window(
            sampler.counter_millijoules,
            sampler.power_watts,
            window.start_seconds,
            window.end_seconds,
        )
        for window in windows
    ]
    comparisons.append(
        (
            "counter between its own updates vs integrated nvmlDeviceGetPowerUsage",
            [
                relative_difference(item.counter_joules, item.power_joules)
                for item in aligned
                if item is not None
            ],
            False,
        )
    )
    comparisons.append(
        (
            "power-polling fallback meter vs nvml meter (counter)",
            [
                relative_difference(window.fallback_joules, window.counter_joules)
                for window in windows
                if window.fallback_joules is not None
            ],
            False,
        )
    )
    for name, differences, judged in comparisons:
        if not differences:
            context.note(f"{load}: {name}: no windows to compare")
            continue
        summary = summarise_differences(differences, COUNTER_TARGET)
        target = f"within ±{COUNTER_TARGET:.0%}" if judged else ""
        context.add(f"{load}: {name}, median", 100 * summary.median, "%")
        context.add(
            f"{load}: {name}, largest",
            100 * summary.largest,
            "%",
            target=target,
            ok=summary.all_within_target if judged else None,
            note=f"{summary.within_target} of {summary.windows} windows within ±2 %",
        )


# ---------------------------------------------------------------- counted's cost on a GPU


def timed_seconds_per_step(
    torch: ModuleType, step: Callable[[], None], steps: int, wrap: Callable[[int], Any] | None
) -> float:
    """Wall seconds per training step, synchronised at both ends; ``wrap(i)`` opens a window."""
    synchronize(torch)
    started = time.perf_counter()
    for index in range(steps):
        if wrap is None:
            step()
        else:
            with wrap(index):
                step()
    synchronize(torch)
    return (time.perf_counter() - started) / steps


def interleaved_slowdown(
    measure_bare: Callable[[], float], measure_with: Callable[[], float], pairs: int
) -> tuple[float, float, float]:
    """Bare and measured seconds (fastest of each, ABBA order) and the slowdown in percent."""
    bare, measured = [], []
    for pair in range(pairs):
        if pair % 2 == 0:
            bare.append(measure_bare())
            measured.append(measure_with())
        else:
            measured.append(measure_with())
            bare.append(measure_bare())
    return min(bare), min(measured), 100.0 * (min(measured) / min(bare) - 1.0)


@contextlib.contextmanager
def meter_window(meters: Sequence[Any]) -> Any:
    for meter in meters:
        meter.start()
    try:
        yield
    finally:
        for meter in reversed(meters):
            meter.stop()


def user_fixture(meters: Sequence[Any]) -> Any:
    """The ``energy`` fixture object as a test gets it under ``--energy`` with ``meters``."""
    from pytest_energy.fixture import energy_fixture_with

    return energy_fixture_with(
        list(meters), "scripts/gpu_check.py::counted-overhead", warmup_calls=0
    )


def counted_overhead(context: Any) -> None:
    """counted's slowdown of a ResNet-56 step at batch 128, and energy.train's window cost."""
    import torch

    from pytest_energy.meters.counted import CountedMeter
    from pytest_energy.meters.nvml import NvmlMeter

    _require_cuda(torch)
    batch_size = training_batch_size()
    step = resnet56_training(torch, batch_size=batch_size)
    for _ in range(10):
        step()
    synchronize(torch)
    counted = CountedMeter()
    nvml = NvmlMeter()
    try:
        bare_step = timed_seconds_per_step(torch, step, 20, None)
        context.add(
            f"ResNet-56 training step, batch {batch_size}, not measured",
            1e3 * bare_step,
            "ms",
            kind="timed",
        )
        with context.part("counted reading of one step"):
            counted.start()
            step()
            one_step = counted.stop()
            context.add(
                "counted FLOPs per step", float(one_step.flops or 0), "FLOP", kind="counted"
            )
            context.add("counted energy per step", one_step.joules, "J", kind="counted")
            uncounted = dict(one_step.details.get("uncounted_operators", {}) or {})
            if uncounted:
                context.note("uncounted operators: " + ", ".join(sorted(uncounted))[:300])
        steps = max(5, min(40, int(1.0 / max(bare_step, 1e-4))))
        with context.part("counted slowdown"):
            _, _, slowdown = interleaved_slowdown(
                lambda: timed_seconds_per_step(torch, step, steps, None),
                lambda: timed_seconds_per_step(
                    torch, step, max(3, steps // 4), lambda _: meter_window([counted])
                ),
                pairs=4,
            )
            context.add(
                "counted meter: slowdown of a ResNet-56 step (window per step)",
                slowdown,
                "%",
                kind="timed",
                note="fastest of 4 ABBA runs each",
            )
        for label, meters in (
            ("nvml", [nvml]),
            ("counted", [counted]),
            ("nvml + counted", [nvml, counted]),
        ):
            with context.part(f"energy.train window, {label}"):
                energy = user_fixture(meters)
                counter = iter(range(10**9))

                def window(_: int, energy: Any = energy, counter: Any = counter) -> Any:
                    return energy.train(f"window-{next(counter)}")

                windows = 200 if label == "nvml" else 50
                costs = []
                for _ in range(5):
                    started = time.perf_counter()
                    for index in range(windows):
                        with window(index):
                            pass
                    costs.append((time.perf_counter() - started) / windows * 1e6)
                context.add(
                    f"energy.train window (empty), {label}",
                    statistics.median(costs),
                    "µs",
                    kind="timed",
                )
                if label == "nvml + counted" and context.seconds_left() > 15:
                    _, _, slowdown = interleaved_slowdown(
                        lambda: timed_seconds_per_step(torch, step, steps, None),
                        lambda window=window: timed_seconds_per_step(
                            torch, step, max(3, steps // 4), window
                        ),
                        pairs=4,
                    )
                    context.add(
                        "energy.train per step, nvml + counted: slowdown of a ResNet-56 step",
                        slowdown,
                        "%",
                        kind="timed",
                    )
    finally:
        counted.close()
        nvml.close()


# ---------------------------------------------------------------- the benchmark at paper scale


@dataclass(frozen=True)
class BenchmarkMode:
    """How to run the paper-scale path here: its pytest options and environment, and the tests."""

    options: tuple[str, ...]
    environment: dict[str, str]
    tests: tuple[tuple[str, dict[str, str]], ...]
    """(node id, lifecycle labels) of every benchmark test, in collection order."""
    note: str = ""


FALLBACK_VARIABLE = "GPU_CHECK_FALLBACK_DRY_RUN"
FALLBACK_NOTE = (
    "the benchmark has no --energy-dry-run here: ran its minimal equivalent instead (the paper "
    "scale's models on the smoke schedule and synthetic CIFAR-shaped data, patched in by "
    "scripts/gpu_check_pytest.py)"
)


def pruning_available() -> bool:
    """Whether torch-pruning (which the pruning family needs) is installed."""
    return importlib.util.find_spec("torch_pruning") is not None


def benchmark_has_dry_run(root: Path = REPOSITORY) -> bool:
    """Whether the benchmark's conftest declares ``--energy-dry-run`` (read, not imported)."""
    with contextlib.suppress(OSError):
        return "--energy-dry-run" in (root / "benchmarks" / "conftest.py").read_text("utf-8")
    return False


def benchmark_mode(context: Any, seconds: float) -> BenchmarkMode:
    """Collect the benchmark at paper scale in dry-run mode (or its stand-in) and read labels."""
    labels_file = context.out_dir / f"{context.step}-labels.json"
    ignore = [] if pruning_available() else ["--ignore=benchmarks/test_pruning.py"]
    base = ["benchmarks/", "--collect-only", "-q", "-p", "scripts.gpu_check_pytest", *ignore]
    mode_environment, note = dict(context.environment), ""
    scale_options: tuple[str, ...] = ("--energy-scale", "paper", "--energy-dry-run")
    stand_in: tuple[str, ...] = ()
    if not benchmark_has_dry_run():
        scale_options, stand_in = ("--energy-scale", "paper"), ("-p", "scripts.gpu_check_pytest")
        mode_environment[FALLBACK_VARIABLE] = "1"
        note = FALLBACK_NOTE
    result = run_command(
        _pytest(context, *base, *scale_options),
        context.out_dir / "logs" / f"{context.step}-collect.log",
        seconds,
        {**mode_environment, LABELS_FILE_VARIABLE: str(labels_file)},
    )
    if result.returncode != 0 or not labels_file.exists():
        raise RuntimeError(
            f"collecting the benchmark failed (exit status {result.returncode}"
            + (", stopped at its time limit" if result.timed_out else "")
            + f"); see logs/{result.log.name}"
        )
    tests = tuple(
        (nodeid, dict(labels)) for nodeid, labels in json.loads(labels_file.read_text("utf-8"))
    )
    return BenchmarkMode((*scale_options, *stand_in, *ignore), mode_environment, tests, note)


def family_of(labels: Mapping[str, str]) -> str:
    """A test's family; the uncompressed reference counts as ``baseline``."""
    if labels.get("method") == "uncompressed":
        return "baseline"
    return labels.get("family", "") or "unlabelled"


def select_per_family(
    tests: Iterable[tuple[str, Mapping[str, str]]], skip_families: Mapping[str, str]
) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """The reference and the first test of every other family, cheap families first.

    Returns (family, node id) pairs to run and, for each family left out, why.
    """
    first: dict[str, str] = {}
    for nodeid, labels in tests:
        first.setdefault(family_of(labels), nodeid)
    skipped = {family: reason for family, reason in skip_families.items()}
    rank = {family: position for position, family in enumerate(FAMILY_ORDER)}
    chosen = sorted(
        ((family, nodeid) for family, nodeid in first.items() if family not in skipped),
        key=lambda item: (rank.get(item[0], len(rank)), item[0]),
    )
    return chosen, skipped


@dataclass(frozen=True)
class MeterFigures:
    """One test's TEC and IEC as one meter recorded them in a results file."""

    nodeid: str
    meter: str
    kind: str
    tec_joules: float | None
    iec_joules_per_sample: float | None


def results_figures(document: Mapping[str, Any]) -> list[MeterFigures]:
    """TEC and IEC per test and meter from a results document (``--energy-json``)."""
    figures = []
    for nodeid, test in sorted((document.get("tests") or {}).items()):
        for meter, entry in sorted((test.get("meters") or {}).items()):
            figures.append(
                MeterFigures(
                    nodeid,
                    meter,
                    str(entry.get("kind", "measured")),
                    entry.get("tec_joules"),
                    entry.get("iec_joules_per_sample"),
                )
            )
    return figures


def _figure_kind(kind: str) -> str:
    return "counted" if kind == "counted" else "measured"


def _short(nodeid: str) -> str:
    """``benchmarks/test_x.py::test_y`` as ``test_x.py::test_y``."""
    return nodeid.split("/")[-1]


def _short_junit(name: str) -> str:
    """A junit ``benchmarks.test_x::test_y`` as ``test_x.py::test_y``, like ``_short``."""
    module, _, test = name.partition("::")
    return f"{module.rsplit('.', 1)[-1]}.py::{test}"


def _empty_baselines(context: Any) -> str:
    folder = context.out_dir / f"{context.step}-baselines"
    folder.mkdir(parents=True, exist_ok=True)
    return str(folder)


def paper_dry_run(context: Any) -> None:
    """The reference and one method per family at paper scale, dry run, nvml + counted."""
    mode = benchmark_mode(context, min(60.0, max(30.0, context.seconds_left() / 3)))
    if mode.note:
        context.note(mode.note)
    skip = {} if pruning_available() else {"pruning": "torch-pruning is not installed here"}
    chosen, skipped = select_per_family(mode.tests, skip)
    for family, reason in skipped.items():
        context.note(f"{family} skipped: {reason}")
    context.add(
        "tests chosen",
        ", ".join(f"{family}: {_short(node)}" for family, node in chosen),
        kind="label",
    )
    results = context.out_dir / "paper-dry-run.json"
    junit = context.out_dir / "paper-dry-run.xml"
    command = _pytest(
        context,
        *(nodeid for _, nodeid in chosen),
        *mode.options,
        "--energy",
        "--energy-meter",
        "nvml,counted",
        f"--energy-json={results}",
        f"--energy-baselines={_empty_baselines(context)}",
        f"--junitxml={junit}",
        "-q",
        "-rA",
    )
    result = run_command(
        command,
        context.out_dir / "logs" / "paper-dry-run-pytest.log",
        context.seconds_left() - 3,
        mode.environment,
    )
    if result.timed_out:
        context.note("the session was stopped at its time limit; later tests did not run")
    if junit.exists():
        summary = read_junit(junit)
        record_junit(context, summary, "paper dry run")
        context.add(
            "chosen tests that passed",
            summary.count("passed"),
            "tests",
            kind="outcome",
            target=str(len(chosen)),
            ok=summary.count("passed") == len(chosen),
        )
        for name, outcome in summary.outcomes.items():
            context.add(
                f"{_short_junit(name)}: outcome",
                outcome,
                kind="outcome",
                target="passed",
                ok=outcome == "passed",
                note=summary.messages[name],
            )
            context.add(f"{_short_junit(name)}: seconds", summary.seconds[name], "s", kind="timed")
        ran = {name.rsplit("::", 1)[-1] for name in summary.outcomes}
        for _, nodeid in chosen:
            if nodeid.rsplit("::", 1)[-1] not in ran:
                context.add(
                    f"{_short(nodeid)}: outcome",
                    "not run",
                    kind="outcome",
                    target="passed",
                    ok=False,
                    note="the session ended first",
                )
    if not results.exists():
        raise RuntimeError(
            f"the session wrote no results file (exit status {result.returncode}); "
            "see logs/paper-dry-run-pytest.log"
        )
    for item in results_figures(json.loads(results.read_text("utf-8"))):
        kind = _figure_kind(item.kind)
        context.add(f"{_short(item.nodeid)}: TEC, {item.meter}", item.tec_joules, "J", kind=kind)
        context.add(
            f"{_short(item.nodeid)}: IEC, {item.meter}",
            item.iec_joules_per_sample,
            "J/sample",
            kind=kind,
        )
    if result.returncode not in (0, None) and not result.timed_out:
        raise RuntimeError(f"pytest exited with status {result.returncode}")


# ---------------------------------------------------------------- A/A pair with nvml


def ab_available(context: Any) -> str | None:
    """Why ``pytest-energy ab`` cannot run an A/A pair here (``None`` when it can)."""
    result = run_command(
        python_command(context, "-m", "pytest_energy.cli", "ab", "--help"),
        context.out_dir / "logs" / "aa-ab-help.log",
        30,
        context.environment,
    )
    if result.returncode != 0:
        return "pytest-energy has no ab subcommand here"
    try:
        git = subprocess.run(
            ["git", "rev-parse", "--verify", "HEAD"],
            cwd=REPOSITORY,
            capture_output=True,
            check=False,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError):
        return "git cannot run here (ab compares commits)"
    if git.returncode != 0:
        return "this copy of the checkout is not a git repository (ab compares commits)"
    return None


def aa_pair(context: Any) -> None:
    """Two sessions of the reference with nvml: what the gate says when nothing changed."""
    mode = benchmark_mode(context, min(60.0, max(30.0, context.seconds_left() / 3)))
    if mode.note:
        context.note(mode.note)
    chosen, _ = select_per_family(mode.tests, {})
    reference = [nodeid for family, nodeid in chosen if family == "baseline"]
    if not reference:
        raise RuntimeError("no reference test (family=baseline or method=uncompressed) collected")
    session = [
        reference[0],
        *mode.options,
        "--energy",
        "--energy-meter",
        "nvml",
        f"--energy-baselines={_empty_baselines(context)}",
        "-q",
    ]
    context.add("A/A test", _short(reference[0]), kind="label")
    why_not_ab = ab_available(context)
    if why_not_ab is None:
        result = run_command(
            python_command(
                context,
                "-m",
                "pytest_energy.cli",
                "ab",
                "HEAD",
                "HEAD",
                "--pairs",
                "1",
                "--",
                *session,
            ),
            context.out_dir / "logs" / "aa-ab.log",
            context.seconds_left() - 3,
            mode.environment,
        )
        if result.returncode in (0, 1) and not result.timed_out:
            context.add(
                "pytest-energy ab HEAD HEAD --pairs 1: exit status",
                result.returncode,
                kind="outcome",
                target="0 (no regression in an A/A pair)",
                ok=result.returncode == 0,
                note="see logs/aa-ab.log",
            )
            return
        context.note(
            f"pytest-energy ab ended with status {result.returncode}"
            + (" at its time limit" if result.timed_out else "")
            + ": ran two sessions + pytest-energy compare instead"
        )
    else:
        context.note(f"{why_not_ab}: ran two sessions + pytest-energy compare instead")
    paths = []
    for number in (1, 2):
        path = context.out_dir / f"aa-session-{number}.json"
        seconds = (context.seconds_left() - 8) / (3 - number)
        result = run_command(
            _pytest(context, *session, f"--energy-json={path}"),
            context.out_dir / "logs" / f"aa-session-{number}.log",
            seconds,
            mode.environment,
        )
        if not path.exists():
            raise RuntimeError(
                f"session {number} wrote no results (exit status {result.returncode}"
                + (", stopped at its time limit" if result.timed_out else "")
                + f"); see logs/aa-session-{number}.log"
            )
        paths.append(path)
    _aa_figures(context, *paths)
    comparison = context.out_dir / "aa-compare.json"
    compared = run_command(
        python_command(
            context,
            "-m",
            "pytest_energy.cli",
            "compare",
            str(paths[0]),
            str(paths[1]),
            "--json",
            str(comparison),
        ),
        context.out_dir / "logs" / "aa-compare.log",
        max(5.0, context.seconds_left() - 3),
        context.environment,
    )
    if not comparison.exists():
        raise RuntimeError(
            f"pytest-energy compare failed (exit status {compared.returncode}); "
            "see logs/aa-compare.log"
        )
    for test in json.loads(comparison.read_text("utf-8")).get("tests", []):
        for meter in test.get("meters", []):
            verdict = meter.get("verdict")
            context.add(
                f"{_short(test.get('nodeid', '?'))}: gate verdict, {meter.get('meter')}",
                verdict,
                kind="outcome",
                target="not a regression",
                ok=verdict != "regressed",
            )


def _aa_figures(context: Any, first: Path, second: Path) -> None:
    sessions = [
        {(item.nodeid, item.meter): item for item in results_figures(json.loads(path.read_text()))}
        for path in (first, second)
    ]
    for key in sorted(set(sessions[0]) & set(sessions[1])):
        a, b = sessions[0][key], sessions[1][key]
        name = f"{_short(key[0])}, {key[1]}"
        for quantity, unit, first_value, second_value in (
            ("TEC", "J", a.tec_joules, b.tec_joules),
            ("IEC", "J/sample", a.iec_joules_per_sample, b.iec_joules_per_sample),
        ):
            context.add(f"{name}: {quantity} session 1", first_value, unit)
            context.add(f"{name}: {quantity} session 2", second_value, unit)
            if first_value and second_value is not None:
                context.add(
                    f"{name}: {quantity} session 2 vs 1",
                    100 * relative_difference(second_value, first_value),
                    "%",
                )
