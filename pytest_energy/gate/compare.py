"""Compare two sets of test records (a baseline and a run): pure data in, dataclasses out.

The result is a small tree that reports render (terminal, markdown, PR comments):

    ComparisonReport                       the whole comparison; ``to_dict()`` for JSON
      .tests: [TestComparison]             one per test of the current run, sorted by node id
        .verdict                           over the gating meters (see ``TEST_VERDICT_ORDER``)
        .meters: [MeterComparison]         one per meter that measured the test
          .verdict, .reason, .warnings     e.g. incomparable: "baseline from another GPU"
          .gating, .baseline_source        does it decide the exit status; which file
          .quantities: [QuantityComparison]
              quantity  tec | iec | full_cycle | greenness
              usage     MUI for full_cycle and greenness, else None
              baseline, current, change_percent, tolerance_percent, verdict, p_value, note
      .not_run: [node ids]                 in the baseline, not in this run
      .gate, .alpha                        the meters that gate, the significance level

Verdicts: ``regressed`` and ``improved`` (beyond tolerance and, for noisy meters, beyond
noise: see ``pytest_energy.gate.rules``), ``unchanged``, ``new`` (no baseline to compare with) and
``incomparable`` (a baseline exists but must not be trusted: another CPU or GPU, another
wattage or energy table; ``reason`` says which). Greenness G(MUI) is reported with its change
but has no verdict of its own: it also moves with accuracy, which is not an energy regression.

A baseline recorded with **another torch version** is compared and its verdict stands, with a
warning on the meter. A framework upgrade is exactly the kind of change whose energy cost CI
should catch; refusing to compare would switch the gate off on every upgrade until someone
refreshed the baselines, and the warning tells the reader where a regression may come from.
Another GPU or CPU is different: those figures were never about the same thing.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from pytest_energy.config import Tolerance, parse_tolerance
from pytest_energy.errors import ConfigError
from pytest_energy.gate.profiles import Profile, hardware_difference
from pytest_energy.gate.rules import (
    DEFAULT_ALPHA,
    Decision,
    judge_exact,
    judge_full_cycle,
    judge_rounds,
    judge_single,
    relative_spread,
)
from pytest_energy.lifecycle import greenness
from pytest_energy.report.units import format_joules, format_usage

Verdict = Literal["regressed", "improved", "unchanged", "new", "incomparable"]
VERDICTS: tuple[Verdict, ...] = ("regressed", "improved", "unchanged", "new", "incomparable")
TEST_VERDICT_ORDER: tuple[Verdict, ...] = (
    "regressed",
    "incomparable",
    "improved",
    "new",
    "unchanged",
)
"""A test's verdict is the first of these that any of its gating meters has."""

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
    p_value: float | None = None
    note: str = ""

    @property
    def label(self) -> str:
        """``TEC``, ``IEC``, ``E(MUI=1e6)``, ``G(MUI=1e6)``."""
        name = QUANTITY_LABELS[self.quantity]
        return name if self.usage is None else f"{name}(MUI={format_usage(self.usage)})"

    def describe_change(self) -> str:
        """``IEC +20.1 % (1.2 µJ → 1.44 µJ, tolerance 5 %)``."""
        change = "—" if self.change_percent is None else f"{self.change_percent:+.1f} %"
        figures = (
            f"{_format_value(self.baseline, self.unit)} → {_format_value(self.current, self.unit)}"
        )
        tolerance = (
            "" if self.tolerance_percent is None else f", tolerance {self.tolerance_percent:g} %"
        )
        p_value = "" if self.p_value is None else f", p = {self.p_value:.2g}"
        return f"{self.label} {change} ({figures}{tolerance}{p_value})"


@dataclass(frozen=True)
class MeterComparison:
    """One test under one meter: its verdict, why, and each quantity.

    Attributes:
        meter, kind: the meter and its kind (``measured``, ``estimated``, ``counted``).
        gating: whether this meter's verdict decides the exit status.
        verdict: see the module docstring.
        rule: ``exact`` (counted) or ``noisy`` (rounds and training noise).
        reason: why the verdict is ``new`` or ``incomparable`` (empty otherwise).
        warnings: things the reader should know, e.g. another torch version.
        baseline_source: the baseline file compared against (``None`` for ``new``).
        train_noise_percent: the training noise band used for TEC (noisy rule), in percent.
        quantities: TEC, IEC, then E(MUI) and G(MUI) per usage.
    """

    meter: str
    kind: str
    gating: bool
    verdict: Verdict
    rule: Literal["exact", "noisy"]
    reason: str = ""
    warnings: tuple[str, ...] = ()
    baseline_source: str | None = None
    train_noise_percent: float | None = None
    quantities: tuple[QuantityComparison, ...] = ()

    def judged(self, verdict: Verdict) -> list[QuantityComparison]:
        """The quantities with this verdict, e.g. ``judged("regressed")``."""
        return [quantity for quantity in self.quantities if quantity.verdict == verdict]


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


