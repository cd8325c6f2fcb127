"""pytest hooks only: options, ini values, the marker, fixtures, header, summary and files.

The work lives elsewhere: meters in ``meters/``, the fixture in ``fixture.py``, the run's state
in ``session.py``, the maths in ``lifecycle.py``, the tables in ``report/``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from pytest_energy.breakdown import DEFAULT_TOP, check_breakdown
from pytest_energy.config import (
    DEFAULT_ROUNDS,
    DEFAULT_TAU,
    DEFAULT_WARMUP_CALLS,
    LifecycleSettings,
    lifecycle_settings,
    parse_cpu_watts,
    parse_number,
    parse_positive_int,
    parse_tau,
    parse_tolerance,
    parse_usage,
)
from pytest_energy.distributed import reports_here
from pytest_energy.errors import ConfigError, EnergyError, MeasurementError, MeterError
from pytest_energy.files import write_json_atomic
from pytest_energy.fixture import EnergyFixture, spinning_threads_note
from pytest_energy.gate.plugin import RegressionGate
from pytest_energy.gate.plugin import add_options as add_gate_options
from pytest_energy.machine import machine_info
from pytest_energy.metadata import dirty_save_warning, run_metadata
from pytest_energy.meters import MeterOptions, parse_meter_spec, select_meters
from pytest_energy.report.breakdown import breakdown_report
from pytest_energy.report.outputs import ReportWriter
from pytest_energy.report.outputs import add_options as add_report_options
from pytest_energy.report.terminal import summary_table
from pytest_energy.results import results_document
from pytest_energy.session import EnergySession
from pytest_energy.turns import TurnTakingPlugin, turns_from_environment
from pytest_energy.validation import (
    check_output_options,
    check_rootdir_not_moved,
    lifecycle_without_fixture,
    name_ini_source,
    warm_up_meters,
)
from pytest_energy.workers import (
    ALLOW_SHARED_OPTION,
    GPU_PER_WORKER_OPTION,
    check_shared_meters,
    pin_worker_gpu,
)

SESSION_KEY = pytest.StashKey[EnergySession]()
FIXTURE_KEY = pytest.StashKey[EnergyFixture]()
FAILED_KEY = pytest.StashKey[list]()
GATE_KEY = pytest.StashKey[RegressionGate]()
REPORT_ATTRIBUTE = "energy_result"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("energy", "full-cycle energy measurement (pytest-energy)")
    group.addoption(
        "--energy",
        action="store_true",
        default=False,
        help="measure the training (TEC) and inference (IEC) energy of lifecycle tests; "
        "without it the energy fixture runs the code and measures nothing",
    )
    group.addoption(
        "--energy-meter",
        metavar="METERS",
        default=None,
        help="auto (default), or a comma list of nvml, rapl, cputime, counted; "
        "run `pytest-energy meters` to see which work here",
    )
    group.addoption(
        "--energy-cpu-watts",
        metavar="WATTS",
        default=None,
        help="watts per busy hardware thread for the cputime meter "
        "(default: CPU TDP from codecarbon's table / threads, else 4 W)",
    )
    group.addoption(
        "--energy-rapl-root",
        metavar="DIR",
        default="/sys/class/powercap",
        help="powercap sysfs directory the rapl meter reads (default: /sys/class/powercap)",
    )
    group.addoption(
        "--energy-counted-table",
        metavar="JSON",
        default=None,
        help="JSON object overriding the counted meter's picojoules per operation "
        "(keys such as fp32_mult_pj, int8_mult_pj, dram_pj_per_32_bits; "
        "default: Horowitz ISSCC 2014, 45 nm)",
    )
    group.addoption(
        "--energy-rounds",
        metavar="N",
        default=None,
        help=f"measured inference rounds per test (default {DEFAULT_ROUNDS}; ini energy_rounds)",
    )
    group.addoption(
        "--energy-round-seconds",
        metavar="SECONDS",
        default=None,
        help="length of each timed inference round (default: the meter's own, e.g. cputime "
        "0.25 s; never below what the meter resolves; ini energy_round_seconds)",
    )
    group.addoption(
        "--energy-warmup",
        metavar="N",
        default=None,
        help=f"unmeasured warm-up calls before inference rounds "
        f"(default {DEFAULT_WARMUP_CALLS}; ini energy_warmup)",
    )
    group.addoption(
        "--energy-usage",
        metavar="MUIS",
        default=None,
        help="default usage scenarios (inferences over a model's life), e.g. '1e3,1e6,1e9' "
        "(ini energy_usage); a marker's usage= wins",
    )
    group.addoption(
        "--energy-tau",
        metavar="TAU",
        default=None,
        help=f"default τ of greenness Acc^τ / E(MUI) (default {DEFAULT_TAU:g}; ini energy_tau)",
    )
    group.addoption(
        "--energy-tolerance",
        metavar="FRACTION",
        default=None,
        help="default allowed rise before a regression, e.g. 5%% or 0.05 "
        "(default 5%%; ini energy_tolerance); a marker's tolerance= wins",
    )
    group.addoption(
        "--energy-json",
        metavar="PATH",
        default=None,
        help="write the results (schema pytest-energy/results, versioned) to PATH",
    )
    group.addoption(
        GPU_PER_WORKER_OPTION,
        action="store_true",
        default=False,
        help="under pytest-xdist, give worker gwK the K-th visible GPU alone "
        "(CUDA_VISIBLE_DEVICES), so each test's nvml reading is its own",
    )
    group.addoption(
        ALLOW_SHARED_OPTION,
        action="store_true",
        default=False,
        help="under pytest-xdist, keep machine-wide meters (rapl; nvml without "
        f"{GPU_PER_WORKER_OPTION}) although each worker's readings include the others' tests",
    )
    group.addoption(
        "--energy-breakdown",
        metavar="N",
        nargs="?",
        const=DEFAULT_TOP,
        type=int,
        default=None,
        help=f"break counted inference energy down by operator and module: the JSON gets it "
        f"per sample, the terminal the top N (default {DEFAULT_TOP}); needs the counted meter",
    )
    parser.addini("energy_meter", "default for --energy-meter", default="auto")
    parser.addini("energy_usage", "default usage scenarios (MUI), e.g. 1e3 1e6 1e9", default="")
    parser.addini("energy_tau", "default τ for greenness", default="")
    parser.addini("energy_tolerance", "default tolerance, e.g. 5%", default="")
    parser.addini("energy_rounds", "measured inference rounds per test", default="")
    parser.addini("energy_round_seconds", "length of each timed inference round", default="")
    parser.addini("energy_warmup", "warm-up calls before inference rounds", default="")
    parser.addini("energy_cpu_watts", "watts per hardware thread for cputime", default="")
    add_report_options(group, parser)
    add_gate_options(group, parser)


def _setting(config: pytest.Config, option: str, ini: str) -> Any:
    value = config.getoption(option)
    if value is None:
        value = config.getini(ini) or None
    return value


def _counted_table(path: str | None) -> dict[str, float] | None:
    if path is None:
        return None
    from pytest_energy.meters.counted import load_energy_table

    return dict(load_energy_table(path))


def _build_session(config: pytest.Config) -> EnergySession:
    enabled = bool(config.getoption("--energy"))
    usage = _setting(config, "--energy-usage", "energy_usage")
    tau = _setting(config, "--energy-tau", "energy_tau")
    tolerance = _setting(config, "--energy-tolerance", "energy_tolerance")
    rounds = _setting(config, "--energy-rounds", "energy_rounds")
    warmup = _setting(config, "--energy-warmup", "energy_warmup")
    round_seconds = _setting(config, "--energy-round-seconds", "energy_round_seconds")
    cpu_watts = _setting(config, "--energy-cpu-watts", "energy_cpu_watts")
    meter_spec = _setting(config, "--energy-meter", "energy_meter") or "auto"
    defaults = LifecycleSettings(
        usage=parse_usage(usage, "--energy-usage") if usage else LifecycleSettings().usage,
        tolerance=parse_tolerance(tolerance, "--energy-tolerance")
        if tolerance
        else LifecycleSettings().tolerance,
        tau=parse_tau(tau, "--energy-tau") if tau else DEFAULT_TAU,
    )
    parse_meter_spec(meter_spec)
    options = MeterOptions(
        cpu_watts_per_thread=parse_cpu_watts(cpu_watts) if cpu_watts is not None else None,
        rapl_root=config.getoption("--energy-rapl-root"),
        counted_energy_table=_counted_table(config.getoption("--energy-counted-table")),
        counted_breakdown=config.getoption("--energy-breakdown") is not None,
    )
    selection = select_meters(meter_spec, options) if enabled else None
    if selection is not None:
        check_breakdown(config.getoption("--energy-breakdown"), selection.names)
    return EnergySession(
        enabled=enabled,
        selection=selection,
        defaults=defaults,
        rounds=parse_positive_int(rounds, "--energy-rounds") if rounds else DEFAULT_ROUNDS,
        warmup_calls=parse_positive_int(warmup, "--energy-warmup")
        if warmup
        else DEFAULT_WARMUP_CALLS,
        meter_options=options,
        round_seconds=parse_number(
            round_seconds, "--energy-round-seconds", "seconds > 0", 0, 3600, inclusive=False
        )
        if round_seconds is not None
        else None,
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "lifecycle(usage=[1e3, 1e6, 1e9], tolerance=0.05, tau=1.0, **labels): a full-cycle "
        "energy test; labels such as family=, method=, model=, dataset= group the reports",
    )
    try:
        check_output_options(config)
        check_rootdir_not_moved(config)
        pin_worker_gpu(config)  # before any meter or test looks at CUDA_VISIBLE_DEVICES
        config.stash[SESSION_KEY] = _build_session(config)
        report_writer = ReportWriter(config, config.stash[SESSION_KEY])
        config.stash[GATE_KEY] = RegressionGate.from_config(config, config.stash[SESSION_KEY])
        shared_meters_kept = check_shared_meters(config, config.stash[SESSION_KEY].meters)
        turns = turns_from_environment()  # pytest-energy ab --interleave
    except (EnergyError, ValueError) as error:
        raise pytest.UsageError(name_ini_source(config, str(error))) from None
    if shared_meters_kept:
        config.issue_config_time_warning(pytest.PytestWarning(shared_meters_kept), stacklevel=2)
    config.stash[FAILED_KEY] = []
    config.pluginmanager.register(
        ResultCollector(config.stash[SESSION_KEY], config.stash[FAILED_KEY]), "energy-results"
    )
    config.pluginmanager.register(report_writer, "energy-report")
    config.pluginmanager.register(config.stash[GATE_KEY], "energy-gate")
    if turns is not None:
        config.stash[SESSION_KEY].turns = turns
        config.pluginmanager.register(TurnTakingPlugin(turns), "energy-turns")


def pytest_unconfigure(config: pytest.Config) -> None:
    session = config.stash.get(SESSION_KEY, None)
    if session is not None:
        session.close()


def pytest_report_header(config: pytest.Config) -> list[str]:
    session = config.stash.get(SESSION_KEY, None)
    if session is None or not session.enabled or not reports_here():
        return []
    used = ", ".join(f"{meter.name} ({meter.kind})" for meter in session.meters)
    lines = [f"energy: meters {used}"]
    lines += [f"energy: not used: {reason}" for reason in session.selection.not_used.values()]
    return lines


@pytest.fixture(scope="session")
def energy_session(request: pytest.FixtureRequest) -> EnergySession:
    """The run's energy state; ``energy_session.measure(name)`` measures work shared by tests."""
    return request.config.stash[SESSION_KEY]


