"""The cputime meter: an estimate from the process's CPU seconds, labelled as such."""

import json
import subprocess
import sys
import time

import pytest

from pytest_energy.errors import ConfigError
from pytest_energy.meters.base import Bookkeeping, Meter, Reading, remove_bookkeeping
from pytest_energy.meters.cputime import (
    DEFAULT_WATTS_PER_THREAD,
    ChildProcessClock,
    CpuTimeMeter,
    children_cpu_seconds,
    has_children,
    lookup_tdp_watts,
    match_tdp_watts,
    resolve_cpu_wattage,
)


def busy_work(iterations: int) -> int:
    total = 0
    for value in range(iterations):
        total += value * value
    return total


def measure(meter: CpuTimeMeter, iterations: int):
    meter.start()
    busy_work(iterations)
    return meter.stop()


def test_reading_is_estimated_and_says_where_its_wattage_came_from():
    reading = measure(CpuTimeMeter(watts_per_thread=10.0), 10_000)
    assert reading.meter == "cputime"
    assert reading.kind == "estimated"
    assert reading.details["watts_source"] == "--energy-cpu-watts"
    assert reading.joules == pytest.approx(10.0 * reading.details["cpu_seconds"])


def test_more_work_costs_more_joules():
    meter = CpuTimeMeter(watts_per_thread=10.0)
    small = min(measure(meter, 200_000).joules for _ in range(3))
    large = min(measure(meter, 2_000_000).joules for _ in range(3))
    assert small > 0
    assert large > 5 * small


def test_a_sleeping_window_costs_almost_nothing():
    import time

    meter = CpuTimeMeter(watts_per_thread=10.0)
    meter.start()
    time.sleep(0.05)
    reading = meter.stop()
    assert reading.seconds >= 0.05
    assert reading.joules < 0.5 * 10.0 * reading.seconds


def test_a_known_cpu_gets_its_tdp_from_codecarbons_table():
    tdp = lookup_tdp_watts("AMD EPYC 4124P")
    assert tdp is not None
    assert tdp[0] == pytest.approx(65.0)


def test_an_unknown_cpu_falls_back_to_the_stated_default(monkeypatch):
    monkeypatch.setattr("pytest_energy.meters.cputime.cpu_model_name", lambda: "Imaginary CPU 9000")
    wattage = resolve_cpu_wattage()
    assert wattage.watts_per_thread == DEFAULT_WATTS_PER_THREAD
    assert "no exact model-number match in codecarbon's CPU table" in wattage.source


def test_tdp_is_shared_among_the_hardware_threads(monkeypatch):
    monkeypatch.setattr("pytest_energy.meters.cputime.cpu_model_name", lambda: "AMD EPYC 4124P")
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    wattage = resolve_cpu_wattage()
    assert wattage.watts_per_thread == pytest.approx(65.0 / 8)
    assert "TDP 65 W / 8 hardware threads" in wattage.source


@pytest.mark.parametrize("bad", [0, -3.0])
def test_non_positive_watts_are_refused_naming_the_flag(bad):
    with pytest.raises(ConfigError, match="--energy-cpu-watts"):
        CpuTimeMeter(watts_per_thread=bad)


def test_an_open_window_can_be_peeked_at_without_closing_it():
    meter = CpuTimeMeter(watts_per_thread=10.0)
    meter.start()
    busy_work(100_000)
    so_far = meter.peek()
    busy_work(100_000)
    final = meter.stop()
    assert 0 < so_far.joules < final.joules


@pytest.mark.parametrize(
    ("cpu_name", "expected"),
    [
        ("AMD EPYC 7B13", None),  # not the 7R13 (225 W): a different part, declined
        ("AMD EPYC 9V74", None),  # not the 9754 (360 W)
        ("AMD EPYC", None),  # no model number at all
        ("Intel(R) Xeon(R) Processor", None),
        ("AMD Ryzen 7 PRO 7840U w/ Radeon", (28.0, "amd ryzen 7 7840u")),  # as codecarbon
        ("AMD Ryzen 7 PRO 7840U w/ Radeon 780M Graphics", (28.0, "amd ryzen 7 7840u")),
        ("AMD EPYC 9754 128-Core Processor", (360.0, "amd epyc 9754")),  # not the 9754S
        ("Intel(R) Xeon(R) CPU E5-2686 v4 @ 2.30GHz", (145.0, "intel xeon e5-2686 v4")),
    ],
)
def test_the_tdp_lookup_matches_the_model_number_exactly_or_declines(cpu_name, expected):
    assert lookup_tdp_watts(cpu_name) == expected


