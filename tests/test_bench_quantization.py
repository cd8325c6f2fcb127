"""Quantization: int8 models run int8 kernels and are smaller; calibrations clip as their papers
say; ZeroQ needs no data; PWLQ is 4-bit and simulated; QAT ends as an int8 model."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch.profiler import ProfilerActivity, profile
from torchao.quantization.pt2e import MinMaxObserver

from benchmarks.lowcarbon.data import synthetic_images
from benchmarks.lowcarbon.models import CifarResNet, fold_batch_norm
from benchmarks.lowcarbon.quantization import (
    _aciq_clip_value,
    batch_norm_mismatch,
    choose_clipping_range,
    is_int8_model,
    post_training_quantize,
    pwlq_fake_quantize,
    quantization_aware_training,
    simulate_pwlq,
    synthesize_calibration_images,
    zeroq_quantize,
)
from benchmarks.lowcarbon.scales import SMOKE
from benchmarks.lowcarbon.training import (
    TrainSettings,
    evaluate,
    seed_everything,
    train_classifier,
)

INT8_KERNELS = {
    "onednn::qconv_pointwise",
    "onednn::qconv2d_pointwise",
    "onednn::qlinear_pointwise",
}
FLOAT_KERNELS = {"aten::conv2d", "aten::convolution", "aten::linear", "aten::addmm"}


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return synthetic_images(64, seed=0).images


@pytest.fixture(scope="module")
def float_model(images) -> CifarResNet:
    """A small ResNet whose batch-norm layers have recorded statistics of real inputs."""
    torch.manual_seed(0)
    model = CifarResNet(depth=8, width=8).train()
    with torch.no_grad():
        for _ in range(3):
            model(images)
    return model.eval()


def executed_operators(model: torch.nn.Module, inputs: torch.Tensor) -> set[str]:
    if is_int8_model(model):
        model.lowered(inputs)  # lowering (once per shape) is not part of the call
    with profile(activities=[ProfilerActivity.CPU]) as profiler, torch.inference_mode():
        model(inputs)
    return {event.key for event in profiler.key_averages()}


def relative_error(model: torch.nn.Module, reference: torch.nn.Module, inputs) -> float:
    with torch.inference_mode():
        expected = reference(inputs)
        return ((model(inputs) - expected).norm() / expected.norm()).item()


@pytest.mark.parametrize("clipping", ["minmax", "aciq", "omse"])
def test_pt2e_int8_models_run_onednn_int8_kernels_and_are_smaller(float_model, images, clipping):
    """torchao PT2E with X86InductorQuantizer, lowered without torch.compile: every conv and the
    linear run as oneDNN int8 kernels (conv + residual add fused), no float conv is left."""
    quantized = post_training_quantize(float_model, images, clipping)

    assert is_int8_model(quantized)
    operators = executed_operators(quantized, images[:2])
    assert operators >= INT8_KERNELS
    assert not operators & FLOAT_KERNELS
    folded = fold_batch_norm(float_model)
    float_bytes = sum(p.numel() * p.element_size() for p in folded.parameters())
    assert quantized.int8_weight_bytes() < 0.5 * float_bytes
    assert quantized(images[:2]).dtype == torch.float32
    assert relative_error(quantized, float_model, images) < 0.2


def test_int8_models_use_no_deprecated_torch_ao_quantization(float_model, images):
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        post_training_quantize(float_model, images[:8], "minmax")

    deprecations = [str(w.message) for w in caught if "torch.ao.quantization" in str(w.message)]
    assert not deprecations


def test_float_model_is_not_taken_for_int8(float_model):
    assert not is_int8_model(float_model)


@pytest.mark.parametrize(
    ("bits", "published_clip"),
    [(2, 2.83), (3, 3.89), (4, 5.03), (8, 9.89)],
)
def test_aciq_clip_matches_banner_et_al_for_a_laplace_prior(bits, published_clip):
    values = torch.distributions.Laplace(0.0, 1.0).sample((200_000,))

    clip = _aciq_clip_value(values, values.min().item(), values.max().item(), 2**bits)

    assert clip == pytest.approx(published_clip, rel=0.03)


def laplace_rows() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.distributions.Laplace(0.0, 1.0).sample((4, 4096))


def uniform_quantization_error(rows, low, high, levels):
    scale = ((high - low) / (levels - 1))[:, None]
    steps = torch.round((rows.clamp(low[:, None], high[:, None]) - low[:, None]) / scale)
    return ((steps * scale + low[:, None] - rows) ** 2).mean().item()


@pytest.mark.parametrize("method", ["aciq", "omse"])
def test_clipping_methods_clip_long_tails_at_4_bits_and_lower_the_error(method):
    rows = laplace_rows()
    lowest, highest = rows.amin(dim=1), rows.amax(dim=1)
    observer = MinMaxObserver(quant_min=0, quant_max=15)

    low, high = choose_clipping_range(
        rows, lowest, highest, method, observer._calculate_qparams, (0, 15)
    )

    assert (high < highest).all() and (low > lowest).all()
    assert uniform_quantization_error(rows, low, high, 16) < uniform_quantization_error(
        rows, lowest, highest, 16
    )
    unclipped = choose_clipping_range(
        rows, lowest, highest, "minmax", observer._calculate_qparams, (0, 15)
    )
    assert torch.equal(unclipped[0], lowest) and torch.equal(unclipped[1], highest)


def test_zeroq_synthesises_inputs_that_match_batch_norm_statistics(float_model):
    noise = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(1))

    distilled = synthesize_calibration_images(float_model, count=16, steps=30, seed=1)

    assert batch_norm_mismatch(float_model, distilled) < 0.5 * batch_norm_mismatch(
        float_model, noise
    )
    assert all(parameter.grad is None for parameter in float_model.parameters())


def test_zeroq_gives_an_int8_model_without_real_data(float_model, images):
    quantized = zeroq_quantize(float_model, samples=16, steps=30, seed=1)

    assert is_int8_model(quantized)
    assert "onednn::qconv_pointwise" in executed_operators(quantized, images[:2])


def test_pwlq_weights_take_at_most_two_regions_of_4_bit_values_and_beat_uniform_4_bit():
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(8, 16, 3, 3, generator=generator)

    quantized = pwlq_fake_quantize(weight, bits=4)

    assert quantized.shape == weight.shape and quantized.dtype == torch.float32
    for channel, original in zip(quantized, weight, strict=True):
        assert channel.unique().numel() <= 2 * 2**4
        uniform_scale = original.abs().max() / 7
        uniform = torch.round(original / uniform_scale).clamp(-7, 7) * uniform_scale
        assert (channel - original).pow(2).sum() < (uniform - original).pow(2).sum()


def test_simulated_pwlq_model_keeps_fp32_kernels_with_4_bit_weights(float_model, images):
    simulated = simulate_pwlq(float_model, bits=4)

    assert not is_int8_model(simulated)
    assert not executed_operators(simulated, images[:2]) & INT8_KERNELS
    convs = [module for module in simulated.modules() if isinstance(module, torch.nn.Conv2d)]
    assert convs and all(conv.weight[0].unique().numel() <= 32 for conv in convs)
    assert relative_error(simulated, float_model, images) < 0.5


def test_quantization_aware_training_converts_to_int8(float_model):
    train = synthetic_images(64, seed=2)

    quantized = quantization_aware_training(
        float_model, train, epochs=1, settings=TrainSettings(batch_size=32), seed=0
    )

    assert is_int8_model(quantized)
    assert "onednn::qconv_pointwise" in executed_operators(quantized, train.images[:2])
    assert not is_int8_model(float_model)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in float_model.modules())


def test_quantization_aware_training_at_the_smoke_learning_rate_keeps_the_float_accuracy():
    """QAT fine-tunes a BN-folded network, far more sensitive to the step size than the BN
    network it was trained as: at the scale's QAT learning rate the int8 model ends near its
    float twin instead of falling far below it."""
    seed_everything(0)
    train, test = synthetic_images(2000, seed=5), synthetic_images(1024, seed=6)
    model = CifarResNet(depth=8, width=8)
    train_classifier(model, train, 3, TrainSettings(batch_size=32, learning_rate=0.1), seed=0)
    float_accuracy = evaluate(model, test)
    assert float_accuracy > 0.3, f"the float model did not learn: {float_accuracy}"

    settings = dataclasses.replace(SMOKE.settings, learning_rate=SMOKE.qat_learning_rate)
    quantized = quantization_aware_training(model, train, 1, settings, seed=0)

    assert evaluate(quantized, test, batch_size=64) > float_accuracy - 0.03


@pytest.mark.parametrize("bits", [4, 7])
def test_aciq_clips_one_sided_post_relu_values_above_only_and_beats_min_max(bits):
    """Post-ReLU activations are a half-normal plus zeros: ACIQ keeps 0 as the range's floor
    and clips the upper tail, with less quantization MSE than the plain min/max range."""
    generator = torch.Generator().manual_seed(0)
    half_normal = torch.randn(1, 100_000, generator=generator).abs()
    rows = torch.cat([half_normal, torch.zeros(1, 50_000)], dim=1)
    lowest, highest = rows.amin(dim=1), rows.amax(dim=1)
    levels = 2**bits
    observer = MinMaxObserver(quant_min=0, quant_max=levels - 1)

    low, high = choose_clipping_range(
        rows, lowest, highest, "aciq", observer._calculate_qparams, (0, levels - 1)
    )

    assert low.item() == 0.0 and 0 < high.item() < highest.item()
    clipped_error = uniform_quantization_error(rows, low, high, levels)
    assert clipped_error < uniform_quantization_error(rows, lowest, highest, levels)


def test_zeroq_loss_is_squared_per_image_and_includes_the_input_term():
    """One BN layer recording mean 0, std 1 (ZeroQ's input target too): images offset by +d and
    −d have a pooled batch mean of 0, yet each image is d off in all 3 channels, at the BN layer
    and at the input, so ZeroQ's loss is 2 × 3 × d² (plus the std terms, ~0 here)."""
    model = torch.nn.Sequential(torch.nn.BatchNorm2d(3)).eval()
    generator = torch.Generator().manual_seed(0)
    unit = torch.randn(2, 3, 32, 32, generator=generator)
    unit = (unit - unit.mean(dim=(2, 3), keepdim=True)) / unit.std(dim=(2, 3), keepdim=True)
    offsets = torch.tensor([1.0, -1.0])[:, None, None, None]

    for offset in (1.0, 2.0):
        loss = batch_norm_mismatch(model, unit + offset * offsets)
        assert loss == pytest.approx(2 * 3 * offset**2, rel=1e-3)


def test_zeroq_stage_is_labelled_without_its_mixed_precision_half():
    from benchmarks.test_quantization import test_zeroq_data_free_int8

    (marker,) = [mark for mark in test_zeroq_data_free_int8.pytestmark if mark.name == "lifecycle"]
    assert "mixed-precision" in marker.kwargs["omitted"]
