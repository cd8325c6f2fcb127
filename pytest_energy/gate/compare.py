"""Compare two sets of test records (a baseline and a run): pure data in, dataclasses out.

The result is a small tree of numbers and verdicts; ``pytest_energy.report`` renders it (terminal,
markdown, PR comments) and ``comparison_from_dict`` reads its JSON form back:

    ComparisonReport                       the whole comparison; ``to_dict()`` for JSON
      .tests: [TestComparison]             one per test of the current run, sorted by node id
        .verdict                           over the gating meters (see ``VERDICT_URGENCY``)
        .meters: [MeterComparison]         one per meter that measured the test
          .verdict, .reason, .warnings     e.g. incomparable: "baseline from another GPU"
          .gating, .baseline_source        does it decide the exit status; which file
          .quantities: [QuantityComparison]
              quantity  tec | iec | full_cycle | greenness
              usage     MUI for full_cycle and greenness, else None
              baseline, current, change_percent, tolerance_percent, verdict, note,
              detectable_percent, interval_percent, sessions   (noisy meters)
      .not_run: [node ids]                 in the baseline, not in this run
      .gate, .alpha                        the meters that gate, the significance level

Verdicts: ``regressed`` and ``improved`` (beyond tolerance and, for noisy meters, beyond
the noise between sessions: see ``pytest_energy.gate.rules``), ``unchanged``, ``new`` (no
baseline to compare with) and ``incomparable`` (a baseline exists but must not be trusted:
another CPU or GPU, another wattage or energy table; ``reason`` says which). Greenness G(MUI)
is reported with its change but has no verdict of its own: it also moves with accuracy, which
is not an energy regression.

Noisy meters (``measured``, ``estimated``) are judged on sessions (``rules.judge_history``
against the baseline's last sessions, or ``rules.judge_paired`` on A/B pairs), and every such
verdict carries the smallest change it could have detected.

A baseline recorded with **another torch or torchvision version**: for ``counted`` it is
compared and its verdict stands, with a warning (the count changes only when the operators run
change, which is exactly what CI should catch). For noisy meters it is ``incomparable``: a new
library build moves timing and energy by more than the tolerance on its own, and the session
history no longer describes the code under test. Another GPU or CPU is never comparable.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from pytest_energy.config import Tolerance, parse_tolerance
from pytest_energy.errors import ConfigError, ReportError
from pytest_energy.gate.profiles import Profile, hardware_difference
from pytest_energy.gate.rules import (
    DEFAULT_ALPHA,
    Decision,
    geometric_mean,
    judge_exact,
    judge_history,
    judge_paired,
)
from pytest_energy.gate.sessions import VERSIONED_LIBRARIES, entry_sessions, session_figure
from pytest_energy.lifecycle import format_usage, greenness
from pytest_energy.meters.base import capabilities
from pytest_energy.record import MeterFigures

Rule = Literal["exact", "history", "pairs"]
Verdict = Literal["regressed", "improved", "unchanged", "new", "incomparable"]
VERDICTS: tuple[Verdict, ...] = ("regressed", "improved", "unchanged", "new", "incomparable")
"""Every verdict, in the order counts are listed."""
VERDICT_URGENCY: tuple[Verdict, ...] = (
    "regressed",
    "incomparable",
    "improved",
    "new",
    "unchanged",
)
"""Most urgent first: a test's verdict is the first of these that any of its gating meters has,
and reports list rows and families in this order. The one ranking of verdicts."""

QUANTITY_UNITS = {"tec": "J", "iec": "J/sample", "full_cycle": "J", "greenness": "1/J"}
QUANTITY_LABELS = {"tec": "TEC", "iec": "IEC", "full_cycle": "E", "greenness": "G"}
SETTINGS_THAT_CHANGE_FIGURES = {
    "cputime": ("watts_per_thread",),
    "counted": ("energy_table_picojoules",),
}
"""Meter settings that scale every figure: a baseline taken with others is incomparable."""


@dataclass(frozen=True)
class Provenance:
    """Where one side of a comparison was recorded.

    Attributes:
        source: the file it came from (``baselines/counted.json``) or ``"this run"``.
        profile: the meter and hardware (``None`` when unknown).
        meter: the meter's own description (``Meter.describe()``), e.g. its wattage.
        versions: library versions, e.g. ``{"torch": "2.15.0"}``.
        commit: the git commit it was recorded at, when known.
        date: ISO 8601 date and time it was recorded, when known.
    """

    source: str
    profile: Profile | None = None
    meter: Mapping[str, Any] = field(default_factory=dict)
    versions: Mapping[str, str | None] = field(default_factory=dict)
    commit: str | None = None
    date: str | None = None


@dataclass(frozen=True)
class Recorded:
    """One test's record (the results schema) and where it was recorded, for one meter."""

    record: Mapping[str, Any]
    provenance: Provenance


