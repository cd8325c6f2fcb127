"""Distillation family: a smaller student trained from scratch against the trained base model as
teacher, one test per method. TEC = base training (charged, the teacher) + the method's first
stage where its paper has one (FitNets' hint, FSP's and AB's initialisation, FT's paraphraser:
each its own phase) + distillation."""

from __future__ import annotations

import pytest
import torch

from benchmarks.lowcarbon.distillation import (
    DISTILLATION_METHODS,
    FIRST_STAGE_PHASES,
    distill,
    first_stage,
)
from benchmarks.lowcarbon.models import CifarResNet, count_parameters
from benchmarks.lowcarbon.training import measure_inference, record_accuracy

NOT_CONVERGED_AT_SMOKE = {"smoke_scale": "not-converged"}
EXTRA_LABELS = {
    "fsp": {"connector": "1x1-conv+bn", **NOT_CONVERGED_AT_SMOKE},
    "crd": NOT_CONVERGED_AT_SMOKE,
    "vid": NOT_CONVERGED_AT_SMOKE,
    "cc": NOT_CONVERGED_AT_SMOKE,
    "kd": NOT_CONVERGED_AT_SMOKE,
}
"""Named departures from a method's paper, and rows to read with care, by test id. FSP's
matrices are compared after a learnt connector, since the student is narrower than its teacher
(the paper's students are not). The rows marked not converged ended 39–68 pp below their
teacher in the recorded smoke run (CRD 22 %, KD to the narrow student 37 %, VID 41 %, FSP 44 %,
CC 51 %; teacher 90 %): smoke scale's three epochs are too few for them, so those rows measure
unfinished training, not the method (README, the low-carbon CV benchmark)."""


def method(name: str, deep: bool = False) -> pytest.param:
    test_id = name + ("-deep-student" if deep else "")
    labels = pytest.mark.lifecycle(
        family="distillation",
        method=name,
        model="{deep_student}" if deep else "{student}",
        teacher="{base}",
        dataset="{dataset}",
        **EXTRA_LABELS.get(test_id, {}),
    )
    return pytest.param(name, deep, marks=labels, id=test_id)


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

    first = None
    if name in FIRST_STAGE_PHASES:
        with energy.train(FIRST_STAGE_PHASES[name]):
            first = first_stage(
                name,
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
            first=first,
        )

    record_accuracy(energy, student, data.test)
    measure_inference(energy, student, data.batch)
