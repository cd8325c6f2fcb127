"""Joules → kWh → grams of CO2-equivalent, with a named source for the carbon intensity.

    grams_co2e = joules × PUE / 3.6e6 J/kWh × intensity (gCO2e/kWh)

The intensity is, in order: a number the user gives (``--energy-carbon-intensity``), a
country's average from codecarbon's bundled energy-mix table (``--energy-country ISO3``, found
offline through codecarbon's ``DataSource``, only when a country is asked for), or the world
average of 475 gCO2e/kWh that codecarbon also uses. PUE (power usage effectiveness, ≥ 1) scales
the IT energy the meters saw up to what the data centre drew.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_energy.config import parse_number
from pytest_energy.errors import ConfigError

JOULES_PER_KWH = 3.6e6
WORLD_AVERAGE_G_PER_KWH = 475.0
WORLD_AVERAGE_SOURCE = (
    "world average (IEA Global Energy & CO2 Status Report 2019, codecarbon's default)"
)


@dataclass(frozen=True)
class CarbonIntensity:
    """Grams of CO2e per kWh drawn, the power usage effectiveness, and where the figure is from."""

    grams_per_kwh: float
    source: str
    pue: float = 1.0

    def grams_co2e(self, joules: float) -> float:
        """Emissions of ``joules`` of IT energy, in grams of CO2e (PUE included)."""
        return grams_co2e(joules, self.grams_per_kwh, self.pue)

    def describe(self) -> str:
        """One line for a report: intensity, source, and PUE when it is not 1."""
        text = f"{self.grams_per_kwh:g} gCO2e/kWh — {self.source}"
        return text if self.pue == 1.0 else f"{text}; PUE {self.pue:g}"

    def to_dict(self) -> dict[str, Any]:
        return {"grams_per_kwh": self.grams_per_kwh, "source": self.source, "pue": self.pue}


def grams_co2e(joules: float, grams_per_kwh: float, pue: float = 1.0) -> float:
    """``joules × pue`` converted to kWh, times the intensity in gCO2e/kWh."""
    return joules * pue / JOULES_PER_KWH * grams_per_kwh


def _codecarbon_data_file() -> Path | None:
    """The energy-mix table codecarbon ships, located by its public ``DataSource`` accessor.

    codecarbon knows where its own data lives; its ``get_global_energy_mix_data()`` would also
    load pandas and every other table (~0.5 s), so the path accessor is used and read here.
    """
    try:
        from codecarbon.input import DataSource

        path = Path(DataSource().global_energy_mix_data_path)
    except (ImportError, AttributeError, OSError):
        return None
    return path if path.is_file() else None


@functools.lru_cache(maxsize=1)
def country_table() -> dict[str, dict[str, Any]]:
    """codecarbon's per-country energy mix keyed by ISO 3166-1 alpha-3 code (read once)."""
    path = _codecarbon_data_file()
    if path is None:
        raise ConfigError(
            "--energy-country needs codecarbon's bundled energy-mix table "
            "(codecarbon/data/private_infra/global_energy_mix.json), which is not installed; "
            "give the intensity yourself with --energy-carbon-intensity G_PER_KWH"
        )
    with path.open(encoding="utf-8") as stream:
        return json.load(stream)


def country_intensity(iso3: str, pue: float = 1.0) -> CarbonIntensity:
    """The average carbon intensity of a country's electricity, from codecarbon's table."""
    code = iso3.strip().upper()
    table = country_table()
    entry = table.get(code)
    if entry is None or entry.get("carbon_intensity") is None:
        by_name = [key for key, row in table.items() if row.get("country_name", "").upper() == code]
        hint = f" (did you mean {by_name[0]}?)" if by_name else ""
        raise ConfigError(
            f"--energy-country: unknown country {iso3!r}{hint}; use an ISO 3166-1 alpha-3 code "
            f"such as FRA, DEU, USA, or give --energy-carbon-intensity G_PER_KWH"
        )
    year = entry.get("year")
    source = (
        f"{entry.get('country_name', code)} ({code}) average"
        + (f" {year}" if year else "")
        + ", codecarbon energy-mix table"
    )
    return CarbonIntensity(float(entry["carbon_intensity"]), source, pue)


def resolve_intensity(
    country: str | None = None,
    grams_per_kwh: Any = None,
    pue: Any = None,
) -> CarbonIntensity:
    """The intensity a run reports with: an explicit number, else a country, else world average."""
    pue_factor = (
        1.0
        if pue is None
        else parse_number(pue, "--energy-pue", "a power usage effectiveness ≥ 1, e.g. 1.2", 1.0)
    )
    if grams_per_kwh is not None:
        if country:
            raise ConfigError(
                "--energy-carbon-intensity and --energy-country both given: use one of them"
            )
        value = parse_number(
            grams_per_kwh, "--energy-carbon-intensity", "gCO2e per kWh ≥ 0, e.g. 475", 0.0
        )
        return CarbonIntensity(value, "given with --energy-carbon-intensity", pue_factor)
    if country:
        return country_intensity(country, pue_factor)
    return CarbonIntensity(WORLD_AVERAGE_G_PER_KWH, WORLD_AVERAGE_SOURCE, pue_factor)
