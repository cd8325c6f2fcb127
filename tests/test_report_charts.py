"""Charts: written as real PNG and SVG files of the expected size, and refused when impossible."""

from __future__ import annotations

import copy
import sys
import xml.etree.ElementTree as ElementTree

import pytest
from report_data import comparison_of, lifecycle_record, paper_results, results_document

from pytest_energy.errors import ReportError
from pytest_energy.report.charts import (
    DPI,
    draw_report,
    figure_size_pixels,
    plot_results,
    write_chart,
)
from pytest_energy.report.model import build_report


def test_a_png_chart_is_an_image_of_the_expected_size(tmp_path) -> None:
    from matplotlib.image import imread

    report = build_report(paper_results())
    path = write_chart(report, tmp_path / "charts" / "energy.png")
    width, height = figure_size_pixels(report)
    assert (width, height) == (1400, 500)  # two 7 × 5 in panels at 100 dpi, one meter
    image = imread(path)
    assert image.shape[:2] == (height, width)
    # Not a blank canvas: lines, markers and text leave many distinct colours.
    assert len({tuple(pixel) for pixel in image.reshape(-1, image.shape[2])[::97]}) > 20


def test_an_svg_chart_has_the_same_size_in_points(tmp_path) -> None:
    path = plot_results(paper_results(), tmp_path / "energy.svg")
    root = ElementTree.parse(path).getroot()
    assert root.tag.endswith("svg")
    # 14 × 5 inches at 72 points per inch.
    assert (root.get("width"), root.get("height")) == ("1008pt", "360pt")
    assert "Full-cycle energy" in path.read_text(encoding="utf-8")


def test_each_meter_gets_a_row_of_panels() -> None:
    results = paper_results()
    for record in results["tests"].values():
        view = dict(record["meters"]["counted"], kind="estimated")
        record["meters"]["cputime"] = view
    report = build_report(results)
    assert figure_size_pixels(report) == (1400, 1000)
    figure = draw_report(report)
    titles = [axes.get_title() for axes in figure.axes]
    assert sum(title.startswith("Accuracy against full-cycle energy") for title in titles) == 2
    assert "Full-cycle energy — cputime (estimated)" in titles
    assert figure.get_dpi() == DPI


def test_the_full_cycle_panel_is_log_log_with_a_line_per_method_and_crossings_marked() -> None:
    figure = draw_report(build_report(paper_results()))
    full_cycle = figure.axes[0]
    assert (full_cycle.get_xscale(), full_cycle.get_yscale()) == ("log", "log")
    labels = [line.get_label() for line in full_cycle.get_lines()]
    assert sum(label.startswith(("uncompressed", "fpgm", "int8", "kd")) for label in labels) == 4
    crossings = [text.get_text() for text in full_cycle.texts]
    # fpgm crosses the uncompressed line at 1e6, int8 at 1.3e5; kd never does.
    assert sorted(crossings) == ["MUI* 1.3e5", "MUI* 1e6"]


def test_an_empty_run_still_draws_a_chart_that_says_so(tmp_path) -> None:
    path = plot_results(results_document({}), tmp_path / "empty.png")
    assert path.stat().st_size > 0


def test_an_unknown_extension_names_the_flag(tmp_path) -> None:
    with pytest.raises(ReportError, match=r"--energy-plot .*\.png or \.svg"):
        plot_results(paper_results(), tmp_path / "energy.pdf")


def test_without_matplotlib_the_error_names_the_extra(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ReportError, match=r"pytest-energy\[plot\]"):
        draw_report(build_report(paper_results()))


def test_a_changed_line_is_labelled_with_its_largest_change_in_that_direction() -> None:
    current = paper_results()
    baseline = copy.deepcopy(current)
    fpgm = baseline["tests"]["benchmarks/test_pruning.py::test_fpgm"]["meters"]["counted"]
    fpgm["tec_joules"] = 1200.0  # 1200 J → 1500 J now: TEC +25 %, E(1e3) +25.0 %
    fpgm["iec_joules_per_sample"] = 6e-4  # 0.6 mJ → 0.5 mJ now: IEC −16.7 %, not a regression
    figure = draw_report(build_report(current, comparison_of(current, baseline)))
    labels = [line.get_label() for line in figure.axes[0].get_lines()]
    assert "fpgm (resnet20) [pruning] — regressed: TEC +25.0 %" in labels


def results_with_methods(count: int) -> dict:
    return results_document(
        {
            f"test_methods.py::test_method[{index}]": lifecycle_record(
                f"method-{index}", 10.0 + index, 1e-3 / (index + 1)
            )
            for index in range(count)
        }
    )


def test_with_many_methods_the_legend_gets_a_column_of_its_own(tmp_path) -> None:
    from matplotlib.image import imread

    few = build_report(results_with_methods(3))
    many = build_report(results_with_methods(12))
    few_width, few_height = figure_size_pixels(few)
    many_width, many_height = figure_size_pixels(many)
    assert many_height == few_height
    assert many_width > few_width
    image = imread(write_chart(many, tmp_path / "many.png"))
    assert image.shape[:2] == (many_height, many_width)
