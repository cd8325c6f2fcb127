"""The report files of a run: ``--energy-markdown`` and ``--energy-plot``, and the live progress.

``ReportWriter`` is registered by ``plugin.py`` as a plugin object. At the end of a measured
run (on the xdist controller and torch.distributed rank 0 only) it renders the results, the
regression gate's comparison and the baselines it compared against into a markdown report (the
pull-request comment) and a chart; ``pytest-energy report`` renders the same files from a
saved results JSON. Before each test it hands the ``energy`` fixture the terminal's progress
line (see ``pytest_energy.progress``).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pytest_energy.carbon import CarbonIntensity, resolve_intensity
from pytest_energy.errors import EnergyError, ReportError
from pytest_energy.files import non_finite_figures, write_text_atomic
from pytest_energy.machine import machine_info
from pytest_energy.progress import ProgressLine, progress_line_for
from pytest_energy.report.model import REFERENCE_AUTO, Report, build_report, parse_reference
from pytest_energy.report.tasks import parse_references
from pytest_energy.results import results_document
from pytest_energy.session import EnergySession

MARKDOWN_OPTION = "--energy-markdown"
PLOT_OPTION = "--energy-plot"


def add_options(group: Any, parser: pytest.Parser) -> None:
    """The report's command-line options and ini values (called from ``pytest_addoption``)."""
    group.addoption(
        MARKDOWN_OPTION,
        metavar="PATH",
        default=None,
        help="write a markdown report for a pull-request comment to PATH: verdicts, figures "
        "per family, lifecycle winners and break-even MUI, carbon (with --energy)",
    )
    group.addoption(
        PLOT_OPTION,
        metavar="PATH",
        default=None,
        help="write charts to PATH (.png or .svg): full-cycle energy against MUI with "
        "crossovers, accuracy against E(MUI) with the Pareto front; needs pytest-energy[plot]",
    )
    group.addoption(
        "--energy-country",
        metavar="ISO3",
        default=None,
        help="carbon intensity of this country's electricity for gCO2e (codecarbon's table, "
        "offline), e.g. FRA, USA; ini energy_country",
    )
    group.addoption(
        "--energy-carbon-intensity",
        metavar="G_PER_KWH",
        default=None,
        help="carbon intensity in gCO2e per kWh (default: world average 475); "
        "ini energy_carbon_intensity",
    )
    group.addoption(
        "--energy-pue",
        metavar="FACTOR",
        default=None,
        help="power usage effectiveness ≥ 1 applied before carbon (default 1.0); ini energy_pue",
    )
    group.addoption(
        "--energy-reference",
        metavar="LABEL=VALUE",
        default=None,
        help="the method break-even MUI is measured against: auto (a test labelled "
        "family=baseline or method=uncompressed), LABEL=VALUE or part of a node id; per "
        "task TASK=LABEL=VALUE, comma-separated; ini energy_reference",
    )
    parser.addini("energy_country", "ISO 3166-1 alpha-3 country for carbon intensity", default="")
    parser.addini("energy_carbon_intensity", "carbon intensity in gCO2e/kWh", default="")
    parser.addini("energy_pue", "power usage effectiveness (≥ 1)", default="")
    parser.addini("energy_reference", "reference method for break-even MUI", default="")


@dataclass(frozen=True)
class ReportSettings:
    """Where the report files go and how carbon and break-evens are figured."""

    markdown: Path | None = None
    plot: Path | None = None
    carbon: CarbonIntensity | None = None
    reference: str = REFERENCE_AUTO

    @property
    def wanted(self) -> bool:
        return self.markdown is not None or self.plot is not None


def report_settings(
    markdown: str | os.PathLike[str] | None = None,
    plot: str | os.PathLike[str] | None = None,
    country: str | None = None,
    carbon_intensity: Any = None,
    pue: Any = None,
    reference: str | None = None,
) -> ReportSettings:
    """Validate report options up front, so a bad flag fails before hours of training."""
    carbon = resolve_intensity(country or None, carbon_intensity, pue)
    parse_reference(reference)
    parse_references(reference)  # per-task references: TASK=LABEL=VALUE, comma-separated
    if plot is not None:
        from pytest_energy.report.charts import chart_format

        chart_format(plot)
        if importlib.util.find_spec("matplotlib") is None:
            raise ReportError(
                f"{PLOT_OPTION} needs matplotlib, an optional extra: "
                f"pip install 'pytest-energy[plot]'"
            )
    return ReportSettings(
        markdown=Path(markdown) if markdown else None,
        plot=Path(plot) if plot else None,
        carbon=carbon,
        reference=reference or REFERENCE_AUTO,
    )


def _setting(config: pytest.Config, option: str, ini: str) -> Any:
    value = config.getoption(option)
    return value if value is not None else (config.getini(ini) or None)


def settings_from_config(config: pytest.Config) -> ReportSettings:
    return report_settings(
        markdown=config.getoption(MARKDOWN_OPTION),
        plot=config.getoption(PLOT_OPTION),
        country=_setting(config, "--energy-country", "energy_country"),
        carbon_intensity=_setting(config, "--energy-carbon-intensity", "energy_carbon_intensity"),
        pue=_setting(config, "--energy-pue", "energy_pue"),
        reference=_setting(config, "--energy-reference", "energy_reference"),
    )


