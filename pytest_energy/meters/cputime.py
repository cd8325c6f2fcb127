"""Estimated energy from the process's CPU time: CPU seconds × watts per hardware thread.

The wattage comes, in order, from ``--energy-cpu-watts`` (watts per hardware thread), from
the CPU's TDP in codecarbon's CPU table divided by the machine's hardware threads, or from a
stated default. The reading's ``details`` say which, so an estimate is never mistaken for a
measurement.
"""

from __future__ import annotations

import csv
import difflib
import functools
import io
import os
import platform
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_energy.errors import ConfigError
from pytest_energy.meters.base import Meter, Reading

DEFAULT_WATTS_PER_THREAD = 4.0
"""codecarbon's own fallback (``DEFAULT_POWER_PER_CORE``) when a CPU is not in its table."""

_NOISE_IN_CPU_NAMES = re.compile(
    r"\(r\)|\(tm\)|\bcpu\b|@.*$|\d+-core processor|processor|with radeon.*$", re.IGNORECASE
)


@dataclass(frozen=True)
class CpuWattage:
    """Watts charged per busy hardware thread, and where the figure came from."""

    watts_per_thread: float
    source: str
    cpu_model: str
    hardware_threads: int


def cpu_model_name() -> str:
    """The CPU's marketing name, from /proc/cpuinfo where there is one."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _normalise(cpu_name: str) -> str:
    return " ".join(_NOISE_IN_CPU_NAMES.sub(" ", cpu_name).lower().split())


@functools.lru_cache(maxsize=1)
def _codecarbon_tdp_table() -> dict[str, float]:
    """codecarbon's bundled CPU table, normalised name -> TDP in watts.

    Located by codecarbon's public ``DataSource`` and read as CSV here: its
    ``get_cpu_power_data()`` would load pandas and all its other tables first (~0.5 s).
    """
    try:
        from codecarbon.input import DataSource

        text = Path(DataSource().cpu_power_path).read_text(encoding="utf-8")
    except (ImportError, AttributeError, OSError):
        return {}
    table: dict[str, float] = {}
    for row in csv.DictReader(io.StringIO(text)):
        try:
            table.setdefault(_normalise(row["Name"]), float(row["TDP"]))
        except (KeyError, TypeError, ValueError):
            continue
    return table


def lookup_tdp_watts(cpu_name: str) -> tuple[float, str] | None:
    """The TDP of ``cpu_name`` in codecarbon's table and the table name it matched, if any."""
    table = _codecarbon_tdp_table()
    wanted = _normalise(cpu_name)
    if not wanted or not table:
        return None
    if wanted in table:
        return table[wanted], wanted
    close = difflib.get_close_matches(wanted, list(table), n=1, cutoff=0.92)
    if close:
        return table[close[0]], close[0]
    return None


def resolve_cpu_wattage(watts_per_thread: float | None = None) -> CpuWattage:
    """Pick the watts per hardware thread: user-given, else TDP / threads, else the default."""
    cpu_model = cpu_model_name()
    hardware_threads = os.cpu_count() or 1
    if watts_per_thread is not None:
        if not watts_per_thread > 0:
            raise ConfigError(
                f"--energy-cpu-watts must be a positive number of watts per hardware thread, "
                f"got {watts_per_thread!r}"
            )
        return CpuWattage(watts_per_thread, "--energy-cpu-watts", cpu_model, hardware_threads)
    match = lookup_tdp_watts(cpu_model)
    if match is not None:
        tdp_watts, matched_name = match
        return CpuWattage(
            tdp_watts / hardware_threads,
            f"codecarbon CPU table: {matched_name!r} TDP {tdp_watts:g} W / {hardware_threads} "
            f"hardware threads",
            cpu_model,
            hardware_threads,
        )
    return CpuWattage(
        DEFAULT_WATTS_PER_THREAD,
        f"default {DEFAULT_WATTS_PER_THREAD:g} W per thread ({cpu_model!r} is not in "
        f"codecarbon's CPU table; set --energy-cpu-watts for a better estimate)",
        cpu_model,
        hardware_threads,
    )


class CpuTimeMeter(Meter):
    """CPU seconds of this process, all threads, times watts per hardware thread.

    Counts only this process: work in child processes (e.g. DataLoader workers) and idle or
    uncore power are not in the figure. The figure is an estimate and is labelled so.
    """

    name = "cputime"
    kind = "estimated"
    min_window_seconds = 0.01

    def __init__(self, watts_per_thread: float | None = None) -> None:
        self.wattage = resolve_cpu_wattage(watts_per_thread)
        self._details = {
            "watts_per_thread": self.wattage.watts_per_thread,
            "watts_source": self.wattage.source,
        }
        self._start_cpu_seconds = 0.0
        self._start_wall_seconds = 0.0

    @classmethod
    def unavailable_reason(cls, **options: Any) -> str | None:
        try:
            time.process_time()
        except OSError as error:  # pragma: no cover - every supported platform has it
            return f"cputime: the process CPU clock cannot be read ({error})"
        return None

    def start(self) -> None:
        self._start_wall_seconds = time.perf_counter()
        self._start_cpu_seconds = time.process_time()

    def stop(self) -> Reading:
        return self.peek()

    def peek(self) -> Reading:
        """The open window so far, leaving it open (for progress lines during training)."""
        cpu_seconds = time.process_time() - self._start_cpu_seconds
        wall_seconds = time.perf_counter() - self._start_wall_seconds
        return Reading(
            meter=self.name,
            kind=self.kind,
            seconds=wall_seconds,
            joules_by_domain={"process": cpu_seconds * self.wattage.watts_per_thread},
            details={**self._details, "cpu_seconds": cpu_seconds},
        )

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "cpu_model": self.wattage.cpu_model,
            "hardware_threads": self.wattage.hardware_threads,
            "watts_per_thread": self.wattage.watts_per_thread,
            "watts_source": self.wattage.source,
        }
