"""Does counted rank the benchmark's models as this CPU does, default table vs calibrated?

Run with ``python -m benchmarks.calibration_agreement``. For a set of the benchmark's models
(the smoke-scale reference ResNet, two pruned copies, a distillation student, the PT2E int8
model, DARTS-style cell networks with random genotypes, a deeper ResNet), all deployed as the
benchmark deploys them (``inference_call``: batch norm folded, eval, one batch of 64), it
measures IEC (joules per sample):

* with ``cputime`` (estimated): several rounds, models interleaved round by round so that a
  drift of the machine touches every model alike, median per model;
* with ``counted`` and the default table (Horowitz ISSCC 2014, 45 nm);
* with ``counted`` and a table fitted to this CPU by ``pytest-energy calibrate --meter
  cputime`` (run here with fast settings, or read from ``--table``).

It prints, for each table, Spearman's rank correlation of counted IEC with cputime IEC
(1: the same order), the median relative error |counted − cputime| / cputime, and the same
error once counted is multiplied by the one factor that best matches cputime (the median
ratio; it shows the order and spacing apart from the absolute scale, and is fitted on the
same models, so it flatters). Weights are untrained: IEC does not depend on their values;
the int8 model is calibrated on a few synthetic batches.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

BATCH = 64
MIN_ROUND_SECONDS = 0.2


# --- statistics (pure) --------------------------------------------------------------------------


def ranks(values: Sequence[float]) -> list[float]:
    """Ranks from 1, ties sharing the mean of the ranks they span (as scipy's ``rankdata``)."""
    order = sorted(range(len(values)), key=lambda index: values[index])
    result = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for position in range(start, end + 1):
            result[order[position]] = (start + end) / 2 + 1
        start = end + 1
    return result


def spearman(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Spearman's rank correlation: Pearson's correlation of the ranks (ties averaged).

    NaN when either side has fewer than two distinct values (no order to compare).
    """
    if len(xs) != len(ys):
        raise ValueError(f"spearman: {len(xs)} values against {len(ys)}")
    rx, ry = ranks(xs), ranks(ys)
    mean_x, mean_y = statistics.fmean(rx), statistics.fmean(ry)
    covariance = sum((a - mean_x) * (b - mean_y) for a, b in zip(rx, ry, strict=True))
    spread_x = math.sqrt(sum((a - mean_x) ** 2 for a in rx))
    spread_y = math.sqrt(sum((b - mean_y) ** 2 for b in ry))
    if spread_x == 0 or spread_y == 0:
        return math.nan
    return covariance / (spread_x * spread_y)


def median_relative_error(predicted: Sequence[float], measured: Sequence[float]) -> float:
    """Median over pairs of |predicted − measured| / measured."""
    return statistics.median(
        abs(guess - truth) / truth for guess, truth in zip(predicted, measured, strict=True)
    )


def common_scale(predicted: Sequence[float], measured: Sequence[float]) -> float:
    """The one factor that best brings ``predicted`` onto ``measured``: the median ratio."""
    return statistics.median(
        truth / guess for guess, truth in zip(predicted, measured, strict=True)
    )


@dataclass(frozen=True)
class Agreement:
    """How well one counted table's IEC follows cputime's over the same models."""

    table: str
    spearman: float
    median_relative_error: float
    scaled_median_relative_error: float
    scale: float


def agreement(table: str, counted: Sequence[float], cputime: Sequence[float]) -> Agreement:
    """Rank correlation and relative errors of ``counted`` IEC against ``cputime`` IEC."""
    scale = common_scale(counted, cputime)
    return Agreement(
        table=table,
        spearman=spearman(counted, cputime),
        median_relative_error=median_relative_error(counted, cputime),
        scaled_median_relative_error=median_relative_error(
            [value * scale for value in counted], cputime
        ),
        scale=scale,
    )


# --- the models and the measurements ------------------------------------------------------------


def build_models(seed: int = 0) -> dict[str, Callable[[], object]]:
    """The deployment call (``inference_call``) of each model, on one synthetic batch."""
    import random

    import torch

    from benchmarks.lowcarbon.data import Split
    from benchmarks.lowcarbon.models import CifarResNet
    from benchmarks.lowcarbon.nas import CellNetwork, random_genotype
    from benchmarks.lowcarbon.pruning import prune_channels
    from benchmarks.lowcarbon.quantization import post_training_quantize
    from benchmarks.lowcarbon.scales import SMOKE
    from benchmarks.lowcarbon.training import inference_call

    torch.manual_seed(seed)
    batch = torch.randn(BATCH, 3, 32, 32)
    calibration = Split(torch.randn(4 * BATCH, 3, 32, 32), torch.randint(0, 10, (4 * BATCH,)))
    search = SMOKE.search
    models: dict[str, torch.nn.Module] = {
        "reference ResNet-8": CifarResNet(SMOKE.base_depth, SMOKE.base_width),
        "ResNet-20": CifarResNet(20, SMOKE.base_width),
        "student ResNet-8 (width 8)": CifarResNet(SMOKE.student_depth, SMOKE.student_width),
    }
    for ratio in (0.3, SMOKE.prune_ratio):
        pruned = CifarResNet(SMOKE.base_depth, SMOKE.base_width)
        models[f"pruned L1 {ratio:.0%}"] = prune_channels(pruned, "l1", ratio, calibration)
    reference = models["reference ResNet-8"].eval()
    models["int8 PT2E (min-max)"] = post_training_quantize(reference, calibration.images, "minmax")
    for trial in range(2):
        genotype = random_genotype(search.nodes_per_cell, random.Random(seed + trial))
        models[f"cell network, random genotype {trial + 1}"] = CellNetwork(
            search.retrain_cells, search.nodes_per_cell, search.retrain_channels, 10, genotype
        )
    return {name: inference_call(model.eval(), batch) for name, model in models.items()}


def calls_per_round(run: Callable[[], object], seconds: float) -> int:
    """Calls of ``run`` that last at least ``seconds`` (one timed call, then scaled up)."""
    started = time.perf_counter()
    run()
    once = max(time.perf_counter() - started, 1e-6)
    return max(1, math.ceil(seconds / once))


def cputime_iec(
    calls: dict[str, Callable[[], object]], rounds: int, round_seconds: float
) -> dict[str, float]:
    """Median cputime joules per sample of each model over ``rounds`` interleaved rounds."""
    from pytest_energy.meters.cputime import CpuTimeMeter

    meter = CpuTimeMeter()
    repeats = {name: calls_per_round(run, round_seconds) for name, run in calls.items()}
    figures: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, run in calls.items():
            meter.start()
            for _ in range(repeats[name]):
                run()
            figures[name].append(meter.stop().joules / (repeats[name] * BATCH))
    return {name: statistics.median(values) for name, values in figures.items()}


def counted_iec(calls: dict[str, Callable[[], object]], table: dict | None) -> dict[str, float]:
    """Counted joules per sample of each model, as ``energy.inference`` counts it."""
    from pytest_energy.fixture import energy_fixture_with
    from pytest_energy.meters.counted import CountedMeter

    figures = {}
    for name, run in calls.items():
        energy = energy_fixture_with([CountedMeter(energy_table=table)], name)
        record = energy.inference(run, samples=BATCH)
        figures[name] = record.joules_per_sample("counted")[0]
    return figures


def calibrated_table(path: str | None, min_seconds: float, scale: float) -> tuple[dict, str]:
    """The table at ``path``, else one fitted now by ``pytest-energy calibrate``; and a note."""
    from pytest_energy.cli import main as cli
    from pytest_energy.meters.counted import load_energy_table

    if path is not None:
        return load_energy_table(path), f"read from {path}"
    with tempfile.TemporaryDirectory() as directory:
        out = os.path.join(directory, "table.json")
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            status = cli(
                [
                    "calibrate",
                    "--meter",
                    "cputime",
                    "--min-seconds",
                    str(min_seconds),
                    "--scale",
                    str(scale),
                    "--out",
                    out,
                ]
            )
        if status != 0:
            raise SystemExit(f"pytest-energy calibrate failed:\n{printed.getvalue()}")
        table = load_energy_table(out)
    held_out = table["calibration"]["held_out_median_relative_error"]
    note = (
        f"fitted now: pytest-energy calibrate --meter cputime --min-seconds {min_seconds:g} "
        f"--scale {scale:g} (held-out median relative error {100 * held_out:.0f} %; int8 "
        f"MACs are not in its suite and keep the default price); {table_summary(table)}"
    )
    return table, note


def table_summary(table: dict) -> str:
    """The fitted prices a reader needs to make sense of the figures, in picojoules."""
    fp32 = table.get("fp32_mult_pj", 3.7) + table.get("fp32_add_pj", 0.9)
    sram = table.get("sram_pj_per_64_bits", 100.0) / 8
    dram = table.get("dram_pj_per_32_bits", 640.0) / 4
    call = table.get("operator_call_pj", 0.0)
    return (
        f"fp32 MAC {fp32:.3g} pJ, SRAM {sram:.3g} pJ/byte, DRAM {dram:.3g} pJ/byte, "
        f"{call:.3g} pJ per operator call (default: 4.6, 12.5, 160, 0)"
    )


def report(
    names: Sequence[str],
    cputime: dict[str, float],
    default: dict[str, float],
    calibrated: dict[str, float],
    note: str,
    rounds: int,
) -> str:
    """The printed report: IEC per model, then the agreement of each table with cputime."""
    from tabulate import tabulate

    rows = [
        [
            name,
            f"{cputime[name] * 1e3:.3f}",
            f"{default[name] * 1e3:.4f}",
            f"{calibrated[name] * 1e3:.3f}",
        ]
        for name in sorted(names, key=cputime.__getitem__)
    ]
    models = tabulate(
        rows,
        headers=[
            "model (batch 64, deployed)",
            "cputime mJ/sample (estimated)",
            "counted default mJ/sample",
            "counted calibrated mJ/sample",
        ],
        disable_numparse=True,
    )
    measured = [cputime[name] for name in names]
    results = [
        agreement("default (Horowitz 45 nm)", [default[name] for name in names], measured),
        agreement("calibrated to this CPU", [calibrated[name] for name in names], measured),
    ]
    summary = tabulate(
        [
            [
                result.table,
                f"{result.spearman:+.2f}",
                f"{100 * result.median_relative_error:.0f} %",
                f"{100 * result.scaled_median_relative_error:.0f} % (× {result.scale:.3g})",
            ]
            for result in results
        ],
        headers=[
            "counted table",
            "Spearman vs cputime",
            "median relative error",
            "after one common factor",
        ],
        disable_numparse=True,
    )
    return (
        f"IEC per sample of {len(names)} benchmark models: cputime median of {rounds} "
        f"interleaved rounds; counted exact\n\n{models}\n\n{summary}\n\nCalibrated table: "
        f"{note}.\nSpearman: 1 = counted orders the models as cputime does. Relative error: "
        f"|counted − cputime| / cputime. 'After one common factor' multiplies counted by the "
        f"median cputime/counted ratio of these models (fitted on them, so it flatters)."
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="cputime rounds per model")
    parser.add_argument(
        "--round-seconds", type=float, default=MIN_ROUND_SECONDS, help="shortest cputime round"
    )
    parser.add_argument("--table", help="a calibrated table (JSON) instead of fitting one here")
    parser.add_argument(
        "--calibrate-min-seconds", type=float, default=0.1, help="calibrate's --min-seconds"
    )
    parser.add_argument("--calibrate-scale", type=float, default=0.5, help="calibrate's --scale")
    args = parser.parse_args(argv)
    if args.rounds < 1 or not args.round_seconds > 0:
        parser.error("--rounds must be ≥ 1 and --round-seconds > 0")

    import torch

    from pytest_energy.errors import ConfigError

    torch.set_num_threads(1)
    try:
        table, note = calibrated_table(args.table, args.calibrate_min_seconds, args.calibrate_scale)
    except ConfigError as error:
        parser.exit(2, f"{error}\n")
    calls = build_models()
    cputime = cputime_iec(calls, args.rounds, args.round_seconds)
    default = counted_iec(calls, None)
    calibrated = counted_iec(calls, table)
    print(report(list(calls), cputime, default, calibrated, note, args.rounds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
