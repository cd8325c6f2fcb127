"""The ``rapl`` meter: Intel and AMD CPU package and DRAM energy from Linux powercap.

The kernel's powercap framework exposes RAPL (Running Average Power Limit) energy counters as
zones under ``/sys/class/powercap``. AMD processors use the same ``intel-rapl`` names.

- ``intel-rapl:N`` is a top-level zone: ``package-N`` (one CPU socket, or ``package-N-die-M`` on
  multi-die parts) or ``psys`` (the whole platform, on client parts).
- ``intel-rapl:N:M`` is a subzone of ``intel-rapl:N``: ``core`` and ``uncore`` lie inside the
  package figure; ``dram`` is outside it on the parts that report it.
- ``intel-rapl-mmio:N`` reads the same package counter through memory-mapped registers instead of
  model-specific registers: a duplicate of ``intel-rapl:N`` wherever both exist.

What the total counts, so that nothing is counted twice:

- every package (``cpu:package-N``) plus every dram zone (``dram:N``);
- ``core`` and ``uncore`` are measured but only reported in ``details["uncounted_joules"]``,
  since the package already contains them;
- ``psys`` covers package and dram; package + dram is preferred because it keeps per-domain
  detail, so psys goes to ``details["uncounted_joules"]`` too. psys is counted (as ``psys:0``)
  only on a machine that exposes no package zone at all;
- an ``intel-rapl-mmio`` zone is read only when the ``intel-rapl`` interface lacks a zone of
  the same name.

Each counter wraps to zero at its ``max_energy_range_uj``. While a window is open a poller
thread (as Zeus does) reads the counters every ``max_energy_range_uj / (2 × power bound)``
seconds: at the most a zone can draw, the counter cannot pass a whole range between two reads,
so every wrap of a long window is seen (about two minutes apart for a 262 kJ range at 1 kW;
the thread sleeps otherwise and is stopped by ``close()``). Each step between reads is checked:
a counter that went down is one wrap only if the energy that implies fits the zone's power
bound over the time elapsed; a counter that ran backwards (or a step beyond the bound) is
refused with ``ImplausibleReading`` rather than read as a whole range of energy. A zone whose
``max_energy_range_uj`` is 0 or not a number cannot be unwrapped and makes the meter
unavailable, with the path.

Since Linux 5.10 (CVE-2020-8694) ``energy_uj`` is readable by root only; the meter says so and how
to fix it rather than failing deep inside a test.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from pytest_energy.errors import (
    ImplausibleReading,
    MeasurementError,
    MeterError,
    MeterUnavailable,
)
from pytest_energy.meters.base import Meter, MeterKind, MeterScope, Reading

DEFAULT_POWERCAP_ROOT = "/sys/class/powercap"

_ZONE_DIR = re.compile(
    r"^(?P<interface>intel-rapl|intel-rapl-mmio):(?P<zone>\d+)(?::(?P<sub>\d+))?$"
)
_PACKAGE_NAME = re.compile(r"^package-(?P<socket>\d+)")
_COUNTER_READ_BYTES = 32

MAX_WATTS_BY_ZONE = {"package": 1000.0, "dram": 500.0, "psys": 2000.0}
"""The most each kind of zone can draw, in watts, with a wide margin (the largest server CPU
packages draw about 500 W): a step beyond it is a broken counter, not energy."""
DEFAULT_MAX_WATTS = 2000.0
READ_SLACK_SECONDS = 0.1
"""Allowance for counter update granularity (about 1 ms) when checking a short step's power."""
MIN_POLL_SECONDS = 0.01
MAX_POLL_SECONDS = 600.0


def zone_max_watts(zone_name: str) -> float:
    """The power bound of a zone named ``zone_name`` (``package-0``, ``dram``, ``core``...)."""
    if _PACKAGE_NAME.match(zone_name) or zone_name in ("core", "uncore"):
        return MAX_WATTS_BY_ZONE["package"]
    return MAX_WATTS_BY_ZONE.get(zone_name, DEFAULT_MAX_WATTS)


def poll_seconds(max_energy_microjoules: int, max_watts: float) -> float:
    """How often to read a counter so no whole range passes unseen: half its fastest wrap."""
    seconds = max_energy_microjoules / 1e6 / max_watts / 2
    return min(max(seconds, MIN_POLL_SECONDS), MAX_POLL_SECONDS)


