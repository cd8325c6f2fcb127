"""Energy per training step and per epoch, from ``energy.progress`` calls and the callbacks."""

from __future__ import annotations

import importlib
import json
import sys

import pytest

from pytest_energy.integrations import EpochEnergy
from pytest_energy.meters.base import Reading
from pytest_energy.steps import StepRecorder


class FakeMeter:
    """A peekable meter whose joules the test sets by hand."""

    name, kind = "fake", "estimated"

    def __init__(self) -> None:
        self.joules = 0.0
        self.opened = self.closed = 0

    def peek(self) -> Reading:
        return Reading(self.name, self.kind, 0.0, {"process": self.joules})

    def start(self) -> None:
        self.opened += 1
        self.joules = 0.0

    def stop(self) -> Reading:
        return self.peek()

    def close(self) -> None:
        self.closed += 1


def test_each_progress_call_closes_a_step_and_epochs_sum_their_steps():
    meter, now = FakeMeter(), [0.0]
    recorder = StepRecorder([meter], clock=lambda: now[0])
    for epoch, joules, seconds in [(1, 2.0, 1.0), (1, 5.0, 2.0), (2, 6.0, 3.0), (2, 10.0, 4.5)]:
        meter.joules, now[0] = joules, seconds
        recorder.mark(epoch)
    phase = Reading("fake", "estimated", 5.0, {"process": 11.0})
    steps = recorder.annotate({"fake": phase})["fake"].details["steps"]
    assert steps["count"] == 4
    assert steps["joules_per_step"] == {"median": 2.5, "mean": 2.5, "min": 1.0, "max": 4.0}
    assert steps["epochs"] == [
        {"epoch": 1, "steps": 2, "joules": 5.0, "seconds": 2.0},
        {"epoch": 2, "steps": 2, "joules": 5.0, "seconds": 2.5},
    ]
    assert steps["after_last_step"] == {"joules": 1.0, "seconds": 0.5}


def test_a_meter_that_cannot_be_read_mid_window_is_left_unsplit():
    class Sealed:
        name = "sealed"

    recorder = StepRecorder([Sealed()])
    recorder.mark(1)
    reading = Reading("sealed", "measured", 1.0, {"gpu:0": 3.0})
    assert recorder.annotate({"sealed": reading})["sealed"] is reading


STEPPED_TEST = """
import pytest

def test_train(energy):
    with energy.train("finetune"):
        for epoch in (1, 2):
            for batch in (1, 2, 3):
                sum(i * i for i in range(30_000))
                energy.progress(epoch=epoch, epochs=2, batch=batch, batches=3, loss=0.5)
"""


def test_per_step_and_per_epoch_energy_land_in_the_results_json(pytester):
    pytester.makepyfile(test_stepped=STEPPED_TEST)
    result = pytester.runpytest("--energy", "--energy-meter", "cputime,counted",
                                "--energy-json", "out.json")  # fmt: skip
    result.assert_outcomes(passed=1)
    meters = json.loads((pytester.path / "out.json").read_text())["tests"][
        "test_stepped.py::test_train"
    ]["meters"]
    steps = meters["cputime"]["phases"][0]["details"]["steps"]
    assert steps["count"] == 6
    assert [(e["epoch"], e["steps"]) for e in steps["epochs"]] == [(1, 3), (2, 3)]
    assert sum(e["joules"] for e in steps["epochs"]) <= meters["cputime"]["tec_joules"]
    assert steps["joules_per_step"]["min"] > 0
    assert "steps" not in meters["counted"]["phases"][0].get("details", {})  # not readable mid-way


def test_the_callback_core_measures_each_epoch_on_its_own():
    meter = FakeMeter()
    recorder = EpochEnergy(meters="cputime")
    recorder._meters = [meter]  # the meters train_begin() would pick
    for epoch, joules in ((1, 4.0), (2, 6.0)):
        recorder.epoch_begin(epoch)
        recorder.step_end(1, 2)
        meter.joules = joules
        recorder.step_end(2, 2)
        recorder.epoch_end()
    recorder.train_end()
    assert [(e["epoch"], e["steps"], e["joules"]) for e in recorder.epochs] == [
        (1, 2, {"fake": 4.0}),
        (2, 2, {"fake": 6.0}),
    ]
    assert recorder.epochs[0]["kinds"] == {"fake": "estimated"}
    assert meter.closed == 1
    assert recorder.summary().startswith("epoch 1: fake (estimated) 4 J in ")


