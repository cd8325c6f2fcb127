"""Distillation: students are smaller than their teacher; each method's loss falls in training."""

from __future__ import annotations

import pytest
import torch

from benchmarks.lowcarbon.data import synthetic_images
from benchmarks.lowcarbon.distillation import (
    DISTILLATION_METHODS,
    distill,
    distillation_loss,
)
from benchmarks.lowcarbon.models import CifarResNet, count_flops, count_parameters
from benchmarks.lowcarbon.training import TrainSettings, train_classifier


@pytest.fixture(scope="module")
def teacher() -> CifarResNet:
    torch.manual_seed(0)
    model = CifarResNet(depth=8, width=16)
    train_classifier(model, synthetic_images(256, seed=3), 2, TrainSettings(batch_size=64), 0)
    return model.eval()


def test_student_is_smaller_and_cheaper_than_its_teacher(teacher):
    student = CifarResNet(depth=8, width=8)
    inputs = torch.zeros(1, 3, 32, 32)

    assert count_parameters(student) < count_parameters(teacher)
    assert count_flops(student, inputs) < count_flops(teacher, inputs)


@pytest.mark.parametrize("method", DISTILLATION_METHODS)
def test_distillation_loss_falls_over_a_few_steps(teacher, method):
    torch.manual_seed(1)
    student = CifarResNet(depth=8, width=8)
    train = synthetic_images(128, seed=4)
    teacher_before = {name: value.clone() for name, value in teacher.state_dict().items()}

    log = distill(
        student,
        teacher,
        method,
        train,
        epochs=4,
        settings=TrainSettings(batch_size=32, learning_rate=0.05),
        seed=0,
        crd_negatives=64,
    )

    terms = log.distillation_losses
    assert len(terms) == len(log.step_losses) == 16
    assert sum(terms[-4:]) / 4 < sum(terms[:4]) / 4, terms
    assert not student.training
    for name, value in teacher.state_dict().items():
        assert torch.equal(value, teacher_before[name]), f"teacher changed: {name}"


@pytest.mark.parametrize("method", DISTILLATION_METHODS)
def test_each_loss_is_zero_gradient_free_for_a_student_that_copies_the_teacher(teacher, method):
    """A student identical to the teacher has nothing to learn from the feature-matching losses
    (KD's KL, AT, SP, RKD, PKT are 0); FitNets and CRD learn a projection first."""
    images = synthetic_images(16, seed=5).images
    loss = distillation_loss(method, teacher, teacher, dataset_size=16, crd_negatives=8)
    with torch.no_grad():
        features = teacher.forward_features(images)
        value = loss(features, features, torch.arange(16)).item()

    if method in ("fitnets", "crd"):
        assert value > 0
    else:
        assert value == pytest.approx(0.0, abs=1e-6)


def test_unknown_method_is_named(teacher):
    with pytest.raises(ValueError, match="'hint'"):
        distillation_loss("hint", teacher, teacher, dataset_size=4)
