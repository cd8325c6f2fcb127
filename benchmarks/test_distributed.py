"""The base model trained data-parallel (DDP): what spreading training over ranks costs.

The same recipe as the base model's serial training (SGD, Nesterov momentum, cosine decay, the
same global batch and number of steps), on 1 rank and on 2 ranks of one torch.distributed group.
TEC is the sum over the ranks, each rank's figure kept in the results; the counted FLOPs of both
runs are the same, so any difference in measured energy is the price of running in parallel
(gradient all-reduce, duplicated per-process work, idle waiting).

    pytest benchmarks/test_distributed.py --energy

Without a GPU the ranks train on CPU (gloo). With GPUs (paper scale) each rank trains on its own
GPU (nccl); a rank count the machine has too few GPUs for is skipped with the reason, never run
on CPU ranks beside idle GPUs. Past 2, the machine's own GPU count is a further case. Runs are
bounded by `--energy-distributed-timeout` (default: the scale's).
"""

from __future__ import annotations

import functools
import math

import pytest
import torch

from benchmarks.lowcarbon.data import DataBundle, augment_batch, synthetic_bundle
from benchmarks.lowcarbon.models import CifarResNet
from benchmarks.lowcarbon.scales import SMOKE, Scale
from benchmarks.lowcarbon.training import measure_inference, record_accuracy
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


def rank_counts() -> list[int]:
    """1 and 2 ranks everywhere, and every GPU of a machine with more than two."""
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return [1, 2, *([gpus] if gpus > 2 else [])]


@pytest.mark.parametrize("ranks", [ddp(ranks) for ranks in rank_counts()])
def test_base_model_data_parallel(energy, ddp_scale, ddp_data, ranks):
    on_gpus = ddp_scale.device().type == "cuda"
    gpus = torch.cuda.device_count() if on_gpus else 0
    if on_gpus and gpus < ranks:
        pytest.skip(
            f"{ranks} data-parallel ranks need {ranks} GPUs, this machine has {gpus}: "
            f"CPU ranks beside an idle GPU would measure neither setting"
        )
    training = base_training(ddp_scale, ddp_data, "cuda" if on_gpus else "cpu")

    run = energy.train_distributed(
        "train",
        training,
        world_size=ranks,
        backend="nccl" if on_gpus else "gloo",
        timeout_seconds=ddp_scale.distributed_timeout_seconds,
    )

    model = CifarResNet(ddp_scale.base_depth, ddp_scale.base_width, ddp_data.num_classes)
    model.load_state_dict(run.results[0])
    model = model.to(ddp_data.device)
    record_accuracy(energy, model, ddp_data.test)
    measure_inference(energy, model, ddp_data.batch)
