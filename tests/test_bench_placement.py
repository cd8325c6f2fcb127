"""Where a model runs is where its IEC is measured: an int8 CPU model on a GPU machine is not
charged the GPUs' idle power by a GPU meter; CPU meters and the counted meter measure it."""

from __future__ import annotations

from typing import ClassVar

import pytest

from pytest_energy.errors import MeasurementError
from pytest_energy.fixture import EnergyFixture, energy_fixture_with
from pytest_energy.meters.base import Meter, Reading


class FakeMeter(Meter):
    """A meter reading a fixed 1 J per window, under a chosen name."""

    kind: ClassVar = "measured"
    min_window_seconds: ClassVar[float] = 0.0

    def __init__(self, name: str) -> None:
        self.name = name  # type: ignore[misc]
        self.windows = 0

    @classmethod
    def unavailable_reason(cls, **options):
        return None

    def start(self) -> None:
        self.windows += 1

    def stop(self) -> Reading:
        return Reading(meter=self.name, kind="measured", joules_by_domain={"x": 1.0}, seconds=0.1)


def fixture_with(*meters: Meter) -> EnergyFixture:
    return energy_fixture_with(list(meters), "test_x", rounds=2)


def test_a_cpu_model_is_not_measured_by_the_gpu_meter():
    gpu, cpu = FakeMeter("nvml"), FakeMeter("cputime")
    energy = fixture_with(gpu, cpu)

    energy.inference(lambda: None, samples=4, runs_on="cpu")

    assert gpu.windows == 0 and cpu.windows == 2
    result = energy.result()
    assert result["meters"]["cputime"]["iec_joules_per_sample"] == pytest.approx(0.25)
    assert "nvml" not in result["meters"]


def test_the_gpu_meter_says_why_it_has_no_iec_when_it_measured_training():
    gpu, cpu = FakeMeter("nvml"), FakeMeter("cputime")
    energy = fixture_with(gpu, cpu)
    with energy.train("train"):
        pass

    energy.inference(lambda: None, samples=1, runs_on="cpu")

    view = energy.result()["meters"]["nvml"]
    assert view["iec_joules_per_sample"] is None
    assert "runs on the CPU" in view["inference_not_measured"]
    assert energy.result()["meters"]["cputime"]["iec_joules_per_sample"] == 1.0


def test_a_gpu_model_is_measured_by_every_meter():
    gpu, cpu = FakeMeter("nvml"), FakeMeter("cputime")
    energy = fixture_with(gpu, cpu)

    energy.inference(lambda: None, samples=1, runs_on="cuda")

    assert gpu.windows == 2 and cpu.windows == 2


def test_an_unknown_placement_is_named():
    with pytest.raises(MeasurementError, match=r"runs_on.*'tpu'"):
        fixture_with(FakeMeter("cputime")).inference(lambda: None, runs_on="tpu")


def test_an_accuracy_interval_is_written_beside_the_accuracy():
    energy = fixture_with(FakeMeter("cputime"))
    energy.accuracy = 0.9
    energy.accuracy_interval = {"low": 0.88, "high": 0.92, "confidence": 0.95, "samples": 1024}
    energy.inference(lambda: None)

    result = energy.result()

    assert result["accuracy"] == 0.9
    assert result["accuracy_interval"]["samples"] == 1024


@pytest.mark.parametrize(
    ("correct", "samples", "low", "high"),
    [(900, 1000, 0.8798, 0.9170), (0, 10, 0.0, 0.2775), (10, 10, 0.7225, 1.0)],
)
def test_wilson_interval_matches_published_values(correct, samples, low, high):
    from benchmarks.lowcarbon.training import wilson_interval

    interval = wilson_interval(correct, samples)

    assert interval == pytest.approx((low, high), abs=1e-3)
