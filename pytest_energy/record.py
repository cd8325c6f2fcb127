"""One test's record, typed: what every consumer reads, and E(MUI) and G(MUI) computed here only.

``results.lifecycle_result`` writes a test's record as JSON (the results schema, see
``results.py``); the gate, the reports, the exports and the history read it back through
``TestRecord.from_json``. A meter's figures (``MeterFigures``) hold TEC and IEC; E(MUI) and
G(MUI) at any usage are derived from them by the methods below, so the written ``full_cycle``
list, the gate's exact comparison, the session history and the report's tables and charts all
give the same figure for the same test.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pytest_energy.lifecycle import LifecycleCost, greenness


@dataclass(frozen=True)
class MeterFigures:
    """One meter's view of one test: TEC (J), IEC (J per sample, ``None`` without inference)."""

    kind: str
    tec_joules: float
    iec_joules_per_sample: float | None = None

    @classmethod
    def from_json(cls, view: Mapping[str, Any]) -> MeterFigures:
        """A meter's entry of a record (``record["meters"][meter]``) or a baseline session."""
        iec = view.get("iec_joules_per_sample")
        return cls(
            kind=str(view.get("kind", "")),
            tec_joules=float(view.get("tec_joules") or 0.0),
            iec_joules_per_sample=None if iec is None else float(iec),
        )

    @property
    def cost(self) -> LifecycleCost | None:
        """TEC and IEC for the lifecycle maths; ``None`` when no inference was measured."""
        if self.iec_joules_per_sample is None:
            return None
        return LifecycleCost(self.tec_joules, self.iec_joules_per_sample)

    def full_cycle_joules(self, usage: float) -> float | None:
        """E(MUI) = TEC + MUI × IEC in joules; ``None`` when no inference was measured."""
        cost = self.cost
        return None if cost is None else cost.full_cycle_joules(float(usage))

    def greenness(self, usage: float, accuracy: float | None, tau: float) -> float | None:
        """G(MUI) = Acc^τ / E(MUI) in 1/J; ``None`` when E(MUI) or a needed accuracy is unknown."""
        joules = self.full_cycle_joules(usage)
        return None if joules is None else greenness(accuracy, joules, tau)

    def full_cycle_entries(
        self, usage: Sequence[float], accuracy: float | None, tau: float
    ) -> list[dict[str, Any]]:
        """The record's ``full_cycle`` list: E(MUI) and G(MUI) at each usage."""
        return [
            {
                "usage": float(mui),
                "joules": self.full_cycle_joules(mui),
                "greenness": self.greenness(mui, accuracy, tau),
            }
            for mui in usage
        ]


@dataclass(frozen=True)
class TestRecord:
    """One lifecycle test as read back from a results or baseline file.

    ``usage`` (the MUI scenarios) is held once here; the ``full_cycle`` lists of the JSON are
    its written form, derived from each meter's figures at these usages.
    """

    __test__ = False  # not a pytest test class, despite the name

    labels: Mapping[str, Any] = field(default_factory=dict)
    usage: tuple[float, ...] = ()
    tau: float = 1.0
    accuracy: float | None = None
    meters: Mapping[str, MeterFigures] = field(default_factory=dict)

    @classmethod
    def from_json(cls, record: Mapping[str, Any]) -> TestRecord:
        """A test's entry of a results or baseline document (``document["tests"][nodeid]``)."""
        meters = record.get("meters") or {}
        accuracy = record.get("accuracy")
        return cls(
            labels=dict(record.get("labels") or {}),
            usage=tuple(float(mui) for mui in record.get("usage") or ()),
            tau=float(record.get("tau", 1.0)),
            accuracy=None if accuracy is None else float(accuracy),
            meters={name: MeterFigures.from_json(view) for name, view in meters.items()},
        )
