"""Estimated energy from CPU time: CPU seconds × watts per hardware thread.

The CPU seconds are this process's (all threads) plus those of its child processes (DataLoader
workers, subprocesses), as codecarbon's process mode counts them: a child alive at a window's
edge counts for its CPU time inside the window, and a child that ended and was waited for in
the window counts through the kernel's children clock. Children come from ``/proc`` on Linux,
else from psutil when it is installed; the reading's ``details`` say how many and from where.

A meter sharing the window that spends CPU time on its own work inside it (``counted``'s
dispatch mode) reports that time, and this meter takes it out of its reading
(``without_bookkeeping``; ``details["bookkeeping_removed"]`` says how much and how it was
obtained), so counting beside cputime is charged to nobody's TEC.

The wattage comes, in order, from ``--energy-cpu-watts`` (watts per hardware thread), from
the CPU's TDP in codecarbon's CPU table divided by the machine's hardware threads, or from a
stated default. The reading's ``details`` say which, so an estimate is never mistaken for a
measurement.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import importlib.util
import io
import os
import platform
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_energy.errors import ConfigError
from pytest_energy.meters.base import Bookkeeping, Meter, PendingReading, Reading

DEFAULT_WATTS_PER_THREAD = 4.0
"""codecarbon's own fallback (``DEFAULT_POWER_PER_CORE``) when a CPU is not in its table."""

_NOISE_IN_CPU_NAMES = re.compile(
    r"\(r\)|\(tm\)|\bcpu\b|@.*$|\d+-core processor|processor|\bw/.*$|with radeon.*$",
    re.IGNORECASE,
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


def _model_numbers(tokens: frozenset[str]) -> frozenset[str]:
    """The tokens of a CPU name that carry a digit: the model number and the series (7840u, 7)."""
    return frozenset(token for token in tokens if any(char.isdigit() for char in token))


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


def match_tdp_watts(cpu_name: str, table: dict[str, float]) -> tuple[float, str] | None:
    """The TDP of ``cpu_name`` in ``table`` (normalised name -> watts) and the name it matched.

    A match is the same name once vendor marks, clock speed, core count and the integrated
    graphics are dropped, or else a table name whose words are all in the CPU's name (or the
    other way round) with exactly the same model-number words: "AMD Ryzen 7 PRO 7840U w/
    Radeon" is "AMD Ryzen 7 7840U", but "AMD EPYC 7B13" is not "AMD EPYC 7R13" and a name
    without a model number ("AMD EPYC") matches nothing. When the candidates disagree on the
    TDP the lookup declines: a wrong wattage is worse than the stated default.
    """
    wanted = _normalise(cpu_name)
    if not wanted or not table:
        return None
    if wanted in table:
        return table[wanted], wanted
    tokens = frozenset(wanted.split())
    numbers = _model_numbers(tokens)
    if not numbers:
        return None
    candidates = []
    for name, watts in table.items():
        name_tokens = frozenset(name.split())
        if _model_numbers(name_tokens) != numbers:
            continue
        if name_tokens <= tokens or tokens <= name_tokens:
            candidates.append((name, watts))
    if not candidates or len({watts for _, watts in candidates}) != 1:
        return None
    name, watts = min(candidates)
    return watts, name


def lookup_tdp_watts(cpu_name: str) -> tuple[float, str] | None:
    """The TDP of ``cpu_name`` in codecarbon's table and the table name it matched, if any."""
    return match_tdp_watts(cpu_name, _codecarbon_tdp_table())


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
        f"default {DEFAULT_WATTS_PER_THREAD:g} W per thread ({cpu_model!r} has no exact "
        f"model-number match in codecarbon's CPU table; set --energy-cpu-watts for a better "
        f"estimate)",
        cpu_model,
        hardware_threads,
    )


ProcessKey = tuple[int, float]
"""A process: its pid and its start time (a pid alone can be reused)."""


def _proc_children(pid: int, proc_root: str) -> list[int]:
    """Direct children of ``pid`` from ``/proc/<pid>/task/*/children`` (Linux 3.5+)."""
    children: list[int] = []
    try:
        tasks = os.listdir(f"{proc_root}/{pid}/task")
    except OSError:
        return children
    for task in tasks:
        try:
            with open(f"{proc_root}/{pid}/task/{task}/children", encoding="ascii") as stream:
                children.extend(int(child) for child in stream.read().split())
        except (OSError, ValueError):
            continue
    return children


def _proc_cpu_seconds(pid: int, proc_root: str) -> tuple[ProcessKey, float] | None:
    """(pid, start time) and CPU seconds of ``pid`` from ``/proc/<pid>/stat``.

    CPU seconds are the process's own user + system time plus that of its children it has
    waited for (fields 14-17), so a grandchild's time is not lost when it ends.
    """
    try:
        with open(f"{proc_root}/{pid}/stat", encoding="ascii", errors="replace") as stream:
            text = stream.read()
    except OSError:
        return None
    fields = text[text.rfind(")") + 2 :].split()  # after "pid (comm) "; comm may hold spaces
    try:
        ticks = sum(int(value) for value in fields[11:15])
        start = float(fields[19])
    except (IndexError, ValueError):
        return None
    return (pid, start), ticks / _CLOCK_TICKS


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


