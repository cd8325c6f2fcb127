"""What the framework callbacks share: energy per epoch, standalone or through the fixture."""

from __future__ import annotations

import time
from typing import Any

from pytest_energy.api import _validated_meters
from pytest_energy.meters import MeterOptions, select_meters
from pytest_energy.meters.base import Meter


def framework_missing(module: str, framework: str, package: str, error: ImportError) -> ImportError:
    """The one-line error of an integration whose framework is not installed."""
    return ImportError(
        f"{module} needs {framework}, which is not installed (pip install {package}): {error}"
    )


class EpochEnergy:
    """Energy per epoch of a training run, driven by a framework's callback hooks.

    With ``energy`` (the test's fixture, the fit running inside ``energy.train(...)``) every
    step is passed on as ``energy.progress(epoch=..., batch=...)``: the phase's results get
    energy per step and per epoch, and the terminal its progress line. Without it each epoch is
    measured in a window of its own with ``meters`` (as ``pytest_energy.measure`` takes them);
    ``epochs`` then lists ``{"epoch", "steps", "seconds", "joules": {meter: J},
    "kinds": {meter: kind}}``, oldest first.
    """

    def __init__(
        self,
        energy: Any | None = None,
        meters: str | list[str] | tuple[str, ...] = "auto",
        cpu_watts_per_thread: float | None = None,
    ) -> None:
        self.energy = energy
        self.meter_spec = _validated_meters(meters, "EnergyCallback") if energy is None else ""
        self.options = MeterOptions(cpu_watts_per_thread=cpu_watts_per_thread)
        self.epochs: list[dict[str, Any]] = []
        self.not_used: dict[str, str] = {}
        self._meters: list[Meter] = []
        self._open = False
        self._epoch: int | None = None
        self._steps = 0
        self._started = 0.0

    def train_begin(self) -> None:
        """Pick the meters once per fit (standalone only)."""
        if self.energy is None and not self._meters:
            selection = select_meters(self.meter_spec, self.options)
            self._meters, self.not_used = selection.meters, selection.not_used

    def epoch_begin(self, epoch: int) -> None:
        """Open the epoch's window (standalone); ``epoch`` counts from 1."""
        self._epoch, self._steps = epoch, 0
        if self.energy is not None:
            return
        self.train_begin()
        self._close_window()
        for meter in self._meters:
            meter.start()
        self._started, self._open = time.perf_counter(), True

    def step_end(
        self, step: int | None = None, steps: int | None = None, epochs: int | None = None
    ) -> None:
        """One optimisation step done (``step`` counts from 1 within the epoch)."""
        self._steps += 1
        if self.energy is not None:
            self.energy.progress(epoch=self._epoch, epochs=epochs, batch=step, batches=steps)

    def epoch_end(self) -> None:
        """Close the epoch's window and record it (standalone)."""
        if self.energy is not None or not self._open:
            return
        readings = {meter.name: meter.stop() for meter in reversed(self._meters)}
        self._open = False
        self.epochs.append(
            {
                "epoch": self._epoch,
                "steps": self._steps,
                "seconds": time.perf_counter() - self._started,
                "joules": {name: readings[name].joules for name in sorted(readings)},
                "kinds": {name: readings[name].kind for name in sorted(readings)},
            }
        )

    def train_end(self) -> None:
        """Release the meters (also after an exception)."""
        self._close_window()
        for meter in self._meters:
            meter.close()
        self._meters = []

    def _close_window(self) -> None:
        if self._open:
            for meter in reversed(self._meters):
                meter.stop()
            self._open = False

    def summary(self) -> str:
        """One line per epoch: joules per meter (with its kind), steps and seconds."""
        from pytest_energy.report.units import format_energy

        lines = []
        for entry in self.epochs:
            figures = ", ".join(
                f"{meter} ({entry['kinds'][meter]}) {format_energy(joules)}"
                for meter, joules in entry["joules"].items()
            )
            lines.append(
                f"epoch {entry['epoch']}: {figures} in {entry['seconds']:.3g} s, "
                f"{entry['steps']} steps"
            )
        return "\n".join(lines)
