"""Architecture search: DARTS and random search return valid discrete cells that train."""

from __future__ import annotations

import random

import pytest
import torch

from benchmarks.lowcarbon.data import synthetic_images
from benchmarks.lowcarbon.models import count_flops, count_parameters
from benchmarks.lowcarbon.nas import (
    PRIMITIVES,
    CellNetwork,
    Genotype,
    darts_search,
    random_genotype,
    random_search,
)
from benchmarks.lowcarbon.training import TrainSettings

SETTINGS = TrainSettings(batch_size=32, learning_rate=0.05, weight_decay=3e-4)


@pytest.fixture(scope="module")
def train():
    return synthetic_images(96, seed=6)


def test_darts_learns_architecture_weights_and_returns_a_valid_cell(train):
    torch.manual_seed(0)
    initial_alpha = CellNetwork(3, 2, 4).alpha_normal.detach()

    result = darts_search(
        train,
        cells=3,
        nodes=2,
        channels=4,
        epochs=1,
        settings=SETTINGS,
        architecture_learning_rate=3e-2,
        seed=0,
    )

    genotype = result.genotype
    assert result.architecture_weights is not None
    learned_alpha = result.architecture_weights[0]
    assert learned_alpha.shape == initial_alpha.shape
    assert (learned_alpha - initial_alpha).abs().max() > 10 * initial_alpha.abs().max()
    assert genotype.is_valid(), genotype.describe()
    assert genotype.nodes == 2 and len(genotype.normal) == len(genotype.reduce) == 4
    assert 0.0 <= result.validation_accuracy <= 1.0
    network = CellNetwork(3, 2, 4, genotype=genotype)
    assert network(train.images[:2]).shape == (2, 10)


def test_derivation_keeps_each_nodes_two_strongest_edges_and_their_strongest_operation():
    supernet = CellNetwork(3, 2, 4)
    with torch.no_grad():
        supernet.alpha_normal.zero_()
        supernet.alpha_reduce.zero_()
        none = PRIMITIVES.index("none")
        supernet.alpha_normal[:, none] = 10.0
        supernet.alpha_normal[0, PRIMITIVES.index("sep_conv_3x3")] = 5.0
        supernet.alpha_normal[1, PRIMITIVES.index("max_pool_3x3")] = 4.0
        supernet.alpha_normal[4, PRIMITIVES.index("dil_conv_3x3")] = 3.0
        supernet.alpha_normal[2, PRIMITIVES.index("skip_connect")] = 2.0

    genotype = supernet.derive_genotype()

    assert genotype.normal[:2] == (("sep_conv_3x3", 0), ("max_pool_3x3", 1))
    assert ("dil_conv_3x3", 2) in genotype.normal[2:]
    assert ("skip_connect", 0) in genotype.normal[2:]
    assert genotype.is_valid()


def test_discrete_network_is_smaller_and_cheaper_than_the_supernet(train):
    genotype = random_genotype(2, random.Random(0))
    supernet, network = CellNetwork(3, 2, 4), CellNetwork(3, 2, 4, genotype=genotype)

    assert count_parameters(network) < count_parameters(supernet)
    assert count_flops(network, train.images[:1]) < count_flops(supernet, train.images[:1])


def test_random_cells_are_valid_and_random_search_keeps_the_best_it_tried(train):
    rng = random.Random(1)
    samples = [random_genotype(3, rng) for _ in range(20)]
    assert all(sample.is_valid() for sample in samples)
    assert len({sample.describe() for sample in samples}) > 1

    result = random_search(
        train, cells=3, nodes=2, channels=4, trials=2, trial_epochs=1, settings=SETTINGS, seed=3
    )

    same_draws = random.Random(3)
    tried = [random_genotype(2, same_draws) for _ in range(2)]
    assert result.genotype in tried
    assert result.candidates_evaluated == 2 and result.genotype.is_valid()


@pytest.mark.parametrize(
    "cell",
    [
        (("none", 0), ("skip_connect", 1), ("sep_conv_3x3", 0), ("max_pool_3x3", 2)),
        (("skip_connect", 0), ("skip_connect", 2), ("sep_conv_3x3", 0), ("max_pool_3x3", 2)),
        (("skip_connect", 0), ("skip_connect", 1), ("sep_conv_3x3", 0)),
        (("conv_9x9", 0), ("skip_connect", 1), ("sep_conv_3x3", 0), ("max_pool_3x3", 2)),
    ],
    ids=["none-op", "forward-reference", "missing-edge", "unknown-op"],
)
def test_invalid_cells_are_rejected(cell):
    valid = (("skip_connect", 0), ("skip_connect", 1), ("sep_conv_3x3", 0), ("max_pool_3x3", 2))
    assert Genotype(valid, valid, nodes=2).is_valid()
    assert not Genotype(cell, valid, nodes=2).is_valid()