def test_candidates_that_disagree_on_the_tdp_make_the_lookup_decline():
    table = {"acme chip 100": 10.0, "acme chip 100 pro": 20.0, "acme chip 200": 30.0}
    assert match_tdp_watts("ACME Chip 100", table) == (10.0, "acme chip 100")  # exact name
    assert match_tdp_watts("ACME 100", table) is None  # two candidates, 10 W or 20 W
    assert match_tdp_watts("ACME Chip 100 Pro w/ Graphics", table) == (20.0, "acme chip 100 pro")


def test_children_count_for_their_time_inside_the_window_only():
    a, b, c = (1, 1.0), (2, 2.0), (3, 3.0)
    at_start = {a: 5.0, b: 1.0}  # a keeps running, b ends and is waited for in the window
    at_stop = {a: 7.0, c: 0.5}  # c is born in the window
    # the waited-children clock grows by b's whole life (1.0 before + 0.25 inside)
    assert children_cpu_seconds(at_start, 10.0, at_stop, 11.25) == pytest.approx(2.0 + 0.5 + 0.25)
    assert children_cpu_seconds({a: 5.0}, 0.0, {}, 0.0) == 0.0  # never negative


CHILD_BURNS_CPU = "import time\nwhile time.process_time() < {seconds}:\n    pass\n"


def test_a_child_process_working_in_the_window_is_counted_and_said_so():
    meter = CpuTimeMeter(watts_per_thread=10.0)
    alive = subprocess.Popen([sys.executable, "-c", CHILD_BURNS_CPU.format(seconds=0.4)])
    meter.start()
    short = subprocess.run([sys.executable, "-c", CHILD_BURNS_CPU.format(seconds=0.3)])
    alive.wait()
    reading = meter.stop()

    assert short.returncode == 0
    children = reading.details["children"]
    assert children["source"] in ("/proc", "psutil")
    assert children["processes_at_edges"] >= 1
    assert children["cpu_seconds"] >= 0.25  # at least the short child, started and ended inside
    assert reading.joules_by_domain["children"] == pytest.approx(10.0 * children["cpu_seconds"])
    assert reading.details["cpu_seconds"] == pytest.approx(
        children["cpu_seconds"] + reading.joules_by_domain["process"] / 10.0
    )


def test_children_can_be_left_out_and_the_reading_says_so():
    reading = measure(CpuTimeMeter(watts_per_thread=1.0, count_children=False), 1000)
    assert reading.details["children"] == "not counted (count_children=False)"
    assert set(reading.joules_by_domain) == {"process"}


def test_the_proc_clock_finds_a_living_child_with_its_cpu_time():
    clock = ChildProcessClock()
    if clock.source != "/proc":
        pytest.skip("no /proc here")
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD_BURNS_CPU.format(seconds=0.2) + "time.sleep(5)\n"]
    )
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            snapshot = clock.snapshot()
            mine = [seconds for (pid, _), seconds in snapshot.items() if pid == child.pid]
            if mine and mine[0] >= 0.15:
                break
            time.sleep(0.05)
        assert mine and mine[0] >= 0.15
    finally:
        child.kill()
        child.wait()


HAS_CHILDREN_BEFORE_DURING_AFTER = """
import subprocess, sys
from pytest_energy.meters.cputime import ChildProcessClock, has_children

clock = ChildProcessClock()
before = has_children(), clock.snapshot()
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3)"])
during = has_children(), len(clock.snapshot())
child.kill()
child.wait()
print(before, during, has_children())
"""