def test_the_callback_core_passes_steps_to_the_fixture():
    calls = []

    class Fixture:
        def progress(self, **fields):
            calls.append(fields)

    recorder = EpochEnergy(Fixture())
    recorder.epoch_begin(1)
    recorder.step_end(1, 2, 3)
    recorder.epoch_end()
    assert calls == [{"epoch": 1, "epochs": 3, "batch": 1, "batches": 2}]
    assert recorder.epochs == []


@pytest.mark.parametrize(
    ("module", "hidden", "words"),
    [
        ("lightning", ("lightning", "pytorch_lightning"), "PyTorch Lightning"),
        ("huggingface", ("transformers",), "Hugging Face transformers"),
    ],
)
def test_a_callback_without_its_framework_says_what_to_install(monkeypatch, module, hidden, words):
    for name in hidden:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.delitem(sys.modules, f"pytest_energy.integrations.{module}", raising=False)
    with pytest.raises(ImportError) as error:
        importlib.import_module(f"pytest_energy.integrations.{module}")
    message = str(error.value)
    assert message.startswith(f"pytest_energy.integrations.{module} needs {words}, which is not")
    assert "\n" not in message


LIGHTNING_TEST = """
import torch
import lightning
from pytest_energy.integrations.lightning import EnergyCallback

class Tiny(lightning.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(8, 2)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.cross_entropy(self.layer(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

def loader():
    data = torch.utils.data.TensorDataset(torch.randn(64, 8), torch.randint(0, 2, (64,)))
    return torch.utils.data.DataLoader(data, batch_size=16)

def trainer(callback):
    return lightning.Trainer(max_epochs=2, callbacks=[callback], logger=False,
                             enable_checkpointing=False, enable_progress_bar=False,
                             enable_model_summary=False, accelerator="cpu")

def test_fit(energy):
    with energy.train("fit"):
        trainer(EnergyCallback(energy)).fit(Tiny(), loader())

def test_standalone():
    callback = EnergyCallback(meters="cputime")
    trainer(callback).fit(Tiny(), loader())
    assert [(e["epoch"], e["steps"]) for e in callback.epochs] == [(1, 4), (2, 4)]
    assert all(e["joules"]["cputime"] > 0 for e in callback.epochs)
"""


def test_the_lightning_callback_records_energy_per_epoch(pytester):
    pytest.importorskip("lightning")
    pytester.makepyfile(test_fit=LIGHTNING_TEST)
    result = pytester.runpytest_subprocess(
        "--energy",
        "--energy-meter",
        "cputime",
        "--energy-json",
        "out.json",
        "-p",
        "no:cacheprovider",
    )
    result.assert_outcomes(passed=2)
    phase = json.loads((pytester.path / "out.json").read_text())["tests"]["test_fit.py::test_fit"][
        "meters"
    ]["cputime"]["phases"][0]
    assert [(e["epoch"], e["steps"]) for e in phase["details"]["steps"]["epochs"]] == [
        (1, 4),
        (2, 4),
    ]


def test_the_hugging_face_callback_records_energy_per_epoch():
    transformers = pytest.importorskip("transformers")
    from pytest_energy.integrations.huggingface import EnergyCallback

    callback = EnergyCallback(meters="cputime")
    state, control = transformers.TrainerState(), transformers.TrainerControl()
    state.num_train_epochs, state.max_steps = 2, 6
    callback.on_train_begin(None, state, control)
    for _ in range(2):
        callback.on_epoch_begin(None, state, control)
        for _ in range(3):
            sum(i * i for i in range(20_000))
            state.global_step += 1
            callback.on_step_end(None, state, control)
        callback.on_epoch_end(None, state, control)
    callback.on_train_end(None, state, control)
    assert [(e["epoch"], e["steps"]) for e in callback.epochs] == [(1, 3), (2, 3)]
    assert all(e["joules"]["cputime"] > 0 and e["kinds"]["cputime"] == "estimated"
               for e in callback.epochs)  # fmt: skip
