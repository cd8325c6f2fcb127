"""The PR-comment markdown: read as a reviewer would, checked for structure and numbers.

Every results document here is built in the test (``report_data``) and compared through the
real comparison code, so the report is checked against figures worked out by hand.
"""

from __future__ import annotations

import copy
import json
import re

import pytest
from report_data import comparison_of, lifecycle_record, paper_results, results_document

from pytest_energy.carbon import CarbonIntensity
from pytest_energy.report.markdown import (
    GITHUB_COMMENT_LIMIT,
    MARKER,
    render_markdown,
    utf16_length,
)

FPGM = "benchmarks/test_pruning.py::test_fpgm"
INT8 = "benchmarks/test_quant.py::test_int8"
KD = "benchmarks/test_distill.py::test_kd"
BASE = "benchmarks/test_base.py::test_uncompressed"


def verdict_cells(markdown: str) -> list[str]:
    """The verdict column of every result-table row, in document order."""
    verdicts = []
    for line in markdown.splitlines():
        if line.startswith("| ") and line.rstrip().endswith("|"):
            last = line.rstrip(" |").rsplit("| ", 1)[-1]
            match = re.search(r"(regressed|improved|unchanged|new|incomparable)", last)
            if match and ("`counted`" in line or "`cputime`" in line):
                verdicts.append(match.group(1))
    return verdicts


def section(markdown: str, title: str) -> str:
    """The text of a ``###`` section, up to the next one."""
    start = markdown.index(f"### {title}")
    end = markdown.find("\n### ", start + 1)
    return markdown[start : end if end != -1 else None]


@pytest.fixture
def regressed_run() -> tuple[dict, dict]:
    """This run against a baseline in which fpgm trained for less and int8 inferred dearer.

    fpgm: TEC 1200 J → 1500 J (+25 %): regressed. int8: IEC 0.3 mJ → 0.25 mJ (−16.7 %) and TEC
    1300 J → 1100 J: improved. The baseline and kd are unchanged.
    """
    current = paper_results()
    baseline = copy.deepcopy(current)
    baseline["tests"][FPGM]["meters"]["counted"]["tec_joules"] = 1200.0
    baseline["tests"][INT8]["meters"]["counted"]["tec_joules"] = 1300.0
    baseline["tests"][INT8]["meters"]["counted"]["iec_joules_per_sample"] = 3e-4
    for record in baseline["tests"].values():
        record["recorded"] = {"commit": "0123456789abcdef", "date": "2025-01-01T00:00:00+00:00"}
    return current, baseline


def test_the_report_starts_with_the_marker_the_ci_comment_is_found_by() -> None:
    assert render_markdown(paper_results()).startswith(MARKER + "\n")


def test_without_a_baseline_the_headline_says_so_and_every_row_is_new() -> None:
    markdown = render_markdown(paper_results())
    assert "**no baseline**: 4 new results" in markdown
    assert verdict_cells(markdown) == ["new"] * 4
    assert "- baseline: none" in markdown


def test_the_headline_agrees_with_the_rows(regressed_run) -> None:
    current, baseline = regressed_run
    markdown = render_markdown(current, comparison_of(current, baseline), baseline=baseline)
    headline = markdown.splitlines()[3]
    assert headline.startswith("❌ **1 regression, 1 improvement, 2 unchanged**")
    assert "gated on counted energy, 5 % tolerance" in headline
    cells = verdict_cells(markdown)
    assert (cells.count("regressed"), cells.count("improved"), cells.count("unchanged")) == (
        1,
        1,
        2,
    )


def test_regressions_come_first_and_unchanged_rows_are_folded(regressed_run) -> None:
    current, baseline = regressed_run
    markdown = render_markdown(current, comparison_of(current, baseline))
    assert verdict_cells(markdown) == ["regressed", "improved", "unchanged", "unchanged"]
    results = section(markdown, "Results per family")
    assert results.index("#### pruning") < results.index("#### quantization")
    for folded in re.findall(
        r"<details><summary>1 unchanged</summary>(.*?)</details>", results, re.S
    ):
        assert "unchanged" in folded and "regressed" not in folded


def test_changes_are_given_per_figure_and_regressed_ones_are_bold(regressed_run) -> None:
    current, baseline = regressed_run
    markdown = render_markdown(current, comparison_of(current, baseline))
    fpgm = next(line for line in markdown.splitlines() if line.startswith("| fpgm |"))
    # TEC 1200 → 1500 J is +25 %; E(1e3) 1200.5 → 1500.5 J is +25.0 %; E(1e6) 1700 → 2000 J is
    # +17.6 %; at 1e9 the TEC change is drowned: 501200 → 501500 J, +0.1 %, unchanged.
    assert "**1.5 kJ (+25.0 %)**" in fpgm
    assert "**2 kJ (+17.6 %)**" in fpgm
    assert "0.501 MJ (+0.1 %)" in fpgm and "**0.501 MJ" not in fpgm  # one unit per column
    assert fpgm.endswith("🔴 regressed |")