def _format_value(value: float | None, unit: str) -> str:
    if value is None:
        return "—"
    if unit == "1/J":
        return f"{value:.3g} /J"
    return format_joules(value) + ("/sample" if unit == "J/sample" else "")


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


def _rounds(view: Mapping[str, Any]) -> list[float]:
    inference = view.get("inference") or {}
    return [float(value) for value in inference.get("joules_per_sample") or []]


def _train_repeats(view: Mapping[str, Any]) -> list[float]:
    repeats = view.get("train_repeats") or {}
    return [float(value) for value in repeats.get("tec_joules") or []]


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
    if kind == "counted" or "alongside" not in before or "alongside" not in now:
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


def _version_warnings(before: Provenance, now: Provenance) -> tuple[str, ...]:
    warnings = []
    for library in ("torch", "torchvision"):
        old, new = before.versions.get(library), now.versions.get(library)
        if old and new and old != new:
            warnings.append(
                f"{library} {old} vs {new}: the baseline was recorded with another {library}; "
                f"its verdict stands (refresh with --energy-save once the change is accepted)"
            )
    return tuple(warnings)


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
    if decision is not None:
        verdict = decision.verdict
        note = decision.note
        change = decision.change
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
        p_value=None if decision is None else decision.p_value,
        note=note,
    )


def compare_meter(
    meter: str,
    current: Recorded,
    baseline: Recorded | None,
    *,
    gating: bool,
    alpha: float = DEFAULT_ALPHA,
    tolerance: Tolerance | None = None,
) -> MeterComparison:
    """Compare one test's figures under one meter with its baseline (``None``: no baseline)."""
    now = current.record["meters"][meter]
    kind = str(now.get("kind"))
    rule: Literal["exact", "noisy"] = "exact" if kind == "counted" else "noisy"
    common = {"meter": meter, "kind": kind, "gating": gating, "rule": rule}
    if baseline is None or meter not in baseline.record.get("meters", {}):
        return MeterComparison(**common, verdict="new", reason="no baseline for this test")
    before = baseline.record["meters"][meter]
    source = baseline.provenance.source
    reason = None
    if before.get("kind") != kind:
        reason = f"baseline measured by a {before.get('kind')} meter, this run by a {kind} one"
    elif (
        kind != "counted"
        and baseline.provenance.profile is not None
        and current.provenance.profile is not None
    ):
        reason = hardware_difference(
            baseline.provenance.profile.fingerprint, current.provenance.profile.fingerprint
        )
    reason = (
        reason
        or _settings_difference(meter, baseline.provenance.meter, current.provenance.meter)
        or _company_difference(kind, before, now)
    )
    warnings = _version_warnings(baseline.provenance, current.provenance)
    if reason:
        return MeterComparison(
            **common,
            verdict="incomparable",
            reason=reason,
            warnings=warnings,
            baseline_source=source,
        )

    limits = _tolerance_of(current.record, tolerance)
    tec_now, tec_before = float(now["tec_joules"]), float(before["tec_joules"])
    noise = max(relative_spread(_train_repeats(now)), relative_spread(_train_repeats(before)))
    quantities = [
        _quantity(
            "tec",
            None,
            tec_before,
            tec_now,
            limits.train,
            judge_exact(tec_now, tec_before, limits.train)
            if rule == "exact"
            else judge_single(tec_now, tec_before, limits.train, noise),
        )
    ]
    iec_now, iec_before = now.get("iec_joules_per_sample"), before.get("iec_joules_per_sample")
    rounds_now, rounds_before = _rounds(now), _rounds(before)
    comparable_iec = iec_now is not None and iec_before is not None
    if rule == "noisy":
        comparable_iec = comparable_iec and bool(rounds_now) and bool(rounds_before)
    if comparable_iec:
        decision = (
            judge_exact(iec_now, iec_before, limits.inference)
            if rule == "exact"
            else judge_rounds(rounds_now, rounds_before, limits.inference, alpha)
        )
        quantities.append(_quantity("iec", None, iec_before, iec_now, limits.inference, decision))
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
        if not comparable_iec:
            continue
        full_now = tec_now + usage * float(iec_now)
        full_before = tec_before + usage * float(iec_before)
        if rule == "exact":
            decision = judge_exact(full_now, full_before, limits.full_cycle)
        else:
            decision = judge_full_cycle(
                tec_current=tec_now,
                tec_baseline=tec_before,
                train_noise=noise,
                iec_current=rounds_now,
                iec_baseline=rounds_before,
                usage=usage,
                tolerance=limits.full_cycle,
                alpha=alpha,
            )
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
    return MeterComparison(
        **common,
        verdict=_meter_verdict(quantities),
        warnings=warnings,
        baseline_source=source,
        train_noise_percent=None if rule == "exact" else _percent(noise),
        quantities=tuple(quantities),
    )


