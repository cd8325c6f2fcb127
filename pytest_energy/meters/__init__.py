"""The meters and how a session picks them: ``--energy-meter auto|nvml|rapl|cputime|counted``."""

from __future__ import annotations

import importlib
import importlib.util
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pytest_energy.errors import ConfigError, MeterUnavailable
from pytest_energy.meters.base import KINDS, Meter, MeterKind, Reading

__all__ = [
    "KINDS",
    "METER_NAMES",
    "Meter",
    "MeterKind",
    "MeterOptions",
    "MeterProbe",
    "MeterSelection",
    "Reading",
    "meter_class",
    "parse_meter_spec",
    "probe_meters",
    "select_meters",
]

_METER_MODULES = {
    "nvml": ("pytest_energy.meters.nvml", "NvmlMeter"),
    "rapl": ("pytest_energy.meters.rapl", "RaplMeter"),
    "cputime": ("pytest_energy.meters.cputime", "CpuTimeMeter"),
    "counted": ("pytest_energy.meters.counted", "CountedMeter"),
}
METER_NAMES: tuple[str, ...] = tuple(_METER_MODULES)
MEASURED_METERS = ("nvml", "rapl")


@dataclass(frozen=True)
class MeterOptions:
    """Settings that meters take from the command line."""

    cpu_watts_per_thread: float | None = None
    rapl_root: str = "/sys/class/powercap"
    counted_energy_table: dict[str, float] | None = None
    counted_breakdown: bool = False
    """``--energy-breakdown``: ask counted for per-operator and per-module figures."""

    def constructor_kwargs(self, name: str) -> dict[str, Any]:
        if name == "cputime":
            return {"watts_per_thread": self.cpu_watts_per_thread}
        if name == "rapl":
            return {"root": self.rapl_root}
        if name == "counted":
            kwargs: dict[str, Any] = {"energy_table": self.counted_energy_table}
            if self.counted_breakdown:
                from pytest_energy.breakdown import counted_accepts_breakdown

                if counted_accepts_breakdown(meter_class("counted")):
                    kwargs["breakdown"] = True
            return kwargs
        return {}

    def probe_kwargs(self, name: str) -> dict[str, Any]:
        return {"root": self.rapl_root} if name == "rapl" else {}


@dataclass(frozen=True)
class MeterProbe:
    """Whether one meter works here, and why not when it does not."""

    name: str
    kind: MeterKind
    reason_unavailable: str | None

    @property
    def available(self) -> bool:
        return self.reason_unavailable is None


@dataclass
class MeterSelection:
    """The meters a session uses and, for every other meter, why it is not used."""

    meters: list[Meter]
    not_used: dict[str, str] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return [meter.name for meter in self.meters]


def meter_class(name: str) -> type[Meter]:
    """The class of the meter called ``name`` (imported on first use)."""
    try:
        module_name, class_name = _METER_MODULES[name]
    except KeyError:
        raise ConfigError(
            f"unknown meter {name!r}; choose from auto, {', '.join(METER_NAMES)}"
        ) from None
    return getattr(importlib.import_module(module_name), class_name)


def parse_meter_spec(spec: str) -> list[str]:
    """``"auto"`` or a comma-separated list of meter names, validated; ``["auto"]`` for auto."""
    names = [part.strip() for part in re.split(r"[,\s]+", spec or "") if part.strip()]
    if not names:
        raise ConfigError("--energy-meter: give auto or one or more of " + ", ".join(METER_NAMES))
    if "auto" in names:
        if len(names) > 1:
            raise ConfigError("--energy-meter: auto cannot be combined with named meters")
        return ["auto"]
    unknown = [name for name in names if name not in METER_NAMES]
    if unknown:
        raise ConfigError(
            f"--energy-meter: unknown meter {', '.join(map(repr, unknown))}; "
            f"choose from auto, {', '.join(METER_NAMES)}"
        )
    return list(dict.fromkeys(names))


def probe_meters(options: MeterOptions | None = None) -> list[MeterProbe]:
    """Ask every meter whether it works here; never raises."""
    options = options or MeterOptions()
    probes = []
    for name in METER_NAMES:
        try:
            cls = meter_class(name)
            reason = cls.unavailable_reason(**options.probe_kwargs(name))
            kind = cls.kind
        except Exception as error:  # a broken meter module must not break the probe
            reason, kind = f"{name}: cannot be loaded ({type(error).__name__}: {error})", "measured"
        probes.append(MeterProbe(name=name, kind=kind, reason_unavailable=reason))
    return probes


def _torch_installed() -> bool:
    return importlib.util.find_spec("torch") is not None


def select_meters(spec: str, options: MeterOptions | None = None) -> MeterSelection:
    """Build the meters ``spec`` asks for.

    ``auto`` takes every measured meter that works here, else ``cputime``, and adds ``counted``
    when torch is installed. A named meter that does not work here raises ``MeterUnavailable``
    with the reason; auto records the reason of every meter it leaves out.
    """
    options = options or MeterOptions()
    names = parse_meter_spec(spec)
    probes = {probe.name: probe for probe in probe_meters(options)}
    not_used: dict[str, str] = {}
    if names == ["auto"]:
        chosen = [name for name in MEASURED_METERS if probes[name].available]
        for name in MEASURED_METERS:
            if not probes[name].available:
                not_used[name] = probes[name].reason_unavailable or ""
        if chosen:
            not_used["cputime"] = "cputime: a measured meter works here"
        else:
            chosen.append("cputime")
        if _torch_installed() and probes["counted"].available:
            chosen.append("counted")
        elif not probes["counted"].available:
            not_used["counted"] = probes["counted"].reason_unavailable or ""
        else:
            not_used["counted"] = "counted: torch is not installed"
    else:
        for name in names:
            if not probes[name].available:
                raise MeterUnavailable(
                    f"--energy-meter: {probes[name].reason_unavailable}. "
                    f"Run `pytest-energy meters` to see which meters work here."
                )
        chosen = names
        not_used = {
            name: f"{name}: not asked for (--energy-meter {spec})"
            for name in METER_NAMES
            if name not in names
        }
    meters = [meter_class(name)(**options.constructor_kwargs(name)) for name in chosen]
    return MeterSelection(meters=_window_order(meters), not_used=not_used)


def _window_order(meters: Sequence[Meter]) -> list[Meter]:
    """Counting meters open last and close first, so timers do not see their bookkeeping."""
    return sorted(meters, key=lambda meter: meter.kind == "counted")
