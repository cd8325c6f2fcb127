"""Distillation: students are smaller than their teacher; each method's loss falls in training."""

from __future__ import annotations

import pytest
import torch

from benchmarks.lowcarbon.data import synthetic_images
from benchmarks.lowcarbon.distillation import (
    DISTILLATION_METHODS,
    ContrastiveRepresentationLoss,
    distill,
    distillation_loss,
    fitnets_hint_stage,
)
from benchmarks.lowcarbon.models import CifarResNet, count_flops, count_parameters
from benchmarks.lowcarbon.training import TrainSettings, train_classifier


@pytest.fixture(scope="module")
def teacher() -> CifarResNet:
    torch.manual_seed(0)
    model = CifarResNet(depth=8, width=16)
    train_classifier(model, synthetic_images(256, seed=3), 4, TrainSettings(batch_size=64), 0)
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
    (KD's KL — FitNets' second stage —, AT, SP, RKD, PKT, NST, CC are 0); CRD learns a projection
    first and VID's likelihood keeps its variance term."""
    split = synthetic_images(16, seed=5)
    images = split.images
    loss = distillation_loss(method, teacher, teacher, split.labels, crd_negatives=8)
    with torch.no_grad():
        features = teacher.forward_features(images)
        value = loss(features, features, torch.arange(16)).item()

    if method in ("crd", "vid"):
        assert value > 0
    else:
        assert value == pytest.approx(0.0, abs=1e-6)


def test_unknown_method_is_named(teacher):
    with pytest.raises(ValueError, match="'hint'"):
        distillation_loss("hint", teacher, teacher, torch.arange(4))


def test_crd_negatives_come_from_other_classes_only():
    labels = torch.arange(200) % 10
    loss = ContrastiveRepresentationLoss(8, 8, labels, negatives=64, seed=0)
    anchors = torch.arange(0, 200, 7)

    negatives = loss.draw_negatives(anchors)

    assert negatives.shape == (len(anchors), 64)
    assert (labels[negatives] != labels[anchors][:, None]).all()
    assert (negatives != anchors[:, None]).all()
    assert len(labels[negatives].unique()) == 10, "every other class is drawn from"


def test_crd_refuses_a_single_class_training_set():
    with pytest.raises(ValueError, match="two classes"):
        ContrastiveRepresentationLoss(8, 8, torch.zeros(10, dtype=torch.long), negatives=4)


def test_fitnets_hint_stage_trains_only_the_layers_up_to_the_guided_layer(teacher):
    torch.manual_seed(2)
    student = CifarResNet(depth=8, width=8)
    before = {name: value.clone() for name, value in student.state_dict().items()}
    train = synthetic_images(128, seed=6)

    log = fitnets_hint_stage(
        student, teacher, train, 4, TrainSettings(batch_size=32, learning_rate=0.05), seed=0
    )

    changed = {
        name for name, value in student.state_dict().items() if not torch.equal(value, before[name])
    }
    assert any(name.startswith("stem.") for name in changed)
    assert any(name.startswith("stages.1.") for name in changed)
    assert not any(name.startswith(("stages.2.", "fc.")) for name in changed), changed
    assert sum(log.step_losses[-4:]) < sum(log.step_losses[:4])
    assert not student.training