Snapshot = Mapping[str, Mapping[str, Recorded]]
"""node id → meter name → Recorded: everything one side of a comparison knows."""


@dataclass(frozen=True)
class QuantityComparison:
    """One figure of one test under one meter, before and after.

    ``change_percent`` is ``100 × (current − baseline) / baseline`` (``None`` when either is
    missing or the baseline is 0); ``verdict`` is ``None`` for greenness (informational).
    """

    quantity: Literal["tec", "iec", "full_cycle", "greenness"]
    usage: float | None
    unit: str
    baseline: float | None
    current: float | None
    change_percent: float | None
    tolerance_percent: float | None
    verdict: Verdict | None
    note: str = ""
    detectable_percent: float | None = None
    interval_percent: tuple[float, float] | None = None
    sessions: int | None = None
    noise_hides_tolerance: bool = False

    @property
    def label(self) -> str:
        """``TEC``, ``IEC``, ``E(MUI=1e6)``, ``G(MUI=1e6)``."""
        name = QUANTITY_LABELS[self.quantity]
        return name if self.usage is None else f"{name}(MUI={format_usage(self.usage)})"


@dataclass(frozen=True)
class MeterComparison:
    """One test under one meter: its verdict, why, and each quantity.

    Attributes:
        meter, kind: the meter and its kind (``measured``, ``estimated``, ``counted``).
        gating: whether this meter's verdict decides the exit status.
        verdict: see the module docstring.
        rule: ``exact`` (counted), ``history`` (this session against the baseline's
            sessions) or ``pairs`` (A/B pairs of sessions).
        reason: why the verdict is ``new`` or ``incomparable`` (empty otherwise).
        warnings: things the reader should know, e.g. another torch version.
        baseline_source: the baseline file compared against (``None`` for ``new``).
        detection: for noisy rules, what the comparison could see, e.g. "8 baseline
            sessions: could detect TEC ≥ 12 %, IEC ≥ 31 %; noise hides the 5 % tolerance".
        quantities: TEC, IEC, then E(MUI) and G(MUI) per usage.
    """

    meter: str
    kind: str
    gating: bool
    verdict: Verdict
    rule: Rule
    reason: str = ""
    warnings: tuple[str, ...] = ()
    baseline_source: str | None = None
    detection: str = ""
    quantities: tuple[QuantityComparison, ...] = ()

    def judged(self, verdict: Verdict) -> list[QuantityComparison]:
        """The quantities with this verdict, e.g. ``judged("regressed")``."""
        return [quantity for quantity in self.quantities if quantity.verdict == verdict]

    def quantity(self, name: str, usage: float | None = None) -> QuantityComparison | None:
        """``quantity("tec")``, ``quantity("full_cycle", 1e6)``; ``None`` when not compared."""
        return next((q for q in self.quantities if q.quantity == name and q.usage == usage), None)

    @property
    def too_few_sessions(self) -> bool:
        """A noisy rule had too few sessions (or pairs) to judge: ``unchanged`` claims nothing."""
        return self.rule != "exact" and any(
            q.sessions is not None and q.detectable_percent is None
            for q in self.quantities
            if q.verdict is not None
        )

    @property
    def full_cycle(self) -> dict[float, QuantityComparison]:
        """E(MUI) comparisons by usage."""
        return {
            q.usage: q
            for q in self.quantities
            if q.quantity == "full_cycle" and q.usage is not None
        }


@dataclass(frozen=True)
class TestComparison:
    """One test: its verdict over the gating meters, and every meter's comparison."""

    __test__ = False  # not a pytest test class, despite the name

    nodeid: str
    labels: Mapping[str, str]
    verdict: Verdict
    meters: tuple[MeterComparison, ...]

    def meter(self, name: str) -> MeterComparison | None:
        return next((meter for meter in self.meters if meter.meter == name), None)