_WAIT_ALL_CHILDREN = 0x40000000 if sys.platform.startswith("linux") else 0
"""Linux's ``__WALL``: ``waitid`` also sees children created by ``clone`` without SIGCHLD."""


def has_children() -> bool:
    """Whether this process has a child (living, or ended and not yet waited for).

    One ``waitid(P_ALL, WNOHANG | WNOWAIT)`` call, about a microsecond, that reaps nothing:
    the kernel answers ECHILD exactly when there is no child. Where it cannot tell (no
    ``waitid``, an unexpected error) it says True, so children are never missed.
    """
    if not hasattr(os, "waitid"):
        return True
    flags = os.WEXITED | os.WNOHANG | os.WNOWAIT
    try:
        os.waitid(os.P_ALL, 0, flags | _WAIT_ALL_CHILDREN)
    except ChildProcessError:
        return False
    except OSError:
        try:
            os.waitid(os.P_ALL, 0, flags)
        except ChildProcessError:
            return False
        except OSError:
            return True
    return True


class ChildProcessClock:
    """CPU seconds of this process's descendants, read at a window's edges.

    ``source`` is ``/proc``, ``psutil`` or ``None`` (neither: children cannot be seen, said so
    in the reading's details). For this process, a snapshot first asks the kernel whether
    there is any child at all (``has_children``, ~1 µs) and scans ``/proc`` (~30 µs, more with
    many threads) only when there is: a window without DataLoader workers or subprocesses
    stays cheap, and one with them is scanned as before. Descendants without a living child
    in between are not ours to count (they were reparented), so nothing is lost.
    """

    def __init__(self, proc_root: str = "/proc", pid: int | None = None) -> None:
        self.pid = os.getpid() if pid is None else pid
        self.proc_root = proc_root
        if os.path.isdir(f"{proc_root}/{self.pid}/task"):
            self.source: str | None = proc_root
        elif importlib.util.find_spec("psutil") is not None:
            self.source = "psutil"
        else:
            self.source = None

    def snapshot(self) -> dict[ProcessKey, float]:
        """CPU seconds of every living descendant, keyed by (pid, start time)."""
        if self.pid == os.getpid() and not has_children():
            return {}
        if self.source == "psutil":
            return self._psutil_snapshot()
        if self.source is None:
            return {}
        times: dict[ProcessKey, float] = {}
        pending = _proc_children(self.pid, self.proc_root)
        while pending:
            child = pending.pop()
            figure = _proc_cpu_seconds(child, self.proc_root)
            if figure is not None and figure[0] not in times:
                times[figure[0]] = figure[1]
                pending.extend(_proc_children(child, self.proc_root))
        return times

    def _psutil_snapshot(self) -> dict[ProcessKey, float]:
        import psutil

        times: dict[ProcessKey, float] = {}
        try:
            children = psutil.Process(self.pid).children(recursive=True)
        except psutil.Error:
            return times
        for child in children:
            try:
                with child.oneshot():
                    cpu = child.cpu_times()
                    key = (child.pid, child.create_time())
                seconds = cpu.user + cpu.system
                seconds += getattr(cpu, "children_user", 0.0) + getattr(cpu, "children_system", 0.0)
                times[key] = seconds
            except psutil.Error:
                continue
        return times


def waited_children_cpu_seconds() -> float:
    """CPU seconds of the children this process has waited for (the kernel's children clock)."""
    times = os.times()
    return times.children_user + times.children_system


def children_cpu_seconds(
    at_start: dict[ProcessKey, float],
    waited_at_start: float,
    at_stop: dict[ProcessKey, float],
    waited_at_stop: float,
) -> float:
    """CPU seconds the descendants spent inside a window, from snapshots at its edges.

    A child alive at both edges counts its difference, one born in the window all its time.
    A child that ended in the window and was waited for moved its whole life into the waited
    clock: its time before the window (from the start snapshot) is taken off again. Never
    negative (a child reparented away before being waited for takes its time with it).
    """
    living = sum(seconds - at_start.get(key, 0.0) for key, seconds in at_stop.items())
    ended_before = sum(seconds for key, seconds in at_start.items() if key not in at_stop)
    return max(0.0, living + (waited_at_stop - waited_at_start) - ended_before)


