"""What a report says, computed once from a results document and an optional comparison.

The markdown report and the charts render this model; neither recomputes a figure. A row is one
test as seen by one meter (a test measured by ``cputime`` and ``counted`` gives two rows, each
labelled with its meter's kind). Rows of the meters that gate (the comparison's ``gate``, else
the same default as ``compare.default_gate``: measured meters, else ``counted``, else estimated)
are the report's main rows and its headline counts their tests; the other meters' rows are
shown as context.

A comparison (``pytest_energy.gate.compare.ComparisonReport`` or its ``to_dict()``) adds a verdict
per test and per row, and the change of TEC, IEC and E(MUI) at each usage; without one every
result is ``new``. Baseline documents (same record layout) let the lifecycle view say how
break-even points moved.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from pytest_energy.carbon import CarbonIntensity, resolve_intensity
from pytest_energy.errors import ConfigError
from pytest_energy.gate.compare import (
    VERDICT_URGENCY,
    ComparisonReport,
    MeterComparison,
    QuantityComparison,
    comparison_from_dict,
    most_urgent,
)
from pytest_energy.gate.compare import default_gate as gate_default
from pytest_energy.latency import latency_summary
from pytest_energy.lifecycle import LifecycleCost, break_even_usage, pareto_front
from pytest_energy.record import MeterFigures, TestRecord
from pytest_energy.report.tasks import assign_tasks, parse_references, task_order

VERDICTS = VERDICT_URGENCY
"""Every verdict, most urgent first (the gate's one ranking): the order rows are listed in."""

REFERENCE_AUTO = "auto"
"""Pick the reference row by its labels: ``family: baseline`` or ``method: uncompressed``."""
_AUTO_REFERENCE_LABELS = (("family", "baseline"), ("method", "uncompressed"))


@dataclass(frozen=True, eq=False)
class Row:
    """One test as seen by one meter: labels, accuracy, TEC, IEC, E(MUI), G(MUI) and verdict."""

    nodeid: str
    family: str
    method: str
    model: str
    meter: str
    kind: str
    accuracy: float | None
    figures: MeterFigures
    """TEC and IEC; E(MUI) and G(MUI) are derived by the record, never here."""
    usage: tuple[float, ...]
    tau: float
    tolerance: float | None
    comparison: MeterComparison | None
    """The gate's comparison of this test under this meter (``None``: not compared)."""
    gating: bool = True
    task: str = ""
    """The task the row is compared within (``report.tasks``): dataset, lineage or label."""
    latency: Mapping[str, Any] | None = None
    """The test's time figures (``pytest_energy.latency.latency_summary``), None if untimed."""

    @property
    def verdict(self) -> str:
        return "new" if self.comparison is None else self.comparison.verdict

    @property
    def note(self) -> str:
        """Why the verdict is ``new`` or ``incomparable``, what it could detect, and warnings."""
        if self.comparison is None:
            return ""
        compared = self.comparison
        notes = [compared.reason, compared.detection, *compared.warnings]
        return "; ".join(note for note in notes if note)

    @property
    def tec_change(self) -> QuantityComparison | None:
        return None if self.comparison is None else self.comparison.quantity("tec")

    @property
    def iec_change(self) -> QuantityComparison | None:
        return None if self.comparison is None else self.comparison.quantity("iec")

    @property
    def tolerances(self) -> frozenset[float]:
        """The E(MUI) tolerances (fractions) this row was judged with."""
        changes = {} if self.comparison is None else self.comparison.full_cycle
        return frozenset(
            q.tolerance_percent / 100 for q in changes.values() if q.tolerance_percent is not None
        )

    @property
    def tec_joules(self) -> float:
        return self.figures.tec_joules

    @property
    def iec_joules_per_sample(self) -> float | None:
        return self.figures.iec_joules_per_sample

    @property
    def full_cycle_joules(self) -> dict[float, float | None]:
        """E(MUI) at each of the test's usages (``None`` values without inference)."""
        return {mui: self.figures.full_cycle_joules(mui) for mui in self.usage}

    @property
    def greenness(self) -> dict[float, float | None]:
        """G(MUI) at each of the test's usages."""
        return {mui: self.figures.greenness(mui, self.accuracy, self.tau) for mui in self.usage}

    @property
    def cost(self) -> LifecycleCost | None:
        return self.figures.cost

    @property
    def label(self) -> str:
        """How the row is named in lifecycle tables: method, and model when there is one."""
        return f"{self.method} ({self.model})" if self.model else self.method

    def change(self, usage: float) -> QuantityComparison | None:
        """The gate's E(MUI) comparison at ``usage``."""
        return None if self.comparison is None else self.comparison.full_cycle.get(usage)

    def joules_at(self, usage: float) -> float | None:
        """E(MUI) at any usage ≥ 0 from TEC and IEC."""
        return self.figures.full_cycle_joules(usage)


@dataclass(frozen=True)
class BreakEven:
    """Where a method's full-cycle line crosses the reference's (and where it crossed before)."""

    row: Row
    reference: Row
    usage: float | None
    cheaper: str
    """``"beyond"`` (cheaper than the reference beyond ``usage``), ``"below"`` (cheaper below
    it), ``"always"``, ``"never"`` or ``"unknown"`` (no inference measured)."""
    baseline_usage: float | None = None
    baseline_known: bool = False


@dataclass(frozen=True)
class UsageLeaders:
    """At one usage: the row with the lowest E(MUI) and the one with the highest G(MUI)."""

    usage: float
    lowest_energy: Row | None
    highest_greenness: Row | None


@dataclass(frozen=True)
class MeterLifecycle:
    """The lifecycle view through one meter's figures."""

    meter: str
    kind: str
    gating: bool
    leaders: list[UsageLeaders]
    break_evens: list[BreakEven]
    reference_missing: str | None
    pareto: dict[float, list[Row]]
    task: str = ""


@dataclass(frozen=True)
class BaselineInfo:
    """Where the baseline came from: profiles, files and the commits its tests were saved at."""

    profiles: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()
    commits: tuple[str, ...] = ()
    dates: tuple[str, ...] = ()


@dataclass
class Report:
    """Everything a report shows; build it with ``build_report``."""

    rows: list[Row]
    usage: list[float]
    meters: list[dict[str, Any]]
    machine: dict[str, Any]
    created: str | None
    carbon: CarbonIntensity
    comparison: ComparisonReport | None
    lifecycles: list[MeterLifecycle]
    reference: str
    gate: tuple[str, ...]
    baseline: BaselineInfo = field(default_factory=BaselineInfo)

    @property
    def has_baseline(self) -> bool:
        """Whether any result was compared with a baseline (not every one is ``new``)."""
        if self.comparison is None:
            return False
        return bool(self.baseline.sources) or any(row.verdict != "new" for row in self.rows)

    @property
    def tasks(self) -> list[str]:
        """The run's tasks, each a small paper of its own (one task: a single report)."""
        return task_order({id(row): row.task for row in self.rows})

    def lifecycle_rows(self, lifecycle: MeterLifecycle) -> list[Row]:
        """The rows a lifecycle view compares: its meter's, within its task."""
        return [
            row for row in self.rows if row.meter == lifecycle.meter and row.task == lifecycle.task
        ]

    @property
    def main_rows(self) -> list[Row]:
        """Rows of the gating meters: what the headline counts and the tables lead with."""
        return [row for row in self.rows if row.gating]

    @property
    def other_rows(self) -> list[Row]:
        return [row for row in self.rows if not row.gating]

    def families(self, rows: Sequence[Row] | None = None) -> dict[str, list[Row]]:
        """Rows per family label, most urgent family first; rows most urgent first."""
        groups: dict[str, list[Row]] = {}
        for row in self.rows if rows is None else rows:
            groups.setdefault(row.family, []).append(row)
        for members in groups.values():
            members.sort(key=row_order)
        return dict(
            sorted(
                groups.items(),
                key=lambda item: (min(VERDICTS.index(row.verdict) for row in item[1]), item[0]),
            )
        )

    def test_verdicts(self) -> dict[str, str]:
        """Each test's verdict: the comparison's, else the worst over its gating rows."""
        verdicts: dict[str, list[str]] = {}
        for row in self.main_rows:
            verdicts.setdefault(row.nodeid, []).append(row.verdict)
        given = (
            {test.nodeid: test.verdict for test in self.comparison.tests}
            if self.comparison is not None
            else {}
        )
        return {
            nodeid: given.get(nodeid) or most_urgent(found) for nodeid, found in verdicts.items()
        }

    def verdict_counts(self) -> dict[str, int]:
        """Tests per verdict, every verdict present."""
        counts = {verdict: 0 for verdict in VERDICTS}
        for verdict in self.test_verdicts().values():
            counts[verdict if verdict in counts else "incomparable"] += 1
        return counts

    def meter_kinds(self) -> dict[str, str]:
        kinds = {row.meter: row.kind for row in self.rows}
        for meter in self.meters:
            kinds.setdefault(str(meter.get("name")), str(meter.get("kind", "")))
        return kinds

    def tolerances(self) -> list[float]:
        """The E(MUI) tolerances the gating rows were judged with (fractions), sorted."""
        found: set[float] = set()
        for row in self.main_rows:
            if row.tolerances:
                found |= row.tolerances
            elif row.tolerance is not None:
                found.add(row.tolerance)
        return sorted(found)


def row_order(row: Row) -> tuple[int, str, str, str]:
    """Regressions first, then incomparable, improved, new, unchanged; then by method."""
    return (VERDICTS.index(row.verdict), row.method, row.model, row.meter)


def default_gate(kinds: Mapping[str, str]) -> tuple[str, ...]:
    """The gate's default (``gate.compare.default_gate``); every meter when no kind is known."""
    return tuple(gate_default(kinds)) or tuple(sorted(kinds))


def _method_name(nodeid: str, labels: Mapping[str, Any]) -> str:
    return str(labels.get("method") or nodeid.rsplit("::", 1)[-1])


def _tolerance(result: Mapping[str, Any]) -> float | None:
    tolerance = result.get("tolerance")
    if isinstance(tolerance, Mapping):
        value = tolerance.get("full_cycle")
        return None if value is None else float(value)
    if isinstance(tolerance, (int, float)):
        return float(tolerance)
    return None


def result_rows(
    tests: Mapping[str, Mapping[str, Any]],
    comparison: ComparisonReport | None = None,
    gate: Sequence[str] | None = None,
) -> list[Row]:
    """One row per test × meter of a results document's ``tests``, most urgent first."""
    rows = []
    for nodeid, result in tests.items():
        record = TestRecord.from_json(result)
        labels = record.labels
        for meter, figures in record.meters.items():
            compared = comparison.meter_of(nodeid, meter) if comparison is not None else None
            rows.append(
                Row(
                    nodeid=nodeid,
                    family=str(labels.get("family") or "—"),
                    method=_method_name(nodeid, labels),
                    model=str(labels.get("model") or ""),
                    meter=meter,
                    kind=figures.kind,
                    accuracy=record.accuracy,
                    figures=figures,
                    usage=record.usage,
                    tau=record.tau,
                    tolerance=_tolerance(result),
                    comparison=compared,
                    gating=gate is None or meter in gate,
                )
            )
    rows.sort(key=row_order)
    return rows


def parse_reference(spec: str | None) -> tuple[str, str] | None:
    """``"method=uncompressed"`` → (label, value); ``"auto"``/None → None; else a node id part."""
    if spec is None or spec == REFERENCE_AUTO:
        return None
    if "=" in spec:
        key, _, value = spec.partition("=")
        if not key.strip() or not value.strip():
            raise ConfigError(
                f"--energy-reference: expected LABEL=VALUE (e.g. method=uncompressed), a test "
                f"node id, or auto; got {spec!r}"
            )
        return key.strip(), value.strip()
    return "nodeid", spec


def is_reference(row: Row, spec: str | None) -> bool:
    """Whether ``row`` is a reference: by labels (auto), a LABEL=VALUE pair, or a node id part."""
    parsed = parse_reference(spec)
    if parsed is None:
        labels = {"family": row.family, "method": row.method}
        return any(labels[key] == value for key, value in _AUTO_REFERENCE_LABELS)
    key, value = parsed
    if key == "nodeid":
        return value in row.nodeid
    labels = {"family": row.family, "method": row.method, "model": row.model, "meter": row.meter}
    return labels.get(key) == value


def _cheaper_side(row: LifecycleCost, reference: LifecycleCost, usage: float | None) -> str:
    if usage is not None:
        return "beyond" if row.iec_joules_per_sample < reference.iec_joules_per_sample else "below"
    at_zero = row.tec_joules - reference.tec_joules
    slope = row.iec_joules_per_sample - reference.iec_joules_per_sample
    if at_zero <= 0 and slope <= 0:
        return "always"
    return "never"


def _break_even(
    row: Row, reference: Row, baseline_costs: Mapping[tuple[str, str], LifecycleCost]
) -> BreakEven:
    cost, reference_cost = row.cost, reference.cost
    if cost is None or reference_cost is None:
        return BreakEven(row, reference, None, "unknown")
    usage = break_even_usage(cost, reference_cost)
    old_cost = baseline_costs.get((row.nodeid, row.meter))
    old_reference = baseline_costs.get((reference.nodeid, reference.meter))
    if old_cost is None or old_reference is None:
        return BreakEven(row, reference, usage, _cheaper_side(cost, reference_cost, usage))
    return BreakEven(
        row,
        reference,
        usage,
        _cheaper_side(cost, reference_cost, usage),
        break_even_usage(old_cost, old_reference),
        True,
    )


def meter_lifecycle(
    rows: Sequence[Row],
    usage: Sequence[float],
    reference: str | None = REFERENCE_AUTO,
    baseline_costs: Mapping[tuple[str, str], LifecycleCost] | None = None,
) -> MeterLifecycle:
    """Leaders per usage, Pareto fronts and break-evens against the reference, for one meter.

    Each method is compared with the reference row of the same model when there is one (a
    pruned ResNet-56 against the uncompressed ResNet-56), else with the only reference row.
    """
    baseline_costs = baseline_costs or {}
    measured = [row for row in rows if row.cost is not None]
    leaders = []
    pareto: dict[float, list[Row]] = {}
    for mui in usage:
        energies = [(row, row.joules_at(mui)) for row in measured]
        energies = [(row, joules) for row, joules in energies if joules is not None]
        lowest = min(energies, key=lambda item: item[1])[0] if energies else None
        greens = [(row, row.greenness.get(mui)) for row in measured]
        greens = [(row, value) for row, value in greens if value is not None]
        highest = max(greens, key=lambda item: item[1])[0] if greens else None
        leaders.append(UsageLeaders(mui, lowest, highest))
        scored = [(row, row.accuracy, joules) for row, joules in energies]
        front = pareto_front(
            (index, accuracy, joules)
            for index, (_row, accuracy, joules) in enumerate(scored)
            if accuracy is not None
        )
        pareto[mui] = [scored[index][0] for index in front]
    references = [row for row in rows if is_reference(row, reference)]
    break_evens: list[BreakEven] = []
    missing = None
    if not references:
        missing = (
            "no reference row (labels family: baseline or method: uncompressed); "
            "choose one with --energy-reference LABEL=VALUE"
            if reference in (None, REFERENCE_AUTO)
            else f"no row matches the reference {reference!r}"
        )
    else:
        for row in rows:
            if any(row is chosen for chosen in references):
                continue
            same_model = [chosen for chosen in references if chosen.model == row.model]
            candidates = same_model or (references if len(references) == 1 else [])
            if candidates:
                break_evens.append(_break_even(row, candidates[0], baseline_costs))
    meter = rows[0].meter if rows else ""
    kind = rows[0].kind if rows else ""
    gating = bool(rows) and rows[0].gating
    return MeterLifecycle(meter, kind, gating, leaders, break_evens, missing, pareto)


def _baseline_documents(baseline: Any) -> list[Mapping[str, Any]]:
    """Baseline documents from a document, a ``BaselineFile``, or a list of either."""
    if baseline is None:
        return []
    items = baseline if isinstance(baseline, (list, tuple)) else [baseline]
    documents = []
    for item in items:
        if isinstance(item, Mapping):
            documents.append(item)
        elif hasattr(item, "tests"):
            profile = getattr(item, "profile", None)
            # No path: the comparison names the file as the user sees it (rootdir-relative).
            documents.append(
                {
                    "tests": item.tests,
                    "profile": profile.to_dict() if hasattr(profile, "to_dict") else {},
                }
            )
    return documents


def _baseline_costs(documents: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str], LifecycleCost]:
    costs: dict[tuple[str, str], LifecycleCost] = {}
    for document in documents:
        for nodeid, result in (document.get("tests") or {}).items():
            for meter, view in (result.get("meters") or {}).items():
                cost = MeterFigures.from_json(view).cost
                if cost is not None and view.get("tec_joules") is not None:
                    costs[(nodeid, meter)] = cost
    return costs


