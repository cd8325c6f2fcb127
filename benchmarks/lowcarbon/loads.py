"""Fixed synthetic training loads for overhead figures; torch alone, so the GPU check imports
it on a machine where only torch is installed."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


def random_batch_training_step(
    model: nn.Module, batch_size: int, device: str = "cpu", num_classes: int = 10
) -> Callable[[], None]:
    """One SGD-with-momentum step of `model` on a fixed random CIFAR-shaped batch.

    The load counted's slowdown is judged on, by the overhead script on the CPU and by the GPU
    check on a GPU, so both time the same step.
    """
    torch.manual_seed(0)
    model = model.to(device)
    optimiser = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    images = torch.randn(batch_size, 3, 32, 32, device=device)
    labels = torch.randint(0, num_classes, (batch_size,), device=device)

    def step() -> None:
        optimiser.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(images), labels).backward()
        optimiser.step()

    return step
