"""The cputime meter: an estimate from the process's CPU seconds, labelled as such."""

import pytest

from pytest_energy.errors import ConfigError
from pytest_energy.meters.cputime import (
    DEFAULT_WATTS_PER_THREAD,
    CpuTimeMeter,
    lookup_tdp_watts,
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
    assert "not in codecarbon's CPU table" in wattage.source


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
