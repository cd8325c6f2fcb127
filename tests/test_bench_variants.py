"""Each compression family holds models of more than one size, so IEC differs within a family and
the usage at which a smaller, less accurate model pays off can show: pruning at the scale's two
ratios, distillation to its two students. The counted meter tells them apart exactly."""

from __future__ import annotations

import copy

import pytest
import torch

from benchmarks.conftest import pruned_name, scale_labels
from benchmarks.lowcarbon.data import synthetic_images
from benchmarks.lowcarbon.models import CifarResNet
from benchmarks.lowcarbon.pruning import prune_channels
from benchmarks.lowcarbon.scales import PAPER, SMOKE
from benchmarks.lowcarbon.training import inference_call
from pytest_energy.meters.counted import CountedMeter


def counted_joules_per_sample(model: torch.nn.Module, batch: torch.Tensor) -> float:
    """The counted meter's IEC of `model` deployed as the benchmark deploys it (BN folded)."""
    run_batch = inference_call(model, batch)
    meter = CountedMeter()
    meter.start()
    run_batch()
    return meter.stop().joules / len(batch)


@pytest.fixture(scope="module")
def batch() -> torch.Tensor:
    return synthetic_images(8, seed=0).images


@pytest.mark.parametrize("scale", [SMOKE, PAPER], ids=["smoke", "paper"])
def test_each_scale_has_two_pruning_ratios_and_two_students(scale):
    assert 0 < scale.prune_ratio < scale.aggressive_prune_ratio < 1
    assert scale.student_depth < scale.deep_student_depth < scale.base_depth or (
        scale.student_width < scale.base_width
    )
    labels = scale_labels(scale)
    assert len({labels["pruned"], labels["pruned_aggressive"], labels["base"]}) == 3
    assert labels["student"] != labels["deep_student"]


def test_pruned_models_are_named_by_the_share_of_channels_removed():
    assert pruned_name("resnet8", 0.5) == "resnet8-pruned50"
    assert pruned_name("resnet56", 0.75) == "resnet56-pruned75"


def test_the_two_pruning_ratios_give_two_counted_iecs_below_the_base_models(batch):
    torch.manual_seed(0)
    base = CifarResNet(SMOKE.base_depth, SMOKE.base_width).eval()
    calibration = synthetic_images(32, seed=1)
    moderate, aggressive = (
        prune_channels(copy.deepcopy(base), "l1", ratio, calibration, batch_size=32)
        for ratio in (SMOKE.prune_ratio, SMOKE.aggressive_prune_ratio)
    )

    base_iec, moderate_iec, aggressive_iec = (
        counted_joules_per_sample(model, batch) for model in (base, moderate, aggressive)
    )

    assert aggressive_iec < 0.7 * moderate_iec
    assert moderate_iec < 0.7 * base_iec


def test_the_two_students_have_different_counted_iecs_both_below_the_teachers(batch):
    teacher, student, deep_student = (
        CifarResNet(depth, width)
        for depth, width in (
            (SMOKE.base_depth, SMOKE.base_width),
            (SMOKE.student_depth, SMOKE.student_width),
            (SMOKE.deep_student_depth, SMOKE.student_width),
        )
    )

    teacher_iec, student_iec, deep_student_iec = (
        counted_joules_per_sample(model, batch) for model in (teacher, student, deep_student)
    )

    assert student_iec < 0.8 * deep_student_iec
    assert deep_student_iec < 0.9 * teacher_iec
