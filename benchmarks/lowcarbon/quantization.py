"""Quantization: int8 models that run real int8 CPU kernels, and a simulated 4-bit scheme.

Int8 models go through torch.ao.quantization's FX graph mode with the x86 backend (fbgemm/oneDNN
kernels: `quantized::conv2d_relu`, `quantized::add_relu`, ...). torch 2.15 still ships it (it
warns that it moves to torchao); torchao's int8 CPU path covers linear layers, not convolutions,
so FX mode is what runs a quantized CNN on CPU today. Activations are per-tensor quint8 in
0..127 (fbgemm's overflow-safe range), weights per-channel symmetric qint8.

Post-training calibration methods differ in how each tensor's clipping range is chosen:

- `minmax`  the observed minimum and maximum.
- `aciq`    Banner et al. 2019, "Post-training 4-bit quantization of convolutional networks for
            rapid-deployment": fit a Laplace or Gaussian prior (whichever is likelier) and take the
            clipping value that minimises the analytical clipping + rounding error.
- `omse`    Choukroun et al. 2019, "Low-bit Quantization of Neural Networks for Efficient
            Inference": search the clipping range that minimises the measured quantization MSE.
- `zeroq`   Cai et al. 2020, "ZeroQ": no data; synthesise inputs whose batch-norm statistics
            match the model's (squared norms, per image, plus the input term), then calibrate
            min-max on them. ZeroQ's other half, its Pareto-frontier mixed-precision bit
            allocation, is not built: every layer is int8 (labelled `omitted`).

`simulate_pwlq` is Fang et al. 2020, "Post-Training Piecewise Linear Quantization": 4-bit
weights, simulated in fp32 since no 4-bit CPU kernels exist. `quantization_aware_training` is
QAT (Jacob et al. 2018): fine-tune with fake quantization, then convert to int8.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from scipy.optimize import minimize_scalar
from scipy.special import erf
from torch import Tensor, nn
from torch.ao.quantization import QConfig, QConfigMapping, get_default_qat_qconfig_mapping
from torch.ao.quantization.observer import MinMaxObserver, PerChannelMinMaxObserver
from torch.ao.quantization.quantize_fx import convert_fx, fuse_fx, prepare_fx, prepare_qat_fx
from torch.fx import GraphModule

from .data import Split
from .training import TrainSettings, fit

CALIBRATIONS = ("minmax", "aciq", "omse", "zeroq")
QUANTIZATION_BACKEND = "x86"
ACTIVATION_QUANT_RANGE = (0, 127)
WEIGHT_QUANT_RANGE = (-128, 127)
OMSE_CLIP_FRACTIONS = torch.linspace(0.2, 1.0, 81)
SAMPLED_VALUES_PER_BATCH = 4096
SAMPLED_VALUES_MAX = 65536


@contextmanager
def _ao_quantization() -> Iterator[None]:
    """x86 int8 engine selected; torch.ao.quantization's own deprecation notices kept quiet."""
    if QUANTIZATION_BACKEND in torch.backends.quantized.supported_engines:
        torch.backends.quantized.engine = QUANTIZATION_BACKEND
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.ao.quantization is deprecated.*")
        warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")
        warnings.filterwarnings("ignore", message=".*reduce_range will be deprecated.*")
        yield


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


def calibration_qconfig(clipping: str) -> QConfig:
    """int8 qconfig whose observers choose clipping ranges by `clipping`."""
    if clipping not in CALIBRATIONS:
        raise ValueError(f"unknown calibration {clipping!r}; known: {CALIBRATIONS}")
    activation_min, activation_max = ACTIVATION_QUANT_RANGE
    weight_min, weight_max = WEIGHT_QUANT_RANGE
    return QConfig(
        activation=ClippingActivationObserver.with_args(
            clipping=clipping,
            dtype=torch.quint8,
            qscheme=torch.per_tensor_affine,
            quant_min=activation_min,
            quant_max=activation_max,
        ),
        weight=ClippingWeightObserver.with_args(
            clipping=clipping,
            dtype=torch.qint8,
            qscheme=torch.per_channel_symmetric,
            quant_min=weight_min,
            quant_max=weight_max,
        ),
    )


def _float_copy_on_cpu(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model).cpu().eval()


def post_training_quantize(
    model: nn.Module, calibration_images: Tensor, clipping: str, batch_size: int = 64
) -> GraphModule:
    """An int8 copy of `model` for CPU, activation ranges calibrated on `calibration_images`
    and all ranges clipped by `clipping`. The float model is left as it is."""
    float_model = _float_copy_on_cpu(model)
    images = calibration_images.detach().cpu()
    with _ao_quantization():
        mapping = QConfigMapping().set_global(calibration_qconfig(clipping))
        prepared = prepare_fx(float_model, mapping, (images[:1],))
        with torch.no_grad():
            for start in range(0, len(images), batch_size):
                prepared(images[start : start + batch_size])
        return convert_fx(prepared)


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
    with _ao_quantization():
        folded = fuse_fx(_float_copy_on_cpu(model))
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
) -> GraphModule:
    """QAT: fine-tune a copy of `model` with int8 fake quantization in the graph (BN folded,
    straight-through rounding), then convert it to a real int8 model for CPU."""
    float_model = copy.deepcopy(model).train()
    device = next(float_model.parameters()).device
    with _ao_quantization():
        prepared = prepare_qat_fx(
            float_model,
            get_default_qat_qconfig_mapping(QUANTIZATION_BACKEND),
            (train.images[:1].to(device),),
        )

        def cross_entropy(images: Tensor, labels: Tensor, _indices: Tensor) -> Tensor:
            return F.cross_entropy(prepared(images), labels)

        fit([prepared], train, epochs, cross_entropy, settings, seed, augment)
        return convert_fx(prepared.cpu().eval())


def is_int8_model(model: nn.Module) -> bool:
    """True when no float conv or linear layer is left and quantized (int8 kernel) ones are."""
    modules = list(model.modules())
    float_layers = [module for module in modules if isinstance(module, nn.Conv2d | nn.Linear)]
    quantized = [module for module in modules if "quantized" in type(module).__module__.split(".")]
    return bool(quantized) and not float_layers