@dataclass(frozen=True)
class ComparisonReport:
    """A whole comparison; ``to_dict()`` is its JSON form (``schema`` pytest-energy/comparison)."""

    tests: tuple[TestComparison, ...]
    gate: tuple[str, ...]
    alpha: float
    not_run: tuple[str, ...] = ()
    provenance: str = ""
    """How the two sides were obtained, e.g. "A/B, 5 pairs" (empty: a run against baselines)."""

    def with_verdict(self, verdict: Verdict) -> list[TestComparison]:
        """Tests whose (gating) verdict is ``verdict``."""
        return [test for test in self.tests if test.verdict == verdict]

    def findings(
        self, verdict: Verdict, gating: bool = True
    ) -> list[tuple[TestComparison, MeterComparison]]:
        """(test, meter) pairs with this meter verdict, gating meters only by default."""
        return [
            (test, meter)
            for test in self.tests
            for meter in test.meters
            if meter.verdict == verdict and (meter.gating or not gating)
        ]

    def meter_of(self, nodeid: str, meter: str) -> MeterComparison | None:
        """One test's comparison under one meter; ``None`` when that pair was not compared."""
        test = next((test for test in self.tests if test.nodeid == nodeid), None)
        return None if test is None else test.meter(meter)

    @property
    def baseline_sources(self) -> tuple[str, ...]:
        """The baseline files compared against, sorted."""
        return tuple(
            sorted(
                {
                    meter.baseline_source
                    for test in self.tests
                    for meter in test.meters
                    if meter.baseline_source is not None
                }
            )
        )

    @property
    def regressed(self) -> bool:
        """True when a gating meter found a regression: the run should fail."""
        return bool(self.findings("regressed"))

    @property
    def improved(self) -> bool:
        return bool(self.findings("improved"))

    def counts(self) -> dict[str, int]:
        """Tests per verdict, every verdict present (0 when none)."""
        return {verdict: len(self.with_verdict(verdict)) for verdict in VERDICTS}

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": "pytest-energy/comparison",
            "version": 1,
            "gate": list(self.gate),
            "alpha": self.alpha,
            "provenance": self.provenance,
            "counts": self.counts(),
            "not_run": list(self.not_run),
            "tests": [
                {
                    "nodeid": test.nodeid,
                    "labels": dict(test.labels),
                    "verdict": test.verdict,
                    "meters": [_meter_dict(meter) for meter in test.meters],
                }
                for test in self.tests
            ],
        }


def _meter_dict(meter: MeterComparison) -> dict[str, Any]:
    data = asdict(meter)
    data["warnings"] = list(meter.warnings)
    data["quantities"] = [
        {**asdict(quantity), "label": quantity.label} for quantity in meter.quantities
    ]
    return data


def _percent(fraction: float | None) -> float | None:
    return None if fraction is None else 100.0 * fraction


def default_gate(kinds: Mapping[str, str]) -> list[str]:
    """The meters that gate when ``--energy-gate`` is not given.

    Every measured meter if any ran (a real energy counter is the truth); else ``counted``
    (deterministic, so a shared CI runner cannot cry wolf); else the estimated meters, since
    something has to gate and their rounds are judged with significance tests.
    """
    for wanted in ("measured", "counted", "estimated"):
        chosen = [meter for meter, kind in kinds.items() if kind == wanted]
        if chosen:
            return sorted(chosen)
    return []


def _tolerance_of(record: Mapping[str, Any], override: Tolerance | None) -> Tolerance:
    if override is not None:
        return override
    try:
        return parse_tolerance(record.get("tolerance") or {}, "tolerance")
    except ConfigError:
        return Tolerance()


def _settings_difference(
    meter: str, before: Mapping[str, Any], now: Mapping[str, Any]
) -> str | None:
    for key in SETTINGS_THAT_CHANGE_FIGURES.get(meter, ()):
        if key not in before or key not in now:
            continue
        old, new = before[key], now[key]
        same = (
            math.isclose(old, new, rel_tol=1e-9)
            if isinstance(old, (int, float)) and isinstance(new, (int, float))
            else old == new
        )
        if not same:
            return f"baseline taken with another {meter} {key.replace('_', ' ')} ({old} vs {new})"
    return None


