"""``pytest-energy calibrate``: the counted table fitted to a real meter, and its bad input."""

from __future__ import annotations

import random

import pytest
import torch

from pytest_energy import calibrate
from pytest_energy.cli import main
from pytest_energy.errors import ConfigError
from pytest_energy.meters.counted import CountedMeter, count, load_energy_table


def test_the_fit_recovers_known_coefficients_from_synthetic_data():
    rng = random.Random(0)
    truth = [4.6e-12, 1.5e-12, 0.3e-12, 12.5e-12, 160e-12, 2e-6]
    rows = []
    for _ in range(40):
        rows.append(
            [
                rng.choice([0, 1]) * rng.uniform(1e6, 1e9),
                rng.choice([0, 1]) * rng.uniform(1e6, 1e9),
                rng.choice([0, 1]) * rng.uniform(1e6, 1e9),
                rng.uniform(1e4, 1e7),
                rng.choice([0, 1]) * rng.uniform(1e5, 1e8),
                rng.randint(1, 50),
            ]
        )
    joules = [calibrate.predict(truth, row) for row in rows]
    fitted, present = calibrate.fit_coefficients(rows, joules)
    assert all(present)
    for got, want in zip(fitted, truth, strict=True):
        assert got == pytest.approx(want, rel=0.01)
    assert calibrate.median_relative_error(
        fitted, [calibrate.Sample("s", tuple(r), j) for r, j in zip(rows, joules, strict=True)]
    ) == pytest.approx(0, abs=1e-6)


def test_a_feature_absent_from_the_data_keeps_its_default():
    rows = [[1e6, 0, 0, 1e3, 0, 1], [2e6, 0, 0, 5e3, 0, 1], [4e6, 0, 0, 2e3, 0, 2]]
    joules = [calibrate.predict([5e-12, 0, 0, 20e-12, 0, 1e-6], row) for row in rows]
    fitted, present = calibrate.fit_coefficients(rows, joules)
    assert present == [True, False, False, True, False, True]
    table = calibrate.table_from_coefficients(
        fitted, present, {"hardware": "test CPU", "date": "2026-01-02"}
    )
    assert table["fp32_mult_pj"] + table["fp32_add_pj"] == pytest.approx(5.0, rel=0.01)
    assert "fp16_mult_pj" not in table and "dram_pj_per_32_bits" not in table
    assert CountedMeter(table).label == "counted (calibrated to test CPU, 2026-01-02)"


@pytest.fixture
def small_suite(monkeypatch):
    """A few of the suite's workload kinds at tiny sizes, so the run takes seconds."""

    def tiny(scale: float = 1.0):
        a = torch.randn(96, 96)
        x = torch.randn(1 << 16)
        conv = torch.nn.Conv2d(8, 8, 3, padding=1)
        image = torch.randn(2, 8, 16, 16)
        return [
            calibrate.Workload("gemm", lambda: a @ a),
            calibrate.Workload("gemm twice", lambda: (a @ a) @ a),
            calibrate.Workload("add", lambda: x + x),
            calibrate.Workload("relu", lambda: torch.relu(x)),
            calibrate.Workload("conv", lambda: conv(image)),
            calibrate.Workload("conv relu", lambda: torch.relu(conv(image))),
        ]

    monkeypatch.setattr(calibrate, "workloads", tiny)


def test_calibrate_with_cputime_end_to_end_labels_the_counted_figures(
    small_suite, tmp_path, capsys
):
    out = tmp_path / "table.json"
    assert (
        main(["calibrate", "--meter", "cputime", "--min-seconds", "0.02", "--out", str(out)]) == 0
    )
    printed = capsys.readouterr().out
    assert "median relative error on the rest (held out)" in printed
    overrides = load_energy_table(out)
    calibration = overrides["calibration"]
    assert calibration["meter"] == "cputime" and calibration["workloads"] == 6
    reading = count(lambda: torch.randn(32, 32) @ torch.randn(32, 32), energy_table=overrides)
    label = f"counted (calibrated to {calibration['hardware']}, {calibration['date']})"
    assert reading.details["label"] == label
    assert reading.joules > 0


def test_calibrate_with_a_meter_that_does_not_work_here_says_so_and_writes_nothing(
    tmp_path, capsys
):
    out = tmp_path / "table.json"
    out.write_text("{}")
    code = main(["calibrate", "--meter", "rapl", "--out", str(out)])
    if code == 0:
        pytest.skip("rapl works on this machine")
    assert code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("pytest-energy calibrate: --meter rapl: does not work here")
    assert out.read_text() == "{}"


@pytest.mark.parametrize("where", ["missing-directory/table.json", "."])
def test_an_output_that_cannot_be_written_is_named_before_any_work(tmp_path, capsys, where):
    out = tmp_path / where
    assert main(["calibrate", "--meter", "cputime", "--out", str(out)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert f"--out {out}" in line


@pytest.mark.parametrize(
    ("content", "complaint"),
    [
        ('{"calibration": {"date": "2026-01-02"}}', "calibration must be an object"),
        ('{"fp32_mult_pj": -1}', "fp32_mult_pj must be finite and ≥ 0"),
        ('{"dram_pj_per_32_bits": NaN}', "dram_pj_per_32_bits must be finite"),
        ('{"fp32_mul_pj": 3.7}', "unknown key 'fp32_mul_pj'"),
        ('{"sram_capacity_bytes": "1MB"}', "sram_capacity_bytes must be a number of bytes"),
    ],
)
def test_a_bad_calibrated_table_is_named_with_its_key(tmp_path, content, complaint):
    table = tmp_path / "table.json"
    table.write_text(content)
    with pytest.raises(ConfigError, match=complaint) as raised:
        load_energy_table(table)
    assert str(table) in str(raised.value)


def test_a_calibrated_table_labels_the_counted_meter_in_the_summary(pytester):
    pytester.makepyfile(
        test_small="""
import torch

def test_small(energy):
    x = torch.randn(8, 8)
    energy.inference(lambda: x @ x, rounds=1, warmup=1)
"""
    )
    pytester.path.joinpath("table.json").write_text(
        '{"fp32_mult_pj": 50.0, "calibration": {"hardware": "Test CPU", "date": "2026-01-02"}}'
    )
    result = pytester.runpytest(
        "--energy", "--energy-meter", "counted", "--energy-counted-table", "table.json"
    )
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["meter counted: counted — calibrated to Test CPU, 2026-01-02*"])
