"""Fixed synthetic training loads for overhead figures; torch alone, so the GPU check imports
it on a machine where only torch is installed."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .models import CifarResNet


def random_batch_training_step(
    model: nn.Module, batch_size: int, device: str = "cpu", num_classes: int = 10
) -> Callable[[], None]:
    """One SGD-with-momentum step of `model` on a fixed random CIFAR-shaped batch.

    The batch is drawn from torch's global generator: seed it first for a repeatable load.
    """
    model = model.to(device)
    optimiser = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    images = torch.randn(batch_size, 3, 32, 32, device=device)
    labels = torch.randint(0, num_classes, (batch_size,), device=device)

    def step() -> None:
        optimiser.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(images), labels).backward()
        optimiser.step()

    return step


def resnet56_training_step(batch_size: int = 128, device: str = "cpu") -> Callable[[], None]:
    """One step of the benchmark's CIFAR ResNet-56 (seeded weights and batch): the load counted's
    slowdown is judged on, by the overhead script on the CPU and by the GPU check on a GPU."""
    torch.manual_seed(0)
    return random_batch_training_step(CifarResNet(56, 16, 10), batch_size, device)