def write_outputs(
    results: Mapping[str, Any],
    settings: ReportSettings,
    comparison: Any | None = None,
    baseline: Any | None = None,
) -> list[Path]:
    """Render the markdown and the chart that ``settings`` ask for; returns the files written.

    ``comparison`` defaults to the one embedded in the results (``results["comparison"]``,
    written by the gate), so a saved results file renders as the run did.
    """
    bad = non_finite_figures(results.get("tests", {}), "tests")
    if bad:
        outputs = " and ".join(
            option
            for option, path in ((MARKDOWN_OPTION, settings.markdown), (PLOT_OPTION, settings.plot))
            if path is not None
        )
        raise ReportError(
            f"{outputs}: not written: a figure is infinite or not a number "
            f"({'; '.join(bad[:3])}); check the settings that produced it"
        )
    if comparison is None:
        comparison = _embedded_comparison(results)
    report = _report_of(results, settings, comparison, baseline)
    written = []
    if settings.markdown is not None:
        written.append(write_markdown(report, settings.markdown))
    if settings.plot is not None:
        from pytest_energy.report.charts import write_chart

        written.append(write_chart(report, settings.plot))
    return written


def write_markdown(
    report: Report,
    path: str | os.PathLike[str],
    inputs: Collection[str | os.PathLike[str]] = (),
) -> Path:
    """Render ``report`` and write it to ``path``, atomically, never over one of ``inputs``."""
    from pytest_energy.report.markdown import render_report

    text = render_report(report)
    return write_text_atomic(path, text, MARKDOWN_OPTION, inputs)


def _reports_here() -> bool:
    """False on torch.distributed ranks other than 0 (rank 0 reports for all)."""
    try:
        from pytest_energy.distributed import reports_here
    except ImportError:
        return True
    return reports_here()


class ReportWriter:
    """Plugin object: the progress line for each test, the report files at the end."""

    def __init__(self, config: pytest.Config, energy_session: EnergySession) -> None:
        self.config = config
        self.energy_session = energy_session
        self.settings = settings_from_config(config)
        self.written: list[Path] = []
        self.problems: list[str] = []
        self._line: ProgressLine | None = None

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_call(self, item: pytest.Item) -> None:
        """Give the test's ``energy`` fixture the terminal's progress line."""
        fixture = getattr(item, "funcargs", {}).get("energy")
        if not self.energy_session.enabled or not hasattr(fixture, "live"):
            return
        if self._line is None:  # the terminal reporter exists once configuration is done
            self._line = progress_line_for(self.config)
        fixture.live.line = self._line

    def _document(self) -> dict[str, Any]:
        document = results_document(
            self.energy_session.results,
            [meter.describe() for meter in self.energy_session.meters],
            machine_info(),
        )
        gate = self.config.pluginmanager.get_plugin("energy-gate")
        if gate is not None and hasattr(gate, "results_extras"):
            document.update(gate.results_extras())
        return document

    def _baselines(self) -> list[Any]:
        gate = self.config.pluginmanager.get_plugin("energy-gate")
        baselines = getattr(gate, "baselines", None) or {}
        return [baseline for baseline in baselines.values() if baseline is not None]

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if (
            not self.settings.wanted
            or not self.energy_session.enabled
            or hasattr(self.config, "workerinput")
            or not _reports_here()
        ):
            return
        try:
            self.written = write_outputs(self._document(), self.settings, None, self._baselines())
        except EnergyError as error:
            self.problems.append(str(error))

    @pytest.hookimpl(trylast=True)
    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        for path in self.written:
            terminalreporter.write_line(f"energy report written to {path}")
        for problem in self.problems:
            terminalreporter.write_line(f"energy report not written: {problem}", red=True)


def report_from_files(
    results_path: str | os.PathLike[str],
    baseline_paths: Sequence[str | os.PathLike[str]] = (),
    settings: ReportSettings | None = None,
    gate: Sequence[str] | None = None,
) -> tuple[Report, Any | None]:
    """The report of a saved results file, compared with baseline files when any are given.

    Without baselines the comparison the run embedded in its results (if any) is shown; with
    them the comparison is made afresh (``compare.compare_snapshots``), each test judged with
    its own recorded tolerance. Returns the report and the comparison it shows.
    """
    from pytest_energy.gate.store import load_snapshot, read_json, validate_results

    settings = settings or ReportSettings()
    results = validate_results(read_json(results_path, "results file"), os.fspath(results_path))
    comparison: Any | None = None
    documents = []
    if baseline_paths:
        from pytest_energy.gate.compare import compare_snapshots

        merged: dict[str, dict[str, Any]] = {}
        for path in baseline_paths:
            for nodeid, meters in load_snapshot(path).items():
                merged.setdefault(nodeid, {}).update(meters)
            document = dict(read_json(path, "baseline file"))
            document.setdefault("path", os.fspath(path))
            documents.append(document)
        comparison = compare_snapshots(load_snapshot(results_path), merged, gate=gate)
    else:
        comparison = _embedded_comparison(results)
    return _report_of(results, settings, comparison, documents), comparison


def _embedded_comparison(results: Mapping[str, Any]) -> Any | None:
    """The comparison the gate wrote into a results file, so it renders as the run did."""
    embedded = results.get("comparison")
    return embedded if isinstance(embedded, Mapping) else None


def _report_of(
    results: Mapping[str, Any], settings: ReportSettings, comparison: Any, baseline: Any
) -> Report:
    return build_report(
        results, comparison, baseline=baseline, carbon=settings.carbon, reference=settings.reference
    )
