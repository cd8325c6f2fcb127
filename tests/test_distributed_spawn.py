"""Data-parallel training on 2 CPU processes (gloo) under the energy fixture.

Ranks fork from a server process that imports torch once (the first run takes seconds, later
ones a fraction of a second), and one pytest run holds the lifecycle test that trains a tiny
model with DDP on 2 ranks and on 1 rank, for the same global batch.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import subprocess
import sys
from typing import Any, ClassVar

import pytest
import torch

from pytest_energy.config import LifecycleSettings
from pytest_energy.data_parallel import DataParallelTraining
from pytest_energy.distributed import DistributedRunError, run_distributed
from pytest_energy.errors import MeasurementError
from pytest_energy.fixture import EnergyFixture
from pytest_energy.meters import MeterSelection
from pytest_energy.meters.base import Meter, Reading
from pytest_energy.meters.cputime import CpuTimeMeter
from pytest_energy.session import EnergySession

WINDOW_LOG = "PYTEST_ENERGY_TEST_WINDOW_LOG"


class FakeHostMeter(Meter):
    """A machine-wide meter (like rapl) that writes the rank of every window it opens to a log."""

    name: ClassVar[str] = "fakehost"
    kind: ClassVar[str] = "measured"
    scope: ClassVar[str] = "host"

    @classmethod
    def unavailable_reason(cls, **options: Any) -> str | None:
        return None

    def start(self) -> None:
        with open(os.environ[WINDOW_LOG], "a", encoding="utf-8") as log:
            log.write(f"rank {os.environ['RANK']}\n")

    def stop(self) -> Reading:
        return Reading("fakehost", "measured", 1.0, {"cpu:package-0": 5.0})


def tiny_training(steps: int = 4, global_batch_size: int = 32) -> DataParallelTraining:
    generator = torch.Generator().manual_seed(0)
    return DataParallelTraining(
        model_factory=functools.partial(torch.nn.Linear, 48, 4),
        images=torch.randn(128, 48, generator=generator),
        labels=torch.randint(0, 4, (128,), generator=generator),
        steps=steps,
        global_batch_size=global_batch_size,
    )


def busy_rank(rank: int, world_size: int) -> int:
    """Some CPU work on every rank; returns the rank so the test sees every result come back."""
    total = 0
    for value in range(300_000):
        total += value % 7
    return rank


def failing_rank(rank: int, world_size: int) -> None:
    if rank == 1:
        raise ValueError("rank 1 lost its data")


def test_a_machine_wide_meter_is_read_by_one_rank_per_host(tmp_path, monkeypatch):
    log = tmp_path / "windows.log"
    monkeypatch.setenv(WINDOW_LOG, str(log))

    run = run_distributed(
        busy_rank, world_size=2, meters=[FakeHostMeter(), CpuTimeMeter(watts_per_thread=10.0)]
    )

    assert run.results == (0, 1)
    assert log.read_text().splitlines() == ["rank 0"]  # rank 1 shares rank 0's host
    host = run.readings["fakehost"]
    assert host.joules == 5.0
    assert [entry["rank"] for entry in host.ranks] == [0]
    cpu = run.readings["cputime"]
    per_rank = [entry["joules"] for entry in cpu.ranks]
    assert len(per_rank) == 2 and all(joules > 0 for joules in per_rank)
    assert cpu.joules == pytest.approx(sum(per_rank))


def test_without_meters_the_ranks_still_run_and_nothing_is_measured():
    run = run_distributed(busy_rank, world_size=2)

    assert run.results == (0, 1)
    assert run.readings == {}


def test_distributed_training_inside_a_measured_window_is_refused():
    session = EnergySession(
        enabled=True,
        selection=MeterSelection([CpuTimeMeter(watts_per_thread=1.0)]),
        defaults=LifecycleSettings(),
        rounds=1,
        warmup_calls=1,
    )
    energy = EnergyFixture(session, LifecycleSettings(), "test_nested")

    with energy.train("outer"), pytest.raises(MeasurementError, match="cannot nest"):
        energy.train_distributed("inner", busy_rank)


def test_two_ranks_train_the_model_one_rank_trains_on_the_same_global_batch():
    one_rank = run_distributed(tiny_training(), world_size=1).results[0]
    two_ranks = run_distributed(tiny_training(), world_size=2).results

    assert two_ranks[1] is None  # only rank 0 sends the weights back
    for name, weights in one_rank.items():
        torch.testing.assert_close(two_ranks[0][name], weights, rtol=1e-5, atol=1e-6)


def test_a_failing_rank_is_named_with_its_error():
    with pytest.raises(DistributedRunError, match=r"rank 1 of 2 failed(.|\n)*rank 1 lost its data"):
        run_distributed(failing_rank, world_size=2)


def test_nccl_without_a_gpu_per_rank_is_refused_before_starting():
    if torch.cuda.device_count() >= 2:
        pytest.skip("this machine has a GPU per rank")
    with pytest.raises(DistributedRunError, match="nccl needs a GPU per rank; 2 ranks but"):
        run_distributed(busy_rank, world_size=2, backend="nccl")


def test_a_function_the_ranks_cannot_import_is_refused_before_starting():
    with pytest.raises(DistributedRunError, match="module-level function"):
        run_distributed(lambda rank, world_size: None, world_size=2)


DDP_LIFECYCLE_TEST = """
import functools