def _meter_verdict(quantities: Sequence[QuantityComparison]) -> Verdict:
    verdicts = {quantity.verdict for quantity in quantities} - {None}
    for verdict in ("regressed", "incomparable", "improved", "unchanged"):
        if verdict in verdicts:
            return verdict  # type: ignore[return-value]
    return "new"


def _test_verdict(meters: Iterable[MeterComparison]) -> Verdict:
    meters = list(meters)
    deciding = [meter for meter in meters if meter.gating] or meters
    verdicts = {meter.verdict for meter in deciding}
    return next((verdict for verdict in TEST_VERDICT_ORDER if verdict in verdicts), "new")


def compare_snapshots(
    current: Snapshot,
    baseline: Snapshot,
    *,
    gate: Sequence[str] | None = None,
    alpha: float = DEFAULT_ALPHA,
    tolerance: Tolerance | None = None,
) -> ComparisonReport:
    """Compare every test of ``current`` with ``baseline``.

    ``gate``: the meters whose verdicts decide (default: ``default_gate`` of the meters that
    ran). ``tolerance`` overrides each test's own recorded tolerance.
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
    )


def summary_lines(
    report: ComparisonReport, fail_on_improvement: bool = False, verbose: bool = False
) -> list[str]:
    """Plain-text lines for a terminal: each finding with its quantities, then the counts.

    Meters that do not gate are counted in one line each unless ``verbose``: on a shared
    machine their noise would otherwise bury the findings that decide the exit status.
    """
    lines = []
    not_gating: dict[str, Counter[str]] = {}
    for test in report.tests:
        for meter in test.meters:
            if not meter.gating and not verbose:
                not_gating.setdefault(meter.meter, Counter())[meter.verdict] += 1
                continue
            where = f"{test.nodeid} [{meter.meter}{'' if meter.gating else ', not gating'}]"
            against = f" vs {meter.baseline_source}" if meter.baseline_source else ""
            if meter.verdict == "regressed":
                lines.append(f"REGRESSED {where}{against}")
                lines += [f"    {q.describe_change()}" for q in meter.judged("regressed")]
            elif meter.verdict == "improved":
                fails = fail_on_improvement and meter.gating
                lines.append(
                    f"improved  {where}{against}: "
                    + ("fails the run (--energy-fail-on-improvement); " if fails else "")
                    + "the baseline is stale, refresh it with --energy-save"
                )
                lines += [f"    {q.describe_change()}" for q in meter.judged("improved")]
            elif meter.verdict == "incomparable":
                lines.append(f"incomparable {where}{against}: {meter.reason}")
            elif meter.verdict == "new" and meter.gating:
                lines.append(f"new       {where}: {meter.reason} (record one with --energy-save)")
            lines += [f"warning   {where}: {warning}" for warning in meter.warnings]
    if report.not_run:
        shown = ", ".join(report.not_run[:3]) + (", ..." if len(report.not_run) > 3 else "")
        lines.append(
            f"not run   {len(report.not_run)} test(s) of the baseline did not pass in this run "
            f"({shown}); --energy-save --energy-prune drops those that no longer exist"
        )
    for name, verdicts in not_gating.items():
        tally = ", ".join(f"{count} {verdict}" for verdict, count in sorted(verdicts.items()))
        lines.append(f"not gating {name}: {tally} (each finding with -v)")
    counts = ", ".join(f"{count} {verdict}" for verdict, count in report.counts().items() if count)
    lines.append(f"gate {', '.join(report.gate) or '(none)'}: {counts or 'no tests'}")
    return lines
