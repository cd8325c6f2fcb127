"""The small real suite behind docs/ci.md's example comment: a ResNet-8, pruned and int8.

From the repository root, two runs: record baselines, then fine-tune the pruned models twice
as long, which raises their (counted) training energy::

    pytest docs/example/test_example.py --energy --energy-meter counted,cputime \
        --energy-baselines docs/example/baselines --energy-save
    FINETUNE_EPOCHS=2 pytest docs/example/test_example.py --energy --energy-meter counted,cputime \
        --energy-baselines docs/example/baselines --energy-json docs/example/energy-results.json
"""

import copy
import os

import pytest
import torch

from benchmarks.lowcarbon.data import synthetic_bundle
from benchmarks.lowcarbon.models import CifarResNet
from benchmarks.lowcarbon.pruning import prune_channels
from benchmarks.lowcarbon.quantization import post_training_quantize
from benchmarks.lowcarbon.training import TrainSettings, evaluate, inference_call, train_classifier

FINETUNE_EPOCHS = float(os.environ.get("FINETUNE_EPOCHS", "1"))
SETTINGS = TrainSettings(batch_size=64, learning_rate=0.05)
USAGE = [1e3, 1e5, 1e7, 1e9]


@pytest.fixture(scope="session")
def data():
    return synthetic_bundle(1500, 500, 64, seed=0)


@pytest.fixture(scope="session")
def base(energy_session, data):
    torch.manual_seed(0)
    model = CifarResNet(8, 16)
    with energy_session.measure("base-training") as charge:
        train_classifier(model, data.train, 4, SETTINGS, seed=0)
    return model, charge


def finish(energy, model, data):
    energy.accuracy = evaluate(model, data.test)
    energy.inference(inference_call(model, data.batch), samples=len(data.batch))


@pytest.mark.lifecycle(usage=USAGE, family="baseline", method="uncompressed", model="resnet8")
def test_uncompressed(energy, base, data):
    model, charge = base
    energy.charge(charge)
    finish(energy, model, data)


@pytest.mark.parametrize(
    "criterion",
    [
        pytest.param(
            name,
            marks=pytest.mark.lifecycle(
                usage=USAGE, family="pruning", method=name, model="resnet8"
            ),
        )
        for name in ("l1", "fpgm")
    ],
)
def test_pruning(energy, base, data, criterion):
    model, charge = base
    energy.charge(charge)
    pruned = copy.deepcopy(model)
    with energy.train("prune"):
        pruned = prune_channels(pruned, criterion, 0.5, data.train.head(128))
    with energy.train("finetune"):
        train_classifier(pruned, data.train, FINETUNE_EPOCHS, TrainSettings(64, 0.01), seed=1)
    finish(energy, pruned, data)


@pytest.mark.lifecycle(usage=USAGE, family="quantization", method="int8-ptq", model="resnet8")
def test_int8(energy, base, data):
    model, charge = base
    energy.charge(charge)
    with energy.train("calibrate"):
        quantized = post_training_quantize(model, data.train.images[:256], "minmax")
    finish(energy, quantized, data)
