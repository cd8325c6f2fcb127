"""What one lifecycle test measured, and the results document written with ``--energy-json``.

In memory a test's record holds ``Reading`` objects; once the test ends it becomes a plain,
JSON-ready dict (so it can travel from a pytest-xdist worker to the controller). The dict
layout is the results schema, shared with baseline files:

    tests[nodeid] = {
        "labels": {...}, "usage": [...], "tolerance": {...}, "tau": 1.0, "warnings": [...],
        "accuracy": 0.83 | None, "outcome": "passed",
        "samples_per_call": 64 | None,
        "meters": {meter: {
            "kind": "measured" | "estimated" | "counted",
            "phases": [{"name", "charged", "joules", "seconds", "joules_by_domain", ...,
                        "ranks": [{"rank", "host", "joules", ...}]}],  # distributed only
            "tec_joules": float,
            "inference": {"calls_per_round", "joules_per_sample": [per round], "seconds": [...],
                          "warmup_seconds", "settled", "torch_threads"},  # last 3: timed meters
            "iec_joules_per_sample": float | None,        # median of the rounds
            "full_cycle": [{"usage", "joules", "greenness"}],  # record.MeterFigures
            "flops": {"train", "inference_per_sample"}, "bytes_moved": {...},   # counted only
            "train_repeats": {"tec_joules": [per run of the body]},  # --energy-train-rounds N>1
        }},
    }

With the regression gate on, the document also has ``profiles`` (meter → baseline profile,
see ``profiles.py``) and ``comparison`` (``compare.ComparisonReport.to_dict()``).
"""

from __future__ import annotations

import datetime as _dt
import os
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pytest_energy.config import LifecycleSettings
from pytest_energy.files import dump_json as dump_json  # re-exported: files.py writes
from pytest_energy.files import write_json_atomic as write_json_atomic
from pytest_energy.metadata import run_metadata
from pytest_energy.meters.base import Reading, capabilities
from pytest_energy.record import MeterFigures

SCHEMA = "pytest-energy/results"
SCHEMA_VERSION = 1


@dataclass
class PhaseRecord:
    """One training phase (or a charge of reused work) as seen by every meter."""

    name: str
    charged: bool
    readings: Mapping[str, Reading]


@dataclass(frozen=True)
class Settling:
    """How the inference rounds were sized and warmed up, by timing batches of calls.

    Attributes:
        calls_per_round: calls in one batch lasting at least the meters' window.
        warmup_seconds: wall-clock seconds spent timing batches before the first round.
        settled: two batches in a row agreed on the seconds per call within
            ``SETTLE_TOLERANCE``; False when ``SETTLE_MAX_SECONDS`` ran out first.
    """

    calls_per_round: int
    warmup_seconds: float
    settled: bool


@dataclass
class InferenceRecord:
    """Rounds of inference calls: each round's reading per meter, and how it was calibrated."""

    samples_per_call: int
    warmup_calls: int
    calls_per_round: dict[str, int] = field(default_factory=dict)
    rounds: dict[str, list[Reading]] = field(default_factory=dict)
    settling: dict[str, Settling] = field(default_factory=dict)
    """How each timing meter's rounds were sized and warmed up (counting meters: absent)."""
    torch_threads: int | None = None
    """torch's intra-op threads while the timed rounds ran."""

    def joules_per_sample(self, meter: str) -> list[float]:
        samples_per_round = self.calls_per_round[meter] * self.samples_per_call
        return [reading.joules / samples_per_round for reading in self.rounds[meter]]


def reading_dict(reading: Reading) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "joules": reading.joules,
        "seconds": reading.seconds,
        "joules_by_domain": dict(reading.joules_by_domain),
    }
    if reading.flops is not None:
        entry["flops"] = reading.flops
    if reading.bytes_moved is not None:
        entry["bytes_moved"] = reading.bytes_moved
    if reading.details:
        entry["details"] = _jsonable(reading.details)
    ranks = getattr(reading, "ranks", ())  # a reading summed over torch.distributed ranks
    if ranks:
        entry["ranks"] = [_jsonable(rank) for rank in ranks]
    return entry


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _meter_kinds(
    phases: Sequence[PhaseRecord], inference: InferenceRecord | None
) -> dict[str, str]:
    kinds: dict[str, str] = {}
    for phase in phases:
        for name, reading in phase.readings.items():
            kinds.setdefault(name, reading.kind)
    if inference is not None:
        for name, rounds in inference.rounds.items():
            if rounds:
                kinds.setdefault(name, rounds[0].kind)
    return kinds


