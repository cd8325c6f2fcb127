"""Results documents built in tests for the report tests: small, readable, in the real schema."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pytest_energy.record import MeterFigures
from pytest_energy.results import SCHEMA, SCHEMA_VERSION

USAGE = (1e3, 1e6, 1e9)


def lifecycle_record(
    method: str,
    tec_joules: float,
    iec_joules_per_sample: float | None,
    *,
    family: str = "pruning",
    model: str = "resnet20",
    accuracy: float | None = 0.9,
    meter: str = "counted",
    kind: str = "counted",
    usage: Sequence[float] = USAGE,
    tolerance: float = 0.05,
) -> dict[str, Any]:
    """One test's record as ``results.lifecycle_result`` writes it, for one meter."""
    return {
        "labels": {"family": family, "method": method, "model": model},
        "usage": list(usage),
        "tolerance": {"train": tolerance, "inference": tolerance, "full_cycle": tolerance},
        "tau": 1.0,
        "accuracy": accuracy,
        "outcome": "passed",
        "samples_per_call": 8,
        "meters": {
            meter: {
                "kind": kind,
                "phases": [{"name": "train", "charged": False, "joules": tec_joules}],
                "tec_joules": tec_joules,
                "iec_joules_per_sample": iec_joules_per_sample,
                "full_cycle": MeterFigures(
                    kind, tec_joules, iec_joules_per_sample
                ).full_cycle_entries(usage, accuracy, 1.0),
            }
        },
    }


def results_document(tests: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """A whole results file around ``tests``, with a described machine and meter."""
    kinds = {
        meter: view["kind"] for result in tests.values() for meter, view in result["meters"].items()
    }
    return {
        "schema": SCHEMA,
        "version": SCHEMA_VERSION,
        "created": "2025-01-01T00:00:00+00:00",
        "machine": {
            "cpu_model": "Test CPU 3000",
            "cpu_threads": 2,
            "platform": "Linux-test",
            "python": "3.11.0",
            "versions": {"torch": "2.5.0"},
        },
        "meters": [{"name": name, "kind": kind} for name, kind in sorted(kinds.items())],
        "tests": dict(tests),
    }


def paper_results() -> dict[str, Any]:
    """An uncompressed ResNet-20 and three compressed methods with known crossings.

    uncompressed: TEC 1000 J, IEC 1 mJ. fpgm: TEC 1500 J, IEC 0.5 mJ — it costs more to make and
    less to run; the lines cross at (1500 − 1000) / (0.001 − 0.0005) = 1e6 inferences. quant:
    TEC 1100 J, IEC 0.25 mJ — crossing at 100 / 0.00075 ≈ 1.33e5. distill: TEC 3000 J, IEC 2 mJ
    — never cheaper.
    """
    return results_document(
        {
            "benchmarks/test_base.py::test_uncompressed": lifecycle_record(
                "uncompressed", 1000.0, 1e-3, family="baseline", accuracy=0.92
            ),
            "benchmarks/test_pruning.py::test_fpgm": lifecycle_record(
                "fpgm", 1500.0, 5e-4, accuracy=0.91
            ),
            "benchmarks/test_quant.py::test_int8": lifecycle_record(
                "int8", 1100.0, 2.5e-4, family="quantization", accuracy=0.90
            ),
            "benchmarks/test_distill.py::test_kd": lifecycle_record(
                "kd", 3000.0, 2e-3, family="distillation", accuracy=0.93
            ),
        }
    )


def comparison_of(
    current: Mapping[str, Any],
    baseline: Mapping[str, Any],
    baseline_file: str = "baselines/counted.json",
) -> Any:
    """The real comparison (``compare.compare_snapshots``) of two results documents."""
    from pytest_energy.gate.compare import compare_snapshots
    from pytest_energy.gate.store import results_snapshot

    return compare_snapshots(
        results_snapshot(current, "this run"), results_snapshot(baseline, baseline_file)
    )
