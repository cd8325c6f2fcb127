"""How readings of several torch.distributed ranks add up, without processes (fast).

The rules: per-process meters sum over every rank; a host-wide meter is read by one rank per
host; a GPU is counted once, for the rank that uses it. Every rank computes the same combined
reading from the same all-gathered reports.
"""

from __future__ import annotations

from typing import Any, ClassVar

import pytest

from pytest_energy.distributed import (
    CombinedReading,
    RankGroup,
    RankReport,
    combine_rank_reports,
    current_rank_group,
    host_reader_ranks,
    meter_scope,
    own_device_view,
    process_rank,
    reports_here,
)
from pytest_energy.errors import MeasurementError
from pytest_energy.meters.base import Meter, Reading
from pytest_energy.meters.cputime import CpuTimeMeter
from pytest_energy.meters.nvml import NvmlMeter
from pytest_energy.meters.rapl import RaplMeter
from pytest_energy.results import reading_dict


def reading(meter: str, joules_by_domain: dict[str, float], **extra: Any) -> Reading:
    kind = {"counted": "counted", "cputime": "estimated"}.get(meter, "measured")
    return Reading(meter=meter, kind=kind, seconds=1.0, joules_by_domain=joules_by_domain, **extra)


def gpu_reading(joules_by_domain: dict[str, float], uuids: dict[str, str]) -> Reading:
    gpus = {domain: {"uuid": uuid} for domain, uuid in uuids.items()}
    return reading("nvml", joules_by_domain, details={"gpus": gpus})


# --- scopes -----------------------------------------------------------------------------------


def test_each_meter_says_what_one_reading_covers():
    assert meter_scope(CpuTimeMeter) == "process"
    assert meter_scope(RaplMeter) == "host"
    assert meter_scope(NvmlMeter) == "device"


def test_the_lowest_rank_on_each_host_reads_the_host_wide_meters():
    assert host_reader_ranks(["a", "a", "b", "b"]) == {0, 2}
    assert host_reader_ranks(["b", "a", "b", "a"]) == {0, 1}
    assert host_reader_ranks(["solo"]) == {0}


# --- summing ----------------------------------------------------------------------------------


def test_per_process_meters_sum_over_every_rank_and_keep_each_ranks_figure():
    reports = [
        RankReport(rank, "host-a", {"cputime": reading("cputime", {"process": joules})})
        for rank, joules in [(1, 2.5), (0, 1.5)]
    ]

    combined = combine_rank_reports(reports)["cputime"]

    assert isinstance(combined, CombinedReading)
    assert combined.joules == pytest.approx(4.0)
    assert combined.joules_by_domain == {"rank0/process": 1.5, "rank1/process": 2.5}
    assert [(entry["rank"], entry["joules"]) for entry in combined.ranks] == [(0, 1.5), (1, 2.5)]
    assert combined.details["world_size"] == 2


def test_counted_flops_and_bytes_sum_over_ranks():
    reports = [
        RankReport(
            rank,
            "h",
            {"counted": reading("counted", {"compute": 1e-6}, flops=1000.0, bytes_moved=64.0)},
        )
        for rank in range(2)
    ]

    combined = combine_rank_reports(reports)["counted"]

    assert combined.flops == 2000.0
    assert combined.bytes_moved == 128.0
    assert [entry["flops"] for entry in combined.ranks] == [1000.0, 1000.0]


def test_a_host_wide_meter_counts_once_per_host_even_if_two_ranks_sent_it():
    package = {"cpu:package-0": 10.0}
    reports = [
        RankReport(0, "a", {"rapl": reading("rapl", package)}, {"rapl": "host"}),
        RankReport(1, "a", {"rapl": reading("rapl", package)}, {"rapl": "host"}),
        RankReport(2, "b", {"rapl": reading("rapl", {"cpu:package-0": 7.0})}, {"rapl": "host"}),
    ]

    combined = combine_rank_reports(reports)["rapl"]

    assert combined.joules == pytest.approx(17.0)
    assert [entry["rank"] for entry in combined.ranks] == [0, 2]


def test_each_gpu_counts_once_for_the_rank_that_uses_it():
    # Both ranks see both GPUs (no CUDA_VISIBLE_DEVICES); rank 0 uses gpu:0, rank 1 gpu:1.
    uuids = {"gpu:0": "GPU-aaa", "gpu:1": "GPU-bbb"}
    reports = [
        RankReport(
            rank,
            "h",
            {"nvml": gpu_reading({"gpu:0": 100.0 + rank, "gpu:1": 200.0 + rank}, uuids)},
            {"nvml": "device"},
            gpu_domain=f"gpu:{rank}",
        )
        for rank in range(2)
    ]

    combined = combine_rank_reports(reports)["nvml"]

    assert combined.joules_by_domain == {"rank0/gpu:0": 100.0, "rank1/gpu:1": 201.0}


def test_gpus_nobody_claims_go_to_the_lowest_rank_that_sees_them():
    # Each rank sees one GPU, both named gpu:0 by CUDA, told apart by UUID.
    reports = [
        RankReport(
            rank,
            "h",
            {"nvml": gpu_reading({"gpu:0": 50.0}, {"gpu:0": f"GPU-{rank}"})},
            {"nvml": "device"},
        )
        for rank in range(2)
    ]

    combined = combine_rank_reports(reports)["nvml"]

    assert combined.joules == pytest.approx(100.0)


def test_a_shared_gpu_without_uuids_counts_once_per_host():
    shared = {"nvml": reading("nvml", {"gpu:0": 30.0})}
    reports = [RankReport(rank, "h", shared, {"nvml": "device"}) for rank in range(2)]

    assert combine_rank_reports(reports)["nvml"].joules == pytest.approx(30.0)


