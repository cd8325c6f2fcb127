"""pytest-xdist: one GPU per worker, shared meters refused, and results merged as a serial run.

No GPU is needed: pinning only sets ``CUDA_VISIBLE_DEVICES`` from the worker id and the GPUs the
machine lists, and the tests give it a list to pin from.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pytest_energy.errors import ConfigError
from pytest_energy.workers import (
    ALLOW_SHARED_OPTION,
    GPU_PER_WORKER_OPTION,
    check_gpus_for_workers,
    shared_meter_message,
    shared_meters,
    visible_gpus,
    worker_gpu,
    worker_index,
)

pytest.importorskip("xdist")

# --- which GPU each worker gets ---------------------------------------------------------------


def test_worker_gw_k_gets_the_kth_visible_gpu():
    gpus = visible_gpus("3,5", gpu_count=8)

    assert [worker_gpu(f"gw{k}", 2, gpus) for k in range(2)] == ["3", "5"]


def test_without_cuda_visible_devices_every_gpu_the_machine_has_is_listed():
    assert visible_gpus(None, gpu_count=4) == ["0", "1", "2", "3"]
    assert visible_gpus("GPU-8f2e, GPU-11aa", gpu_count=4) == ["GPU-8f2e", "GPU-11aa"]
    assert visible_gpus("", gpu_count=4) == []  # CUDA reads an empty value as "no GPU"


def test_worker_ids_are_read_by_their_number():
    assert worker_index("gw0") == 0
    assert worker_index("gw12") == 12
    with pytest.raises(ConfigError, match="gw0, gw1"):
        worker_index("master")


def test_more_workers_than_gpus_is_refused_with_the_largest_n_that_works():
    with pytest.raises(ConfigError, match=r"3 pytest-xdist workers but 2 GPUs.*-n 2 or fewer"):
        check_gpus_for_workers(3, ["0", "1"])


def test_no_gpu_at_all_is_refused_with_the_reason():
    with pytest.raises(ConfigError, match=r"no GPU to give the workers \(NVML finds no GPU\)"):
        check_gpus_for_workers(2, [], why="NVML finds no GPU")


# --- meters that would see other workers' tests ------------------------------------------------


def test_machine_wide_meters_are_shared_by_two_workers_per_process_meters_are_not():
    scopes = {"rapl": "host", "nvml": "device", "cputime": "process", "counted": "process"}

    assert shared_meters(scopes, worker_count=2, gpu_per_worker=False) == {
        "rapl": "host",
        "nvml": "device",
    }
    assert shared_meters(scopes, worker_count=2, gpu_per_worker=True) == {"rapl": "host"}
    assert shared_meters(scopes, worker_count=1, gpu_per_worker=False) == {}


def test_the_refusal_says_why_and_names_both_ways_out():
    message = shared_meter_message({"nvml": "device"}, 4, gpu_per_worker=False, allowed=False)

    assert "nvml reads every GPU the workers can see" in message
    assert GPU_PER_WORKER_OPTION in message
    assert ALLOW_SHARED_OPTION in message


# --- whole runs -------------------------------------------------------------------------------

LIFECYCLE_TESTS = """
import pytest
import torch


@pytest.mark.lifecycle(method="matmul", usage=[1e3, 1e6])
@pytest.mark.parametrize("size", [8, 16, 24, 32])
def test_method(energy, size):
    weights = torch.ones(size, size)
    with energy.train("train"):
        for _ in range(3):
            weights = weights @ torch.ones(size, size) / size
    energy.accuracy = 0.5
    energy.inference(lambda: weights @ torch.ones(size, 4), samples=4)
