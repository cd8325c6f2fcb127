"""The regression gate in a pytest run: baseline options, compare and save, the exit status.

``RegressionGate`` is registered by ``plugin.py`` as a plugin object; its hooks stay thin and
hand the work to ``profiles`` (which file), ``baselines`` (load, merge, save), ``compare`` and
``stats`` (the verdicts). Under pytest-xdist the comparison and the save happen once, on the
controller, from the records the workers send back on their reports; workers only run tests
(and repeat them for ``--energy-train-rounds``).

Which meter gates (``--energy-gate``, default ``auto``): every measured meter (nvml, rapl) that
ran, else ``counted``, else the estimated ``cputime``. A measured counter is the truth when
there is one; without one, the deterministic count is the meter that cannot cry wolf on a
shared CI runner, and ``cputime`` (an estimate from CPU time, noisy on shared machines) gates
only when nothing better ran. The other meters are compared and reported, not gating.

Machine-wide meters under xdist (rapl, nvml on a shared GPU) are refused or warned about by
``pytest_energy.workers``: they cannot tell apart tests running side by side.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pytest_energy.config import parse_number, parse_positive_int
from pytest_energy.errors import BaselineError, ConfigError
from pytest_energy.fixture import EnergyFixture
from pytest_energy.gate.compare import (
    ComparisonReport,
    Provenance,
    Recorded,
    compare_snapshots,
    default_gate,
)
from pytest_energy.gate.profiles import Profile, cpu_fingerprint, make_profile, profile_for
from pytest_energy.gate.rules import DEFAULT_ALPHA, MIN_SESSIONS
from pytest_energy.gate.sessions import DEFAULT_KEEP_SESSIONS, entry_sessions
from pytest_energy.gate.store import (
    DEFAULT_DIRECTORY,
    BaselineFile,
    SaveResult,
    baseline_entry,
    baseline_path,
    check_writable,
    load_baseline,
    merged_snapshot,
    other_profiles,
    refuse_overwriting_inputs,
    run_provenance,
    save_baseline,
)
from pytest_energy.machine import machine_info
from pytest_energy.meters.base import Meter
from pytest_energy.report.terminal import summary_lines
from pytest_energy.session import EnergySession

OUTPUT_OPTIONS = ("--energy-json", "--energy-markdown", "--energy-plot")
"""The files a run writes: none may replace a baseline (see ``refuse_overwriting_inputs``)."""


def add_options(group: Any, parser: pytest.Parser) -> None:
    """The gate's command-line options and ini values (called from ``pytest_addoption``)."""
    group.addoption(
        "--energy-baselines",
        metavar="DIR",
        default=None,
        help=f"directory of the baseline files, one per profile, relative to the rootdir "
        f"(default {DEFAULT_DIRECTORY}; ini energy_baselines)",
    )
    group.addoption(
        "--energy-save",
        action="store_true",
        default=False,
        help="write or refresh the baselines of the tests that passed, merged with the others "
        "in the file; the comparison is still shown, and regressions are accepted, not failed",
    )
    group.addoption(
        "--energy-prune",
        action="store_true",
        default=False,
        help="with --energy-save: drop baseline entries of tests this session did not collect",
    )
    group.addoption(
        "--energy-gate",
        metavar="METERS",
        default=None,
        help="meters whose verdicts decide the exit status: auto (default: the measured meters "
        "if any ran, else counted, else cputime) or a comma list; ini energy_gate",
    )
    group.addoption(
        "--energy-alpha",
        metavar="ALPHA",
        default=None,
        help=f"significance level of each side of a noisy meter's interval of the change "
        f"between sessions (default {DEFAULT_ALPHA:g}; ini energy_alpha)",
    )
    group.addoption(
        "--energy-keep-sessions",
        metavar="K",
        default=None,
        help=f"sessions a noisy meter's baseline entry keeps: --energy-save appends this one "
        f"and drops the oldest beyond K (default {DEFAULT_KEEP_SESSIONS}; ini "
        f"energy_keep_sessions)",
    )
    group.addoption(
        "--energy-fail-on-improvement",
        action="store_true",
        default=False,
        help="fail the run when a test improved beyond tolerance too (its baseline is stale)",
    )
    group.addoption(
        "--energy-train-rounds",
        metavar="N",
        default=None,
        help="run each lifecycle test's body N times and record each TEC (train_repeats); "
        "the gate judges the noise between sessions, not these repeats (default 1; ini "
        "energy_train_rounds)",
    )
    parser.addini("energy_baselines", "directory of the baseline files", default="")
    parser.addini("energy_gate", "meters that gate: auto or a comma list", default="")
    parser.addini("energy_alpha", "significance level of the session rules", default="")
    parser.addini("energy_keep_sessions", "sessions kept per noisy baseline entry", default="")
    parser.addini("energy_train_rounds", "runs of each test body for training noise", default="")


