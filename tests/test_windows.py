"""Measured windows: what ``with energy.train(...)`` and ``session.window(...)`` promise.

A window reads its meters' edges when it opens and closes; the readings are built (details,
pricing, another meter's bookkeeping taken out) when they are first looked at, so the window a
user opens costs the meters' edges and little more (``python -m benchmarks.overhead``).
"""

from __future__ import annotations

import pytest

from pytest_energy.errors import MeasurementError
from pytest_energy.fixture import energy_fixture_with
from pytest_energy.meters.base import Bookkeeping, Meter, PendingReading, Reading
from pytest_energy.meters.cputime import CpuTimeMeter


class RecordingMeter(Meter):
    """A meter that says when its edges were read and when its reading was built."""

    name = "recording"
    kind = "estimated"

    def __init__(self, fail_on_start: bool = False) -> None:
        self.events: list[str] = []
        self.fail_on_start = fail_on_start

    @classmethod
    def unavailable_reason(cls, **options):
        return None

    def start(self) -> None:
        if self.fail_on_start:
            raise RuntimeError("the counter is gone")
        self.events.append("start")

    def stop(self) -> Reading:
        return self.stop_pending()()

    def stop_pending(self) -> PendingReading:
        self.events.append("stop")

        def build() -> Reading:
            self.events.append("built")
            return Reading(self.name, self.kind, 1.0, {"process": 2.0})

        return build


class MeterThatSpendsCpu(RecordingMeter):
    """Its own work in every window costs 0.001 CPU seconds, which cputime takes out."""

    name = "busy"
    kind = "counted"

    def bookkeeping(self, reading: Reading) -> Bookkeeping:
        return Bookkeeping(self.name, 0.001, "a fixed cost, for the test")


def test_a_closed_windows_readings_are_built_once_when_first_looked_at():
    meter = RecordingMeter()
    energy = energy_fixture_with([meter], "test_windows.py::lazy")

    with energy.train("finetune"):
        assert meter.events == ["start"]
    assert meter.events == ["start", "stop"]

    readings = energy.phases[0].readings
    assert readings["recording"].joules == 2.0
    assert dict(readings) == {"recording": readings["recording"]}
    assert meter.events == ["start", "stop", "built"]


def test_readings_are_empty_while_the_window_is_open():
    energy = energy_fixture_with([RecordingMeter()], "test_windows.py::open")
    with energy._session.window("a window") as readings:
        assert dict(readings) == {}
    assert list(readings) == ["recording"]


def test_another_meters_bookkeeping_is_taken_out_when_the_readings_are_built():
    cputime = CpuTimeMeter(watts_per_thread=10.0, count_children=False)
    energy = energy_fixture_with([cputime, MeterThatSpendsCpu()], "test_windows.py::shared")
    with energy.train("train"):
        sum(value * value for value in range(300_000))

    reading = energy.phases[0].readings["cputime"]
    removed = reading.details["bookkeeping_removed"]["busy"]
    assert removed == {"cpu_seconds": 0.001, "how": "a fixed cost, for the test"}


def test_a_body_that_raises_records_no_phase_and_leaves_no_window_open():
    meter = RecordingMeter()
    energy = energy_fixture_with([meter], "test_windows.py::raises")
    with pytest.raises(ZeroDivisionError), energy.train("broken"):
        1 / 0  # noqa: B018

    assert energy.phases == []
    assert meter.events == ["start", "stop"]
    with energy.train("next"):
        pass
    assert [phase.name for phase in energy.phases] == ["next"]


def test_a_meter_that_cannot_start_fails_the_window_and_stops_the_ones_started():
    started_first = RecordingMeter()
    broken = RecordingMeter(fail_on_start=True)
    broken.name = "broken"
    energy = energy_fixture_with([started_first, broken], "test_windows.py::start")

    with pytest.raises(RuntimeError, match="the counter is gone"), energy.train("train"):
        pytest.fail("the body must not run when a meter cannot start")

    assert started_first.events == ["start", "stop"]
    assert energy.phases == []
    with pytest.raises(RuntimeError), energy._session.window("again"):
        pass  # the session's window was released: the same failure, not "cannot nest"


def test_a_window_opened_inside_another_is_refused_and_the_outer_one_stays_open():
    energy = energy_fixture_with([RecordingMeter()], "test_windows.py::nested")
    with energy.train("outer"):
        refused = pytest.raises(MeasurementError, match=r"opened inside energy\.train\('outer'\)")
        with refused, energy.train("inner"):
            pass
        assert energy._open_window == "energy.train('outer')"
    assert [phase.name for phase in energy.phases] == ["outer"]
