"""Distillation: students are smaller than their teacher; each method's loss falls in training;
the new losses (FSP, AB, FT) behave as their papers say on toys."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from benchmarks.lowcarbon.data import synthetic_images
from benchmarks.lowcarbon.distillation import (
    CROSS_ENTROPY_SECOND_STAGE,
    DISTILLATION_METHODS,
    DISTILLATION_PAPERS,
    FIRST_STAGE_PHASES,
    LOSS_WEIGHTS,
    ContrastiveRepresentationLoss,
    FlowOfSolutionLoss,
    activation_boundary_loss,
    distill,
    distillation_loss,
    factor_transfer_loss,
    first_stage,
    fitnets_hint_stage,
    fsp_matrix,
    pre_activation_stages,
    stem_and_stages,
    train_paraphraser,
)
from benchmarks.lowcarbon.models import (
    CifarResNet,
    FeatureOutputs,
    count_flops,
    count_parameters,
)
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


SECOND_STAGE_LOSSES = [m for m in DISTILLATION_METHODS if m not in CROSS_ENTROPY_SECOND_STAGE]


@pytest.mark.parametrize("method", [m for m in SECOND_STAGE_LOSSES if m != "crd"])
def test_distillation_loss_falls_over_a_few_steps(teacher, method):
    """(CRD scores against memory entries refreshed once per epoch, and its loss first rises
    as the memory fills with real, still clustered embeddings: its tests are below.)"""
    torch.manual_seed(1)
    student = CifarResNet(depth=8, width=8)
    train = synthetic_images(128, seed=4)
    teacher_before = {name: value.clone() for name, value in teacher.state_dict().items()}
    settings = TrainSettings(batch_size=32, learning_rate=0.05)
    first = None
    if method == "ft":
        first = train_paraphraser(teacher, train, 2, settings, seed=0)

    log = distill(
        student,
        teacher,
        method,
        train,
        epochs=4,
        settings=settings,
        seed=0,
        crd_negatives=64,
        first=first,
    )

    terms = log.distillation_losses
    assert len(terms) == len(log.step_losses) == 16
    assert sum(terms[-4:]) / 4 < sum(terms[:4]) / 4, terms
    assert not student.training
    for name, value in teacher.state_dict().items():
        assert torch.equal(value, teacher_before[name]), f"teacher changed: {name}"


@pytest.mark.parametrize("method", [m for m in SECOND_STAGE_LOSSES if m != "ft"])
def test_each_loss_is_zero_gradient_free_for_a_student_that_copies_the_teacher(teacher, method):
    """A student identical to the teacher has nothing to learn from the feature-matching losses
    (KD's KL — FitNets' second stage —, AT, SP, RKD, PKT, NST, CC are 0); CRD learns a projection
    first and VID's likelihood keeps its variance term. (FT's translator is learnt: its zero is
    the factor loss's own test below.)"""
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


def test_crd_positive_is_the_samples_own_memory_entry():
    """RepDistiller's CRD: an anchor whose own entry in the other view's memory matches it
    scores a lower loss than one whose memory holds something else."""
    labels = torch.arange(40) % 4
    embedding = F.normalize(torch.randn(40, 8, generator=torch.Generator().manual_seed(0)), dim=1)
    features = FeatureOutputs([], embedding, torch.zeros(40, 4))

    def loss_with(memory_holds_the_embedding: bool) -> float:
        loss = ContrastiveRepresentationLoss(8, 8, labels, negatives=16, embedding_dim=8, seed=0)
        with torch.no_grad():
            for head in (loss.student_head, loss.teacher_head):
                head.weight.copy_(torch.eye(8))
                head.bias.zero_()
            if memory_holds_the_embedding:
                loss.student_memory.copy_(embedding)
                loss.teacher_memory.copy_(embedding)
            return loss(features, features, torch.arange(40)).item()

    assert loss_with(True) < loss_with(False)


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


def test_fsp_matrix_is_the_pixel_mean_of_channel_products_and_pools_the_larger_map():
    first = torch.randn(2, 3, 4, 4)
    second = torch.randn(2, 5, 4, 4)

    matrix = fsp_matrix(first, second)

    assert matrix.shape == (2, 3, 5)
    expected = (first[:, :, None] * second[:, None]).mean(dim=(3, 4))
    torch.testing.assert_close(matrix, expected)
    assert fsp_matrix(torch.randn(2, 3, 8, 8), second).shape == (2, 3, 5)


def test_fsp_loss_is_zero_for_identical_features_and_positive_otherwise():
    maps = [torch.randn(4, 8, 16, 16), torch.randn(4, 8, 16, 16), torch.randn(4, 16, 8, 8)]
    loss = FlowOfSolutionLoss([8, 8, 16], [8, 8, 16])

    assert loss(maps, maps).item() == pytest.approx(0.0, abs=1e-7)
    assert loss([2 * maps[0], *maps[1:]], maps).item() > 0


