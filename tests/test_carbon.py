"""Carbon: joules → kWh → gCO2e, with the intensity's source named and bad input refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pytest_energy import carbon
from pytest_energy.carbon import CarbonIntensity, grams_co2e, resolve_intensity
from pytest_energy.errors import ConfigError


def test_one_kwh_at_the_world_average_is_475_grams() -> None:
    # 3.6 MJ is 1 kWh; the default intensity is 475 gCO2e/kWh.
    intensity = resolve_intensity()
    assert intensity.grams_per_kwh == 475.0
    assert intensity.grams_co2e(3.6e6) == pytest.approx(475.0)
    assert "world average" in intensity.source


def test_grams_by_hand_with_a_pue() -> None:
    # 7.2e6 J × PUE 1.5 = 10.8e6 J = 3 kWh; at 100 g/kWh that is 300 g.
    assert grams_co2e(7.2e6, 100.0, pue=1.5) == pytest.approx(300.0)
    given = resolve_intensity(grams_per_kwh="100", pue="1.5")
    assert given.grams_co2e(7.2e6) == pytest.approx(300.0)
    assert given.source == "given with --energy-carbon-intensity"
    assert given.describe() == "100 gCO2e/kWh — given with --energy-carbon-intensity; PUE 1.5"


def test_a_country_reads_codecarbons_bundled_table_through_its_data_source() -> None:
    from codecarbon.input import DataSource

    carbon.country_table.cache_clear()
    france = resolve_intensity(country="fra")
    path = DataSource().global_energy_mix_data_path
    assert carbon._codecarbon_data_file() == Path(path)
    table = json.loads(Path(path).read_text(encoding="utf-8"))
    assert france.grams_per_kwh == table["FRA"]["carbon_intensity"]
    assert "France (FRA)" in france.source and "codecarbon" in france.source
    # 1 kWh in France, by hand from the table's figure.
    assert france.grams_co2e(3.6e6) == pytest.approx(table["FRA"]["carbon_intensity"])


def test_an_unknown_country_names_the_flag() -> None:
    with pytest.raises(ConfigError, match=r"--energy-country: unknown country 'XYZ'"):
        resolve_intensity(country="XYZ")


def test_a_country_name_instead_of_a_code_gets_a_hint() -> None:
    with pytest.raises(ConfigError, match=r"did you mean FRA\?"):
        resolve_intensity(country="France")


@pytest.mark.parametrize(
    ("kwargs", "flag"),
    [
        ({"grams_per_kwh": "-1"}, "--energy-carbon-intensity"),
        ({"grams_per_kwh": "lots"}, "--energy-carbon-intensity"),
        ({"pue": "0.9"}, "--energy-pue"),
        ({"pue": "nan"}, "--energy-pue"),
        ({"grams_per_kwh": 100, "country": "FRA"}, "both given"),
    ],
)
def test_bad_values_name_their_flag(kwargs: dict, flag: str) -> None:
    with pytest.raises(ConfigError, match=flag):
        resolve_intensity(**kwargs)


def test_missing_codecarbon_data_says_what_to_do_instead(monkeypatch: pytest.MonkeyPatch) -> None:
    carbon.country_table.cache_clear()
    monkeypatch.setattr(carbon, "_codecarbon_data_file", lambda: None)
    try:
        with pytest.raises(ConfigError, match="--energy-carbon-intensity"):
            resolve_intensity(country="FRA")
    finally:
        carbon.country_table.cache_clear()


def test_intensity_round_trips_to_a_dict() -> None:
    intensity = CarbonIntensity(56.0, "somewhere", 1.2)
    assert intensity.to_dict() == {"grams_per_kwh": 56.0, "source": "somewhere", "pue": 1.2}
