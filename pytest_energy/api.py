"""Measure energy outside pytest: ``with pytest_energy.measure("train") as m:`` or a decorator.

For training scripts and notebooks (what codecarbon's ``EmissionsTracker`` is used for), with
the plugin's meters and the same ``Reading`` objects, each labelled with its kind (measured,
estimated or counted)::

    import pytest_energy

    with pytest_energy.measure("train", meters="auto") as m:
        train(model, loader)
    print(m.summary())          # train: cputime (estimated) 1.2 kJ in 31.4 s; ...
    m.readings["cputime"].joules

    @pytest_energy.measure("predict", meters="cputime")
    def predict(batch): ...
    predict(x); predict.energy.readings      # the last call's window

Meters are chosen like ``--energy-meter``: ``auto`` takes every measured meter that works here,
else ``cputime``, and adds ``counted`` when torch is installed; which meters were left out and
why is in ``m.not_used``. Windows do not nest (a meter measures one window at a time).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from pytest_energy.errors import ConfigError, MeasurementError, MeterUnavailable
from pytest_energy.meters import METER_NAMES, MeterOptions, select_meters
from pytest_energy.meters.base import Meter, Reading, remove_bookkeeping
from pytest_energy.report.units import format_energy

F = TypeVar("F", bound=Callable[..., Any])

_open = threading.local()
"""The ``measure()`` window open in this thread, if any (windows cannot nest)."""


def _validated_meters(meters: str | list[str] | tuple[str, ...], name: str) -> str:
    """The meter spec as a comma string; unknown names raise one ``ConfigError`` line."""
    names = [meters] if isinstance(meters, str) else list(meters)
    parts = [part.strip() for item in names for part in str(item).split(",") if part.strip()]
    where = f"pytest_energy.measure({name!r}, meters={meters!r})"
    if not parts:
        raise ConfigError(f"{where}: give 'auto' or one or more of {', '.join(METER_NAMES)}")
    unknown = [part for part in parts if part not in (*METER_NAMES, "auto")]
    if unknown:
        raise ConfigError(
            f"{where}: unknown meter {', '.join(map(repr, unknown))}; "
            f"choose from auto, {', '.join(METER_NAMES)}"
        )
    if "auto" in parts and len(parts) > 1:
        raise ConfigError(f"{where}: 'auto' cannot be combined with named meters")
    return ",".join(parts)


class Measurement:
    """One named measured window (reusable: each ``with`` or decorated call is a new window).

    After the window closes: ``readings`` (meter name → ``Reading``, with ``kind``),
    ``joules`` (meter name → joules), ``seconds`` (wall-clock length), ``not_used`` (meter
    name → why ``auto`` left it out) and ``windows`` (every closed window's readings, oldest
    first, for a decorated function called several times).
    """

    def __init__(
        self,
        name: str,
        meters: str | list[str] | tuple[str, ...] = "auto",
        *,
        cpu_watts_per_thread: float | None = None,
        rapl_root: str = "/sys/class/powercap",
    ) -> None:
        if not isinstance(name, str) or not name:
            raise ConfigError(f"pytest_energy.measure() needs a non-empty name, got {name!r}")
        self.name = name
        self.meter_spec = _validated_meters(meters, name)
        self.options = MeterOptions(cpu_watts_per_thread=cpu_watts_per_thread, rapl_root=rapl_root)
        self.readings: dict[str, Reading] = {}
        self.not_used: dict[str, str] = {}
        self.windows: list[dict[str, Reading]] = []
        self._meters: list[Meter] = []

    @property
    def joules(self) -> dict[str, float]:
        """Joules of the last closed window per meter."""
        return {meter: reading.joules for meter, reading in self.readings.items()}

    @property
    def seconds(self) -> float | None:
        """Wall-clock seconds of the last closed window (the longest meter's view)."""
        if not self.readings:
            return None
        return max(reading.seconds for reading in self.readings.values())

    def __enter__(self) -> Measurement:
        __tracebackhide__ = True
        outer = getattr(_open, "name", None)
        if outer is not None:
            raise MeasurementError(
                f"pytest_energy.measure({self.name!r}) was opened inside "
                f"measure({outer!r}): windows cannot nest; close the first one, or measure "
                f"the parts one after the other"
            )
        try:
            selection = select_meters(self.meter_spec, self.options)
        except MeterUnavailable as error:
            reason = str(error).removeprefix("--energy-meter: ")
            raise MeterUnavailable(f"pytest_energy.measure({self.name!r}): {reason}") from None
        self._meters, self.not_used = selection.meters, selection.not_used
        self.readings = {}
        started: list[Meter] = []
        try:
            for meter in self._meters:
                meter.start()
                started.append(meter)
        except BaseException:
            for meter in reversed(started):
                meter.stop()
            self._close_meters()
            raise
        _open.name = self.name
        return self

    def __exit__(self, *exc_info: Any) -> None:
        _open.name = None
        try:
            readings = {meter.name: meter.stop() for meter in reversed(self._meters)}
            remove_bookkeeping(self._meters, readings)
        finally:
            self._close_meters()
        self.readings = {name: readings[name] for name in sorted(readings)}
        self.windows.append(self.readings)

    def _close_meters(self) -> None:
        for meter in self._meters:
            meter.close()
        self._meters = []

    def __call__(self, fn: F) -> F:
        """Use as a decorator: every call of ``fn`` is one window; ``fn.energy`` is this object."""

        @functools.wraps(fn)
        def measured(*args: Any, **kwargs: Any) -> Any:
            with self:
                return fn(*args, **kwargs)

        measured.energy = self  # type: ignore[attr-defined]
        return measured  # type: ignore[return-value]

    def summary(self) -> str:
        """One line: the window's name, then joules, kind and seconds per meter."""
        if not self.readings:
            return f"{self.name}: not measured yet"
        parts = [
            f"{meter} ({reading.kind}) {format_energy(reading.joules)} in {reading.seconds:.3g} s"
            for meter, reading in self.readings.items()
        ]
        return f"{self.name}: " + "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """The last window as JSON-ready data, in the results file's reading layout."""
        from pytest_energy.results import reading_dict

        return {
            "name": self.name,
            "meters": {
                meter: {"kind": reading.kind, **reading_dict(reading)}
                for meter, reading in self.readings.items()
            },
            "not_used": dict(self.not_used),
        }

    def __repr__(self) -> str:
        return f"<pytest_energy.measure {self.summary()}>"


def measure(
    name: str,
    meters: str | list[str] | tuple[str, ...] = "auto",
    *,
    cpu_watts_per_thread: float | None = None,
    rapl_root: str = "/sys/class/powercap",
) -> Measurement:
    """A measured window for code outside pytest: a context manager and a decorator.

    ``meters``: ``"auto"`` (default) or meter names (``"cputime,counted"`` or a list).
    ``cpu_watts_per_thread`` and ``rapl_root`` are ``--energy-cpu-watts`` and
    ``--energy-rapl-root``. Raises ``ConfigError`` for an unknown meter, ``MeterUnavailable``
    for a named meter that does not work here, ``MeasurementError`` when nested.
    """
    return Measurement(name, meters, cpu_watts_per_thread=cpu_watts_per_thread, rapl_root=rapl_root)
