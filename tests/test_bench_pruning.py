"""Channel pruning removes real channels, chosen by the criterion each method is named after."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from benchmarks.lowcarbon.data import Split, iterate_batches, synthetic_images
from benchmarks.lowcarbon.models import CifarResNet, count_flops, count_parameters
from benchmarks.lowcarbon.pruning import (
    PRUNING_CRITERIA,
    TaylorFilterImportance,
    prune_channels,
    pruning_importance,
)
from benchmarks.lowcarbon.training import TrainSettings, evaluate, train_classifier

WEAK_CHANNELS = [1, 4]


def conv_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 10),
    ).eval()


def weaken(model: nn.Sequential, criterion: str) -> None:
    """Make WEAK_CHANNELS of the first conv the ones `criterion` should remove."""
    conv, norm = model[0], model[1]
    with torch.no_grad():
        if criterion == "l1":
            conv.weight[WEAK_CHANNELS] *= 0.01
        elif criterion == "fpgm":
            others = [index for index in range(8) if index not in WEAK_CHANNELS]
            conv.weight[WEAK_CHANNELS] = conv.weight[others].mean(dim=0)
        elif criterion == "apoz":
            norm.bias[WEAK_CHANNELS] = -100.0
        elif criterion == "taylor":
            conv.weight[WEAK_CHANNELS] = 0.0


@pytest.fixture(scope="module")
def calibration() -> Split:
    return synthetic_images(64, seed=0)


@pytest.mark.parametrize("criterion", PRUNING_CRITERIA)
def test_each_criterion_removes_the_channels_it_ranks_lowest(criterion, calibration):
    model = conv_net()
    weaken(model, criterion)
    kept = [index for index in range(8) if index not in WEAK_CHANNELS]
    kept_filters = model[0].weight.detach()[kept].clone()

    prune_channels(model, criterion, channel_ratio=0.25, calibration=calibration, batch_size=32)

    assert model[0].out_channels == 6 and model[1].num_features == 6
    assert model[3].in_channels == 6
    assert torch.equal(model[0].weight.detach(), kept_filters)


@pytest.mark.parametrize("criterion", PRUNING_CRITERIA)
def test_pruned_resnet_has_fewer_parameters_and_flops_and_still_trains(criterion, calibration):
    torch.manual_seed(0)
    base = CifarResNet(depth=8, width=8).eval()
    inputs = calibration.images[:2]
    pruned = prune_channels(copy.deepcopy(base), criterion, 0.5, calibration, batch_size=32)

    assert count_parameters(pruned) < 0.5 * count_parameters(base)
    assert count_flops(pruned, inputs) < 0.5 * count_flops(base, inputs)
    base_convs, pruned_convs = (
        [module for module in model.modules() if isinstance(module, nn.Conv2d)]
        for model in (base, pruned)
    )
    assert all(
        after.out_channels < before.out_channels
        for before, after in zip(base_convs, pruned_convs, strict=True)
    )
    assert pruned(inputs).shape == (2, 10)
    log = train_classifier(pruned, calibration, 1, TrainSettings(batch_size=32), seed=0)
    assert len(log.step_losses) == 2
    assert 0.0 <= evaluate(pruned, calibration) <= 1.0


def test_unknown_criterion_is_named():
    with pytest.raises(ValueError, match="'random'"):
        pruning_importance("random")


def test_taylor_scores_each_filter_by_its_squared_per_batch_sum_of_g_times_w(calibration):
    """Molchanov 2019: (Σ_s g_s w_s)² per filter on each mini-batch's gradient, averaged over
    the mini-batches — not the square (or |·|) of a gradient summed over the whole set."""
    model = conv_net()
    importance = TaylorFilterImportance()

    importance.accumulate(model, calibration, batch_size=16)

    expected = torch.zeros(8)
    batches = 0
    for images, labels, _ in iterate_batches(calibration, 16):
        model.zero_grad()
        nn.functional.cross_entropy(model(images), labels).backward()
        expected += (model[0].weight.grad * model[0].weight).flatten(1).sum(dim=1).pow(2).detach()
        batches += 1
    torch.testing.assert_close(model[0]._taylor_sum / model[0]._taylor_batches, expected / batches)
    assert batches == 4 and model[0]._taylor_batches == 4


def test_apoz_ranks_the_last_stage_by_each_filters_own_zero_rate(calibration):
    """APoZ of the conv feeding the classifier is the zero rate of its own post-ReLU output
    (conv → BN → ReLU), whatever the classifier does with the pooled features."""
    model = conv_net()
    with torch.no_grad():
        model[4].bias.copy_(torch.linspace(-1.5, 1.5, 8)[torch.randperm(8)])
        hidden = model[:4](calibration.images)
        apoz = (model[4](hidden) <= 0).float().mean(dim=(0, 2, 3))
    kept = sorted(apoz.argsort()[:6].tolist())
    kept_biases = model[4].bias.detach()[kept].clone()

    prune_channels(model, "apoz", channel_ratio=0.25, calibration=calibration, batch_size=32)

    assert model[3].out_channels == 6 and model[8].in_features == 6
    assert torch.equal(model[4].bias.detach(), kept_biases)
