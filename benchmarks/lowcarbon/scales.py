"""The two scales the benchmark runs at: `smoke` (any CPU, minutes) and `paper` (CIFAR-10, GPU).

Paper-scale epochs follow the methods' papers: ResNet-56 trained 160 epochs (He et al. 2016 train
64k iterations, about 164 epochs), pruned models fine-tuned 40 epochs (Li et al. 2017), students
distilled 240 epochs (Tian et al. 2020's CRD benchmark), DARTS searched 50 epochs and retrained
600 (Liu et al. 2019).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from .training import TrainSettings


@dataclass(frozen=True)
class SearchScale:
    """Size and schedule of the architecture-search experiments. Searches use the first
    `search_samples` training images (all when None), half for weights, half for selection;
    the winner is retrained on the whole training set as a network of `retrain_cells` cells
    and `retrain_channels` initial channels (DARTS: searched with 8 × 16, evaluated 20 × 36)."""

    cells: int
    nodes_per_cell: int
    initial_channels: int
    search_samples: int | None
    search_epochs: float
    retrain_cells: int
    retrain_channels: int
    retrain_epochs: float
    random_trials: int
    random_trial_epochs: float
    search_settings: TrainSettings
    architecture_learning_rate: float = 3e-4
    evolution_population: int = 3
    evolution_sample: int = 2
    evolution_cycles: int = 3
    """Regularized evolution: population, tournament sample and cycles (one child each); each
    candidate trains `random_trial_epochs`, like random search's."""


@dataclass(frozen=True)
class Scale:
    """Every size and schedule one benchmark run uses. Distillation has two students of one
    width, `student_depth` and the deeper `deep_student_depth` (paper: ResNet-20 and ResNet-32,
    Tian et al. 2020's pairs); pruning has two ratios, `prune_ratio` and
    `aggressive_prune_ratio`: each family holds models of two sizes, whose IEC differ."""

    name: str
    base_depth: int
    base_width: int
    student_depth: int
    student_width: int
    deep_student_depth: int
    settings: TrainSettings
    base_epochs: float
    prune_ratio: float
    aggressive_prune_ratio: float
    finetune_epochs: float
    finetune_learning_rate: float
    calibration_samples: int
    zeroq_samples: int
    zeroq_steps: int
    qat_epochs: float
    qat_learning_rate: float
    distill_epochs: float
    hint_epochs: float
    crd_negatives: int
    search: SearchScale
    deployment_batch_size: int
    synthetic_train_count: int = 0
    synthetic_test_count: int = 0
    seed: int = 0
    dry_run: bool = False
    distributed_timeout_seconds: float = 1800.0

    def device(self) -> torch.device:
        """Paper scale trains on CUDA when there is one; smoke scale always on CPU."""
        if self.name == "paper" and torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")


SMOKE = Scale(
    name="smoke",
    base_depth=8,
    base_width=16,
    student_depth=8,
    student_width=8,
    deep_student_depth=14,
    settings=TrainSettings(batch_size=64, learning_rate=0.05),
    base_epochs=4,
    prune_ratio=0.5,
    aggressive_prune_ratio=0.75,
    finetune_epochs=1.5,
    finetune_learning_rate=0.01,
    calibration_samples=256,
    zeroq_samples=32,
    zeroq_steps=60,
    qat_epochs=1,
    qat_learning_rate=0.0005,
    distill_epochs=3,
    hint_epochs=1,
    crd_negatives=1024,
    search=SearchScale(
        cells=3,
        nodes_per_cell=2,
        initial_channels=8,
        search_samples=1000,
        search_epochs=2,
        retrain_cells=3,
        retrain_channels=8,
        retrain_epochs=3,
        random_trials=4,
        random_trial_epochs=1,
        search_settings=TrainSettings(batch_size=64, learning_rate=0.025, weight_decay=3e-4),
        architecture_learning_rate=3e-3,
    ),
    deployment_batch_size=64,
    synthetic_train_count=3000,
    synthetic_test_count=10_000,
)

PAPER = Scale(
    name="paper",
    base_depth=56,
    base_width=16,
    student_depth=20,
    student_width=16,
    deep_student_depth=32,
    settings=TrainSettings(batch_size=128, learning_rate=0.1),
    base_epochs=160,
    prune_ratio=0.5,
    aggressive_prune_ratio=0.75,
    finetune_epochs=40,
    finetune_learning_rate=0.01,
    calibration_samples=1024,
    zeroq_samples=32,
    zeroq_steps=500,
    qat_epochs=10,
    qat_learning_rate=0.001,
    distill_epochs=240,
    hint_epochs=30,
    crd_negatives=16384,
    search=SearchScale(
        cells=8,
        nodes_per_cell=4,
        initial_channels=16,
        search_samples=None,
        search_epochs=50,
        retrain_cells=20,
        retrain_channels=36,
        retrain_epochs=600,
        random_trials=24,
        random_trial_epochs=10,
        search_settings=TrainSettings(batch_size=64, learning_rate=0.025, weight_decay=3e-4),
        evolution_population=8,
        evolution_sample=3,
        evolution_cycles=16,
    ),
    deployment_batch_size=128,
    synthetic_train_count=50_000,
    synthetic_test_count=10_000,
    distributed_timeout_seconds=48 * 3600.0,
)

DRY_RUN_EPOCHS = 1
DRY_RUN_TRAIN_COUNT = 1024
DRY_RUN_TEST_COUNT = 512
DRY_RUN_ZEROQ_STEPS = 20
DRY_RUN_RANDOM_TRIALS = 2


def dry_run(scale: Scale) -> Scale:
    """`scale`'s models, sizes and code path with every schedule cut to one epoch (fractions
    kept), ZeroQ to 20 steps and random search to 2 trials; synthetic CIFAR-shaped data of
    1,024 training and 512 test images when no data set is given. Checks the path in minutes;
    its figures are labelled `dry_run=yes` and are no benchmark result."""

    def short(epochs: float) -> float:
        return min(epochs, DRY_RUN_EPOCHS)

    search = scale.search
    return dataclasses.replace(
        scale,
        base_epochs=short(scale.base_epochs),
        finetune_epochs=short(scale.finetune_epochs),
        qat_epochs=short(scale.qat_epochs),
        distill_epochs=short(scale.distill_epochs),
        hint_epochs=short(scale.hint_epochs),
        zeroq_steps=min(scale.zeroq_steps, DRY_RUN_ZEROQ_STEPS),
        calibration_samples=min(scale.calibration_samples, DRY_RUN_TRAIN_COUNT),
        search=dataclasses.replace(
            search,
            search_epochs=short(search.search_epochs),
            retrain_epochs=short(search.retrain_epochs),
            random_trials=min(search.random_trials, DRY_RUN_RANDOM_TRIALS),
            evolution_population=min(search.evolution_population, DRY_RUN_RANDOM_TRIALS),
            evolution_sample=min(search.evolution_sample, DRY_RUN_RANDOM_TRIALS),
            evolution_cycles=min(search.evolution_cycles, 1),
            random_trial_epochs=min(search.random_trial_epochs, 0.5),
        ),
        synthetic_train_count=DRY_RUN_TRAIN_COUNT,
        synthetic_test_count=DRY_RUN_TEST_COUNT,
        dry_run=True,
    )


SCALES = {scale.name: scale for scale in (SMOKE, PAPER)}