import pytest
import torch

from pytest_energy.data_parallel import DataParallelTraining

generator = torch.Generator().manual_seed(0)
TRAINING = DataParallelTraining(
    model_factory=functools.partial(torch.nn.Linear, 48, 4),
    images=torch.randn(128, 48, generator=generator),
    labels=torch.randint(0, 4, (128,), generator=generator),
    steps=4,
    global_batch_size=32,
)


@pytest.mark.lifecycle(method="ddp")
@pytest.mark.parametrize("ranks", [2, 1])
def test_ddp(energy, ranks):
    run = energy.train_distributed("train", TRAINING, world_size=ranks)
    model = torch.nn.Linear(48, 4)
    model.load_state_dict(run.results[0])
    energy.accuracy = 0.5
"""


HAVE_COUNTED = importlib.util.find_spec("pytest_energy.meters.counted") is not None


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory) -> dict[str, Any]:
    """Results of one pytest run: the same DDP training on 2 ranks and on 1 rank."""
    folder = tmp_path_factory.mktemp("ddp")
    (folder / "test_ddp_lifecycle.py").write_text(DDP_LIFECYCLE_TEST)
    results = folder / "results.json"
    meters = "cputime,counted" if HAVE_COUNTED else "cputime"
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--energy"]
    command += [f"--energy-meter={meters}", f"--energy-json={results}", "test_ddp_lifecycle.py"]
    finished = subprocess.run(command, cwd=folder, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stdout + finished.stderr
    return json.loads(results.read_text())["tests"]


def phase(results: dict[str, Any], ranks: int, meter: str) -> dict[str, Any]:
    view = results[f"test_ddp_lifecycle.py::test_ddp[{ranks}]"]["meters"][meter]
    (train,) = view["phases"]
    return {**train, "tec_joules": view["tec_joules"]}


def test_the_training_energy_of_a_ddp_run_is_the_sum_of_its_ranks(ddp_results):
    train = phase(ddp_results, 2, "cputime")

    per_rank = [entry["joules"] for entry in train["ranks"]]
    assert [entry["rank"] for entry in train["ranks"]] == [0, 1]
    assert all(joules > 0 for joules in per_rank)
    assert train["tec_joules"] == pytest.approx(sum(per_rank))


def test_two_ranks_count_the_flops_of_one_rank_for_the_same_global_batch(ddp_results):
    if not HAVE_COUNTED:
        pytest.skip("pytest_energy/meters/counted.py is not written yet")
    two_ranks = phase(ddp_results, 2, "counted")
    one_rank = phase(ddp_results, 1, "counted")

    assert [entry["flops"] for entry in two_ranks["ranks"]] == [one_rank["flops"] / 2] * 2
    assert two_ranks["flops"] == one_rank["flops"] > 0