def _company_difference(kind: str, before: Mapping[str, Any], now: Mapping[str, Any]) -> str | None:
    """A timed meter beside ``counted`` in one run and not the other measured different work.

    The counted meter's dispatch mode slows every operator in a training window, and a timed
    meter in that window charges the slowdown. Records without ``alongside`` are not checked.
    """
    if capabilities(kind).counts_operations or "alongside" not in before or "alongside" not in now:
        return None
    counted_before = "counted" in before["alongside"]
    counted_now = "counted" in now["alongside"]
    if counted_before == counted_now:
        return None
    with_, without = (
        ("the baseline", "this run") if counted_before else ("this run", "the baseline")
    )
    return (
        f"{with_} trained beside the counted meter and {without} did not: counting slows the "
        f"work it measures (use the same --energy-meter for both)"
    )


def _version_differences(before: Provenance, now: Provenance) -> list[str]:
    differences = []
    for library in VERSIONED_LIBRARIES:
        old, new = before.versions.get(library), now.versions.get(library)
        if old and new and old != new:
            differences.append(f"{library} {old} vs {new}")
    return differences


def _quantity(
    quantity: Literal["tec", "iec", "full_cycle", "greenness"],
    usage: float | None,
    baseline: float | None,
    current: float | None,
    tolerance: float | None,
    decision: Decision | None,
    verdict: Verdict | None = None,
    note: str = "",
) -> QuantityComparison:
    detectable = interval = sessions = None
    hides = False
    if decision is not None:
        verdict = decision.verdict
        note = decision.note
        change = decision.change
        detectable = _percent(decision.detectable)
        if decision.interval is not None:
            interval = (100.0 * decision.interval[0], 100.0 * decision.interval[1])
        sessions = decision.sessions
        hides = decision.noise_hides_tolerance
    elif baseline is None or current is None or baseline == 0:
        change = None
    else:
        change = (current - baseline) / abs(baseline)
    return QuantityComparison(
        quantity=quantity,
        usage=usage,
        unit=QUANTITY_UNITS[quantity],
        baseline=baseline,
        current=current,
        change_percent=_percent(change),
        tolerance_percent=_percent(tolerance),
        verdict=verdict,
        note=note,
        detectable_percent=detectable,
        interval_percent=interval,
        sessions=sessions,
        noise_hides_tolerance=hides,
    )


def _session_decision(
    quantity: str,
    usage: float | None,
    now: Sequence[Mapping[str, Any]],
    before: Sequence[Mapping[str, Any]],
    tolerance: float,
    alpha: float,
    rule: Rule,
) -> tuple[float, float, Decision] | None:
    """(baseline figure, current figure, decision) of a noisy quantity; ``None`` if absent."""
    figures_now = [session_figure(session, quantity, usage) for session in now]
    figures_before = [session_figure(session, quantity, usage) for session in before]
    if not figures_now or not figures_before or None in figures_now + figures_before:
        return None
    head = [float(value) for value in figures_now if value is not None]
    base = [float(value) for value in figures_before if value is not None]
    if rule == "pairs":
        head, base = head[-len(base) :], base[-len(head) :]
    if min(head + base) <= 0:  # a session read 0 J: no log scale; say so, judge the totals
        current, baseline = sum(head) / len(head), sum(base) / len(base)
        decision = judge_exact(current, baseline, tolerance)
        return (
            baseline,
            current,
            Decision(decision.verdict, decision.change, note="a session read 0 J"),
        )
    if rule == "pairs":
        return (
            geometric_mean(base),
            geometric_mean(head),
            judge_paired(head, base, tolerance, alpha),
        )
    return geometric_mean(base), geometric_mean(head), judge_history(head, base, tolerance, alpha)


