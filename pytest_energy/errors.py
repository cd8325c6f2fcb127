"""Named exceptions: every error a user can cause says what is wrong and what to do."""

from __future__ import annotations


class EnergyError(Exception):
    """Base class of every error pytest-energy raises on purpose."""


class ConfigError(EnergyError):
    """A command-line flag, ini value or marker keyword is invalid."""


class MeterUnavailable(EnergyError):
    """A meter cannot work on this machine; the message says why."""


class MeterError(EnergyError):
    """A meter failed while measuring a window."""


class MeasurementError(EnergyError):
    """The code under measurement was used wrongly (e.g. a window inside a window)."""


class BaselineError(EnergyError):
    """A baseline or results file cannot be read, trusted or written; the message names it."""


class ReportError(EnergyError):
    """A report cannot be made: an optional dependency is missing or an output cannot be written."""


class OutputError(EnergyError, OSError):
    """An output file cannot be written (or would overwrite an input); the message names it.

    Also an ``OSError``, so code that already handles a failed write handles this one.
    """


class ImplausibleReading(MeterError):
    """A meter produced a figure no hardware can: negative, infinite, NaN or beyond its power."""
