"""Time beside energy: seconds per sample (median, spread), samples per second, train time."""

from __future__ import annotations

import json

import pytest
from report_data import lifecycle_record, results_document

from pytest_energy.latency import latency_summary, spread, timing_meter
from pytest_energy.report.markdown import render_markdown
from pytest_energy.report.units import (
    column_unit,
    format_in,
    format_latency,
    format_rate,
    format_seconds,
)


def timed_record() -> dict:
    record = lifecycle_record("fpgm", 100.0, 1e-3, meter="cputime", kind="estimated")
    view = record["meters"]["cputime"]
    view["phases"] = [
        {"name": "base", "charged": True, "joules": 60.0, "seconds": 30.0},
        {"name": "finetune", "charged": False, "joules": 40.0, "seconds": 12.5},
    ]
    # 8 samples per call, 10 calls per round: 80 samples; rounds of 0.08 s to 0.16 s
    view["inference"] = {"calls_per_round": 10, "joules_per_sample": [1e-3] * 5,
                         "seconds": [0.08, 0.09, 0.08, 0.16, 0.10]}  # fmt: skip
    record["meters"]["counted"] = {**view, "kind": "counted", "inference": {
        "calls_per_round": 1, "seconds": [9.0], "joules_per_sample": [1e-4]}}  # fmt: skip
    return record


def test_seconds_per_sample_come_from_a_timing_meter_never_from_counted():
    summary = latency_summary(timed_record())
    assert summary["meter"] == "cputime"
    assert summary["rounds"] == 5
    figures = summary["seconds_per_sample"]
    assert figures["median"] == pytest.approx(0.09 / 80)
    assert (figures["min"], figures["max"]) == pytest.approx((0.001, 0.002))
    assert summary["samples_per_second"] == pytest.approx(80 / 0.09)
    assert (summary["train_seconds"], summary["charged_seconds"]) == (12.5, 30.0)
    assert summary["phase_seconds"] == {"base": 30.0, "finetune": 12.5}


def test_only_counted_gives_no_time_and_measured_beats_estimated():
    record = timed_record()
    del record["meters"]["cputime"]
    assert latency_summary(record) is None
    assert timing_meter({"a": {"kind": "estimated"}, "b": {"kind": "measured"}}) == "b"


def test_spread_of_one_round_is_zero():
    assert spread([2.0]) == {"median": 2.0, "mean": 2.0, "min": 2.0, "max": 2.0, "stdev": 0.0,
                             "iqr": 0.0}  # fmt: skip


def test_time_figures_are_written_in_readable_units():
    assert format_seconds(0.00123) == "1.23 ms"
    assert format_rate(888.9) == "889" and format_rate(12_345) == "12.3k"
    summary = latency_summary(timed_record())
    assert format_latency(summary) == "1.12 ms (IQR 0.25)"
    assert format_latency(None) == "—"


def test_one_unit_per_column_chosen_from_its_values():
    unit = column_unit([0.0844, 31.2, None])
    assert unit == (1.0, "J")
    assert [format_in(value, unit) for value in (0.0844, 31.2, 1234.0)] == [
        "0.0844 J", "31.2 J", "1234 J"]  # fmt: skip
    assert column_unit([17.1e3, 568e3]) == (1e3, "kJ")


def test_the_markdown_has_a_time_table_per_task():
    document = results_document({"t.py::test_fpgm": timed_record()})
    text = render_markdown(document)
    time = text.split("#### Time", 1)[1].split("###", 1)[0]
    assert "| method | time / sample (median, IQR) | samples/s | train time | timed by |" in time
    assert "| fpgm (resnet20) | 1.12 ms (IQR 0.25) | 889 | 42.5 s | `cputime` |" in time


TIMED_TEST = """
import pytest

@pytest.mark.lifecycle(family="pruning", method="fpgm", model="tiny")
def test_fpgm(energy):
    with energy.train("finetune"):
        sum(i * i for i in range(100_000))
    energy.inference(lambda: sum(range(2_000)), samples=8)
"""


def test_latency_is_in_the_terminal_the_markdown_and_the_json(pytester):
    pytester.makepyfile(test_timed=TIMED_TEST)
    result = pytester.runpytest(
        "--energy", "--energy-meter", "cputime", "--energy-rounds", "3",
        "--energy-json", "out.json", "--energy-markdown", "report.md",
    )  # fmt: skip
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [
            "*TEC*IEC / sample*time / sample*samples/s*train time*",
            "fpgm*cputime (estimated)*s (IQR *)*s",
            "time / sample: wall-clock seconds per inferred sample*",
        ]
    )
    record = json.loads((pytester.path / "out.json").read_text())["tests"][
        "test_timed.py::test_fpgm"
    ]
    latency = record["latency"]
    assert latency["meter"] == "cputime" and latency["rounds"] == 3
    assert latency["samples_per_second"] == pytest.approx(
        1 / latency["seconds_per_sample"]["median"]
    )
    assert latency["train_seconds"] == record["meters"]["cputime"]["phases"][0]["seconds"]
    assert "#### Time" in (pytester.path / "report.md").read_text()