"""

TIME_DEPENDENT = {"seconds", "date", "time", "created", "latency"}  # latency: wall-clock per test


def without_timings(value: Any) -> Any:
    """The document with wall-clock figures and dates left out: what must not depend on -n."""
    if isinstance(value, dict):
        return {k: without_timings(v) for k, v in value.items() if k not in TIME_DEPENDENT}
    if isinstance(value, list):
        return [without_timings(item) for item in value]
    return value


def shape(value: Any) -> Any:
    """Keys and list lengths only: what an estimated meter's figures must share across runs."""
    if isinstance(value, dict):
        return {key: shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [shape(item) for item in value]
    return type(value).__name__


def energy_run(pytester: pytest.Pytester, name: str, *options: str) -> dict[str, Any]:
    result = pytester.runpytest(
        "--energy",
        "--energy-meter=cputime,counted",
        f"--energy-json={name}.json",
        "--energy-save",
        f"--energy-baselines={name}",
        *options,
    )
    result.assert_outcomes(passed=4)
    baselines = {
        path.name: json.loads(path.read_text()) for path in (pytester.path / name).glob("*.json")
    }
    return {"results": json.loads((pytester.path / f"{name}.json").read_text()), **baselines}


def test_two_workers_give_the_results_and_baselines_of_a_serial_run(pytester):
    pytester.makepyfile(test_xdist_lifecycle=LIFECYCLE_TESTS)

    serial = energy_run(pytester, "serial", "-p", "no:xdist")
    parallel = energy_run(pytester, "parallel", "-n", "2")

    assert set(serial) == set(parallel) == {"results", "counted.json", *serial.keys() - {"results"}}
    tests = sorted(serial["results"]["tests"])
    assert tests == sorted(parallel["results"]["tests"]) and len(tests) == 4
    # The counted meter is deterministic: the same figures, however the tests were spread.
    assert without_timings(parallel["counted.json"]) == without_timings(serial["counted.json"])
    for nodeid in tests:
        serial_test = serial["results"]["tests"][nodeid]
        parallel_test = parallel["results"]["tests"][nodeid]
        assert without_timings(parallel_test["meters"]["counted"]) == without_timings(
            serial_test["meters"]["counted"]
        )
        # cputime estimates from CPU time: same record, other numbers.
        assert shape(parallel_test) == shape(serial_test)
    estimated = next(name for name in serial if name.startswith("cputime"))
    assert shape(parallel[estimated]) == shape(serial[estimated])


PINNED_TESTS = """
import os

import pytest

GIVEN = {"gw0": "3", "gw1": "5"}


@pytest.mark.parametrize("case", range(4))
def test_each_worker_sees_only_its_own_gpu(case):
    assert os.environ["CUDA_VISIBLE_DEVICES"] == GIVEN[os.environ["PYTEST_XDIST_WORKER"]]
"""


def test_each_worker_is_pinned_to_its_own_gpu(pytester, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    pytester.makepyfile(test_pinned=PINNED_TESTS)

    result = pytester.runpytest("-n", "2", GPU_PER_WORKER_OPTION)

    result.assert_outcomes(passed=4)


def test_pinning_more_workers_than_gpus_is_a_usage_error(pytester, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    pytester.makepyfile(test_pinned=PINNED_TESTS)

    result = pytester.runpytest("-n", "3", GPU_PER_WORKER_OPTION)

    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*3 pytest-xdist workers but 2 GPUs visible*-n 2 or fewer*"])


def fake_powercap(root: Path) -> Path:
    """A powercap tree with one CPU package, so the rapl meter works on any machine."""
    zone = root / "intel-rapl:0"
    zone.mkdir(parents=True)
    (zone / "name").write_text("package-0\n")
    (zone / "energy_uj").write_text("1000000\n")
    (zone / "max_energy_range_uj").write_text("262143328850\n")
    return root


SMALL_TEST = """
def test_work(energy):
    with energy.train("train"):
        sum(range(1000))
"""


def test_a_machine_wide_meter_under_xdist_is_refused_naming_both_options(pytester):
    pytester.makepyfile(test_small=SMALL_TEST)
    powercap = fake_powercap(pytester.path / "powercap")

    result = pytester.runpytest(
        "-n", "2", "--energy", "--energy-meter=rapl", f"--energy-rapl-root={powercap}"
    )

    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            f"*rapl reads the whole machine*{GPU_PER_WORKER_OPTION}*{ALLOW_SHARED_OPTION}*",
        ]
    )


def test_shared_meters_can_be_kept_on_purpose_with_a_warning(pytester):
    pytester.makepyfile(test_small=SMALL_TEST)
    powercap = fake_powercap(pytester.path / "powercap")

    result = pytester.runpytest(
        "-n",
        "2",
        "--energy",
        "--energy-meter=rapl",
        f"--energy-rapl-root={powercap}",
        ALLOW_SHARED_OPTION,
    )

    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([f"*kept because of {ALLOW_SHARED_OPTION}*"])