def test_fsp_connects_a_narrower_student_to_its_teachers_widths(teacher):
    student = CifarResNet(depth=8, width=8)
    images = synthetic_images(4, seed=7).images
    loss = FlowOfSolutionLoss([8, 8, 16, 32], [16, 16, 32, 64])

    value = loss(stem_and_stages(student, images), stem_and_stages(teacher, images))

    assert value.item() > 0 and value.requires_grad


def test_ab_loss_is_zero_when_signs_agree_beyond_the_margin_and_positive_otherwise():
    teacher = torch.tensor([[2.0, -0.5, 0.1, -3.0]])
    beyond_margin = torch.tensor([[1.5, -1.2, 1.0, -1.0]])
    inside_margin = torch.tensor([[0.5, -1.2, 1.0, -1.0]])
    wrong_side = torch.tensor([[1.5, 0.3, 1.0, -1.0]])

    assert activation_boundary_loss(beyond_margin, teacher, margin=1.0).item() == 0.0
    assert activation_boundary_loss(inside_margin, teacher, margin=1.0).item() == pytest.approx(
        0.25
    )
    assert activation_boundary_loss(wrong_side, teacher, margin=1.0).item() == pytest.approx(1.69)


def test_ab_reads_pre_activations_which_go_negative_where_the_stage_outputs_do_not(teacher):
    images = synthetic_images(4, seed=8).images
    with torch.no_grad():
        pre = pre_activation_stages(teacher, images)
        post = teacher.forward_features(images).stages

    assert [p.shape for p in pre] == [p.shape for p in post]
    for before, after in zip(pre, post, strict=True):
        assert (before < 0).any() and (after >= 0).all()
        torch.testing.assert_close(before.clamp_min(0), after)


def test_ft_factor_loss_is_zero_for_identical_factors_of_any_scale():
    factor = torch.randn(4, 8, 4, 4)

    assert factor_transfer_loss(factor, 3 * factor).item() == pytest.approx(0.0, abs=1e-7)
    assert factor_transfer_loss(factor, torch.randn(4, 8, 4, 4)).item() > 0


def test_ft_paraphraser_learns_to_reconstruct_the_teachers_last_stage_and_is_frozen(teacher):
    train = synthetic_images(128, seed=9)

    first = train_paraphraser(
        teacher, train, 4, TrainSettings(batch_size=32, learning_rate=0.05), 0
    )

    losses = first.log.step_losses
    assert sum(losses[-4:]) < sum(losses[:4])
    assert first.paraphraser is not None and not first.paraphraser.training
    assert not any(p.requires_grad for p in first.paraphraser.parameters())
    with torch.no_grad():
        last = teacher.forward_features(train.images[:2]).stages[-1]
    assert first.paraphraser.encoder(last).shape == (2, 32, 8, 8), "k = 0.5 of 64 channels"


def test_ft_needs_its_paraphraser(teacher):
    with pytest.raises(ValueError, match="paraphraser"):
        distillation_loss("ft", teacher, teacher, torch.arange(4))


@pytest.mark.parametrize(("method", "first_layers"), [("fsp", "stages.2."), ("ab", "stages.2.")])
def test_fsp_and_ab_first_stages_train_the_student_body_and_leave_the_classifier(
    teacher, method, first_layers
):
    torch.manual_seed(3)
    student = CifarResNet(depth=8, width=8)
    before = {name: value.clone() for name, value in student.state_dict().items()}
    train = synthetic_images(128, seed=10)

    first = first_stage(
        method, student, teacher, train, 4, TrainSettings(batch_size=32, learning_rate=0.05), 0
    )

    changed = {
        name for name, value in student.state_dict().items() if not torch.equal(value, before[name])
    }
    assert any(name.startswith(first_layers) for name in changed), changed
    assert not any(name.startswith("fc.") for name in changed), changed
    losses = first.log.step_losses
    assert sum(losses[-4:]) < sum(losses[:4]), losses
    assert not student.training


def test_fsp_and_ab_second_stages_are_cross_entropy_alone(teacher):
    torch.manual_seed(4)
    student = CifarResNet(depth=8, width=8)

    log = distill(
        student,
        teacher,
        "ab",
        synthetic_images(64, seed=11),
        epochs=1,
        settings=TrainSettings(batch_size=32),
        seed=0,
    )

    assert log.distillation_losses == [] and len(log.step_losses) == 2


def test_every_method_with_a_first_stage_names_its_tec_phase():
    assert set(FIRST_STAGE_PHASES) == {"fitnets", "fsp", "ab", "ft"}
    assert len(set(FIRST_STAGE_PHASES.values())) == 4
    assert set(DISTILLATION_PAPERS) == set(DISTILLATION_METHODS) == set(LOSS_WEIGHTS)
    with pytest.raises(ValueError, match="no first stage"):
        first_stage("kd", None, None, None, 1, TrainSettings(), 0)
