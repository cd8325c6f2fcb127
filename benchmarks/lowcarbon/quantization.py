"""Quantization: int8 models that run real int8 CPU kernels, and a simulated 4-bit scheme.

Int8 models go through torchao's PT2E flow, the maintained successor of the deprecated
torch.ao.quantization: `torch.export` → `prepare_pt2e` / `prepare_qat_pt2e` with
`X86InductorQuantizer` (conv, linear, add, pooling annotated) → calibration → `convert_pt2e` →
`lower_pt2e_quantized_to_x86`, which rewrites the graph to oneDNN int8 kernels
(`onednn::qconv_pointwise`, `onednn::qconv2d_pointwise.binary` for conv + add + ReLU,
`onednn::qlinear_pointwise`) and freezes the weights, without `torch.compile`. Activations are
per-tensor uint8 (0..255), weights per-channel symmetric int8, as the quantizer's default.
`torch.export` specialises the lowered graph to one input shape, so `Int8Model` lowers once per
shape it meets (accuracy is evaluated in batches of the deployment batch's size: one lowering).

Post-training calibration methods differ in how each tensor's clipping range is chosen; each is
an observer the quantizer's specs use (`calibration_config`):

- `minmax`  the observed minimum and maximum.
- `aciq`    Banner et al. 2019, "Post-training 4-bit quantization of convolutional networks for
            rapid-deployment": fit a Laplace or Gaussian prior (whichever is likelier) and take the
            clipping value that minimises the analytical clipping + rounding error; one-sided
            (post-ReLU) values are clipped above only, under the one-sided prior.
- `omse`    Choukroun et al. 2019, "Low-bit Quantization of Neural Networks for Efficient
            Inference": search the clipping range that minimises the measured quantization MSE.
- `zeroq`   Cai et al. 2020, "ZeroQ": no data; synthesise inputs whose batch-norm statistics
            match the model's (squared norms, per image, plus the input term), then calibrate
            min-max on them. ZeroQ's other half, its Pareto-frontier mixed-precision bit
            allocation, is not built: every layer is int8 (labelled `omitted`).

`simulate_pwlq` is Fang et al. 2020, "Post-Training Piecewise Linear Quantization": 4-bit
weights, simulated in fp32 since no 4-bit CPU kernels exist. `quantization_aware_training` is
QAT (Jacob et al. 2018) through `prepare_qat_pt2e`: fine-tune with fake quantization, then
convert and lower to int8. Nothing here uses torch.ao.quantization.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from scipy.optimize import minimize_scalar
from scipy.special import erf
from torch import Tensor, nn
from torch.fx import GraphModule
from torchao.quantization.pt2e import (
    MinMaxObserver,
    PerChannelMinMaxObserver,
    allow_exported_model_train_eval,
)
from torchao.quantization.pt2e.lowering import lower_pt2e_quantized_to_x86
from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e, prepare_qat_pt2e
from torchao.quantization.pt2e.quantizer import QuantizationSpec
from torchao.quantization.pt2e.quantizer.utils import QuantizationConfig
from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
    X86InductorQuantizer,
    get_default_x86_inductor_quantization_config,
)

from .data import Split
from .models import fold_batch_norm
from .training import TrainSettings, fit

CALIBRATIONS = ("minmax", "aciq", "omse", "zeroq")
ACTIVATION_QUANT_RANGE = (0, 255)
WEIGHT_QUANT_RANGE = (-128, 127)
INT8_KERNELS = frozenset({"onednn::qconv_pointwise", "onednn::qlinear_pointwise"})
"""oneDNN int8 kernels a lowered PT2E CNN runs (with `onednn::qconv2d_pointwise` for conv + add)."""
OMSE_CLIP_FRACTIONS = torch.linspace(0.2, 1.0, 81)
SAMPLED_VALUES_PER_BATCH = 4096
SAMPLED_VALUES_MAX = 65536


def _fake_quantize_rows(
    rows: Tensor, scale: Tensor, zero_point: Tensor, quant_min: int, quant_max: int
) -> Tensor:
    return torch.fake_quantize_per_channel_affine(
        rows, scale.float(), zero_point.to(torch.int32), 0, quant_min, quant_max
    )


def _aciq_clip_value(values: Tensor, lowest: float, highest: float, levels: int) -> float:
    """ACIQ's clipping half-width α around the mean: argmin of expected tail error plus the
    uniform rounding error (range / levels)² / 12 under the better-fitting prior."""
    data = values.double()
    mean = data.mean().item()
    laplace_scale = (data - mean).abs().mean().clamp_min(1e-12).item()
    gaussian_std = data.std().clamp_min(1e-12).item()
    laplace_log_likelihood = -math.log(2 * laplace_scale) - 1
    gaussian_log_likelihood = -0.5 * math.log(2 * math.pi * gaussian_std**2) - 0.5
    use_laplace = laplace_log_likelihood >= gaussian_log_likelihood

    def tail_error(distance: float) -> float:
        if use_laplace:
            return laplace_scale**2 * math.exp(-distance / laplace_scale)
        ratio = distance / gaussian_std
        mass_beyond = 0.5 * (1 - erf(ratio / math.sqrt(2)))
        density = math.exp(-(ratio**2) / 2) / math.sqrt(2 * math.pi)
        return gaussian_std**2 * ((1 + ratio**2) * mass_beyond - ratio * density)

    def expected_error(half_width: float) -> float:
        low, high = max(lowest, mean - half_width), min(highest, mean + half_width)
        clipping = (tail_error(half_width) if high < highest else 0.0) + (
            tail_error(half_width) if low > lowest else 0.0
        )
        return clipping + ((high - low) / levels) ** 2 / 12

    widest = max(highest - mean, mean - lowest, 1e-12)
    return float(minimize_scalar(expected_error, bounds=(widest * 1e-3, widest)).x)


def _aciq_one_sided_clip_value(values: Tensor, highest: float, levels: int) -> float:
    """ACIQ for one-sided (post-ReLU) values, clipped to [0, α]: the positive values are fitted
    by the one-sided prior (exponential, i.e. a folded Laplace, or half-normal, whichever is
    likelier), only the upper tail is clipped, and the rounding step is α / levels, since the
    whole range [0, α] is spent on values ≥ 0. Zeros are exact at any α."""
    data = values.double()
    positive = data[data > 0]
    if positive.numel() == 0:
        return max(highest, 1e-12)
    positive_share = positive.numel() / data.numel()
    exponential_scale = positive.mean().clamp_min(1e-12).item()
    half_normal_std = positive.pow(2).mean().sqrt().clamp_min(1e-12).item()
    exponential_log_likelihood = -math.log(exponential_scale) - 1
    half_normal_log_likelihood = 0.5 * math.log(2 / math.pi) - math.log(half_normal_std) - 0.5
    use_exponential = exponential_log_likelihood >= half_normal_log_likelihood

    def tail_error(clip: float) -> float:
        if use_exponential:
            return 2 * exponential_scale**2 * math.exp(-clip / exponential_scale)
        ratio = clip / half_normal_std
        mass_beyond = 1 - erf(ratio / math.sqrt(2))
        density = 2 * math.exp(-(ratio**2) / 2) / math.sqrt(2 * math.pi)
        return half_normal_std**2 * ((1 + ratio**2) * mass_beyond - ratio * density)

    def expected_error(clip: float) -> float:
        clipping = tail_error(clip) if clip < highest else 0.0
        return positive_share * clipping + (clip / levels) ** 2 / 12

    widest = max(highest, 1e-12)
    return float(minimize_scalar(expected_error, bounds=(widest * 1e-3, widest)).x)


def choose_clipping_range(
    rows: Tensor,
    lowest: Tensor,
    highest: Tensor,
    method: str,
    qparams: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]],
    quant_range: tuple[int, int],
) -> tuple[Tensor, Tensor]:
    """Per-row (per-channel, or one row per tensor) clipping range [low, high] by `method`.
    ACIQ clips a row with no negative value (post-ReLU) on its upper side only.

    `qparams` turns a range into (scale, zero point) exactly as the converted model will, so
    the OMSE search measures the error of the quantizer that will really run.
    """
    if method in ("minmax", "zeroq"):
        return lowest, highest
    quant_min, quant_max = quant_range
    if method == "aciq":
        levels = quant_max - quant_min + 1
        low, high = lowest.clone(), highest.clone()
        for index, row in enumerate(rows):
            if lowest[index].item() >= 0:
                high[index] = _aciq_one_sided_clip_value(row, highest[index].item(), levels)
                continue
            half_width = _aciq_clip_value(row, lowest[index].item(), highest[index].item(), levels)
            mean = row.mean().item()
            low[index] = max(lowest[index].item(), mean - half_width)
            high[index] = min(highest[index].item(), mean + half_width)
        return low, high
    if method == "omse":
        best_error = torch.full_like(lowest, float("inf"))
        low, high = lowest.clone(), highest.clone()
        for fraction in OMSE_CLIP_FRACTIONS.tolist():
            scale, zero_point = qparams(lowest * fraction, highest * fraction)
            restored = _fake_quantize_rows(rows, scale, zero_point, quant_min, quant_max)
            error = (restored - rows).pow(2).mean(dim=1)
            better = error < best_error
            best_error = torch.where(better, error, best_error)
            low = torch.where(better, lowest * fraction, low)
            high = torch.where(better, highest * fraction, high)
        return low, high
    raise ValueError(f"unknown calibration {method!r}; known: {CALIBRATIONS}")


class ClippingActivationObserver(MinMaxObserver):
    """Per-tensor activation observer: min/max plus a seeded sample of the values, from which
    `calculate_qparams` picks the clipping range by `clipping` (see CALIBRATIONS)."""

    def __init__(self, clipping: str = "minmax", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.clipping = clipping
        self._sampled: list[Tensor] = []
        self._generator = torch.Generator().manual_seed(0)

    def forward(self, x_orig: Tensor) -> Tensor:
        super().forward(x_orig)
        if self.clipping in ("aciq", "omse") and x_orig.numel():
            values = x_orig.detach().flatten().float().cpu()
            if values.numel() > SAMPLED_VALUES_PER_BATCH:
                chosen = torch.randperm(values.numel(), generator=self._generator)
                values = values[chosen[:SAMPLED_VALUES_PER_BATCH]]
            if sum(sample.numel() for sample in self._sampled) < SAMPLED_VALUES_MAX:
                self._sampled.append(values)
        return x_orig

    @torch.jit.export
    def calculate_qparams(self) -> tuple[Tensor, Tensor]:
        if not self._sampled:
            return super().calculate_qparams()
        rows = torch.cat(self._sampled)[None]
        low, high = choose_clipping_range(
            rows,
            self.min_val.reshape(1),
            self.max_val.reshape(1),
            self.clipping,
            self._calculate_qparams,
            (self.quant_min, self.quant_max),
        )
        return self._calculate_qparams(low[0], high[0])


class ClippingWeightObserver(PerChannelMinMaxObserver):
    """Per-output-channel weight observer choosing each channel's range by `clipping`."""

    def __init__(self, clipping: str = "minmax", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.clipping = clipping
        self._rows: Tensor | None = None

    def forward(self, x_orig: Tensor) -> Tensor:
        super().forward(x_orig)
        self._rows = x_orig.detach().float().transpose(0, self.ch_axis).flatten(1).cpu()
        return x_orig

    @torch.jit.export
    def calculate_qparams(self) -> tuple[Tensor, Tensor]:
        if self._rows is None:
            return super().calculate_qparams()
        low, high = choose_clipping_range(
            self._rows,
            self.min_val,
            self.max_val,
            self.clipping,
            self._calculate_qparams,
            (self.quant_min, self.quant_max),
        )
        return self._calculate_qparams(low, high)


def calibration_config(clipping: str) -> QuantizationConfig:
    """X86InductorQuantizer's int8 config (uint8 per-tensor activations, int8 per-channel
    symmetric weights) with observers that choose clipping ranges by `clipping`."""
    if clipping not in CALIBRATIONS:
        raise ValueError(f"unknown calibration {clipping!r}; known: {CALIBRATIONS}")
    activation_min, activation_max = ACTIVATION_QUANT_RANGE
    weight_min, weight_max = WEIGHT_QUANT_RANGE
    activation = QuantizationSpec(
        dtype=torch.uint8,
        quant_min=activation_min,
        quant_max=activation_max,
        qscheme=torch.per_tensor_affine,
        observer_or_fake_quant_ctr=ClippingActivationObserver.with_args(
            clipping=clipping, eps=2**-12
        ),
    )
    weight = QuantizationSpec(
        dtype=torch.int8,
        quant_min=weight_min,
        quant_max=weight_max,
        qscheme=torch.per_channel_symmetric,
        ch_axis=0,
        observer_or_fake_quant_ctr=ClippingWeightObserver.with_args(clipping=clipping, eps=2**-12),
    )
    return QuantizationConfig(activation, activation, weight, None, False)


class Int8Model(nn.Module):
    """A PT2E-converted model run as oneDNN int8 kernels: lowered by
    `lower_pt2e_quantized_to_x86` once per input shape it is called with (torch.export
    specialises shapes), on the CPU."""

    def __init__(self, converted: GraphModule) -> None:
        super().__init__()
        self.converted = converted
        self._lowered: dict[tuple[int, ...], nn.Module] = {}

    def lowered(self, inputs: Tensor) -> nn.Module:
        """The oneDNN int8 graph for inputs of this shape (lowered on first use)."""
        shape = tuple(inputs.shape)
        if shape not in self._lowered:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                self._lowered[shape] = lower_pt2e_quantized_to_x86(self.converted, (inputs,))
        return self._lowered[shape]

    def forward(self, inputs: Tensor) -> Tensor:
        return self.lowered(inputs.cpu())(inputs.cpu())

    def train(self, mode: bool = True) -> Int8Model:
        """Only the flag: exported graphs have no train/eval switch, and this model only infers."""
        self.training = mode
        return self

    def int8_weight_bytes(self) -> int:
        """Bytes of the model as deployed: 1 per int8 weight, 4 per float bias and per scale;
        zero points are not counted (symmetric weights: all 0, oneDNN stores none)."""
        total = 0
        for module in self.converted.modules():
            for buffer in module.buffers(recurse=False):
                if buffer.is_floating_point():
                    total += buffer.numel() * 4
            for parameter in module.parameters(recurse=False):
                total += parameter.numel() * (1 if parameter.dim() > 1 else 4)
        return total


def _export(model: nn.Module, example: Tensor) -> GraphModule:
    """`model` captured by torch.export with a dynamic batch dimension, as a module."""
    batch = torch.export.Dim("batch", min=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exported = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
    return exported.module()


def _quantizer(config: QuantizationConfig) -> X86InductorQuantizer:
    quantizer = X86InductorQuantizer()
    quantizer.set_global(config)
    return quantizer


def _float_copy_on_cpu(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model).cpu().eval()


def post_training_quantize(
    model: nn.Module, calibration_images: Tensor, clipping: str, batch_size: int = 64
) -> Int8Model:
    """An int8 copy of `model` for CPU through PT2E, activation ranges calibrated on
    `calibration_images` and all ranges clipped by `clipping`. The float model is left as is."""
    images = calibration_images.detach().cpu()
    exported = _export(_float_copy_on_cpu(model), images[:2])
    prepared = prepare_pt2e(exported, _quantizer(calibration_config(clipping)))
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            prepared(images[start : start + batch_size])
    return Int8Model(convert_pt2e(prepared))


def _statistics_loss(
    inputs: Tensor, target_mean: Tensor, target_std: Tensor, eps: float = 1e-5
) -> Tensor:
    """ZeroQ's statistic loss at one layer: ‖μ̃ − μ‖²₂ + ‖σ̃ − σ‖²₂ summed over the batch's
    images and divided by their number, where μ̃, σ̃ are each image's per-channel mean and
    standard deviation (ZeroQ's reference code matches every image, not the batch's pooled
    statistics, to the layer's recorded μ, σ)."""
    flat = inputs.flatten(2)
    image_mean = flat.mean(dim=2)
    image_std = (flat.var(dim=2) + eps).sqrt()
    count = inputs.shape[0]
    mean_term = (image_mean - target_mean).pow(2).sum() / count
    std_term = (image_std - target_std).pow(2).sum() / count
    return mean_term + std_term


def _batch_norm_loss(norm: nn.Module, inputs: Tensor) -> Tensor:
    assert isinstance(norm, nn.BatchNorm2d)
    assert norm.running_mean is not None and norm.running_var is not None
    recorded_std = (norm.running_var + norm.eps).sqrt()
    return _statistics_loss(inputs, norm.running_mean, recorded_std, norm.eps)


def _input_loss(images: Tensor) -> Tensor:
    """ZeroQ's input term: normalised inputs have per-channel mean 0 and standard deviation 1."""
    channels = images.shape[1]
    zeros = torch.zeros(channels, device=images.device)
    return _statistics_loss(images, zeros, torch.ones_like(zeros))


def _zeroq_loss(model: nn.Module, images: Tensor) -> Tensor:
    """ZeroQ's objective: the statistic loss at the input of every batch-norm layer plus the
    input term."""
    norms = [module for module in model.modules() if isinstance(module, nn.BatchNorm2d)]
    losses: list[Tensor] = []

    def compare_statistics(module: nn.Module, inputs: tuple[Tensor, ...], _output: Tensor) -> None:
        losses.append(_batch_norm_loss(module, inputs[0]))

    hooks = [norm.register_forward_hook(compare_statistics) for norm in norms]
    try:
        model(images)
    finally:
        for hook in hooks:
            hook.remove()
    return torch.stack(losses).sum() + _input_loss(images)


def synthesize_calibration_images(
    model: nn.Module, count: int, steps: int, seed: int, learning_rate: float = 0.5
) -> Tensor:
    """ZeroQ's distilled data (Cai et al. 2020, §3.2): Gaussian noise optimised with Adam until
    every batch-norm layer sees, per image, the mean and standard deviation it recorded in
    training, and the input itself has mean 0 and standard deviation 1. Uses no real image."""
    model.eval()
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(count, 3, 32, 32, generator=generator).to(device).requires_grad_()
    optimizer = torch.optim.Adam([images], lr=learning_rate)
    for _ in range(steps):
        (gradient,) = torch.autograd.grad(_zeroq_loss(model, images), images)
        optimizer.zero_grad(set_to_none=True)
        images.grad = gradient
        optimizer.step()
    return images.detach()


def batch_norm_mismatch(model: nn.Module, images: Tensor) -> float:
    """ZeroQ's loss for `images`: squared distance between their per-image statistics and the
    statistics recorded at every BN layer, plus the input term (what ZeroQ minimises)."""
    with torch.no_grad():
        return _zeroq_loss(model.eval(), images).item()


def zeroq_quantize(model: nn.Module, samples: int, steps: int, seed: int) -> GraphModule:
    """ZeroQ: int8 model calibrated min-max on synthesised images only."""
    distilled = synthesize_calibration_images(model, samples, steps, seed)
    return post_training_quantize(model, distilled, "zeroq")


def pwlq_fake_quantize(weight: Tensor, bits: int = 4) -> Tensor:
    """PWLQ, non-overlapping two-region scheme, per output channel: [-p, p] uniform symmetric
    with `bits`, the tails p < |w| <= m uniform with `bits` - 1 plus the sign; the breakpoint
    p / m is searched coarse-to-fine for the least squared error. Returns fp32 weights that take
    only those quantized values."""
    rows = weight.detach().float().flatten(1)
    magnitude = rows.abs()
    largest = magnitude.amax(dim=1, keepdim=True).clamp_min(1e-12)
    centre_steps = 2 ** (bits - 1) - 1
    tail_steps = 2 ** (bits - 1) - 1

    def quantize(breakpoint_ratio: Tensor) -> Tensor:
        breakpoint_value = breakpoint_ratio[..., None] * largest
        centre_scale = breakpoint_value / centre_steps
        centre = torch.round(rows / centre_scale).clamp(-centre_steps, centre_steps) * centre_scale
        tail_scale = (largest - breakpoint_value).clamp_min(1e-12) / tail_steps
        tail_offset = torch.round((magnitude - breakpoint_value) / tail_scale).clamp(0, tail_steps)
        tail = rows.sign() * (breakpoint_value + tail_offset * tail_scale)
        return torch.where(magnitude <= breakpoint_value, centre, tail)

    channels = rows.shape[0]
    best_ratio = torch.full((channels,), 0.5)
    for step in (0.05, 0.005):
        offsets = torch.arange(-10, 11) * step
        candidates = (best_ratio[:, None] + offsets[None]).clamp(step, 1.0)
        restored = quantize(candidates.T)
        errors = (restored - rows[None]).pow(2).sum(dim=2)
        best_ratio = candidates[torch.arange(channels), errors.argmin(dim=0)]
    return quantize(best_ratio[None])[0].reshape(weight.shape)


def simulate_pwlq(model: nn.Module, bits: int = 4) -> nn.Module:
    """A CPU copy of `model` with batch norm folded into the convolutions and every conv and
    linear weight replaced by its `bits`-bit PWLQ value. Simulated: runs fp32 kernels."""
    folded = fold_batch_norm(_float_copy_on_cpu(model))
    with torch.no_grad():
        for module in folded.modules():
            if isinstance(module, nn.Conv2d | nn.Linear):
                module.weight.copy_(pwlq_fake_quantize(module.weight, bits))
    return folded.eval()


def quantization_aware_training(
    model: nn.Module,
    train: Split,
    epochs: float,
    settings: TrainSettings,
    seed: int,
    augment: bool = False,
) -> Int8Model:
    """QAT through PT2E: fine-tune an exported copy of `model` with the x86 quantizer's int8
    fake quantization (straight-through rounding), then convert and lower it to int8 kernels.

    Simplification (labelled `bn=folded-before-qat`): batch norm is folded into the convs before
    QAT, i.e. its statistics are frozen from the first step; Jacob et al. 2018 fold BN into the
    fake-quantized conv and freeze its statistics late in training. PT2E's QAT conv-BN rewrite
    took about 3 minutes to convert one ResNet-8 on the 2-core development machine.

    Without batch norm the folded network is far more sensitive to the step size than the one
    it was trained as: at smoke scale one epoch of SGD at 5e-3 took the int8 model from 93 % to
    61 % (62 % without weight decay, so the step size, not the decay; 92 % at 2e-3, 93.5 % at
    5e-4), hence the scales' small `qat_learning_rate`."""
    float_model = fold_batch_norm(copy.deepcopy(model)).train()
    device = next(float_model.parameters()).device
    exported = _export(float_model, train.images[:2].to(device))
    config = get_default_x86_inductor_quantization_config(is_qat=True)
    prepared = prepare_qat_pt2e(exported, _quantizer(config))
    allow_exported_model_train_eval(prepared)

    def cross_entropy(images: Tensor, labels: Tensor, _indices: Tensor) -> Tensor:
        return F.cross_entropy(prepared(images), labels)

    fit([prepared], train, epochs, cross_entropy, settings, seed, augment)
    prepared.eval()
    return Int8Model(convert_pt2e(prepared.cpu()))


def is_int8_model(model: nn.Module) -> bool:
    """True for a PT2E int8 model (`Int8Model`), whose conv and linear layers run as oneDNN
    int8 kernels once lowered."""
    return isinstance(model, Int8Model)