def test_a_process_without_children_skips_the_scan_and_one_with_a_child_is_scanned():
    # a fresh process: pytest's own process may hold children of other tests
    done = subprocess.run(
        [sys.executable, "-c", HAS_CHILDREN_BEFORE_DURING_AFTER],
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.split("\n")[0] == "(False, {}) (True, 1) False"


def test_a_child_that_ended_but_was_not_waited_for_still_counts_as_a_child():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not child_is_a_zombie(child.pid):
        time.sleep(0.02)
    try:
        assert has_children()  # its CPU time reaches the waited clock only once it is waited for
    finally:
        child.wait()


def child_is_a_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_a_training_phase_that_runs_a_worker_process_is_charged_for_it(pytester):
    pytester.makepyfile(
        test_worker="""
        import subprocess, sys

        BURN = "import time\\nwhile time.process_time() < 0.3:\\n    pass\\n"

        def test_train_with_a_worker(energy):
            with energy.train("preprocess"):
                subprocess.run([sys.executable, "-c", BURN], check=True)
        """
    )
    result = pytester.runpytest(
        "--energy", "--energy-meter", "cputime", "--energy-cpu-watts", "10",
        "--energy-json", "out.json",
    )  # fmt: skip
    result.assert_outcomes(passed=1)
    document = json.loads((pytester.path / "out.json").read_text())
    (phase,) = document["tests"]["test_worker.py::test_train_with_a_worker"]["meters"]["cputime"][
        "phases"
    ]
    assert phase["details"]["children"]["cpu_seconds"] >= 0.25
    assert phase["joules_by_domain"]["children"] >= 2.5


# --- another meter's bookkeeping in a shared window ------------------------------------------


class MeterThatSpendsCpu(Meter):
    """A meter whose own work inside every window costs ``cpu_seconds``."""

    name = "busy"
    kind = "counted"

    def __init__(self, cpu_seconds: float) -> None:
        self.cpu_seconds = cpu_seconds

    @classmethod
    def unavailable_reason(cls, **options):
        return None

    def start(self) -> None:
        pass

    def stop(self) -> Reading:
        return Reading(self.name, self.kind, 0.0, {"compute": 0.0})

    def bookkeeping(self, reading: Reading) -> Bookkeeping:
        return Bookkeeping(self.name, self.cpu_seconds, "a fixed cost, for the test")


def test_another_meters_bookkeeping_is_taken_out_of_the_cputime_reading():
    cputime = CpuTimeMeter(watts_per_thread=10.0, count_children=False)
    busy = MeterThatSpendsCpu(cpu_seconds=0.05)
    cputime.start()
    busy_work(2_000_000)
    readings = {"cputime": cputime.stop(), "busy": busy.stop()}
    measured = readings["cputime"]

    remove_bookkeeping([cputime, busy], readings)

    corrected = readings["cputime"]
    assert corrected.joules_by_domain["process"] == pytest.approx(
        measured.joules_by_domain["process"] - 10.0 * 0.05
    )
    assert corrected.details["cpu_seconds"] == pytest.approx(measured.details["cpu_seconds"] - 0.05)
    assert corrected.seconds == pytest.approx(measured.seconds - 0.05)
    assert corrected.details["bookkeeping_removed"] == {
        "busy": {"cpu_seconds": pytest.approx(0.05), "how": "a fixed cost, for the test"}
    }


def test_bookkeeping_above_the_windows_own_cpu_time_is_named_not_removed():
    cputime = CpuTimeMeter(watts_per_thread=10.0, count_children=False)
    cputime.start()
    readings = {"cputime": cputime.stop()}
    alone = dict(readings)
    remove_bookkeeping([cputime], readings)
    assert readings == alone  # a meter alone in its window keeps its reading
    readings["busy"] = Reading("busy", "counted", 0.0, {"compute": 0.0})
    remove_bookkeeping([cputime, MeterThatSpendsCpu(cpu_seconds=1e6)], readings)
    assert readings["cputime"].joules_by_domain == alone["cputime"].joules_by_domain
    removed = readings["cputime"].details["bookkeeping_removed"]["busy"]
    assert removed["cpu_seconds"] == 0.0
    assert "not removed" in removed["how"]
