"""The low-carbon CV benchmark's shared pieces: scale, data and the base model.

The base model is trained once per run inside `energy_session.measure("base-training")`; every
method that starts from it charges that energy to its own TEC (Li et al. 2021: a compressed
model's life includes the training of the model it was compressed from).

Lifecycle labels may name models by role, filled in for the scale at collection time:
`{base}`, `{student}`, `{search_network}`, `{dataset}` (e.g. `model="{base}"` reads `resnet8`
at smoke scale and `resnet56` at paper scale). Every benchmark test also gets `scale=`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from benchmarks.lowcarbon.data import (
    DataBundle,
    DatasetUnavailable,
    load_cifar10,
    synthetic_bundle,
)
from benchmarks.lowcarbon.models import CifarResNet, resnet_name
from benchmarks.lowcarbon.scales import SCALES, Scale
from benchmarks.lowcarbon.training import evaluate, seed_everything, train_classifier
from pytest_energy.session import Charge, EnergySession

BENCHMARK_DIRECTORY = Path(__file__).parent


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("energy-benchmark", "low-carbon CV benchmark (benchmarks/)")
    group.addoption(
        "--energy-scale",
        choices=sorted(SCALES),
        default="smoke",
        help="smoke (default): seeded synthetic 32×32 data and tiny models, minutes on a CPU; "
        "paper: CIFAR-10 from --energy-data, ResNet-56 base / ResNet-20 student, the papers' "
        "epochs, for a GPU",
    )
    group.addoption(
        "--energy-data",
        metavar="DIR",
        default=None,
        help="folder holding cifar-10-batches-py/ (data_batch_1..5, test_batch, batches.meta) "
        "for --energy-scale paper; nothing is downloaded, a missing folder skips those tests",
    )


def _scale_of(config: pytest.Config) -> Scale:
    return SCALES[config.getoption("--energy-scale")]


def scale_labels(scale: Scale) -> dict[str, str]:
    """What the role placeholders of lifecycle labels stand for at `scale`."""
    search = scale.search
    return {
        "base": resnet_name(scale.base_depth, scale.base_width),
        "student": resnet_name(scale.student_depth, scale.student_width),
        "search_network": f"darts-cells{search.retrain_cells}-c{search.retrain_channels}",
        "dataset": "synthetic" if scale.name == "smoke" else "cifar10",
    }


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    labels = scale_labels(_scale_of(config))
    for item in items:
        marker = item.get_closest_marker("lifecycle")
        if marker is None or not item.path.is_relative_to(BENCHMARK_DIRECTORY):
            continue
        try:
            resolved = {
                key: value.format_map(labels) if isinstance(value, str) else value
                for key, value in marker.kwargs.items()
            }
        except KeyError as unknown:
            raise pytest.UsageError(
                f"{item.nodeid}: lifecycle label placeholder {unknown} is not one of "
                f"{', '.join('{' + name + '}' for name in labels)}"
            ) from None
        resolved.setdefault("scale", _scale_of(config).name)
        item.add_marker(pytest.mark.lifecycle(*marker.args, **resolved), append=False)


@pytest.fixture(scope="session", autouse=True)
def _torch_threads() -> None:
    """One intra-op thread, so runs compare across machines with other core counts.

    With more, idle OpenMP workers spin between operators while the machine is busy, and the
    cputime meter charges that spinning: A/A reruns then move by far more than the tolerance
    (``python -m benchmarks.false_alarms --threads 0`` shows it).
    """
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def scale(request: pytest.FixtureRequest) -> Scale:
    """The run's scale (`--energy-scale`)."""
    return _scale_of(request.config)


@pytest.fixture(scope="session")
def data(request: pytest.FixtureRequest, scale: Scale) -> DataBundle:
    """Train/test data and the deployment batch: synthetic at smoke scale, CIFAR-10 at paper
    scale (skips every test that needs it when the files are not there)."""
    device = scale.device()
    if scale.name == "smoke":
        return synthetic_bundle(
            scale.synthetic_train_count,
            scale.synthetic_test_count,
            scale.deployment_batch_size,
            scale.seed,
            device,
        )
    try:
        return load_cifar10(
            request.config.getoption("--energy-data"), scale.deployment_batch_size, device
        )
    except DatasetUnavailable as unavailable:
        pytest.skip(str(unavailable))


@dataclass(frozen=True)
class BaseModel:
    """The trained base model, the energy its training took, its held-out accuracy."""

    model: CifarResNet
    training: Charge
    accuracy: float

    def copy(self) -> CifarResNet:
        """A deep copy to compress; the shared model stays as trained."""
        return copy.deepcopy(self.model)


@pytest.fixture(scope="session")
def base_model(energy_session: EnergySession, scale: Scale, data: DataBundle) -> BaseModel:
    """The base model, trained once per run; charge `.training` to each method using it."""
    seed_everything(scale.seed)
    model = CifarResNet(scale.base_depth, scale.base_width, data.num_classes).to(data.device)
    with energy_session.measure("base-training") as training:
        train_classifier(
            model, data.train, scale.base_epochs, scale.settings, scale.seed, data.augment
        )
    return BaseModel(model=model, training=training, accuracy=evaluate(model, data.test))
