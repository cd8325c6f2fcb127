"""``pytest-energy calibrate``: fit the counted meter's energy table to a real meter.

A fixed suite of micro-workloads (GEMMs, convolutions, attention and element-wise operators
at several sizes and dtypes) runs under the ``counted`` meter, which gives each one's MACs per
precision and bytes per memory level, and under a real meter (nvml, rapl or cputime), which
gives its joules per call. Non-negative least squares (``scipy.optimize.nnls``) then fits
picojoules per MAC at each precision and per byte at each memory level, so that counted
figures stay deterministic but track that hardware. The fit's error is reported on held-out
workloads (every other workload is left out of a first fit), then the table is fitted on all.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pytest_energy.errors import ConfigError

FEATURES = (
    "fp32_macs",
    "fp16_macs",
    "int8_macs",
    "sram_bytes",
    "dram_bytes",
    "operator_calls",
)
"""What one workload call is described by, in the order the coefficients are fitted."""

_DEFAULT_MAC_SPLIT = {
    "fp32": ("fp32_mult_pj", "fp32_add_pj"),
    "fp16": ("fp16_mult_pj", "fp16_add_pj"),
    "int8": ("int8_mult_pj", "int32_add_pj"),
}


@dataclass(frozen=True)
class Workload:
    """One micro-workload: a name and a function that runs it once."""

    name: str
    run: Callable[[], Any]


@dataclass(frozen=True)
class Sample:
    """One workload's counted features (per call) and measured joules per call."""

    name: str
    features: tuple[float, ...]
    joules: float


def fit_coefficients(
    rows: Sequence[Sequence[float]], joules: Sequence[float]
) -> tuple[list[float], list[bool]]:
    """Non-negative least squares of ``joules`` on ``rows`` (one row of FEATURES per sample).

    Each sample is weighted by 1 / its joules, so the fit minimises relative error and small
    workloads count as much as large ones. Returns the coefficients (joules per unit of each
    feature) and, per feature, whether the data determined it (a feature that is zero in every
    row is not fitted and reported as such).
    """
    import numpy as np
    from scipy.optimize import nnls

    matrix = np.asarray(rows, dtype=float)
    target = np.asarray(joules, dtype=float)
    present = [bool(np.any(matrix[:, column] > 0)) for column in range(matrix.shape[1])]
    columns = [column for column, used in enumerate(present) if used]
    weights = 1.0 / np.maximum(target, np.finfo(float).tiny)
    scales = matrix[:, columns].max(axis=0)
    solution, _ = nnls((matrix[:, columns] / scales) * weights[:, None], target * weights)
    coefficients = [0.0] * matrix.shape[1]
    for column, value, scale in zip(columns, solution, scales, strict=True):
        coefficients[column] = float(value / scale)
    return coefficients, present


def predict(coefficients: Sequence[float], features: Sequence[float]) -> float:
    return float(sum(c * f for c, f in zip(coefficients, features, strict=True)))


def median_relative_error(coefficients: Sequence[float], samples: Sequence[Sample]) -> float:
    """Median of |predicted − measured| / measured over ``samples``."""
    errors = sorted(
        abs(predict(coefficients, sample.features) - sample.joules) / sample.joules
        for sample in samples
    )
    middle = len(errors) // 2
    return errors[middle] if len(errors) % 2 else (errors[middle - 1] + errors[middle]) / 2


def table_from_coefficients(
    coefficients: Sequence[float], present: Sequence[bool], calibration: Mapping[str, Any]
) -> dict[str, Any]:
    """Energy-table overrides (picojoules) from fitted joules per MAC and per byte.

    A MAC's fitted energy is split between its multiply and add keys in the default table's
    proportion; features the data did not determine keep their default.
    """
    from pytest_energy.meters.counted import DEFAULT_ENERGY_TABLE_PICOJOULES as default

    table: dict[str, Any] = {}
    for index, precision in enumerate(("fp32", "fp16", "int8")):
        if not present[index]:
            continue
        mult_key, add_key = _DEFAULT_MAC_SPLIT[precision]
        picojoules = coefficients[index] * 1e12
        share = default[mult_key] / (default[mult_key] + default[add_key])
        table[mult_key] = picojoules * share
        table[add_key] = picojoules * (1 - share)
    if present[3]:
        table["sram_pj_per_64_bits"] = coefficients[3] * 1e12 * 8
    if present[4]:
        table["dram_pj_per_32_bits"] = coefficients[4] * 1e12 * 4
    if present[5]:
        table["operator_call_pj"] = coefficients[5] * 1e12
    table["calibration"] = dict(calibration)
    return table