def parse_alpha(value: Any, where: str = "--energy-alpha") -> float:
    """A significance level strictly between 0 and 1."""
    return parse_number(
        value, where, "a probability between 0 and 1 such as 0.01", 0.0, 1.0, inclusive=False
    )


def parse_gate(
    value: str | None, meters: Mapping[str, str], where: str = "--energy-gate"
) -> list[str]:
    """``auto`` or a comma list of meters in use (``meters``: name → kind)."""
    names = [part.strip() for part in (value or "auto").replace(" ", ",").split(",") if part]
    if names in ([], ["auto"]):
        return default_gate(meters)
    unknown = [name for name in names if name not in meters]
    if unknown:
        raise ConfigError(
            f"{where}: {', '.join(unknown)} not in use in this run "
            f"(meters: {', '.join(meters) or 'none'}); choose from those or auto"
        )
    return list(dict.fromkeys(names))


@dataclass(frozen=True)
class GateSettings:
    """The gate's options, parsed."""

    directory: Path
    save: bool = False
    prune: bool = False
    gate: str | None = None
    alpha: float = DEFAULT_ALPHA
    fail_on_improvement: bool = False
    train_rounds: int = 1
    keep_sessions: int = DEFAULT_KEEP_SESSIONS


def _setting(config: pytest.Config, option: str, ini: str) -> Any:
    value = config.getoption(option)
    return value if value is not None else (config.getini(ini) or None)


def gate_settings(config: pytest.Config) -> GateSettings:
    """Read and validate the options; ``ConfigError`` names the bad one."""
    directory = _setting(config, "--energy-baselines", "energy_baselines") or DEFAULT_DIRECTORY
    alpha = _setting(config, "--energy-alpha", "energy_alpha")
    rounds = _setting(config, "--energy-train-rounds", "energy_train_rounds")
    keep = _setting(config, "--energy-keep-sessions", "energy_keep_sessions")
    save, prune = config.getoption("--energy-save"), config.getoption("--energy-prune")
    enabled = config.getoption("--energy")
    if save and not enabled:
        raise ConfigError("--energy-save needs --energy (there is nothing to save otherwise)")
    if prune and not save:
        raise ConfigError("--energy-prune works with --energy-save (it prunes while saving)")
    return GateSettings(
        directory=Path(config.rootpath, directory),
        save=save,
        prune=prune,
        gate=_setting(config, "--energy-gate", "energy_gate"),
        alpha=parse_alpha(alpha) if alpha else DEFAULT_ALPHA,
        fail_on_improvement=config.getoption("--energy-fail-on-improvement"),
        train_rounds=parse_positive_int(rounds, "--energy-train-rounds") if rounds else 1,
        keep_sessions=(
            parse_positive_int(keep, "--energy-keep-sessions") if keep else DEFAULT_KEEP_SESSIONS
        ),
    )


def _profile_or_fallback(meter: Meter) -> Profile:
    """The meter's profile; an NVML query that fails leaves GPU names only, never a crash."""
    try:
        return profile_for(meter)
    except Exception:
        if meter.name == "nvml":
            gpus = meter.describe().get("gpus", {})
            return make_profile(
                meter.name,
                meter.kind,
                {
                    "gpus": [
                        {"name": gpus[domain].get("name", "unknown")} for domain in sorted(gpus)
                    ]
                },
            )
        return make_profile(meter.name, meter.kind, cpu_fingerprint())


def _is_xdist_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def _reports_here() -> bool:
    """False on torch.distributed ranks other than 0: rank 0 compares and saves for all."""
    try:
        from pytest_energy.distributed import reports_here
    except ImportError:  # a build without distributed support: a single process reports
        return True
    return reports_here()


