"""Architecture search: DARTS, random search and regularized evolution return valid discrete cells
that train; evolution's mutation, tournament and aging behave as Real et al. 2019 describe."""

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
    evolve,
    mutate,
    random_genotype,
    random_search,
    regularized_evolution,
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


def differences(parent: Genotype, child: Genotype) -> list[tuple[str, int]]:
    return [
        (cell, index)
        for cell in ("normal", "reduce")
        for index, (a, b) in enumerate(
            zip(getattr(parent, cell), getattr(child, cell), strict=True)
        )
        if a != b
    ]


def test_a_mutation_changes_one_operation_or_one_input_and_keeps_the_cell_valid():
    rng = random.Random(2)
    kinds = set()
    for _ in range(200):
        parent = random_genotype(3, rng)
        child = mutate(parent, rng)
        assert child.is_valid(), child.describe()
        changed = differences(parent, child)
        assert len(changed) == 1, (parent.describe(), child.describe())
        cell, index = changed[0]
        (op_before, source_before), (op_after, source_after) = (
            getattr(parent, cell)[index],
            getattr(child, cell)[index],
        )
        kinds.add("operation" if op_before != op_after else "input")
        assert (op_before == op_after) != (source_before == source_after)
        node_sources = [
            s for _, s in getattr(child, cell)[index - index % 2 : index - index % 2 + 2]
        ]
        assert len(set(node_sources)) == 2, "a node keeps two distinct inputs"
    assert kinds == {"operation", "input"}


def fake_fitness(genotype: Genotype, _age: int) -> float:
    """A stand-in for training: the share of edges that are separable convolutions."""
    edges = genotype.normal + genotype.reduce
    return sum(operation == "sep_conv_3x3" for operation, _ in edges) / len(edges)


def test_evolution_removes_the_oldest_member_each_cycle_whatever_its_fitness():
    record = evolve(
        2, population_size=4, sample_size=2, cycles=10, fitness=fake_fitness, rng=random.Random(0)
    )

    assert len(record.history) == 14
    assert [c.born for c in record.removed] == list(range(10)), "oldest first, never the worst"
    assert [c.born for c in record.population] == [10, 11, 12, 13]


def test_the_tournament_mutates_the_fittest_of_its_sample():
    """With the sample as large as the population, the parent is the population's best."""
    population_size = 3
    record = evolve(
        2, population_size, population_size, cycles=8, fitness=fake_fitness, rng=random.Random(1)
    )

    for cycle, parent in enumerate(record.parents):
        alive = record.history[cycle : cycle + population_size]
        assert parent.accuracy == max(c.accuracy for c in alive)
        child = record.history[population_size + cycle]
        assert len(differences(parent.genotype, child.genotype)) == 1


def test_evolution_climbs_a_fitness_that_random_draws_rarely_reach():
    record = evolve(
        3, population_size=6, sample_size=3, cycles=60, fitness=fake_fitness, rng=random.Random(5)
    )

    initial_best = max(c.accuracy for c in record.history[:6])
    assert record.best.accuracy > initial_best
    assert record.best.accuracy >= 0.5


def test_evolution_refuses_a_sample_larger_than_the_population():
    with pytest.raises(ValueError, match="sample size"):
        evolve(
            2,
            population_size=2,
            sample_size=3,
            cycles=1,
            fitness=fake_fitness,
            rng=random.Random(0),
        )


def test_regularized_evolution_trains_each_candidate_and_returns_the_best_valid_cell(train):
    result = regularized_evolution(
        train,
        cells=3,
        nodes=2,
        channels=4,
        population_size=2,
        sample_size=2,
        cycles=1,
        trial_epochs=1,
        settings=SETTINGS,
        seed=3,
    )

    assert result.candidates_evaluated == 3
    assert result.genotype.is_valid()
    assert 0.0 <= result.validation_accuracy <= 1.0
