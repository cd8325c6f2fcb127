"""One pytest run's energy state: the meters in use, the open window, and collected results."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pytest_energy.config import LifecycleSettings
from pytest_energy.distributed import current_rank_group
from pytest_energy.errors import MeasurementError
from pytest_energy.meters import MeterOptions, MeterSelection
from pytest_energy.meters.base import Meter, Reading, WindowReadings
from pytest_energy.turns import TurnTaking


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


def refuse_nesting(label: str, open_window: str | None) -> None:
    """Raise when ``label`` opens while the window ``open_window`` is still open."""
    __tracebackhide__ = True
    if open_window is not None:
        raise MeasurementError(
            f"{label} was opened inside {open_window}: measured windows cannot nest. "
            f"Close the first window before opening the next one."
        )


class MeasuredWindow:
    """One measured window, ``with session.window(...) as readings:``.

    A class rather than a generator: users open a window per phase or per epoch, and its edges
    should cost what the meters' edges cost. Windows cannot nest. Readings are built when first
    looked at (``WindowReadings``), so closing the window only reads the meters' edges.
    """

    __slots__ = (
        "_across_ranks",
        "_label",
        "_meters",
        "_ranks",
        "_readings",
        "_session",
        "_started",
    )

    def __init__(
        self, session: EnergySession, label: str, meters: Sequence[Meter], across_ranks: bool
    ) -> None:
        self._session = session
        self._label = label
        self._meters = meters
        self._across_ranks = across_ranks
        self._started: list[Meter] = []
        self._ranks: Any = None
        self._readings = WindowReadings()

    def __enter__(self) -> Mapping[str, Reading]:
        __tracebackhide__ = True
        session = self._session
        refuse_nesting(self._label, session._open_window)
        session._open_window = self._label
        ranks = current_rank_group()
        try:
            if ranks is not None:
                window = ranks.window(self._meters, self._across_ranks)
                readings = window.__enter__()
                self._ranks = window
                return readings
            for meter in self._meters:
                meter.start()
                self._started.append(meter)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self._readings

    def __exit__(self, *exc_info: Any) -> None:
        session = self._session
        session._open_window = None
        if self._ranks is not None:
            self._ranks.__exit__(*exc_info)
            return
        self._readings.close([(meter, meter.stop_pending()) for meter in reversed(self._started)])
        if session.turns is not None:
            session.turns.exchange()


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
        self.turns: TurnTaking | None = None
        """Set under ``pytest-energy ab --interleave``: each window's end hands the turn over."""

    @property
    def meters(self) -> list[Meter]:
        return self.selection.meters

    def window(
        self, label: str, meters: Sequence[Meter] | None = None, across_ranks: bool = True
    ) -> MeasuredWindow:
        """Measure the body with ``meters`` (default: all); the readings fill in on exit.

        Under torch.distributed with 2+ ranks, ``across_ranks`` windows are summed over the ranks
        (see ``pytest_energy.distributed``); other windows give this rank's own figure.
        """
        return MeasuredWindow(self, label, self.meters if meters is None else meters, across_ranks)

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
