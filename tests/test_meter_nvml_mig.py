"""The nvml meter on a MIG-mode GPU: refused with the reason, or the whole card measured knowingly.

Driven by the stand-in NVML of ``test_meter_nvml`` with pynvml's MIG calls added.
"""

from __future__ import annotations

import json

import pytest
from test_meter_nvml import UUID_A, UUID_B, FakeGpu, FakeNvml

from pytest_energy.errors import MeterUnavailable
from pytest_energy.meters.nvml import NvmlMeter

MIG_1 = "MIG-11111111-2222-3333-4444-555555555555"
MIG_2 = "MIG-66666666-2222-3333-4444-555555555555"


class FakeMigNvml(FakeNvml):
    """Adds nvmlDeviceGetMigMode and the MIG instance calls; ``mig`` maps a GPU to its instances."""

    NVML_DEVICE_MIG_ENABLE = 1
    NVML_ERROR_NOT_FOUND = 6

    def __init__(self, *gpus: FakeGpu, mig: dict[str, list[str]]) -> None:
        super().__init__(*gpus)
        self.mig = mig

    def nvmlDeviceGetMigMode(self, handle):
        if handle.uuid not in self.mig:
            raise self.NVMLError(self.NVML_ERROR_NOT_SUPPORTED)
        return (1, 1)

    def nvmlDeviceGetMaxMigDeviceCount(self, handle):
        return 7

    def nvmlDeviceGetMigDeviceHandleByIndex(self, handle, index):
        instances = self.mig.get(handle.uuid, [])
        if index >= len(instances):
            raise self.NVMLError(self.NVML_ERROR_NOT_FOUND)
        return FakeGpu(instances[index])


@pytest.fixture(autouse=True)
def all_gpus_visible(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


@pytest.fixture
def one_gpu_in_mig_mode() -> FakeMigNvml:
    return FakeMigNvml(FakeGpu(UUID_A), FakeGpu(UUID_B), mig={UUID_B: [MIG_1, MIG_2]})


def test_a_gpu_in_mig_mode_is_refused_naming_it_and_the_reason(one_gpu_in_mig_mode):
    with pytest.raises(MeterUnavailable) as error:
        NvmlMeter(nvml=one_gpu_in_mig_mode)
    message = str(error.value)
    assert message.startswith("nvml: gpu:1 (NVIDIA A100-SXM4-40GB) is in MIG mode with 2 instance")
    assert "covers the whole GPU" in message
    assert "nvidia-smi -i 1 -mig 0" in message
    assert NvmlMeter.unavailable_reason(nvml=one_gpu_in_mig_mode) == message


def test_a_gpu_not_in_mig_mode_is_measured_as_before(one_gpu_in_mig_mode, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    meter = NvmlMeter(nvml=one_gpu_in_mig_mode)
    meter.start()
    one_gpu_in_mig_mode.gpus[0].millijoules += 2000
    reading = meter.stop()
    assert reading.joules_by_domain == {"gpu:0": 2.0}
    assert "mig" not in reading.details
    meter.close()


def test_the_whole_card_can_be_measured_knowingly_and_every_reading_says_so(one_gpu_in_mig_mode):
    meter = NvmlMeter(nvml=one_gpu_in_mig_mode, whole_gpu_under_mig=True)
    meter.start()
    reading = meter.stop()
    assert reading.details["mig"] == {
        "gpu:1": "MIG mode with 2 instance(s): the whole GPU is measured, "
        "the other instances' work included"
    }
    assert meter.describe()["mig"] == reading.details["mig"]
    meter.close()


def test_a_mig_instance_in_cuda_visible_devices_is_refused_naming_its_gpu(
    one_gpu_in_mig_mode, monkeypatch
):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", MIG_2)
    reason = NvmlMeter.unavailable_reason(nvml=one_gpu_in_mig_mode)
    assert reason == (
        f"nvml: CUDA_VISIBLE_DEVICES names MIG instance {MIG_2} on GPU 1 (NVIDIA A100-SXM4-40GB); "
        "NVML reads energy and power only for the whole GPU, shared by all its instances, so one "
        "instance cannot be measured (use a whole GPU, or the cputime/counted meters)"
    )


def test_auto_leaves_a_mig_gpu_out_and_the_run_says_why(pytester, monkeypatch):
    """The refusal reaches the user through `auto`: nvml not used, with the reason."""
    pytester.makepyfile(
        test_gpu="""
        def test_work(energy):
            with energy.train("finetune"):
                sum(range(10_000))
        """
    )
    fake = FakeMigNvml(FakeGpu(UUID_A), mig={UUID_A: [MIG_1]})
    monkeypatch.setattr("pytest_energy.meters.nvml._import_pynvml", lambda: fake)
    result = pytester.runpytest("--energy", "--energy-json", "out.json")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["energy: not used: nvml: gpu:0 (*) is in MIG mode with 1 inst*"])
    document = json.loads((pytester.path / "out.json").read_text())
    assert "nvml" not in {meter["name"] for meter in document["meters"]}
