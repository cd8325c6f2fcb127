"""The nvml meter, driven by a stand-in NVML module, plus the real pynvml where it is installed."""

from __future__ import annotations

import ctypes
import sys
import threading
import time
from dataclasses import dataclass
from types import SimpleNamespace

import pytest

from pytest_energy.errors import MeasurementError, MeterError, MeterUnavailable
from pytest_energy.meters.nvml import (
    ENERGY_COUNTER,
    POWER_POLLING,
    NvmlMeter,
    integrate_watts,
    visible_nvml_indices,
)

AMPERE, VOLTA, PASCAL = 7, 5, 4
UUID_A = "GPU-aaaaaaaa-1111-2222-3333-444444444444"
UUID_B = "GPU-bbbbbbbb-1111-2222-3333-444444444444"


@dataclass
class FakeGpu:
    """One GPU as the stand-in NVML reports it; tests move its counter and power by hand."""

    uuid: str
    name: str = "NVIDIA A100-SXM4-40GB"
    architecture: int = AMPERE
    millijoules: int = 5_000_000
    milliwatts: int = 60_000
    has_energy_counter: bool = True
    has_power: bool = True


class FakeNvml:
    """The few NVML calls the meter uses, with pynvml's names, error class and constants."""

    NVML_DEVICE_ARCH_PASCAL = PASCAL
    NVML_DEVICE_ARCH_VOLTA = VOLTA
    NVML_DEVICE_ARCH_AMPERE = AMPERE
    NVML_ERROR_NOT_SUPPORTED = 3
    NVML_ERROR_LIBRARY_NOT_FOUND = 12

    class NVMLError(Exception):
        def __init__(self, value: int) -> None:
            super().__init__(value)
            self.value = value

    def __init__(self, *gpus: FakeGpu, init_error: int | None = None) -> None:
        self.gpus = list(gpus)
        self.init_error = init_error
        self.init_calls = 0
        self.shutdown_calls = 0

    def nvmlInit(self) -> None:
        if self.init_error is not None:
            raise self.NVMLError(self.init_error)
        self.init_calls += 1

    def nvmlShutdown(self) -> None:
        self.shutdown_calls += 1

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeGpu:
        return self.gpus[index]

    def nvmlDeviceGetUUID(self, handle: FakeGpu) -> str:
        return handle.uuid

    def nvmlDeviceGetName(self, handle: FakeGpu) -> str:
        return handle.name

    def nvmlDeviceGetArchitecture(self, handle: FakeGpu) -> int:
        return handle.architecture

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: FakeGpu) -> int:
        if not handle.has_energy_counter or handle.architecture < VOLTA:
            raise self.NVMLError(self.NVML_ERROR_NOT_SUPPORTED)
        return handle.millijoules

    def nvmlDeviceGetPowerUsage(self, handle: FakeGpu) -> int:
        if not handle.has_power:
            raise self.NVMLError(self.NVML_ERROR_NOT_SUPPORTED)
        return handle.milliwatts


