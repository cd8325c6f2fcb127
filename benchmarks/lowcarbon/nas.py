"""Architecture search over a small DARTS cell space: gradient-based (DARTS) and random search.

- `darts_search`  Liu et al. 2019, "DARTS: Differentiable Architecture Search", first-order:
                  a supernet whose every edge mixes all candidate operations by a softmax over
                  architecture weights α; α steps on held-out data alternate with weight steps
                  on training data; each node then keeps its two strongest incoming edges and
                  each edge its strongest operation.
- `random_search` Li & Talwalkar 2019, "Random Search and Reproducibility for Neural
                  Architecture Search": sample cells uniformly from the same space, train each
                  briefly, keep the best on held-out data. The non-gradient reference.
- `regularized_evolution`
                  Real et al. 2019, "Regularized Evolution for Image Classifier Architecture
                  Search" (aging evolution): a population of briefly trained cells; each cycle
                  samples a few at random, mutates the best of the sample (one operation or
                  one input changed) into a child trained from scratch, and removes the oldest
                  member, whatever its accuracy. The best cell of the whole history wins.

Each result is retrained from scratch as a discrete network (`CellNetwork`). The space is
DARTS's macro-structure (stacked normal cells, reduction cells at 1/3 and 2/3 of the depth,
intermediate nodes concatenated) with six of its eight operations. Left out of Liu et al. 2019,
and named in each test's `omitted` label: the sep_conv_5x5 and dil_conv_5x5 operations (their
cost on a CPU smoke run), and from the final training cutout, drop-path and the auxiliary head;
DARTS runs first-order (their second-order α gradient is not built).
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .data import Split, iterate_batches
from .training import TrainSettings, evaluate, fit

PRIMITIVES = (
    "none",
    "skip_connect",
    "max_pool_3x3",
    "avg_pool_3x3",
    "sep_conv_3x3",
    "dil_conv_3x3",
)
INPUTS_PER_NODE = 2


class ReLUConvBN(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, affine: bool) -> None:
        super().__init__(
            nn.ReLU(),
            nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, bias=False),
            nn.BatchNorm2d(c_out, affine=affine),
        )


class DilatedConv(nn.Sequential):
    """ReLU, depthwise 3×3 with dilation 2, pointwise 1×1, BN."""

    def __init__(self, channels: int, stride: int, affine: bool) -> None:
        super().__init__(
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, stride, 2, dilation=2, groups=channels, bias=False),
            nn.Conv2d(channels, channels, 1, bias=False),
            nn.BatchNorm2d(channels, affine=affine),
        )


class SeparableConv(nn.Sequential):
    """Two stacked (ReLU, depthwise 3×3, pointwise 1×1, BN) blocks, the first with `stride`."""

    def __init__(self, channels: int, stride: int, affine: bool) -> None:
        layers: list[nn.Module] = []
        for block_stride in (stride, 1):
            layers += [
                nn.ReLU(),
                nn.Conv2d(channels, channels, 3, block_stride, 1, groups=channels, bias=False),
                nn.Conv2d(channels, channels, 1, bias=False),
                nn.BatchNorm2d(channels, affine=affine),
            ]
        super().__init__(*layers)


class FactorizedReduce(nn.Module):
    """Halves the resolution without losing pixels: two offset stride-2 1×1 convs, concatenated."""

    def __init__(self, c_in: int, c_out: int, affine: bool) -> None:
        super().__init__()
        self.relu = nn.ReLU()
        self.even = nn.Conv2d(c_in, c_out // 2, 1, 2, bias=False)
        self.odd = nn.Conv2d(c_in, c_out - c_out // 2, 1, 2, bias=False)
        self.norm = nn.BatchNorm2d(c_out, affine=affine)

    def forward(self, inputs: Tensor) -> Tensor:
        activated = self.relu(inputs)
        both = torch.cat([self.even(activated), self.odd(activated[:, :, 1:, 1:])], dim=1)
        return self.norm(both)


class Zero(nn.Module):
    """The `none` operation: no connection (zeros of the output's shape)."""

    def __init__(self, stride: int) -> None:
        super().__init__()
        self.stride = stride

    def forward(self, inputs: Tensor) -> Tensor:
        return inputs[:, :, :: self.stride, :: self.stride].mul(0.0)


def make_operation(name: str, channels: int, stride: int, affine: bool) -> nn.Module:
    """One candidate operation of the space, mapping `channels` to `channels`."""
    if name == "none":
        return Zero(stride)
    if name == "skip_connect":
        return nn.Identity() if stride == 1 else FactorizedReduce(channels, channels, affine)
    if name in ("max_pool_3x3", "avg_pool_3x3"):
        pool = (
            nn.MaxPool2d(3, stride, 1)
            if name == "max_pool_3x3"
            else nn.AvgPool2d(3, stride, 1, count_include_pad=False)
        )
        return pool if affine else nn.Sequential(pool, nn.BatchNorm2d(channels, affine=False))
    if name == "sep_conv_3x3":
        return SeparableConv(channels, stride, affine)
    if name == "dil_conv_3x3":
        return DilatedConv(channels, stride, affine)
    raise ValueError(f"unknown operation {name!r}; known: {PRIMITIVES}")


@dataclass(frozen=True)
class Genotype:
    """A discrete architecture: for each cell type, (operation, input state) per kept edge, two
    per intermediate node, node k's inputs drawn from states 0..k+1 (0, 1: the two previous
    cells' outputs; 2 onwards: earlier nodes of this cell)."""

    normal: tuple[tuple[str, int], ...]
    reduce: tuple[tuple[str, int], ...]
    nodes: int

    def edges(self, reduction: bool) -> tuple[tuple[str, int], ...]:
        return self.reduce if reduction else self.normal

    def is_valid(self) -> bool:
        """Two edges per node, from earlier states only, each a real (non-`none`) operation."""
        for cell in (self.normal, self.reduce):
            if len(cell) != INPUTS_PER_NODE * self.nodes:
                return False
            for index, (operation, source) in enumerate(cell):
                node = index // INPUTS_PER_NODE
                if operation not in PRIMITIVES or operation == "none":
                    return False
                if not 0 <= source < node + 2:
                    return False
        return True

    def describe(self) -> str:
        def cell_text(edges: tuple[tuple[str, int], ...]) -> str:
            return " ".join(f"{operation}<-{source}" for operation, source in edges)

        return f"normal[{cell_text(self.normal)}] reduce[{cell_text(self.reduce)}]"


def _edge_count(nodes: int) -> int:
    return sum(2 + node for node in range(nodes))


class _Cell(nn.Module):
    """A cell: two preprocessed inputs, `nodes` intermediate nodes, outputs concatenated.
    `mixed` builds every operation on every edge (search); otherwise `genotype` picks them."""

    def __init__(
        self,
        nodes: int,
        c_prev_prev: int,
        c_prev: int,
        channels: int,
        reduction: bool,
        reduction_prev: bool,
        genotype: Genotype | None,
    ) -> None:
        super().__init__()
        affine = genotype is not None
        self.reduction = reduction
        self.nodes = nodes
        self.preprocess0 = (
            FactorizedReduce(c_prev_prev, channels, affine)
            if reduction_prev
            else ReLUConvBN(c_prev_prev, channels, 1, 1, affine)
        )
        self.preprocess1 = ReLUConvBN(c_prev, channels, 1, 1, affine)
        self.edges = nn.ModuleList()
        self.sources: list[int] = []
        if genotype is None:
            for node in range(nodes):
                for source in range(node + 2):
                    stride = 2 if reduction and source < 2 else 1
                    self.edges.append(
                        nn.ModuleList(
                            make_operation(name, channels, stride, affine) for name in PRIMITIVES
                        )
                    )
                    self.sources.append(source)
        else:
            for operation, source in genotype.edges(reduction):
                stride = 2 if reduction and source < 2 else 1
                self.edges.append(make_operation(operation, channels, stride, affine))
                self.sources.append(source)

    def forward(self, s0: Tensor, s1: Tensor, edge_weights: Tensor | None = None) -> Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        edge_index = 0
        for node in range(self.nodes):
            incoming = len(self.edges) // self.nodes if edge_weights is None else node + 2
            total = 0
            for _ in range(incoming):
                edge, source = self.edges[edge_index], self.sources[edge_index]
                if edge_weights is None:
                    total = total + edge(states[source])
                else:
                    weights = edge_weights[edge_index]
                    total = total + sum(
                        weight * operation(states[source])
                        for weight, operation, name in zip(weights, edge, PRIMITIVES, strict=True)
                        if name != "none"
                    )
                edge_index += 1
            states.append(total)
        return torch.cat(states[2:], dim=1)


class CellNetwork(nn.Module):
    """DARTS's CIFAR network: stem, `cells` cells (reductions at 1/3 and 2/3), pool, linear.
    Without a genotype it is the search supernet, with architecture weights α."""

    def __init__(
        self,
        cells: int,
        nodes: int,
        channels: int,
        num_classes: int = 10,
        genotype: Genotype | None = None,
        stem_multiplier: int = 3,
    ) -> None:
        super().__init__()
        self.genotype = genotype
        self.nodes = nodes
        stem_channels = stem_multiplier * channels
        self.stem = nn.Sequential(
            nn.Conv2d(3, stem_channels, 3, padding=1, bias=False), nn.BatchNorm2d(stem_channels)
        )
        c_prev_prev, c_prev, c_current = stem_channels, stem_channels, channels
        reduction_positions = {cells // 3, 2 * cells // 3} if cells >= 3 else {cells - 1}
        self.cells = nn.ModuleList()
        reduction_prev = False
        for index in range(cells):
            reduction = index in reduction_positions
            if reduction:
                c_current *= 2
            cell = _Cell(nodes, c_prev_prev, c_prev, c_current, reduction, reduction_prev, genotype)
            self.cells.append(cell)
            reduction_prev = reduction
            c_prev_prev, c_prev = c_prev, nodes * c_current
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_prev, num_classes)
        if genotype is None:
            edges = _edge_count(nodes)
            self.alpha_normal = nn.Parameter(1e-3 * torch.randn(edges, len(PRIMITIVES)))
            self.alpha_reduce = nn.Parameter(1e-3 * torch.randn(edges, len(PRIMITIVES)))

    def architecture_parameters(self) -> list[nn.Parameter]:
        return [self.alpha_normal, self.alpha_reduce] if self.genotype is None else []

    def weight_parameters(self) -> list[nn.Parameter]:
        architecture = {id(parameter) for parameter in self.architecture_parameters()}
        return [p for p in self.parameters() if id(p) not in architecture]

    def forward(self, inputs: Tensor) -> Tensor:
        s0 = s1 = self.stem(inputs)
        for cell in self.cells:
            weights = None
            if self.genotype is None:
                alpha = self.alpha_reduce if cell.reduction else self.alpha_normal
                weights = F.softmax(alpha, dim=-1)
            s0, s1 = s1, cell(s0, s1, weights)
        return self.classifier(torch.flatten(self.pool(s1), 1))

    def derive_genotype(self) -> Genotype:
        """DARTS's discretisation: per node the two incoming edges whose strongest non-`none`
        operation weighs most, each with that operation."""

        def cell_edges(alpha: Tensor) -> tuple[tuple[str, int], ...]:
            weights = F.softmax(alpha.detach(), dim=-1).cpu()
            none_index = PRIMITIVES.index("none")
            chosen: list[tuple[str, int]] = []
            start = 0
            for node in range(self.nodes):
                node_weights = weights[start : start + node + 2].clone()
                node_weights[:, none_index] = -1.0
                strength, best_operation = node_weights.max(dim=1)
                for source in strength.argsort(descending=True)[:INPUTS_PER_NODE].sort().values:
                    chosen.append((PRIMITIVES[best_operation[source]], int(source)))
                start += node + 2
            return tuple(chosen)

        return Genotype(cell_edges(self.alpha_normal), cell_edges(self.alpha_reduce), self.nodes)


@dataclass(frozen=True)
class SearchResult:
    """The architecture a search picked and what it measured on the held-out half."""

    genotype: Genotype
    validation_accuracy: float
    candidates_evaluated: int
    architecture_weights: tuple[Tensor, Tensor] | None = None
    """DARTS's final (α_normal, α_reduce); None for random search."""


def darts_search(
    train: Split,
    cells: int,
    nodes: int,
    channels: int,
    epochs: float,
    settings: TrainSettings,
    architecture_learning_rate: float,
    seed: int,
    num_classes: int = 10,
) -> SearchResult:
    """First-order DARTS on `train`: weights learn on its first half, α on its second."""
    torch.manual_seed(seed)
    weights_split, architecture_split = train.halves()
    supernet = CellNetwork(cells, nodes, channels, num_classes).to(train.images.device)
    architecture_optimizer = torch.optim.Adam(
        supernet.architecture_parameters(),
        lr=architecture_learning_rate,
        betas=(0.5, 0.999),
        weight_decay=1e-3,
    )
    generator = torch.Generator().manual_seed(seed + 1)

    def architecture_batches() -> Callable[[], tuple[Tensor, Tensor]]:
        batches = iter(())

        def next_batch() -> tuple[Tensor, Tensor]:
            nonlocal batches
            batch = next(batches, None)
            if batch is None:
                batches = iterate_batches(architecture_split, settings.batch_size, generator)
                batch = next(batches)
            return batch[0], batch[1]

        return next_batch

    next_architecture_batch = architecture_batches()

    def weight_loss(images: Tensor, labels: Tensor, _indices: Tensor) -> Tensor:
        held_out_images, held_out_labels = next_architecture_batch()
        architecture_optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(supernet(held_out_images), held_out_labels).backward(
            inputs=supernet.architecture_parameters()
        )
        architecture_optimizer.step()
        return F.cross_entropy(supernet(images), labels)

    weights_only = _WeightsView(supernet)
    fit([weights_only], weights_split, epochs, weight_loss, settings, seed)
    return SearchResult(
        supernet.derive_genotype(),
        evaluate(supernet, architecture_split),
        candidates_evaluated=1,
        architecture_weights=(
            supernet.alpha_normal.detach().cpu(),
            supernet.alpha_reduce.detach().cpu(),
        ),
    )


class _WeightsView(nn.Module):
    """Exposes a supernet's weights (not its α) to the shared training loop."""

    def __init__(self, supernet: CellNetwork) -> None:
        super().__init__()
        self.supernet = supernet

    def parameters(self, recurse: bool = True):  # type: ignore[override]
        return iter(self.supernet.weight_parameters())

    def train(self, mode: bool = True) -> _WeightsView:
        self.supernet.train(mode)
        return self


def random_genotype(nodes: int, rng: random.Random) -> Genotype:
    """A cell drawn uniformly: per node two distinct earlier states, each a random operation."""
    operations = [name for name in PRIMITIVES if name != "none"]

    def cell_edges() -> tuple[tuple[str, int], ...]:
        edges: list[tuple[str, int]] = []
        for node in range(nodes):
            for source in sorted(rng.sample(range(node + 2), INPUTS_PER_NODE)):
                edges.append((rng.choice(operations), source))
        return tuple(edges)

    return Genotype(cell_edges(), cell_edges(), nodes)


def train_and_score(
    genotype: Genotype,
    train: Split,
    cells: int,
    channels: int,
    epochs: float,
    settings: TrainSettings,
    seed: int,
    num_classes: int = 10,
) -> float:
    """A candidate's fitness, as random search and evolution measure it: the cell trained from
    scratch `epochs` on the first half of `train`, its accuracy on the second half."""
    weights_split, held_out = train.halves()
    torch.manual_seed(seed)
    candidate = CellNetwork(cells, genotype.nodes, channels, num_classes, genotype)
    candidate = candidate.to(train.images.device)

    def cross_entropy(images: Tensor, labels: Tensor, _indices: Tensor) -> Tensor:
        return F.cross_entropy(candidate(images), labels)

    fit([candidate], weights_split, epochs, cross_entropy, settings, seed)
    return evaluate(candidate, held_out)


def random_search(
    train: Split,
    cells: int,
    nodes: int,
    channels: int,
    trials: int,
    trial_epochs: float,
    settings: TrainSettings,
    seed: int,
    num_classes: int = 10,
) -> SearchResult:
    """Random search: `trials` sampled cells, each trained `trial_epochs` on the first half of
    `train` and scored on the second; the best-scoring one wins."""
    rng = random.Random(seed)
    best: tuple[float, Genotype] | None = None
    for trial in range(trials):
        genotype = random_genotype(nodes, rng)
        accuracy = train_and_score(
            genotype, train, cells, channels, trial_epochs, settings, seed + trial, num_classes
        )
        if best is None or accuracy > best[0]:
            best = (accuracy, genotype)
    assert best is not None, "random search needs at least one trial"
    return SearchResult(best[1], best[0], candidates_evaluated=trials)


def mutate(genotype: Genotype, rng: random.Random) -> Genotype:
    """Real et al.'s mutation: in the normal or the reduction cell (even odds), either one
    edge's operation becomes another operation, or one edge's input becomes another earlier
    state of the cell not already feeding that node (even odds; an operation change when no
    edge has such a state). The child differs from its parent in exactly one place."""
    reduction = rng.random() < 0.5
    edges = list(genotype.edges(reduction))
    movable = []
    for index in range(len(edges)):
        node = index // INPUTS_PER_NODE
        siblings = {s for _, s in edges[node * INPUTS_PER_NODE : (node + 1) * INPUTS_PER_NODE]}
        free = [state for state in range(node + 2) if state not in siblings]
        if free:
            movable.append((index, free))
    if movable and rng.random() < 0.5:
        index, free = rng.choice(movable)
        edges[index] = (edges[index][0], rng.choice(free))
    else:
        index = rng.randrange(len(edges))
        others = [name for name in PRIMITIVES if name not in ("none", edges[index][0])]
        edges[index] = (rng.choice(others), edges[index][1])
    cell = tuple(edges)
    if reduction:
        return Genotype(genotype.normal, cell, genotype.nodes)
    return Genotype(cell, genotype.reduce, genotype.nodes)


@dataclass(frozen=True)
class Candidate:
    """One evaluated architecture, numbered in the order it was trained (its age)."""

    genotype: Genotype
    accuracy: float
    born: int


@dataclass
class EvolutionHistory:
    """Every candidate in the order trained, each cycle's tournament winner (the parent), the
    candidates removed for age, in that order, and the population left at the end."""

    history: list[Candidate] = field(default_factory=list)
    parents: list[Candidate] = field(default_factory=list)
    removed: list[Candidate] = field(default_factory=list)
    population: list[Candidate] = field(default_factory=list)

    @property
    def best(self) -> Candidate:
        """The most accurate candidate ever trained (the earliest, on ties)."""
        return max(self.history, key=lambda candidate: (candidate.accuracy, -candidate.born))


def evolve(
    nodes: int,
    population_size: int,
    sample_size: int,
    cycles: int,
    fitness: Callable[[Genotype, int], float],
    rng: random.Random,
) -> EvolutionHistory:
    """Aging evolution (Real et al. 2019, Algorithm 1) over cells of `nodes` nodes:
    `population_size` random cells, then `cycles` cycles of: sample `sample_size` members
    uniformly, mutate the fittest of them, score the child, add it, remove the oldest.
    `fitness(genotype, age)` scores a candidate (`age` = its number in the history)."""
    if not 1 <= sample_size <= population_size:
        raise ValueError(
            f"evolution's sample size must be 1..population ({population_size}), got {sample_size}"
        )
    record = EvolutionHistory()

    def add(genotype: Genotype) -> Candidate:
        born = len(record.history)
        candidate = Candidate(genotype, fitness(genotype, born), born)
        record.history.append(candidate)
        return candidate

    population: deque[Candidate] = deque()
    while len(population) < population_size:
        population.append(add(random_genotype(nodes, rng)))
    for _ in range(cycles):
        sample = rng.sample(list(population), sample_size)
        parent = max(sample, key=lambda candidate: candidate.accuracy)
        record.parents.append(parent)
        population.append(add(mutate(parent.genotype, rng)))
        record.removed.append(population.popleft())
    record.population = list(population)
    return record


def regularized_evolution(
    train: Split,
    cells: int,
    nodes: int,
    channels: int,
    population_size: int,
    sample_size: int,
    cycles: int,
    trial_epochs: float,
    settings: TrainSettings,
    seed: int,
    num_classes: int = 10,
) -> SearchResult:
    """Regularized evolution on `train`: every candidate trained `trial_epochs` on its first
    half and scored on its second (as in random search); population + cycles candidates in
    all; the best ever scored wins."""
    record = evolve(
        nodes,
        population_size,
        sample_size,
        cycles,
        lambda genotype, age: train_and_score(
            genotype, train, cells, channels, trial_epochs, settings, seed + age, num_classes
        ),
        random.Random(seed),
    )
    best = record.best
    return SearchResult(best.genotype, best.accuracy, candidates_evaluated=len(record.history))