@dataclass(frozen=True)
class RaplZone:
    """One powercap zone the meter reads, and how its energy is reported.

    Attributes:
        label: domain name in a Reading (``cpu:package-0``, ``dram:0``, ``core:0``, ``psys:0``).
        directory: the zone's sysfs directory.
        zone_name: content of the zone's ``name`` file.
        max_energy_microjoules: the value at which ``energy_uj`` wraps to zero.
        counted: whether the zone adds to the total (``False``: reported in details only).
        why_uncounted: for an uncounted zone, which counted zone already contains its energy.
    """

    label: str
    directory: Path
    zone_name: str
    max_energy_microjoules: int
    counted: bool
    why_uncounted: str = ""

    @property
    def energy_path(self) -> Path:
        return self.directory / "energy_uj"


@dataclass(frozen=True)
class _FoundZone:
    interface: str
    zone_index: int
    sub_index: int | None
    directory: Path
    zone_name: str

    @property
    def id(self) -> str:
        return self.directory.name


def _permission_message(path: Path, interface: str, root: Path) -> str:
    return (
        f"rapl: permission denied reading {path} (root-only since Linux 5.10; run "
        f"`sudo chmod o+r {root}/{interface}:*/energy_uj` or run as root)"
    )


def _read_text(path: Path, interface: str, root: Path) -> str:
    try:
        return path.read_text().strip()
    except PermissionError:
        raise MeterUnavailable(_permission_message(path, interface, root)) from None
    except OSError as error:
        raise MeterUnavailable(f"rapl: cannot read {path}: {error.strerror or error}") from None


def _find_zones(root: Path) -> list[_FoundZone]:
    """Every RAPL zone directory under ``root``, from the flat listing and inside each zone."""
    directories: dict[str, Path] = {}
    candidates = list(root.iterdir())
    for top in list(candidates):
        if _ZONE_DIR.match(top.name) and top.is_dir():
            candidates.extend(child for child in top.iterdir() if child.is_dir())
    for candidate in candidates:
        if _ZONE_DIR.match(candidate.name) and candidate.name not in directories:
            directories[candidate.name] = candidate

    zones = []
    for zone_id, directory in sorted(directories.items()):
        match = _ZONE_DIR.match(zone_id)
        assert match is not None
        if not (directory / "energy_uj").exists():
            continue
        interface = match["interface"]
        zones.append(
            _FoundZone(
                interface=interface,
                zone_index=int(match["zone"]),
                sub_index=int(match["sub"]) if match["sub"] is not None else None,
                directory=directory,
                zone_name=_read_text(directory / "name", interface, root),
            )
        )
    return zones


def _drop_mmio_duplicates(found: list[_FoundZone]) -> tuple[list[_FoundZone], dict[str, str]]:
    """Zones worth reading, and each ``intel-rapl-mmio`` zone left out with what it duplicates."""
    msr_zone_ids = {
        (zone.zone_name, zone.sub_index is None): zone.id
        for zone in found
        if zone.interface == "intel-rapl"
    }
    readable, duplicates = [], {}
    for zone in found:
        twin = msr_zone_ids.get((zone.zone_name, zone.sub_index is None))
        if zone.interface == "intel-rapl" or twin is None:
            readable.append(zone)
        else:
            duplicates[zone.id] = f"duplicate of {twin} ({zone.zone_name})"
    return readable, duplicates


def _classify(readable: list[_FoundZone]) -> list[tuple[_FoundZone, str, bool, str]]:
    """Label each zone and decide whether it counts toward the total (see the module docstring)."""
    parents = {
        (zone.interface, zone.zone_index): zone for zone in readable if zone.sub_index is None
    }
    has_package = any(_PACKAGE_NAME.match(zone.zone_name) for zone in parents.values())

    classified = []
    psys_count = 0
    for zone in readable:
        name = zone.zone_name
        if zone.sub_index is None:
            if _PACKAGE_NAME.match(name):
                classified.append((zone, f"cpu:{name}", True, ""))
            elif name == "psys":
                label = f"psys:{psys_count}"
                psys_count += 1
                if has_package:
                    classified.append((zone, label, False, "covers the package and dram zones"))
                else:
                    classified.append((zone, label, True, ""))
            elif name == "dram":
                classified.append((zone, f"dram:{zone.zone_index}", True, ""))
            else:
                classified.append((zone, f"{name}:{zone.zone_index}", False, "unknown zone"))
            continue
        parent = parents.get((zone.interface, zone.zone_index))
        parent_match = _PACKAGE_NAME.match(parent.zone_name) if parent else None
        socket = parent_match["socket"] if parent_match else str(zone.zone_index)
        parent_label = f"cpu:{parent.zone_name}" if parent else f"zone {zone.zone_index}"
        if name == "dram":
            classified.append((zone, f"dram:{socket}", True, ""))
        else:
            classified.append((zone, f"{name}:{socket}", False, f"inside {parent_label}"))
    return classified


