"""Pruning family: channels removed from the trained base model by each criterion, then the
smaller model fine-tuned. TEC = base training (charged) + pruning + fine-tuning.

Each criterion prunes at the scale's two ratios (`prune_ratio`, `aggressive_prune_ratio`), so
the family holds two model sizes (labelled `model`, e.g. `resnet8-pruned50` and
`resnet8-pruned75`) whose IEC differ: the usage at which a smaller, less accurate model pays
off is part of what the benchmark shows."""

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


def criterion(name: str, aggressive: bool = False) -> pytest.param:
    labels = pytest.mark.lifecycle(
        family="pruning",
        method=METHOD_NAMES[name],
        model="{pruned_aggressive}" if aggressive else "{pruned}",
        base="{base}",
        dataset="{dataset}",
        schedule="one-shot",
    )
    test_id = METHOD_NAMES[name] + ("-aggressive" if aggressive else "")
    return pytest.param(name, aggressive, marks=labels, id=test_id)


@pytest.mark.parametrize(
    ("name", "aggressive"),
    [criterion(name, aggressive) for aggressive in (False, True) for name in PRUNING_CRITERIA],
)
def test_channel_pruning(energy, base_model, data, scale, name, aggressive):
    energy.charge(base_model.training)

    ratio = scale.aggressive_prune_ratio if aggressive else scale.prune_ratio
    with energy.train("prune"):
        model = prune_channels(
            base_model.copy(),
            name,
            ratio,
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
