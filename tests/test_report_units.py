"""Words and units: one unit per column, the same figure in the same unit in terminal and
markdown, and a test's gating meter first."""

from __future__ import annotations

from report_data import lifecycle_record, results_document

from pytest_energy.report.markdown import render_markdown
from pytest_energy.report.terminal import summary_table


def two_meters(method: str, counted_tec: float, cputime_tec: float) -> dict:
    record = lifecycle_record(method, counted_tec, 1e-5)
    cputime = lifecycle_record(method, cputime_tec, 3e-3, meter="cputime", kind="estimated")
    record["meters"] = {**cputime["meters"], **record["meters"]}  # cputime listed first
    return record


def tests_of_one_family() -> dict:
    return {
        "t.py::test_a": two_meters("a", 84.4, 8.86e6),
        "t.py::test_b": two_meters("b", 6.5, 31.2),
    }


def test_a_column_has_one_unit_and_the_terminal_and_markdown_agree():
    tests = tests_of_one_family()
    terminal = summary_table(tests)
    markdown = render_markdown(results_document(tests))
    # TEC column: 6.5 J … 8.86 MJ → every cell in MJ, never kWh, in both renderings
    for figure in ("0.0000844 MJ", "8.86 MJ", "0.0000065 MJ", "0.0000312 MJ"):
        assert figure in terminal
        assert figure in markdown
    assert "kWh |" not in markdown.split("### Carbon")[0].replace("gCO2e/kWh", "")


def test_the_gating_meters_row_comes_first_in_each_test():
    lines = [line for line in summary_table(tests_of_one_family()).splitlines() if line[:2] in
             ("a ", "b ")]  # fmt: skip
    assert [line.split()[4] for line in lines] == ["counted", "cputime", "counted", "cputime"]
    assert [line.split()[4] for line in summary_table(tests_of_one_family(), gate=["cputime"])
            .splitlines() if line[:2] == "a "] == ["cputime", "counted"]  # fmt: skip