def discover_zones(root: str | os.PathLike[str] = DEFAULT_POWERCAP_ROOT) -> list[RaplZone]:
    """The zones a RaplMeter reads under ``root``; raises MeterUnavailable saying why none.

    Every zone's ``energy_uj`` is opened and read once, so a permission problem shows here.
    """
    return _discover(Path(root))[0]


def _discover(root: Path) -> tuple[list[RaplZone], dict[str, str]]:
    if root.exists() and not root.is_dir():
        raise MeterUnavailable(
            f"rapl: {root} is a file, not the powercap directory; give --energy-rapl-root a "
            f"directory such as /sys/class/powercap"
        )
    if not root.is_dir():
        raise MeterUnavailable(f"rapl: {root} absent")
    try:
        found = _find_zones(root)
    except PermissionError as error:
        raise MeterUnavailable(f"rapl: permission denied listing {error.filename}") from None
    except OSError as error:
        raise MeterUnavailable(f"rapl: cannot list {root}: {error.strerror or error}") from None
    if not found:
        raise MeterUnavailable(f"rapl: no RAPL zones under {root}")

    readable, duplicates = _drop_mmio_duplicates(found)
    zones = []
    for zone, label, counted, why_uncounted in _classify(readable):
        max_text = _read_text(zone.directory / "max_energy_range_uj", zone.interface, root)
        try:
            descriptor = os.open(zone.directory / "energy_uj", os.O_RDONLY)
        except PermissionError:
            raise MeterUnavailable(
                _permission_message(zone.directory / "energy_uj", zone.interface, root)
            ) from None
        except OSError as error:
            raise MeterUnavailable(
                f"rapl: cannot open {zone.directory / 'energy_uj'}: {error.strerror or error}"
            ) from None
        try:
            _read_counter(descriptor)
        except (OSError, ValueError) as error:
            raise MeterUnavailable(
                f"rapl: cannot read {zone.directory / 'energy_uj'}: {error}"
            ) from None
        finally:
            os.close(descriptor)
        try:
            max_energy_microjoules = int(max_text)
        except ValueError:
            raise MeterUnavailable(
                f"rapl: {zone.directory / 'max_energy_range_uj'} holds {max_text!r}, not a number"
            ) from None
        if max_energy_microjoules <= 0:
            raise MeterUnavailable(
                f"rapl: {zone.directory / 'max_energy_range_uj'} holds {max_text!r}: a counter "
                f"without a positive range cannot be unwrapped, so its energy cannot be trusted"
            )
        zones.append(
            RaplZone(
                label=label,
                directory=zone.directory,
                zone_name=zone.zone_name,
                max_energy_microjoules=max_energy_microjoules,
                counted=counted,
                why_uncounted=why_uncounted,
            )
        )
    if not any(zone.counted for zone in zones):
        raise MeterUnavailable(f"rapl: no package, dram or psys zone under {root}")
    return zones, duplicates


def _read_counter(descriptor: int) -> int:
    return int(os.pread(descriptor, _COUNTER_READ_BYTES, 0))


def energy_delta_microjoules(start: int, end: int, max_energy_microjoules: int) -> int:
    """Energy between two ``energy_uj`` readings, allowing for one wrap at the range's end.

    Only for two reads close enough that at most one wrap fits between them (the poller
    makes them so); ``RaplMeter`` also checks that the result fits the zone's power bound.
    """
    if end >= start:
        return end - start
    return end + max_energy_microjoules - start