def meter_result(
    meter: str,
    kind: str,
    phases: Sequence[PhaseRecord],
    inference: InferenceRecord | None,
    settings: LifecycleSettings,
    accuracy: float | None,
) -> dict[str, Any]:
    """One meter's view of one test: phases, TEC, inference rounds, IEC, E(MUI) and G(MUI)."""
    phase_entries = [
        {"name": phase.name, "charged": phase.charged, **reading_dict(phase.readings[meter])}
        for phase in phases
        if meter in phase.readings
    ]
    tec_joules = float(sum(entry["joules"] for entry in phase_entries))
    result: dict[str, Any] = {"kind": kind, "phases": phase_entries, "tec_joules": tec_joules}
    result["alongside"] = sorted(
        {name for phase in phases if meter in phase.readings for name in phase.readings} - {meter}
    )
    iec = None
    if inference is not None and inference.rounds.get(meter):
        per_sample = inference.joules_per_sample(meter)
        iec = float(statistics.median(per_sample))
        result["inference"] = {
            "calls_per_round": inference.calls_per_round[meter],
            "joules_per_sample": per_sample,
            "seconds": [reading.seconds for reading in inference.rounds[meter]],
        }
        if meter in inference.settling:
            result["inference"]["warmup_seconds"] = inference.settling[meter].warmup_seconds
            result["inference"]["settled"] = inference.settling[meter].settled
            result["inference"]["torch_threads"] = inference.torch_threads
        if capabilities(kind).counts_operations:
            calls = inference.calls_per_round[meter] * inference.samples_per_call
            first = inference.rounds[meter][0]
            result["flops"] = {
                "train": sum(entry.get("flops", 0.0) for entry in phase_entries),
                "inference_per_sample": (first.flops or 0.0) / calls,
            }
            result["bytes_moved"] = {
                "train": sum(entry.get("bytes_moved", 0.0) for entry in phase_entries),
                "inference_per_sample": (first.bytes_moved or 0.0) / calls,
            }
    result["iec_joules_per_sample"] = iec
    figures = MeterFigures(kind, tec_joules, iec)
    result["full_cycle"] = figures.full_cycle_entries(settings.usage, accuracy, settings.tau)
    return result


def lifecycle_result(
    settings: LifecycleSettings,
    phases: Sequence[PhaseRecord],
    inference: InferenceRecord | None,
    accuracy: float | None,
    outcome: str = "passed",
) -> dict[str, Any]:
    """The JSON-ready record of one lifecycle test (see the module docstring)."""
    kinds = _meter_kinds(phases, inference)
    return {
        "warnings": zero_joule_warnings(phases),
        "labels": dict(settings.labels),
        "usage": list(settings.usage),
        "tolerance": settings.tolerance.as_dict(),
        "tau": settings.tau,
        "accuracy": accuracy,
        "outcome": outcome,
        "samples_per_call": None if inference is None else inference.samples_per_call,
        "meters": {
            meter: meter_result(meter, kind, phases, inference, settings, accuracy)
            for meter, kind in kinds.items()
        },
    }


def zero_joule_warnings(phases: Sequence[PhaseRecord]) -> list[str]:
    """A phase that read 0 J is named, never passed off as free work."""
    warnings = []
    for phase in phases:
        for meter, reading in phase.readings.items():
            if reading.joules > 0:
                continue
            if reading.capabilities.counts_operations:
                why = "no torch operator ran in it"
            else:
                why = "shorter than the meter resolves, or the counter did not update"
            warnings.append(
                f"{meter}: phase {phase.name!r} read 0 J in {reading.seconds:.3g} s ({why})"
            )
    return warnings


def results_document(
    tests: Mapping[str, Mapping[str, Any]],
    meters: Sequence[Mapping[str, Any]],
    machine: Mapping[str, Any],
) -> dict[str, Any]:
    """The whole results file: schema, version, machine, meters and per-test records."""
    return {
        "schema": SCHEMA,
        "version": SCHEMA_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": dict(machine),
        "run": run_metadata(os.getcwd()),
        "meters": [dict(meter) for meter in meters],
        "tests": {nodeid: dict(tests[nodeid]) for nodeid in sorted(tests)},
    }
