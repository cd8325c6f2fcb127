"""Structured channel pruning: filters are physically removed, so FLOPs and parameters shrink.

torch_pruning's DependencyGraph + MetaPruner find the channels that must go together (a ResNet
stage's residual stream couples every conv writing to it) and rewrite the layers. The ranking
criteria follow the four papers:

- `l1`     Li et al. 2017, "Pruning Filters for Efficient ConvNets": L1 norm of each filter.
- `fpgm`   He et al. 2019, "Filter Pruning via Geometric Median": filters nearest the geometric
           median (smallest summed distance to the others) are the most replaceable.
- `apoz`   Hu et al. 2016, "Network Trimming": Average Percentage of Zeros of each filter's own
           post-ReLU output (conv → BN → ReLU) on data, in every stage; mostly-zero filters go
           first.
- `taylor` Molchanov et al. 2019, "Importance Estimation for Neural Network Pruning": first-order
           Taylor estimate of the loss change, (Σ_s g_s w_s)² over a filter's weights, computed
           per mini-batch and averaged over the mini-batches.

torch_pruning's own MagnitudeImportance and FPGMImportance also score the consumers' input slices
and, for FPGM, distances between |w|^p rather than between filters; the two filter criteria here
score the filters that are removed, as the papers do. torch_pruning has no APoZ (its
ActivationImportance is mean |activation|), hence `ZeroActivationImportance`; its
TaylorImportance takes |Σ w·g| with consumer slices on a gradient summed over the whole set,
hence `TaylorFilterImportance`. Simplification: one pruning step to the target ratio (Hu et al.
and Molchanov et al. prune iteratively, fine-tuning between steps; labelled `schedule=one-shot`).
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


def _own_outputs(model: nn.Module) -> list[tuple[nn.Conv2d, nn.Module]]:
    """(conv, module whose output is the conv's own pre-activation output) for every conv: its
    batch norm when one follows it directly (in registration order), else the conv itself."""
    leaves = [module for module in model.modules() if not list(module.children())]
    pairs = []
    for index, module in enumerate(leaves):
        if not isinstance(module, nn.Conv2d):
            continue
        following = leaves[index + 1] if index + 1 < len(leaves) else None
        is_its_norm = (
            isinstance(following, nn.BatchNorm2d) and following.num_features == module.out_channels
        )
        pairs.append((module, following if is_its_norm else module))
    return pairs


class ZeroActivationImportance(tp.importance.Importance):
    """Network trimming's criterion (Hu et al. 2016): 1 − APoZ, where APoZ is the percentage of
    zero activations of each filter's own output after ReLU (its conv → BN → ReLU, measured on
    calibration data), for every conv of every stage, the last stage included. Where a residual
    sum couples several convs' channels, their filters' scores are averaged."""

    @contextmanager
    def measuring(self, model: nn.Module) -> Iterator[None]:
        """Within this block, forward passes of `model` accumulate each filter's zero rate."""

        def counter(conv: nn.Conv2d) -> Callable[[nn.Module, tuple[Tensor, ...], Tensor], None]:
            @torch.no_grad()
            def count_zeros(
                _module: nn.Module, _inputs: tuple[Tensor, ...], output: Tensor
            ) -> None:
                zero_rate = (output <= 0).float().mean(dim=(0, 2, 3)).cpu()
                samples = output.shape[0]
                conv._zero_sum = getattr(conv, "_zero_sum", 0) + zero_rate * samples
                conv._zero_count = getattr(conv, "_zero_count", 0) + samples

            return count_zeros

        hooks = [
            output.register_forward_hook(counter(conv)) for conv, output in _own_outputs(model)
        ]
        try:
            yield
        finally:
            for hook in hooks:
                hook.remove()

    @torch.no_grad()
    def __call__(self, group: tp.Group) -> Tensor | None:
        total = torch.zeros(len(group[0].idxs))
        measured_convs = 0
        for item in group:
            layer = item.dep.layer
            removes_filters = item.dep.pruning_fn == tp.pruner.function.prune_conv_out_channels
            if not (removes_filters and hasattr(layer, "_zero_sum")):
                continue
            apoz = layer._zero_sum / layer._zero_count
            total.index_add_(0, torch.as_tensor(item.root_idxs), 1 - apoz[list(item.idxs)])
            measured_convs += 1
        return total / measured_convs if measured_convs else None


class TaylorFilterImportance(tp.importance.Importance):
    """Molchanov et al. 2019's first-order Taylor importance of a filter, (Σ_s g_s w_s)² over
    the filter's weights s, computed on each mini-batch's gradient and averaged over the
    mini-batches (their Eq. 8 and §3.3); a group of coupled filters removed together scores
    the sum of its filters' importances (the loss change of removing them all)."""

    def accumulate(self, model: nn.Module, calibration: Split, batch_size: int) -> None:
        """One gradient per mini-batch of `calibration`; adds each filter's (Σ g·w)² for it."""
        convs = [module for module in model.modules() if isinstance(module, nn.Conv2d)]
        model.eval()
        for images, labels, _ in iterate_batches(calibration, batch_size):
            model.zero_grad(set_to_none=True)
            F.cross_entropy(model(images), labels).backward()
            with torch.no_grad():
                for conv in convs:
                    if conv.weight.grad is None:
                        continue
                    contribution = (conv.weight.grad * conv.weight).flatten(1).sum(dim=1)
                    conv._taylor_sum = getattr(conv, "_taylor_sum", 0) + contribution.pow(2).cpu()
                    conv._taylor_batches = getattr(conv, "_taylor_batches", 0) + 1
        model.zero_grad(set_to_none=True)

    @torch.no_grad()
    def __call__(self, group: tp.Group) -> Tensor | None:
        total = torch.zeros(len(group[0].idxs))
        scored_convs = 0
        for item in group:
            layer = item.dep.layer
            removes_filters = item.dep.pruning_fn == tp.pruner.function.prune_conv_out_channels
            if not (removes_filters and hasattr(layer, "_taylor_sum")):
                continue
            importance = layer._taylor_sum / layer._taylor_batches
            total.index_add_(0, torch.as_tensor(item.root_idxs), importance[list(item.idxs)])
            scored_convs += 1
        return total if scored_convs else None


def pruning_importance(criterion: str) -> tp.importance.Importance:
    """The channel-ranking criterion named `criterion` (one of PRUNING_CRITERIA)."""
    if criterion == "l1":
        return FilterImportance(_l1_norm)
    if criterion == "fpgm":
        return FilterImportance(_distance_to_other_filters)
    if criterion == "apoz":
        return ZeroActivationImportance()
    if criterion == "taylor":
        return TaylorFilterImportance()
    raise ValueError(f"unknown pruning criterion {criterion!r}; known: {PRUNING_CRITERIA}")


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
        model.eval()
        with importance.measuring(model), torch.no_grad():
            for images, _, _ in iterate_batches(calibration, batch_size):
                model(images)
    elif isinstance(importance, TaylorFilterImportance):
        importance.accumulate(model, calibration, batch_size)
    pruner.step()
    model.zero_grad(set_to_none=True)
    for module in model.modules():
        for leftover in ("_zero_sum", "_zero_count", "_taylor_sum", "_taylor_batches"):
            if hasattr(module, leftover):
                delattr(module, leftover)
    return model.eval()
