"""Quantization family: int8 post-training quantization under four calibrations, simulated 4-bit
PWLQ and quantization-aware training, through torchao's PT2E flow. Int8 models run oneDNN int8
kernels on the CPU, whatever device trained the base model; their accuracy is evaluated in
batches of the deployment batch's size (one lowering per model, see `Int8Model`).
TEC = base training (charged) + calibration / QAT fine-tuning."""

from __future__ import annotations

import dataclasses

import pytest

from benchmarks.lowcarbon.quantization import (
    is_int8_model,
    post_training_quantize,
    quantization_aware_training,
    simulate_pwlq,
    synthesize_calibration_images,
)
from benchmarks.lowcarbon.training import measure_inference, record_accuracy

INT8 = {"precision": "int8", "kernels": "onednn-int8-cpu", "api": "torchao-pt2e"}


def quantization(method: str, **labels: str) -> pytest.MarkDecorator:
    return pytest.mark.lifecycle(
        family="quantization", method=method, model="{base}", dataset="{dataset}", **labels
    )


def calibration(name: str) -> pytest.param:
    return pytest.param(name, marks=quantization(f"ptq-{name}", **INT8), id=name)


@pytest.mark.parametrize("name", [calibration(name) for name in ("minmax", "aciq", "omse")])
def test_post_training_int8(energy, base_model, data, scale, name):
    energy.charge(base_model.training)

    with energy.train("calibrate"):
        model = post_training_quantize(
            base_model.model, data.train.images[: scale.calibration_samples], name
        )

    assert is_int8_model(model)
    record_accuracy(energy, model, data.test.to("cpu"), len(data.batch))
    measure_inference(energy, model, data.batch.cpu())


@quantization("ptq-zeroq", omitted="mixed-precision-bit-allocation", **INT8)
def test_zeroq_data_free_int8(energy, base_model, data, scale):
    energy.charge(base_model.training)

    with energy.train("synthesize-data"):
        distilled = synthesize_calibration_images(
            base_model.model, scale.zeroq_samples, scale.zeroq_steps, scale.seed
        )
    with energy.train("calibrate"):
        model = post_training_quantize(base_model.model, distilled, "zeroq")

    assert is_int8_model(model)
    record_accuracy(energy, model, data.test.to("cpu"), len(data.batch))
    measure_inference(energy, model, data.batch.cpu())


@quantization("pwlq-4bit", precision="w4-piecewise", kernels="fp32", simulated="yes")
def test_pwlq_4bit_simulated(energy, base_model, data):
    energy.charge(base_model.training)

    with energy.train("quantize"):
        model = simulate_pwlq(base_model.model, bits=4)

    record_accuracy(energy, model, data.test.to("cpu"), len(data.batch))
    measure_inference(energy, model, data.batch.cpu())


@quantization("qat", bn="folded-before-qat", **INT8)
def test_quantization_aware_training(energy, base_model, data, scale):
    energy.charge(base_model.training)

    qat_settings = dataclasses.replace(scale.settings, learning_rate=scale.qat_learning_rate)
    with energy.train("qat-finetune"):
        model = quantization_aware_training(
            base_model.model, data.train, scale.qat_epochs, qat_settings, scale.seed, data.augment
        )

    assert is_int8_model(model)
    record_accuracy(energy, model, data.test.to("cpu"), len(data.batch))
    measure_inference(energy, model, data.batch.cpu())
