"""``pytest-energy export``: results as github-action-benchmark and Bencher (BMF) JSON.

Each output is checked against the format's documented shape:
- github-action-benchmark, tool ``customSmallerIsBetter``: a list of objects with ``name``
  (string), ``unit`` (string), ``value`` (number), optional ``range`` and ``extra`` (strings);
  the action keys series by name, so names are unique.
- Bencher Metric Format, https://bencher.dev/bmf.json (JSON schema draft-07): an object of
  benchmarks, each an object of measures, each ``{"value": number}`` with optional
  ``lower_value`` / ``upper_value`` numbers; a measure slug is at most 64 characters.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from report_data import lifecycle_record, results_document

from pytest_energy.cli import main
from pytest_energy.export import bencher_metric_format, github_action_benchmark, usage_label

FPGM = "benchmarks/test_pruning.py::test_fpgm"


def results() -> dict[str, Any]:
    """A counted test and a cputime test with three inference rounds (a spread to report)."""
    timed = lifecycle_record("fpgm", 1500.0, 5e-4, meter="cputime", kind="estimated")
    timed["meters"]["cputime"]["inference"] = {"joules_per_sample": [4e-4, 5e-4, 7e-4]}
    document = results_document(
        {
            FPGM: lifecycle_record("fpgm", 1500.0, 5e-4),
            "benchmarks/test_pruning.py::test_timed": timed,
        }
    )
    document["run"] = {"commit": "a" * 40, "branch": "main", "time": "t", "dirty": False}
    return document


def assert_custom_smaller_is_better(document: Any) -> None:
    assert isinstance(document, list) and document
    for entry in document:
        assert set(entry) <= {"name", "unit", "value", "range", "extra"}
        assert isinstance(entry["name"], str) and isinstance(entry["unit"], str)
        assert isinstance(entry["value"], (int, float)) and math.isfinite(entry["value"])
        assert all(isinstance(entry.get(key, ""), str) for key in ("range", "extra"))
    names = [entry["name"] for entry in document]
    assert len(names) == len(set(names))


def assert_bencher_metric_format(document: Any) -> None:
    assert isinstance(document, dict) and document
    for benchmark, measures in document.items():
        assert benchmark and isinstance(measures, dict) and measures
        for slug, metric in measures.items():
            assert 0 < len(slug) <= 64
            assert set(metric) <= {"value", "lower_value", "upper_value"} and "value" in metric
            assert all(isinstance(number, (int, float)) for number in metric.values())


def test_github_action_benchmark_gets_one_entry_per_quantity_with_units() -> None:
    document = github_action_benchmark(results())
    assert_custom_smaller_is_better(document)
    by_name = {entry["name"]: entry for entry in document}
    counted = f"{FPGM} [counted, counted]"
    assert by_name[f"{counted} TEC"] == {
        "name": f"{counted} TEC",
        "unit": "J",
        "value": 1500.0,
        "extra": "counted by the counted meter; commit aaaaaaaaaaaa",
    }
    assert by_name[f"{counted} IEC"]["unit"] == "J/sample"
    assert by_name[f"{counted} IEC"]["value"] == 5e-4
    # E(MUI) at each of the test's usages: TEC + MUI × IEC.
    assert by_name[f"{counted} E(MUI=1e6)"]["value"] == pytest.approx(1500.0 + 1e6 * 5e-4)
    assert {name for name in by_name if name.startswith(counted)} == {
        f"{counted} {quantity}"
        for quantity in ("TEC", "IEC", "E(MUI=1000)", "E(MUI=1e6)", "E(MUI=1e9)")
    }


def test_rounds_give_a_range_and_the_kind_is_named() -> None:
    by_name = {entry["name"]: entry for entry in github_action_benchmark(results())}
    iec = by_name["benchmarks/test_pruning.py::test_timed [cputime, estimated] IEC"]
    assert iec["range"] == "± 0.00015"
    assert iec["extra"].startswith("estimated by the cputime meter; rounds 0.0004–0.0007")


def test_bencher_gets_bmf_with_the_unit_in_each_measure_slug() -> None:
    bmf = bencher_metric_format(results())
    assert_bencher_metric_format(bmf)
    counted = bmf[f"{FPGM} [counted, counted]"]
    assert set(counted) == {
        "tec-joules",
        "iec-joules-per-sample",
        "e-mui-1000-joules",
        "e-mui-1e6-joules",
        "e-mui-1e9-joules",
    }
    assert counted["tec-joules"] == {"value": 1500.0}
    timed = bmf["benchmarks/test_pruning.py::test_timed [cputime, estimated]"]
    assert timed["iec-joules-per-sample"] == {
        "value": 5e-4,
        "lower_value": 4e-4,
        "upper_value": 7e-4,
    }
    # E(MUI)'s bounds: TEC + MUI × the rounds' lowest and highest joules per sample.
    assert timed["e-mui-1e6-joules"]["lower_value"] == pytest.approx(1500.0 + 1e6 * 4e-4)
    assert timed["e-mui-1e6-joules"]["upper_value"] == pytest.approx(1500.0 + 1e6 * 7e-4)


def test_usage_labels_are_short() -> None:
    assert [usage_label(x) for x in (1, 1000, 12345, 1e6, 2.5e9)] == [
        "1",
        "1000",
        "12345",
        "1e6",
        "2.5e9",
    ]


@pytest.mark.parametrize(
    ("format_name", "check"),
    [
        ("github-action-benchmark", assert_custom_smaller_is_better),
        ("bencher", assert_bencher_metric_format),
    ],
)
def test_the_command_writes_each_format(tmp_path: Path, capsys, format_name, check) -> None:
    source = tmp_path / "results.json"
    source.write_text(json.dumps(results()))
    assert main(["export", str(source), "--format", format_name]) == 0
    check(json.loads(capsys.readouterr().out))
    out = tmp_path / "out.json"
    assert main(["export", str(source), "--format", format_name, "-o", str(out)]) == 0
    check(json.loads(out.read_text()))


def test_a_real_results_file_exports(tmp_path: Path, capsys) -> None:
    baseline = Path(__file__).resolve().parent.parent / "baselines" / "counted.json"
    document = json.loads(baseline.read_text())
    document["schema"] = results()["schema"]
    source = tmp_path / "results.json"
    source.write_text(json.dumps(document))
    assert main(["export", str(source), "--format", "bencher"]) == 0
    assert_bencher_metric_format(json.loads(capsys.readouterr().out))


@pytest.mark.parametrize(
    ("content", "arguments", "message"),
    [
        (None, ["--format", "junit"], "--format 'junit': unknown format; use one of"),
        (
            '{"schema": "pytest-energy/baseline"}',
            ["--format", "bencher"],
            "is not a pytest-energy results file",
        ),
        ("[1, 2", ["--format", "bencher"], "is not JSON (line 1"),
        ("missing", ["--format", "bencher"], "no such file"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, capsys, content, arguments, message):
    source = tmp_path / "results.json"
    if content is None:
        source.write_text(json.dumps(results()))
    elif content != "missing":
        source.write_text(content)
    out = tmp_path / "out.json"
    assert main(["export", str(source), *arguments, "-o", str(out)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and not out.exists()
    (line,) = captured.err.splitlines()
    assert line.startswith("pytest-energy export: ") and message in line
