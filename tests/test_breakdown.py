"""``--energy-breakdown [N]``: counted's inference energy per operator and per module."""

from __future__ import annotations

import json

import pytest

from pytest_energy.breakdown import FLOPS_ONLY, check_breakdown, inference_breakdown, top_entries
from pytest_energy.errors import ConfigError
from pytest_energy.meters.base import Reading
from pytest_energy.report.breakdown import breakdown_report


def counted_reading(**details) -> Reading:
    return Reading("counted", "counted", 0.1, {"compute": 1.0}, flops=100.0, details=details)


BY_OPERATOR = {
    "aten.convolution": {"calls": 2, "flops": 800.0, "bytes": 400.0, "joules": 8e-6},
    "aten.addmm": {"calls": 1, "flops": 160.0, "bytes": 80.0, "joules": 2e-6},
    "aten.relu": {"calls": 2, "flops": 0.0, "bytes": 160.0, "joules": 4e-7},
}
BY_MODULE = {
    "features.0": {"flops": 400.0, "bytes": 200.0, "joules": 4e-6},
    "features.2": {"flops": 400.0, "bytes": 200.0, "joules": 4e-6},
    "head": {"flops": 160.0, "bytes": 80.0, "joules": 2e-6},
}


def test_the_breakdown_is_kept_per_inferred_sample():
    reading = counted_reading(by_operator=BY_OPERATOR, by_module=BY_MODULE)
    breakdown = inference_breakdown(reading, samples=4)
    assert breakdown["per"] == "sample"
    assert breakdown["by_operator"]["aten.convolution"] == {
        "calls": 2, "flops": 200.0, "bytes": 100.0, "joules": 2e-6}  # fmt: skip
    assert breakdown["by_module"]["head"]["joules"] == pytest.approx(5e-7)


def test_without_per_operator_joules_the_breakdown_says_it_holds_flops_only():
    reading = counted_reading(flops_by_operator={"aten.mm": 64.0, "aten.add": 8.0})
    breakdown = inference_breakdown(reading, samples=2)
    assert breakdown == {
        "by_operator": {"aten.mm": {"flops": 32.0}, "aten.add": {"flops": 4.0}},
        "per": "sample",
        "note": FLOPS_ONLY,
    }


def test_top_n_is_by_joules_largest_first():
    assert [name for name, _ in top_entries(BY_OPERATOR, 2)] == ["aten.convolution", "aten.addmm"]


def test_the_terminal_table_shows_the_top_n_with_shares():
    tests = {"t.py::test_cnn": {"meters": {"counted": {"inference": {"breakdown": {
        "by_operator": BY_OPERATOR, "by_module": BY_MODULE, "per": "sample"}}}}}}  # fmt: skip
    lines = breakdown_report(tests, 2)
    assert lines[1] == "inference breakdown of t.py::test_cnn (counted, per sample), top 2:"
    text = "\n".join(lines)
    assert "aten.convolution" in text and "aten.relu" not in text
    assert "8 µJ" in text and "76.9 %" in text  # 8 of 10.4 µJ
    assert "features.0" in text and "head" not in text


@pytest.mark.parametrize(
    ("top", "meters", "message"),
    [
        (0, ["counted"], "--energy-breakdown: N must be a positive number of rows, got 0"),
        (5, ["cputime"], "--energy-breakdown: only the counted meter breaks energy down by "
         "operator and module, and this run uses cputime; add it, e.g. --energy-meter "
         "cputime,counted"),
    ],
)  # fmt: skip
def test_a_breakdown_that_cannot_work_is_refused_in_one_line(top, meters, message):
    with pytest.raises(ConfigError) as error:
        check_breakdown(top, meters)
    assert str(error.value) == message


MODEL_TEST = """
import torch

def test_cnn(energy):
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(4 * 6 * 6, 2))
    batch = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        energy.inference(lambda: model(batch), samples=4)
"""


def test_breakdown_in_the_json_and_a_top_n_table(pytester):
    pytester.makepyfile(test_model=MODEL_TEST)
    result = pytester.runpytest("--energy", "--energy-meter", "counted", "--energy-breakdown",
                                "3", "--energy-json", "out.json")  # fmt: skip
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        ["inference breakdown of test_model.py::test_cnn (counted, per sample), top 3:"]
    )
    view = json.loads((pytester.path / "out.json").read_text())["tests"]["test_model.py::test_cnn"]
    breakdown = view["meters"]["counted"]["inference"]["breakdown"]
    convolution = next(op for op in breakdown["by_operator"] if "convolution" in op)
    assert breakdown["by_operator"][convolution]["flops"] == 2 * 4 * 6 * 6 * 9  # per sample


def test_breakdown_with_a_meter_that_cannot_break_down_is_one_line(pytester):
    pytester.makepyfile(test_model=MODEL_TEST)
    result = pytester.runpytest("--energy", "--energy-meter", "cputime", "--energy-breakdown")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["ERROR: --energy-breakdown: only the counted meter breaks energy down *cputime,counted"]
    )
    result.stderr.no_fnmatch_line("*Traceback*")
