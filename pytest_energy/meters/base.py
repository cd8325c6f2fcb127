"""The meter protocol: a meter measures a window, ``start()`` then ``stop()``."""

from __future__ import annotations

import abc
import math
from collections.abc import Callable, Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from pytest_energy.errors import ImplausibleReading

MeterKind = Literal["measured", "estimated", "counted"]
KINDS: tuple[MeterKind, ...] = ("measured", "estimated", "counted")
MeterScope = Literal["process", "host", "device"]


@dataclass(frozen=True)
class Capabilities:
    """What the figures of a kind of meter can promise; read by the gate, results and fixture.

    Attributes:
        deterministic: the same work always reads the same figure, on any machine. The gate
            judges it with the exact rule, its profile names no hardware, a baseline keeps no
            session history and one inference round suffices.
        counts_operations: figures come from counting the operators that ran (FLOPs, bytes
            moved) in a torch dispatch mode: a window reads 0 J only when no operator ran, the
            record carries FLOPs and bytes, and timed meters in the same window are slowed by
            the counting, so the counting meter stops first.
    """

    deterministic: bool = False
    counts_operations: bool = False


KIND_CAPABILITIES: Mapping[str, Capabilities] = {
    "measured": Capabilities(),
    "estimated": Capabilities(),
    "counted": Capabilities(deterministic=True, counts_operations=True),
}
"""The one place a meter kind's capabilities are defined (meters and JSON records alike)."""


def capabilities(kind: str) -> Capabilities:
    """The capabilities of a meter kind, e.g. of a record loaded from JSON (unknown: noisy)."""
    return KIND_CAPABILITIES.get(kind, Capabilities())


@dataclass(frozen=True)
class Reading:
    """The energy of one window as seen by one meter.

    Attributes:
        meter: name of the meter that produced it (``nvml``, ``rapl``, ``cputime``, ``counted``).
        kind: ``measured`` (hardware counter), ``estimated`` (a model of measured time) or
            ``counted`` (a deterministic count of operations).
        seconds: wall-clock length of the window, in seconds.
        joules_by_domain: energy per domain in joules, e.g. ``{"gpu:0": 12.5}``,
            ``{"cpu:package-0": 3.1, "dram:0": 0.4}`` or ``{"process": 0.2}``.
        flops: floating-point (and integer) operations counted in the window; ``counted`` only.
        bytes_moved: bytes read and written by operators in the window; ``counted`` only.
        details: provenance that explains the figure (e.g. where a wattage came from).
    """

    meter: str
    kind: MeterKind
    seconds: float
    joules_by_domain: Mapping[str, float]
    flops: float | None = None
    bytes_moved: float | None = None
    details: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_reading(self)

    @property
    def joules(self) -> float:
        """Total energy of the window over all domains, in joules."""
        return float(sum(self.joules_by_domain.values()))

    @property
    def capabilities(self) -> Capabilities:
        return capabilities(self.kind)


@dataclass(frozen=True)
class Bookkeeping:
    """CPU time a meter spent on its own work inside a window, on the thread that runs it.

    ``counted`` runs a dispatch mode on every operator of its window: that CPU time is the
    meter's, not the user's, so a timed meter sharing the window takes it out of its reading
    (``Meter.without_bookkeeping``) instead of charging it to TEC.

    Attributes:
        meter: the meter that spent it.
        cpu_seconds: CPU seconds spent, in seconds.
        how: how the figure was obtained, for the reading's details.
    """

    meter: str
    cpu_seconds: float
    how: str


def remove_bookkeeping(meters: Sequence[Meter], readings: MutableMapping[str, Reading]) -> None:
    """Take each meter's own bookkeeping (``Meter.bookkeeping``) out of the other readings.

    Called once a shared window has closed, with the meters that ran in it and their readings
    by name; readings are replaced in place. A window with one meter is left as it is.
    """
    if len(meters) < 2:
        return
    for meter in meters:
        reading = readings.get(meter.name)
        spent = meter.bookkeeping(reading) if reading is not None else None
        if spent is None:
            continue
        for other in meters:
            if other is not meter and other.name in readings:
                readings[other.name] = other.without_bookkeeping(readings[other.name], spent)


PendingReading = Callable[[], Reading]
"""A closed window's reading, built on call (``Meter.stop_pending``)."""