def workloads(scale: float = 1.0) -> list[Workload]:
    """The fixed suite: GEMM, conv, attention and element-wise, several sizes and dtypes."""
    import torch

    torch.manual_seed(0)
    suite: list[Workload] = []

    def size(value: int) -> int:
        return max(4, int(value * scale))

    for dtype in (torch.float32, torch.bfloat16):
        tag = str(dtype).removeprefix("torch.")
        for side in (64, 128, 256, 384):
            a = torch.randn(size(side), size(side), dtype=dtype)
            b = torch.randn(size(side), size(side), dtype=dtype)
            suite.append(Workload(f"gemm {side}² {tag}", lambda a=a, b=b: a @ b))
        for channels, image in ((16, 32), (32, 16), (64, 8)):
            conv = torch.nn.Conv2d(channels, channels, 3, padding=1).to(dtype)
            x = torch.randn(4, channels, size(image), size(image), dtype=dtype)
            suite.append(Workload(f"conv {channels}ch {image}² {tag}", lambda c=conv, x=x: c(x)))
        for tokens in (64, 128):
            q = torch.randn(2, 4, size(tokens), 32, dtype=dtype)
            suite.append(
                Workload(
                    f"attention {tokens} tokens {tag}",
                    lambda q=q: torch.nn.functional.scaled_dot_product_attention(q, q, q),
                )
            )
        for elements in (1 << 14, 1 << 18, 1 << 21):
            x = torch.randn(size(elements), dtype=dtype)
            suite.append(Workload(f"add {elements} {tag}", lambda x=x: x + x))
            suite.append(Workload(f"relu {elements} {tag}", lambda x=x: torch.relu(x)))
    return suite


def measure_sample(workload: Workload, meter: Any, counted: Any, min_seconds: float) -> Sample:
    """Count one call of ``workload``; measure joules per call over ≥ ``min_seconds``."""
    workload.run()  # warm up
    counted.start()
    workload.run()
    reading = counted.stop()
    macs = reading.details["macs_by_precision"]
    levels = reading.details["bytes_moved_by_level"]
    features = (
        float(macs.get("fp32", 0)),
        float(macs.get("fp16", 0)),
        float(macs.get("int8", 0)),
        float(levels["sram"]),
        float(levels["dram"]),
        float(reading.details["operator_calls"]),
    )
    window = max(min_seconds, getattr(meter, "min_window_seconds", 0.0))
    calls = 1
    while True:
        started = time.perf_counter()
        meter.start()
        for _ in range(calls):
            workload.run()
        measured = meter.stop()
        elapsed = time.perf_counter() - started
        if elapsed >= window and measured.joules > 0:
            return Sample(workload.name, features, measured.joules / calls)
        calls = min(
            calls * 10, max(calls + 1, math.ceil(calls * 1.3 * window / max(elapsed, 1e-6)))
        )


def hardware_name(meter_name: str, meter: Any) -> str:
    """What the fit describes: the GPU for nvml, the CPU model otherwise."""
    described = meter.describe()
    if meter_name == "nvml":
        names = described.get("gpus") or described.get("devices") or described.get("gpu")
        if names:
            return str(names if isinstance(names, str) else ", ".join(map(str, names)))
    from pytest_energy.machine import cpu_model_name

    return f"{cpu_model_name()} ({meter_name})"


