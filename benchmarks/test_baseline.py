"""The uncompressed base model: the row every compression method is compared against."""

from __future__ import annotations

import pytest

from benchmarks.lowcarbon.training import measure_inference, record_accuracy


@pytest.mark.lifecycle(
    family="baseline", method="uncompressed", model="{base}", dataset="{dataset}"
)
def test_uncompressed_base_model(energy, base_model, data):
    energy.charge(base_model.training)

    record_accuracy(energy, base_model.model, data.test)
    measure_inference(energy, base_model.model, data.batch)

    chance = 1 / data.num_classes
    assert energy.accuracy > 2 * chance, f"base model barely learned: {energy.accuracy:.3f}"
