"""One pytest run's energy state: the meters in use, the open window, and collected results."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from pytest_energy.config import LifecycleSettings
from pytest_energy.distributed import current_rank_group
from pytest_energy.errors import MeasurementError
from pytest_energy.meters import MeterOptions, MeterSelection
from pytest_energy.meters.base import Meter, Reading, remove_bookkeeping


@dataclass
class Charge:
    """Energy of work done once and reused by several tests (e.g. the base model's training).

    Made by ``energy_session.measure(name)``; each test that reuses the work passes it to
    ``energy.charge(...)`` so the work counts in that test's TEC. ``readings`` stays empty when
    the run does not measure (no ``--energy``).
    """

    name: str
    readings: dict[str, Reading] = field(default_factory=dict)
    closed: bool = False


class EnergySession:
    """Meters, run-wide settings and the results of the tests that have finished."""

    def __init__(
        self,
        enabled: bool,
        selection: MeterSelection | None,
        defaults: LifecycleSettings,
        rounds: int,
        warmup_calls: int,
        meter_options: MeterOptions | None = None,
        round_seconds: float | None = None,
    ) -> None:
        self.enabled = enabled
        self.meter_options = meter_options or MeterOptions()
        self.selection = selection or MeterSelection(meters=[])
        self.defaults = defaults
        self.rounds = rounds
        self.warmup_calls = warmup_calls
        self.round_seconds = round_seconds
        """``--energy-round-seconds``: every timed round's length (None: each meter's own)."""
        self.results: dict[str, dict[str, Any]] = {}
        self._open_window: str | None = None

    @property
    def meters(self) -> list[Meter]:
        return self.selection.meters

    @contextlib.contextmanager
    def window(
        self, label: str, meters: Sequence[Meter] | None = None, across_ranks: bool = True
    ) -> Iterator[dict[str, Reading]]:
        """Measure the body with ``meters`` (default: all); the dict fills with readings on exit.

        Under torch.distributed with 2+ ranks, ``across_ranks`` windows are summed over the ranks
        (see ``pytest_energy.distributed``); other windows give this rank's own figure.
        """
        __tracebackhide__ = True
        if self._open_window is not None:
            raise MeasurementError(
                f"{label} was opened inside {self._open_window}: measured windows cannot nest. "
                f"Close the first window before opening the next one."
            )
        ranks = current_rank_group()
        if ranks is not None:
            self._open_window = label
            try:
                chosen = meters if meters is not None else self.meters
                with ranks.window(chosen, across_ranks) as readings:
                    yield readings
            finally:
                self._open_window = None
            return
        self._open_window = label
        readings: dict[str, Reading] = {}
        started: list[Meter] = []
        try:
            for meter in meters if meters is not None else self.meters:
                meter.start()
                started.append(meter)
            yield readings
        finally:
            self._open_window = None
            for meter in reversed(started):
                readings[meter.name] = meter.stop()
            remove_bookkeeping(started, readings)  # counting's own CPU time is nobody's TEC

    @contextlib.contextmanager
    def measure(self, name: str) -> Iterator[Charge]:
        """Measure work done once per run; charge it to tests with ``energy.charge(...)``."""
        __tracebackhide__ = True
        charge = Charge(name=name)
        if not self.enabled:
            yield charge
            charge.closed = True
            return
        with self.window(f"energy_session.measure({name!r})") as readings:
            yield charge
        charge.readings.update(readings)
        charge.closed = True

    def add_result(self, nodeid: str, result: dict[str, Any]) -> None:
        self.results[nodeid] = result

    def close(self) -> None:
        for meter in self.meters:
            meter.close()