class WindowReadings(Mapping[str, Reading]):
    """One window's readings by meter name, built when first looked at.

    Empty while the window is open; ``close`` hands over each meter's pending reading. On the
    first look every reading is built and each meter's bookkeeping taken out of the others
    (``remove_bookkeeping``), once.
    """

    __slots__ = ("_pending", "_readings")

    def __init__(self) -> None:
        self._pending: list[tuple[Meter, PendingReading]] | None = None
        self._readings: dict[str, Reading] | None = None

    def close(self, pending: list[tuple[Meter, PendingReading]]) -> None:
        """The window closed: ``pending`` are (meter, pending reading), in stopping order."""
        self._pending = pending

    def _built(self) -> dict[str, Reading]:
        if self._readings is None:
            if self._pending is None:
                return {}
            readings = {meter.name: build() for meter, build in self._pending}
            remove_bookkeeping([meter for meter, _ in self._pending], readings)
            self._readings, self._pending = readings, None
        return self._readings

    def __getitem__(self, name: str) -> Reading:
        return self._built()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._built())

    def __len__(self) -> int:
        return len(self._built())

    def __repr__(self) -> str:
        return f"WindowReadings({self._built()!r})"


def check_reading(reading: Reading) -> None:
    """Refuse a figure no hardware can produce: negative, infinite or NaN joules or seconds.

    Every Reading passes here when it is made, so no such figure reaches a result, a report or
    a baseline. A meter that knows its domain's power bound checks plausibility itself (rapl).
    """
    for domain, value in (*reading.joules_by_domain.items(), (None, reading.seconds)):
        if isinstance(value, float) and 0.0 <= value < math.inf:
            continue  # the common case, checked without building a message
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = math.nan
        if not math.isfinite(number) or number < 0:
            name = "seconds" if domain is None else f"joules[{domain!r}]"
            raise ImplausibleReading(
                f"{reading.meter}: refused a reading with {name} = {value!r}: energy and time "
                f"must be finite and ≥ 0 (a broken counter or meter setting); nothing was "
                f"recorded from this window"
            )


class Meter(abc.ABC):
    """One source of energy figures.

    Subclasses set ``name``, ``kind`` and ``min_window_seconds`` (the shortest window the meter
    resolves: about ten counter updates for the hardware counters, zero for ``counted``).
    ``round_seconds`` is the inference round length measurements chose for the meter on a
    shared machine (``--energy-round-seconds`` overrides it, never below ``min_window_seconds``).
    ``start()`` and ``stop()`` must be cheap (well under a millisecond): they bracket the user's
    code, so whatever they cost is charged to it.

    ``scope`` says what one reading covers, so parallel runs add readings up without counting
    anything twice: ``process`` (this process only: cputime, counted), ``host`` (the whole
    machine: rapl) or ``device`` (every GPU the process sees: nvml).

    ``capabilities`` (from ``kind``, see ``Capabilities``): deterministic? counts operations?
    ``deterministic`` repeats the first of them as a class attribute.
    """

    name: ClassVar[str]
    kind: ClassVar[MeterKind]
    min_window_seconds: ClassVar[float] = 0.0
    round_seconds: ClassVar[float] = 0.0
    scope: ClassVar[MeterScope] = "process"
    deterministic: ClassVar[bool] = False

    @property
    def capabilities(self) -> Capabilities:
        return capabilities(self.kind)

    @classmethod
    @abc.abstractmethod
    def unavailable_reason(cls, **options: Any) -> str | None:
        """Why this meter cannot work here (``None`` when it can). Cheap, never raises."""

    @abc.abstractmethod
    def start(self) -> None:
        """Open a window."""

    @abc.abstractmethod
    def stop(self) -> Reading:
        """Close the window opened by ``start()`` and return its reading."""

    def stop_pending(self) -> PendingReading:
        """Close the window now and build its reading when it is first asked for.

        The window's edge is read here; a meter whose reading takes work to build (details,
        pricing a tally) defers that work, so the window a user opens costs the edges alone.
        The default builds the reading at once: errors then surface where the window closes.
        """
        reading = self.stop()
        return lambda: reading

    def bookkeeping(self, reading: Reading) -> Bookkeeping | None:
        """CPU time this meter spent on its own work inside the window of ``reading``.

        ``None`` (the default) for meters that only read a counter at the window's edges.
        """
        return None

    def without_bookkeeping(self, reading: Reading, spent: Bookkeeping) -> Reading:
        """``reading`` less another meter's bookkeeping in the same window.

        The default leaves ``reading`` as it is: a meter that cannot tell that CPU time apart
        (a host or device energy counter) keeps it, and says so in its documentation.
        """
        return reading

    def describe(self) -> dict[str, Any]:
        """What this meter is and how it measures, for results files and headers."""
        return {"name": self.name, "kind": self.kind}

    def close(self) -> None:  # noqa: B027 - most meters hold nothing to release
        """Release whatever the meter holds (library handles, threads)."""
