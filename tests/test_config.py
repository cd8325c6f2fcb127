"""User-given settings: what is accepted, and the message when something is not."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pytest_energy.config import (
    LifecycleSettings,
    Tolerance,
    lifecycle_settings,
    parse_tau,
    parse_tolerance,
    parse_usage,
)
from pytest_energy.errors import ConfigError


@pytest.mark.parametrize("text", ["5%", "5 %", "0.05", 0.05])
def test_tolerance_accepts_fractions_and_percentages(text):
    assert parse_tolerance(text) == Tolerance(0.05, 0.05, 0.05)


def test_tolerance_per_quantity_keeps_the_default_for_the_others():
    tolerance = parse_tolerance({"train": 0.10, "inference": "2%"})
    assert tolerance == Tolerance(train=0.10, inference=0.02, full_cycle=0.05)


@pytest.mark.parametrize("bad", ["five", "-5%", "nan", True, [0.05]])
def test_tolerance_rejects_nonsense_and_names_the_setting(bad):
    with pytest.raises(ConfigError, match="--energy-tolerance"):
        parse_tolerance(bad, "--energy-tolerance")


def test_tolerance_rejects_unknown_quantities():
    with pytest.raises(ConfigError, match="'power'"):
        parse_tolerance({"power": 0.1})


@given(st.floats(min_value=0, max_value=1e6, allow_nan=False))
def test_any_non_negative_percentage_round_trips(percent):
    assert parse_tolerance(f"{percent!r}%").train == pytest.approx(percent / 100)


@pytest.mark.parametrize(
    "value, expected",
    [("1e3 1e6", (1e3, 1e6)), ("1e6,1e3", (1e3, 1e6)), ([1000, 1e9], (1e3, 1e9)), (5, (5.0,))],
)
def test_usage_accepts_lists_and_strings_and_sorts_them(value, expected):
    assert parse_usage(value) == expected


@pytest.mark.parametrize("bad", ["", "lots", [-1], [float("inf")], [True]])
def test_usage_rejects_nonsense(bad):
    with pytest.raises(ConfigError, match="usage"):
        parse_usage(bad)


@pytest.mark.parametrize("bad", [-1, "x", float("nan")])
def test_tau_must_be_a_non_negative_number(bad):
    with pytest.raises(ConfigError, match="tau"):
        parse_tau(bad)


def test_marker_overrides_defaults_and_keeps_free_labels():
    settings = lifecycle_settings(
        (),
        {"usage": [10], "tau": 2, "family": "pruning", "method": "fpgm"},
        LifecycleSettings(),
        "test_x.py::test_fpgm",
    )
    assert settings.usage == (10.0,)
    assert settings.tau == 2.0
    assert settings.tolerance == Tolerance()
    assert settings.labels == {"family": "pruning", "method": "fpgm"}


def test_marker_errors_name_the_test_and_the_keyword():
    with pytest.raises(ConfigError, match=r"test_x.py::t: lifecycle\(usage=...\)"):
        lifecycle_settings((), {"usage": "many"}, LifecycleSettings(), "test_x.py::t")


def test_marker_takes_keywords_only():
    with pytest.raises(ConfigError, match="keywords only"):
        lifecycle_settings(([1e3],), {}, LifecycleSettings(), "t")
