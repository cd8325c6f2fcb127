"""The base model trained data-parallel (DDP): what spreading training over ranks costs.

The same recipe as the base model's serial training (SGD, Nesterov momentum, cosine decay, the
same global batch and number of steps), on 1 rank and on 2 ranks of one torch.distributed group.
TEC is the sum over the ranks, each rank's figure kept in the results; the counted FLOPs of both
runs are the same, so any difference in measured energy is the price of running in parallel
(gradient all-reduce, duplicated per-process work, idle waiting).

    pytest benchmarks/test_distributed.py --energy

On a machine with as many GPUs as ranks the ranks train on CUDA (nccl), one GPU each; otherwise
on CPU (gloo).
"""

from __future__ import annotations

import functools
import math

import pytest
import torch

from benchmarks.lowcarbon.data import DataBundle, augment_batch, synthetic_bundle
from benchmarks.lowcarbon.models import CifarResNet
from benchmarks.lowcarbon.scales import SMOKE, Scale
from benchmarks.lowcarbon.training import evaluate, inference_call
from pytest_energy.data_parallel import DataParallelTraining


@pytest.fixture
def ddp_scale(request: pytest.FixtureRequest) -> Scale:
    """The benchmark's scale when its conftest gives one, else the smoke scale."""
    try:
        return request.getfixturevalue("scale")
    except pytest.FixtureLookupError:
        return SMOKE


@pytest.fixture
def ddp_data(request: pytest.FixtureRequest, ddp_scale: Scale) -> DataBundle:
    """The benchmark's data when its conftest gives them, else the smoke scale's synthetic set."""
    try:
        return request.getfixturevalue("data")
    except pytest.FixtureLookupError:
        return synthetic_bundle(
            ddp_scale.synthetic_train_count,
            ddp_scale.synthetic_test_count,
            ddp_scale.deployment_batch_size,
            ddp_scale.seed,
        )


def base_training(scale: Scale, data: DataBundle, device: str) -> DataParallelTraining:
    """The base model's training recipe as a ``fn(rank, world_size)`` for any number of ranks."""
    settings = scale.settings
    steps_per_epoch = math.ceil(len(data.train) / settings.batch_size)
    return DataParallelTraining(
        model_factory=functools.partial(
            CifarResNet, scale.base_depth, scale.base_width, data.num_classes
        ),
        images=data.train.images.cpu(),
        labels=data.train.labels.cpu(),
        steps=max(1, round(scale.base_epochs * steps_per_epoch)),
        global_batch_size=settings.batch_size,
        learning_rate=settings.learning_rate,
        momentum=settings.momentum,
        weight_decay=settings.weight_decay,
        nesterov=settings.momentum > 0,
        cosine_decay=True,
        augment=augment_batch if data.augment else None,
        seed=scale.seed,
        device=device,
    )


def ddp(ranks: int) -> pytest.param:
    method = f"ddp-{ranks}-rank" + ("s" if ranks > 1 else "")
    lifecycle = pytest.mark.lifecycle(
        family="distributed", method=method, model="{base}", dataset="{dataset}"
    )
    return pytest.param(ranks, marks=lifecycle, id=method)


@pytest.mark.parametrize("ranks", [ddp(1), ddp(2)])
def test_base_model_data_parallel(energy, ddp_scale, ddp_data, ranks):
    on_gpus = ddp_scale.device().type == "cuda" and torch.cuda.device_count() >= ranks
    training = base_training(ddp_scale, ddp_data, "cuda" if on_gpus else "cpu")

    run = energy.train_distributed(
        "train", training, world_size=ranks, backend="nccl" if on_gpus else "gloo"
    )

    model = CifarResNet(ddp_scale.base_depth, ddp_scale.base_width, ddp_data.num_classes)
    model.load_state_dict(run.results[0])
    model = model.to(ddp_data.device)
    energy.accuracy = evaluate(model, ddp_data.test)
    energy.inference(inference_call(model, ddp_data.batch), samples=len(ddp_data.batch))
