"""Distillation family: a smaller student trained from scratch against the trained base model as
teacher, one test per method. TEC = base training (charged, the teacher) + distillation
(+ FitNets' hint stage, its own phase)."""

from __future__ import annotations

import pytest
import torch

from benchmarks.lowcarbon.distillation import DISTILLATION_METHODS, distill, fitnets_hint_stage
from benchmarks.lowcarbon.models import CifarResNet, count_parameters
from benchmarks.lowcarbon.training import measure_inference, record_accuracy


def method(name: str, deep: bool = False) -> pytest.param:
    labels = pytest.mark.lifecycle(
        family="distillation",
        method=name,
        model="{deep_student}" if deep else "{student}",
        teacher="{base}",
        dataset="{dataset}",
    )
    return pytest.param(name, deep, marks=labels, id=name + ("-deep-student" if deep else ""))


@pytest.mark.parametrize(
    ("name", "deep"), [*(method(name) for name in DISTILLATION_METHODS), method("kd", deep=True)]
)
def test_distillation(energy, base_model, data, scale, name, deep):
    energy.charge(base_model.training)
    torch.manual_seed(scale.seed + 1)
    depth = scale.deep_student_depth if deep else scale.student_depth
    student = CifarResNet(depth, scale.student_width, data.num_classes)
    student = student.to(data.device)
    assert count_parameters(student) < count_parameters(base_model.model)

    if name == "fitnets":
        with energy.train("hint"):
            fitnets_hint_stage(
                student,
                base_model.model,
                data.train,
                scale.hint_epochs,
                scale.settings,
                scale.seed,
                data.augment,
            )
    with energy.train("distill"):
        distill(
            student,
            base_model.model,
            name,
            data.train,
            scale.distill_epochs,
            scale.settings,
            scale.seed,
            data.augment,
            crd_negatives=scale.crd_negatives,
        )

    record_accuracy(energy, student, data.test)
    measure_inference(energy, student, data.batch)