def test_figures_are_scaled_and_labelled_with_their_meter_kind() -> None:
    markdown = render_markdown(paper_results())
    int8 = next(line for line in markdown.splitlines() if line.startswith("| int8 |"))
    # TEC 1100 J; IEC 0.25 mJ per sample; E(1e9) = 1100 + 1e9 × 2.5e-4 = 251,100 J. One unit
    # per column, from the column's largest figure (another method's IEC is in mJ, E in MJ).
    assert "| `counted` (counted) | 1.1 kJ | 0.25 mJ | 1.1 kJ | 1.35 kJ | 0.251 MJ |" in int8
    big = results_document({"t::big": lifecycle_record("big", 7.2e6, 0.036)})
    row = next(line for line in render_markdown(big).splitlines() if line.startswith("| big |"))
    # E(1e9) = 7.2e6 + 3.6e7 J = 43.2 MJ; IEC 36 mJ: joules, as in the terminal (not kWh).
    assert "| 7.2 MJ | 36 mJ |" in row and "| 43.2 MJ |" in row


def test_the_environment_names_meters_kinds_hardware_baseline_and_carbon(regressed_run) -> None:
    current, baseline = regressed_run
    markdown = render_markdown(current, comparison_of(current, baseline), baseline=baseline)
    environment = markdown.split("**Environment**", 1)[1].split("###", 1)[0]
    assert "meter `counted`: **counted**" in environment and "gates" in environment
    assert "Test CPU 3000 (2 threads)" in environment
    assert "file `baselines/counted.json`" in environment
    assert "commit `0123456789ab`" in environment
    assert "475 gCO2e/kWh — world average" in environment


def test_lifecycle_winners_by_hand() -> None:
    lifecycle = section(render_markdown(paper_results()), "Lifecycle: which method wins")
    rows = {line.split(" | ")[0].lstrip("| "): line for line in lifecycle.splitlines()}
    # At 1e3 the uncompressed model's small TEC wins (1001 J); by 1e6 int8's small IEC does
    # (1100 + 250 = 1350 J against 2000 J); greenness Acc/E follows energy here.
    assert "| 1e3 | uncompressed (resnet20) | 1 kJ |" in rows["1e3"]
    assert "| 1e6 | int8 (resnet20) | 1.35 kJ |" in rows["1e6"]
    assert rows["1e9"].count("int8 (resnet20)") >= 2


def test_break_even_against_the_uncompressed_reference_by_hand() -> None:
    lifecycle = section(render_markdown(paper_results()), "Lifecycle: which method wins")
    # fpgm: (1500 − 1000) / (1e-3 − 5e-4) = 1e6; int8: 100 / 7.5e-4 = 1.33e5; kd never.
    assert "| fpgm (resnet20) | uncompressed (resnet20) | 1e6 | beyond MUI 1e6 |" in lifecycle
    assert "| int8 (resnet20) | uncompressed (resnet20) | 1.3e5 | beyond MUI 1.3e5 |" in lifecycle
    assert "| kd (resnet20) | uncompressed (resnet20) | none | at no usage |" in lifecycle


def test_break_even_points_show_where_they_moved(regressed_run) -> None:
    current, baseline = regressed_run
    markdown = render_markdown(current, comparison_of(current, baseline), baseline=baseline)
    # fpgm crossed at (1200 − 1000) / 5e-4 = 4e5 before, at 1e6 now: +150 %.
    assert "| 4e5 → 1e6 (+150.0 %) |" in markdown


def test_the_reference_is_choosable() -> None:
    markdown = render_markdown(paper_results(), reference="method=int8")
    # kd against int8: (1100 − 3000) / (2e-3 − 2.5e-4) < 0 and kd has the higher IEC: never.
    assert "| kd (resnet20) | int8 (resnet20) | none | at no usage |" in markdown
    assert "| uncompressed (resnet20) | int8 (resnet20) | 1.3e5 | below MUI 1.3e5 |" in markdown
    missing = render_markdown(paper_results(), reference="method=nothing")
    assert "no row matches the reference 'method=nothing'" in missing


def test_carbon_of_full_cycle_energy_by_hand() -> None:
    intensity = CarbonIntensity(100.0, "given with --energy-carbon-intensity")
    markdown = render_markdown(paper_results(), carbon=intensity)
    # uncompressed at 1e3: 1001 J / 3.6e6 J/kWh × 100 g/kWh = 27.8 mg.
    assert "| 1e3 | uncompressed (resnet20) | 1 kJ | 27.8 mg |" in markdown
    carbon = section(markdown, "Carbon")
    assert "100 gCO2e/kWh — given with --energy-carbon-intensity" in carbon
    # kd at 1e9: (3000 + 2e6) J = 2,003,000 J → 55.6 g.
    assert "55.6 g" in carbon