def _detection(
    rule: Rule, quantities: Sequence[QuantityComparison], verdict: Verdict, head_sessions: int
) -> str:
    """One line on what a noisy comparison could see: sessions, detectable TEC and IEC; for a
    regression judged on one session, how to confirm it on several."""
    judged = [q for q in quantities if q.verdict is not None and q.quantity in ("tec", "iec")]
    counted = [q.sessions for q in judged if q.sessions is not None]
    if not judged or not counted:
        return ""
    what = "pairs" if rule == "pairs" else "baseline sessions"
    sessions = f"{max(counted)} {what}"
    detectable = [
        f"{QUANTITY_LABELS[q.quantity]} ≥ {q.detectable_percent:.0f} %"
        for q in judged
        if q.detectable_percent is not None
    ]
    if not detectable:
        return f"{sessions}: too few to judge the noise between sessions"
    line = f"{sessions}: could detect {', '.join(detectable)}"
    hidden = [q for q in judged if q.noise_hides_tolerance]
    if hidden:
        tolerance = hidden[0].tolerance_percent or 0.0
        names = ", ".join(QUANTITY_LABELS[q.quantity] for q in hidden)
        line += f"; noise hides the {tolerance:g} % tolerance ({names})"
    if rule == "history" and head_sessions == 1 and verdict == "regressed":
        line += (
            "; judged on one session, and a session now and then runs far slower: confirm on "
            "several with `pytest-energy check --sessions 3`"
        )
    return line


def compare_meter(
    meter: str,
    current: Recorded,
    baseline: Recorded | None,
    *,
    gating: bool,
    alpha: float = DEFAULT_ALPHA,
    tolerance: Tolerance | None = None,
    paired: bool = False,
    head_sessions: int = 1,
) -> MeterComparison:
    """Compare one test's figures under one meter with its baseline (``None``: no baseline).

    Noisy meters compare sessions: ``current`` is this run (its record) and ``baseline`` an
    entry with its last sessions (``paired``: both sides hold A/B sessions, pair by pair). A run
    is one session, or the last ``head_sessions`` sessions of ``current`` (``pytest-energy
    check``).
    """
    now = current.record["meters"][meter]
    kind = str(now.get("kind"))
    rule: Rule = "exact" if capabilities(kind).deterministic else ("pairs" if paired else "history")
    common = {"meter": meter, "kind": kind, "gating": gating, "rule": rule}
    if baseline is None or meter not in baseline.record.get("meters", {}):
        return MeterComparison(**common, verdict="new", reason="no baseline for this test")
    before = baseline.record["meters"][meter]
    source = baseline.provenance.source
    reason = None
    if before.get("kind") != kind:
        reason = f"baseline measured by a {before.get('kind')} meter, this run by a {kind} one"
    elif (
        not capabilities(kind).deterministic
        and baseline.provenance.profile is not None
        and current.provenance.profile is not None
    ):
        reason = hardware_difference(
            baseline.provenance.profile.fingerprint, current.provenance.profile.fingerprint
        )
    versions = _version_differences(baseline.provenance, current.provenance)
    if not reason and versions and rule != "exact":
        reason = (
            f"{', '.join(versions)}: a noisy meter's sessions under another library build "
            f"measured other code; record a new baseline (pytest-energy record --sessions 5)"
        )
    reason = (
        reason
        or _settings_difference(meter, baseline.provenance.meter, current.provenance.meter)
        or _company_difference(kind, before, now)
    )
    warnings = tuple(
        f"{difference}: the baseline was recorded with another version; its verdict stands "
        f"(refresh with --energy-save once the change is accepted)"
        for difference in (versions if rule == "exact" else [])
    )
    if reason:
        return MeterComparison(
            **common,
            verdict="incomparable",
            reason=reason,
            warnings=warnings,
            baseline_source=source,
        )

    limits = _tolerance_of(current.record, tolerance)
    sessions_now = entry_sessions(current.record, meter)
    sessions_before = entry_sessions(baseline.record, meter)
    if rule == "history":
        sessions_now = sessions_now[-head_sessions:]

    def judged(quantity: str, usage: float | None, limit: float, exact_now: Any, exact_before: Any):
        if rule == "exact":
            if exact_now is None or exact_before is None:
                return None
            now_value, before_value = float(exact_now), float(exact_before)
            return before_value, now_value, judge_exact(now_value, before_value, limit)
        return _session_decision(quantity, usage, sessions_now, sessions_before, limit, alpha, rule)

    figures_now, figures_before = MeterFigures.from_json(now), MeterFigures.from_json(before)
    tec_now, tec_before = figures_now.tec_joules, figures_before.tec_joules
    tec = judged("tec", None, limits.train, tec_now, tec_before)
    quantities = []
    if tec is not None:
        quantities.append(_quantity("tec", None, tec[0], tec[1], limits.train, tec[2]))
    iec_now, iec_before = figures_now.iec_joules_per_sample, figures_before.iec_joules_per_sample
    iec = judged("iec", None, limits.inference, iec_now, iec_before)
    if iec is not None:
        quantities.append(_quantity("iec", None, iec[0], iec[1], limits.inference, iec[2]))
    elif iec_now is not None or iec_before is not None:
        missing_verdict: Verdict = "new" if iec_before is None else "incomparable"
        note = (
            "the baseline measured no inference"
            if iec_before is None
            else "this run measured no inference"
        )
        quantities.append(
            _quantity(
                "iec", None, iec_before, iec_now, limits.inference, None, missing_verdict, note
            )
        )

    accuracy_now, accuracy_before = current.record.get("accuracy"), baseline.record.get("accuracy")
    tau = float(current.record.get("tau", 1.0))
    for usage in sorted(float(mui) for mui in current.record.get("usage", [])):
        if iec is None:
            continue
        full = judged(
            "full_cycle",
            usage,
            limits.full_cycle,
            figures_now.full_cycle_joules(usage),
            figures_before.full_cycle_joules(usage),
        )
        if full is None:
            continue
        full_before, full_now, decision = full
        quantities.append(
            _quantity("full_cycle", usage, full_before, full_now, limits.full_cycle, decision)
        )
        quantities.append(
            _quantity(
                "greenness",
                usage,
                greenness(accuracy_before, full_before, tau),
                greenness(accuracy_now, full_now, tau),
                None,
                None,
                note="informational: greenness also moves with accuracy",
            )
        )
    verdict = _meter_verdict(quantities)
    return MeterComparison(
        **common,
        verdict=verdict,
        warnings=warnings,
        baseline_source=source,
        detection="" if rule == "exact" else _detection(rule, quantities, verdict, head_sessions),
        quantities=tuple(quantities),
    )