@pytest.fixture(autouse=True)
def all_gpus_visible(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


@pytest.fixture
def two_gpus() -> FakeNvml:
    return FakeNvml(FakeGpu(UUID_A), FakeGpu(UUID_B, name="NVIDIA H100 80GB HBM3"))


def test_meter_identity_matches_the_meter_protocol() -> None:
    assert (NvmlMeter.name, NvmlMeter.kind, NvmlMeter.min_window_seconds) == (
        "nvml",
        "measured",
        1.0,
    )


def test_reports_joules_per_gpu_from_energy_counter_deltas(two_gpus):
    meter = NvmlMeter(nvml=two_gpus)
    meter.start()
    two_gpus.gpus[0].millijoules += 1500
    two_gpus.gpus[1].millijoules += 250
    reading = meter.stop()

    assert reading.meter == "nvml"
    assert reading.kind == "measured"
    assert reading.joules_by_domain == pytest.approx({"gpu:0": 1.5, "gpu:1": 0.25})
    assert reading.details["method"] == {"gpu:0": ENERGY_COUNTER, "gpu:1": ENERGY_COUNTER}
    assert reading.details["gpus"]["gpu:1"] == {
        "name": "NVIDIA H100 80GB HBM3",
        "uuid": UUID_B,
        "nvml_index": 1,
    }
    meter.close()


def test_nvml_is_initialised_once_per_meter_and_shut_down_by_close(two_gpus):
    meter = NvmlMeter(nvml=two_gpus)
    for _ in range(3):
        meter.start()
        meter.stop()
    assert (two_gpus.init_calls, two_gpus.shutdown_calls) == (1, 0)

    meter.close()
    meter.close()
    assert (two_gpus.init_calls, two_gpus.shutdown_calls) == (1, 1)
    with pytest.raises(MeterError, match="closed"):
        meter.start()


def test_cuda_visible_devices_limits_and_renumbers_the_gpus(two_gpus, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    meter = NvmlMeter(nvml=two_gpus)
    meter.start()
    two_gpus.gpus[0].millijoules += 9000
    two_gpus.gpus[1].millijoules += 2000
    reading = meter.stop()

    assert reading.joules_by_domain == pytest.approx({"gpu:0": 2.0})
    assert reading.details["gpus"]["gpu:0"]["uuid"] == UUID_B
    meter.close()


def test_cuda_visible_devices_order_is_the_domain_order(two_gpus, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,0")
    meter = NvmlMeter(nvml=two_gpus)

    assert [(gpu.domain, gpu.nvml_index) for gpu in meter.gpus] == [("gpu:0", 1), ("gpu:1", 0)]
    meter.close()


def test_cuda_visible_devices_accepts_uuid_prefixes(two_gpus, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-bbbb")
    meter = NvmlMeter(nvml=two_gpus)

    assert [gpu.uuid for gpu in meter.gpus] == [UUID_B]
    meter.close()


def test_an_empty_cuda_visible_devices_hides_every_gpu(two_gpus, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")

    reason = NvmlMeter.unavailable_reason(nvml=two_gpus)
    assert reason == "nvml: no NVIDIA GPU visible (CUDA_VISIBLE_DEVICES='' hides all 2)"
    with pytest.raises(MeterUnavailable, match="no NVIDIA GPU visible"):
        NvmlMeter(nvml=two_gpus)
    assert two_gpus.init_calls == two_gpus.shutdown_calls


def test_a_machine_without_gpus_is_a_plain_reason():
    assert NvmlMeter.unavailable_reason(nvml=FakeNvml()) == "nvml: no NVIDIA GPU visible"


@pytest.mark.parametrize(
    ("cuda_visible_devices", "expected"),
    [
        (None, [0, 1, 2]),
        ("", []),
        ("2,0", [2, 0]),
        (" 1 , 2 ", [1, 2]),
        ("0,7,1", [0]),
        ("1,1,2", [1]),
        ("-1,0", []),
        ("GPU-cc", [2]),
        ("GPU-aa,0", [0]),
        ("GPU-", []),
        ("MIG-0123,0", []),
    ],
)
def test_visible_indices_follow_cudas_parsing_rules(cuda_visible_devices, expected):
    uuids = ["GPU-aa11", "GPU-bb22", "GPU-cc33"]
    assert visible_nvml_indices(cuda_visible_devices, uuids) == expected


def test_gpus_before_volta_integrate_polled_power_over_the_window():
    nvml = FakeNvml(FakeGpu(UUID_A, architecture=PASCAL, milliwatts=50_000))
    meter = NvmlMeter(nvml=nvml, poll_interval_seconds=0.005)
    meter.start()
    time.sleep(0.2)
    reading = meter.stop()
    meter.close()

    assert reading.details["method"] == {"gpu:0": POWER_POLLING}
    assert reading.details["power_samples"]["gpu:0"] >= 3
    assert reading.joules_by_domain["gpu:0"] == pytest.approx(50.0 * reading.seconds, rel=0.02)


def test_a_counter_that_is_not_supported_falls_back_to_power_polling():
    nvml = FakeNvml(FakeGpu(UUID_A), FakeGpu(UUID_B, has_energy_counter=False))
    meter = NvmlMeter(nvml=nvml, poll_interval_seconds=0.005)
    meter.start()
    nvml.gpus[0].millijoules += 4000
    time.sleep(0.05)
    reading = meter.stop()
    meter.close()

    assert reading.details["method"] == {"gpu:0": ENERGY_COUNTER, "gpu:1": POWER_POLLING}
    assert list(reading.joules_by_domain) == ["gpu:0", "gpu:1"]
    assert reading.joules_by_domain["gpu:0"] == pytest.approx(4.0)
    assert reading.joules_by_domain["gpu:1"] == pytest.approx(60.0 * reading.seconds, rel=0.05)


def test_trapezoidal_integration_of_power_samples():
    samples = [(0.0, 10.0), (1.0, 20.0), (3.0, 20.0)]
    assert integrate_watts(samples) == pytest.approx(15.0 + 40.0)
    assert integrate_watts(samples[:1]) == 0.0


def test_a_gpu_reporting_neither_energy_nor_power_is_unavailable():
    nvml = FakeNvml(FakeGpu(UUID_A, has_energy_counter=False, has_power=False))

    reason = NvmlMeter.unavailable_reason(nvml=nvml)
    assert reason is not None
    assert reason.startswith("nvml: gpu:0 reports neither an energy counter nor power")


def test_close_stops_the_power_polling_thread():
    def polling_threads():
        return [t for t in threading.enumerate() if t.name == "pytest-energy-nvml-power"]

    before = len(polling_threads())
    meter = NvmlMeter(nvml=FakeNvml(FakeGpu(UUID_A, architecture=PASCAL)))
    meter.start()
    meter.stop()
    assert len(polling_threads()) == before + 1

    meter.close()
    assert len(polling_threads()) == before


def test_a_missing_nvml_library_is_a_plain_reason():
    nvml = FakeNvml(init_error=FakeNvml.NVML_ERROR_LIBRARY_NOT_FOUND)
    assert NvmlMeter.unavailable_reason(nvml=nvml) == (
        "nvml: NVML library not found (no NVIDIA driver)"
    )


def _fake_torch(
    initialised: bool, on_synchronize, current_device: int = 0, devices_with_memory=(0, 1)
) -> SimpleNamespace:
    cuda = SimpleNamespace(
        is_initialized=lambda: initialised,
        synchronize=on_synchronize,
        current_device=lambda: current_device,
        memory_reserved=lambda device: 1 << 20 if device in devices_with_memory else 0,
    )
    return SimpleNamespace(cuda=cuda)


def test_cuda_is_synchronised_at_both_edges_so_queued_kernels_count(two_gpus, monkeypatch):
    synchronised: list[int] = []

    def finish_queued_kernels(device: int) -> None:
        synchronised.append(device)
        two_gpus.gpus[device].millijoules += 700

    monkeypatch.setitem(sys.modules, "torch", _fake_torch(True, finish_queued_kernels))
    meter = NvmlMeter(nvml=two_gpus)
    meter.start()
    reading = meter.stop()
    meter.close()

    assert synchronised == [0, 1, 0, 1]
    assert reading.joules_by_domain == pytest.approx({"gpu:0": 0.7, "gpu:1": 0.7})


def test_cuda_is_not_synchronised_before_torch_initialises_it(two_gpus, monkeypatch):
    synchronised: list[int] = []
    monkeypatch.setitem(sys.modules, "torch", _fake_torch(False, synchronised.append))
    meter = NvmlMeter(nvml=two_gpus)
    meter.start()
    meter.stop()
    meter.close()

    assert synchronised == []


def test_cuda_is_synchronised_only_on_devices_this_process_uses(two_gpus, monkeypatch):
    synchronised: list[int] = []
    monkeypatch.setitem(
        sys.modules,
        "torch",
        _fake_torch(True, synchronised.append, current_device=1, devices_with_memory=()),
    )
    meter = NvmlMeter(nvml=two_gpus)
    meter.start()
    meter.stop()
    meter.close()

    assert synchronised == [1, 1]


def test_the_meter_never_imports_torch_itself(two_gpus, monkeypatch):
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    meter = NvmlMeter(nvml=two_gpus)
    meter.start()
    meter.stop()
    meter.close()

    assert "torch" not in sys.modules


def test_a_counter_going_backwards_is_a_meter_error(two_gpus):
    meter = NvmlMeter(nvml=two_gpus)
    meter.start()
    two_gpus.gpus[0].millijoules = 0

    with pytest.raises(MeterError, match="went backwards"):
        meter.stop()
    meter.close()


def test_stop_without_start_and_nested_start_are_misuse(two_gpus):
    meter = NvmlMeter(nvml=two_gpus)
    with pytest.raises(MeasurementError, match="without start"):
        meter.stop()
    meter.start()
    with pytest.raises(MeasurementError, match="already open"):
        meter.start()
    meter.close()


def _nvml_library_loads() -> bool:
    try:
        ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        return False
    return True


@pytest.mark.skipif(_nvml_library_loads(), reason="this machine has an NVIDIA driver")
def test_real_pynvml_without_a_driver_gives_a_reason_not_a_traceback():
    pytest.importorskip("pynvml")

    reason = NvmlMeter.unavailable_reason()
    assert reason == "nvml: NVML library not found (no NVIDIA driver)"
    with pytest.raises(MeterUnavailable, match="NVML library not found"):
        NvmlMeter()


@pytest.mark.skipif(not _nvml_library_loads(), reason="needs an NVIDIA driver")
def test_real_gpu_energy_counter_reads_positive_joules_over_a_second():
    pytest.importorskip("pynvml")
    reason = NvmlMeter.unavailable_reason()
    if reason is not None:
        pytest.skip(reason)

    meter = NvmlMeter()
    meter.start()
    time.sleep(NvmlMeter.min_window_seconds)
    reading = meter.stop()
    meter.close()

    assert reading.seconds >= NvmlMeter.min_window_seconds
    assert set(reading.joules_by_domain) == {gpu.domain for gpu in meter.gpus}
    assert all(joules > 0 for joules in reading.joules_by_domain.values())
    watts = reading.joules / reading.seconds
    assert 1 < watts < 2000 * len(meter.gpus)