def test_a_mermaid_chart_draws_one_line_per_method_with_a_legend() -> None:
    markdown = render_markdown(paper_results())
    chart = markdown.split("```mermaid\n", 1)[1].split("```", 1)[0]
    assert "xychart-beta" in chart
    lines = [line for line in chart.splitlines() if line.strip().startswith("line [")]
    assert len(lines) == 4
    # x runs over every decade of the usage range: 1e3 … 1e9 (7 points); y is log10 joules,
    # e.g. the uncompressed line starts at log10(1001) = 3.000 and ends at log10(1e6 + 1000).
    assert 'x-axis "MUI (inferences served)" ["1e3", "1e4", "1e5", "1e6", "1e7", "1e8", "1e9"]' in (
        chart
    )
    assert lines[0].strip() == "line [3.000, 3.004, 3.041, 3.301, 4.041, 5.004, 6.000]"
    assert "🟦 uncompressed (resnet20) · 🟧 int8 (resnet20)" in markdown


def many_tests(count: int) -> dict:
    """``count`` tests over five families, each measured by counted (gates) and cputime."""
    tests = {}
    families = ("pruning", "quantization", "distillation", "search", "baseline")
    for index in range(count):
        family = families[index % len(families)]
        record = lifecycle_record(
            f"method_{index:03d}", 1000.0 + index, 1e-3 * (1 + index / 100), family=family
        )
        extra = lifecycle_record("same", 900.0 + index, 1e-3, meter="cputime", kind="estimated")
        record["meters"].update(extra["meters"])
        tests[f"benchmarks/test_{family}.py::test_a_method_with_a_long_name_{index:03d}"] = record
    return results_document(tests)


def test_two_hundred_tests_stay_under_githubs_comment_limit() -> None:
    current = many_tests(200)
    baseline = copy.deepcopy(current)
    for index, record in enumerate(baseline["tests"].values()):
        if index % 7 == 0:
            record["meters"]["counted"]["tec_joules"] *= 0.8
    markdown = render_markdown(current, comparison_of(current, baseline), baseline=baseline)
    assert utf16_length(markdown) <= GITHUB_COMMENT_LIMIT
    headline = markdown.splitlines()[3]
    assert headline.startswith("❌ **29 regressions, 171 unchanged**")
    # Detail went first: the figures of the non-gating meter, said so, not silently.
    assert "Left out to stay under GitHub's comment limit" in markdown
    assert verdict_cells(markdown).count("regressed") == 29


def test_a_tight_limit_shows_fewer_rows_with_a_note_then_cuts_with_a_note() -> None:
    current = many_tests(200)
    limited = render_markdown(current, max_chars=12_000)
    assert utf16_length(limited) <= 12_000
    assert "rows beyond" in limited and "more rows not shown here" in limited
    assert limited.splitlines()[3].startswith("🆕 **no baseline**: 200 new results")
    cut = render_markdown(current, max_chars=900)
    assert utf16_length(cut) <= 900
    assert cut.startswith(MARKER) and "report cut here" in cut
    assert cut.count("<details>") == cut.count("</details>")


def test_utf16_length_counts_emoji_twice() -> None:
    assert utf16_length("ab") == 2
    assert utf16_length("🔴") == 2
    assert utf16_length("µ") == 1


def test_a_meter_that_does_not_gate_is_shown_folded_and_not_counted() -> None:
    current = many_tests(5)
    markdown = render_markdown(current)
    assert "**no baseline**: 5 new results" in markdown
    assert "1 row from meters that do not gate: cputime (estimated)" in markdown
    assert "meter `cputime`: **estimated**" in markdown and "does not gate" in markdown


def test_incomparable_rows_say_why() -> None:
    current = paper_results()
    baseline = copy.deepcopy(current)
    baseline["tests"][FPGM]["meters"]["counted"]["kind"] = "estimated"
    markdown = render_markdown(current, comparison_of(current, baseline))
    fpgm = next(line for line in markdown.splitlines() if line.startswith("| fpgm |"))
    assert "⚠️ incomparable: baseline measured by a estimated meter" in fpgm
    assert markdown.splitlines()[3].startswith("⚠️ **1 incomparable, 3 unchanged**")


def test_tests_in_the_baseline_that_did_not_run_are_listed() -> None:
    current = paper_results()
    baseline = copy.deepcopy(current)
    baseline["tests"]["benchmarks/test_gone.py::test_gone"] = current["tests"][KD]
    markdown = render_markdown(current, comparison_of(current, baseline))
    assert "**In the baseline but not run now:** `benchmarks/test_gone.py::test_gone`" in markdown


def test_an_empty_run_says_nothing_was_measured() -> None:
    markdown = render_markdown(results_document({}))
    assert "no lifecycle result was measured" in markdown
    assert "No lifecycle test measured anything." in markdown


def test_the_report_reads_the_gates_comparison_alike_live_or_from_json(regressed_run) -> None:
    """One comparison model: a results file's embedded comparison renders as the run did."""
    current, baseline = regressed_run
    comparison = comparison_of(current, baseline)
    live = render_markdown(current, comparison, baseline=baseline)
    assert (
        render_markdown(current, json.loads(json.dumps(comparison.to_dict())), baseline=baseline)
        == live
    )