def test_a_rank_window_that_is_not_combined_keeps_only_its_own_gpu():
    readings = {
        "nvml": gpu_reading({"gpu:0": 1.0, "gpu:1": 2.0}, {"gpu:0": "a", "gpu:1": "b"}),
        "cputime": reading("cputime", {"process": 3.0}),
    }
    scopes = {"nvml": "device", "cputime": "process"}

    own = own_device_view(readings, scopes, gpu_domain="gpu:1")

    assert own["nvml"].joules_by_domain == {"gpu:1": 2.0}
    assert own["cputime"].joules == 3.0
    assert own_device_view(readings, scopes, gpu_domain=None) == readings


def test_results_keep_the_ranks_of_a_combined_phase():
    reports = [
        RankReport(rank, "h", {"cputime": reading("cputime", {"process": 1.0 + rank})})
        for rank in range(2)
    ]

    entry = reading_dict(combine_rank_reports(reports)["cputime"])

    assert entry["joules"] == pytest.approx(sum(rank["joules"] for rank in entry["ranks"]))
    assert entry["ranks"][1] == {
        "rank": 1,
        "host": "h",
        "joules": 2.0,
        "seconds": 1.0,
        "joules_by_domain": {"process": 2.0},
    }


# --- one rank among several, with a stand-in for torch.distributed ----------------------------


class FakeHostMeter(Meter):
    """A machine-wide meter that notes every window it opens."""

    name: ClassVar[str] = "fakehost"
    kind: ClassVar[str] = "measured"
    scope: ClassVar[str] = "host"
    opened: ClassVar[int] = 0

    @classmethod
    def unavailable_reason(cls, **options: Any) -> str | None:
        return None

    def start(self) -> None:
        type(self).opened += 1

    def stop(self) -> Reading:
        return reading(self.name, {"cpu:package-0": 5.0})


class FakeDist:
    """torch.distributed as seen by rank ``rank`` of ``hosts``; the other ranks' reports are
    scripted in ``others`` (rank → RankReport)."""

    class group:  # mirrors torch.distributed.group.WORLD
        WORLD = object()

    def __init__(self, rank: int, hosts: list[str], others: dict[int, RankReport]) -> None:
        self.rank, self.hosts, self.others = rank, hosts, others
        self.barriers = 0

    def get_rank(self) -> int:
        return self.rank

    def get_world_size(self) -> int:
        return len(self.hosts)

    def barrier(self) -> None:
        self.barriers += 1

    def all_gather_object(self, out: list[Any], obj: Any) -> None:
        for rank in range(len(out)):
            if rank == self.rank:
                out[rank] = obj
            elif isinstance(obj, str):
                out[rank] = self.hosts[rank]
            else:
                out[rank] = self.others[rank]


def rank_group(monkeypatch: pytest.MonkeyPatch, dist: FakeDist, host: str) -> RankGroup:
    monkeypatch.setattr("socket.gethostname", lambda: host)
    return RankGroup(dist)


def test_the_second_rank_on_a_host_never_opens_the_host_wide_meter(monkeypatch):
    FakeHostMeter.opened = 0
    rank0 = RankReport(
        0,
        "node-a",
        {"fakehost": reading("fakehost", {"cpu:package-0": 5.0})},
        {"fakehost": "host"},
    )
    dist = FakeDist(rank=1, hosts=["node-a", "node-a"], others={0: rank0})
    group = rank_group(monkeypatch, dist, "node-a")

    with group.window([FakeHostMeter()], across_ranks=True) as readings:
        pass

    assert FakeHostMeter.opened == 0
    assert readings["fakehost"].joules == 5.0  # rank 0's reading, counted once
    assert [entry["rank"] for entry in readings["fakehost"].ranks] == [0]
    assert dist.barriers == 2  # windows open and close together on every rank


def test_the_first_rank_on_another_host_reads_that_hosts_meter(monkeypatch):
    FakeHostMeter.opened = 0
    rank0 = RankReport(
        0,
        "node-a",
        {"fakehost": reading("fakehost", {"cpu:package-0": 5.0})},
        {"fakehost": "host"},
    )
    dist = FakeDist(rank=1, hosts=["node-a", "node-b"], others={0: rank0})
    group = rank_group(monkeypatch, dist, "node-b")

    with group.window([FakeHostMeter()], across_ranks=True) as readings:
        pass

    assert FakeHostMeter.opened == 1
    assert readings["fakehost"].joules == 10.0
    assert [entry["host"] for entry in readings["fakehost"].ranks] == ["node-a", "node-b"]


def test_an_inference_window_is_this_ranks_own_and_needs_no_exchange(monkeypatch):
    dist = FakeDist(rank=0, hosts=["h", "h"], others={})
    group = rank_group(monkeypatch, dist, "h")

    with group.window([CpuTimeMeter(watts_per_thread=1.0)], across_ranks=False) as readings:
        sum(range(10_000))

    assert set(readings) == {"cputime"}
    assert not isinstance(readings["cputime"], CombinedReading)
    assert dist.barriers == 0


# --- who reports ------------------------------------------------------------------------------


def test_without_torch_distributed_this_process_is_rank_0(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert process_rank() == 0
    assert reports_here()
    assert current_rank_group() is None


def test_under_torchrun_only_rank_0_reports(monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert process_rank() == 1
    assert not reports_here()


def test_measuring_under_torchrun_without_a_process_group_is_refused(monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(MeasurementError, match=r"init_process_group\(\)"):
        current_rank_group()
