"""The report options in a pytest run, end to end through pytester, and the CLI that re-renders."""

from __future__ import annotations

import json

import pytest
from report_data import paper_results

from pytest_energy.cli import main

LINEAR_TEST = """
import pytest
import torch

WIDTH = {width}

@pytest.mark.lifecycle(usage=[1e3, 1e6], family="pruning", method="slim", model="linear")
def test_linear(energy):
    layer = torch.nn.Linear(64, 32)
    batch = torch.randn(8, 64)
    with energy.train("fit"):
        for _ in range(WIDTH):
            layer(batch).sum().backward()
    energy.accuracy = 0.5
    energy.inference(lambda: layer(batch), samples=8)
"""
COUNTED = ["--energy", "--energy-meter", "counted", "-p", "no:cacheprovider"]


def test_markdown_and_chart_are_written_at_the_end_of_a_measured_run(pytester) -> None:
    pytester.makepyfile(test_linear=LINEAR_TEST.format(width=1))
    result = pytester.runpytest(
        *COUNTED, "--energy-markdown", "out/report.md", "--energy-plot", "out/chart.svg"
    )
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        ["energy report written to out/report.md", "energy report written to out/chart.svg"]
    )
    markdown = (pytester.path / "out" / "report.md").read_text(encoding="utf-8")
    assert "🆕 **no baseline**: 1 new result" in markdown
    assert "| slim | linear | 50.0 % | `counted` (counted) |" in markdown
    assert (pytester.path / "out" / "chart.svg").read_text().lstrip().startswith("<?xml")


def test_a_regression_fails_the_run_and_the_report_says_which_and_by_how_much(pytester) -> None:
    pytester.makepyfile(test_linear=LINEAR_TEST.format(width=1))
    pytester.runpytest(*COUNTED, "--energy-save").assert_outcomes(passed=1)
    pytester.makepyfile(test_linear=LINEAR_TEST.format(width=2))  # twice the training work
    result = pytester.runpytest(
        *COUNTED, "--energy-markdown", "report.md", "--energy-json", "r.json"
    )
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    markdown = (pytester.path / "report.md").read_text(encoding="utf-8")
    assert markdown.splitlines()[3].startswith("❌ **1 regression**")
    row = next(line for line in markdown.splitlines() if line.startswith("| slim |"))
    assert "**" in row and "(+" in row and row.endswith("🔴 regressed |")
    assert "file `baselines/counted.json`" in markdown
    # The saved results carry the comparison: the CLI renders the same headline from them.
    document = json.loads((pytester.path / "r.json").read_text())
    assert document["comparison"]["counts"]["regressed"] == 1


def test_report_options_are_checked_before_anything_runs(pytester) -> None:
    pytester.makepyfile(test_linear=LINEAR_TEST.format(width=1))
    result = pytester.runpytest(*COUNTED, "--energy-country", "ATLANTIS")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--energy-country: unknown country 'ATLANTIS'*"])
    result = pytester.runpytest(*COUNTED, "--energy-plot", "chart.pdf")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--energy-plot*must end in .png or .svg*"])


def test_carbon_options_come_from_the_ini_file_too(pytester) -> None:
    pytester.makeini("[pytest]\nenergy_country = FRA\nenergy_pue = 1.5\n")
    pytester.makepyfile(test_linear=LINEAR_TEST.format(width=1))
    pytester.runpytest(*COUNTED, "--energy-markdown", "r.md").assert_outcomes(passed=1)
    markdown = (pytester.path / "r.md").read_text(encoding="utf-8")
    assert "France (FRA) average" in markdown and "PUE 1.5" in markdown


def test_without_energy_no_report_is_written(pytester) -> None:
    pytester.makepyfile(test_linear=LINEAR_TEST.format(width=1))
    pytester.runpytest("--energy-markdown", "r.md").assert_outcomes(passed=1)
    assert not (pytester.path / "r.md").exists()


# --- pytest-energy report -------------------------------------------------------------------


@pytest.fixture
def results_file(tmp_path):
    path = tmp_path / "results.json"
    path.write_text(json.dumps(paper_results()), encoding="utf-8")
    return path


def test_cli_report_writes_markdown_and_chart_from_saved_results(tmp_path, results_file) -> None:
    markdown, chart = tmp_path / "r.md", tmp_path / "c.png"
    status = main(["report", str(results_file), "--markdown", str(markdown), "--plot", str(chart)])
    assert status == 0
    assert "**no baseline**: 4 new results" in markdown.read_text(encoding="utf-8")
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_report_compares_with_a_baseline_and_check_fails_on_regression(
    tmp_path, results_file, capsys
) -> None:
    baseline = paper_results()
    baseline["tests"]["benchmarks/test_pruning.py::test_fpgm"]["meters"]["counted"][
        "tec_joules"
    ] = 1200.0
    baseline_file = tmp_path / "baseline.json"
    baseline_file.write_text(json.dumps(baseline), encoding="utf-8")
    status = main(["report", str(results_file), "--baseline", str(baseline_file), "--check"])
    out = capsys.readouterr().out
    assert status == 1
    assert "❌ **1 regression, 3 unchanged**" in out
    assert "| 4e5 → 1e6 (+150.0 %) |" in out  # fpgm's break-even moved with its TEC


def test_cli_report_names_the_bad_flag(results_file, capsys) -> None:
    assert main(["report", str(results_file), "--country", "XYZ"]) == 2
    assert "--energy-country: unknown country 'XYZ'" in capsys.readouterr().err


def test_cli_report_refuses_a_file_that_is_not_results(tmp_path, capsys) -> None:
    bogus = tmp_path / "bogus.json"
    bogus.write_text('{"schema": "something-else"}', encoding="utf-8")
    assert main(["report", str(bogus)]) == 2
    assert "bogus.json" in capsys.readouterr().err