def check_step(
    zone: RaplZone, start: int, end: int, seconds: float, max_watts: float
) -> tuple[int, bool]:
    """Microjoules of one step between reads, and whether it wrapped; refuses the impossible."""
    if start > zone.max_energy_microjoules or end > zone.max_energy_microjoules or end < 0:
        raise ImplausibleReading(
            f"rapl: {zone.energy_path} read {end} µJ (before: {start} µJ), outside its range "
            f"0..{zone.max_energy_microjoules} µJ; this counter cannot be trusted"
        )
    microjoules = energy_delta_microjoules(start, end, zone.max_energy_microjoules)
    bound_joules = max_watts * (max(seconds, 0.0) + READ_SLACK_SECONDS)
    if microjoules / 1e6 > bound_joules:
        what = "went down by more than a wrap can explain" if end < start else "jumped"
        raise ImplausibleReading(
            f"rapl: {zone.label} counter {what} ({start} → {end} µJ in {seconds:.3g} s would be "
            f"{microjoules / 1e6:.6g} J, beyond {max_watts:g} W for this zone); the reading "
            f"was refused, not counted ({zone.energy_path})"
        )
    return microjoules, end < start


class RaplMeter(Meter):
    """CPU package and DRAM energy from the RAPL counters in Linux powercap.

    The counter files stay open between windows, so ``start()`` and ``stop()`` cost one
    ``pread`` per zone. While a window is open a poller thread reads the counters at
    ``poll_seconds`` so that every wrap of a long window is counted (see the module docstring).
    Reading ``details``:

    - ``zones``: counted domain → zone directory name (``{"cpu:package-0": "intel-rapl:0"}``);
    - ``uncounted_joules``: energy of zones left out of the total because a counted zone already
      contains it (``core``, ``uncore``, ``psys``);
    - ``wrapped``: the domains whose counter wrapped during the window;
    - ``wraps``: how many times each wrapped domain's counter wrapped.
    """

    name: ClassVar[str] = "rapl"
    kind: ClassVar[MeterKind] = "measured"
    min_window_seconds: ClassVar[float] = 0.01
    scope: ClassVar[MeterScope] = "host"

    def __init__(
        self,
        root: str | os.PathLike[str] = DEFAULT_POWERCAP_ROOT,
        max_watts: float | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        """``max_watts`` overrides every zone's power bound; ``clock`` is for tests."""
        self.root = Path(root)
        zones, duplicates = _discover(self.root)
        self.zones: tuple[RaplZone, ...] = tuple(zones)
        self.ignored_duplicates: dict[str, str] = duplicates
        self.max_watts: tuple[float, ...] = tuple(
            max_watts if max_watts is not None else zone_max_watts(zone.zone_name)
            for zone in self.zones
        )
        self.poll_seconds = min(
            poll_seconds(zone.max_energy_microjoules, watts)
            for zone, watts in zip(self.zones, self.max_watts, strict=True)
        )
        self._clock = clock
        self._descriptors: list[int] | None = None
        self._lock = threading.Lock()
        self._window_open = False
        self._last_microjoules: list[int] = []
        self._last_seconds = 0.0
        self._accumulated: list[int] = []
        self._wraps: list[int] = []
        self._poll_error: MeterError | None = None
        self._start_seconds = 0.0
        self._poller: threading.Thread | None = None
        self._stop_polling = threading.Event()
        self._counted_zone_dirs = {
            zone.label: zone.directory.name for zone in self.zones if zone.counted
        }

    @classmethod
    def unavailable_reason(
        cls, root: str | os.PathLike[str] = DEFAULT_POWERCAP_ROOT, **options: Any
    ) -> str | None:
        """Why RAPL cannot be read under ``root`` (``None`` when it can)."""
        try:
            _discover(Path(root))
        except MeterUnavailable as error:
            return str(error)
        except Exception as error:
            return f"rapl: unexpected error reading {root}: {error!r}"
        return None

    def _open(self) -> list[int]:
        descriptors: list[int] = []
        try:
            for zone in self.zones:
                descriptors.append(os.open(zone.energy_path, os.O_RDONLY))
        except OSError as error:
            for descriptor in descriptors:
                os.close(descriptor)
            if isinstance(error, PermissionError):
                interface = zone.directory.name.split(":", 1)[0]
                message = _permission_message(zone.energy_path, interface, self.root)
                raise MeterError(message) from None
            raise MeterError(f"rapl: cannot open {zone.energy_path}: {error}") from error
        self._descriptors = descriptors
        return descriptors

    def _read_all(self, descriptors: list[int]) -> list[int]:
        try:
            return [_read_counter(descriptor) for descriptor in descriptors]
        except (OSError, ValueError) as error:
            raise MeterError(f"rapl: reading the energy counters failed: {error}") from error

    def _fold(self, counters: list[int], now_seconds: float) -> None:
        """Add the step since the last read to the window's total (caller holds the lock)."""
        seconds = now_seconds - self._last_seconds
        for index, (zone, before, after) in enumerate(
            zip(self.zones, self._last_microjoules, counters, strict=True)
        ):
            microjoules, wrapped = check_step(zone, before, after, seconds, self.max_watts[index])
            self._accumulated[index] += microjoules
            self._wraps[index] += wrapped
        self._last_microjoules = counters
        self._last_seconds = now_seconds

    def poll(self) -> None:
        """Read the counters once into the open window (the poller thread calls this)."""
        with self._lock:
            if not self._window_open or self._descriptors is None or self._poll_error:
                return
            try:
                self._fold(self._read_all(self._descriptors), self._clock())
            except MeterError as error:
                self._poll_error = error

    def _poll_loop(self) -> None:
        while not self._stop_polling.wait(self.poll_seconds):
            self.poll()

    def _ensure_poller(self) -> None:
        if self._poller is None or not self._poller.is_alive():
            self._stop_polling.clear()
            self._poller = threading.Thread(
                target=self._poll_loop, name="pytest-energy-rapl-poller", daemon=True
            )
            self._poller.start()

    def start(self) -> None:
        """Open a window: read every zone's counter."""
        with self._lock:
            if self._window_open:
                raise MeasurementError("rapl: start() called while a window is already open")
            descriptors = self._descriptors if self._descriptors is not None else self._open()
            self._start_seconds = self._clock()
            counters = self._read_all(descriptors)
            self._last_microjoules, self._last_seconds = counters, self._start_seconds
            self._accumulated = [0] * len(self.zones)
            self._wraps = [0] * len(self.zones)
            self._poll_error = None
            self._window_open = True
        self._ensure_poller()

    def stop(self) -> Reading:
        """Close the window: read the counters again and return joules per domain."""
        with self._lock:
            if not self._window_open or self._descriptors is None:
                raise MeasurementError("rapl: stop() called without start()")
            self._window_open = False
            if self._poll_error is not None:
                raise self._poll_error
            now_seconds = self._clock()
            self._fold(self._read_all(self._descriptors), now_seconds)
            seconds = now_seconds - self._start_seconds
            accumulated, wraps = list(self._accumulated), list(self._wraps)

        joules_by_domain: dict[str, float] = {}
        uncounted_joules: dict[str, float] = {}
        wrap_counts: dict[str, int] = {}
        for zone, microjoules, wrap_count in zip(self.zones, accumulated, wraps, strict=True):
            if wrap_count:
                wrap_counts[zone.label] = wrap_count
            target = joules_by_domain if zone.counted else uncounted_joules
            target[zone.label] = target.get(zone.label, 0.0) + microjoules / 1e6
        return Reading(
            meter=self.name,
            kind=self.kind,
            seconds=seconds,
            joules_by_domain=joules_by_domain,
            details={
                "zones": dict(self._counted_zone_dirs),
                "uncounted_joules": uncounted_joules,
                "wrapped": list(wrap_counts),
                "wraps": wrap_counts,
            },
        )

    def describe(self) -> dict[str, Any]:
        """Name, kind, powercap root and each zone read, with why uncounted zones are left out."""
        return {
            **super().describe(),
            "root": str(self.root),
            "zones": {
                zone.label: {
                    "directory": zone.directory.name,
                    "name": zone.zone_name,
                    "counted": zone.counted,
                    **({"why_uncounted": zone.why_uncounted} if not zone.counted else {}),
                    "max_energy_range_joules": zone.max_energy_microjoules / 1e6,
                    "max_watts": watts,
                }
                for zone, watts in zip(self.zones, self.max_watts, strict=True)
            },
            "poll_seconds": self.poll_seconds,
            "ignored_duplicates": dict(self.ignored_duplicates),
        }

    def close(self) -> None:
        """Stop the poller and close the counter files; a later ``start()`` reopens them."""
        self._stop_polling.set()
        poller, self._poller = self._poller, None
        if poller is not None and poller is not threading.current_thread():
            poller.join(timeout=5.0)
        with self._lock:
            descriptors, self._descriptors = self._descriptors, None
            self._window_open = False
        for descriptor in descriptors or ():
            os.close(descriptor)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()
