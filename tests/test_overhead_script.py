"""counted's slowdown as ``python -m benchmarks.overhead`` measures it, on a load small enough
for a test: what it counts and how its rows read (the figures themselves are timings, judged by
the script on a quiet machine, never asserted here)."""

import torch

from benchmarks.lowcarbon.loads import random_batch_training_step
from benchmarks.overhead import CountedSlowdown, counted_slowdown
from pytest_energy.meters.counted import CountedMeter


def tiny_load():
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4 * 30 * 30, 10)
    )
    return random_batch_training_step(model, batch_size=2)


def test_every_block_counts_the_same_step_and_the_calls_per_step_are_read_from_counted():
    slowdown = counted_slowdown(tiny_load(), CountedMeter(), blocks=3, steps_per_block=1)

    assert slowdown.runs == 3
    assert len(slowdown.distinct_flops) == 1 and slowdown.distinct_flops[0] > 0
    assert slowdown.operator_calls_per_step > 10  # forward, backward and the optimiser's step
    rows = slowdown.rows("tiny load")
    assert [row[0] for row in rows] == [
        "tiny load: counted, one energy.train window",
        "tiny load: torch's dispatch floor in it",
        "tiny load: counting's own share",
        "tiny load: cost per operator call",
    ]
    assert "counts identical in 3 runs" in rows[0][3]


def slowdown_of(counted_percent: float, distinct_flops: tuple[float, ...]) -> CountedSlowdown:
    return CountedSlowdown(
        blocks=5,
        steps_per_block=1,
        counted_percent=counted_percent,
        quartiles_percent=(counted_percent - 1, counted_percent + 1),
        floor_percent=counted_percent / 2,
        own_percent=counted_percent / 2,
        distinct_flops=distinct_flops,
        runs=5,
        operator_calls_per_step=100,
        microseconds_per_operator_call=12.5,
    )


def test_the_target_row_reads_ok_up_to_ten_percent_and_over_it_says_so():
    assert slowdown_of(10.0, (1.0,)).rows("load")[0][2] == "ok"
    assert slowdown_of(10.1, (1.0,)).rows("load")[0][2] == "OVER 10 %"


def test_counts_that_differ_between_runs_are_printed_not_hidden():
    row = slowdown_of(4.0, (1.0, 2.0)).rows("load")[0]
    assert "COUNTS DIFFER: [1.0, 2.0]" in row[3]


def test_the_cost_per_call_row_names_the_calls_it_divides_by():
    row = slowdown_of(4.0, (1.0,)).rows("load")[3]
    assert row[1] == "12.5 µs"
    assert "100 operator calls" in row[3]