def check_output_path(path: str) -> None:
    """Raise ``ConfigError`` naming ``--out`` before any work when ``path`` cannot be written."""
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise ConfigError(f"--out {path}: is a directory; give a file name such as table.json")
    if not os.path.isdir(directory):
        raise ConfigError(f"--out {path}: directory {directory} does not exist")
    if not os.access(directory, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        raise ConfigError(f"--out {path}: cannot be written (permission denied)")


def write_table(path: str, table: Mapping[str, Any]) -> None:
    """Write ``table`` as JSON atomically: an interrupted write leaves the old file whole."""
    directory = os.path.dirname(os.path.abspath(path))
    handle, temporary = tempfile.mkstemp(prefix=".calibrate-", suffix=".json", dir=directory)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            json.dump(table, out, indent=2, sort_keys=True)
            out.write("\n")
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def command_calibrate(args: argparse.Namespace) -> int:
    """Run the suite under ``--meter``, fit the table, print the fit, write ``--out``."""
    from pytest_energy.meters import MeterOptions, meter_class
    from pytest_energy.meters.counted import CountedMeter

    if args.out:
        check_output_path(args.out)
    if args.min_seconds <= 0 or not math.isfinite(args.min_seconds):
        raise ConfigError(f"--min-seconds: must be a positive number, got {args.min_seconds}")
    if not 0 < args.scale <= 4:
        raise ConfigError(f"--scale: must be in (0, 4], got {args.scale}")
    options = MeterOptions()
    cls = meter_class(args.meter)
    reason = cls.unavailable_reason(**options.probe_kwargs(args.meter))
    if reason is not None:
        raise ConfigError(f"--meter {args.meter}: does not work here ({reason})")
    meter = cls(**options.constructor_kwargs(args.meter))
    counted = CountedMeter()
    import torch

    torch.set_num_threads(args.threads)
    samples = [
        measure_sample(workload, meter, counted, args.min_seconds)
        for workload in workloads(args.scale)
    ]
    held_in, held_out = samples[::2], samples[1::2]
    first, _ = fit_coefficients([s.features for s in held_in], [s.joules for s in held_in])
    held_out_error = median_relative_error(first, held_out)
    coefficients, present = fit_coefficients(
        [s.features for s in samples], [s.joules for s in samples]
    )
    calibration = {
        "hardware": hardware_name(args.meter, meter),
        "date": datetime.date.today().isoformat(),
        "meter": args.meter,
        "workloads": len(samples),
        "torch_threads": args.threads,
        "held_out_median_relative_error": round(held_out_error, 4),
        "fit_median_relative_error": round(median_relative_error(coefficients, samples), 4),
    }
    table = table_from_coefficients(coefficients, present, calibration)
    print(f"calibrated counted energy table against {args.meter} on {calibration['hardware']}")
    print(
        f"{len(samples)} workloads; fit on every other, median relative error on the rest "
        f"(held out): {100 * held_out_error:.1f} %"
    )
    units = ("pJ/MAC", "pJ/MAC", "pJ/MAC", "pJ/byte", "pJ/byte", "pJ/call")
    for feature, value, used, unit in zip(FEATURES, coefficients, present, units, strict=True):
        shown = f"{value * 1e12:.4g} {unit}" if used else "not in the suite's data: default kept"
        print(f"  {feature.replace('_', ' ')}: {shown}")
    if args.out:
        write_table(args.out, table)
        print(f"table written to {args.out}; use it with --energy-counted-table {args.out}")
    else:
        print(json.dumps(table, indent=2, sort_keys=True))
    meter.close()
    return 0


def add_calibrate_command(commands: Any) -> None:
    """Add ``calibrate`` to the ``pytest-energy`` subcommands (an argparse subparsers object)."""
    calibrate = commands.add_parser(
        "calibrate",
        help="fit the counted meter's energy table to a real meter on this machine",
        description=__doc__.splitlines()[0] if __doc__ else None,
    )
    calibrate.add_argument(
        "--meter", required=True, choices=("nvml", "rapl", "cputime"), help="the real meter"
    )
    calibrate.add_argument("--out", metavar="TABLE.JSON", help="write the table here")
    calibrate.add_argument(
        "--min-seconds",
        type=float,
        default=0.5,
        help="shortest measured window per workload, seconds (default 0.5)",
    )
    calibrate.add_argument(
        "--scale", type=float, default=1.0, help="workload size factor (default 1; tests: 0.25)"
    )
    calibrate.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    calibrate.set_defaults(handler=command_calibrate)