def most_urgent(verdicts: Iterable[str | None]) -> Verdict:
    """The first of ``verdicts`` in ``VERDICT_URGENCY`` (``new`` when none is known)."""
    found = set(verdicts)
    return next((verdict for verdict in VERDICT_URGENCY if verdict in found), "new")


def _meter_verdict(quantities: Sequence[QuantityComparison]) -> Verdict:
    """A quantity that is merely ``new`` (no baseline inference) never outranks a judged one."""
    return most_urgent(q.verdict for q in quantities if q.verdict != "new")


def _test_verdict(meters: Iterable[MeterComparison]) -> Verdict:
    meters = list(meters)
    deciding = [meter for meter in meters if meter.gating] or meters
    return most_urgent(meter.verdict for meter in deciding)


def compare_snapshots(
    current: Snapshot,
    baseline: Snapshot,
    *,
    gate: Sequence[str] | None = None,
    alpha: float = DEFAULT_ALPHA,
    tolerance: Tolerance | None = None,
    paired: bool = False,
    head_sessions: int = 1,
    provenance: str = "",
) -> ComparisonReport:
    """Compare every test of ``current`` with ``baseline``.

    ``gate``: the meters whose verdicts decide (default: ``default_gate`` of the meters that
    ran). ``tolerance`` overrides each test's own recorded tolerance. ``paired``: both sides
    hold A/B sessions (``pytest-energy ab``); ``head_sessions``: the last sessions of each
    current record that belong to this run (``pytest-energy check``); ``provenance`` says so
    in reports.
    """
    if gate is None:
        kinds = {
            meter: str(recorded.record["meters"][meter].get("kind"))
            for meters in current.values()
            for meter, recorded in meters.items()
        }
        gate = default_gate(kinds)
    tests = []
    for nodeid in sorted(current):
        meters = tuple(
            compare_meter(
                meter,
                recorded,
                baseline.get(nodeid, {}).get(meter),
                gating=meter in gate,
                alpha=alpha,
                tolerance=tolerance,
                paired=paired,
                head_sessions=head_sessions,
            )
            for meter, recorded in sorted(current[nodeid].items())
        )
        labels = next(iter(current[nodeid].values())).record.get("labels", {}) if meters else {}
        tests.append(TestComparison(nodeid, dict(labels), _test_verdict(meters), meters))
    return ComparisonReport(
        tests=tuple(tests),
        gate=tuple(gate),
        alpha=alpha,
        not_run=tuple(sorted(set(baseline) - set(current))),
        provenance=provenance,
    )


