"""pytest-energy: full-cycle energy (training + inference) of deep-learning code as pytest tests."""

from pytest_energy.api import Measurement, measure
from pytest_energy.errors import (
    ConfigError,
    EnergyError,
    MeasurementError,
    MeterError,
    MeterUnavailable,
)
from pytest_energy.meters.base import Meter, Reading

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "EnergyError",
    "Measurement",
    "MeasurementError",
    "Meter",
    "MeterError",
    "MeterUnavailable",
    "Reading",
    "__version__",
    "measure",
]
