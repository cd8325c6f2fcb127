"""Architecture-search family over one DARTS cell space: DARTS (gradient-based), random search
(the non-gradient reference) and regularized evolution. No base model: TEC = search + retraining
the winner."""

from __future__ import annotations

import pytest
import torch

from benchmarks.lowcarbon.nas import (
    CellNetwork,
    darts_search,
    random_search,
    regularized_evolution,
)
from benchmarks.lowcarbon.training import (
    measure_inference,
    record_accuracy,
    train_classifier,
)

DARTS_OMISSIONS = "sep_conv_5x5+dil_conv_5x5+cutout+drop-path+auxiliary-head"
"""What the DARTS space and final training here leave out of Liu et al. 2019 (both methods share
the space, so both carry it); DARTS itself is its first-order variant. Its smoke row is marked
not converged: two search epochs on 1,000 images leave it at 47 %, behind random search's 71 %."""


def search_method(name: str, **labels: str) -> pytest.MarkDecorator:
    return pytest.mark.lifecycle(
        family="nas",
        method=name,
        model="{search_network}",
        dataset="{dataset}",
        omitted=DARTS_OMISSIONS,
        **labels,
    )


def retrain_and_measure(energy, data, scale, genotype) -> None:
    search = scale.search
    torch.manual_seed(scale.seed)
    model = CellNetwork(
        search.retrain_cells,
        search.nodes_per_cell,
        search.retrain_channels,
        data.num_classes,
        genotype,
    ).to(data.device)
    with energy.train("retrain"):
        train_classifier(
            model,
            data.train,
            search.retrain_epochs,
            search.search_settings,
            scale.seed,
            data.augment,
        )
    record_accuracy(energy, model, data.test)
    measure_inference(energy, model, data.batch)


def search_split(data, scale):
    samples = scale.search.search_samples
    return data.train if samples is None else data.train.head(samples)


@search_method("darts", variant="first-order", smoke_scale="not-converged")
def test_darts(energy, data, scale):
    search = scale.search

    with energy.train("search"):
        result = darts_search(
            search_split(data, scale),
            search.cells,
            search.nodes_per_cell,
            search.initial_channels,
            search.search_epochs,
            search.search_settings,
            search.architecture_learning_rate,
            scale.seed,
            data.num_classes,
        )

    assert result.genotype.is_valid(), result.genotype.describe()
    retrain_and_measure(energy, data, scale, result.genotype)


@search_method("random-search")
def test_random_search(energy, data, scale):
    search = scale.search

    with energy.train("search"):
        result = random_search(
            search_split(data, scale),
            search.cells,
            search.nodes_per_cell,
            search.initial_channels,
            search.random_trials,
            search.random_trial_epochs,
            search.search_settings,
            scale.seed,
            data.num_classes,
        )

    assert result.genotype.is_valid(), result.genotype.describe()
    retrain_and_measure(energy, data, scale, result.genotype)


@search_method("regularized-evolution")
def test_regularized_evolution(energy, data, scale):
    search = scale.search

    with energy.train("search"):
        result = regularized_evolution(
            search_split(data, scale),
            search.cells,
            search.nodes_per_cell,
            search.initial_channels,
            search.evolution_population,
            search.evolution_sample,
            search.evolution_cycles,
            search.random_trial_epochs,
            search.search_settings,
            scale.seed,
            data.num_classes,
        )

    assert result.candidates_evaluated == search.evolution_population + search.evolution_cycles
    assert result.genotype.is_valid(), result.genotype.describe()
    retrain_and_measure(energy, data, scale, result.genotype)