def _baseline_info(
    documents: Sequence[Mapping[str, Any]], comparison: ComparisonReport | None
) -> BaselineInfo:
    profiles, sources, commits, dates = set(), set(), set(), set()
    for document in documents:
        profile = document.get("profile")
        if isinstance(profile, Mapping) and profile.get("name"):
            profiles.add(str(profile["name"]))
        if document.get("path"):
            sources.add(str(document["path"]))
        if document.get("created"):
            dates.add(str(document["created"]))
        for result in (document.get("tests") or {}).values():
            recorded = result.get("recorded") or {}
            if recorded.get("commit"):
                commits.add(str(recorded["commit"]))
            if recorded.get("date"):
                dates.add(str(recorded["date"]))
    if comparison is not None:
        sources |= set(comparison.baseline_sources)
    return BaselineInfo(
        tuple(sorted(profiles)),
        tuple(sorted(sources)),
        tuple(sorted(commits)),
        tuple(sorted(dates)),
    )


def _usage_columns(rows: Iterable[Row]) -> list[float]:
    return sorted({usage for row in rows for usage in row.usage})


def build_report(
    results: Mapping[str, Any],
    comparison: Any | None = None,
    *,
    baseline: Any | None = None,
    carbon: CarbonIntensity | None = None,
    reference: str | None = REFERENCE_AUTO,
) -> Report:
    """The report of a results document, with an optional comparison and baseline documents.

    ``comparison``: a ``ComparisonReport`` or its ``to_dict()`` (read by the gate's one loader,
    ``comparison_from_dict``).
    ``baseline``: baseline (or results) documents, or loaded ``BaselineFile`` objects, one or a
    list; they let the lifecycle view say how break-even points moved.
    """
    view = None if comparison is None else comparison_from_dict(comparison)
    tests = results.get("tests", {}) or {}
    kinds = {
        meter: str(record.get("kind", ""))
        for result in tests.values()
        for meter, record in (result.get("meters", {}) or {}).items()
    }
    gate = view.gate if view is not None and view.gate else default_gate(kinds)
    references = parse_references(reference)
    tasks = assign_tasks(tests, references)
    rows = [
        replace(
            row,
            task=tasks[row.nodeid],
            latency=tests[row.nodeid].get("latency") or latency_summary(tests[row.nodeid]),
        )
        for row in result_rows(tests, view, gate)
    ]
    usage = _usage_columns(rows)
    documents = _baseline_documents(baseline)
    old_costs = _baseline_costs(documents)
    lifecycles = []
    for task in task_order(tasks):
        by_meter: dict[str, list[Row]] = {}
        for row in rows:
            if row.task == task:
                by_meter.setdefault(row.meter, []).append(row)
        lifecycles += [
            replace(
                meter_lifecycle(by_meter[meter], usage, references.for_task(task), old_costs),
                task=task,
            )
            for meter in sorted(by_meter, key=lambda name: (name not in gate, name))
        ]
    return Report(
        rows=rows,
        usage=usage,
        meters=[dict(meter) for meter in results.get("meters", []) or []],
        machine=dict(results.get("machine", {}) or {}),
        created=results.get("created"),
        carbon=carbon or resolve_intensity(),
        comparison=view,
        lifecycles=lifecycles,
        reference=reference or REFERENCE_AUTO,
        gate=tuple(gate),
        baseline=_baseline_info(documents, view),
    )