class RegressionGate:
    """Compares the run with its baselines, saves them, and fails the run on a regression."""

    def __init__(
        self, config: pytest.Config, energy_session: EnergySession, settings: GateSettings
    ) -> None:
        self.config = config
        self.energy_session = energy_session
        self.settings = settings
        self.controller = not _is_xdist_worker(config)
        self.active = energy_session.enabled and self.controller and _reports_here()
        kinds = {meter.name: meter.kind for meter in energy_session.meters}
        self.gate = parse_gate(settings.gate, kinds) if energy_session.enabled else []
        self.profiles: dict[str, Profile] = {}
        self.baselines: dict[str, BaselineFile | None] = {}
        self.collected: set[str] = set()
        self.deselected: set[str] = set()
        """Collected, then left out by ``-k``/``-m``: they still exist, so prune keeps them."""
        self.report: ComparisonReport | None = None
        self.saved: list[SaveResult] = []
        self.problems: list[str] = []
        self._repeating = False
        if self.active:
            self._load()

    @classmethod
    def from_config(cls, config: pytest.Config, energy_session: EnergySession) -> RegressionGate:
        return cls(config, energy_session, gate_settings(config))

    def _load(self) -> None:
        """Profiles of the meters in use and their baseline files; a bad file stops the run."""
        if self.settings.save:
            check_writable(self.settings.directory)
        for meter in self.energy_session.meters:
            profile = _profile_or_fallback(meter)
            self.profiles[meter.name] = profile
            self.baselines[meter.name] = load_baseline(
                baseline_path(self.settings.directory, profile), profile
            )
        refuse_overwriting_inputs(
            {flag: self.config.getoption(flag, None) for flag in OUTPUT_OPTIONS},
            [baseline_path(self.settings.directory, profile) for profile in self.profiles.values()],
        )

    def _shown(self, path: Path) -> str:
        """A path as the user gave it: relative to the rootdir when it is inside."""
        try:
            return str(Path(path).resolve().relative_to(self.config.rootpath.resolve()))
        except ValueError:
            return str(path)

    # --- hooks ---------------------------------------------------------------------------------

    def pytest_report_header(self, config: pytest.Config) -> list[str]:
        if not self.active:
            return []
        files = []
        for meter, profile in self.profiles.items():
            baseline = self.baselines.get(meter)
            count = f"{len(baseline.tests)} tests" if baseline else "none yet"
            files.append(f"{profile.name}.json ({count})")
        lines = [
            f"energy: gate {', '.join(self.gate) or '(none)'}; baselines in "
            f"{self._shown(self.settings.directory)}/: {', '.join(files)}"
        ]
        return lines + [f"energy: warning: {warning}" for warning in self.warnings()]

    def warnings(self) -> list[str]:
        """Baselines under which a noisy gate cannot judge, said before the tests run."""
        warnings = []
        for meter in self.energy_session.meters:
            baseline = self.baselines.get(meter.name)
            if meter.name not in self.gate or meter.deterministic or not baseline:
                continue
            counts = [len(entry_sessions(entry, meter.name)) for entry in baseline.tests.values()]
            fewest = min(counts, default=MIN_SESSIONS)
            if fewest < MIN_SESSIONS:
                warnings.append(
                    f"{meter.name} gates, but {self._shown(baseline.path)} holds only {fewest} "
                    f"session(s) of some tests: the noise between sessions is unknown and no "
                    f"change can be significant; record more with `pytest-energy record "
                    f"--sessions 5` (or repeat --energy-save)"
                )
        return warnings

    def pytest_itemcollected(self, item: pytest.Item) -> None:
        self.collected.add(item.nodeid)

    def pytest_deselected(self, items: Sequence[pytest.Item]) -> None:
        self.deselected.update(item.nodeid for item in items)

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_node_collection_finished(self, node: Any, ids: Sequence[str]) -> None:
        self.collected.update(ids)

    @pytest.hookimpl(hookwrapper=True)
    def pytest_pyfunc_call(self, pyfuncitem: pytest.Function) -> Iterator[None]:
        """Run a lifecycle test's body again ``--energy-train-rounds`` − 1 times (noise)."""
        outcome = yield
        fixture = pyfuncitem.funcargs.get("energy")
        if (
            self._repeating
            or self.settings.train_rounds < 2
            or outcome.excinfo is not None
            or not isinstance(fixture, EnergyFixture)
            or not fixture.enabled
            or not any(not phase.charged for phase in fixture.phases)
        ):
            return
        self._repeating = True
        try:
            for _ in range(self.settings.train_rounds - 1):
                fixture.repeat_training()
                pyfuncitem.ihook.pytest_pyfunc_call(pyfuncitem=pyfuncitem)
        finally:
            fixture.end_repeats()
            self._repeating = False

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        """Compare, then save (``--energy-save``), then set the exit status."""
        if not self.active:
            return
        results = self.energy_session.results
        self.report = compare_snapshots(
            self._current_snapshot(results),
            self._baseline_snapshot(),
            gate=self.gate,
            alpha=self.settings.alpha,
        )
        if self.settings.save:
            if session.exitstatus == pytest.ExitCode.INTERRUPTED:
                self.problems.append("--energy-save: the run was interrupted; nothing was saved")
            else:
                self._save(results)
        failing = self.report.regressed or (
            self.settings.fail_on_improvement and self.report.improved
        )
        if session.exitstatus == pytest.ExitCode.OK:
            if self.problems:
                session.exitstatus = pytest.ExitCode.USAGE_ERROR
            elif failing and not self.settings.save:
                session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def _run_provenance(self) -> dict[str, Provenance]:
        versions = machine_info()["versions"]
        return {
            meter.name: Provenance(
                source="this run",
                profile=self.profiles.get(meter.name),
                meter=meter.describe(),
                versions=versions,
            )
            for meter in self.energy_session.meters
        }

    def _current_snapshot(
        self, results: Mapping[str, Mapping[str, Any]]
    ) -> dict[str, dict[str, Recorded]]:
        provenance = self._run_provenance()
        return {
            nodeid: {
                meter: Recorded(record, provenance[meter])
                for meter in record.get("meters", {})
                if meter in provenance
            }
            for nodeid, record in results.items()
        }

    def _baseline_snapshot(self) -> dict[str, dict[str, Recorded]]:
        return merged_snapshot(
            BaselineFile(Path(self._shown(baseline.path)), baseline.profile, baseline.tests)
            for baseline in self.baselines.values()
            if baseline is not None
        )

    def _save(self, results: Mapping[str, Mapping[str, Any]]) -> None:
        provenance = run_provenance(self.config.rootpath)
        keep_only = self.collected if self.settings.prune and self.collected else None
        for meter in self.energy_session.meters:
            entries = {
                nodeid: baseline_entry(record, meter.name, provenance, meter.describe())
                for nodeid, record in results.items()
                if meter.name in record.get("meters", {})
            }
            if not entries and keep_only is None:
                continue
            try:
                self.saved.append(
                    save_baseline(
                        self.settings.directory,
                        self.profiles[meter.name],
                        entries,
                        keep_only=keep_only,
                        keep_sessions=self.settings.keep_sessions,
                    )
                )
            except BaselineError as error:
                self.problems.append(str(error))

    @pytest.hookimpl(trylast=True)
    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not self.active or self.report is None:
            return
        write = terminalreporter.write_line
        terminalreporter.section("energy gate")
        for line in summary_lines(
            self.report,
            self.settings.fail_on_improvement,
            self.config.option.verbose > 0,
            collected=self.collected - self.deselected,
        ):
            red = line.startswith("REGRESSED") or (
                line.startswith("improved") and self.settings.fail_on_improvement
            )
            write(line, red=red, yellow=line.startswith(("incomparable", "warning")))
        for meter, profile in self.profiles.items():
            if self.baselines.get(meter) is None:
                others = other_profiles(self.settings.directory, profile)
                if others:
                    write(
                        f"no {profile.name}.json: baselines of {meter} on other hardware "
                        f"({', '.join(others)}) never gate this machine"
                    )
        for saved in self.saved:
            pruned = f", {len(saved.pruned)} pruned" if saved.pruned else ""
            write(f"baseline saved: {self._shown(saved.path)} ({len(saved.written)} tests{pruned})")
        for warning in self.warnings():
            write(f"warning: {warning}", yellow=True)
        for problem in self.problems:
            write(problem, red=True)
        if self.settings.save and self.report.regressed:
            write("regressions accepted into the baselines (--energy-save)", yellow=True)
        elif self.report.regressed:
            tests = len({test.nodeid for test, _ in self.report.findings("regressed")})
            write(f"energy regression in {tests} test(s): failing the run", red=True)

    def results_extras(self) -> dict[str, Any]:
        """What the results JSON adds: each meter's profile and the comparison."""
        extras: dict[str, Any] = {
            "profiles": {meter: profile.to_dict() for meter, profile in self.profiles.items()}
        }
        if self.report is not None:
            extras["comparison"] = self.report.to_dict()
        return extras
