"""Test records and snapshots for the gate's tests: the results schema, built by hand."""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from pytest_energy.gate.compare import Provenance, Recorded
from pytest_energy.gate.profiles import make_profile

CPU = {"cpu_model": "AMD EPYC 7B13", "cpu_threads": 2}
H100 = {
    "gpus": [{"name": "NVIDIA H100 80GB HBM3", "power_limit_watts": 700}],
    "driver_major": "550",
}
A100 = {
    "gpus": [{"name": "NVIDIA A100-SXM4-40GB", "power_limit_watts": 400}],
    "driver_major": "550",
}
KIND = {"counted": "counted", "cputime": "estimated", "rapl": "measured", "nvml": "measured"}


def record(
    meter: str = "counted",
    tec: float = 100.0,
    rounds: Sequence[float] | None = (1.0,),
    *,
    usage: Sequence[float] = (1e3, 1e6),
    tolerance: float | Mapping[str, float] = 0.05,
    accuracy: float | None = 0.9,
    train_repeats: Sequence[float] | None = None,
) -> dict[str, Any]:
    """One test's record for one meter: TEC in joules, IEC rounds in joules per sample."""
    if not isinstance(tolerance, Mapping):
        tolerance = {"train": tolerance, "inference": tolerance, "full_cycle": tolerance}
    view: dict[str, Any] = {
        "kind": KIND[meter],
        "phases": [{"name": "train", "charged": False, "joules": tec, "seconds": 1.0}],
        "tec_joules": tec,
        "iec_joules_per_sample": None if rounds is None else statistics.median(rounds),
    }
    if rounds is not None:
        view["inference"] = {"calls_per_round": 10, "joules_per_sample": list(rounds)}
    if train_repeats is not None:
        view["train_repeats"] = {"tec_joules": list(train_repeats)}
    return {
        "labels": {"family": "pruning", "method": "l1"},
        "usage": list(usage),
        "tolerance": {"train": 0.05, "inference": 0.05, "full_cycle": 0.05, **tolerance},
        "tau": 1.0,
        "accuracy": accuracy,
        "outcome": "passed",
        "samples_per_call": 1,
        "meters": {meter: view},
    }


def recorded(
    test_record: Mapping[str, Any],
    *,
    source: str = "this run",
    hardware: Mapping[str, Any] | None = None,
    meter_settings: Mapping[str, Any] | None = None,
    torch: str = "2.15.0",
) -> Recorded:
    """Wrap a record with its provenance (hardware defaults to the CPU or H100 above)."""
    meter = next(iter(test_record["meters"]))
    kind = KIND[meter]
    if hardware is None:
        hardware = {} if kind == "counted" else (H100 if meter == "nvml" else CPU)
    provenance = Provenance(
        source=source,
        profile=make_profile(meter, kind, hardware),
        meter={"name": meter, "kind": kind, **(meter_settings or {})},
        versions={"torch": torch},
    )
    return Recorded(dict(test_record), provenance)


def snapshot(**tests: Recorded) -> dict[str, dict[str, Recorded]]:
    """``snapshot(test_a=recorded(...))`` → {"test_x.py::test_a": {meter: Recorded}}."""
    return {
        f"test_x.py::{name}": {next(iter(value.record["meters"])): value}
        for name, value in tests.items()
    }


def with_history(
    test_record: Mapping[str, Any],
    tecs: Sequence[float],
    iecs: Sequence[float] | None = None,
) -> dict[str, Any]:
    """A noisy meter's baseline entry holding one session per TEC (IEC: the record's)."""
    view = next(iter(test_record["meters"].values()))
    iec = view.get("iec_joules_per_sample")
    iecs = list(iecs) if iecs is not None else [iec] * len(tecs)
    sessions = [
        {
            "tec_joules": tec,
            "iec_joules_per_sample": session_iec,
            "e_mui_joules": {},
            "inference_joules_per_sample": [] if session_iec is None else [session_iec],
            "provenance": {"commit": f"c{index}", "versions": {"torch": "2.15.0"}},
        }
        for index, (tec, session_iec) in enumerate(zip(tecs, iecs, strict=True))
    ]
    return {**test_record, "sessions": sessions}
