"""Pruning family: channels removed from the trained base model by each criterion, then the
smaller model fine-tuned. TEC = base training (charged) + pruning + fine-tuning."""

from __future__ import annotations

import dataclasses

import pytest

from benchmarks.lowcarbon.models import count_parameters
from benchmarks.lowcarbon.pruning import PRUNING_CRITERIA, prune_channels
from benchmarks.lowcarbon.training import (
    measure_inference,
    record_accuracy,
    train_classifier,
)

METHOD_NAMES = {"l1": "l1-norm", "fpgm": "fpgm", "apoz": "network-trimming", "taylor": "taylor"}


def criterion(name: str) -> pytest.param:
    labels = pytest.mark.lifecycle(
        family="pruning",
        method=METHOD_NAMES[name],
        model="{base}",
        dataset="{dataset}",
        schedule="one-shot",
    )
    return pytest.param(name, marks=labels, id=METHOD_NAMES[name])


@pytest.mark.parametrize("name", [criterion(name) for name in PRUNING_CRITERIA])
def test_channel_pruning(energy, base_model, data, scale, name):
    energy.charge(base_model.training)

    with energy.train("prune"):
        model = prune_channels(
            base_model.copy(),
            name,
            scale.prune_ratio,
            data.train.head(scale.calibration_samples),
            scale.settings.batch_size,
        )
    finetuning = dataclasses.replace(scale.settings, learning_rate=scale.finetune_learning_rate)
    with energy.train("finetune"):
        train_classifier(
            model, data.train, scale.finetune_epochs, finetuning, scale.seed, data.augment
        )

    record_accuracy(energy, model, data.test)
    measure_inference(energy, model, data.batch)
    assert count_parameters(model) < count_parameters(base_model.model)
