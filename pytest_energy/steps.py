"""Energy per training step and per epoch, from ``energy.progress(...)`` calls in a phase.

Each ``energy.progress(epoch=e, batch=b, ...)`` call inside ``energy.train(phase)`` closes one
step: the joules since the previous call (or the phase's start) are that step's, read from every
meter that can be read mid-window (``peek()``: cputime; a meter that cannot is not split).
A step belongs to the epoch its call names; an epoch's energy is the sum of its steps. What
runs after the last call (evaluation, checkpointing) is kept apart as ``after_last_step``.

The phase's reading for each such meter gets ``details["steps"]``::

    {"count": 391, "joules_per_step": {"median", "mean", "min", "max"},
     "seconds_per_step": {"median", "mean", "min", "max"},
     "epochs": [{"epoch": 1, "steps": 391, "joules": 152.1, "seconds": 40.2}, ...],
     "after_last_step": {"joules": 3.2, "seconds": 0.8}}
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Mapping, Sequence
from typing import Any

from pytest_energy.meters.base import Reading
from pytest_energy.progress import peekable


def _summary(values: Sequence[float]) -> dict[str, float]:
    return {
        "median": statistics.median(values),
        "mean": statistics.fmean(values),
        "min": min(values),
        "max": max(values),
    }


class StepRecorder:
    """Marks of one open phase: per meter, joules and time at each ``progress`` call."""

    def __init__(self, meters: Sequence[Any], clock: Any = time.perf_counter) -> None:
        self._all_meters = meters
        self._meters: list[Any] | None = None  # the peekable ones, found at the first mark
        self._clock = clock
        self._started = clock()
        self._marks: list[tuple[Any, float, dict[str, float]]] = []

    @property
    def active(self) -> bool:
        return bool(self._peekable())

    def _peekable(self) -> list[Any]:
        if self._meters is None:
            self._meters = peekable(self._all_meters)
        return self._meters

    def mark(self, epoch: Any) -> None:
        """Close a step at this moment, belonging to ``epoch`` (None: no epoch given)."""
        meters = self._peekable()
        if not meters:
            return
        joules: dict[str, float] = {}
        for meter in meters:
            try:
                joules[meter.name] = float(meter.peek().joules)
            except Exception:  # a failed peek must never break the user's training loop
                continue
        self._marks.append((epoch, self._clock() - self._started, joules))

    def annotate(self, readings: Mapping[str, Reading]) -> Mapping[str, Reading]:
        """The phase's readings, each meter that was marked with ``details["steps"]`` added.

        Unmarked (no ``progress()`` call), ``readings`` come back as they are, still unbuilt.
        """
        if not self._marks:
            return readings
        annotated = dict(readings)
        for name, reading in readings.items():
            steps = self.steps_of(name, reading)
            if steps is not None:
                details = {**reading.details, "steps": steps}
                annotated[name] = dataclasses.replace(reading, details=details)
        return annotated

    def steps_of(self, meter: str, reading: Reading) -> dict[str, Any] | None:
        """Per-step and per-epoch figures of one meter (``None`` when it was never marked)."""
        marks = [(epoch, at, joules[meter]) for epoch, at, joules in self._marks if meter in joules]
        if not marks:
            return None
        joules_per_step, seconds_per_step, epochs = [], [], {}
        previous_seconds = previous_joules = 0.0
        for epoch, at, joules in marks:
            step_joules, step_seconds = joules - previous_joules, at - previous_seconds
            previous_seconds, previous_joules = at, joules
            joules_per_step.append(step_joules)
            seconds_per_step.append(step_seconds)
            entry = epochs.setdefault(epoch, {"steps": 0, "joules": 0.0, "seconds": 0.0})
            entry["steps"] += 1
            entry["joules"] += step_joules
            entry["seconds"] += step_seconds
        steps: dict[str, Any] = {
            "count": len(marks),
            "joules_per_step": _summary(joules_per_step),
            "seconds_per_step": _summary(seconds_per_step),
            "after_last_step": {
                "joules": max(0.0, reading.joules - previous_joules),
                "seconds": max(0.0, reading.seconds - previous_seconds),
            },
        }
        if any(epoch is not None for epoch in epochs):
            steps["epochs"] = [
                {"epoch": epoch, **entry} for epoch, entry in epochs.items() if epoch is not None
            ]
        return steps