# --- reading a comparison back --------------------------------------------------------------


def _number(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _quantity_from_dict(data: Mapping[str, Any]) -> QuantityComparison | None:
    name = data.get("quantity")
    if name not in QUANTITY_UNITS:
        return None
    interval = data.get("interval_percent")
    low, high = (_number(interval[0]), _number(interval[1])) if interval else (None, None)
    sessions = data.get("sessions")
    verdict = data.get("verdict")
    return QuantityComparison(
        quantity=name,
        usage=_number(data.get("usage")),
        unit=QUANTITY_UNITS[name],
        baseline=_number(data.get("baseline")),
        current=_number(data.get("current")),
        change_percent=_number(data.get("change_percent")),
        tolerance_percent=_number(data.get("tolerance_percent")),
        verdict=verdict if verdict in VERDICTS else None,
        note=str(data.get("note") or ""),
        detectable_percent=_number(data.get("detectable_percent")),
        interval_percent=None if low is None or high is None else (low, high),
        sessions=sessions if isinstance(sessions, int) and not isinstance(sessions, bool) else None,
        noise_hides_tolerance=bool(data.get("noise_hides_tolerance", False)),
    )


def _meter_from_dict(data: Mapping[str, Any]) -> MeterComparison:
    kind = str(data.get("kind") or "")
    verdict = data.get("verdict") or "new"
    reason = str(data.get("reason") or "")
    detection = str(data.get("detection") or "")
    warnings = tuple(str(warning) for warning in data.get("warnings") or [])
    if verdict not in VERDICTS:  # written by a newer version: never read as a pass
        reason, detection, warnings = f"unknown verdict {verdict}", "", ()
        verdict = "incomparable"
    rule = data.get("rule")
    if rule not in ("exact", "history", "pairs"):
        rule = "exact" if capabilities(kind).deterministic else "history"
    quantities = [_quantity_from_dict(item) for item in data.get("quantities") or []]
    source = data.get("baseline_source")
    return MeterComparison(
        meter=str(data.get("meter")),
        kind=kind,
        gating=bool(data.get("gating", True)),
        verdict=verdict,
        rule=rule,
        reason=reason,
        warnings=warnings,
        baseline_source=None if source is None else str(source),
        detection=detection,
        quantities=tuple(quantity for quantity in quantities if quantity is not None),
    )


def comparison_from_dict(data: Any) -> ComparisonReport:
    """A ``ComparisonReport`` back from its ``to_dict()`` form (e.g. read from a results file).

    The one reader of the comparison schema: reports render what it returns, so a verdict means
    the same in the gate, the terminal and the markdown. A ``ComparisonReport`` is returned as
    is; a verdict this version does not know reads as ``incomparable``, never as a pass.
    """
    if isinstance(data, ComparisonReport):
        return data
    if not isinstance(data, Mapping) or not isinstance(data.get("tests"), list):
        raise ReportError(
            "a comparison must be pytest-energy/comparison data (ComparisonReport.to_dict()), "
            f"got {type(data).__name__}"
        )
    tests = []
    for test in data["tests"]:
        meters = tuple(_meter_from_dict(meter) for meter in test.get("meters") or [])
        verdict = test.get("verdict")
        if not verdict:
            verdict = _test_verdict(meters)
        elif verdict not in VERDICTS:
            verdict = "incomparable"
        tests.append(
            TestComparison(str(test.get("nodeid")), dict(test.get("labels") or {}), verdict, meters)
        )
    return ComparisonReport(
        tests=tuple(tests),
        gate=tuple(str(meter) for meter in data.get("gate") or []),
        alpha=_number(data.get("alpha")) or DEFAULT_ALPHA,
        not_run=tuple(str(nodeid) for nodeid in data.get("not_run") or []),
        provenance=str(data.get("provenance") or ""),
    )