@pytest.fixture
def energy(
    request: pytest.FixtureRequest, energy_session: EnergySession
) -> Iterator[EnergyFixture]:
    """Measures this test's training phases (TEC) and inference (IEC); see EnergyFixture."""
    marker = request.node.get_closest_marker("lifecycle")
    try:
        settings = (
            lifecycle_settings(
                marker.args, marker.kwargs, energy_session.defaults, request.node.nodeid
            )
            if marker is not None
            else energy_session.defaults
        )
    except ConfigError as error:
        pytest.fail(str(error), pytrace=False)
    fixture = EnergyFixture(energy_session, settings, request.node.nodeid)
    request.node.stash[FIXTURE_KEY] = fixture
    yield fixture


def pytest_collection_finish(session: pytest.Session) -> None:
    """Pay the meters' one-time costs now (test modules, torch included, are imported)."""
    energy_session = session.config.stash.get(SESSION_KEY, None)
    if energy_session is not None and energy_session.enabled and session.items:
        warm_up_meters(energy_session.meters)


def pytest_runtest_setup(item: pytest.Item) -> None:
    """A lifecycle marker is checked even on a test that cannot measure (no ``energy``)."""
    marker = item.get_closest_marker("lifecycle")
    if marker is None or "energy" in getattr(item, "fixturenames", ()):
        return
    energy_session = item.config.stash.get(SESSION_KEY, None)
    if energy_session is None:
        return
    try:
        lifecycle_settings(marker.args, marker.kwargs, energy_session.defaults, item.nodeid)
    except ConfigError as error:
        pytest.fail(str(error), pytrace=False)
    message = lifecycle_without_fixture(item.nodeid)
    if energy_session.enabled:
        pytest.fail(message, pytrace=False)
    item.warn(pytest.PytestWarning(message))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.when != "call":
        return
    fixture = item.stash.get(FIXTURE_KEY, None)
    if fixture is None:
        return
    if call.excinfo is not None and call.excinfo.errisinstance((MeasurementError, MeterError)):
        report.longrepr = f"{call.excinfo.typename}: {call.excinfo.value}"
        if call.excinfo.errisinstance(MeterError):
            return  # a meter's figure was refused: no record is built on it
    if not fixture.enabled or not fixture.measured_anything:
        return
    setattr(report, REPORT_ATTRIBUTE, fixture.result(report.outcome))