class CpuTimeMeter(Meter):
    """CPU seconds of this process (all threads) and its children, times watts per thread.

    Idle and uncore power are not in the figure. The figure is an estimate and is labelled so.
    ``count_children=False`` counts this process alone.
    """

    name = "cputime"
    kind = "estimated"
    min_window_seconds = 0.01
    round_seconds = 0.25
    """Between-session spread under co-tenant load was lowest with 0.25–0.5 s rounds and flat
    from 10 to 100 ms (``python -m benchmarks.measurement_noise``; README, "Measuring cleanly")."""

    def __init__(
        self,
        watts_per_thread: float | None = None,
        count_children: bool = True,
        children: ChildProcessClock | None = None,
    ) -> None:
        self.wattage = resolve_cpu_wattage(watts_per_thread)
        self._details = {
            "watts_per_thread": self.wattage.watts_per_thread,
            "watts_source": self.wattage.source,
        }
        self.children = (children or ChildProcessClock()) if count_children else None
        self._start_cpu_seconds = 0.0
        self._start_wall_seconds = 0.0
        self._start_children: dict[ProcessKey, float] = {}
        self._start_waited_seconds = 0.0

    @classmethod
    def unavailable_reason(cls, **options: Any) -> str | None:
        try:
            time.process_time()
        except OSError as error:  # pragma: no cover - every supported platform has it
            return f"cputime: the process CPU clock cannot be read ({error})"
        return None

    def start(self) -> None:
        if self.children is not None:
            self._start_children = self.children.snapshot()
            self._start_waited_seconds = waited_children_cpu_seconds()
        self._start_wall_seconds = time.perf_counter()
        self._start_cpu_seconds = time.process_time()

    def stop(self) -> Reading:
        return self.stop_pending()()

    def stop_pending(self) -> PendingReading:
        """Read the clocks now; the reading is built when it is first asked for."""
        cpu_seconds = time.process_time() - self._start_cpu_seconds
        wall_seconds = time.perf_counter() - self._start_wall_seconds
        if self.children is None or self.children.source is None:
            return functools.partial(self._reading, cpu_seconds, wall_seconds)
        return functools.partial(
            self._reading,
            cpu_seconds,
            wall_seconds,
            self._start_children,
            self._start_waited_seconds,
            self.children.snapshot(),
            waited_children_cpu_seconds(),
        )

    def peek(self) -> Reading:
        """The open window so far, leaving it open (for progress lines during training)."""
        return self.stop_pending()()

    def _reading(
        self,
        cpu_seconds: float,
        wall_seconds: float,
        children_at_start: dict[ProcessKey, float] | None = None,
        waited_at_start: float = 0.0,
        children_at_stop: dict[ProcessKey, float] | None = None,
        waited_at_stop: float = 0.0,
    ) -> Reading:
        """The window's reading from its clocks (and its children's, when they are counted)."""
        watts = self.wattage.watts_per_thread
        joules_by_domain = {"process": cpu_seconds * watts}
        details: dict[str, Any] = {**self._details, "cpu_seconds": cpu_seconds}
        if self.children is None:
            details["children"] = "not counted (count_children=False)"
        elif self.children.source is None:
            details["children"] = "not counted (no /proc and psutil is not installed)"
        else:
            at_start, at_stop = children_at_start or {}, children_at_stop or {}
            child_seconds = children_cpu_seconds(at_start, waited_at_start, at_stop, waited_at_stop)
            seen = set(at_start) | set(at_stop)
            details["children"] = {
                "cpu_seconds": child_seconds,
                "processes_at_edges": len(seen),
                "source": self.children.source,
            }
            details["cpu_seconds"] = cpu_seconds + child_seconds
            joules_by_domain["children"] = child_seconds * watts  # always: one record shape
        return Reading(
            meter=self.name,
            kind=self.kind,
            seconds=wall_seconds,
            joules_by_domain=joules_by_domain,
            details=details,
        )

    def without_bookkeeping(self, reading: Reading, spent: Bookkeeping) -> Reading:
        """``reading`` less ``spent`` CPU seconds of this process (another meter's own work).

        The window's wall seconds lose them too: the bookkeeping ran on the window's thread,
        in line with the user's code. What was taken out is in ``details["bookkeeping_removed"]``.
        A figure not below the window's own CPU time is evidently wrong for this window (the
        per-call cost was measured at another moment): it is named there and not removed,
        rather than reading the window as 0 J.
        """
        watts = self.wattage.watts_per_thread
        process_seconds = reading.joules_by_domain.get("process", 0.0) / watts
        details = dict(reading.details)
        how = spent.how
        removed = spent.cpu_seconds
        if removed >= process_seconds:  # the per-call figure does not hold for this window
            how = (
                f"{how}; not removed: {removed:.3g} s is not below the window's own "
                f"{process_seconds:.3g} CPU seconds"
            )
            removed = 0.0
        details["cpu_seconds"] = details.get("cpu_seconds", process_seconds) - removed
        details["bookkeeping_removed"] = {
            **details.get("bookkeeping_removed", {}),
            spent.meter: {"cpu_seconds": removed, "how": how},
        }
        return dataclasses.replace(
            reading,
            seconds=max(0.0, reading.seconds - removed),
            joules_by_domain={
                **reading.joules_by_domain,
                "process": (process_seconds - removed) * watts,
            },
            details=details,
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
