"""One training loop for every method: SGD with momentum, cosine learning-rate decay per step."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .data import Split, iterate_batches
from .models import fold_batch_norm

BatchLoss = Callable[[Tensor, Tensor, Tensor], Tensor]
"""(images, labels, sample indices) -> scalar loss to minimise."""


@dataclass(frozen=True)
class TrainSettings:
    """Optimiser settings shared by base training, fine-tuning and retraining."""

    batch_size: int = 128
    learning_rate: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4


@dataclass
class TrainingLog:
    """Loss of every optimiser step, in order."""

    step_losses: list[float] = field(default_factory=list)

    def epoch_means(self, steps_per_epoch: int) -> list[float]:
        return [
            float(np.mean(self.step_losses[start : start + steps_per_epoch]))
            for start in range(0, len(self.step_losses), steps_per_epoch)
        ]


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) so a run repeats."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def fit(
    trained_modules: Iterable[nn.Module],
    split: Split,
    epochs: float,
    batch_loss: BatchLoss,
    settings: TrainSettings,
    seed: int,
    augment: bool = False,
    extra_parameters: Iterable[nn.Parameter] = (),
) -> TrainingLog:
    """Minimise `batch_loss` over `split` for `epochs` (fractions allowed) with SGD + cosine decay.

    SGD runs multi-tensor (`foreach`), as torch picks on GPUs: one operator per update step
    instead of five per parameter, which a counting meter would otherwise pay for in Python.

    The modules are put in train mode and their parameters optimised; anything else the loss
    uses (a teacher, say) keeps the mode and weights it has.
    """
    modules = list(trained_modules)
    parameters = [p for module in modules for p in module.parameters() if p.requires_grad]
    parameters += list(extra_parameters)
    steps_per_epoch = max(1, -(-len(split) // settings.batch_size))
    total_steps = max(1, round(epochs * steps_per_epoch))
    optimizer = torch.optim.SGD(
        parameters,
        lr=settings.learning_rate,
        momentum=settings.momentum,
        weight_decay=settings.weight_decay,
        nesterov=settings.momentum > 0,
        foreach=True,
    )
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    generator = torch.Generator().manual_seed(seed)
    for module in modules:
        module.train()
    log = TrainingLog()
    while len(log.step_losses) < total_steps:
        for images, labels, indices in iterate_batches(
            split, settings.batch_size, generator, augment
        ):
            loss = batch_loss(images, labels, indices)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            log.step_losses.append(loss.item())
            if len(log.step_losses) == total_steps:
                break
    for module in modules:
        module.eval()
    return log


def train_classifier(
    model: nn.Module,
    split: Split,
    epochs: float,
    settings: TrainSettings,
    seed: int,
    augment: bool = False,
) -> TrainingLog:
    """Cross-entropy training of `model` on `split`; leaves the model in eval mode."""

    def cross_entropy(images: Tensor, labels: Tensor, _indices: Tensor) -> Tensor:
        return F.cross_entropy(model(images), labels)

    return fit([model], split, epochs, cross_entropy, settings, seed, augment)


@torch.inference_mode()
def predict_labels(model: nn.Module, images: Tensor, batch_size: int = 500) -> Tensor:
    """Arg-max class of each image, in eval mode, batch by batch."""
    model.eval()
    predictions = [
        model(images[start : start + batch_size]).argmax(dim=1)
        for start in range(0, len(images), batch_size)
    ]
    return torch.cat(predictions)


def evaluate(model: nn.Module, split: Split, batch_size: int = 500) -> float:
    """Top-1 accuracy of `model` on `split`, in [0, 1]."""
    predictions = predict_labels(model, split.images, batch_size)
    return (predictions.cpu() == split.labels.cpu()).float().mean().item()


def wilson_interval(correct: int, samples: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a proportion (95 % for z = 1.96): unlike the normal
    approximation it stays inside [0, 1] near 0 % and 100 % accuracy."""
    if samples <= 0:
        raise ValueError("an accuracy interval needs at least one sample")
    share = correct / samples
    denominator = 1 + z**2 / samples
    centre = (share + z**2 / (2 * samples)) / denominator
    half_width = z * math.sqrt(share * (1 - share) / samples + z**2 / (4 * samples**2))
    return max(0.0, centre - half_width / denominator), min(1.0, centre + half_width / denominator)


def record_accuracy(energy: Any, model: nn.Module, split: Split, batch_size: int = 500) -> float:
    """Set `energy.accuracy` to the top-1 accuracy on `split` of `model` as deployed (BN-folded,
    the form whose IEC is measured) and `energy.accuracy_interval` to its 95 % Wilson interval
    over the split's samples."""
    accuracy = evaluate(fold_batch_norm(model), split, batch_size)
    samples = len(split)
    low, high = wilson_interval(round(accuracy * samples), samples)
    energy.accuracy = accuracy
    energy.accuracy_interval = {"low": low, "high": high, "confidence": 0.95, "samples": samples}
    return accuracy


def inference_call(model: nn.Module, batch: Tensor) -> Callable[[], Tensor]:
    """The deployment workload whose energy is IEC: one eval-mode forward pass over `batch` of
    the model as deployed, batch norm folded into its convs (`fold_batch_norm`) like the int8
    and PWLQ models, so every row of the table runs the same kind of graph."""
    model = fold_batch_norm(model)

    def run_batch() -> Tensor:
        with torch.inference_mode():
            return model(batch)

    return run_batch


def measure_inference(energy: Any, model: nn.Module, batch: Tensor) -> None:
    """IEC of `model` deployed (`inference_call`) on `batch`, measured where it runs: on the
    batch's device, so a CPU-only int8 model on a GPU machine is left to the CPU meters and the
    counted meter (`energy.inference(runs_on=...)`), never charged GPU idle power."""
    energy.inference(inference_call(model, batch), samples=len(batch), runs_on=batch.device.type)
