"""Time beside energy: inference seconds per sample, samples per second, training seconds.

The figures pytest-benchmark users read first, computed from what a test's record already
holds (each inference round's wall-clock seconds, calls per round, samples per call, each
phase's seconds), so old results files get them too. Pure: no I/O, no clocks.

Only a timing meter's windows give times: ``counted`` counts operations through a dispatch
mode that slows its one window down, so its seconds are never used. Timing meters measure the
same rounds side by side; the first measured meter is used, else the first estimated one.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from typing import Any

_KIND_ORDER = ("measured", "estimated")


def spread(values: Sequence[float]) -> dict[str, float]:
    """Median, mean, min, max, standard deviation and interquartile range of ``values``."""
    ordered = sorted(values)
    if len(ordered) > 1:
        quartiles = statistics.quantiles(ordered, n=4, method="inclusive")
        iqr, stdev = quartiles[2] - quartiles[0], statistics.stdev(ordered)
    else:
        iqr = stdev = 0.0
    return {
        "median": statistics.median(ordered),
        "mean": statistics.fmean(ordered),
        "min": ordered[0],
        "max": ordered[-1],
        "stdev": stdev,
        "iqr": iqr,
    }


def timing_meter(meters: Mapping[str, Mapping[str, Any]]) -> str | None:
    """The meter whose windows time the test: measured first, then estimated, by name."""
    for kind in _KIND_ORDER:
        names = sorted(name for name, view in meters.items() if view.get("kind") == kind)
        if names:
            return names[0]
    return None


def latency_summary(record: Mapping[str, Any]) -> dict[str, Any] | None:
    """Seconds per sample over the inference rounds, samples per second and training seconds.

    ``None`` when no timing meter measured the test. Layout::

        {"meter": "cputime", "rounds": 5,
         "seconds_per_sample": {"median", "mean", "min", "max", "stdev", "iqr"},
         "samples_per_second": 1 / median seconds per sample,
         "train_seconds": phases run by this test, "charged_seconds": charged work,
         "phase_seconds": {phase: seconds}}

    ``seconds_per_sample`` and ``samples_per_second`` are absent when no inference was measured,
    the seconds of phases when no phase was timed.
    """
    meters = record.get("meters") or {}
    meter = timing_meter(meters)
    if meter is None:
        return None
    view = meters[meter]
    phases = view.get("phases") or []
    timed = [phase for phase in phases if phase.get("seconds") is not None]
    summary: dict[str, Any] = {"meter": meter}
    if timed:
        summary["train_seconds"] = float(sum(p["seconds"] for p in timed if not p["charged"]))
        summary["charged_seconds"] = float(sum(p["seconds"] for p in timed if p["charged"]))
        summary["phase_seconds"] = {p["name"]: float(p["seconds"]) for p in timed}
    inference = view.get("inference") or {}
    seconds = inference.get("seconds") or []
    samples_per_call = record.get("samples_per_call")
    calls = inference.get("calls_per_round")
    if seconds and samples_per_call and calls:
        per_sample = [round_seconds / (calls * samples_per_call) for round_seconds in seconds]
        figures = spread(per_sample)
        summary["rounds"] = len(per_sample)
        summary["seconds_per_sample"] = figures
        summary["samples_per_second"] = 1.0 / figures["median"] if figures["median"] > 0 else None
    return summary