class ResultCollector:
    """Takes each test's energy record off its report (on the xdist controller too)."""

    def __init__(self, session: EnergySession, not_in_results: list[str]) -> None:
        self.session = session
        self.not_in_results = not_in_results

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        result = getattr(report, REPORT_ATTRIBUTE, None)
        if result is None or report.when != "call":
            return
        if report.passed:
            self.session.add_result(report.nodeid, result)
        else:
            self.not_in_results.append(f"{report.nodeid} ({report.outcome})")


def _is_xdist_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def pytest_sessionfinish(session: pytest.Session) -> None:
    config = session.config
    energy_session = config.stash.get(SESSION_KEY, None)
    path = config.getoption("--energy-json")
    if energy_session is None or not energy_session.enabled or not path or _is_xdist_worker(config):
        return
    if not reports_here():  # torch.distributed: rank 0 writes for all ranks
        return
    document = results_document(
        energy_session.results,
        [meter.describe() for meter in energy_session.meters],
        machine_info(),
    )
    if GATE_KEY in config.stash:
        document.update(config.stash[GATE_KEY].results_extras())
    try:
        write_json_atomic(path, document, "--energy-json")
    except OSError as error:  # files.OutputError names the path and why; nothing else is lost
        config.stash[FAILED_KEY].append(str(error))
        if session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.USAGE_ERROR


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    energy_session = config.stash.get(SESSION_KEY, None)
    if energy_session is None or not energy_session.enabled or not reports_here():
        return
    write = terminalreporter.write_line
    terminalreporter.section("energy")
    for meter in energy_session.meters:
        described = meter.describe()
        source = described.get("watts_source") or described.get("source") or ""
        write(f"meter {meter.name}: {meter.kind}" + (f" — {source}" if source else ""))
    for reason in energy_session.selection.not_used.values():
        write(f"not used: {reason}")
    if energy_session.results:
        write("")
        gate = getattr(config.stash.get(GATE_KEY, None), "gate", None) or None
        reference = config.getoption("--energy-reference", None)
        for line in summary_table(energy_session.results, gate, reference).splitlines():
            write(line)
        write("")
        write(
            "TEC: training energy (base training charged + compression + fine-tuning); "
            "IEC: energy per inferred sample (median of rounds); E(MUI) = TEC + MUI × IEC"
        )
        write(
            "time / sample: wall-clock seconds per inferred sample, median of the rounds (IQR), "
            "timed by a measured or estimated meter; samples/s = 1 / median; train time: TEC's work"
        )
    else:
        write("no lifecycle test measured anything (use the `energy` fixture in a test)")
    top = config.getoption("--energy-breakdown")
    if top is not None:
        for line in breakdown_report(energy_session.results, top):
            write(line)
    for nodeid, result in energy_session.results.items():
        for warning in result.get("warnings", []):
            write(f"warning: {nodeid}: {warning}", yellow=True)
    if threads_note := spinning_threads_note(energy_session.results):
        write(f"note: {threads_note}", yellow=True)
    for problem in config.stash[FAILED_KEY]:
        write(f"not in the results: {problem}", red=True)
    path = config.getoption("--energy-json")
    if path and not any("--energy-json" in p for p in config.stash[FAILED_KEY]):
        write(f"results written to {path}")
    dirty = config.getoption("--energy-save") and dirty_save_warning(run_metadata(config.rootpath))
    if dirty:
        write(f"warning: {dirty}", yellow=True)
