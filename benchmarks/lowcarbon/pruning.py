"""Structured channel pruning: filters are physically removed, so FLOPs and parameters shrink.

torch_pruning's DependencyGraph + MetaPruner find the channels that must go together (a ResNet
stage's residual stream couples every conv writing to it) and rewrite the layers. The ranking
criteria follow the four papers:

- `l1`     Li et al. 2017, "Pruning Filters for Efficient ConvNets": L1 norm of each filter.
- `fpgm`   He et al. 2019, "Filter Pruning via Geometric Median": filters nearest the geometric
           median (smallest summed distance to the others) are the most replaceable.
- `apoz`   Hu et al. 2016, "Network Trimming": Average Percentage of Zeros of a channel's
           post-ReLU activation on data; mostly-zero channels go first.
- `taylor` Molchanov et al. 2019, "Importance Estimation for Neural Network Pruning": first-order
           Taylor estimate of the loss change, (Σ_s g_s w_s)² over a filter's parameters.

torch_pruning's own MagnitudeImportance and FPGMImportance also score the consumers' input slices
and, for FPGM, distances between |w|^p rather than between filters; the two filter criteria here
score the filters that are removed, as the papers do. torch_pruning has no APoZ (its
ActivationImportance is mean |activation|), hence `ZeroActivationImportance`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import Tensor, nn

from .data import Split, iterate_batches

PRUNING_CRITERIA = ("l1", "fpgm", "apoz", "taylor")
PRUNING_PAPERS = {
    "l1": "Li et al. 2017, Pruning Filters for Efficient ConvNets",
    "fpgm": "He et al. 2019, Filter Pruning via Geometric Median",
    "apoz": "Hu et al. 2016, Network Trimming (APoZ)",
    "taylor": "Molchanov et al. 2019, Importance Estimation for Neural Network Pruning",
}

FilterScore = Callable[[Tensor], Tensor]
"""(filters, each flattened to a row) -> one score per filter; higher means keep."""


def _l1_norm(filters: Tensor) -> Tensor:
    return filters.abs().sum(dim=1)


def _distance_to_other_filters(filters: Tensor) -> Tensor:
    return torch.cdist(filters[None], filters[None]).squeeze(0).sum(dim=0)


class FilterImportance(tp.importance.Importance):
    """Scores the filters (output channels) of every conv in a pruning group with `score`, each
    conv's scores divided by their mean so coupled convs weigh alike, then averaged."""

    def __init__(self, score: FilterScore) -> None:
        self.score = score

    @torch.no_grad()
    def __call__(self, group: tp.Group) -> Tensor | None:
        total = torch.zeros(len(group[0].idxs))
        scored_convs = 0
        for item in group:
            layer = item.dep.layer
            removes_filters = item.dep.pruning_fn == tp.pruner.function.prune_conv_out_channels
            if not (removes_filters and isinstance(layer, nn.Conv2d)):
                continue
            scores = self.score(layer.weight.detach()[list(item.idxs)].flatten(1).float()).cpu()
            normalised = scores / scores.mean().clamp_min(1e-12)
            total.index_add_(0, torch.as_tensor(item.root_idxs), normalised)
            scored_convs += 1
        return total / scored_convs if scored_convs else None


class ZeroActivationImportance(tp.importance.Importance):
    """Network trimming's criterion: 1 − APoZ, the fraction of positive entries of each channel
    where it enters the next conv or linear layer (after ReLU), measured on calibration data."""

    @contextmanager
    def measuring(self, model: nn.Module) -> Iterator[None]:
        """Within this block, forward passes of `model` accumulate each channel's nonzero rate."""

        @torch.no_grad()
        def count_positive(module: nn.Module, inputs: tuple[Tensor, ...], _output: Tensor) -> None:
            activations = inputs[0]
            dims = (0, 2, 3) if activations.dim() == 4 else (0,)
            positive_rate = (activations > 0).float().mean(dim=dims).cpu()
            samples = activations.shape[0]
            module._positive_sum = getattr(module, "_positive_sum", 0) + positive_rate * samples
            module._positive_count = getattr(module, "_positive_count", 0) + samples

        hooks = [
            module.register_forward_hook(count_positive)
            for module in model.modules()
            if isinstance(module, nn.Conv2d | nn.Linear)
        ]
        try:
            yield
        finally:
            for hook in hooks:
                hook.remove()

    @torch.no_grad()
    def __call__(self, group: tp.Group) -> Tensor | None:
        consumers = (
            tp.pruner.function.prune_conv_in_channels,
            tp.pruner.function.prune_linear_in_channels,
        )
        total = torch.zeros(len(group[0].idxs))
        measured_layers = 0
        for item in group:
            dependency, indices = item.dep, item.idxs
            layer = dependency.layer
            if dependency.pruning_fn not in consumers or not hasattr(layer, "_positive_sum"):
                continue
            positive_rate = layer._positive_sum / layer._positive_count
            total.index_add_(0, torch.as_tensor(item.root_idxs), positive_rate[list(indices)])
            measured_layers += 1
        return total / measured_layers if measured_layers else None


def pruning_importance(criterion: str) -> tp.importance.Importance:
    """The channel-ranking criterion named `criterion` (one of PRUNING_CRITERIA)."""
    if criterion == "l1":
        return FilterImportance(_l1_norm)
    if criterion == "fpgm":
        return FilterImportance(_distance_to_other_filters)
    if criterion == "apoz":
        return ZeroActivationImportance()
    if criterion == "taylor":
        return tp.importance.TaylorImportance(multivariable=True)
    raise ValueError(f"unknown pruning criterion {criterion!r}; known: {PRUNING_CRITERIA}")


def _forward_calibration(
    model: nn.Module, calibration: Split, batch_size: int, with_gradients: bool
) -> None:
    model.eval()
    model.zero_grad(set_to_none=True)
    for images, labels, _ in iterate_batches(calibration, batch_size):
        if with_gradients:
            F.cross_entropy(model(images), labels, reduction="sum").backward()
        else:
            with torch.no_grad():
                model(images)


def prune_channels(
    model: nn.Module,
    criterion: str,
    channel_ratio: float,
    calibration: Split,
    batch_size: int = 128,
) -> nn.Module:
    """Remove `channel_ratio` of the channels of every prunable group of `model` (in place; the
    classifier's outputs are kept), ranked by `criterion`; `calibration` feeds the data-driven
    criteria (APoZ activations, Taylor gradients). Returns the smaller model, in eval mode."""
    importance = pruning_importance(criterion)
    example_inputs = calibration.images[:1]
    classifiers = [module for module in model.modules() if isinstance(module, nn.Linear)]
    pruner = tp.pruner.MetaPruner(
        model,
        example_inputs,
        importance=importance,
        pruning_ratio=channel_ratio,
        ignored_layers=classifiers[-1:],
    )
    if isinstance(importance, ZeroActivationImportance):
        with importance.measuring(model):
            _forward_calibration(model, calibration, batch_size, with_gradients=False)
    elif isinstance(importance, tp.importance.TaylorImportance):
        _forward_calibration(model, calibration, batch_size, with_gradients=True)
    pruner.step()
    model.zero_grad(set_to_none=True)
    for module in model.modules():
        for leftover in ("_positive_sum", "_positive_count"):
            if hasattr(module, leftover):
                delattr(module, leftover)
    return model.eval()
