"""A data-parallel (DistributedDataParallel) training loop to launch with ``train_distributed``.

``DataParallelTraining`` is a picklable ``fn(rank, world_size)``: every optimiser step takes the
next ``global_batch_size`` samples (the same shuffled order on every rank) and gives each rank an
equal, contiguous share. DDP averages the ranks' gradients, so N ranks take the same steps as one
rank on the whole batch (BatchNorm statistics aside: each rank normalises its own share), and
summed over the ranks they do the same arithmetic: the counted FLOPs of a run do not depend on
how many ranks share it.

    run = energy.train_distributed(
        "train",
        DataParallelTraining(partial(CifarResNet, depth=8), images, labels, steps=20,
                             global_batch_size=64),
        world_size=2,
    )
    model.load_state_dict(run.results[0])
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from torch import Tensor, nn


@dataclass(frozen=True)
class DataParallelTraining:
    """Cross-entropy SGD training of ``model_factory()`` on ``(images, labels)`` with DDP.

    Attributes:
        model_factory: builds the model; every rank calls it with the same seed, and DDP copies
            rank 0's weights to the others anyway. Must be picklable (``functools.partial``).
        images: training inputs, first dimension = samples (kept on the CPU until sharded).
        labels: class index of each sample.
        steps: optimiser steps (each over one global batch).
        global_batch_size: samples per step over all ranks; a multiple of the world size.
        nesterov, cosine_decay: Nesterov momentum; learning rate decayed to 0 by a cosine over
            the steps (as CIFAR ResNet recipes do).
        augment: ``augment(images, generator)`` applied to each rank's share (e.g. random crops
            and flips); each rank draws from its own generator.
        device: ``cpu``, or ``cuda`` for GPU ``LOCAL_RANK`` (one GPU per rank).
    """

    model_factory: Callable[[], nn.Module]
    images: Tensor
    labels: Tensor
    steps: int
    global_batch_size: int
    learning_rate: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    cosine_decay: bool = False
    augment: Callable[[Tensor, torch.Generator], Tensor] | None = None
    seed: int = 0
    device: str = "cpu"

    def __call__(self, rank: int, world_size: int) -> dict[str, Tensor] | None:
        """Train on this rank's shares; return the trained weights on rank 0 (None elsewhere)."""
        import torch
        import torch.nn.functional as F
        from torch.nn.parallel import DistributedDataParallel

        if self.global_batch_size % world_size:
            raise ValueError(
                f"DataParallelTraining: global_batch_size {self.global_batch_size} does not split "
                f"into {world_size} equal shares; use a multiple of the world size"
            )
        if self.global_batch_size > len(self.labels):
            raise ValueError(
                f"DataParallelTraining: global_batch_size {self.global_batch_size} is larger than "
                f"the {len(self.labels)} training samples"
            )
        share = self.global_batch_size // world_size
        device = torch.device("cpu")
        if self.device == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)))
            torch.cuda.set_device(device)
        torch.manual_seed(self.seed)
        model = self.model_factory().to(device)
        ddp_model = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
        optimizer = torch.optim.SGD(
            ddp_model.parameters(),
            lr=self.learning_rate,
            momentum=self.momentum,
            weight_decay=self.weight_decay,
            nesterov=self.nesterov,
        )
        schedule = (
            torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=self.steps)
            if self.cosine_decay
            else None
        )
        generator = torch.Generator().manual_seed(self.seed)
        augment_generator = torch.Generator().manual_seed(self.seed + 1 + rank)
        order = torch.randperm(len(self.labels), generator=generator)
        position = 0
        ddp_model.train()
        for _ in range(self.steps):
            if position + self.global_batch_size > len(order):
                order, position = torch.randperm(len(self.labels), generator=generator), 0
            mine = order[position + rank * share : position + (rank + 1) * share]
            position += self.global_batch_size
            images, labels = self.images[mine], self.labels[mine]
            if self.augment is not None:
                images = self.augment(images, augment_generator)
            loss = F.cross_entropy(ddp_model(images.to(device)), labels.to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if schedule is not None:
                schedule.step()
        model.eval()
        if rank != 0:
            return None
        return {name: value.detach().cpu() for name, value in model.state_dict().items()}

    def __repr__(self) -> str:  # tensors would flood error messages
        return (
            f"DataParallelTraining({self.model_factory!r}, {len(self.labels)} samples, "
            f"steps={self.steps}, global_batch_size={self.global_batch_size})"
        )
